//! Plain identity configuration: the values of `spec.identity` (AIP v1alpha2 §3.7) after the
//! policy loader parsed them, plus the two facts from elsewhere in the policy that tokens need
//! (`metadata.name`, `spec.server.enabled`). Owns defaults and the cross-field rules; must not
//! parse YAML or know the policy model (`launch` maps `spec.identity` onto these types).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Longest accepted `token_ttl`. The spec says implementations SHOULD NOT allow more than one
/// hour; a longer-lived bearer token defeats the point of rotation, so we refuse it.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// How a token is tied to the context that received it (§5.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindingMode {
    /// The token is only valid in the process that issued it (default).
    #[default]
    Process,
    /// Only the policy hash binds the token (already checked by every mode).
    Policy,
    /// Process, policy path, hostname and, when present, container id and pod uid must match.
    Strict,
}

impl BindingMode {
    /// Parses the policy spelling (`process`, `policy`, `strict`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "process" => Ok(Self::Process),
            "policy" => Ok(Self::Policy),
            "strict" => Ok(Self::Strict),
            other => Err(ConfigError::invalid(
                "session_binding",
                format!("unknown session_binding {other:?} (expected process, policy or strict)"),
            )),
        }
    }

    /// The policy spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Process => "process",
            Self::Policy => "policy",
            Self::Strict => "strict",
        }
    }
}

/// JWT signing algorithm (`keys.signing_algorithm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SigningAlgorithm {
    /// ECDSA P-256 with SHA-256 (spec default, RECOMMENDED).
    #[default]
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519.
    EdDsa,
    /// HMAC-SHA256 with a per-process secret; only without a validation server.
    Hs256,
}

impl SigningAlgorithm {
    /// Parses the policy spelling. `RS256` is part of the spec's enum but not implemented here:
    /// it is refused with a clear error rather than silently replaced.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "ES256" => Ok(Self::Es256),
            "ES384" => Ok(Self::Es384),
            "EdDSA" => Ok(Self::EdDsa),
            "HS256" => Ok(Self::Hs256),
            "RS256" => Err(ConfigError::invalid(
                "keys.signing_algorithm",
                "RS256 is not supported by aip; use ES256 (default), ES384 or EdDSA".to_string(),
            )),
            other => Err(ConfigError::invalid(
                "keys.signing_algorithm",
                format!(
                    "unknown signing_algorithm {other:?} (expected ES256, ES384, EdDSA or HS256)"
                ),
            )),
        }
    }

    /// The JOSE `alg` name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }

    pub(crate) fn jwt(self) -> jsonwebtoken::Algorithm {
        match self {
            Self::Es256 => jsonwebtoken::Algorithm::ES256,
            Self::Es384 => jsonwebtoken::Algorithm::ES384,
            Self::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            Self::Hs256 => jsonwebtoken::Algorithm::HS256,
        }
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where signing keys come from (`keys.key_source` / `keys.key_path`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum KeySource {
    /// A fresh key pair in memory, never written anywhere (default).
    #[default]
    Generate,
    /// A PEM private key file (PKCS#8 `PRIVATE KEY`, or SEC1 `EC PRIVATE KEY` for ES256/ES384;
    /// for HS256 a file holding the raw secret of at least 32 bytes).
    File(PathBuf),
}

/// Where nonces and revocations live (`nonce_storage.type` / `address`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum NonceBackend {
    /// This process only (default). Replay across several supervisors is not detected.
    #[default]
    Memory,
    /// A Redis server (`redis://…` or `rediss://…`), shared by every supervisor using it.
    Redis {
        /// Connection URL; may carry a password, so it is never logged.
        address: String,
    },
}

/// `spec.identity.nonce_storage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonceStorageConfig {
    pub backend: NonceBackend,
    /// Prefix of every key written to a shared store (default `aip:nonce:`).
    pub key_prefix: String,
    /// Added to storage TTLs so hosts with slightly different clocks still see each other's
    /// nonces (default 30 s).
    pub clock_skew_tolerance: Duration,
}

