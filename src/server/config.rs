//! Server settings and the mapping from a validated policy (`spec.server`, `spec.identity`) to
//! the plain configurations of `server` and `identity`. Owns the listen-address rules (TLS
//! required off loopback) and the operator-side settings the spec leaves out (admin credential,
//! body and time limits). Must not bind sockets or read certificate files.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::time::Duration;

use crate::identity::{
    self, BindingMode, IdentityConfig, KeySource, NonceBackend, SigningAlgorithm,
};
use crate::policy;

use super::client::{FailOpenConstraints, FailoverMode, RemoteConfig};
use super::listener::ConnectionLimits;
use super::tls::{ClientTlsFiles, TlsFiles};

/// Paths of the five endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPaths {
    pub validate: String,
    pub revoke: String,
    pub jwks: String,
    pub health: String,
    pub metrics: String,
}

impl Default for EndpointPaths {
    fn default() -> Self {
        Self {
            validate: "/v1/validate".into(),
            revoke: "/v1/revoke".into(),
            jwks: "/v1/jwks".into(),
            health: "/health".into(),
            metrics: "/metrics".into(),
        }
    }
}

/// Everything needed to run a validation server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// `<host>:<port>`, `:<port>` or `*:<port>` (all interfaces).
    pub listen: String,
    pub tls: Option<TlsFiles>,
    pub endpoints: EndpointPaths,
    /// Bearer credential for `POST /v1/revoke` (never an identity token). `None` disables
    /// revocation over HTTP.
    pub admin_token: Option<String>,
    pub limits: ConnectionLimits,
    /// Largest request body.
    pub max_body_bytes: usize,
    /// Longest time to read a request and answer it.
    pub request_timeout: Duration,
}

impl ServerSettings {
    /// Settings from `spec.server` (listen, TLS, endpoints) with the default limits.
    /// `keys.jwks_endpoint` is used when `endpoints.jwks` keeps its default.
    pub fn from_policy(
        server: &policy::ServerConfig,
        identity: Option<&policy::IdentityConfig>,
    ) -> Self {
        let mut endpoints = EndpointPaths {
            validate: server.endpoints.validate.clone(),
            revoke: server.endpoints.revoke.clone(),
            jwks: server.endpoints.jwks.clone(),
            health: server.endpoints.health.clone(),
            metrics: server.endpoints.metrics.clone(),
        };
        if let Some(id) = identity
            && endpoints.jwks == "/v1/jwks"
        {
            endpoints.jwks = id.keys.jwks_endpoint.clone();
        }
        Self {
            listen: server.listen.clone(),
            tls: server.tls.as_ref().map(|t| TlsFiles {
                cert: t.cert.clone(),
                key: t.key.clone(),
                client_ca: t.client_ca.clone(),
                require_client_cert: t.require_client_cert,
            }),
            endpoints,
            admin_token: None,
            limits: ConnectionLimits::default(),
            max_body_bytes: DEFAULT_MAX_BODY,
            request_timeout: Duration::from_secs(10),
        }
    }
}

/// Default request body limit: a tool call's arguments, generously.
pub const DEFAULT_MAX_BODY: usize = 1024 * 1024;

/// A setting cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("listen address {0:?} is not <host>:<port>")]
    Listen(String),
    #[error("cannot resolve listen host {host:?}: {reason}")]
    Resolve { host: String, reason: String },
    #[error(
        "listen address {0} is reachable from other hosts and no TLS is configured (spec.server.tls.cert/key)"
    )]
    PlaintextOffLoopback(String),
    #[error(transparent)]
    Identity(#[from] identity::ConfigError),
    #[error("{0}")]
    Unsupported(String),
}

