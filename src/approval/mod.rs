//! Human approval for `action: ask` tool calls.
//!
//! An [`Approver`] answers one [`ApprovalRequest`] at a time and may block (a dialog is open); the
//! proxy calls it from a thread of its own so other traffic keeps flowing. Implementations:
//! - [`DesktopApprover`]: zenity or kdialog, markup disabled, arguments redacted and truncated;
//! - [`HeadlessApprover`]: a fixed answer, for CI and scripted use (approving is loudly logged);
//! - [`NoApprover`]: nobody can answer, so every ask times out (-32005);
//! - the daemon adds one that queues requests for `aip approve` over its control socket.
//!
//! [`FatigueLimited`] wraps any approver: past a number of prompts per window, further asks are
//! denied without prompting, because a human who is asked too often stops reading.

mod desktop;
mod fatigue;

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub use desktop::DesktopApprover;
pub use fatigue::FatigueLimited;

/// Default time a human has to answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Most characters of the argument preview shown to a human.
pub const PREVIEW_CHARS: usize = 600;

/// What a human is asked to approve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRequest {
    /// Server (daemon) or command name, for the human's context.
    pub server: String,
    pub session_id: String,
    /// JSON text of the request id.
    pub request_id: String,
    /// Normalized tool name.
    pub tool: String,
    /// Arguments as compact JSON, already DLP-redacted and truncated to [`PREVIEW_CHARS`].
    pub args_preview: String,
}

impl ApprovalRequest {
    /// Builds the preview from arguments that the caller has already redacted.
    pub fn preview(args: Option<&serde_json::Value>) -> String {
        let text = args.map(|a| a.to_string()).unwrap_or_else(|| "{}".into());
        truncate_chars(&text, PREVIEW_CHARS)
    }
}

/// The human's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Approved,
    Denied(String),
    /// No answer in time.
    TimedOut,
    /// Nobody could be asked (no approver, approver failed to start); treated like a timeout.
    Unavailable(String),
    /// The request was cancelled by the client (or the session ended) while waiting.
    Cancelled,
}

/// Asks a human. `ask` blocks until an answer, `cancel`, or `timeout`.
pub trait Approver: Send + Sync {
    /// Short name for logs and audit (`zenity`, `headless-deny`, …).
    fn name(&self) -> String;
    fn ask(&self, req: &ApprovalRequest, cancel: &Cancel, timeout: Duration) -> Answer;
}

/// Nobody to ask: every request is unanswered.
pub struct NoApprover;

impl Approver for NoApprover {
    fn name(&self) -> String {
        "none".into()
    }

    fn ask(&self, _: &ApprovalRequest, _: &Cancel, _: Duration) -> Answer {
        Answer::Unavailable("no approver is configured (see --approver)".into())
    }
}

/// A fixed answer without a human (CI, scripted runs).
pub struct HeadlessApprover {
    approve: bool,
}

impl HeadlessApprover {
    pub fn deny() -> Self {
        HeadlessApprover { approve: false }
    }

    /// Approves every ask. Logged at warn level on every use: this turns `ask` into `allow`.
    pub fn approve() -> Self {
        HeadlessApprover { approve: true }
    }
}

impl Approver for HeadlessApprover {
    fn name(&self) -> String {
        if self.approve {
            "headless-approve".into()
        } else {
            "headless-deny".into()
        }
    }

    fn ask(&self, req: &ApprovalRequest, cancel: &Cancel, _: Duration) -> Answer {
        if cancel.is_cancelled() {
            return Answer::Cancelled;
        }
        if self.approve {
            tracing::warn!(tool = %req.tool, "ask approved without a human (--approver headless-approve)");
            Answer::Approved
        } else {
            Answer::Denied("denied by the headless approver".into())
        }
    }
}

/// A cancellation flag a waiting approval can be woken by.
#[derive(Debug, Clone, Default)]
pub struct Cancel {
    inner: Arc<(Mutex<bool>, Condvar)>,
}

impl Cancel {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        let (flag, cv) = &*self.inner;
        *flag.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }

    pub fn is_cancelled(&self) -> bool {
        *self.inner.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sleeps until cancelled or `deadline`; returns true when cancelled.
    pub fn wait_until(&self, deadline: Instant) -> bool {
        let (flag, cv) = &*self.inner;
        let mut done = flag.lock().unwrap_or_else(|p| p.into_inner());
        while !*done {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            done = cv
                .wait_timeout(done, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

fn truncate_chars(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((cut, _)) => format!("{}… ({} more bytes)", &text[..cut], text.len() - cut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn preview_is_truncated_on_a_char_boundary() {
        let long = json!({"text": "é".repeat(2000)});
        let p = ApprovalRequest::preview(Some(&long));
        assert!(p.chars().count() < PREVIEW_CHARS + 40, "{}", p.len());
        assert!(p.contains("more bytes"));
        assert_eq!(ApprovalRequest::preview(None), "{}");
    }

    #[test]
    fn headless_answers_and_no_approver_is_unavailable() {
        let req = ApprovalRequest {
            server: "s".into(),
            session_id: "x".into(),
            request_id: "1".into(),
            tool: "t".into(),
            args_preview: "{}".into(),
        };
        let c = Cancel::new();
        assert_eq!(
            HeadlessApprover::approve().ask(&req, &c, DEFAULT_TIMEOUT),
            Answer::Approved
        );
        assert!(matches!(
            HeadlessApprover::deny().ask(&req, &c, DEFAULT_TIMEOUT),
            Answer::Denied(_)
        ));
        assert!(matches!(
            NoApprover.ask(&req, &c, DEFAULT_TIMEOUT),
            Answer::Unavailable(_)
        ));
        c.cancel();
        assert_eq!(
            HeadlessApprover::approve().ask(&req, &c, DEFAULT_TIMEOUT),
            Answer::Cancelled
        );
    }

    #[test]
    fn cancel_wakes_a_waiter() {
        let c = Cancel::new();
        let c2 = c.clone();
        let t = std::thread::spawn(move || c2.wait_until(Instant::now() + Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(20));
        c.cancel();
        assert!(t.join().unwrap());
        assert!(!Cancel::new().wait_until(Instant::now() + Duration::from_millis(5)));
    }
}
