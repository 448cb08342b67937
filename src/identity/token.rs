//! The identity token (v1alpha2 §5.2): its claims, their well-formedness rules, and the
//! rejection reasons with their wire forms (JSON-RPC code/message/data of §3 and the
//! `token_error` strings the vectors expect). Must not sign, store or decide validation order
//! (see `service`).

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::binding::Binding;
use super::store::{Revocation, StoreError};

/// `version` claim of every token.
pub const TOKEN_VERSION: &str = "aip/v1alpha2";

/// JSON-RPC error codes of AIP identity (§3).
pub use crate::jsonrpc::codes;

/// Claims of an AIP identity token. Field order is the wire order. `iat`/`exp` (seconds) and
/// `jti` (= nonce) duplicate `issued_at`/`expires_at`/`nonce` for generic JWT tooling; the
/// validator requires them to agree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenClaims {
    pub version: String,
    pub aud: String,
    pub policy_hash: String,
    pub session_id: String,
    pub agent_id: String,
    /// RFC 3339 UTC with milliseconds, e.g. `2026-01-24T10:30:45.123Z`.
    pub issued_at: String,
    pub expires_at: String,
    /// 16 random bytes as 32 lowercase hex characters; the token id.
    pub nonce: String,
    pub binding: Binding,
    pub iat: i64,
    pub exp: i64,
    pub jti: String,
}

/// Times of a well-formed token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenTimes {
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl TokenClaims {
    /// Checks the shape rules that do not depend on the validating engine: version, nonce and
    /// session id format, parseable times in order, and agreement of the JWT duplicates.
    pub fn check_well_formed(&self) -> Result<TokenTimes, String> {
        if self.version != TOKEN_VERSION {
            return Err(format!(
                "version {:?} is not {TOKEN_VERSION:?}",
                self.version
            ));
        }
        if !is_lower_hex(&self.nonce, 32) {
            return Err("nonce is not 32 lowercase hex characters".into());
        }
        if self.jti != self.nonce {
            return Err("jti differs from nonce".into());
        }
        if uuid::Uuid::try_parse(&self.session_id).is_err() {
            return Err("session_id is not a UUID".into());
        }
        if !is_lower_hex(&self.policy_hash, 64) {
            return Err("policy_hash is not 64 lowercase hex characters".into());
        }
        if self.agent_id.is_empty() || self.aud.is_empty() {
            return Err("empty agent_id or aud".into());
        }
        let issued_at = parse_time(&self.issued_at).ok_or("issued_at is not RFC 3339")?;
        let expires_at = parse_time(&self.expires_at).ok_or("expires_at is not RFC 3339")?;
        if expires_at <= issued_at {
            return Err("expires_at is not after issued_at".into());
        }
        if self.iat != issued_at.unix_timestamp() || self.exp != expires_at.unix_timestamp() {
            return Err("iat/exp differ from issued_at/expires_at".into());
        }
        Ok(TokenTimes {
            issued_at,
            expires_at,
        })
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// RFC 3339 UTC with millisecond precision and `Z` (`2026-01-24T10:30:45.123Z`).
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Parses RFC 3339 (any offset, fractional seconds allowed).
pub fn parse_time(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &Rfc3339).ok()
}

/// `t` truncated to whole milliseconds (token times carry milliseconds).
pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let ns = t.nanosecond();
    t - time::Duration::nanoseconds(i64::from(ns % 1_000_000))
}

/// Why a presented token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not decodable, bad signature, unknown key, or claims out of shape.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token or its session is revoked.
    #[error("{} revoked at {}", .0.kind.as_str(), .0.revoked_at)]
    Revoked(Revocation),
    #[error("token expired")]
    Expired,
    /// Issued under a policy hash that is neither current nor within the transition grace.
    #[error("token was issued under another policy")]
    PolicyChanged,
    #[error("token audience {actual:?} is not {expected:?}")]
    AudienceMismatch { expected: String, actual: String },
    /// `process` binding: issued by another process.
    #[error("token was issued to another process")]
    SessionMismatch,
    /// `strict` binding: some binding field differs.
    #[error("token binding differs ({0})")]
    BindingMismatch(&'static str),
    /// The nonce was already used within the nonce window.
    #[error("token nonce already used")]
    ReplayDetected,
    /// The nonce/revocation store did not answer: not validated, so refused.
    #[error("token cannot be validated now: {0}")]
    Unavailable(StoreError),
}

