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
    /// Id (nonce) of the identity token the call presented, for the audit record.
    pub token_id: Option<String>,
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
            token_id: None,
        }
    }

    /// Turns an allowed (or to-be-asked) call into a refusal found outside the engine (listed
    /// tools, schema hash). In monitor mode a refusal that is not `always` is recorded as a
    /// violation and the call still goes through.
    pub fn refuse(&mut self, engine: &Engine, r: super::tools::Refusal, enforcing: bool) {
        self.violation = true;
        self.reason = Some(r.reason);
        if !enforcing && !r.always {
            if matches!(self.action, CallAction::Forward) {
                self.audit_decision = "ALLOW_MONITOR";
            }
            return;
        }
        engine.refund(&self.verdict);
        self.kind = if r.error.code == crate::jsonrpc::codes::SCHEMA_MISMATCH {
            "schema_mismatch"
        } else {
            "tool_not_listed"
        };
        self.audit_decision = "BLOCK";
        self.action = CallAction::Deny(r.error);
    }

    pub fn error_code(&self) -> Option<i64> {
        match &self.action {
            CallAction::Deny(e) => Some(e.code),
            _ => None,
        }
    }
}
