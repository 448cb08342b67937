//! Decisions the engine returns: `MethodVerdict`, `ToolVerdict`, and the JSON-RPC error
//! (`Denial`) the proxy sends when a message is refused. Codes, messages and `data` shapes are
//! the ones the AIP conformance vectors expect; `data` never contains a policy regex (that goes
//! only to `failed_rule`, for the audit log).
//!
//! Must not: decide anything (the engine does) or send anything (the proxy does).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use serde_json::{Value, json};

/// AIP JSON-RPC error codes (defined once, in `jsonrpc`).
pub use crate::jsonrpc::codes;

/// The error object to send instead of forwarding a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Denial {
    pub code: i64,
    pub message: &'static str,
    /// `{tool, reason}` or `{method, reason}` (plus code-specific fields).
    pub data: Value,
}

impl Denial {
    pub(crate) fn tool(code: i64, message: &'static str, tool: &str, reason: &str) -> Self {
        Denial {
            code,
            message,
            data: json!({"tool": tool, "reason": reason}),
        }
    }

    pub(crate) fn forbidden(tool: &str, reason: &str) -> Self {
        Self::tool(codes::FORBIDDEN, "Forbidden", tool, reason)
    }

    /// `{"code": …, "message": …, "data": …}`.
    pub fn error_object(&self) -> Value {
        json!({"code": self.code, "message": self.message, "data": self.data})
    }

    /// The whole JSON-RPC response for request `id` (echoed as given, same JSON type).
    pub fn response(&self, id: &Value) -> Value {
        json!({"jsonrpc": "2.0", "id": id, "error": self.error_object()})
    }
}

/// Result of the method gate.
#[derive(Debug, Clone, PartialEq)]
pub struct MethodVerdict {
    /// NORMALIZE(method); the proxy decides "is this a tools/call" from this.
    pub method: String,
    /// `None` when allowed; else the `-32006` error.
    pub denial: Option<Denial>,
}

impl MethodVerdict {
    pub fn allowed(&self) -> bool {
        self.denial.is_none()
    }

    /// Whether the normalized method is `tools/call` (tool checks must run).
    pub fn is_tools_call(&self) -> bool {
        self.method == "tools/call"
    }

    /// `ALLOW` or `BLOCK`.
    pub fn decision(&self) -> &'static str {
        if self.allowed() { "ALLOW" } else { "BLOCK" }
    }
}

/// What happens to a tool call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Forward.
    Allow,
    /// Monitor mode: a violation, forwarded and audited.
    AllowMonitor,
    /// Ask the human; then call `Engine::resolve_ask`.
    Ask,
    /// Refuse with `denial`.
    Block,
    /// Refuse with `denial` (-32002).
    RateLimited,
}

/// Why, in machine-readable form.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerdictKind {
    Allowed,
    /// No policy is loaded: every tool call is refused (fail closed).
    NoPolicy,
    NotAllowlisted,
    /// `action: block`.
    RuleBlock,
    /// An `allow_args` regex did not match.
    ArgumentMismatch,
    /// An `allow_args` argument is absent.
    ArgumentMissing,
    /// `strict_args` and an argument not declared in `allow_args`.
    UndeclaredArgument,
    /// `arguments` is not an object while the rule constrains arguments.
    ArgumentsNotObject,
    /// A key that differs from a checked argument only by case (a case-insensitive server
    /// could read it instead of the checked one).
    AmbiguousArgument,
    ProtectedPath,
    RateLimited,
    /// `action: ask`, waiting for the human.
    ApprovalRequired,
    /// Approved by the human.
    Approved,
    UserDenied,
    UserTimeout,
    /// A request DLP match with `on_request_match: block`, or an oversize request.
    DlpBlocked,
    /// Redaction broke the request and `on_redaction_failure: reject`.
    DlpRedactionFailed,
}