impl TokenError {
    /// The `token_error` string (§3 data, HTTP body). Revocations use `session_revoked` /
    /// `token_revoked`; a store failure uses `validation_unavailable` (not in the spec's list).
    pub fn token_error(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "malformed",
            Self::Revoked(r) => match r.kind {
                super::store::RevocationKind::Session => "session_revoked",
                super::store::RevocationKind::Token => "token_revoked",
            },
            Self::Expired => "token_expired",
            Self::PolicyChanged => "policy_changed",
            Self::AudienceMismatch { .. } => "audience_mismatch",
            Self::SessionMismatch => "session_mismatch",
            Self::BindingMismatch(_) => "binding_mismatch",
            Self::ReplayDetected => "replay_detected",
            Self::Unavailable(_) => "validation_unavailable",
        }
    }

    /// JSON-RPC error code: -32011 revoked, -32012 audience, else -32009.
    pub fn rpc_code(&self) -> i64 {
        match self {
            Self::Revoked(_) => codes::TOKEN_REVOKED,
            Self::AudienceMismatch { .. } => codes::AUDIENCE_MISMATCH,
            _ => codes::TOKEN_INVALID,
        }
    }

    /// JSON-RPC error message (exact strings of §3).
    pub fn rpc_message(&self) -> &'static str {
        match self {
            Self::Revoked(_) => "Token revoked",
            Self::AudienceMismatch { .. } => "Audience mismatch",
            _ => "Token invalid",
        }
    }

    /// Client-facing reason. Deliberately short: details (which key, which field) go to logs.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Malformed(_) => "Token is malformed or its signature is invalid",
            Self::Revoked(r) => match r.kind {
                super::store::RevocationKind::Session => "Session has been revoked",
                super::store::RevocationKind::Token => "Token has been revoked",
            },
            Self::Expired => "Token has expired",
            Self::PolicyChanged => "Token was issued under a different policy",
            Self::AudienceMismatch { .. } => "Token audience does not match",
            Self::SessionMismatch => "Token is bound to another session",
            Self::BindingMismatch(_) => "Token binding does not match this context",
            Self::ReplayDetected => "Token has already been used",
            Self::Unavailable(_) => "Token validation is unavailable",
        }
    }

    /// JSON-RPC `error.data` for a refused `tools/call` of `tool` (the token audience of a
    /// mismatch is left out of the client response, as §3 allows; it is in the `Display`).
    pub fn rpc_data(&self, tool: &str) -> Value {
        match self {
            Self::Revoked(r) => json!({
                "tool": tool,
                "reason": self.reason(),
                "revoked_at": r.revoked_at,
                "revocation_type": r.kind.as_str(),
            }),
            Self::AudienceMismatch { expected, .. } => json!({
                "tool": tool,
                "reason": self.reason(),
                "expected_audience": expected,
            }),
            _ => json!({"tool": tool, "reason": self.reason(), "token_error": self.token_error()}),
        }
    }
}

/// `-32008` parts for a tool call without a token where one is required.
pub fn token_required_data(tool: &str) -> Value {
    json!({"tool": tool, "reason": "Identity token required for this policy"})
}

