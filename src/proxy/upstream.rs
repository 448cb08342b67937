//! The client → server pump: frame, parse once, decide, audit, then forward the same bytes (or
//! answer with an error built here).
//!
//! While input is pipelined the pump batches: decisions for every buffered line are made first,
//! their audit records written in one go, then the forwarded lines and error replies. Each record
//! still reaches the sink before the message it describes is forwarded, and if the sink fails no
//! message of the batch is forwarded.

use std::io::Read;
use std::sync::Arc;

use serde_json::Value;
use serde_json::value::RawValue;

use crate::audit::Record;
use crate::jsonrpc::{ErrorReply, Frame, Kind, Message, Origin, codes, parse};

use super::Shared;
use super::decide::{CallAction, CallOutcome, MethodOutcome};
use super::lifecycle::Event;
use super::pending::Refused;
use super::records;

/// What one flush of the pump does, in order: audit, forward, reply.
#[derive(Default)]
pub(super) struct Batch {
    records: Vec<Record>,
    forward: Vec<u8>,
    /// Ids (exact JSON text, one per line: JSON text never holds a raw newline) of the
    /// requests in `forward`, to fail them if forwarding fails. One buffer, not a string each.
    forwarded_ids: String,
    replies: Vec<u8>,
}

impl Batch {
    pub(super) fn push_record(&mut self, r: Record) {
        self.records.push(r);
    }

    pub(super) fn push_reply(&mut self, id_text: Option<&str>, err: &ErrorReply) {
        self.reply(id_text, err);
    }

    fn reply(&mut self, id_text: Option<&str>, err: &ErrorReply) {
        self.replies.extend_from_slice(&err.to_line(id_text));
    }

    fn forward(&mut self, bytes: &[u8], id_text: Option<&str>) {
        self.forward.extend_from_slice(bytes);
        self.forward.push(b'\n');
        if let Some(id) = id_text {
            self.forwarded_ids.push_str(id);
            self.forwarded_ids.push('\n');
        }
    }

    fn is_empty(&self) -> bool {
        self.records.is_empty() && self.forward.is_empty() && self.replies.is_empty()
    }
}

/// Runs until the client closes its end (or its stream fails).
pub(super) fn pump(sh: Arc<Shared>, input: Box<dyn Read + Send>) {
    let on_frame = |frame: Frame<'_>, batch: &mut Batch| match frame {
        Frame::Line(line) => handle_line(&sh, line, batch),
        Frame::Oversize(over) => {
            let id = crate::jsonrpc::recover_id(&over.head, &over.tail);
            let reason = format!(
                "message of {} bytes exceeds the limit of {} bytes (--max-message-bytes)",
                over.len, sh.cfg.max_message_bytes
            );
            batch.records.push(records::rejected(
                &sh,
                id.as_deref(),
                &reason,
                codes::INVALID_REQUEST,
            ));
            batch.reply(
                id.as_deref(),
                &ErrorReply::standard(codes::INVALID_REQUEST, reason),
            );
        }
    };
    super::pump_frames(
        &sh,
        input,
        "client",
        &mut Batch::default(),
        on_frame,
        |b| flush(&sh, b),
        Event::ClientEof,
    );
}

pub(super) fn flush(sh: &Shared, batch: &mut Batch) {
    if batch.is_empty() {
        return;
    }
    if !batch.records.is_empty()
        && let Err(e) = sh.audit.write_batch(&batch.records)
    {
        tracing::error!(error = %e, "audit log unavailable: blocking the calls it should record");
        let err = ErrorReply::standard(
            codes::INTERNAL_ERROR,
            format!("the audit log cannot be written ({e}); the call was blocked"),
        );
        fail_forwarded(sh, batch, &err);
    }
    if !batch.forward.is_empty() && sh.to_server.write(&batch.forward).is_err() {
        let err = ErrorReply::standard(
            codes::INTERNAL_ERROR,
            "the server no longer accepts input (it closed its stdin or exited)",
        );
        fail_forwarded(sh, batch, &err);
    }
    if !batch.replies.is_empty() {
        let _ = sh.to_client.write(&batch.replies);
    }
    batch.records.clear();
    batch.forward.clear();
    batch.forwarded_ids.clear();
    batch.replies.clear();
}