impl VerdictKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VerdictKind::Allowed => "allowed",
            VerdictKind::NoPolicy => "no_policy",
            VerdictKind::NotAllowlisted => "not_allowlisted",
            VerdictKind::RuleBlock => "rule_block",
            VerdictKind::ArgumentMismatch => "argument_mismatch",
            VerdictKind::ArgumentMissing => "argument_missing",
            VerdictKind::UndeclaredArgument => "undeclared_argument",
            VerdictKind::ArgumentsNotObject => "arguments_not_object",
            VerdictKind::AmbiguousArgument => "ambiguous_argument",
            VerdictKind::ProtectedPath => "protected_path",
            VerdictKind::RateLimited => "rate_limited",
            VerdictKind::ApprovalRequired => "approval_required",
            VerdictKind::Approved => "approved",
            VerdictKind::UserDenied => "user_denied",
            VerdictKind::UserTimeout => "user_timeout",
            VerdictKind::DlpBlocked => "dlp_blocked",
            VerdictKind::DlpRedactionFailed => "dlp_redaction_failed",
        }
    }
}

/// The human's answer to an `ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalOutcome {
    Approved,
    Denied,
    /// No answer in time, or no approver available.
    TimedOut,
}

/// The engine's decision on one `tools/call`.
#[derive(Debug, Clone)]
pub struct ToolVerdict {
    /// NORMALIZE(tool name).
    pub tool: String,
    pub decision: Decision,
    pub kind: VerdictKind,
    /// A policy violation (true for every refusal by policy and for monitor-mode passes).
    pub violation: bool,
    /// The error to send when `decision` is `Block` or `RateLimited`.
    pub denial: Option<Denial>,
    /// Human-readable reason (the same text as `data.reason` when refused).
    pub reason: String,
    /// The argument that failed (`path`, `opts.files[2]`), for audit.
    pub failed_arg: Option<String>,
    /// The policy rule that failed (an `allow_args` regex, a protected path entry): audit only.
    pub failed_rule: Option<String>,
    pub(crate) charge: Option<Arc<Charge>>,
}

/// A rate-limit token taken by a verdict, returnable once.
#[derive(Debug)]
pub(crate) struct Charge {
    pub rule: usize,
    pub refunded: AtomicBool,
}

impl ToolVerdict {
    pub(crate) fn new(tool: &str, decision: Decision, kind: VerdictKind) -> Self {
        ToolVerdict {
            tool: tool.to_owned(),
            decision,
            kind,
            violation: !matches!(decision, Decision::Allow | Decision::Ask),
            denial: None,
            reason: String::new(),
            failed_arg: None,
            failed_rule: None,
            charge: None,
        }
    }

    /// Whether the call goes to the server now (`Allow` or `AllowMonitor`).
    pub fn forwards(&self) -> bool {
        matches!(self.decision, Decision::Allow | Decision::AllowMonitor)
    }

    /// Conformance vocabulary: `ALLOW` (also monitor passes), `BLOCK`, `ASK`, `RATE_LIMITED`.
    pub fn conformance_decision(&self) -> &'static str {
        match self.decision {
            Decision::Allow | Decision::AllowMonitor => "ALLOW",
            Decision::Ask => "ASK",
            Decision::Block => "BLOCK",
            Decision::RateLimited => "RATE_LIMITED",
        }
    }

    /// Audit vocabulary: `ALLOW`, `ALLOW_MONITOR`, `BLOCK`, `RATE_LIMITED` (and `ASK` for a
    /// verdict still waiting for the human; audit the resolved verdict instead).
    pub fn audit_decision(&self) -> &'static str {
        match self.decision {
            Decision::Allow => "ALLOW",
            Decision::AllowMonitor => "ALLOW_MONITOR",
            Decision::Ask => "ASK",
            Decision::Block => "BLOCK",
            Decision::RateLimited => "RATE_LIMITED",
        }
    }

    pub fn error_code(&self) -> Option<i64> {
        self.denial.as_ref().map(|d| d.code)
    }

    /// The JSON-RPC error response for request `id`, when the call is refused.
    pub fn error_response(&self, id: &Value) -> Option<Value> {
        self.denial.as_ref().map(|d| d.response(id))
    }
}