impl Default for NonceStorageConfig {
    fn default() -> Self {
        Self {
            backend: NonceBackend::Memory,
            key_prefix: "aip:nonce:".to_string(),
            clock_skew_tolerance: Duration::from_secs(30),
        }
    }
}

/// Everything the identity engine needs, with the spec's defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// `metadata.name`; becomes the token's `agent_id` and the default audience.
    pub agent_id: String,
    /// `token_ttl` (default 5 min).
    pub token_ttl: Duration,
    /// `rotation_interval` as written in the policy; `None` when the author did not set it. Use
    /// [`IdentityConfig::effective_rotation_interval`]; zero disables automatic rotation.
    pub rotation_interval: Option<Duration>,
    /// `require_token`.
    pub require_token: bool,
    /// `session_binding`.
    pub session_binding: BindingMode,
    /// `nonce_window` as written; `None` means "equal to `token_ttl`".
    pub nonce_window: Option<Duration>,
    /// `policy_transition_grace` (default 0: the old policy hash is refused at once).
    pub policy_transition_grace: Duration,
    /// `audience`; `None` means `metadata.name`.
    pub audience: Option<String>,
    /// `keys.signing_algorithm`.
    pub algorithm: SigningAlgorithm,
    /// `keys.key_source` + `keys.key_path`.
    pub key_source: KeySource,
    /// `keys.rotation_period` (default 7 days) for generated keys; zero disables key rotation.
    pub key_rotation_period: Duration,
    /// `keys.grace_period`: how long a retired key stays in the JWKS and keeps verifying.
    /// `None` means `token_ttl`, the minimum the spec allows.
    pub key_grace_period: Option<Duration>,
    /// `nonce_storage`.
    pub nonce_storage: NonceStorageConfig,
    /// How long a session revocation is remembered (no spec field; default 24 h).
    pub max_session_duration: Duration,
    /// `spec.server.enabled`: forbids HS256.
    pub server_enabled: bool,
}

impl IdentityConfig {
    /// The spec's defaults for an agent named `agent_id`.
    pub fn new(agent_id: impl Into<String>) -> Self {
        Self {
            agent_id: agent_id.into(),
            token_ttl: Duration::from_secs(300),
            rotation_interval: None,
            require_token: false,
            session_binding: BindingMode::Process,
            nonce_window: None,
            policy_transition_grace: Duration::ZERO,
            audience: None,
            algorithm: SigningAlgorithm::Es256,
            key_source: KeySource::Generate,
            key_rotation_period: Duration::from_secs(7 * 24 * 3600),
            key_grace_period: None,
            nonce_storage: NonceStorageConfig::default(),
            max_session_duration: Duration::from_secs(24 * 3600),
            server_enabled: false,
        }
    }

    /// Rotation interval in force. When the author did not set one, the spec default (4 min) is
    /// capped at 80 % of `token_ttl` so that short test TTLs (`"1s"` in the vectors) still rotate
    /// before expiry instead of being rejected (digest §10.3).
    pub fn effective_rotation_interval(&self) -> Duration {
        match self.rotation_interval {
            Some(r) => r,
            None => Duration::from_secs(240).min(self.token_ttl.mul_f64(0.8)),
        }
    }

    /// Nonce window in force (`nonce_window`, else `token_ttl`).
    pub fn effective_nonce_window(&self) -> Duration {
        self.nonce_window.unwrap_or(self.token_ttl)
    }

    /// Audience in force (`audience`, else `metadata.name`).
    pub fn effective_audience(&self) -> &str {
        self.audience.as_deref().unwrap_or(&self.agent_id)
    }

    /// How long a retired signing key keeps verifying.
    pub fn effective_key_grace(&self) -> Duration {
        self.key_grace_period
            .unwrap_or(self.token_ttl)
            .max(self.token_ttl)
    }

