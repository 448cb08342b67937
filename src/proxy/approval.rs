//! The proxy side of `action: ask`: each waiting call gets a thread that asks the approver, then
//! audits the answer and either forwards the original bytes or replies with -32004/-32005. The
//! pumps never wait for a human. The number of calls waiting at once is bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::approval::{Answer, ApprovalRequest, Cancel};
use crate::jsonrpc::{ErrorReply, Message, codes};
use crate::policy::ApprovalOutcome;

use super::Shared;
use super::decide::{CallAction, CallOutcome};
use super::records;

/// Starts the approval of `msg` (already recorded as pending with `cancel`).
pub(super) fn start_approval(
    sh: &Arc<Shared>,
    line: Vec<u8>,
    msg: Message,
    outcome: CallOutcome,
    cancel: Cancel,
) {
    let id_text = msg.id_text().unwrap_or("null").to_owned();
    let waiting = sh.asks.fetch_add(1, Ordering::SeqCst) + 1;
    if waiting > sh.cfg.max_waiting_approvals {
        finish(sh);
        let answer = Answer::Unavailable(format!(
            "more than {} calls are waiting for approval",
            sh.cfg.max_waiting_approvals
        ));
        conclude(sh, &line, &msg, &id_text, &outcome, answer);
        return;
    }
    let sh2 = Arc::clone(sh);
    let spawned = std::thread::Builder::new()
        .name("aip-approval".into())
        .stack_size(256 * 1024)
        .spawn(move || {
            let args = msg
                .params_value()
                .and_then(|p| p.get("arguments"))
                .map(|a| super::dlp::redacted_copy(&sh2, a));
            let req = ApprovalRequest {
                server: sh2.cfg.server_name.clone(),
                session_id: sh2.session_id.clone(),
                request_id: id_text.clone(),
                tool: outcome.tool.clone(),
                args_preview: ApprovalRequest::preview(args.as_ref()),
            };
            let answer = sh2.approver.ask(&req, &cancel, sh2.cfg.approval_timeout);
            finish(&sh2);
            conclude(&sh2, &line, &msg, &id_text, &outcome, answer);
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start an approval thread");
        finish(sh);
    }
}

/// One fewer call waits for a human; the lifecycle notices and may now close the server's stdin.
fn finish(sh: &Shared) {
    sh.asks.fetch_sub(1, Ordering::SeqCst);
}

fn conclude(
    sh: &Arc<Shared>,
    line: &[u8],
    msg: &Message,
    id_text: &str,
    outcome: &CallOutcome,
    answer: Answer,
) {
    let Some(id) = msg.id.as_deref() else { return };
    let record = records::approval(sh, id_text, &outcome.tool, &answer, &sh.approver.name());
    let verdict = match &answer {
        Answer::Approved => ApprovalOutcome::Approved,
        Answer::Denied(_) => ApprovalOutcome::Denied,
        Answer::TimedOut | Answer::Unavailable(_) | Answer::Cancelled => ApprovalOutcome::TimedOut,
    };
    // The engine turns the answer into the final verdict (and returns the rate-limit token on
    // "no" and timeout).
    let resolved = outcome.resolved(&sh.engine, verdict);
    let mut batch = super::upstream::Batch::default();
    batch.push_record(record);
    match (&answer, &resolved.action) {
        (Answer::Approved, CallAction::Forward) => {
            sh.pending().approval_done(id);
            let arguments = msg.params_value().and_then(|p| p.get("arguments"));
            super::upstream::forward_checked_call(sh, line, msg, &resolved, arguments, &mut batch);
        }
        (Answer::Cancelled, _) => {
            // The client withdrew the call (or the session is ending): nothing to answer.
            sh.pending().take_client(id);
        }
        (_, CallAction::Deny(err)) => {
            sh.pending().take_client(id);
            let mut err = err.clone();
            if let (Answer::Denied(why) | Answer::Unavailable(why), Some(data)) =
                (&answer, err.data.as_mut().and_then(|d| d.as_object_mut()))
            {
                data.insert("reason".into(), why.clone().into());
            }
            batch.push_reply(Some(id_text), &err);
        }
        _ => {
            sh.pending().take_client(id);
            tracing::error!(tool = %outcome.tool, "approval resolved to an unexpected verdict; refusing");
            batch.push_reply(
                Some(id_text),
                &ErrorReply::new(codes::USER_TIMEOUT, "User approval timeout", None),
            );
        }
    }
    super::upstream::flush(sh, &mut batch);
}
