//! The HTTP(S) validation server of AIP v1alpha2 §6 (`/v1/validate`, `/health`, `/metrics`,
//! `/v1/revoke`, `/v1/jwks`) as thin handlers over `policy::Engine` and
//! `identity::TokenService`, plus the client a proxy uses to delegate decisions to a remote
//! server with failover. Must not re-implement policy evaluation or token checks.

pub mod client;
pub mod listener;
pub mod metrics;
pub mod tls;

pub use client::{
    ClientError, FailOpenConstraints, FailoverAction, FailoverMode, RemoteConfig, RemoteValidator,
    RemoteVerdict,
};
pub use listener::ConnectionLimits;
pub use tls::{ClientTlsFiles, TlsError, TlsFiles};
