//! JWT signing keys: generation (in memory), loading from PEM, rotation with several keys live at
//! once, the JWKS document, and signing/verifying compact JWS tokens with header
//! `{"alg", "typ": "aip+jwt", "kid"}`. Owns the key material; must never write or log a private
//! key, and must not interpret token claims (see `token`).

use std::path::Path;
use std::sync::RwLock;
use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair,
    EcdsaSigningAlgorithm, Ed25519KeyPair, KeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{DecodingKey, EncodingKey, Header, Validation};
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use super::canonical::canonical_json;
use super::config::{IdentityConfig, KeySource, SigningAlgorithm};

/// JOSE `typ` of AIP identity tokens.
pub const TOKEN_TYP: &str = "aip+jwt";

/// Longest token accepted for decoding; ours are well under 1 KiB.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// Minimum HS256 secret length (RFC 7518 §3.2: at least the hash size).
const MIN_HMAC_SECRET: usize = 32;

/// Key material could not be created, loaded or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {reason}")]
    Invalid { path: String, reason: String },
    #[error("key generation failed for {0}")]
    Generate(SigningAlgorithm),
    #[error("signing a token failed: {0}")]
    Sign(String),
}

/// Why a token failed to decode or verify. All of these are `malformed` to the client; the
/// detail is for logs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct VerifyError(pub String);

struct KeyEntry {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// Public JWK (`None` for HMAC secrets, which are never published).
    jwk: Option<Value>,
    created_at: OffsetDateTime,
    /// Set when a newer key took over: verification stops after this instant.
    valid_until: Option<OffsetDateTime>,
}

/// The signing keys of one issuer: the newest signs, older ones keep verifying until their
/// grace period ends. Share it (`Arc<KeyRing>`) between services that must accept each other's
/// tokens.
pub struct KeyRing {
    algorithm: SigningAlgorithm,
    entries: RwLock<Vec<KeyEntry>>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<String> = self.read().iter().map(|e| e.kid.clone()).collect();
        f.debug_struct("KeyRing")
            .field("algorithm", &self.algorithm)
            .field("kids", &kids)
            .finish()
    }
}

impl KeyRing {
    /// Keys as the configuration asks: generated in memory or loaded from `keys.key_path`.
    pub fn from_config(config: &IdentityConfig, now: OffsetDateTime) -> Result<Self, KeyError> {
        match &config.key_source {
            KeySource::Generate => Self::generate(config.algorithm, now),
            KeySource::File(path) => Self::from_file(config.algorithm, path, now),
        }
    }

    /// A ring with one freshly generated key.
    pub fn generate(algorithm: SigningAlgorithm, now: OffsetDateTime) -> Result<Self, KeyError> {
        let entry = generate_entry(algorithm, now)?;
        Ok(Self {
            algorithm,
            entries: RwLock::new(vec![entry]),
        })
    }

    /// A ring with the key in a PEM file (see [`KeySource::File`] for formats).
    pub fn from_file(
        algorithm: SigningAlgorithm,
        path: &Path,
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        let entry = entry_from_file(algorithm, path, now)?;
        Ok(Self {
            algorithm,
            entries: RwLock::new(vec![entry]),
        })
    }

    /// A ring with the key in `pem` (PEM text; raw secret bytes for HS256).
    pub fn from_pem(
        algorithm: SigningAlgorithm,
        pem: &[u8],
        now: OffsetDateTime,
    ) -> Result<Self, KeyError> {
        let entry = entry_from_bytes(algorithm, pem, now).map_err(|reason| KeyError::Invalid {
            path: "<memory>".into(),
            reason,
        })?;
        Ok(Self {
            algorithm,
            entries: RwLock::new(vec![entry]),
        })
    }

    /// The algorithm every key in this ring uses.
    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    /// Key id of the key that signs new tokens.
    pub fn current_kid(&self) -> String {
        self.read()
            .last()
            .map(|e| e.kid.clone())
            .unwrap_or_default()
    }

    /// When the signing key was created or loaded.
    pub fn current_created_at(&self) -> Option<OffsetDateTime> {
        self.read().last().map(|e| e.created_at)
    }

    /// Number of keys that still verify at `now`.
    pub fn live_keys(&self, now: OffsetDateTime) -> usize {
        self.read()
            .iter()
            .filter(|e| e.valid_until.is_none_or(|u| now <= u))
            .count()
    }

