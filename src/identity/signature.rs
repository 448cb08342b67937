//! Policy signatures (v1alpha2 §3.3.1): Ed25519 over the canonical form (JCS of the document
//! without `metadata.signature`), written as `metadata.signature: ed25519:<base64>`; key files
//! (PEM PKCS#8 private, PEM SPKI public); the "unsigned policies are an error" switch. Must not
//! read or rewrite policy files (see `yaml_edit` and the CLI) and must never print a private key.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, KeypairBytes,
};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::canonical::{CanonicalError, canonical_policy};

/// Prefix of the only supported signature algorithm.
pub const ED25519_PREFIX: &str = "ed25519:";

/// Why a policy signature was refused (or could not be made).
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// `metadata.signature` is absent and signed policies are required.
    #[error(
        "policy is not signed (metadata.signature is missing) and unsigned policies are refused"
    )]
    Unsigned,
    /// The policy is signed but no public key was configured to check it.
    #[error("policy is signed but no public key is configured to verify it")]
    NoKey,
    /// `metadata.signature` is not a string of the form `<alg>:<base64>`.
    #[error("metadata.signature is malformed: {0}")]
    Malformed(String),
    /// A known but unsupported algorithm (`ecdsa-p256`).
    #[error("signature algorithm {0:?} is not supported (only ed25519)")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the configured key.
    #[error("signature does not verify with key {key_id}")]
    Invalid { key_id: String },
    #[error(transparent)]
    Canonical(#[from] CanonicalError),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}

impl SignatureError {
    /// `reason` of the `-32010` error data. The spec's single example is "Signature
    /// verification failed"; the other cases say what is wrong without leaking key material.
    pub fn reason(&self) -> String {
        match self {
            Self::Invalid { .. } => "Signature verification failed".to_string(),
            other => other.to_string(),
        }
    }
}

/// Ed25519 private key for signing policies.
pub struct PolicySigningKey(SigningKey);

impl std::fmt::Debug for PolicySigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicySigningKey({})", self.public().key_id())
    }
}

impl PolicySigningKey {
    /// A new random key (from the operating system's CSPRNG).
    pub fn generate() -> Result<Self, SignatureError> {
        let mut seed = [0u8; 32];
        aws_lc_rs::rand::fill(&mut seed).map_err(|_| SignatureError::KeyFile {
            path: "<generated>".into(),
            reason: "system random number generator failed".into(),
        })?;
        let key = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(Self(key))
    }

    /// Parses a PEM PKCS#8 `PRIVATE KEY` (what `aip policy keygen` and
    /// `openssl genpkey -algorithm ed25519` write).
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        SigningKey::from_pkcs8_pem(pem.trim())
            .map(Self)
            .map_err(|e| SignatureError::KeyFile {
                path: "<memory>".into(),
                reason: format!("expected an Ed25519 PEM \"PRIVATE KEY\" (PKCS#8): {e}"),
            })
    }

    /// Reads [`PolicySigningKey::from_pem`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let text = read_key_file(path)?;
        Self::from_pem(&text).map_err(|e| relabel(e, path))
    }

    /// PEM PKCS#8 v1 text of the private key (v1, without the embedded public key, so OpenSSL
    /// 3.0 reads it too). Write it with mode 0600.
    pub fn to_pem(&self) -> Result<String, SignatureError> {
        KeypairBytes {
            secret_key: self.0.to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map(|z| z.as_str().to_string())
        .map_err(|e| SignatureError::KeyFile {
            path: "<memory>".into(),
            reason: e.to_string(),
        })
    }

    /// The matching public key.
    pub fn public(&self) -> PolicyVerifyingKey {
        PolicyVerifyingKey(self.0.verifying_key())
    }
}

/// Ed25519 public key for verifying policies.
#[derive(Clone, PartialEq, Eq)]
pub struct PolicyVerifyingKey(VerifyingKey);

impl std::fmt::Debug for PolicyVerifyingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PolicyVerifyingKey({})", self.key_id())
    }
}

impl PolicyVerifyingKey {
    /// Parses a PEM SPKI `PUBLIC KEY` (what `aip policy keygen` writes next to the private key
    /// and `openssl pkey -pubout` prints).
    pub fn from_pem(pem: &str) -> Result<Self, SignatureError> {
        VerifyingKey::from_public_key_pem(pem.trim())
            .map(Self)
            .map_err(|e| SignatureError::KeyFile {
                path: "<memory>".into(),
                reason: format!("expected an Ed25519 PEM \"PUBLIC KEY\" (SPKI): {e}"),
            })
    }

