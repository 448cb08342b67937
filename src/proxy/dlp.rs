//! The proxy's use of the policy's DLP scanner: tool arguments before forwarding (when
//! `scan_requests`), everything the server sends (result including `structuredContent`, error
//! message and data, notification and server-request params), redacted copies of arguments for
//! audit records and approval dialogs, and stderr lines. A changed message is re-serialized from
//! the value that was scanned, so what goes out is what was checked.

use serde_json::Value;

use crate::audit::Record;
use crate::jsonrpc::{ErrorReply, Message, codes};
use crate::policy::{OnRequestMatch, Scope};

use super::{Shared, records};

/// One pattern that matched, and how often.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Hit {
    pub rule: String,
    pub count: usize,
}

/// What request-side DLP decided for a call.
pub(super) enum RequestScan {
    Clean,
    Redacted { line: Vec<u8>, record: Record },
    Warn { record: Record },
    Block { error: ErrorReply, record: Record },
}

fn hits_of(raw: Vec<crate::policy::DlpHit>) -> Vec<Hit> {
    raw.into_iter()
        .map(|h| Hit {
            rule: h.rule,
            count: h.count,
        })
        .collect()
}

pub(super) fn request(sh: &Shared, msg: &Message, arguments: Option<&Value>) -> RequestScan {
    let Some(dlp) = sh.engine.dlp() else {
        return RequestScan::Clean;
    };
    let Some(args) = arguments else {
        return RequestScan::Clean;
    };
    if !dlp.scan_requests() {
        return RequestScan::Clean;
    }
    let mut redacted = args.clone();
    let hits = hits_of(dlp.redact_value(&mut redacted, Scope::Request));
    if hits.is_empty() {
        return RequestScan::Clean;
    }
    let tool = msg
        .params
        .as_ref()
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let id_text = msg.id_text();
    match dlp.on_request_match() {
        OnRequestMatch::Block => RequestScan::Block {
            error: ErrorReply::new(
                codes::FORBIDDEN,
                "Forbidden",
                Some(serde_json::json!({
                    "tool": tool,
                    "reason": format!("sensitive data ({}) in the arguments", rule_names(&hits)),
                })),
            ),
            record: records::dlp_request(sh, id_text, &tool, &hits, "BLOCKED", false),
        },
        OnRequestMatch::Warn => RequestScan::Warn {
            record: records::dlp_request(sh, id_text, &tool, &hits, "WARNED", true),
        },
        OnRequestMatch::Redact => {
            let mut m = msg.clone();
            if let Some(Value::Object(p)) = m.params.as_mut() {
                p.insert("arguments".into(), redacted);
            }
            RequestScan::Redacted {
                line: serialize(&m),
                record: records::dlp_request(sh, id_text, &tool, &hits, "REDACTED", true),
            }
        }
    }
}

fn rule_names(hits: &[Hit]) -> String {
    hits.iter()
        .map(|h| h.rule.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Redacts the server-originated parts of `msg` in place; returns the hits.
pub(super) fn scan_response(sh: &Shared, msg: &mut Message) -> Vec<Hit> {
    let Some(dlp) = sh.engine.dlp() else {
        return Vec::new();
    };
    if !dlp.scan_responses() {
        return Vec::new();
    }
    let mut hits: Vec<Hit> = Vec::new();
    for part in [msg.result.as_mut(), msg.error.as_mut(), msg.params.as_mut()]
        .into_iter()
        .flatten()
    {
        for h in hits_of(dlp.redact_value(part, Scope::Response)) {
            match hits.iter_mut().find(|x| x.rule == h.rule) {
                Some(x) => x.count += h.count,
                None => hits.push(h),
            }
        }
    }
    hits
}

/// A copy of `v` with every DLP pattern (any scope) redacted, for audit records and dialogs.
pub(super) fn redacted_copy(sh: &Shared, v: &Value) -> Value {
    let mut copy = v.clone();
    if let Some(dlp) = sh.engine.dlp() {
        dlp.redact_value(&mut copy, Scope::All);
    }
    copy
}

/// Redacts a text (stderr, diagnostics) with every pattern.
pub(super) fn redact_text(sh: &Shared, text: &str) -> String {
    match sh.engine.dlp() {
        Some(dlp) => dlp
            .redact_str(text, Scope::All)
            .map(|r| r.0)
            .unwrap_or_else(|| text.to_owned()),
        None => text.to_owned(),
    }
}

pub(super) fn filter_stderr(sh: &Shared) -> bool {
    sh.engine.dlp().is_some_and(|d| d.filter_stderr())
}

/// Serializes a message we changed, as one line with its newline. The id is copied as the exact
/// text the peer sent.
pub(super) fn serialize(msg: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"jsonrpc":"2.0""#);
    if let Some(id) = msg.id.as_deref() {
        out.extend_from_slice(br#","id":"#);
        out.extend_from_slice(id.get().as_bytes());
    }
    if let Some(m) = &msg.method {
        out.extend_from_slice(br#","method":"#);
        out.extend_from_slice(&serde_json::to_vec(m).unwrap_or_default());
    }
    for (k, v) in [
        ("params", &msg.params),
        ("result", &msg.result),
        ("error", &msg.error),
    ] {
        if let Some(v) = v {
            out.extend_from_slice(format!(",\"{k}\":").as_bytes());
            out.extend_from_slice(&serde_json::to_vec(v).unwrap_or_default());
        }
    }
    out.extend_from_slice(b"}\n");
    out
}
