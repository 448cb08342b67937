//! The server → client pump, and the server's stderr.
//!
//! Responses are matched to the client's pending requests: answers to `tools/list` lose the tools
//! the policy blocks (in enforce mode), every message's strings pass through response DLP, and
//! anything changed is re-serialized; everything else is forwarded byte for byte. Lines that are
//! not JSON-RPC never reach the client: they go to stderr, prefixed. Responses to ids the client
//! never sent (or that were already answered or cancelled) are dropped. An oversized response
//! becomes an error for the request it answers.

use std::io::{Read, Write};
use std::sync::Arc;

use crate::audit::Record;
use crate::jsonrpc::{ErrorReply, Frame, Kind, Message, Origin, codes, parse};

use super::lifecycle::Event;
use super::{Direction, Shared, dlp, records, tools};

/// Most bytes of a non-JSON-RPC line copied to stderr.
const GARBAGE_PREVIEW: usize = 4096;

#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    forward: Vec<u8>,
    stderr: Vec<u8>,
}

pub(super) fn pump(sh: Arc<Shared>, input: Box<dyn Read + Send>) {
    let on_frame = |frame: Frame<'_>, batch: &mut Batch| match frame {
        Frame::Line(line) => handle_line(&sh, line, batch),
        Frame::Oversize(over) => {
            let id = crate::jsonrpc::recover_id(&over.head, &over.tail);
            let reason = format!(
                "the server sent a message of {} bytes, over the limit of {} bytes (--max-message-bytes)",
                over.len, sh.cfg.max_message_bytes
            );
            fail_request(&sh, id.as_deref(), &reason, batch);
        }
    };
    super::pump_frames(
        &sh,
        input,
        "server",
        &mut Batch::default(),
        on_frame,
        |b| flush(&sh, b),
        Event::ServerStdoutEof,
    );
}

fn flush(sh: &Shared, batch: &mut Batch) {
    if !batch.records.is_empty() {
        if let Err(e) = sh.audit.write_batch(&batch.records) {
            // Responses are not calls; what must not pass unaudited is redacted or dropped
            // content, which the records describe. Keep forwarding, but say it loudly.
            tracing::error!(error = %e, "audit log unavailable while recording server output");
        }
        batch.records.clear();
    }
    if !batch.forward.is_empty() {
        let _ = sh.to_client.write(&batch.forward);
        batch.forward.clear();
    }
    if !batch.stderr.is_empty() {
        let mut err = sh.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let _ = err.write_all(&batch.stderr).and_then(|()| err.flush());
        batch.stderr.clear();
    }
}

/// The server's reply for `id` could not be delivered: tell the client, if it is waiting.
fn fail_request(sh: &Shared, id_text: Option<&str>, reason: &str, batch: &mut Batch) {
    let reason = &dlp::redact_text(sh, reason);
    let waiting = id_text.and_then(|id| sh.pending().take_client_by_text(id));
    batch.records.push(records::server_message_rejected(
        sh,
        id_text,
        reason,
        waiting.is_some(),
    ));
    match waiting {
        Some(req) => {
            let err = ErrorReply::standard(codes::INTERNAL_ERROR, reason);
            batch
                .forward
                .extend_from_slice(&err.to_line(Some(&req.id_text)));
        }
        None => note_stderr(batch, &format!("aip: {reason}\n")),
    }
}

fn note_stderr(batch: &mut Batch, text: &str) {
    batch.stderr.extend_from_slice(text.as_bytes());
}

fn handle_line(sh: &Shared, line: &[u8], batch: &mut Batch) {
    if line.iter().all(u8::is_ascii_whitespace) {
        return;
    }
    let msg = match parse(line, Origin::Server) {
        Ok(m) => m,
        Err(e) if e.code == codes::PARSE_ERROR => return not_jsonrpc(sh, line, batch),
        Err(e) => {
            let id = crate::jsonrpc::recover_id(line, line);
            let reason = format!("the server sent an invalid JSON-RPC message: {}", e.reason);
            return fail_request(sh, id.as_deref(), &reason, batch);
        }
    };
    match msg.kind {
        Kind::Response | Kind::ErrorResponse => handle_response(sh, line, msg, batch),
        Kind::Request => {
            let Some(id) = msg.id.as_deref() else { return };
            if let Err(why) = sh.pending().insert_server(id) {
                // Answer the server ourselves; the client never sees a request we cannot track.
                let err = ErrorReply::standard(
                    codes::INTERNAL_ERROR,
                    format!("server request refused by the proxy: {why:?}"),
                );
                let _ = sh.to_server.write(&err.to_line(msg.id_text()));
                batch.records.push(records::dropped(
                    sh,
                    Direction::Downstream,
                    msg.id_text(),
                    "server request refused: too many in flight or duplicate id",
                ));
                return;
            }
            forward_scanned(sh, line, msg, batch);
        }
        Kind::Notification => forward_scanned(sh, line, msg, batch),
    }
}