    /// Reads [`PolicyVerifyingKey::from_pem`] from a file.
    pub fn from_file(path: &Path) -> Result<Self, SignatureError> {
        let text = read_key_file(path)?;
        Self::from_pem(&text).map_err(|e| relabel(e, path))
    }

    /// PEM SPKI text.
    pub fn to_pem(&self) -> Result<String, SignatureError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignatureError::KeyFile {
                path: "<memory>".into(),
                reason: e.to_string(),
            })
    }

    /// Short, stable identifier for messages: `ed25519:` + first 16 hex of SHA-256 of the raw
    /// 32-byte key.
    pub fn key_id(&self) -> String {
        format!(
            "ed25519:{}",
            &hex::encode(Sha256::digest(self.0.as_bytes()))[..16]
        )
    }
}

fn read_key_file(path: &Path) -> Result<String, SignatureError> {
    let meta = std::fs::metadata(path).map_err(|e| SignatureError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    if meta.len() > 64 * 1024 {
        return Err(SignatureError::KeyFile {
            path: path.display().to_string(),
            reason: "file too large for a key".into(),
        });
    }
    std::fs::read_to_string(path).map_err(|e| SignatureError::KeyFile {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

fn relabel(e: SignatureError, path: &Path) -> SignatureError {
    match e {
        SignatureError::KeyFile { reason, .. } => SignatureError::KeyFile {
            path: path.display().to_string(),
            reason,
        },
        other => other,
    }
}

/// Signs the canonical form of `document`; returns the `metadata.signature` value
/// (`ed25519:` + standard base64 with padding of the 64-byte signature, 96 characters).
/// An existing `metadata.signature` is ignored (not covered).
pub fn sign_policy(document: &Value, key: &PolicySigningKey) -> Result<String, SignatureError> {
    let bytes = canonical_policy(document)?;
    let sig: Signature = key.0.sign(&bytes);
    Ok(format!(
        "{ED25519_PREFIX}{}",
        STANDARD.encode(sig.to_bytes())
    ))
}

/// Verifies `metadata.signature` of `document` with `key` (strict Ed25519 verification: no
/// small-order keys, canonical `S`). An absent signature is [`SignatureError::Unsigned`].
pub fn verify_policy_signature(
    document: &Value,
    key: &PolicyVerifyingKey,
) -> Result<(), SignatureError> {
    let sig = parse_signature(document)?.ok_or(SignatureError::Unsigned)?;
    let bytes = canonical_policy(document)?;
    key.0
        .verify_strict(&bytes, &sig)
        .map_err(|_| SignatureError::Invalid {
            key_id: key.key_id(),
        })
}

/// Outcome of [`check_policy_signature`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureStatus {
    /// No signature, and none required.
    Unsigned,
    /// Signed and verified.
    Verified,
}

/// The loader's gate. A signed policy must verify (a signed policy with no key configured is
/// refused: the signature exists to be checked). An unsigned policy passes unless
/// `require_signed`.
pub fn check_policy_signature(
    document: &Value,
    key: Option<&PolicyVerifyingKey>,
    require_signed: bool,
) -> Result<SignatureStatus, SignatureError> {
    match parse_signature(document)? {
        None if require_signed => Err(SignatureError::Unsigned),
        None => Ok(SignatureStatus::Unsigned),
        Some(_) => {
            let key = key.ok_or(SignatureError::NoKey)?;
            verify_policy_signature(document, key)?;
            Ok(SignatureStatus::Verified)
        }
    }
}

/// `Ok(None)` when `metadata.signature` is absent.
fn parse_signature(document: &Value) -> Result<Option<Signature>, SignatureError> {
    let Some(raw) = document.get("metadata").and_then(|m| m.get("signature")) else {
        return Ok(None);
    };
    let Some(s) = raw.as_str() else {
        return Err(SignatureError::Malformed("must be a string".into()));
    };
    let Some((alg, b64)) = s.split_once(':') else {
        return Err(SignatureError::Malformed(
            "expected <algorithm>:<base64>".into(),
        ));
    };
    match alg {
        "ed25519" => {}
        "ecdsa-p256" => return Err(SignatureError::UnsupportedAlgorithm(alg.to_string())),
        other => {
            return Err(SignatureError::Malformed(format!(
                "unknown algorithm {other:?}"
            )));
        }
    }
    let bytes = STANDARD
        .decode(b64)
        .map_err(|e| SignatureError::Malformed(format!("bad base64: {e}")))?;
    let arr: [u8; 64] = bytes.try_into().map_err(|b: Vec<u8>| {
        SignatureError::Malformed(format!("{} bytes, expected 64", b.len()))
    })?;
    Ok(Some(Signature::from_bytes(&arr)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc() -> Value {
        json!({"apiVersion": "aip.io/v1alpha2", "kind": "AgentPolicy",
            "metadata": {"name": "signed"}, "spec": {"allowed_tools": ["read_file"]}})
    }

    fn signed(key: &PolicySigningKey) -> Value {
        let mut d = doc();
        let sig = sign_policy(&d, key).unwrap();
        d["metadata"]["signature"] = Value::String(sig);
        d
    }

    #[test]
    fn test_sign_verify_roundtrip() {
        let key = PolicySigningKey::generate().unwrap();
        let d = signed(&key);
        let sig = d["metadata"]["signature"].as_str().unwrap();
        assert!(sig.starts_with("ed25519:") && sig.len() == 8 + 88);
        verify_policy_signature(&d, &key.public()).unwrap();
        // Re-signing a signed document gives the same signature (the old one is not covered).
        assert_eq!(sign_policy(&d, &key).unwrap(), sig);
        assert_eq!(
            check_policy_signature(&d, Some(&key.public()), true).unwrap(),
            SignatureStatus::Verified
        );
    }

    #[test]
    fn test_tampered_policy_rejected() {
        let key = PolicySigningKey::generate().unwrap();
        let mut d = signed(&key);
        d["spec"]["allowed_tools"] = json!(["read_file", "exec"]);
        let err = verify_policy_signature(&d, &key.public()).unwrap_err();
        assert!(matches!(err, SignatureError::Invalid { .. }));
        assert_eq!(err.reason(), "Signature verification failed");
    }

    #[test]
    fn test_wrong_key_rejected() {
        let key = PolicySigningKey::generate().unwrap();
        let other = PolicySigningKey::generate().unwrap();
        assert!(matches!(
            verify_policy_signature(&signed(&key), &other.public()),
            Err(SignatureError::Invalid { .. })
        ));
    }

    #[test]
    fn test_unsigned_and_malformed() {
        let key = PolicySigningKey::generate().unwrap();
        assert!(matches!(
            verify_policy_signature(&doc(), &key.public()),
            Err(SignatureError::Unsigned)
        ));
        assert_eq!(
            check_policy_signature(&doc(), None, false).unwrap(),
            SignatureStatus::Unsigned
        );
        assert!(matches!(
            check_policy_signature(&doc(), Some(&key.public()), true),
            Err(SignatureError::Unsigned)
        ));
        assert!(matches!(
            check_policy_signature(&signed(&key), None, false),
            Err(SignatureError::NoKey)
        ));
        for (bad, want_unsupported) in [
            (json!(5), false),
            (json!("ed25519"), false),
            (json!("ed25519:not base64!"), false),
            (json!("ed25519:AAAA"), false),
            (json!("rsa:AAAA"), false),
            (json!("ecdsa-p256:AAAA"), true),
        ] {
            let mut d = doc();
            d["metadata"]["signature"] = bad.clone();
            let err = verify_policy_signature(&d, &key.public()).unwrap_err();
            if want_unsupported {
                assert!(
                    matches!(err, SignatureError::UnsupportedAlgorithm(_)),
                    "{bad}"
                );
            } else {
                assert!(matches!(err, SignatureError::Malformed(_)), "{bad}: {err}");
            }
        }
    }

    #[test]
    fn test_key_pem_roundtrip() {
        let key = PolicySigningKey::generate().unwrap();
        let priv_pem = key.to_pem().unwrap();
        assert!(priv_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let pub_pem = key.public().to_pem().unwrap();
        assert!(pub_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        let key2 = PolicySigningKey::from_pem(&priv_pem).unwrap();
        let pubk = PolicyVerifyingKey::from_pem(&pub_pem).unwrap();
        assert_eq!(pubk, key.public());
        verify_policy_signature(&signed(&key2), &pubk).unwrap();
        assert!(PolicyVerifyingKey::from_pem(&priv_pem).is_err());
        assert!(PolicySigningKey::from_pem(&pub_pem).is_err());
        assert!(format!("{key:?}").starts_with("PolicySigningKey(ed25519:"));
    }

    #[test]
    fn test_openssl_key_formats() {
        // RFC 8410 §10.3 example key pair (PKCS#8 v1 private, SPKI public).
        let priv_pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n-----END PRIVATE KEY-----\n";
        let pub_pem = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let key = PolicySigningKey::from_pem(priv_pem).unwrap();
        assert_eq!(key.public(), PolicyVerifyingKey::from_pem(pub_pem).unwrap());
    }
}