    /// Generates a new signing key; the previous ones keep verifying (and stay in the JWKS)
    /// for `grace`. Returns the new key id.
    pub fn rotate(&self, now: OffsetDateTime, grace: Duration) -> Result<String, KeyError> {
        let entry = generate_entry(self.algorithm, now)?;
        Ok(self.install(entry, now, grace))
    }

    /// Replaces the signing key with the one in a PEM file (rotation for `key_source: file`).
    pub fn reload_file(
        &self,
        path: &Path,
        now: OffsetDateTime,
        grace: Duration,
    ) -> Result<String, KeyError> {
        let entry = entry_from_file(self.algorithm, path, now)?;
        Ok(self.install(entry, now, grace))
    }

    fn install(&self, entry: KeyEntry, now: OffsetDateTime, grace: Duration) -> String {
        let kid = entry.kid.clone();
        let mut entries = self.write();
        let until = now + grace;
        entries.retain(|e| e.kid != kid && e.valid_until.is_none_or(|u| now <= u));
        for e in entries.iter_mut() {
            if e.valid_until.is_none() {
                e.valid_until = Some(until);
            }
        }
        entries.push(entry);
        kid
    }

    /// JWKS document: every public key that still verifies at `now`, newest last. HMAC keys are
    /// secret and never listed.
    pub fn jwks(&self, now: OffsetDateTime) -> Value {
        let keys: Vec<Value> = self
            .read()
            .iter()
            .filter(|e| e.valid_until.is_none_or(|u| now <= u))
            .filter_map(|e| e.jwk.clone())
            .collect();
        json!({ "keys": keys })
    }

    /// Signs `claims` with the current key as a compact JWS.
    pub fn sign<T: Serialize>(&self, claims: &T) -> Result<String, KeyError> {
        let entries = self.read();
        let Some(entry) = entries.last() else {
            return Err(KeyError::Sign("no signing key".into()));
        };
        let mut header = Header::new(self.algorithm.jwt());
        header.typ = Some(TOKEN_TYP.to_string());
        header.kid = Some(entry.kid.clone());
        jsonwebtoken::encode(&header, claims, &entry.encoding)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }

