//! How identity tokens travel on the MCP stdio stream, which AIP v1alpha2 leaves undefined.
//! aip's definition (documented in docs/identity.md):
//!
//! - **Presenting**: a request carries its token in `params._meta["aip.io/token"]` (a string).
//!   aip removes it before forwarding, so the MCP server never sees it, and never logs it.
//! - **Obtaining**: the agent sends the request `aip/token` (no params); aip answers it itself
//!   (never forwarded, not subject to `allowed_methods`) with
//!   `{"token", "token_id", "session_id", "expires_at"}`. Tokens are single-use.
//!
//! Owns the extraction rules; must not validate tokens or build JSON-RPC envelopes.

use serde_json::{Value, json};

use super::service::TokenGrant;

/// `_meta` key holding the token of a request.
pub const TOKEN_META_KEY: &str = "aip.io/token";

/// Method an agent calls to obtain a fresh token from aip.
pub const TOKEN_METHOD: &str = "aip/token";

/// Key the digest suggested by analogy with v1alpha3's `_aip_aat`. Not accepted, but refused
/// loudly so a token sent there is never forwarded to the server.
const LEGACY_PARAM_KEY: &str = "_aip_token";

/// The token field of a request is unusable; the request must be refused (`-32009`,
/// `token_error: malformed`) and not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StdioTokenError {
    #[error("params._meta[\"aip.io/token\"] must be a string")]
    NotAString,
    #[error("token key {0:?} differs from \"aip.io/token\" only in case; refusing to guess")]
    CaseVariant(String),
    #[error("a token in params._aip_token is not accepted; use params._meta[\"aip.io/token\"]")]
    WrongLocation,
}

/// Removes and returns the token of a request's `params` (which may be absent = `Null`).
///
/// `Ok(None)`: no token, or an empty string (treated as none, so `require_token` answers
/// `-32008`, as vector validation-051 expects). When the token was the only `_meta` entry,
/// `_meta` is removed too, so the forwarded request is the one the agent would have sent
/// without aip. Duplicate keys never reach this point: the strict JSON parser refuses them.
pub fn take_stdio_token(params: &mut Value) -> Result<Option<String>, StdioTokenError> {
    let Some(obj) = params.as_object_mut() else {
        return Ok(None);
    };
    if obj
        .keys()
        .any(|k| crate::jsonrpc::fold_eq(k, LEGACY_PARAM_KEY))
    {
        return Err(StdioTokenError::WrongLocation);
    }
    let Some(meta) = obj.get_mut("_meta").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    if let Some(k) = meta
        .keys()
        .find(|k| crate::jsonrpc::is_case_variant(k, TOKEN_META_KEY))
    {
        return Err(StdioTokenError::CaseVariant(k.clone()));
    }
    let Some(value) = meta.get(TOKEN_META_KEY) else {
        return Ok(None);
    };
    let token = match value {
        Value::String(s) => s.clone(),
        _ => return Err(StdioTokenError::NotAString),
    };
    meta.shift_remove(TOKEN_META_KEY);
    if meta.is_empty() {
        obj.shift_remove("_meta");
    }
    Ok((!token.is_empty()).then_some(token))
}

/// `result` of an `aip/token` response.
pub fn token_result(grant: &TokenGrant) -> Value {
    json!({
        "token": grant.token.token,
        "token_id": grant.token.claims.nonce,
        "session_id": grant.token.claims.session_id,
        "expires_at": grant.token.claims.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_take_token_strips_meta() {
        let mut p =
            json!({"name": "read", "arguments": {"a": 1}, "_meta": {"aip.io/token": "t0k"}});
        assert_eq!(take_stdio_token(&mut p), Ok(Some("t0k".into())));
        assert_eq!(p, json!({"name": "read", "arguments": {"a": 1}}));

        let mut p = json!({"name": "read", "_meta": {"progressToken": 7, "aip.io/token": "t"}});
        assert_eq!(take_stdio_token(&mut p), Ok(Some("t".into())));
        assert_eq!(p, json!({"name": "read", "_meta": {"progressToken": 7}}));
    }

    #[test]
    fn test_no_token() {
        let mut p = json!({"name": "read", "_meta": {"progressToken": 7}});
        let before = p.clone();
        assert_eq!(take_stdio_token(&mut p), Ok(None));
        assert_eq!(p, before);
        let mut p = Value::Null;
        assert_eq!(take_stdio_token(&mut p), Ok(None));
        let mut p = json!({"name": "read"});
        assert_eq!(take_stdio_token(&mut p), Ok(None));
        // Arguments are the tool's business, never a token location.
        let mut p = json!({"name": "read", "arguments": {"aip.io/token": "x"}});
        assert_eq!(take_stdio_token(&mut p), Ok(None));
    }

    #[test]
    fn test_empty_token_is_none_but_stripped() {
        let mut p = json!({"name": "read", "_meta": {"aip.io/token": ""}});
        assert_eq!(take_stdio_token(&mut p), Ok(None));
        assert_eq!(p, json!({"name": "read"}));
    }

    #[test]
    fn test_rejections() {
        for bad in [json!(null), json!(5), json!(["t"]), json!({"t": 1})] {
            let mut p = json!({"_meta": {"aip.io/token": bad}});
            assert_eq!(take_stdio_token(&mut p), Err(StdioTokenError::NotAString));
        }
        let mut p = json!({"_meta": {"AIP.io/Token": "t"}});
        assert!(matches!(
            take_stdio_token(&mut p),
            Err(StdioTokenError::CaseVariant(_))
        ));
        let mut p = json!({"_aip_token": "t"});
        assert_eq!(
            take_stdio_token(&mut p),
            Err(StdioTokenError::WrongLocation)
        );
        let mut p = json!({"_AIP_TOKEN": "t", "_meta": {"aip.io/token": "t"}});
        assert_eq!(
            take_stdio_token(&mut p),
            Err(StdioTokenError::WrongLocation)
        );
    }
}