/// Message of `-32008`.
pub const TOKEN_REQUIRED_MESSAGE: &str = "Token required";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::store::RevocationKind;

    fn claims() -> TokenClaims {
        let t = truncate_ms(OffsetDateTime::now_utc());
        let e = t + time::Duration::seconds(300);
        TokenClaims {
            version: TOKEN_VERSION.into(),
            aud: "a".into(),
            policy_hash: "0".repeat(64),
            session_id: uuid::Uuid::new_v4().to_string(),
            agent_id: "a".into(),
            issued_at: format_time(t),
            expires_at: format_time(e),
            nonce: "ab".repeat(16),
            binding: Binding {
                process_id: 1,
                policy_path: "/p".into(),
                hostname: "h".into(),
                container_id: None,
                pod_uid: None,
            },
            iat: t.unix_timestamp(),
            exp: e.unix_timestamp(),
            jti: "ab".repeat(16),
        }
    }

    #[test]
    fn test_well_formed() {
        let c = claims();
        let times = c.check_well_formed().unwrap();
        assert_eq!((times.expires_at - times.issued_at).whole_seconds(), 300);
        let mut bad = c.clone();
        bad.version = "aip/v1alpha1".into();
        assert!(bad.check_well_formed().is_err());
        let mut bad = c.clone();
        bad.nonce = "AB".repeat(16);
        bad.jti = bad.nonce.clone();
        assert!(bad.check_well_formed().is_err());
        let mut bad = c.clone();
        bad.jti = "cd".repeat(16);
        assert!(bad.check_well_formed().is_err());
        let mut bad = c.clone();
        bad.exp += 100;
        assert!(bad.check_well_formed().is_err());
        let mut bad = c.clone();
        bad.session_id = "s".into();
        assert!(bad.check_well_formed().is_err());
        let mut bad = c;
        bad.expires_at = bad.issued_at.clone();
        assert!(bad.check_well_formed().is_err());
    }

    #[test]
    fn test_time_format() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_769_250_645_123_456_789).unwrap();
        assert_eq!(format_time(t), "2026-01-24T10:30:45.123Z");
        assert_eq!(parse_time("2026-01-24T10:30:45.123Z"), Some(truncate_ms(t)));
        assert_eq!(
            parse_time("2026-01-24T11:30:45.123+01:00"),
            Some(truncate_ms(t))
        );
        assert_eq!(parse_time("yesterday"), None);
    }

    #[test]
    fn test_wire_forms() {
        assert_eq!(TokenError::Expired.rpc_code(), -32009);
        assert_eq!(TokenError::Expired.token_error(), "token_expired");
        assert_eq!(TokenError::Malformed("x".into()).token_error(), "malformed");
        assert_eq!(
            TokenError::Malformed("x".into()).rpc_data("read_file"),
            json!({"tool": "read_file", "reason": "Token is malformed or its signature is invalid", "token_error": "malformed"})
        );
        let rev = TokenError::Revoked(Revocation {
            kind: RevocationKind::Session,
            target: "s".into(),
            revoked_at: "2026-01-24T10:30:00.000Z".into(),
            reason: None,
        });
        assert_eq!(
            (rev.rpc_code(), rev.rpc_message()),
            (-32011, "Token revoked")
        );
        assert_eq!(rev.rpc_data("t")["revocation_type"], "session");
        assert_eq!(rev.rpc_data("t")["revoked_at"], "2026-01-24T10:30:00.000Z");
        assert_eq!(rev.token_error(), "session_revoked");
        let aud = TokenError::AudienceMismatch {
            expected: "e".into(),
            actual: "a".into(),
        };
        assert_eq!(
            (aud.rpc_code(), aud.rpc_message()),
            (-32012, "Audience mismatch")
        );
        assert_eq!(
            aud.rpc_data("t"),
            json!({"tool": "t", "reason": "Token audience does not match", "expected_audience": "e"})
        );
        assert_eq!(TokenError::ReplayDetected.token_error(), "replay_detected");
        assert_eq!(
            TokenError::SessionMismatch.token_error(),
            "session_mismatch"
        );
        assert_eq!(
            TokenError::BindingMismatch("hostname").token_error(),
            "binding_mismatch"
        );
        assert_eq!(TokenError::PolicyChanged.token_error(), "policy_changed");
        assert_eq!(
            token_required_data("t")["reason"],
            "Identity token required for this policy"
        );
    }
}
