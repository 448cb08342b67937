//! The evaluation engine (AIP §2.2–§2.6): the method gate, the tool check order, monitor mode,
//! rate limits, protected paths, ask resolution and request-side DLP. One engine per policed
//! server; `Send + Sync`, shared by the proxy's tasks.
//!
//! Tool check order (v1alpha2 without the token step, which the identity layer runs first):
//! 1. rate limit exhausted → `RATE_LIMITED` (-32002; checked without taking a token)
//! 2. an argument refers to a protected path → `BLOCK` (-32007)
//! 3. rule `block` → violation; rule `ask` → `ASK` if its arguments pass, else violation
//! 4. not allowlisted (`allowed_tools`, or a rule with action `allow`) → violation
//! 5. `allow_args` fails (missing argument counts) → violation
//! 6. strict args and an undeclared argument → violation
//!
//! A violation is `BLOCK` (-32001) in enforce mode and `ALLOW_MONITOR` in monitor mode. Rate
//! limits, protected paths, method denials, user answers and request DLP are enforced in both
//! modes. A rate-limit token is taken only by a call that goes on (allowed, monitor pass, ask),
//! so a call blocked for another reason consumes no quota; `refund` returns it (the proxy calls
//! `resolve_ask`, which refunds on "no" and on timeout).
//!
//! Must not: do I/O beyond protected-path symlink resolution; send or log anything.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

use serde_json::{Value, json};

use super::args::{self, ArgFailure};
use super::context::EvalContext;
use super::dlp::{Direction, Dlp, OnRedactionFailure, OnRequestMatch, Redaction};
use super::model::{Action, DEFAULT_ALLOWED_METHODS, Mode, Policy};
use super::normalize::normalize;
use super::paths::ProtectedPaths;
use super::ratelimit::RateLimiter;
use super::verdict::{
    ApprovalOutcome, Charge, Decision, Denial, MethodVerdict, ToolVerdict, VerdictKind, codes,
};

static DEFAULT_METHODS: LazyLock<HashSet<&'static str>> =
    LazyLock::new(|| DEFAULT_ALLOWED_METHODS.iter().copied().collect());

/// Exact `data.reason` for a tool that is not allowlisted (vector err-050).
pub const NOT_ALLOWLISTED_REASON: &str = "Tool not in allowed_tools list";

/// Evaluates messages against one policy (or none: fail closed).
#[derive(Debug)]
pub struct Engine {
    policy: Option<Arc<Policy>>,
    ctx: EvalContext,
    limiter: RateLimiter,
    protected: ProtectedPaths,
}

/// What request-side DLP did to a call's arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestDlp {
    pub action: RequestDlpAction,
    /// The matches (empty when clean).
    pub report: Redaction,
    /// The error to send when `action` is `Block`.
    pub denial: Option<Denial>,
    /// Audit `failure_reason` (e.g. `argument_validation_failed`, `max_scan_size_exceeded`).
    pub failure_reason: Option<&'static str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestDlpAction {
    /// Nothing matched (or request scanning is off): forward as is.
    Forward,
    /// Matches were replaced in place: forward the redacted arguments.
    ForwardRedacted,
    /// `on_request_match: warn`: forward unchanged, log the matches.
    ForwardWarned,
    /// Redaction broke the request and `on_redaction_failure: allow_original`: forward the
    /// original (restored in place).
    ForwardOriginal,
    /// Refuse with `denial`.
    Block,
}

impl RequestDlp {
    fn clean() -> Self {
        RequestDlp {
            action: RequestDlpAction::Forward,
            report: Redaction::default(),
            denial: None,
            failure_reason: None,
        }
    }

    pub fn forwards(&self) -> bool {
        self.action != RequestDlpAction::Block
    }
}

impl Engine {
    /// An engine for `policy`. The policy's source file and `ctx.protected_files` are always
    /// protected.
    pub fn new(policy: Arc<Policy>, ctx: EvalContext) -> Self {
        let mut files = ctx.protected_files.clone();
        if let Some(src) = policy.source_path() {
            files.push(std::path::absolute(src).unwrap_or_else(|_| src.to_path_buf()));
        }
        let protected = ProtectedPaths::new(
            &policy.spec().protected_paths,
            &files,
            ctx.home.as_deref(),
            &ctx.cwd,
            ctx.resolve_symlinks,
        );
        let limiter = RateLimiter::new(Some(&policy), ctx.clock.now());
        Engine {
            policy: Some(policy),
            ctx,
            limiter,
            protected,
        }
    }

