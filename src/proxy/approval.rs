//! Calls that cannot be decided on the pump thread: `action: ask` (a human answers) and calls
//! checked by a remote validation server (a network round trip). Each gets a thread that
//! resolves it, audits the outcome, and either forwards the checked bytes or replies with an
//! error; the pumps never wait. The number of such calls at once is bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::json;

use crate::approval::{Answer, ApprovalRequest, Cancel};
use crate::jsonrpc::{ErrorReply, Message, codes};
use crate::policy::ApprovalOutcome;
use crate::server::{FailoverAction, RemoteVerdict};

use super::Shared;
use super::decide::{CallAction, CallOutcome};
use super::records;

/// A call waiting on this module.
pub(super) struct Deferred {
    /// The exact bytes to forward if the call goes through.
    pub line: Vec<u8>,
    pub msg: Message,
    pub outcome: CallOutcome,
    /// Wakes the wait when the client cancels the call or the session ends.
    pub cancel: Cancel,
    /// `Some(token)`: ask the remote validation server first (with the call's identity token).
    pub remote: Option<Option<String>>,
}

/// Starts resolving a call already recorded as pending with `d.cancel`.
pub(super) fn start(sh: &Arc<Shared>, d: Deferred) {
    let waiting = sh.asks.fetch_add(1, Ordering::SeqCst) + 1;
    if waiting > sh.cfg.max_waiting_approvals {
        finish(sh);
        let why = format!(
            "more than {} calls are waiting for approval or validation",
            sh.cfg.max_waiting_approvals
        );
        return conclude_answer(sh, &d, Answer::Unavailable(why));
    }
    let sh2 = Arc::clone(sh);
    // The closure owns the call; if the thread cannot start it is resolved right here.
    let slot = Arc::new(std::sync::Mutex::new(Some(d)));
    let slot2 = Arc::clone(&slot);
    let spawned = std::thread::Builder::new()
        .name("aip-deferred".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let taken = slot2.lock().unwrap_or_else(|p| p.into_inner()).take();
            if let Some(d) = taken {
                resolve(&sh2, d);
            }
            finish(&sh2);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start a thread for a deferred call");
        finish(sh);
        let taken = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(d) = taken {
            conclude_answer(sh, &d, Answer::Unavailable(format!("no thread: {e}")));
        }
    }
}

/// One fewer deferred call; the lifecycle notices and may now close the server's stdin.
fn finish(sh: &Shared) {
    sh.asks.fetch_sub(1, Ordering::SeqCst);
}

fn resolve(sh: &Arc<Shared>, mut d: Deferred) {
    if let Some(token) = d.remote.take() {
        match remote_step(sh, &d, token) {
            RemoteStep::Proceed => {}
            RemoteStep::AskHuman => d.outcome.action = CallAction::Ask,
            RemoteStep::Refuse(err) => return conclude_refusal(sh, &d, err),
        }
        if d.cancel.is_cancelled() {
            return conclude_answer(sh, &d, Answer::Cancelled);
        }
    }
    match d.outcome.action {
        CallAction::Ask => {
            let args = d
                .msg
                .params_value()
                .and_then(|p| p.get("arguments"))
                .map(|a| super::dlp::redacted_copy(sh, a));
            let req = ApprovalRequest {
                server: sh.cfg.server_name.clone(),
                session_id: sh.session_id.to_string(),
                request_id: d.msg.id_text().unwrap_or("null").to_owned(),
                tool: d.outcome.tool.clone(),
                args_preview: ApprovalRequest::preview(args.as_ref()),
            };
            let answer = sh.approver.ask(&req, &d.cancel, sh.cfg.approval_timeout);
            conclude_answer(sh, &d, answer);
        }
        CallAction::Forward => forward(sh, &d, None),
        CallAction::Deny(ref err) => {
            let err = err.clone();
            conclude_refusal(sh, &d, err)
        }
    }
}

enum RemoteStep {
    Proceed,
    AskHuman,
    Refuse(ErrorReply),
}

