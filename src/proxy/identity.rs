//! AIP v1alpha2 identity on the stdio stream (docs/identity.md): answering `aip/token`,
//! stripping `params._meta["aip.io/token"]` before anything is forwarded, and step 0 of the tool
//! checks (`require_token` → -32008, a bad token → -32009/-32011/-32012). Token validation may
//! talk to Redis, so it runs on the session's runtime; the pump thread waits for it.

use std::sync::Arc;

use crate::audit::Record;
use crate::identity::{
    IssueEvent, TOKEN_REQUIRED_MESSAGE, TokenGrant, TokenService, take_stdio_token,
    token_required_data, token_result,
};
use crate::jsonrpc::{ErrorReply, Message, codes};

use super::{Direction, Shared};

/// Identity settings of a session.
#[derive(Clone)]
pub struct Identity {
    pub tokens: Arc<TokenService>,
    /// `spec.identity.require_token`.
    pub require_token: bool,
    /// Where token validation runs (it may wait on the nonce store).
    pub runtime: tokio::runtime::Handle,
}

/// Outcome of step 0 for one call.
pub(super) enum TokenStep {
    /// Go on; the token id (nonce) of a valid token, for the decision record.
    Pass { token_id: Option<String> },
    /// Refuse the call.
    Refuse { error: ErrorReply, record: Record },
}

fn token_record(sh: &Shared, event: &str) -> Record {
    Record::event(event)
        .with_shared("session_id", &sh.session_id)
        .with("direction", Direction::Upstream.as_str())
}

/// Audit record for a grant (`TOKEN_ISSUED` / `TOKEN_ROTATED`), if it produced a new token.
pub(super) fn grant_record(sh: &Shared, policy_hash: &str, grant: &TokenGrant) -> Option<Record> {
    let claims = &grant.token.claims;
    match &grant.event {
        IssueEvent::Issued => Some(
            token_record(sh, "TOKEN_ISSUED")
                .with("token_id", claims.nonce.as_str())
                .with("expires_at", claims.expires_at.as_str())
                .with("policy_hash", policy_hash),
        ),
        IssueEvent::Rotated { old_token_id } => Some(
            token_record(sh, "TOKEN_ROTATED")
                .with("old_token_id", old_token_id.as_str())
                .with("new_token_id", claims.nonce.as_str())
                .with("expires_at", claims.expires_at.as_str()),
        ),
        IssueEvent::Unchanged => None,
    }
}

/// Answers `aip/token` (never forwarded): a fresh token of this session.
pub(super) fn answer_token_request(
    sh: &Shared,
    id: &Identity,
    id_text: &str,
) -> (Vec<u8>, Vec<Record>) {
    match id.tokens.fresh_token() {
        Ok(grant) => {
            let mut line = Vec::with_capacity(512);
            line.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
            line.extend_from_slice(id_text.as_bytes());
            line.extend_from_slice(br#","result":"#);
            let _ = serde_json::to_writer(&mut line, &token_result(&grant));
            line.extend_from_slice(b"}\n");
            let records = grant_record(sh, &id.tokens.policy_hash(), &grant)
                .into_iter()
                .collect();
            (line, records)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot issue an identity token");
            let err =
                ErrorReply::standard(codes::INTERNAL_ERROR, format!("cannot issue a token: {e}"));
            (err.to_line(Some(id_text)), Vec::new())
        }
    }
}

/// Removes a token from `params._meta` (any request), so it is never forwarded. Returns the
/// token, or an error reply when the token field is malformed. `changed` tells whether the
/// message must be re-serialized.
pub(super) fn strip(msg: &mut Message, tool: &str) -> Result<(Option<String>, bool), ErrorReply> {
    let Some(part) = msg.params.as_mut() else {
        return Ok((None, false));
    };
    // Decoding every request's params would cost; a token key can only hide behind the word
    // "token" or an escape sequence.
    if part.decoded().is_none()
        && let Some(raw) = part.raw()
        && !(raw.contains('\\') || raw.to_ascii_lowercase().contains("token"))
    {
        return Ok((None, false));
    }
    let Ok(params) = part.decode() else {
        return Ok((None, false));
    };
    let before = params.get("_meta").cloned();
    let taken = take_stdio_token(params).map_err(|e| {
        ErrorReply::new(
            codes::TOKEN_INVALID,
            "Token invalid",
            Some(serde_json::json!({"tool": tool, "reason": e.to_string(), "token_error": "malformed"})),
        )
    })?;
    let changed = params.get("_meta").cloned() != before;
    Ok((taken, changed))
}

/// Step 0 of the tool checks for a call whose token (if any) was already stripped.
pub(super) fn check_token(
    sh: &Shared,
    id: &Identity,
    tool: &str,
    token: Option<&str>,
) -> TokenStep {
    let Some(token) = token else {
        if id.require_token {
            return TokenStep::Refuse {
                error: ErrorReply::new(
                    codes::TOKEN_REQUIRED,
                    TOKEN_REQUIRED_MESSAGE,
                    Some(token_required_data(tool)),
                ),
                record: token_record(sh, "TOKEN_VALIDATION_FAILED")
                    .with("tool", tool)
                    .with("error", "token_required"),
            };
        }
        return TokenStep::Pass { token_id: None };
    };
    // A presented token is checked even when not required: a bad one is refused rather than
    // ignored.
    match id.runtime.block_on(id.tokens.validate(token)) {
        Ok(valid) => TokenStep::Pass {
            token_id: Some(valid.claims.nonce),
        },
        Err(rej) => TokenStep::Refuse {
            error: ErrorReply::new(
                rej.error.rpc_code(),
                rej.error.rpc_message(),
                Some(rej.error.rpc_data(tool)),
            ),
            record: token_record(sh, "TOKEN_VALIDATION_FAILED")
                .with("tool", tool)
                .with_opt("token_id", rej.token_id.clone())
                .with_opt("token_session_id", rej.session_id.clone())
                .with("error", rej.error.token_error()),
        },
    }
}
