//! `aipd`: the systemd service that runs one sandboxed, policed MCP server per client session.
//!
//! Admins define servers in root-owned files (`config`); a user's MCP client runs
//! `aip connect NAME` (`client`), which says which server it wants in a one-line hello
//! (`hello`); aipd reads the caller's credentials from the kernel (`peer`), checks the server's
//! allow list and the limits, gives the session its own uid (`uids`), and runs the server
//! through `launch` (sandbox + proxy + audit) on a thread per session (`session`). Every audit
//! record of a session carries its context (`sessions::SessionSink`) and goes to journald
//! (`audit::journald`) and/or a JSONL file. `service` is the process: sockets (systemd socket
//! activation or its own), sd_notify, signals, reload and shutdown. `control` serves `aip ps`,
//! `aip approve` (the `approvals` queue answers `ask` rules) and `aip reload`.
//!
//! Must not: contain sandbox, policy or proxy logic: it composes `launch` instances.

pub mod approvals;
pub mod client;
pub mod config;
pub mod control;
pub mod hello;
pub mod peer;
mod service;
mod session;
pub mod sessions;
mod sys;
pub mod uids;

pub use service::{CheckReport, DaemonError, Options, ReloadReport, check, run};

/// RFC 3339 UTC time with second precision.
pub(crate) fn rfc3339(t: std::time::SystemTime) -> String {
    let t = time::OffsetDateTime::from(t);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}