/// Asks the remote validation server; audits its answer (and any failover).
fn remote_step(sh: &Shared, d: &Deferred, token: Option<String>) -> RemoteStep {
    let Some(remote) = sh.remote.as_ref() else {
        return RemoteStep::Proceed;
    };
    let name = d
        .msg
        .params_value()
        .and_then(|p| p.get("name"))
        .and_then(|n| n.as_str())
        .unwrap_or_default()
        .to_owned();
    let args = d
        .msg
        .params_value()
        .and_then(|p| p.get("arguments"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let verdict =
        remote
            .runtime
            .block_on(remote.validator.validate(&name, &args, token.as_deref()));
    let tool = d.outcome.tool.as_str();
    let forbidden = |reason: &str| {
        ErrorReply::new(
            codes::FORBIDDEN,
            "Forbidden",
            Some(json!({"tool": tool, "reason": reason})),
        )
    };
    let (step, summary, failover): (RemoteStep, String, Option<&str>) = match verdict {
        RemoteVerdict::Allow { .. } => (RemoteStep::Proceed, "allow".into(), None),
        RemoteVerdict::Ask { .. } => (RemoteStep::AskHuman, "ask".into(), None),
        RemoteVerdict::Block { reason, .. } => (
            RemoteStep::Refuse(forbidden(&reason)),
            format!("block: {reason}"),
            None,
        ),
        RemoteVerdict::RateLimited => (
            RemoteStep::Refuse(ErrorReply::new(
                codes::RATE_LIMITED,
                "Rate limit exceeded",
                Some(
                    json!({"tool": tool, "reason": format!("Rate limit exceeded for {tool}. Try again later.")}),
                ),
            )),
            "rate_limited".into(),
            None,
        ),
        RemoteVerdict::TokenRequired => (
            RemoteStep::Refuse(ErrorReply::new(
                codes::TOKEN_REQUIRED,
                crate::identity::TOKEN_REQUIRED_MESSAGE,
                Some(crate::identity::token_required_data(tool)),
            )),
            "token_required".into(),
            None,
        ),
        RemoteVerdict::TokenInvalid { token_error } => (
            RemoteStep::Refuse(ErrorReply::new(
                codes::TOKEN_INVALID,
                "Token invalid",
                Some(
                    json!({"tool": tool, "reason": "Token validation failed", "token_error": token_error}),
                ),
            )),
            format!("token_invalid: {token_error}"),
            None,
        ),
        RemoteVerdict::Unavailable { action, cause } => match action {
            FailoverAction::Deny => (
                RemoteStep::Refuse(forbidden("validation_unavailable")),
                format!("unavailable: {cause}"),
                Some("fail_closed"),
            ),
            FailoverAction::AllowFailOpen => {
                tracing::warn!(%tool, %cause, "failover_mode=fail_open triggered");
                (
                    RemoteStep::Proceed,
                    format!("unavailable: {cause}"),
                    Some("fail_open"),
                )
            }
            FailoverAction::DenyConstraint { reason } => (
                RemoteStep::Refuse(forbidden(&reason)),
                format!("unavailable: {cause}"),
                Some("fail_open_constraint"),
            ),
            FailoverAction::EvaluateLocally => (
                RemoteStep::Proceed,
                format!("unavailable: {cause}"),
                Some("local_policy"),
            ),
        },
    };
    let record = records::remote_validation(sh, d.msg.id_text(), tool, &summary, failover);
    if let Err(e) = sh.audit.write(&record) {
        tracing::error!(error = %e, "audit log unavailable; refusing the call");
        return RemoteStep::Refuse(ErrorReply::standard(
            codes::INTERNAL_ERROR,
            format!("the audit log cannot be written ({e}); the call was blocked"),
        ));
    }
    step
}

/// The call goes through (after DLP on its arguments).
fn forward(sh: &Arc<Shared>, d: &Deferred, record: Option<crate::audit::Record>) {
    let Some(id) = d.msg.id.as_deref() else {
        return;
    };
    let mut batch = super::upstream::Batch::default();
    if let Some(r) = record {
        batch.push_record(r);
    }
    sh.pending().approval_done(id);
    let arguments = d.msg.params_value().and_then(|p| p.get("arguments"));
    super::upstream::forward_checked_call(sh, &d.line, &d.msg, &d.outcome, arguments, &mut batch);
    super::upstream::flush(sh, &mut batch);
}

/// Refused by the remote server (or its failover): reply, return the rate-limit token.
fn conclude_refusal(sh: &Arc<Shared>, d: &Deferred, err: ErrorReply) {
    let Some(id) = d.msg.id.as_deref() else {
        return;
    };
    sh.engine.refund(&d.outcome.verdict);
    sh.pending().take_client(id);
    let mut batch = super::upstream::Batch::default();
    batch.push_reply(d.msg.id_text(), &err);
    super::upstream::flush(sh, &mut batch);
}

/// A human answered (or could not).
fn conclude_answer(sh: &Arc<Shared>, d: &Deferred, answer: Answer) {
    let Some(id) = d.msg.id.as_deref() else {
        return;
    };
    let id_text = d.msg.id_text().unwrap_or("null");
    let record = records::approval(sh, id_text, &d.outcome.tool, &answer, &sh.approver.name());
    let verdict = match &answer {
        Answer::Approved => ApprovalOutcome::Approved,
        Answer::Denied(_) => ApprovalOutcome::Denied,
        Answer::TimedOut | Answer::Unavailable(_) | Answer::Cancelled => ApprovalOutcome::TimedOut,
    };
    // The engine turns the answer into the final verdict (and returns the rate-limit token on
    // "no" and timeout).
    let resolved = d.outcome.resolved(&sh.engine, verdict);
    match (&answer, &resolved.action) {
        (Answer::Approved, CallAction::Forward) => {
            let approved = Deferred {
                line: d.line.clone(),
                msg: d.msg.clone(),
                outcome: resolved,
                cancel: d.cancel.clone(),
                remote: None,
            };
            forward(sh, &approved, Some(record));
        }
        (Answer::Cancelled, _) => {
            // The client withdrew the call (or the session is ending): nothing to answer.
            sh.pending().take_client(id);
            let mut batch = super::upstream::Batch::default();
            batch.push_record(record);
            super::upstream::flush(sh, &mut batch);
        }
        (_, action) => {
            sh.pending().take_client(id);
            let mut err = match action {
                CallAction::Deny(err) => err.clone(),
                _ => ErrorReply::new(codes::USER_TIMEOUT, "User approval timeout", None),
            };
            if let (Answer::Denied(why) | Answer::Unavailable(why), Some(data)) =
                (&answer, err.data.as_mut().and_then(|d| d.as_object_mut()))
            {
                data.insert("reason".into(), why.clone().into());
            }
            let mut batch = super::upstream::Batch::default();
            batch.push_record(record);
            batch.push_reply(Some(id_text), &err);
            super::upstream::flush(sh, &mut batch);
        }
    }
}
