//! The approval seam of the runner: how a test answers an `ask`. The engine turns the answer
//! into the final verdict with `Engine::resolve_ask`, the same call the proxy makes (deny →
//! -32004 `User denied`, timeout → -32005 `User approval timeout`, approve → forward).
//!
//! Must not: decide the error codes itself.

use serde_json::Value;

use crate::policy::ApprovalOutcome;

/// Answers approval prompts.
pub trait Approver {
    /// The human's answer for `tool` called with `arguments`.
    fn answer(&self, tool: &str, arguments: Option<&Value>) -> ApprovalOutcome;
}

/// An approver scripted by a vector's `context.user_response` (`approve`, `deny`, `timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptedApprover(pub ApprovalOutcome);

impl ScriptedApprover {
    /// Parses `user_response`; `None` for an unknown answer.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "approve" | "approved" | "allow" | "yes" => {
                Some(ScriptedApprover(ApprovalOutcome::Approved))
            }
            "deny" | "denied" | "no" => Some(ScriptedApprover(ApprovalOutcome::Denied)),
            "timeout" => Some(ScriptedApprover(ApprovalOutcome::TimedOut)),
            _ => None,
        }
    }
}

impl Approver for ScriptedApprover {
    fn answer(&self, _tool: &str, _arguments: Option<&Value>) -> ApprovalOutcome {
        self.0
    }
}
