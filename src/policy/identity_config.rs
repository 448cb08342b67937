//! `spec.identity` (AIP v1alpha2 §3.7): the validated model and its load-time rules (TTL and
//! rotation, nonce window, audience, nonce storage, key source). The identity module consumes
//! it; nothing here issues or checks tokens.
//!
//! Must not: read key files or contact storage (that happens when identity starts).

use std::path::PathBuf;
use std::time::Duration;

use super::check::{Checked, Checker, is_endpoint_path, is_uri, show};
use super::raw::{RawExternalKey, RawIdentity, RawKeys, RawNonceStorage};

/// Longest accepted `token_ttl` (the spec: SHOULD NOT allow more than one hour).
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);
pub const DEFAULT_ROTATION_INTERVAL: Duration = Duration::from_secs(240);

#[derive(Debug, Clone, PartialEq)]
pub struct IdentityConfig {
    pub enabled: bool,
    pub token_ttl: Duration,
    /// Effective interval; `ZERO` disables automatic rotation.
    pub rotation_interval: Duration,
    /// Whether `rotation_interval` was written (the default is `min(4m, 0.8 × ttl)`).
    pub rotation_interval_explicit: bool,
    pub require_token: bool,
    pub session_binding: SessionBinding,
    pub nonce_window: Duration,
    pub policy_transition_grace: Duration,
    /// Effective audience (`metadata.name` when not written).
    pub audience: String,
    pub nonce_storage: NonceStorage,
    pub keys: KeyConfig,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionBinding {
    Process,
    Policy,
    Strict,
}

impl SessionBinding {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionBinding::Process => "process",
            SessionBinding::Policy => "policy",
            SessionBinding::Strict => "strict",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NonceStorage {
    pub kind: NonceStorageKind,
    pub address: Option<String>,
    pub key_prefix: String,
    pub clock_skew_tolerance: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceStorageKind {
    Memory,
    Redis,
    Postgres,
}

impl NonceStorageKind {
    pub fn as_str(self) -> &'static str {
        match self {
            NonceStorageKind::Memory => "memory",
            NonceStorageKind::Redis => "redis",
            NonceStorageKind::Postgres => "postgres",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct KeyConfig {
    pub signing_algorithm: SigningAlgorithm,
    pub key_source: KeySource,
    pub key_path: Option<PathBuf>,
    pub rotation_period: Duration,
    pub jwks_endpoint: String,
    pub grace_period: Option<Duration>,
    pub external: Option<ExternalKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigningAlgorithm {
    Es256,
    Es384,
    EdDsa,
    Rs256,
    Hs256,
}

impl SigningAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            SigningAlgorithm::Es256 => "ES256",
            SigningAlgorithm::Es384 => "ES384",
            SigningAlgorithm::EdDsa => "EdDSA",
            SigningAlgorithm::Rs256 => "RS256",
            SigningAlgorithm::Hs256 => "HS256",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySource {
    Generate,
    File,
    External,
}

impl KeySource {
    pub fn as_str(self) -> &'static str {
        match self {
            KeySource::Generate => "generate",
            KeySource::File => "file",
            KeySource::External => "external",
        }
    }
}

/// `keys.external` (a key management service; reserved by the spec for the future).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalKey {
    pub kind: String,
    pub address: Option<String>,
    pub key_name: Option<String>,
}

const P: &str = "spec.identity";

pub(crate) fn validate(
    c: &mut Checker<'_>,
    raw: &RawIdentity,
    agent_name: &str,
) -> Checked<IdentityConfig> {
    let token_ttl = match &raw.token_ttl {
        Some(s) => c.positive_duration(&format!("{P}.token_ttl"), s)?,
        None => DEFAULT_TOKEN_TTL,
    };
    if token_ttl > MAX_TOKEN_TTL {
        return Err(c.err(
            &format!("{P}.token_ttl"),
            format!("token_ttl ({}) is longer than 1h", show(token_ttl)),
            Some("tokens should live 5–15 minutes; use rotation instead of long lifetimes".into()),
        ));
    }
    let (rotation_interval, rotation_interval_explicit) = match &raw.rotation_interval {
        Some(s) => {
            let path = format!("{P}.rotation_interval");
            let r = c.duration(&path, s)?;
            if r >= token_ttl {
                return Err(c.err(
                    &path,
                    format!(
                        "rotation_interval ({}) must be less than token_ttl ({})",
                        show(r),
                        show(token_ttl)
                    ),
                    Some("rotate before the token expires, e.g. 4m for a 5m token_ttl; `0s` disables rotation".into()),
                ));
            }
            if r.as_secs_f64() > 0.9 * token_ttl.as_secs_f64() {
                c.warn(
                    &path,
                    format!(
                        "rotation_interval ({}) leaves less than 10% of token_ttl ({}) to rotate",
                        show(r),
                        show(token_ttl)
                    ),
                );
            }
            (r, true)
        }
        None => (DEFAULT_ROTATION_INTERVAL.min(token_ttl.mul_f64(0.8)), false),
    };
    let session_binding = match &raw.session_binding {
        Some(s) => c.one_of(
            &format!("{P}.session_binding"),
            s,
            &[
                ("process", SessionBinding::Process),
                ("policy", SessionBinding::Policy),
                ("strict", SessionBinding::Strict),
            ],
        )?,
        None => SessionBinding::Process,
    };
    let nonce_window = match &raw.nonce_window {
        Some(s) => {
            let path = format!("{P}.nonce_window");
            let w = c.duration(&path, s)?;
            if w < token_ttl {
                return Err(c.err(
                    &path,
                    format!("nonce_window ({}) must be at least token_ttl ({})", show(w), show(token_ttl)),
                    Some("a shorter window would let a still-valid token be replayed; omit it to use token_ttl".into()),
                ));
            }
            w
        }
        None => token_ttl,
    };
    let policy_transition_grace = match &raw.policy_transition_grace {
        Some(s) => {
            let path = format!("{P}.policy_transition_grace");
            let g = c.duration(&path, s)?;
            if g >= token_ttl {
                c.warn(
                    &path,
                    format!(
                        "policy_transition_grace ({}) should be less than token_ttl ({})",
                        show(g),
                        show(token_ttl)
                    ),
                );
            }
            g
        }
        None => Duration::ZERO,
    };
    let audience = match &raw.audience {
        Some(a) => {
            let path = format!("{P}.audience");
            if a.is_empty() {
                return Err(c.err(
                    &path,
                    "must not be empty",
                    Some(format!("omit it to use metadata.name (`{agent_name}`)")),
                ));
            }
            if a.contains('*') {
                return Err(c.err(&path, "wildcards are not allowed in an audience", None));
            }
            if a != agent_name && !is_uri(a) {
                return Err(c.err(
                    &path,
                    format!("`{a}` is neither a URI nor metadata.name"),
                    Some("use the validation server's URL (https://…) or metadata.name".into()),
                ));
            }
            a.clone()
        }
        None => agent_name.to_owned(),
    };
    let nonce_storage = nonce_storage(c, raw.nonce_storage.as_ref())?;
    let keys = keys(c, raw.keys.as_ref())?;
    Ok(IdentityConfig {
        enabled: raw.enabled.unwrap_or(false),
        token_ttl,
        rotation_interval,
        rotation_interval_explicit,
        require_token: raw.require_token.unwrap_or(false),
        session_binding,
        nonce_window,
        policy_transition_grace,
        audience,
        nonce_storage,
        keys,
    })
}

fn nonce_storage(c: &mut Checker<'_>, raw: Option<&RawNonceStorage>) -> Checked<NonceStorage> {
    let p = format!("{P}.nonce_storage");
    let default = RawNonceStorage::default();
    let raw = raw.unwrap_or(&default);
    let kind = match &raw.kind {
        Some(s) => c.one_of(
            &format!("{p}.type"),
            s,
            &[
                ("memory", NonceStorageKind::Memory),
                ("redis", NonceStorageKind::Redis),
                ("postgres", NonceStorageKind::Postgres),
            ],
        )?,
        None => NonceStorageKind::Memory,
    };
    let schemes: &[&str] = match kind {
        NonceStorageKind::Memory => &[],
        NonceStorageKind::Redis => &["redis://", "rediss://", "unix://"],
        NonceStorageKind::Postgres => &["postgres://", "postgresql://"],
    };
    match (&raw.address, kind) {
        (None, NonceStorageKind::Memory) => {}
        (Some(_), NonceStorageKind::Memory) => {
            return Err(c.err(
                &format!("{p}.address"),
                "memory storage takes no address",
                Some("remove `address`, or set `type: redis` or `type: postgres`".into()),
            ));
        }
        (None, _) => {
            return Err(c.err(
                &format!("{p}.address"),
                format!("`address` is required for {} nonce storage", kind.as_str()),
                Some(format!("for example `address: {}host:port`", schemes[0])),
            ));
        }
        (Some(a), _) => {
            if !schemes.iter().any(|s| a.starts_with(s)) {
                return Err(c.err(
                    &format!("{p}.address"),
                    format!("`{a}` is not a {} address", kind.as_str()),
                    Some(format!("start it with {}", schemes.join(" or "))),
                ));
            }
        }
    }
    let clock_skew_tolerance = match &raw.clock_skew_tolerance {
        Some(s) => c.duration(&format!("{p}.clock_skew_tolerance"), s)?,
        None => Duration::from_secs(30),
    };
    Ok(NonceStorage {
        kind,
        address: raw.address.clone(),
        key_prefix: raw
            .key_prefix
            .clone()
            .unwrap_or_else(|| "aip:nonce:".into()),
        clock_skew_tolerance,
    })
}

fn keys(c: &mut Checker<'_>, raw: Option<&RawKeys>) -> Checked<KeyConfig> {
    let p = format!("{P}.keys");
    let default = RawKeys::default();
    let raw = raw.unwrap_or(&default);
    let signing_algorithm = match &raw.signing_algorithm {
        Some(s) => c.one_of(
            &format!("{p}.signing_algorithm"),
            s,
            &[
                ("ES256", SigningAlgorithm::Es256),
                ("ES384", SigningAlgorithm::Es384),
                ("EdDSA", SigningAlgorithm::EdDsa),
                ("RS256", SigningAlgorithm::Rs256),
                ("HS256", SigningAlgorithm::Hs256),
            ],
        )?,
        None => SigningAlgorithm::Es256,
    };
    let key_source = match &raw.key_source {
        Some(s) => c.one_of(
            &format!("{p}.key_source"),
            s,
            &[
                ("generate", KeySource::Generate),
                ("file", KeySource::File),
                ("external", KeySource::External),
            ],
        )?,
        None => KeySource::Generate,
    };
    let key_path = match (&raw.key_path, key_source) {
        (Some(k), KeySource::File) => {
            Some(PathBuf::from(c.non_empty(&format!("{p}.key_path"), k)?))
        }
        (None, KeySource::File) => {
            return Err(c.err(
                &format!("{p}.key_path"),
                "`key_path` is required with `key_source: file`",
                Some("point it at a PEM private key".into()),
            ));
        }
        (Some(_), _) => {
            return Err(c.err(
                &format!("{p}.key_path"),
                format!(
                    "`key_path` is only used with `key_source: file` (here `{}`)",
                    key_source.as_str()
                ),
                None,
            ));
        }
        (None, _) => None,
    };
    let external = match (&raw.external, key_source) {
        (Some(e), KeySource::External) => Some(external(c, &format!("{p}.external"), e)?),
        (None, KeySource::External) => {
            return Err(c.err(
                &format!("{p}.external"),
                "`external` is required with `key_source: external`",
                None,
            ));
        }
        (Some(_), _) => {
            return Err(c.err(
                &format!("{p}.external"),
                "`external` is only used with `key_source: external`",
                None,
            ));
        }
        (None, _) => None,
    };
    let rotation_period = match &raw.rotation_period {
        Some(s) => c.positive_duration(&format!("{p}.rotation_period"), s)?,
        None => Duration::from_secs(7 * 86_400),
    };
    let jwks_endpoint = match &raw.jwks_endpoint {
        Some(s) if !is_endpoint_path(s) => {
            return Err(c.err(
                &format!("{p}.jwks_endpoint"),
                format!("`{s}` is not an endpoint path"),
                Some("use a path such as /v1/jwks (letters, digits, /, _ and -)".into()),
            ));
        }
        Some(s) => s.clone(),
        None => "/v1/jwks".into(),
    };
    let grace_period = match &raw.grace_period {
        Some(s) => Some(c.duration(&format!("{p}.grace_period"), s)?),
        None => None,
    };
    Ok(KeyConfig {
        signing_algorithm,
        key_source,
        key_path,
        rotation_period,
        jwks_endpoint,
        grace_period,
        external,
    })
}

fn external(c: &Checker<'_>, p: &str, raw: &RawExternalKey) -> Checked<ExternalKey> {
    let kind = match &raw.kind {
        Some(k) => c.non_empty(&format!("{p}.type"), k)?.to_owned(),
        None => {
            return Err(c.err(
                &format!("{p}.type"),
                "missing required field `type`",
                Some("for example `type: vault`".into()),
            ));
        }
    };
    Ok(ExternalKey {
        kind,
        address: raw.address.clone(),
        key_name: raw.key_name.clone(),
    })
}