    /// Verifies a compact JWS made by [`KeyRing::sign`] and decodes its claims. Checks the
    /// header (`typ`, `alg` equal to this ring's, a `kid` this ring knows and still trusts at
    /// `now`), then the signature. Claims are not interpreted here.
    pub fn verify<T: DeserializeOwned>(
        &self,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<T, VerifyError> {
        if token.is_empty() {
            return Err(VerifyError("empty token".into()));
        }
        if token.len() > MAX_TOKEN_LEN {
            return Err(VerifyError(format!(
                "token longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        if token.bytes().filter(|b| *b == b'.').count() != 2 {
            return Err(VerifyError(
                "not a compact JWS (header.payload.signature)".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| VerifyError(format!("bad header: {e}")))?;
        if header.typ.as_deref() != Some(TOKEN_TYP) {
            return Err(VerifyError(format!(
                "header typ is {:?}, expected {TOKEN_TYP:?}",
                header.typ
            )));
        }
        if header.alg != self.algorithm.jwt() {
            return Err(VerifyError(format!(
                "header alg {:?} is not the configured {}",
                header.alg, self.algorithm
            )));
        }
        if header.crit.is_some()
            || header.jwk.is_some()
            || header.jku.is_some()
            || header.x5u.is_some()
        {
            return Err(VerifyError(
                "header carries unsupported key or crit parameters".into(),
            ));
        }
        let Some(kid) = header.kid.as_deref() else {
            return Err(VerifyError("header has no kid".into()));
        };
        let entries = self.read();
        let Some(entry) = entries.iter().find(|e| e.kid == kid) else {
            return Err(VerifyError(format!("unknown kid {kid:?}")));
        };
        if entry.valid_until.is_some_and(|u| now > u) {
            return Err(VerifyError(format!("key {kid:?} is retired")));
        }
        let mut validation = Validation::new(self.algorithm.jwt());
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.validate_aud = false;
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, &entry.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| VerifyError(format!("signature or payload rejected: {e}")))
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<KeyEntry>> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<KeyEntry>> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }
}

fn ec_alg(
    algorithm: SigningAlgorithm,
) -> Option<(&'static EcdsaSigningAlgorithm, &'static str, usize)> {
    match algorithm {
        SigningAlgorithm::Es256 => Some((&ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32)),
        SigningAlgorithm::Es384 => Some((&ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48)),
        _ => None,
    }
}

fn generate_entry(algorithm: SigningAlgorithm, now: OffsetDateTime) -> Result<KeyEntry, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    match algorithm {
        SigningAlgorithm::Es256 | SigningAlgorithm::Es384 => {
            let (alg, _, _) = ec_alg(algorithm).ok_or(KeyError::Generate(algorithm))?;
            let doc = EcdsaKeyPair::generate_pkcs8(alg, &rng)
                .map_err(|_| KeyError::Generate(algorithm))?;
            ec_entry(algorithm, doc.as_ref(), now).map_err(|_| KeyError::Generate(algorithm))
        }
        SigningAlgorithm::EdDsa => {
            let doc =
                Ed25519KeyPair::generate_pkcs8(&rng).map_err(|_| KeyError::Generate(algorithm))?;
            ed_entry(doc.as_ref(), now).map_err(|_| KeyError::Generate(algorithm))
        }
        SigningAlgorithm::Hs256 => {
            let mut secret = [0u8; 32];
            aws_lc_rs::rand::fill(&mut secret).map_err(|_| KeyError::Generate(algorithm))?;
            Ok(hmac_entry(&secret, now))
        }
    }
}

fn entry_from_file(
    algorithm: SigningAlgorithm,
    path: &Path,
    now: OffsetDateTime,
) -> Result<KeyEntry, KeyError> {
    let bytes = std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.display().to_string(),
        source,
    })?;
    entry_from_bytes(algorithm, &bytes, now).map_err(|reason| KeyError::Invalid {
        path: path.display().to_string(),
        reason,
    })
}

fn entry_from_bytes(
    algorithm: SigningAlgorithm,
    bytes: &[u8],
    now: OffsetDateTime,
) -> Result<KeyEntry, String> {
    if algorithm == SigningAlgorithm::Hs256 {
        if bytes.len() < MIN_HMAC_SECRET {
            return Err(format!(
                "HS256 secret must be at least {MIN_HMAC_SECRET} bytes"
            ));
        }
        return Ok(hmac_entry(bytes, now));
    }
    let der = PrivateKeyDer::from_pem_slice(bytes).map_err(|e| {
        format!(
            "expected a PEM private key (PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"): {e:?}"
        )
    })?;
    match (algorithm, &der) {
        (
            SigningAlgorithm::Es256 | SigningAlgorithm::Es384,
            PrivateKeyDer::Pkcs8(_) | PrivateKeyDer::Sec1(_),
        ) => {
            let (alg, curve, _) = ec_alg(algorithm).ok_or("not an EC algorithm")?;
            let pair = EcdsaKeyPair::from_private_key_der(alg, der.secret_der())
                .map_err(|e| format!("not a {curve} private key for {algorithm}: {e}"))?;
            let pkcs8 = pair
                .to_pkcs8v1()
                .map_err(|_| "cannot re-encode EC key".to_string())?;
            ec_entry(algorithm, pkcs8.as_ref(), now)
        }
        (SigningAlgorithm::EdDsa, PrivateKeyDer::Pkcs8(p)) => ed_entry(p.secret_pkcs8_der(), now)
            .map_err(|e| format!("not an Ed25519 PKCS#8 key: {e}")),
        _ => Err(format!(
            "key type does not match signing_algorithm {algorithm}"
        )),
    }
}

fn ec_entry(
    algorithm: SigningAlgorithm,
    pkcs8: &[u8],
    now: OffsetDateTime,
) -> Result<KeyEntry, String> {
    let (alg, curve, coord) = match ec_alg(algorithm) {
        Some(v) => v,
        None => return Err(format!("{algorithm} is not an EC algorithm")),
    };
    let pair = EcdsaKeyPair::from_pkcs8(alg, pkcs8).map_err(|e| e.to_string())?;
    // Uncompressed SEC1 point: 0x04 || X || Y.
    let point = pair.public_key().as_ref();
    if point.len() != 1 + 2 * coord || point[0] != 4 {
        return Err("unexpected EC public key encoding".into());
    }
    let x = URL_SAFE_NO_PAD.encode(&point[1..1 + coord]);
    let y = URL_SAFE_NO_PAD.encode(&point[1 + coord..]);
    let kid = thumbprint(&json!({"crv": curve, "kty": "EC", "x": x, "y": y}));
    let decoding = DecodingKey::from_ec_components(&x, &y).map_err(|e| e.to_string())?;
    let jwk = json!({"kty": "EC", "crv": curve, "kid": kid, "use": "sig", "alg": algorithm.as_str(), "x": x, "y": y});
    Ok(KeyEntry {
        kid,
        encoding: EncodingKey::from_ec_der(pkcs8),
        decoding,
        jwk: Some(jwk),
        created_at: now,
        valid_until: None,
    })
}

fn ed_entry(pkcs8: &[u8], now: OffsetDateTime) -> Result<KeyEntry, String> {
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| e.to_string())?;
    let x = URL_SAFE_NO_PAD.encode(pair.public_key().as_ref());
    let kid = thumbprint(&json!({"crv": "Ed25519", "kty": "OKP", "x": x}));
    let decoding = DecodingKey::from_ed_components(&x).map_err(|e| e.to_string())?;
    let jwk =
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "use": "sig", "alg": "EdDSA", "x": x});
    Ok(KeyEntry {
        kid,
        encoding: EncodingKey::from_ed_der(pkcs8),
        decoding,
        jwk: Some(jwk),
        created_at: now,
        valid_until: None,
    })
}