fn handle_response(sh: &Shared, line: &[u8], mut msg: Message, batch: &mut Batch) {
    let Some(id) = msg.id.as_deref() else { return };
    let Some(req) = sh.pending().take_client(id) else {
        if sh.drop_limiter.admit() {
            batch.records.push(records::dropped(
                sh,
                Direction::Downstream,
                msg.id_text(),
                "response to no pending client request (unknown, answered or cancelled id)",
            ));
        }
        return;
    };
    let mut changed = false;
    if req.method == "tools/list"
        && msg.kind == Kind::Response
        && let Some(part) = msg.result.as_mut()
    {
        let result = match part.decode() {
            Ok(r) => r,
            // A listing that cannot be read cannot be filtered: it is not forwarded.
            Err(e) => return refuse_undecodable(sh, &req.id_text, &e, batch),
        };
        let report = tools::on_tools_list(sh, result);
        changed |= report.changed;
        batch.records.extend(report.records);
    }
    let hits = match dlp::scan_response(sh, &mut msg) {
        Ok(s) => note_truncation(sh, msg.id_text(), s, batch),
        Err(e) => return refuse_undecodable(sh, &req.id_text, &e, batch),
    };
    if !hits.is_empty() {
        changed = true;
        batch.records.extend(records::dlp_response(
            sh,
            msg.id_text(),
            req.tool.as_deref(),
            &hits,
        ));
    }
    if changed {
        batch.forward.extend_from_slice(&dlp::serialize(&msg));
        batch.forward.push(b'\n');
    } else {
        batch.forward.extend_from_slice(line);
        batch.forward.push(b'\n');
    }
}

/// A response whose content had to be inspected but could not be decoded: the client gets an
/// error for its request instead.
fn refuse_undecodable(
    sh: &Shared,
    id_text: &str,
    e: &crate::jsonrpc::ParseError,
    batch: &mut Batch,
) {
    // The parser's reason can quote the server's text (a duplicate key's name): redacted like
    // any other server output before it reaches the client or the audit log.
    let reason = dlp::redact_text(
        sh,
        &format!("the server's answer could not be inspected: {}", e.reason),
    );
    batch.records.push(records::server_message_rejected(
        sh,
        Some(id_text),
        &reason,
        true,
    ));
    let err = ErrorReply::standard(codes::INTERNAL_ERROR, reason);
    batch.forward.extend_from_slice(&err.to_line(Some(id_text)));
}

/// Records and logs a scan that stopped at `max_scan_size` (what lies beyond went unscanned, as
/// the spec has it, and must not go unsaid); returns the hits.
fn note_truncation(
    sh: &Shared,
    id_text: Option<&str>,
    scanned: dlp::Scanned,
    batch: &mut Batch,
) -> Vec<dlp::Hit> {
    if scanned.truncated {
        tracing::warn!(
            "DLP scanned only the first max_scan_size bytes of a server message; the rest was \
             forwarded unscanned (raise spec.dlp.max_scan_size to cover it)"
        );
        batch.records.push(records::scan_truncated(sh, id_text));
    }
    scanned.hits
}

/// Server requests and notifications: DLP over their params, then forward.
fn forward_scanned(sh: &Shared, line: &[u8], mut msg: Message, batch: &mut Batch) {
    let hits = match dlp::scan_response(sh, &mut msg) {
        Ok(s) => note_truncation(sh, msg.id_text(), s, batch),
        Err(e) => {
            // Not forwarded: it could not be scanned. A server request gets an error back, so
            // the server does not wait for an answer that will never come.
            if msg.kind == Kind::Request
                && let Some(id) = msg.id.as_deref()
            {
                sh.pending().take_server(id);
                let err = ErrorReply::standard(
                    codes::INTERNAL_ERROR,
                    format!("the proxy could not inspect this request: {}", e.reason),
                );
                let _ = sh.to_server.write(&err.to_line(msg.id_text()));
            }
            batch.records.push(records::server_message_rejected(
                sh,
                msg.id_text(),
                &dlp::redact_text(
                    sh,
                    &format!("server message could not be inspected: {}", e.reason),
                ),
                false,
            ));
            return;
        }
    };
    if hits.is_empty() {
        batch.forward.extend_from_slice(line);
        batch.forward.push(b'\n');
    } else {
        batch
            .records
            .extend(records::dlp_response(sh, msg.id_text(), None, &hits));
        batch.forward.extend_from_slice(&dlp::serialize(&msg));
        batch.forward.push(b'\n');
    }
}

fn not_jsonrpc(sh: &Shared, line: &[u8], batch: &mut Batch) {
    let shown = &line[..line.len().min(GARBAGE_PREVIEW)];
    let text = String::from_utf8_lossy(shown);
    let text = dlp::redact_text(sh, &text);
    note_stderr(
        batch,
        &format!(
            "aip: server wrote a non-JSON-RPC line to stdout (not forwarded{}): {}\n",
            if line.len() > GARBAGE_PREVIEW {
                ", truncated"
            } else {
                ""
            },
            text.escape_debug()
        ),
    );
    if sh.drop_limiter.admit() {
        batch.records.push(records::dropped(
            sh,
            Direction::Downstream,
            None,
            "server wrote a non-JSON-RPC line to stdout",
        ));
    }
}

/// Copies the server's stderr to ours, through the DLP stderr filter when the policy asks for
/// it (`dlp.filter_stderr`; the filter reassembles lines across read boundaries and holds at most
/// one bounded line).
pub(super) fn stderr_pump(sh: Arc<Shared>, mut input: Box<dyn Read + Send>) {
    let mut filter = sh.engine.dlp().and_then(|d| d.stderr_filter());
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let out = match filter.as_mut() {
            Some(f) => f.push(&buf[..n]),
            None => buf[..n].to_vec(),
        };
        write_stderr(&sh, &out);
    }
    if let Some(f) = filter.as_mut() {
        let rest = f.finish();
        write_stderr(&sh, &rest);
    }
}

fn write_stderr(sh: &Shared, bytes: &[u8]) {
    if bytes.is_empty() {
        return;
    }
    let mut err = sh.stderr.lock().unwrap_or_else(|p| p.into_inner());
    let _ = err.write_all(bytes).and_then(|()| err.flush());
}
