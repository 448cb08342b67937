//! Egress control (AIP Appendix D.1 `spec.egress`): DNS stub, HTTP and SOCKS5 proxies and
//! transparent capture listeners living inside the sandbox's network namespace but served by the
//! supervisor, with host-side resolution, address pinning and per-connection audit.
//!
//! Nothing here runs inside the sandbox: the sandbox child only creates the listening sockets
//! ([`crate::sandbox::net`]) from the [`EgressPlan`]'s list; the [`Supervisor`] serves them.
//! Parsers of sandbox input are pure functions over `&[u8]` (see [`fuzzing`]).

pub mod audit;
pub mod dns;
pub mod fakeip;
pub mod forward;
pub mod fuzzing;
pub mod http;
pub mod plan;
pub mod resolve;
pub mod rules;
pub mod socks;
pub mod supervisor;
pub mod tls;

pub use audit::InFlight;
pub use plan::{EgressPlan, Role};
pub use resolve::{Resolve, StaticResolver, SystemResolver};
pub use rules::{Decision, Host, Limits, Outcome, Rules};
pub use supervisor::{Supervisor, SupervisorCtx};

/// Errors building or starting egress control.
#[derive(Debug, thiserror::Error)]
pub enum EgressError {
    /// `spec.egress` is invalid (field path relative to `spec.egress`, message with a hint).
    #[error("spec.egress.{field}: {message}")]
    Policy { field: String, message: String },
    #[error("egress listeners: expected {expected} sockets from the sandbox, got {got}")]
    ListenerCount { expected: usize, got: usize },
    #[error("egress listener {addr}: {source}")]
    Listener {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The sandbox cannot carry egress control as planned.
    #[error("spec.egress: {0}")]
    NeedsSandbox(String),
    #[error("egress supervisor needs a tokio runtime: {0}")]
    Runtime(String),
}
