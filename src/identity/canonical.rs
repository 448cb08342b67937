//! RFC 8785 (JCS) canonical forms and the hashes built on them: the policy hash (v1alpha2 §5.1),
//! the bytes a policy signature covers (§3.3.1) and tool schema hashes (§3.5.4). Owns which
//! fields go into each canonical form; must not parse YAML (callers hand in the document as the
//! policy loader produced it, a `serde_json::Value`) or decide what a mismatch means.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256, Sha384, Sha512};

/// The document could not be put in canonical form.
///
/// A `serde_json::Value` always can (it holds neither NaN nor invalid UTF-8), so this only
/// guards against a future change in the canonicalizer.
#[derive(Debug, thiserror::Error)]
#[error("cannot canonicalize JSON (RFC 8785): {0}")]
pub struct CanonicalError(#[from] serde_json::Error);

/// RFC 8785 canonical bytes of `value`: keys sorted by UTF-16 code units, ECMAScript number
/// formatting, minimal string escapes, no whitespace.
pub fn canonical_json(value: &Value) -> Result<Vec<u8>, CanonicalError> {
    Ok(serde_json_canonicalizer::to_vec(value)?)
}

/// The policy document without `metadata.signature`, in canonical form: what a policy signature
/// signs and what the policy hash hashes. Every other field, including unknown ones, stays in.
pub fn canonical_policy(document: &Value) -> Result<Vec<u8>, CanonicalError> {
    let has_signature = document
        .get("metadata")
        .and_then(Value::as_object)
        .is_some_and(|m| m.contains_key("signature"));
    if !has_signature {
        return canonical_json(document);
    }
    let mut unsigned = document.clone();
    if let Some(meta) = unsigned.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("signature");
    }
    canonical_json(&unsigned)
}

/// `POLICY_HASH`: lowercase hex SHA-256 of [`canonical_policy`] (64 characters).
pub fn policy_hash(document: &Value) -> Result<String, CanonicalError> {
    Ok(hex::encode(Sha256::digest(canonical_policy(document)?)))
}

/// Digest algorithms allowed as `tool_rules[].schema_hash` prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaHashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl SchemaHashAlgorithm {
    /// The prefix spelling (`sha256`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sha256 => "sha256",
            Self::Sha384 => "sha384",
            Self::Sha512 => "sha512",
        }
    }

    fn hex_len(self) -> usize {
        match self {
            Self::Sha256 => 64,
            Self::Sha384 => 96,
            Self::Sha512 => 128,
        }
    }
}

/// A `schema_hash` value is not `<sha256|sha384|sha512>:<lowercase hex of the right length>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid schema_hash {value:?}: expected sha256:<64 hex>, sha384:<96 hex> or sha512:<128 hex>"
)]
pub struct SchemaHashFormatError {
    pub value: String,
}

/// Parses a policy's `schema_hash` value; the policy loader calls this at load time.
pub fn parse_schema_hash(
    value: &str,
) -> Result<(SchemaHashAlgorithm, &str), SchemaHashFormatError> {
    let err = || SchemaHashFormatError {
        value: value.to_string(),
    };
    let (alg, hex) = value.split_once(':').ok_or_else(err)?;
    let alg = match alg {
        "sha256" => SchemaHashAlgorithm::Sha256,
        "sha384" => SchemaHashAlgorithm::Sha384,
        "sha512" => SchemaHashAlgorithm::Sha512,
        _ => return Err(err()),
    };
    if hex.len() != alg.hex_len() || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(err());
    }
    Ok((alg, hex))
}