/// Nothing of the batch's forward buffer goes out: each request in it gets `err`.
fn fail_forwarded(sh: &Shared, batch: &mut Batch, err: &ErrorReply) {
    batch.forward.clear();
    let ids = std::mem::take(&mut batch.forwarded_ids);
    let mut pending = sh.pending();
    for id in ids.lines() {
        pending.take_client_by_text(id);
        batch.replies.extend_from_slice(&err.to_line(Some(id)));
    }
}

fn handle_line(sh: &Arc<Shared>, line: &[u8], batch: &mut Batch) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let msg = match parse(line, Origin::Client) {
        Ok(m) => m,
        Err(e) => return reject_unparsed(sh, line, e.code, &e.reason, batch),
    };
    match msg.kind {
        Kind::Request | Kind::Notification => handle_call(sh, line, msg, batch),
        Kind::Response | Kind::ErrorResponse => {
            // The client answering a server→client request (sampling, roots, elicitation).
            let id = msg.id.as_deref();
            if id.is_some_and(|id| sh.pending().take_server(id)) {
                // Recorded like every client message, and so written before it is forwarded.
                batch
                    .records
                    .push(records::client_answer(sh, msg.id_text()));
                batch.forward(line, None);
            } else {
                batch.records.push(records::dropped(
                    sh,
                    super::Direction::Upstream,
                    msg.id_text(),
                    "response to no pending server request",
                ));
            }
        }
    }
}

/// A line that did not parse: reply with an error if it might be a request, never forward.
fn reject_unparsed(sh: &Shared, line: &[u8], code: i64, reason: &str, batch: &mut Batch) {
    // Best effort: a lenient reading only to echo an id (or to notice a notification, which gets
    // no reply). Nothing from it is forwarded or decided on.
    let lenient: Option<Value> = serde_json::from_slice(line).ok();
    let is_notification = lenient
        .as_ref()
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("method") && !m.contains_key("id"));
    let id = crate::jsonrpc::recover_id(line, line);
    batch
        .records
        .push(records::rejected(sh, id.as_deref(), reason, code));
    if !is_notification {
        batch.reply(id.as_deref(), &ErrorReply::standard(code, reason));
    }
}

fn handle_call(sh: &Arc<Shared>, line: &[u8], mut msg: Message, batch: &mut Batch) {
    let gate = MethodOutcome::of(&sh.engine, msg.method.as_deref().unwrap_or_default());
    // `aip/token` is answered here (identity sessions only), whatever allowed_methods says.
    if let Some(identity) = sh.identity.as_ref()
        && gate.normalized == crate::identity::TOKEN_METHOD
    {
        if let Some(id_text) = msg.id_text() {
            let (reply, recs) = super::identity::answer_token_request(sh, identity, id_text);
            batch.records.push(records::method_decision(
                sh,
                Some(id_text),
                &gate.raw,
                &gate,
            ));
            batch.records.extend(recs);
            batch.replies.extend_from_slice(&reply);
        }
        return;
    }
    // Only these two need to look inside params; everything else is forwarded as received.
    if matches!(
        gate.normalized.as_str(),
        "tools/call" | "notifications/cancelled"
    ) && let Some(Err(e)) = msg.params.as_mut().map(|p| p.decode().map(|_| ()))
    {
        return reject_unparsed(sh, line, e.code, &e.reason, batch);
    }
    if let Some(err) = &gate.denied {
        let id_text = msg.id_text();
        batch
            .records
            .push(records::method_decision(sh, id_text, &gate.raw, &gate));
        if let Some(id) = id_text {
            batch.reply(Some(id), err);
        }
        return;
    }
    // An identity token is never forwarded, whatever the method.
    let mut token = None;
    let mut changed = false;
    if sh.identity.is_some() {
        let tool = tool_name(&msg);
        match super::identity::strip(&mut msg, &tool) {
            Ok((t, c)) => (token, changed) = (t, c),
            Err(err) => {
                let id_text = msg.id_text();
                batch.records.push(records::rejected(
                    sh,
                    id_text,
                    "malformed identity token field",
                    err.code,
                ));
                if let Some(id) = id_text {
                    batch.reply(Some(id), &err);
                }
                return;
            }
        }
    }
    let rebuilt;
    let line = if changed {
        rebuilt = super::dlp::serialize(&msg);
        rebuilt.as_slice()
    } else {
        line
    };
    if gate.normalized == "tools/list" {
        super::tools::listing_started(sh, &mut msg);
    }
    let id = msg.id.as_deref();
    let id_text = msg.id_text();
    match gate.normalized.as_str() {
        "tools/call" => return handle_tool_call(sh, line, &msg, &gate, token, batch),
        // The server never saw a call still waiting for a human: its cancellation ends here.
        "notifications/cancelled" if cancel_waiting_approval(sh, msg.params_value()) => {
            batch
                .records
                .push(records::method_decision(sh, id_text, &gate.raw, &gate));
            return;
        }
        _ => {}
    }
    batch
        .records
        .push(records::method_decision(sh, id_text, &gate.raw, &gate));
    if let Some(id) = id
        && let Err(why) = sh.pending().insert_client(id, &gate.normalized, None, None)
    {
        batch.reply(id_text, &refused_error(why));
        return;
    }
    batch.forward(line, id_text);
}