    /// Checks the cross-field rules of v1alpha2 §3.7. Returns warnings (SHOULD-level advice)
    /// on success so the caller can log or audit them.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        if self.agent_id.is_empty() {
            return Err(ConfigError::invalid(
                "metadata.name",
                "agent id is empty".into(),
            ));
        }
        if self.token_ttl.is_zero() {
            return Err(ConfigError::invalid(
                "spec.identity.token_ttl",
                "token_ttl must be greater than 0s".into(),
            ));
        }
        if self.token_ttl > MAX_TOKEN_TTL {
            return Err(ConfigError::invalid(
                "spec.identity.token_ttl",
                format!(
                    "token_ttl ({}) must not exceed 1h",
                    fmt_duration(self.token_ttl)
                ),
            ));
        }
        if let Some(r) = self.rotation_interval {
            if !r.is_zero() && r >= self.token_ttl {
                return Err(ConfigError::invalid(
                    "spec.identity.rotation_interval",
                    format!(
                        "rotation_interval ({}) must be less than token_ttl ({})",
                        fmt_duration(r),
                        fmt_duration(self.token_ttl)
                    ),
                ));
            }
            if r.as_secs_f64() > 0.9 * self.token_ttl.as_secs_f64() {
                warnings.push(format!(
                    "rotation_interval ({}) is more than 90% of token_ttl ({}); tokens may expire before rotation",
                    fmt_duration(r),
                    fmt_duration(self.token_ttl)
                ));
            }
        }
        if let Some(w) = self.nonce_window
            && w < self.token_ttl
        {
            return Err(ConfigError::invalid(
                "spec.identity.nonce_window",
                format!(
                    "nonce_window ({}) must be at least token_ttl ({})",
                    fmt_duration(w),
                    fmt_duration(self.token_ttl)
                ),
            ));
        }
        if self.policy_transition_grace >= self.token_ttl && !self.policy_transition_grace.is_zero()
        {
            warnings.push(format!(
                "policy_transition_grace ({}) should be less than token_ttl ({})",
                fmt_duration(self.policy_transition_grace),
                fmt_duration(self.token_ttl)
            ));
        }
        if let Some(aud) = &self.audience {
            if aud.is_empty() {
                return Err(ConfigError::invalid(
                    "spec.identity.audience",
                    "audience must not be empty".into(),
                ));
            }
            if aud.contains('*') {
                return Err(ConfigError::invalid(
                    "spec.identity.audience",
                    "audience must not contain wildcards".into(),
                ));
            }
            if aud != &self.agent_id && !looks_like_uri(aud) {
                return Err(ConfigError::invalid(
                    "spec.identity.audience",
                    format!("audience {aud:?} must be a URI (scheme://…) or equal metadata.name"),
                ));
            }
        }
        if self.algorithm == SigningAlgorithm::Hs256 && self.server_enabled {
            return Err(ConfigError::invalid(
                "spec.identity.keys.signing_algorithm",
                "HS256 must not be used when spec.server.enabled is true; use ES256 or EdDSA"
                    .into(),
            ));
        }
        if let NonceBackend::Redis { address } = &self.nonce_storage.backend
            && address.is_empty()
        {
            return Err(ConfigError::invalid(
                "spec.identity.nonce_storage.address",
                "nonce_storage.address is required for type redis".into(),
            ));
        }
        if self.nonce_storage.backend == NonceBackend::Memory && self.server_enabled {
            warnings.push(
                "nonce_storage type memory: replay detection is not shared with other instances"
                    .to_string(),
            );
        }
        Ok(warnings)
    }
}

/// A configuration rule was broken; `field` is the policy path of the offending field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl ConfigError {
    fn invalid(field: &str, message: String) -> Self {
        Self {
            field: field.to_string(),
            message,
        }
    }
}

/// `scheme://rest` with an RFC 3986 scheme, or `urn:`; enough to tell a URI from a typo.
fn looks_like_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok && !rest.is_empty() && !s.chars().any(char::is_whitespace)
}