/// The object a schema hash covers: `{name, description, inputSchema}` from one `tools/list`
/// entry. Absent fields are left out (a tool without `description` hashes without the key, not
/// with `null`); `title`, `annotations`, `outputSchema`, `_meta`… are never included.
pub fn schema_object(tool: &Value) -> Value {
    let mut out = Map::new();
    for key in ["name", "description", "inputSchema"] {
        if let Some(v) = tool.get(key) {
            out.insert(key.to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// `<alg>:<lowercase hex>` of the canonical schema object of `tool`.
pub fn try_schema_hash_with(
    tool: &Value,
    alg: SchemaHashAlgorithm,
) -> Result<String, CanonicalError> {
    let bytes = canonical_json(&schema_object(tool))?;
    let digest = match alg {
        SchemaHashAlgorithm::Sha256 => hex::encode(Sha256::digest(&bytes)),
        SchemaHashAlgorithm::Sha384 => hex::encode(Sha384::digest(&bytes)),
        SchemaHashAlgorithm::Sha512 => hex::encode(Sha512::digest(&bytes)),
    };
    Ok(format!("{}:{digest}", alg.as_str()))
}

/// `sha256:<hex>` schema hash of one `tools/list` entry (what `aip schema-hash` prints).
///
/// Never fails on a `Value`; should canonicalization ever fail, the result is a string that
/// cannot equal any valid `schema_hash`, so an enforcing comparison fails closed.
pub fn schema_hash(tool: &Value) -> String {
    schema_hash_with(tool, SchemaHashAlgorithm::Sha256)
}

/// [`schema_hash`] with another digest (the one named by a policy's `schema_hash` prefix).
pub fn schema_hash_with(tool: &Value, alg: SchemaHashAlgorithm) -> String {
    match try_schema_hash_with(tool, alg) {
        Ok(h) => h,
        Err(e) => {
            tracing::error!(error = %e, "schema hash unavailable");
            format!("{}:unavailable", alg.as_str())
        }
    }
}

/// Expected and actual schema hash of a tool whose definition changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("schema hash mismatch: expected {expected}, actual {actual}")]
pub struct SchemaHashMismatch {
    pub expected: String,
    pub actual: String,
}

/// Compares a policy's `schema_hash` with the tool as the server listed it, hashing with the
/// algorithm the expected value names. A malformed expected value never matches.
pub fn check_schema_hash(expected: &str, tool: &Value) -> Result<(), SchemaHashMismatch> {
    let alg = parse_schema_hash(expected)
        .map(|(a, _)| a)
        .unwrap_or(SchemaHashAlgorithm::Sha256);
    let actual = schema_hash_with(tool, alg);
    if parse_schema_hash(expected).is_ok() && actual == expected {
        Ok(())
    } else {
        Err(SchemaHashMismatch {
            expected: expected.to_string(),
            actual,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn test_canonical_json_rfc8785() {
        let v =
            json!({"b": [1.0, 1e21, -0.0, 0.000001], "a": "\u{20ac}\n", "\u{e9}": true, "A": null});
        let s = String::from_utf8(canonical_json(&v).unwrap()).unwrap();
        assert_eq!(
            s,
            "{\"A\":null,\"a\":\"\u{20ac}\\n\",\"b\":[1,1e+21,0,0.000001],\"\u{e9}\":true}"
        );
    }

    #[test]
    fn test_policy_hash_ignores_signature_and_key_order() {
        let a = json!({"apiVersion": "aip.io/v1alpha2", "kind": "AgentPolicy",
            "metadata": {"name": "x"}, "spec": {"allowed_tools": ["tool_a"]}});
        let b = json!({"spec": {"allowed_tools": ["tool_a"]}, "kind": "AgentPolicy",
            "metadata": {"signature": "ed25519:AAAA", "name": "x"}, "apiVersion": "aip.io/v1alpha2"});
        let ha = policy_hash(&a).unwrap();
        assert_eq!(ha.len(), 64);
        assert!(
            ha.bytes()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        assert_eq!(ha, policy_hash(&b).unwrap());
        let c = json!({"apiVersion": "aip.io/v1alpha2", "kind": "AgentPolicy",
            "metadata": {"name": "x"}, "spec": {"allowed_tools": ["tool_a", "tool_b"]}});
        assert_ne!(ha, policy_hash(&c).unwrap());
        // A top-level `signature` is not metadata.signature: it stays covered.
        let d = json!({"apiVersion": "aip.io/v1alpha2", "kind": "AgentPolicy", "signature": "x",
            "metadata": {"name": "x"}, "spec": {"allowed_tools": ["tool_a"]}});
        assert_ne!(ha, policy_hash(&d).unwrap());
    }

    #[test]
    fn test_policy_hash_known_value() {
        // sha256 of `{"a":1}`.
        assert_eq!(
            policy_hash(&json!({"a": 1})).unwrap(),
            "015abd7f5cc57a2dd94b7590f04ad8084273905ee33ec5cebeae62276a97f862"
        );
    }

    #[test]
    fn test_schema_hash_fields() {
        let tool = json!({"name": "read", "title": "Read", "description": "d",
            "inputSchema": {"type": "object", "properties": {"p": {"type": "string"}}},
            "annotations": {"readOnlyHint": true}, "_meta": {"x": 1}});
        let bare = json!({"inputSchema": {"properties": {"p": {"type": "string"}}, "type": "object"},
            "description": "d", "name": "read"});
        let h = schema_hash(&tool);
        assert!(h.starts_with("sha256:") && h.len() == 71);
        assert_eq!(h, schema_hash(&bare));
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(
                br#"{"description":"d","inputSchema":{"properties":{"p":{"type":"string"}},"type":"object"},"name":"read"}"#
            ))
        );
        assert_eq!(h, expected);
        let no_desc = json!({"name": "read", "inputSchema": {"type": "object"}});
        let with_null =
            json!({"name": "read", "description": null, "inputSchema": {"type": "object"}});
        assert_ne!(schema_hash(&no_desc), schema_hash(&with_null));
    }

    #[test]
    fn test_check_schema_hash() {
        let tool = json!({"name": "t", "inputSchema": {"type": "object"}});
        let h = schema_hash(&tool);
        assert!(check_schema_hash(&h, &tool).is_ok());
        let h512 = schema_hash_with(&tool, SchemaHashAlgorithm::Sha512);
        assert_eq!(h512.len(), "sha512:".len() + 128);
        assert!(check_schema_hash(&h512, &tool).is_ok());
        let changed =
            json!({"name": "t", "description": "now evil", "inputSchema": {"type": "object"}});
        let err = check_schema_hash(&h, &changed).unwrap_err();
        assert_eq!(err.expected, h);
        assert_eq!(err.actual, schema_hash(&changed));
        assert!(check_schema_hash(&h.to_uppercase(), &tool).is_err());
        assert!(check_schema_hash("md5:abcd", &tool).is_err());
    }

    #[test]
    fn test_parse_schema_hash() {
        assert!(parse_schema_hash(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(parse_schema_hash(&format!("sha256:{}", "a".repeat(63))).is_err());
        assert!(parse_schema_hash(&format!("sha384:{}", "0".repeat(96))).is_ok());
        assert!(parse_schema_hash("sha256").is_err());
    }
}