/// The normalized tool name of a tools/call (for error data), or "" for other methods.
fn tool_name(msg: &Message) -> String {
    msg.params_value()
        .and_then(|p| p.get("name"))
        .and_then(Value::as_str)
        .map(|n| crate::policy::normalize(n).into_owned())
        .unwrap_or_default()
}

fn refused_error(why: Refused) -> ErrorReply {
    match why {
        Refused::DuplicateId => ErrorReply::standard(
            codes::INVALID_REQUEST,
            "a request with this id is already in flight",
        ),
        Refused::Full => ErrorReply::standard(
            codes::INTERNAL_ERROR,
            "too many requests in flight; retry when some have been answered",
        ),
    }
}

/// If `params.requestId` names a call waiting for a human, cancels that approval.
fn cancel_waiting_approval(sh: &Shared, params: Option<&Value>) -> bool {
    let Some(req) = params.and_then(|p| p.get("requestId")) else {
        return false;
    };
    let Ok(text) = serde_json::to_string(req) else {
        return false;
    };
    let Ok(raw) = RawValue::from_string(text) else {
        return false;
    };
    // Only a call still waiting for a human is ended here. A request the server has keeps its
    // pending entry (and so its id) until the server answers or the session ends: freeing it
    // would let the client reuse the id for another request and get this one's answer matched
    // to it (an unfiltered tools/list delivered as the answer to a ping), while a server that
    // ignores the cancellation, or reads its method differently, goes on working on it.
    let waiting = sh.pending().take_waiting_approval(&raw);
    waiting.map(|cancel| cancel.cancel()).is_some()
}