/// Formats a duration the way Go does for the common cases (`6m`, `1h30m`, `1s`, `250ms`), so
/// error messages quote durations in the policy's own notation.
pub fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        return "0s".to_string();
    }
    if d.subsec_nanos() != 0 && d.as_secs() == 0 {
        return format!("{}ms", d.as_millis());
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, len) in [("h", 3600), ("m", 60)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    if secs > 0 || d.subsec_nanos() != 0 {
        if d.subsec_millis() != 0 {
            out.push_str(&format!("{secs}.{:03}s", d.subsec_millis()));
        } else {
            out.push_str(&format!("{secs}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> IdentityConfig {
        IdentityConfig::new("agent")
    }

    #[test]
    fn test_defaults() {
        let c = cfg();
        assert_eq!(c.token_ttl, Duration::from_secs(300));
        assert_eq!(c.effective_rotation_interval(), Duration::from_secs(240));
        assert_eq!(c.effective_nonce_window(), Duration::from_secs(300));
        assert_eq!(c.effective_audience(), "agent");
        assert_eq!(c.validate(), Ok(vec![]));
    }

    #[test]
    fn test_short_ttl_default_rotation_is_capped() {
        let mut c = cfg();
        c.token_ttl = Duration::from_secs(1);
        assert_eq!(c.effective_rotation_interval(), Duration::from_millis(800));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn test_explicit_rotation_must_be_below_ttl() {
        let mut c = cfg();
        c.rotation_interval = Some(Duration::from_secs(360));
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "spec.identity.rotation_interval");
        assert_eq!(
            err.message,
            "rotation_interval (6m) must be less than token_ttl (5m)"
        );
        c.rotation_interval = Some(Duration::ZERO);
        assert!(c.validate().is_ok());
        c.rotation_interval = Some(Duration::from_secs(290));
        assert_eq!(c.validate().map(|w| w.len()), Ok(1));
    }

    #[test]
    fn test_rejections() {
        let mut c = cfg();
        c.nonce_window = Some(Duration::from_secs(60));
        assert_eq!(
            c.validate().unwrap_err().field,
            "spec.identity.nonce_window"
        );

        let mut c = cfg();
        c.token_ttl = Duration::from_secs(7200);
        assert_eq!(c.validate().unwrap_err().field, "spec.identity.token_ttl");

        let mut c = cfg();
        c.audience = Some(String::new());
        assert_eq!(c.validate().unwrap_err().field, "spec.identity.audience");
        c.audience = Some("https://*.example.com".into());
        assert!(c.validate().is_err());
        c.audience = Some("not a uri".into());
        assert!(c.validate().is_err());
        c.audience = Some("https://aip.example.com/v1".into());
        assert!(c.validate().is_ok());

        let mut c = cfg();
        c.algorithm = SigningAlgorithm::Hs256;
        assert!(c.validate().is_ok());
        c.server_enabled = true;
        assert_eq!(
            c.validate().unwrap_err().field,
            "spec.identity.keys.signing_algorithm"
        );

        let mut c = cfg();
        c.nonce_storage.backend = NonceBackend::Redis {
            address: String::new(),
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn test_parse_enums() {
        assert_eq!(BindingMode::parse("strict"), Ok(BindingMode::Strict));
        assert!(BindingMode::parse("Strict").is_err());
        assert_eq!(
            SigningAlgorithm::parse("EdDSA"),
            Ok(SigningAlgorithm::EdDsa)
        );
        assert!(
            SigningAlgorithm::parse("RS256")
                .unwrap_err()
                .message
                .contains("not supported")
        );
        assert!(SigningAlgorithm::parse("none").is_err());
    }

    #[test]
    fn test_fmt_duration() {
        assert_eq!(fmt_duration(Duration::from_secs(300)), "5m");
        assert_eq!(fmt_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(fmt_duration(Duration::from_secs(1)), "1s");
        assert_eq!(fmt_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(fmt_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(fmt_duration(Duration::ZERO), "0s");
    }
}