    /// An engine with no policy: default methods only, and every tool call blocked (-32001).
    pub fn no_policy(ctx: EvalContext) -> Self {
        let protected = ProtectedPaths::new(
            &[],
            &ctx.protected_files,
            ctx.home.as_deref(),
            &ctx.cwd,
            ctx.resolve_symlinks,
        );
        Engine {
            policy: None,
            limiter: RateLimiter::new(None, ctx.clock.now()),
            ctx,
            protected,
        }
    }

    pub fn policy(&self) -> Option<&Arc<Policy>> {
        self.policy.as_ref()
    }

    /// The policy's mode (`enforce` without a policy).
    pub fn mode(&self) -> Mode {
        self.policy.as_ref().map_or(Mode::Enforce, |p| p.mode())
    }

    pub fn context(&self) -> &EvalContext {
        &self.ctx
    }

    pub fn dlp(&self) -> Option<&Dlp> {
        self.policy.as_ref().and_then(|p| p.dlp())
    }

    /// Protected entries as `(as written, expanded absolute path)`.
    pub fn protected_paths(&self) -> Vec<(String, String)> {
        self.protected
            .expanded()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect()
    }

    /// The method gate (§2.2), for every client→server request and notification.
    pub fn check_method(&self, method: &str) -> MethodVerdict {
        let n = normalize(method).into_owned();
        let deny = |reason: &str| Denial {
            code: codes::METHOD_NOT_ALLOWED,
            message: "Method not allowed",
            data: json!({"method": n, "reason": reason}),
        };
        let denial = match &self.policy {
            None => (!DEFAULT_METHODS.contains(n.as_str()))
                .then(|| deny("Method not in the default allowed methods (no policy loaded)")),
            Some(p) => {
                let ix = p.index();
                if ix.denied_methods.contains(&n) {
                    Some(deny("Method is in denied_methods"))
                } else if ix.any_method || ix.allowed_methods.contains(&n) {
                    None
                } else if p.spec().allowed_methods_explicit {
                    Some(deny("Method not in allowed_methods list"))
                } else {
                    Some(deny("Method not in the default allowed methods"))
                }
            }
        };
        MethodVerdict { method: n, denial }
    }

    /// The tool checks (§2.3) for a `tools/call` whose method passed the gate.
    pub fn check_tool_call(&self, tool: &str, arguments: Option<&Value>) -> ToolVerdict {
        let n = normalize(tool);
        let n = n.as_ref();
        let Some(p) = &self.policy else {
            let mut v = ToolVerdict::new(n, Decision::Block, VerdictKind::NoPolicy);
            refuse(
                &mut v,
                Denial::forbidden(n, "No policy loaded: all tool calls are blocked"),
            );
            return v;
        };
        let rule_ix = p.rule_index(n);
        let rule = rule_ix.and_then(|i| p.spec().tool_rules.get(i));
        let limited = rule_ix.filter(|i| self.limiter.limits(*i));
        let now = limited.map(|_| self.ctx.clock.now()).unwrap_or_default();

        if let Some(i) = limited
            && !self.limiter.available(i, now)
        {
            return rate_limited(n);
        }
        if let Some(a) = arguments
            && let Some(hit) = self.protected.scan(a)
        {
            let mut v = ToolVerdict::new(n, Decision::Block, VerdictKind::ProtectedPath);
            let reason = if hit.arg.is_empty() {
                "Arguments refer to a protected path".to_owned()
            } else {
                format!("Argument '{}' refers to a protected path", hit.arg)
            };
            refuse(
                &mut v,
                Denial::tool(
                    codes::PROTECTED_PATH,
                    "Access denied: protected path",
                    n,
                    &reason,
                ),
            );
            v.failed_arg = Some(hit.arg).filter(|a| !a.is_empty());
            v.failed_rule = Some(hit.entry);
            return v;
        }

        let mut v = match rule.map(|r| r.action) {
            Some(Action::Block) => violation(
                n,
                VerdictKind::RuleBlock,
                "Tool is blocked by policy",
                "action: block",
            ),
            Some(Action::Ask) => match rule.map(|r| args::check(r, arguments)) {
                Some(Err(f)) => arg_violation(n, f),
                _ => {
                    let mut v = ToolVerdict::new(n, Decision::Ask, VerdictKind::ApprovalRequired);
                    v.reason = "Tool requires human approval".into();
                    v
                }
            },
            Some(Action::Allow) | None => {
                // Allowlisted: listed, or has a rule whose action is `allow` (vector auth-020).
                if rule.is_none() && !p.index().allowed_tools.contains(n) {
                    violation(
                        n,
                        VerdictKind::NotAllowlisted,
                        NOT_ALLOWLISTED_REASON,
                        "allowed_tools",
                    )
                } else if let Some(Err(f)) = rule.map(|r| args::check(r, arguments)) {
                    arg_violation(n, f)
                } else {
                    ToolVerdict::new(n, Decision::Allow, VerdictKind::Allowed)
                }
            }
        };
        if v.decision == Decision::Block && p.mode() == Mode::Monitor {
            v.decision = Decision::AllowMonitor;
            v.denial = None;
        }
        if let Some(i) = limited
            && matches!(
                v.decision,
                Decision::Allow | Decision::AllowMonitor | Decision::Ask
            )
        {
            if !self.limiter.take(i, now) {
                return rate_limited(n);
            }
            v.charge = Some(Arc::new(Charge {
                rule: i,
                refunded: AtomicBool::new(false),
            }));
        }
        v
    }