fn handle_tool_call(
    sh: &Arc<Shared>,
    line: &[u8],
    msg: &Message,
    gate: &MethodOutcome,
    token: Option<String>,
    batch: &mut Batch,
) {
    let id_text = msg.id_text();
    let Some(id) = msg.id.as_deref() else {
        // A tools/call without an id would run on the server with nobody told: never forward.
        batch.records.push(records::rejected(
            sh,
            None,
            "tools/call sent as a notification (no id)",
            codes::INVALID_REQUEST,
        ));
        return;
    };
    let params = msg.params_value().and_then(Value::as_object);
    let name = params.and_then(|p| p.get("name")).and_then(Value::as_str);
    let arguments = params.and_then(|p| p.get("arguments"));
    // The line bounds the size of the arguments (for the audit record's size check).
    let params_len = line.len();
    let (Some(name), true) = (name, arguments.is_none_or(Value::is_object)) else {
        let reason = "tools/call needs params {\"name\": string, \"arguments\"?: object}";
        batch.records.push(records::rejected(
            sh,
            id_text,
            reason,
            codes::INVALID_PARAMS,
        ));
        batch.reply(
            id_text,
            &ErrorReply::standard(codes::INVALID_PARAMS, reason),
        );
        return;
    };
    // Step 0 (v1alpha2): the identity token, before any other check. With a remote validation
    // server the token goes there (validating it here too would spend its single use).
    let mut token_id = None;
    if let Some(identity) = sh.identity.as_ref() {
        let tool = crate::policy::normalize(name);
        let step = if sh.remote.is_some() && token.is_some() {
            super::identity::TokenStep::Pass { token_id: None }
        } else {
            super::identity::check_token(sh, identity, tool.as_ref(), token.as_deref())
        };
        match step {
            super::identity::TokenStep::Pass { token_id: t } => token_id = t,
            super::identity::TokenStep::Refuse { error, record } => {
                batch.records.push(record);
                batch.reply(id_text, &error);
                return;
            }
        }
    }
    let mut outcome = CallOutcome::of(&sh.engine, name, arguments);
    outcome.token_id = token_id;
    // The listed tools and schema_hash (after the allowlist, before asking a human).
    if !matches!(outcome.action, CallAction::Deny(_))
        && let Some(refusal) = super::tools::check_call(sh, name, &outcome.tool)
    {
        outcome.refuse(&sh.engine, refusal, sh.enforcing());
    }
    if let CallAction::Deny(ref err) = outcome.action {
        batch.records.push(records::call_decision(
            sh, id_text, &gate.raw, &outcome, arguments, params_len,
        ));
        batch.reply(id_text, err);
        return;
    }
    let deferred = matches!(outcome.action, CallAction::Ask) || sh.remote.is_some();
    let cancel = deferred.then(crate::approval::Cancel::new);
    if let Err(why) =
        sh.pending()
            .insert_client(id, "tools/call", Some(&outcome.tool), cancel.clone())
    {
        sh.engine.refund(&outcome.verdict);
        batch.reply(id_text, &refused_error(why));
        return;
    }
    batch.records.push(records::call_decision(
        sh, id_text, &gate.raw, &outcome, arguments, params_len,
    ));
    match cancel {
        None => forward_checked_call(sh, line, msg, &outcome, arguments, batch),
        Some(cancel) => {
            // The deferred thread audits its outcome and forwards or replies on its own; flush
            // what came before so the order of records stays the order of events.
            flush(sh, batch);
            let remote = sh.remote.is_some().then_some(token);
            super::approval::start(
                sh,
                super::approval::Deferred {
                    line: line.to_vec(),
                    msg: msg.clone(),
                    outcome,
                    cancel,
                    remote,
                },
            );
        }
    }
}

/// Forwards a call the policy allowed (directly or after approval), applying request-side DLP
/// first. The call is already in the pending table; it is removed again if DLP blocks it.
pub(super) fn forward_checked_call(
    sh: &Shared,
    line: &[u8],
    msg: &Message,
    outcome: &CallOutcome,
    arguments: Option<&Value>,
    batch: &mut Batch,
) {
    let id_text = msg.id_text();
    match super::dlp::request(sh, msg, outcome, arguments) {
        super::dlp::RequestScan::Clean => batch.forward(line, id_text),
        super::dlp::RequestScan::Redacted { line: new, record } => {
            batch.records.push(record);
            batch.forward(&new, id_text);
        }
        super::dlp::RequestScan::Warn { record } => {
            batch.records.push(record);
            batch.forward(line, id_text);
        }
        super::dlp::RequestScan::Block { error, record } => {
            if let Some(id) = msg.id.as_deref() {
                sh.pending().take_client(id);
            }
            sh.engine.refund(&outcome.verdict);
            batch.records.push(record);
            batch.reply(id_text, &error);
        }
    }
}
