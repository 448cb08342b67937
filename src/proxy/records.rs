//! Audit records the proxy writes (spec digest §4 field names, plus `session_id`, `request_id`
//! and `error_code`). Argument values in records are DLP-redacted and bounded in size.

use serde_json::{Value, json};

use crate::approval::Answer;
use crate::audit::Record;

use super::decide::{CallOutcome, MethodOutcome};
use super::{Direction, Shared, dlp};

/// Largest serialized `args` kept in a record; larger ones are replaced by a summary.
const MAX_ARGS_BYTES: usize = 16 * 1024;

fn base(sh: &Shared, direction: Direction) -> Record {
    Record::now()
        .with_shared("session_id", &sh.session_id)
        .with_static("direction", direction.as_str())
}

fn event(sh: &Shared, name: &'static str, direction: Direction) -> Record {
    base(sh, direction).with_static("event", name)
}

fn id_value(id_text: Option<&str>) -> Value {
    let Some(text) = id_text else {
        return Value::Null;
    };
    // Most ids are small integers: no JSON parse for those.
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    serde_json::from_str(text).unwrap_or(Value::Null)
}

/// Sets `args` on a record: DLP-redacted, or a size summary when the call's params text (which
/// bounds the arguments' size) is over [`MAX_ARGS_BYTES`]. Without DLP the arguments are
/// serialized straight from the message, not copied first.
fn with_bounded_args(r: Record, sh: &Shared, args: Option<&Value>, params_len: usize) -> Record {
    let Some(args) = args else {
        return r.with("args", json!({}));
    };
    if params_len > MAX_ARGS_BYTES {
        return r.with(
            "args",
            json!({"_aip_truncated": true, "params_bytes": params_len}),
        );
    }
    if dlp::redacts_records(sh) {
        r.with("args", dlp::redacted_copy(sh, args))
    } else {
        r.with_serialized("args", args)
    }
}