fn hmac_entry(secret: &[u8], now: OffsetDateTime) -> KeyEntry {
    // The kid must not reveal anything about the secret: a hash of a domain-separated secret.
    let mut h = Sha256::new();
    h.update(b"aip hs256 kid\0");
    h.update(secret);
    let kid = format!("hs-{}", &hex::encode(h.finalize())[..16]);
    KeyEntry {
        kid,
        encoding: EncodingKey::from_secret(secret),
        decoding: DecodingKey::from_secret(secret),
        jwk: None,
        created_at: now,
        valid_until: None,
    }
}

/// RFC 7638 JWK thumbprint (SHA-256, base64url): JCS of the required members is exactly the
/// RFC's "lexicographic order, no whitespace" form. Deterministic, so every process loading the
/// same key file agrees on the kid.
fn thumbprint(required_members: &Value) -> String {
    let bytes = canonical_json(required_members).unwrap_or_default();
    URL_SAFE_NO_PAD.encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct C {
        a: u32,
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn test_sign_verify_each_algorithm() {
        for alg in [
            SigningAlgorithm::Es256,
            SigningAlgorithm::Es384,
            SigningAlgorithm::EdDsa,
            SigningAlgorithm::Hs256,
        ] {
            let ring = KeyRing::generate(alg, now()).unwrap();
            let tok = ring.sign(&C { a: 7 }).unwrap();
            assert_eq!(ring.verify::<C>(&tok, now()).unwrap(), C { a: 7 });
            let header = jsonwebtoken::decode_header(&tok).unwrap();
            assert_eq!(header.typ.as_deref(), Some("aip+jwt"));
            assert_eq!(header.kid.as_deref(), Some(ring.current_kid().as_str()));
            // Another ring of the same algorithm does not accept it.
            let other = KeyRing::generate(alg, now()).unwrap();
            assert!(other.verify::<C>(&tok, now()).is_err());
        }
    }

    #[test]
    fn test_tampered_tokens_rejected() {
        let ring = KeyRing::generate(SigningAlgorithm::Es256, now()).unwrap();
        let tok = ring.sign(&C { a: 1 }).unwrap();
        let parts: Vec<&str> = tok.split('.').collect();
        let forged_payload = URL_SAFE_NO_PAD.encode(br#"{"a":2}"#);
        let forged = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
        assert!(ring.verify::<C>(&forged, now()).is_err());
        // alg=none / HS256 confusion: header swapped, signature stripped.
        let none_hdr = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"aip+jwt"}"#);
        assert!(
            ring.verify::<C>(&format!("{none_hdr}.{}.", parts[1]), now())
                .is_err()
        );
        let hs_hdr = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"HS256","typ":"aip+jwt","kid":"{}"}}"#,
            ring.current_kid()
        ));
        assert!(
            ring.verify::<C>(&format!("{hs_hdr}.{}.{}", parts[1], parts[2]), now())
                .is_err()
        );
        // Wrong typ.
        let jwt_hdr = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"alg":"ES256","typ":"JWT","kid":"{}"}}"#,
            ring.current_kid()
        ));
        assert!(
            ring.verify::<C>(&format!("{jwt_hdr}.{}.{}", parts[1], parts[2]), now())
                .is_err()
        );
        for bad in [
            "",
            "not-a-valid-token-format",
            "a.b",
            "a.b.c.d",
            "...",
            &"x".repeat(MAX_TOKEN_LEN + 1),
        ] {
            assert!(ring.verify::<C>(bad, now()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn test_rotation_keeps_old_key_for_grace() {
        let t0 = now();
        let ring = KeyRing::generate(SigningAlgorithm::EdDsa, t0).unwrap();
        let old_kid = ring.current_kid();
        let old_tok = ring.sign(&C { a: 1 }).unwrap();
        let new_kid = ring.rotate(t0, Duration::from_secs(300)).unwrap();
        assert_ne!(old_kid, new_kid);
        assert_eq!(ring.current_kid(), new_kid);
        let jwks = ring.jwks(t0);
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap())
            .collect();
        assert_eq!(kids, vec![old_kid.as_str(), new_kid.as_str()]);
        assert_eq!(ring.live_keys(t0), 2);
        assert!(
            ring.verify::<C>(&old_tok, t0 + Duration::from_secs(299))
                .is_ok()
        );
        assert!(
            ring.verify::<C>(&old_tok, t0 + Duration::from_secs(301))
                .is_err()
        );
        assert_eq!(
            ring.jwks(t0 + Duration::from_secs(301))["keys"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn test_jwks_shapes() {
        let ec = KeyRing::generate(SigningAlgorithm::Es256, now()).unwrap();
        let k = &ec.jwks(now())["keys"][0];
        assert_eq!(k["kty"], "EC");
        assert_eq!(k["crv"], "P-256");
        assert_eq!(k["alg"], "ES256");
        assert_eq!(k["use"], "sig");
        assert_eq!(
            URL_SAFE_NO_PAD
                .decode(k["x"].as_str().unwrap())
                .unwrap()
                .len(),
            32
        );
        // The JWK round-trips through jsonwebtoken and verifies our tokens.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(k.clone()).unwrap();
        let dk = DecodingKey::from_jwk(&jwk).unwrap();
        let tok = ec.sign(&C { a: 3 }).unwrap();
        let mut v = Validation::new(jsonwebtoken::Algorithm::ES256);
        v.required_spec_claims.clear();
        v.validate_exp = false;
        assert_eq!(
            jsonwebtoken::decode::<C>(&tok, &dk, &v).unwrap().claims,
            C { a: 3 }
        );

        let ed = KeyRing::generate(SigningAlgorithm::EdDsa, now()).unwrap();
        let k = &ed.jwks(now())["keys"][0];
        assert_eq!(
            (k["kty"].as_str(), k["crv"].as_str()),
            (Some("OKP"), Some("Ed25519"))
        );
        let hs = KeyRing::generate(SigningAlgorithm::Hs256, now()).unwrap();
        assert_eq!(hs.jwks(now()), json!({"keys": []}));
    }

    #[test]
    fn test_load_pem_formats() {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let p8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pem = pem_wrap("PRIVATE KEY", p8.as_ref());
        let a = KeyRing::from_pem(SigningAlgorithm::Es256, pem.as_bytes(), now()).unwrap();
        let b = KeyRing::from_pem(SigningAlgorithm::Es256, pem.as_bytes(), now()).unwrap();
        // Same file → same kid, and tokens verify across rings.
        assert_eq!(a.current_kid(), b.current_kid());
        assert!(b.verify::<C>(&a.sign(&C { a: 1 }).unwrap(), now()).is_ok());
        // Wrong curve / wrong algorithm.
        assert!(KeyRing::from_pem(SigningAlgorithm::Es384, pem.as_bytes(), now()).is_err());
        assert!(KeyRing::from_pem(SigningAlgorithm::EdDsa, pem.as_bytes(), now()).is_err());
        // Ed25519 PKCS#8.
        let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let ed_pem = pem_wrap("PRIVATE KEY", ed.as_ref());
        assert!(KeyRing::from_pem(SigningAlgorithm::EdDsa, ed_pem.as_bytes(), now()).is_ok());
        assert!(KeyRing::from_pem(SigningAlgorithm::Es256, ed_pem.as_bytes(), now()).is_err());
        assert!(KeyRing::from_pem(SigningAlgorithm::Es256, b"garbage", now()).is_err());
        assert!(KeyRing::from_pem(SigningAlgorithm::Hs256, b"short", now()).is_err());
    }

    fn pem_wrap(label: &str, der: &[u8]) -> String {
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap());
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }
}