    /// Turns an `ASK` verdict into the final one after the human answered (or did not).
    /// "No" and timeout refund the rate-limit token. Other verdicts are returned unchanged.
    pub fn resolve_ask(&self, verdict: &ToolVerdict, outcome: ApprovalOutcome) -> ToolVerdict {
        if verdict.decision != Decision::Ask {
            return verdict.clone();
        }
        let mut v = verdict.clone();
        match outcome {
            ApprovalOutcome::Approved => {
                v.decision = Decision::Allow;
                v.kind = VerdictKind::Approved;
                v.reason = "Approved by the user".into();
            }
            ApprovalOutcome::Denied | ApprovalOutcome::TimedOut => {
                self.refund(verdict);
                let (kind, code, message, reason) = if outcome == ApprovalOutcome::Denied {
                    (
                        VerdictKind::UserDenied,
                        codes::USER_DENIED,
                        "User denied",
                        "The user denied this tool call",
                    )
                } else {
                    (
                        VerdictKind::UserTimeout,
                        codes::USER_TIMEOUT,
                        "User approval timeout",
                        "No approval was given in time",
                    )
                };
                v.decision = Decision::Block;
                v.kind = kind;
                // The policy was followed (it asked); the human's "no" is not a violation.
                v.violation = false;
                v.reason = reason.into();
                v.denial = Some(Denial::tool(code, message, &v.tool, reason));
                v.charge = None;
            }
        }
        v
    }

    /// Returns the rate-limit token `verdict` took, once (no-op otherwise).
    pub fn refund(&self, verdict: &ToolVerdict) {
        if let Some(c) = &verdict.charge
            && !c.refunded.swap(true, Ordering::SeqCst)
        {
            self.limiter.refund(c.rule, self.ctx.clock.now());
        }
    }

    /// Whether `tools/list` should show `name`: false when every call to it would be refused
    /// whatever its arguments (enforce mode: no policy, `action: block`, not allowlisted).
    pub fn tool_visible(&self, name: &str) -> bool {
        let Some(p) = &self.policy else {
            return false;
        };
        if p.mode() == Mode::Monitor {
            return true;
        }
        let n = normalize(name);
        match p.rule(&n).map(|r| r.action) {
            Some(Action::Block) => false,
            Some(Action::Ask) => true,
            _ => p.is_allowlisted(&n),
        }
    }

