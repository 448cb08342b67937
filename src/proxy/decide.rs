//! The one place the proxy turns policy verdicts into what it does with a message: forward, ask
//! a human, or reply with an error. Keeps the pumps independent of the engine's result types.

use serde_json::Value;

use crate::jsonrpc::ErrorReply;
use crate::policy::{Decision, Engine, ToolVerdict};

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
            denied: v
                .denial()
                .map(|d| ErrorReply::new(d.code, d.message.clone(), Some(d.data.clone()))),
            normalized: v.normalized().to_owned(),
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
    pub verdict: ToolVerdict,
}

impl CallOutcome {
    pub fn of(engine: &Engine, tool: &str, arguments: Option<&Value>) -> Self {
        let v = engine.check_tool_call(tool, arguments);
        let action = match v.decision() {
            Decision::Allow | Decision::AllowMonitor => CallAction::Forward,
            Decision::Ask => CallAction::Ask,
            Decision::Block | Decision::RateLimited => match v.denial() {
                Some(d) => CallAction::Deny(ErrorReply::new(
                    d.code,
                    d.message.clone(),
                    Some(d.data.clone()),
                )),
                None => CallAction::Deny(ErrorReply::new(
                    crate::jsonrpc::codes::FORBIDDEN,
                    "Forbidden",
                    Some(serde_json::json!({"tool": v.tool(), "reason": "blocked by policy"})),
                )),
            },
        };
        CallOutcome {
            tool: v.tool().to_owned(),
            audit_decision: v.audit_decision(),
            violation: v.violation(),
            failed_arg: v.failed_arg().map(str::to_owned),
            failed_rule: v.failed_rule().map(str::to_owned),
            reason: v.denial().and_then(|d| {
                d.data
                    .get("reason")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            }),
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
