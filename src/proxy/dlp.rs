//! The proxy's use of the policy's DLP scanner: tool arguments before forwarding (the engine's
//! `scan_request`, when `scan_requests`), everything the server sends (result including
//! `structuredContent`, error message and data, notification and server-request params),
//! redacted copies of arguments for audit records and approval dialogs. A changed message is
//! re-serialized from the value that was scanned, so what goes out is what was checked.

use serde_json::Value;

use crate::audit::Record;
use crate::jsonrpc::{ErrorReply, Message};
use crate::policy::{Direction as DlpDirection, DlpHit, RequestDlpAction};

use super::decide::CallOutcome;
use super::{Shared, records};

/// One pattern that matched, and how often.
pub(super) type Hit = DlpHit;

/// What request-side DLP decided for a call.
pub(super) enum RequestScan {
    Clean,
    Redacted { line: Vec<u8>, record: Record },
    Warn { record: Record },
    Block { error: ErrorReply, record: Record },
}

pub(super) fn request(
    sh: &Shared,
    msg: &Message,
    outcome: &CallOutcome,
    arguments: Option<&Value>,
) -> RequestScan {
    let Some(args) = arguments else {
        return RequestScan::Clean;
    };
    if !sh
        .engine
        .dlp()
        .is_some_and(|d| d.scans(DlpDirection::Request))
    {
        return RequestScan::Clean;
    }
    let mut scanned = args.clone();
    let result = sh.engine.scan_request(&outcome.verdict, &mut scanned);
    let id_text = msg.id_text();
    let tool = outcome.tool.as_str();
    let record = |action: &str, forwarded: bool| {
        records::dlp_request(
            sh,
            id_text,
            tool,
            &result.report.hits,
            action,
            forwarded,
            result.failure_reason,
        )
    };
    match result.action {
        RequestDlpAction::Forward => RequestScan::Clean,
        RequestDlpAction::ForwardWarned => RequestScan::Warn {
            record: record("WARNED", true),
        },
        RequestDlpAction::ForwardOriginal => RequestScan::Warn {
            record: record("FORWARDED_ORIGINAL", true),
        },
        RequestDlpAction::ForwardRedacted => {
            let mut m = msg.clone();
            if let Some(Ok(Value::Object(p))) = m.params.as_mut().map(|p| p.decode()) {
                p.insert("arguments".into(), scanned);
            }
            RequestScan::Redacted {
                line: serialize(&m),
                record: record("REDACTED", true),
            }
        }
        RequestDlpAction::Block => RequestScan::Block {
            error: match &result.denial {
                Some(d) => ErrorReply::new(d.code, d.message, Some(d.data.clone())),
                None => ErrorReply::new(
                    crate::jsonrpc::codes::FORBIDDEN,
                    "Forbidden",
                    Some(
                        serde_json::json!({"tool": tool, "reason": "sensitive data in the arguments"}),
                    ),
                ),
            },
            record: record("BLOCKED", false),
        },
    }
}

/// What [`scan_response`] found: the hits (already redacted in `msg`), and whether part of the
/// message was beyond `max_scan_size` and not scanned (the spec: MUST log a warning).
#[derive(Default)]
pub(super) struct Scanned {
    pub hits: Vec<Hit>,
    pub truncated: bool,
}

/// Redacts the server-originated parts of `msg` in place. An error means a part could not be
/// decoded (e.g. duplicate keys) or the message has members DLP does not scan: it must not be
/// forwarded, since it could not be scanned.
pub(super) fn scan_response(
    sh: &Shared,
    msg: &mut Message,
) -> Result<Scanned, crate::jsonrpc::ParseError> {
    let Some(dlp) = sh.engine.dlp() else {
        return Ok(Scanned::default());
    };
    if !dlp.scans(DlpDirection::Response) {
        return Ok(Scanned::default());
    }
    if msg.extra_members {
        // Only result, error and params are scanned; anything else would reach the client
        // unscanned (named neither here nor in the reply: a member's name can be the secret).
        return Err(crate::jsonrpc::ParseError {
            code: crate::jsonrpc::codes::INTERNAL_ERROR,
            reason: "it has top-level members besides jsonrpc, id, method, params, result and \
                     error, which DLP does not scan"
                .into(),
        });
    }
    let mut out = Scanned::default();
    for part in [msg.result.as_mut(), msg.error.as_mut(), msg.params.as_mut()]
        .into_iter()
        .flatten()
    {
        let value = part.decode()?;
        let r = dlp.redact_value(value, DlpDirection::Response);
        out.truncated |= r.truncated;
        for h in r.hits {
            match out.hits.iter_mut().find(|x| x.rule == h.rule) {
                Some(x) => x.count += h.count,
                None => out.hits.push(h),
            }
        }
    }
    Ok(out)
}

/// A copy of `v` with DLP applied, for audit records and dialogs: request patterns when the
/// policy scans requests, otherwise the response patterns (so secrets known to the policy are
/// not copied into the audit log verbatim).
/// Whether [`redacted_copy`] can change anything (DLP is on).
pub(super) fn redacts_records(sh: &Shared) -> bool {
    sh.engine.dlp().is_some_and(|d| d.enabled)
}

pub(super) fn redacted_copy(sh: &Shared, v: &Value) -> Value {
    let mut copy = v.clone();
    if let Some(dlp) = sh.engine.dlp().filter(|d| d.enabled) {
        let dir = if dlp.scans(DlpDirection::Request) {
            DlpDirection::Request
        } else {
            DlpDirection::Response
        };
        dlp.redact_value(&mut copy, dir);
    }
    copy
}

/// Redacts a diagnostic text (non-JSON-RPC server output) with the response patterns.
pub(super) fn redact_text(sh: &Shared, text: &str) -> String {
    match sh.engine.dlp() {
        Some(dlp) => dlp.redact_str(text, DlpDirection::Response).0.into_owned(),
        None => text.to_owned(),
    }
}

/// Serializes a message we changed, as one line without its newline. The id is copied as the
/// exact text the peer sent; parts nobody decoded are copied as received.
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
            v.write_json(&mut out);
        }
    }
    out.push(b'}');
    out
}