/// Resolves `listen` and enforces "TLS required when not loopback" (v1alpha2 §6).
pub fn listen_addr(listen: &str, tls: bool) -> Result<SocketAddr, SettingsError> {
    let (host, port) = listen
        .rsplit_once(':')
        .ok_or_else(|| SettingsError::Listen(listen.into()))?;
    let port: u16 = port
        .parse()
        .map_err(|_| SettingsError::Listen(listen.into()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let addr = match host {
        "" | "*" => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        "localhost" => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
        h => match h.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => (h, port)
                .to_socket_addrs()
                .map_err(|e| SettingsError::Resolve {
                    host: h.into(),
                    reason: e.to_string(),
                })?
                .next()
                .ok_or_else(|| SettingsError::Resolve {
                    host: h.into(),
                    reason: "no address".into(),
                })?,
        },
    };
    if !tls && !addr.ip().is_loopback() {
        return Err(SettingsError::PlaintextOffLoopback(addr.to_string()));
    }
    Ok(addr)
}

/// The identity configuration of `policy`, or `None` when identity is absent or disabled.
/// Refuses what this implementation does not do (`RS256`, `key_source: external`, `postgres`)
/// rather than silently running without it.
pub fn identity_config(policy: &policy::Policy) -> Result<Option<IdentityConfig>, SettingsError> {
    let Some(id) = policy.identity().filter(|i| i.enabled) else {
        return Ok(None);
    };
    let mut c = IdentityConfig::new(policy.name());
    c.token_ttl = id.token_ttl;
    c.rotation_interval = id
        .rotation_interval_explicit
        .then_some(id.rotation_interval);
    c.require_token = id.require_token;
    c.session_binding = match id.session_binding {
        policy::SessionBinding::Process => BindingMode::Process,
        policy::SessionBinding::Policy => BindingMode::Policy,
        policy::SessionBinding::Strict => BindingMode::Strict,
    };
    c.nonce_window = Some(id.nonce_window);
    c.policy_transition_grace = id.policy_transition_grace;
    c.audience = Some(id.audience.clone());
    c.algorithm = match id.keys.signing_algorithm {
        policy::SigningAlgorithm::Es256 => SigningAlgorithm::Es256,
        policy::SigningAlgorithm::Es384 => SigningAlgorithm::Es384,
        policy::SigningAlgorithm::EdDsa => SigningAlgorithm::EdDsa,
        policy::SigningAlgorithm::Hs256 => SigningAlgorithm::Hs256,
        policy::SigningAlgorithm::Rs256 => {
            return Err(SettingsError::Unsupported(
                "spec.identity.keys.signing_algorithm: RS256 is not supported by aip; use ES256, ES384 or EdDSA".into(),
            ));
        }
    };
    c.key_source = match (id.keys.key_source, &id.keys.key_path) {
        (policy::KeySource::Generate, _) => KeySource::Generate,
        (policy::KeySource::File, Some(p)) => KeySource::File(p.clone()),
        (policy::KeySource::File, None) => {
            return Err(SettingsError::Unsupported(
                "spec.identity.keys.key_path is required".into(),
            ));
        }
        (policy::KeySource::External, _) => {
            return Err(SettingsError::Unsupported(
                "spec.identity.keys.key_source: external is not supported by aip; use generate or file".into(),
            ));
        }
    };
    c.key_rotation_period = id.keys.rotation_period;
    c.key_grace_period = id.keys.grace_period;
    c.nonce_storage.backend = match (id.nonce_storage.kind, &id.nonce_storage.address) {
        (policy::NonceStorageKind::Memory, _) => NonceBackend::Memory,
        (policy::NonceStorageKind::Redis, Some(a)) => NonceBackend::Redis { address: a.clone() },
        (policy::NonceStorageKind::Redis, None) => {
            return Err(SettingsError::Unsupported(
                "spec.identity.nonce_storage.address is required".into(),
            ));
        }
        (policy::NonceStorageKind::Postgres, _) => {
            return Err(SettingsError::Unsupported(
                "spec.identity.nonce_storage.type: postgres is not supported by aip; use redis"
                    .into(),
            ));
        }
    };
    c.nonce_storage.key_prefix = id.nonce_storage.key_prefix.clone();
    c.nonce_storage.clock_skew_tolerance = id.nonce_storage.clock_skew_tolerance;
    c.server_enabled = policy.server().is_some_and(|s| s.enabled);
    c.validate()?;
    Ok(Some(c))
}

/// The client-side failover configuration of `spec.server`.
pub fn failover_mode(server: &policy::ServerConfig) -> FailoverMode {
    match server.failover_mode {
        policy::FailoverMode::FailClosed => FailoverMode::FailClosed,
        policy::FailoverMode::LocalPolicy => FailoverMode::LocalPolicy,
        policy::FailoverMode::FailOpen => {
            FailoverMode::FailOpen(server.fail_open_constraints.as_ref().map_or_else(
                FailOpenConstraints::default,
                |c| FailOpenConstraints {
                    allowed_tools: (!c.allowed_tools.is_empty()).then(|| c.allowed_tools.clone()),
                    max_duration: c.max_duration,
                    max_requests: c.max_requests,
                    alert_webhook: c.alert_webhook.clone(),
                    require_local_policy: c.require_local_policy,
                },
            ))
        }
    }
}

/// Environment variable naming the remote validation server (full URL of its validate endpoint).
pub const ENV_VALIDATION_SERVER: &str = "AIP_VALIDATION_SERVER";
/// PEM CA bundle trusted for the remote validation server.
pub const ENV_VALIDATION_CA: &str = "AIP_VALIDATION_CA";
/// Client certificate and key (PEM) for mTLS to the remote validation server.
pub const ENV_VALIDATION_CLIENT_CERT: &str = "AIP_VALIDATION_CLIENT_CERT";
pub const ENV_VALIDATION_CLIENT_KEY: &str = "AIP_VALIDATION_CLIENT_KEY";

/// The remote-validation client configuration of a supervisor: the URL from `url` (a flag) or
/// `$AIP_VALIDATION_SERVER` (`None` when neither is set: validate locally), TLS files from
/// `$AIP_VALIDATION_CA` / `$AIP_VALIDATION_CLIENT_CERT` / `$AIP_VALIDATION_CLIENT_KEY`, and
/// `timeout` / `failover_mode` / `fail_open_constraints` from `spec.server` (defaults when
/// the policy has none).
pub fn remote_config(
    url: Option<&str>,
    server: Option<&policy::ServerConfig>,
) -> Result<Option<RemoteConfig>, SettingsError> {
    let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    let Some(url) = url
        .map(str::to_string)
        .or_else(|| env(ENV_VALIDATION_SERVER))
    else {
        return Ok(None);
    };
    let client_cert = match (
        env(ENV_VALIDATION_CLIENT_CERT),
        env(ENV_VALIDATION_CLIENT_KEY),
    ) {
        (Some(c), Some(k)) => Some((c.into(), k.into())),
        (None, None) => None,
        _ => {
            return Err(SettingsError::Unsupported(format!(
                "{ENV_VALIDATION_CLIENT_CERT} and {ENV_VALIDATION_CLIENT_KEY} go together"
            )));
        }
    };
    Ok(Some(RemoteConfig {
        url,
        tls: ClientTlsFiles {
            ca: env(ENV_VALIDATION_CA).map(Into::into),
            client_cert,
        },
        timeout: server.map_or(Duration::from_secs(5), |s| s.timeout),
        failover: server.map_or(FailoverMode::FailClosed, failover_mode),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_listen_addr() {
        assert_eq!(listen_addr("127.0.0.1:9443", false).unwrap().port(), 9443);
        assert!(
            listen_addr("localhost:1", false)
                .unwrap()
                .ip()
                .is_loopback()
        );
        assert!(listen_addr("[::1]:9443", false).unwrap().ip().is_loopback());
        assert!(matches!(
            listen_addr(":9443", false),
            Err(SettingsError::PlaintextOffLoopback(_))
        ));
        assert!(matches!(
            listen_addr("*:9443", false),
            Err(SettingsError::PlaintextOffLoopback(_))
        ));
        assert!(matches!(
            listen_addr("0.0.0.0:9443", false),
            Err(SettingsError::PlaintextOffLoopback(_))
        ));
        assert!(listen_addr(":9443", true).unwrap().ip().is_unspecified());
        assert!(listen_addr("9443", false).is_err());
        assert!(listen_addr("x:y", false).is_err());
    }
}