pub(super) fn method_decision(
    sh: &Shared,
    id_text: Option<&str>,
    raw_method: &str,
    gate: &MethodOutcome,
) -> Record {
    let mut r = base(sh, Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with("method", raw_method)
        .with_static(
            "decision",
            if gate.denied.is_some() {
                "BLOCK"
            } else {
                "ALLOW"
            },
        )
        .with_static("policy_mode", sh.mode_str())
        .with("violation", gate.denied.is_some());
    if let Some(err) = &gate.denied {
        r.set("error_code", err.code);
        r.set("reason", "method not allowed");
    }
    r
}

pub(super) fn call_decision(
    sh: &Shared,
    id_text: Option<&str>,
    raw_method: &str,
    out: &CallOutcome,
    args: Option<&Value>,
    params_len: usize,
) -> Record {
    let r = base(sh, Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with("method", raw_method)
        .with("tool", out.tool.as_str());
    with_bounded_args(r, sh, args, params_len)
        .with_static("decision", out.audit_decision)
        .with_static("policy_mode", sh.mode_str())
        .with("violation", out.violation)
        .with_opt("failed_arg", out.failed_arg.clone())
        .with_opt("failed_rule", out.failed_rule.clone())
        .with_opt("error_code", out.error_code())
        .with_opt("reason", out.reason.clone())
        .with_static("verdict", out.kind)
        .with_opt("token_id", out.token_id.clone())
}

pub(super) fn rejected(sh: &Shared, id_text: Option<&str>, reason: &str, code: i64) -> Record {
    base(sh, Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with_static("decision", "BLOCK")
        .with_static("policy_mode", sh.mode_str())
        .with("violation", true)
        .with("error_code", code)
        .with("reason", reason)
}

/// A server message longer than `max_scan_size`: DLP scanned only its beginning.
pub(super) fn scan_truncated(sh: &Shared, id_text: Option<&str>) -> Record {
    event(sh, "DLP_SCAN_TRUNCATED", Direction::Downstream)
        .with("request_id", id_value(id_text))
        .with_static(
            "reason",
            "content beyond spec.dlp.max_scan_size was forwarded unscanned",
        )
}

/// The client's answer to a server request (sampling, roots, elicitation), forwarded.
pub(super) fn client_answer(sh: &Shared, id_text: Option<&str>) -> Record {
    event(sh, "CLIENT_ANSWER_FORWARDED", Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with_static("decision", "ALLOW")
        .with_static("policy_mode", sh.mode_str())
        .with("violation", false)
}

pub(super) fn dropped(
    sh: &Shared,
    direction: Direction,
    id_text: Option<&str>,
    reason: &str,
) -> Record {
    event(sh, "MESSAGE_DROPPED", direction)
        .with("request_id", id_value(id_text))
        .with("reason", reason)
}

pub(super) fn server_message_rejected(
    sh: &Shared,
    id_text: Option<&str>,
    reason: &str,
    client_notified: bool,
) -> Record {
    event(sh, "SERVER_MESSAGE_REJECTED", Direction::Downstream)
        .with("request_id", id_value(id_text))
        .with("reason", reason)
        .with("client_notified", client_notified)
}

pub(super) fn approval(
    sh: &Shared,
    id_text: &str,
    tool: &str,
    answer: &Answer,
    approver: &str,
) -> Record {
    let (outcome, reason) = match answer {
        Answer::Approved => ("APPROVED", None),
        Answer::Denied(why) => ("DENIED", Some(why.clone())),
        Answer::TimedOut => ("TIMEOUT", None),
        Answer::Unavailable(why) => ("UNAVAILABLE", Some(why.clone())),
        Answer::Cancelled => ("CANCELLED", None),
    };
    event(sh, "APPROVAL", Direction::Upstream)
        .with("request_id", id_value(Some(id_text)))
        .with("tool", tool)
        .with("approval", outcome)
        .with("approver", approver)
        .with_opt("reason", reason)
}

/// One `DLP_TRIGGERED` record per pattern that matched (spec §4 shape).
pub(super) fn dlp_response(
    sh: &Shared,
    id_text: Option<&str>,
    tool: Option<&str>,
    hits: &[dlp::Hit],
) -> Vec<Record> {
    hits.iter()
        .map(|h| {
            event(sh, "DLP_TRIGGERED", Direction::Downstream)
                .with("request_id", id_value(id_text))
                .with_opt("tool", tool)
                .with("dlp_rule", h.rule.as_str())
                .with("dlp_action", "REDACTED")
                .with("dlp_match_count", h.count)
        })
        .collect()
}

pub(super) fn dlp_request(
    sh: &Shared,
    id_text: Option<&str>,
    tool: &str,
    hits: &[dlp::Hit],
    action: &str,
    forwarded: bool,
    failure_reason: Option<&str>,
) -> Record {
    let rules: Vec<&str> = hits.iter().map(|h| h.rule.as_str()).collect();
    let count: usize = hits.iter().map(|h| h.count).sum();
    event(sh, "DLP_REQUEST_REDACTION", Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with("tool", tool)
        .with("dlp_rule", rules.join(","))
        .with("redaction_count", count)
        .with("dlp_action", action)
        .with("forwarded", forwarded)
        .with_opt("failure_reason", failure_reason)
}

pub(super) fn remote_validation(
    sh: &Shared,
    id_text: Option<&str>,
    tool: &str,
    verdict: &str,
    failover: Option<&str>,
) -> Record {
    event(sh, "REMOTE_VALIDATION", Direction::Upstream)
        .with("request_id", id_value(id_text))
        .with("tool", tool)
        .with("remote_decision", verdict)
        .with_opt("failover_mode", failover)
}

pub(super) fn tool_definition_changed(sh: &Shared, tool: &str, old: &str, new: &str) -> Record {
    event(sh, "TOOL_DEFINITION_CHANGED", Direction::Downstream)
        .with("tool", tool)
        .with("previous_hash", old)
        .with("new_hash", new)
}

pub(super) fn tools_hidden(sh: &Shared, tools: &[String]) -> Record {
    event(sh, "TOOLS_HIDDEN", Direction::Downstream).with("tools", tools.to_vec())
}
