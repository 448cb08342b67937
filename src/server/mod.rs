//! The HTTP(S) validation server of AIP v1alpha2 §6 (`/v1/validate`, `/health`, `/metrics`,
//! `/v1/revoke`, `/v1/jwks`) as thin handlers over `policy::Engine` and
//! `identity::TokenService`, plus the client a proxy uses to delegate decisions to a remote
//! server with failover. Must not re-implement policy evaluation or token checks.
//!
//! Entry points: [`start`] runs a server on a tokio runtime and returns a [`ServerHandle`];
//! [`RemoteValidator`] is the client side; [`config::identity_config`] maps a policy's
//! `spec.identity` onto `identity::IdentityConfig`.

pub mod app;
pub mod client;
pub mod config;
pub mod listener;
pub mod metrics;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

pub use app::ServerParts;
pub use client::{
    ClientError, FailOpenConstraints, FailoverAction, FailoverMode, RemoteConfig, RemoteValidator,
    RemoteVerdict,
};
pub use config::{
    EndpointPaths, ServerSettings, SettingsError, failover_mode, identity_config, listen_addr,
    remote_config,
};
pub use listener::ConnectionLimits;
pub use tls::{ClientTlsFiles, TlsError, TlsFiles};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running server.
pub struct ServerHandle {
    local_addr: SocketAddr,
    tls: bool,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("local_addr", &self.local_addr)
            .field("tls", &self.tls)
            .finish()
    }
}

impl ServerHandle {
    /// The bound address (the real port when `listen` asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether connections use TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Stops accepting, lets in-flight requests finish, and waits.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// Binds `settings.listen` (TLS required off loopback) and serves until
/// [`ServerHandle::shutdown`]. Must be called inside a tokio runtime.
pub async fn start(
    settings: ServerSettings,
    parts: ServerParts,
) -> Result<ServerHandle, ServerError> {
    let addr = listen_addr(&settings.listen, settings.tls.is_some())?;
    let tls = settings.tls.as_ref().map(tls::server_config).transpose()?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let local_addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let limits = settings.limits;
    let state = Arc::new(app::AppState::new(parts, settings));
    let router = app::router(state);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let has_tls = tls.is_some();
    let task = tokio::spawn(listener::serve(listener, tls, router, limits, rx));
    tracing::info!(%local_addr, tls = has_tls, "validation server listening");
    Ok(ServerHandle {
        local_addr,
        tls: has_tls,
        shutdown: tx,
        task,
    })
}