    /// Request-side DLP (`scan_requests`) on the arguments of a call that passed the tool
    /// checks (after approval for `ask`). Redacts in place when `on_request_match: redact`.
    ///
    /// Fail closed on size: content beyond `max_scan_size` cannot be verified, so an oversize
    /// request is treated as a match — refused with `block` and `redact` (what was not scanned
    /// cannot be redacted), forwarded with a warning with `warn`.
    pub fn scan_request(&self, verdict: &ToolVerdict, arguments: &mut Value) -> RequestDlp {
        let Some(dlp) = self.dlp().filter(|d| d.scans(Direction::Request)) else {
            return RequestDlp::clean();
        };
        let report = dlp.scan_value(arguments, Direction::Request);
        if !report.matched() && !report.truncated {
            return RequestDlp {
                report,
                ..RequestDlp::clean()
            };
        }
        let tool = verdict.tool.as_str();
        let block = |report: Redaction, reason: String, failure: Option<&'static str>| RequestDlp {
            action: RequestDlpAction::Block,
            report,
            denial: Some(Denial::forbidden(tool, &reason)),
            failure_reason: failure,
        };
        let oversize_reason = || {
            format!(
                "Request is larger than the DLP scan limit ({} bytes) and cannot be verified",
                dlp.max_scan_size
            )
        };
        match dlp.on_request_match {
            OnRequestMatch::Warn => RequestDlp {
                action: RequestDlpAction::ForwardWarned,
                failure_reason: report.truncated.then_some("max_scan_size_exceeded"),
                report,
                denial: None,
            },
            OnRequestMatch::Block if report.truncated => {
                block(report, oversize_reason(), Some("max_scan_size_exceeded"))
            }
            OnRequestMatch::Block => {
                let reason = format!("Request contains sensitive data ({})", report.rules());
                block(report, reason, None)
            }
            OnRequestMatch::Redact if report.truncated => {
                block(report, oversize_reason(), Some("max_scan_size_exceeded"))
            }
            OnRequestMatch::Redact => self.redact_request(dlp, tool, arguments),
        }
    }

    fn redact_request(&self, dlp: &Dlp, tool: &str, arguments: &mut Value) -> RequestDlp {
        let original = arguments.clone();
        let report = dlp.redact_value(arguments, Direction::Request);
        let failure = self
            .policy
            .as_ref()
            .and_then(|p| p.rule(tool))
            .and_then(|r| args::check(r, Some(arguments)).err());
        let Some(f) = failure else {
            return RequestDlp {
                action: RequestDlpAction::ForwardRedacted,
                report,
                denial: None,
                failure_reason: None,
            };
        };
        let validation_error = describe(&f).0;
        match dlp.on_redaction_failure {
            OnRedactionFailure::AllowOriginal => {
                *arguments = original;
                RequestDlp {
                    action: RequestDlpAction::ForwardOriginal,
                    report,
                    denial: None,
                    failure_reason: Some("argument_validation_failed"),
                }
            }
            OnRedactionFailure::Block => RequestDlp {
                action: RequestDlpAction::Block,
                denial: Some(Denial::forbidden(
                    tool,
                    "Redacted request fails argument validation",
                )),
                report,
                failure_reason: Some("argument_validation_failed"),
            },
            OnRedactionFailure::Reject => RequestDlp {
                action: RequestDlpAction::Block,
                denial: Some(Denial {
                    code: codes::DLP_REDACTION_FAILED,
                    message: "DLP redaction failed",
                    data: json!({
                        "tool": tool,
                        "reason": "Redacted request fails argument validation",
                        "dlp_rule": report.rules(),
                        "validation_error": validation_error,
                    }),
                }),
                report,
                failure_reason: Some("argument_validation_failed"),
            },
        }
    }
}

fn refuse(v: &mut ToolVerdict, d: Denial) {
    v.reason = d
        .data
        .get("reason")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    v.denial = Some(d);
}

fn rate_limited(tool: &str) -> ToolVerdict {
    let mut v = ToolVerdict::new(tool, Decision::RateLimited, VerdictKind::RateLimited);
    let reason = format!("Rate limit exceeded for {tool}. Try again later.");
    refuse(
        &mut v,
        Denial::tool(codes::RATE_LIMITED, "Rate limit exceeded", tool, &reason),
    );
    v.failed_rule = Some("rate_limit".into());
    v
}

fn violation(tool: &str, kind: VerdictKind, reason: &str, rule: &str) -> ToolVerdict {
    let mut v = ToolVerdict::new(tool, Decision::Block, kind);
    refuse(&mut v, Denial::forbidden(tool, reason));
    v.failed_rule = Some(rule.to_owned());
    v
}

/// (reason for the client, failed_arg, failed_rule, kind).
fn describe(f: &ArgFailure) -> (String, Option<String>, String, VerdictKind) {
    match f {
        ArgFailure::Missing { arg, pattern } => (
            format!("Required argument '{arg}' is missing"),
            Some(arg.clone()),
            pattern.clone(),
            VerdictKind::ArgumentMissing,
        ),
        ArgFailure::Mismatch { arg, pattern } => (
            format!("Argument '{arg}' does not match the allowed pattern"),
            Some(arg.clone()),
            pattern.clone(),
            VerdictKind::ArgumentMismatch,
        ),
        ArgFailure::Undeclared { arg } => (
            format!("Argument '{arg}' is not declared in allow_args (strict_args)"),
            Some(arg.clone()),
            "strict_args".into(),
            VerdictKind::UndeclaredArgument,
        ),
        ArgFailure::Ambiguous { arg, other } => (
            format!("Argument '{other}' differs from the checked argument '{arg}' only by case"),
            Some(other.clone()),
            format!("allow_args.{arg}"),
            VerdictKind::AmbiguousArgument,
        ),
        ArgFailure::NotAnObject => (
            "Tool arguments must be an object".into(),
            None,
            "allow_args".into(),
            VerdictKind::ArgumentsNotObject,
        ),
    }
}

fn arg_violation(tool: &str, f: ArgFailure) -> ToolVerdict {
    let (reason, arg, rule, kind) = describe(&f);
    let mut v = violation(tool, kind, &reason, &rule);
    v.failed_arg = arg;
    v
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
