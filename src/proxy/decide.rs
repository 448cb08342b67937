//! The one place the proxy turns policy verdicts into what it does with a message: forward, ask
//! a human, or reply with an error. Keeps the pumps independent of the engine's result types.

use serde_json::Value;

use crate::jsonrpc::ErrorReply;
use crate::policy::{ApprovalOutcome, Decision, Denial, Engine, ToolVerdict};

fn reply_of(d: &Denial) -> ErrorReply {
    ErrorReply::new(d.code, d.message, Some(d.data.clone()))
}

/// The method gate's answer for one message.
pub(super) struct MethodOutcome {
    /// The method as sent.
    pub raw: String,
    /// The normalized method, used to decide "is this a tools/call".
    pub normalized: String,
    /// Set when the method is denied (-32006).
    pub denied: Option<ErrorReply>,
}

impl MethodOutcome {
    pub fn of(engine: &Engine, method: &str) -> Self {
        let v = engine.check_method(method);
        MethodOutcome {
            raw: method.to_owned(),
            denied: v.denial.as_ref().map(reply_of),
            normalized: v.method,
        }
    }
}

/// What to do with a tools/call.
pub(super) enum CallAction {
    Forward,
    Ask,
    Deny(ErrorReply),
}

/// The tool checks' answer for one tools/call, with what the audit record needs.
pub(super) struct CallOutcome {
    pub action: CallAction,
    pub tool: String,
    pub audit_decision: &'static str,
    pub violation: bool,
    pub failed_arg: Option<String>,
    pub failed_rule: Option<String>,
    pub reason: Option<String>,
    pub kind: &'static str,
    pub verdict: ToolVerdict,
}

impl CallOutcome {
    pub fn of(engine: &Engine, tool: &str, arguments: Option<&Value>) -> Self {
        Self::from_verdict(engine.check_tool_call(tool, arguments))
    }

    /// The final verdict after a human answered an `ask`.
    pub fn resolved(&self, engine: &Engine, outcome: ApprovalOutcome) -> Self {
        Self::from_verdict(engine.resolve_ask(&self.verdict, outcome))
    }

    fn from_verdict(v: ToolVerdict) -> Self {
        let action = match v.decision {
            Decision::Allow | Decision::AllowMonitor => CallAction::Forward,
            Decision::Ask => CallAction::Ask,
            Decision::Block | Decision::RateLimited => CallAction::Deny(match &v.denial {
                Some(d) => reply_of(d),
                // A refusal always carries its error; if it ever did not, still refuse.
                None => ErrorReply::new(
                    crate::jsonrpc::codes::FORBIDDEN,
                    "Forbidden",
                    Some(serde_json::json!({"tool": v.tool, "reason": "blocked by policy"})),
                ),
            }),
        };
        CallOutcome {
            tool: v.tool.clone(),
            audit_decision: v.audit_decision(),
            violation: v.violation,
            failed_arg: v.failed_arg.clone(),
            failed_rule: v.failed_rule.clone(),
            reason: (!v.reason.is_empty()).then(|| v.reason.clone()),
            kind: v.kind.as_str(),
            action,
            verdict: v,
        }
    }

    pub fn error_code(&self) -> Option<i64> {
        match &self.action {
            CallAction::Deny(e) => Some(e.code),
            _ => None,
        }
    }
}
