//! JSON-RPC error replies built by the proxy itself: the standard codes, the AIP codes
//! (spec digest §3), and the serialization of a reply that echoes the request id exactly.

use serde_json::Value;

/// Error codes used by the proxy.
pub mod codes {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// AIP: tool not allowed, blocked, argument failure, DLP block.
    pub const FORBIDDEN: i64 = -32001;
    pub const RATE_LIMITED: i64 = -32002;
    pub const USER_DENIED: i64 = -32004;
    pub const USER_TIMEOUT: i64 = -32005;
    pub const METHOD_NOT_ALLOWED: i64 = -32006;
    pub const PROTECTED_PATH: i64 = -32007;
    pub const TOKEN_REQUIRED: i64 = -32008;
    pub const TOKEN_INVALID: i64 = -32009;
    pub const POLICY_SIGNATURE_INVALID: i64 = -32010;
    pub const TOKEN_REVOKED: i64 = -32011;
    pub const AUDIENCE_MISMATCH: i64 = -32012;
    pub const SCHEMA_MISMATCH: i64 = -32013;
    pub const DLP_REDACTION_FAILED: i64 = -32014;
}

/// An error reply to send to a peer.
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorReply {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl ErrorReply {
    pub fn new(code: i64, message: impl Into<String>, data: Option<Value>) -> Self {
        ErrorReply {
            code,
            message: message.into(),
            data,
        }
    }

    /// The standard message text for a standard code.
    pub fn standard(code: i64, reason: impl Into<String>) -> Self {
        let message = match code {
            codes::PARSE_ERROR => "Parse error",
            codes::INVALID_REQUEST => "Invalid Request",
            codes::METHOD_NOT_FOUND => "Method not found",
            codes::INVALID_PARAMS => "Invalid params",
            _ => "Internal error",
        };
        let mut data = serde_json::Map::new();
        data.insert("reason".into(), Value::String(reason.into()));
        ErrorReply::new(code, message, Some(Value::Object(data)))
    }

    /// Serializes the reply as one line (with the trailing newline) echoing `id_text`, the exact
    /// JSON text of the request id, or `null` when it is unknown. Key order follows the AIP
    /// examples: `jsonrpc`, `id`, `error{code, message, data}`.
    pub fn to_line(&self, id_text: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(br#"{"jsonrpc":"2.0","id":"#);
        out.extend_from_slice(id_text.unwrap_or("null").as_bytes());
        out.extend_from_slice(br#","error":{"code":"#);
        out.extend_from_slice(self.code.to_string().as_bytes());
        out.extend_from_slice(br#","message":"#);
        // Serializing a string cannot fail.
        out.extend_from_slice(&serde_json::to_vec(&self.message).unwrap_or_default());
        if let Some(data) = &self.data {
            out.extend_from_slice(br#","data":"#);
            out.extend_from_slice(&serde_json::to_vec(data).unwrap_or_default());
        }
        out.extend_from_slice(b"}}\n");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reply_matches_the_aip_example_and_echoes_id_type() {
        let e = ErrorReply::new(
            codes::FORBIDDEN,
            "Forbidden",
            Some(json!({"tool":"any_tool","reason":"Tool not in allowed_tools list"})),
        );
        let line = e.to_line(Some("123"));
        let v: Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(
            v,
            json!({"jsonrpc":"2.0","id":123,"error":{"code":-32001,"message":"Forbidden",
                   "data":{"tool":"any_tool","reason":"Tool not in allowed_tools list"}}})
        );
        assert!(line.ends_with(b"}\n"));
        let v: Value = serde_json::from_slice(&e.to_line(Some(r#""abc-123""#))).unwrap();
        assert_eq!(v["id"], "abc-123");
        let v: Value = serde_json::from_slice(&e.to_line(None)).unwrap();
        assert!(v["id"].is_null());
    }
}
