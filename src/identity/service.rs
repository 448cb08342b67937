//! The token service of one engine: issues the session's tokens (v1alpha2 §5.4: per session,
//! rotated once their age reaches `rotation_interval`, reissued after a policy change), validates
//! presented tokens in the order of digest §10.2, and records revocations. Owns session state;
//! must not evaluate policy, parse policy files or speak HTTP/JSON-RPC framing.
//!
//! Validation order (first failure wins): decode + signature (`malformed`) → revocation
//! (`-32011`) → expiry → policy hash (with `policy_transition_grace`) → audience → binding →
//! nonce check-and-record (`replay_detected`). The nonce is recorded only when every earlier
//! check passed, so a refused token does not burn its nonce; a successfully validated token is
//! single-use (vector validation-040).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use time::OffsetDateTime;

use super::binding::{Binding, BindingField};
use super::clock::{Clock, SystemClock};
use super::config::{BindingMode, ConfigError, IdentityConfig, KeySource, NonceBackend};
use super::keys::{KeyError, KeyRing};
use super::redis_store::{DEFAULT_OP_TIMEOUT, RedisStore};
use super::store::{MemoryStore, NonceStore, Revocation, RevocationKind, StoreError};
use super::token::{TOKEN_VERSION, TokenClaims, TokenError, format_time, truncate_ms};

/// The service could not be built or could not issue.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("invalid identity configuration: {0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("token service built without {0}")]
    Missing(&'static str),
}

/// A token this service issued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedToken {
    /// The compact JWS to hand to the agent.
    pub token: String,
    pub claims: TokenClaims,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// What [`TokenService::current_token`] did, for `TOKEN_ISSUED` / `TOKEN_ROTATED` audit events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IssueEvent {
    /// First token of the session.
    Issued,
    /// Replaced an older token (rotation interval reached, expiry, policy change, or a fresh
    /// token was requested).
    Rotated { old_token_id: String },
    /// The current token is still fresh.
    Unchanged,
}

/// A token and how it came to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenGrant {
    pub token: IssuedToken,
    pub event: IssueEvent,
}

/// A token that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidToken {
    pub claims: TokenClaims,
    pub expires_at: OffsetDateTime,
    /// Seconds left until expiry, rounded down (the `expires_in` of `/v1/validate`).
    pub expires_in: u64,
}

/// A refused token, with the ids of the token when its signature was good (for the
/// `TOKEN_VALIDATION_FAILED` audit event; never trust them otherwise).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct Rejection {
    pub error: TokenError,
    pub session_id: Option<String>,
    pub token_id: Option<String>,
}

impl From<TokenError> for Rejection {
    fn from(error: TokenError) -> Self {
        Self {
            error,
            session_id: None,
            token_id: None,
        }
    }
}

/// Whether [`TokenService::validate`] compares token bindings with this service's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingCheck {
    /// Tokens were issued by this process (the supervisor, or a validation server embedded in
    /// it): compare per `session_binding`.
    Local,
    /// Tokens were issued by other processes sharing the key (a standalone `aip server`): the
    /// issuing context is not observable here, so binding is not compared. Signature, policy
    /// hash, audience, expiry, revocation and replay still are.
    IssuedElsewhere,
}

struct State {
    session_id: String,
    policy_hash: String,
    /// Older policy hashes still accepted, with the instant their grace ends.
    previous: Vec<(String, OffsetDateTime)>,
    current: Option<IssuedToken>,
}

/// Issues and validates the tokens of one session. Cheap to share (`Arc<TokenService>`); every
/// method takes `&self`.
pub struct TokenService {
    config: IdentityConfig,
    keys: Arc<KeyRing>,
    store: Arc<dyn NonceStore>,
    clock: Arc<dyn Clock>,
    binding: Binding,
    binding_check: BindingCheck,
    state: Mutex<State>,
}

impl std::fmt::Debug for TokenService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenService")
            .field("agent_id", &self.config.agent_id)
            .field("keys", &self.keys)
            .field("store", &self.store.backend())
            .finish_non_exhaustive()
    }
}

/// Builder for [`TokenService`]: configuration and policy hash are required, the rest defaults
/// (system clock, keys from the configuration, memory store, binding of this process).
pub struct TokenServiceBuilder {
    config: IdentityConfig,
    policy_hash: Option<String>,
    policy_path: Option<PathBuf>,
    binding: Option<Binding>,
    binding_check: BindingCheck,
    keys: Option<Arc<KeyRing>>,
    store: Option<Arc<dyn NonceStore>>,
    clock: Option<Arc<dyn Clock>>,
}

impl TokenServiceBuilder {
    /// Hash of the policy in force ([`super::policy_hash`]).
    pub fn policy_hash(mut self, hash: impl Into<String>) -> Self {
        self.policy_hash = Some(hash.into());
        self
    }

    /// Path of the policy file, for the token binding (`policy_path`).
    pub fn policy_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.policy_path = Some(path.into());
        self
    }

    /// Overrides the binding (tests, and conformance's simulated processes).
    pub fn binding(mut self, binding: Binding) -> Self {
        self.binding = Some(binding);
        self
    }

    /// See [`BindingCheck`].
    pub fn binding_check(mut self, check: BindingCheck) -> Self {
        self.binding_check = check;
        self
    }

    /// Signing keys shared with other services.
    pub fn keys(mut self, keys: Arc<KeyRing>) -> Self {
        self.keys = Some(keys);
        self
    }

    /// Nonce/revocation store shared with other services.
    pub fn store(mut self, store: Arc<dyn NonceStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Clock (tests and conformance use a [`super::ManualClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// Validates the configuration and builds the service. With no store given, a memory store
    /// is used; `nonce_storage: redis` needs [`TokenServiceBuilder::build_connected`] (or a
    /// store from [`store_from_config`]) and is refused here rather than silently downgraded.
    pub fn build(self) -> Result<TokenService, IdentityError> {
        if self.store.is_none() && self.config.nonce_storage.backend != NonceBackend::Memory {
            return Err(IdentityError::Missing(
                "the configured shared nonce store (use build_connected)",
            ));
        }
        self.finish()
    }

    /// Like [`TokenServiceBuilder::build`], connecting to the configured nonce store first.
    pub async fn build_connected(mut self) -> Result<TokenService, IdentityError> {
        if self.store.is_none() {
            let clock = self.clock.clone().unwrap_or_else(|| Arc::new(SystemClock));
            self.store = Some(store_from_config(&self.config, clock).await?);
        }
        self.finish()
    }

    fn finish(self) -> Result<TokenService, IdentityError> {
        self.config.validate()?;
        let clock = self.clock.unwrap_or_else(|| Arc::new(SystemClock));
        let policy_hash = self
            .policy_hash
            .ok_or(IdentityError::Missing("policy_hash"))?;
        let keys = match self.keys {
            Some(k) => {
                if k.algorithm() != self.config.algorithm {
                    return Err(IdentityError::Config(ConfigError {
                        field: "spec.identity.keys.signing_algorithm".into(),
                        message: format!(
                            "shared key ring uses {} but this policy asks for {}",
                            k.algorithm(),
                            self.config.algorithm
                        ),
                    }));
                }
                k
            }
            None => Arc::new(KeyRing::from_config(&self.config, clock.now())?),
        };
        let store = self
            .store
            .unwrap_or_else(|| Arc::new(MemoryStore::new(clock.clone())));
        let binding = match (self.binding, self.policy_path) {
            (Some(b), _) => b,
            (None, Some(p)) => Binding::current(&p),
            (None, None) => Binding::current(std::path::Path::new("")),
        };
        Ok(TokenService {
            config: self.config,
            keys,
            store,
            clock,
            binding,
            binding_check: self.binding_check,
            state: Mutex::new(State {
                session_id: uuid::Uuid::new_v4().to_string(),
                policy_hash,
                previous: Vec::new(),
                current: None,
            }),
        })
    }
}

/// The store `nonce_storage` names: memory (on `clock`) or a connected Redis.
pub async fn store_from_config(
    config: &IdentityConfig,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn NonceStore>, StoreError> {
    match &config.nonce_storage.backend {
        NonceBackend::Memory => Ok(Arc::new(MemoryStore::new(clock))),
        NonceBackend::Redis { address } => Ok(Arc::new(
            RedisStore::connect(
                address,
                &config.nonce_storage.key_prefix,
                DEFAULT_OP_TIMEOUT,
            )
            .await?,
        )),
    }
}

impl TokenService {
    /// Starts a builder.
    pub fn builder(config: IdentityConfig) -> TokenServiceBuilder {
        TokenServiceBuilder {
            config,
            policy_hash: None,
            policy_path: None,
            binding: None,
            binding_check: BindingCheck::Local,
            keys: None,
            store: None,
            clock: None,
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &IdentityConfig {
        &self.config
    }

    /// The signing keys (for `/v1/jwks` and for sharing).
    pub fn keys(&self) -> &Arc<KeyRing> {
        &self.keys
    }

    /// The store (for sharing).
    pub fn store(&self) -> &Arc<dyn NonceStore> {
        &self.store
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// This service's binding.
    pub fn binding(&self) -> &Binding {
        &self.binding
    }

    /// Session id of this service's session.
    pub fn session_id(&self) -> String {
        self.lock().session_id.clone()
    }

    /// Policy hash in force.
    pub fn policy_hash(&self) -> String {
        self.lock().policy_hash.clone()
    }

    /// JWKS document of the signing keys.
    pub fn jwks(&self) -> Value {
        self.keys.jwks(self.clock.now())
    }

    /// The session's current token: issued on first use, replaced once its age reaches the
    /// rotation interval (never, if zero, until it expires), when it expired, or when the
    /// policy changed. The session id never changes.
    pub fn current_token(&self) -> Result<TokenGrant, IdentityError> {
        self.grant(false)
    }

    /// A new token for the session even if the current one is fresh (tokens are single-use,
    /// so an agent needs one per call); it becomes the current token.
    pub fn fresh_token(&self) -> Result<TokenGrant, IdentityError> {
        self.grant(true)
    }

    fn grant(&self, force: bool) -> Result<TokenGrant, IdentityError> {
        self.maybe_rotate_keys()?;
        let now = self.clock.now();
        let mut st = self.lock();
        let rotation = self.config.effective_rotation_interval();
        let old_id = match &st.current {
            None => None,
            Some(cur) => {
                let stale = force
                    || cur.claims.policy_hash != st.policy_hash
                    || now >= cur.expires_at
                    || (!rotation.is_zero() && now - cur.issued_at >= rotation);
                if !stale {
                    return Ok(TokenGrant {
                        token: cur.clone(),
                        event: IssueEvent::Unchanged,
                    });
                }
                Some(cur.claims.nonce.clone())
            }
        };
        let token = self.issue(&st, now)?;
        st.current = Some(token.clone());
        let event = match old_id {
            None => IssueEvent::Issued,
            Some(old_token_id) => IssueEvent::Rotated { old_token_id },
        };
        Ok(TokenGrant { token, event })
    }

    fn issue(&self, st: &State, now: OffsetDateTime) -> Result<IssuedToken, IdentityError> {
        let issued_at = truncate_ms(now);
        let expires_at = issued_at + self.config.token_ttl;
        let mut nonce_bytes = [0u8; 16];
        aws_lc_rs::rand::fill(&mut nonce_bytes)
            .map_err(|_| KeyError::Sign("system random number generator failed".into()))?;
        let nonce = hex::encode(nonce_bytes);
        let claims = TokenClaims {
            version: TOKEN_VERSION.to_string(),
            aud: self.config.effective_audience().to_string(),
            policy_hash: st.policy_hash.clone(),
            session_id: st.session_id.clone(),
            agent_id: self.config.agent_id.clone(),
            issued_at: format_time(issued_at),
            expires_at: format_time(expires_at),
            nonce: nonce.clone(),
            binding: self.binding.clone(),
            iat: issued_at.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
            jti: nonce,
        };
        let token = self.keys.sign(&claims)?;
        Ok(IssuedToken {
            token,
            claims,
            issued_at,
            expires_at,
        })
    }

    /// Generated keys rotate every `keys.rotation_period`; the old key keeps verifying for
    /// the key grace period (at least `token_ttl`), so tokens in flight stay valid.
    fn maybe_rotate_keys(&self) -> Result<(), KeyError> {
        if self.config.key_source != KeySource::Generate
            || self.config.key_rotation_period.is_zero()
        {
            return Ok(());
        }
        let now = self.clock.now();
        if let Some(created) = self.keys.current_created_at()
            && now - created >= self.config.key_rotation_period
        {
            let kid = self.keys.rotate(now, self.config.effective_key_grace())?;
            tracing::info!(kid = %kid, "identity signing key rotated");
        }
        Ok(())
    }

    /// Reloads `keys.key_path` (rotation for file keys: replace the file, then call this).
    pub fn reload_key_file(&self) -> Result<String, KeyError> {
        match &self.config.key_source {
            KeySource::File(path) => {
                self.keys
                    .reload_file(path, self.clock.now(), self.config.effective_key_grace())
            }
            KeySource::Generate => self
                .keys
                .rotate(self.clock.now(), self.config.effective_key_grace()),
        }
    }

    /// A new policy is in force. Tokens issued under the old hash stay acceptable for
    /// `policy_transition_grace`; the next [`TokenService::current_token`] issues under the new
    /// hash.
    pub fn set_policy_hash(&self, hash: impl Into<String>) {
        let hash = hash.into();
        let now = self.clock.now();
        let grace = self.config.policy_transition_grace;
        let mut st = self.lock();
        if st.policy_hash == hash {
            return;
        }
        let old = std::mem::replace(&mut st.policy_hash, hash);
        st.previous.retain(|(_, until)| now <= *until);
        if !grace.is_zero() {
            st.previous.push((old, now + grace));
        }
    }

    /// Validates a presented token (see the module docs for the order). A token that passes is
    /// recorded in the nonce store and will be refused as a replay if presented again.
    pub async fn validate(&self, token: &str) -> Result<ValidToken, Rejection> {
        let now = self.clock.now();
        let claims: TokenClaims = self
            .keys
            .verify(token, now)
            .map_err(|e| TokenError::Malformed(e.0))?;
        let times = claims.check_well_formed().map_err(TokenError::Malformed)?;
        let ids = |error: TokenError| Rejection {
            error,
            session_id: Some(claims.session_id.clone()),
            token_id: Some(claims.nonce.clone()),
        };
        if times.issued_at > now + self.config.nonce_storage.clock_skew_tolerance {
            return Err(ids(TokenError::Malformed(
                "issued_at is in the future".into(),
            )));
        }

        match self
            .store
            .revocation(&claims.session_id, &claims.nonce)
            .await
        {
            Ok(Some(rev)) => return Err(ids(TokenError::Revoked(rev))),
            Ok(None) => {}
            Err(e) => return Err(ids(TokenError::Unavailable(e))),
        }

        if now > times.expires_at {
            return Err(ids(TokenError::Expired));
        }

        {
            let st = self.lock();
            let current = claims.policy_hash == st.policy_hash;
            let in_grace = st
                .previous
                .iter()
                .any(|(h, until)| *h == claims.policy_hash && now <= *until);
            if !current && !in_grace {
                return Err(ids(TokenError::PolicyChanged));
            }
        }

        let expected_aud = self.config.effective_audience();
        if claims.aud != expected_aud {
            return Err(ids(TokenError::AudienceMismatch {
                expected: expected_aud.to_string(),
                actual: claims.aud.clone(),
            }));
        }

        if self.binding_check == BindingCheck::Local
            && let Some(field) = claims
                .binding
                .mismatch(&self.binding, self.config.session_binding)
        {
            let err = match self.config.session_binding {
                BindingMode::Strict => TokenError::BindingMismatch(field_name(field)),
                _ => TokenError::SessionMismatch,
            };
            return Err(ids(err));
        }

        let ttl =
            self.config.effective_nonce_window() + self.config.nonce_storage.clock_skew_tolerance;
        match self.store.check_and_record(&claims.nonce, ttl).await {
            Ok(true) => {}
            Ok(false) => return Err(ids(TokenError::ReplayDetected)),
            Err(e) => return Err(ids(TokenError::Unavailable(e))),
        }

        let left = times.expires_at - now;
        let expires_in = u64::try_from(left.whole_seconds()).unwrap_or(0);
        Ok(ValidToken {
            claims,
            expires_at: times.expires_at,
            expires_in,
        })
    }

    /// Revokes every token of `session_id` (kept for `max_session_duration`).
    pub async fn revoke_session(
        &self,
        session_id: &str,
        reason: Option<&str>,
    ) -> Result<Revocation, StoreError> {
        let ttl = self.config.max_session_duration.max(self.config.token_ttl)
            + self.config.nonce_storage.clock_skew_tolerance;
        self.revoke(RevocationKind::Session, session_id, reason, ttl)
            .await
    }

    /// Revokes one token by nonce (kept for the nonce window).
    pub async fn revoke_token(
        &self,
        nonce: &str,
        reason: Option<&str>,
    ) -> Result<Revocation, StoreError> {
        let ttl =
            self.config.effective_nonce_window() + self.config.nonce_storage.clock_skew_tolerance;
        self.revoke(RevocationKind::Token, nonce, reason, ttl).await
    }

    async fn revoke(
        &self,
        kind: RevocationKind,
        target: &str,
        reason: Option<&str>,
        ttl: Duration,
    ) -> Result<Revocation, StoreError> {
        let rev = Revocation {
            kind,
            target: target.to_string(),
            revoked_at: format_time(self.clock.now()),
            reason: reason.map(str::to_string),
        };
        self.store.revoke(&rev, ttl).await?;
        // Report the record in force (an earlier revocation of the same target wins).
        let (sid, nonce) = match kind {
            RevocationKind::Session => (target, ""),
            RevocationKind::Token => ("", target),
        };
        Ok(self.store.revocation(sid, nonce).await?.unwrap_or(rev))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn field_name(f: BindingField) -> &'static str {
    match f {
        BindingField::ProcessId => "process_id",
        BindingField::PolicyPath => "policy_path",
        BindingField::Hostname => "hostname",
        BindingField::ContainerId => "container_id",
        BindingField::PodUid => "pod_uid",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::clock::ManualClock;
    use crate::identity::config::SigningAlgorithm;
    use crate::identity::store::StoreFuture;

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn binding(pid: u32) -> Binding {
        Binding {
            process_id: pid,
            policy_path: "/etc/aip/policy.yaml".into(),
            hostname: "host.example".into(),
            container_id: None,
            pod_uid: None,
        }
    }

    struct Env {
        clock: ManualClock,
        svc: TokenService,
    }

    fn env_with(f: impl FnOnce(&mut IdentityConfig)) -> Env {
        let mut cfg = IdentityConfig::new("agent-a");
        f(&mut cfg);
        let clock = ManualClock::starting_now();
        let svc = TokenService::builder(cfg)
            .policy_hash(H1)
            .binding(binding(100))
            .clock(Arc::new(clock.clone()))
            .build()
            .unwrap();
        Env { clock, svc }
    }

    fn env() -> Env {
        env_with(|_| {})
    }

    /// A second service sharing keys, store and clock (another engine or "process").
    fn sibling(
        e: &Env,
        f: impl FnOnce(&mut IdentityConfig),
        b: Binding,
        hash: &str,
    ) -> TokenService {
        let mut cfg = e.svc.config().clone();
        f(&mut cfg);
        TokenService::builder(cfg)
            .policy_hash(hash)
            .binding(b)
            .keys(e.svc.keys().clone())
            .store(e.svc.store().clone())
            .clock(Arc::new(e.clock.clone()))
            .build()
            .unwrap()
    }

    fn err(r: Result<ValidToken, Rejection>) -> TokenError {
        r.unwrap_err().error
    }

    #[test]
    fn test_token_fields() {
        let e = env_with(|c| c.token_ttl = Duration::from_secs(600));
        let g = e.svc.current_token().unwrap();
        assert_eq!(g.event, IssueEvent::Issued);
        let c = &g.token.claims;
        assert_eq!(c.version, "aip/v1alpha2");
        assert_eq!(c.agent_id, "agent-a");
        assert_eq!(c.aud, "agent-a");
        assert_eq!(c.policy_hash, H1);
        assert_eq!(c.nonce.len(), 32);
        assert_eq!(c.binding, binding(100));
        assert_eq!(
            (g.token.expires_at - g.token.issued_at).whole_seconds(),
            600
        );
        assert!(uuid::Uuid::try_parse(&c.session_id).is_ok());
        let payload: Value = serde_json::from_slice(
            &base64::Engine::decode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                g.token.token.split('.').nth(1).unwrap(),
            )
            .unwrap(),
        )
        .unwrap();
        for f in [
            "version",
            "aud",
            "policy_hash",
            "session_id",
            "agent_id",
            "issued_at",
            "expires_at",
            "nonce",
            "binding",
        ] {
            assert!(payload.get(f).is_some(), "{f}");
        }
    }

    #[test]
    fn test_nonces_unique() {
        let e = env();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..200 {
            assert!(seen.insert(e.svc.fresh_token().unwrap().token.claims.nonce));
        }
    }

    #[test]
    fn test_rotation_keeps_session() {
        let e = env_with(|c| c.rotation_interval = Some(Duration::from_secs(240)));
        let t1 = e.svc.current_token().unwrap().token;
        e.clock.advance(Duration::from_secs(60));
        let same = e.svc.current_token().unwrap();
        assert_eq!(same.event, IssueEvent::Unchanged);
        assert_eq!(same.token, t1);
        e.clock.advance(Duration::from_secs(180));
        let t2 = e.svc.current_token().unwrap();
        assert_eq!(
            t2.event,
            IssueEvent::Rotated {
                old_token_id: t1.claims.nonce.clone()
            }
        );
        assert_ne!(t2.token.token, t1.token);
        assert_eq!(t2.token.claims.session_id, t1.claims.session_id);
    }

    #[test]
    fn test_zero_rotation_reissues_only_on_expiry() {
        let e = env_with(|c| c.rotation_interval = Some(Duration::ZERO));
        let t1 = e.svc.current_token().unwrap().token;
        e.clock.advance(Duration::from_secs(299));
        assert_eq!(e.svc.current_token().unwrap().token, t1);
        e.clock.advance(Duration::from_secs(1));
        assert_ne!(e.svc.current_token().unwrap().token, t1);
    }

    #[test]
    fn test_valid_then_replay() {
        let e = env();
        let t = e.svc.current_token().unwrap().token;
        let v = block_on(e.svc.validate(&t.token)).unwrap();
        assert!((299..=300).contains(&v.expires_in), "{}", v.expires_in);
        assert_eq!(v.claims, t.claims);
        let r = block_on(e.svc.validate(&t.token)).unwrap_err();
        assert_eq!(r.error, TokenError::ReplayDetected);
        assert_eq!(r.token_id.as_deref(), Some(t.claims.nonce.as_str()));
        assert_eq!(r.session_id.as_deref(), Some(t.claims.session_id.as_str()));
    }

    #[test]
    fn test_expired() {
        let e = env_with(|c| c.token_ttl = Duration::from_secs(1));
        let t = e.svc.current_token().unwrap().token;
        e.clock.advance(Duration::from_secs(2));
        assert_eq!(err(block_on(e.svc.validate(&t.token))), TokenError::Expired);
    }

    #[test]
    fn test_policy_changed_and_grace() {
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        e.svc.set_policy_hash(H2);
        assert_eq!(
            err(block_on(e.svc.validate(&t.token))),
            TokenError::PolicyChanged
        );
        // The next token is issued under the new hash.
        let g = e.svc.current_token().unwrap();
        assert!(matches!(g.event, IssueEvent::Rotated { .. }));
        assert_eq!(g.token.claims.policy_hash, H2);
        assert!(block_on(e.svc.validate(&g.token.token)).is_ok());

        let e = env_with(|c| c.policy_transition_grace = Duration::from_secs(60));
        let t = e.svc.fresh_token().unwrap().token;
        let t_late = e.svc.fresh_token().unwrap().token;
        e.svc.set_policy_hash(H2);
        assert!(block_on(e.svc.validate(&t.token)).is_ok());
        e.clock.advance(Duration::from_secs(61));
        assert_eq!(
            err(block_on(e.svc.validate(&t_late.token))),
            TokenError::PolicyChanged
        );
    }

    #[test]
    fn test_wrong_audience() {
        let e = env_with(|c| c.audience = Some("https://aip.example/a".into()));
        let t = e.svc.fresh_token().unwrap().token;
        assert_eq!(t.claims.aud, "https://aip.example/a");
        let other = sibling(
            &e,
            |c| c.audience = Some("https://aip.example/b".into()),
            binding(100),
            H1,
        );
        assert_eq!(
            err(block_on(other.validate(&t.token))),
            TokenError::AudienceMismatch {
                expected: "https://aip.example/b".into(),
                actual: "https://aip.example/a".into()
            }
        );
    }

    #[test]
    fn test_token_for_other_agent_policy_changed() {
        // Vector auth-030: a token of agent-a shown to agent-b (same keys) → policy_changed,
        // because the policy hash is compared before the audience.
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        let b = sibling(&e, |c| c.agent_id = "agent-b".into(), binding(100), H2);
        assert_eq!(
            err(block_on(b.validate(&t.token))),
            TokenError::PolicyChanged
        );
    }

    #[test]
    fn test_revoked_token_and_session() {
        let e = env();
        let t1 = e.svc.fresh_token().unwrap().token;
        let t2 = e.svc.fresh_token().unwrap().token;
        let rev = block_on(e.svc.revoke_token(&t1.claims.nonce, Some("leaked"))).unwrap();
        assert_eq!(rev.kind, RevocationKind::Token);
        assert_eq!(rev.reason.as_deref(), Some("leaked"));
        match err(block_on(e.svc.validate(&t1.token))) {
            TokenError::Revoked(r) => assert_eq!(
                (r.kind, r.target),
                (RevocationKind::Token, t1.claims.nonce.clone())
            ),
            other => panic!("{other:?}"),
        }
        block_on(e.svc.validate(&t2.token)).unwrap();
        let t3 = e.svc.fresh_token().unwrap().token;
        block_on(e.svc.revoke_session(&t3.claims.session_id, None)).unwrap();
        match err(block_on(e.svc.validate(&t3.token))) {
            TokenError::Revoked(r) => assert_eq!(r.kind, RevocationKind::Session),
            other => panic!("{other:?}"),
        }
        // Revocation is checked before expiry.
        e.clock.advance(Duration::from_secs(400));
        assert!(matches!(
            err(block_on(e.svc.validate(&t3.token))),
            TokenError::Revoked(_)
        ));
    }

    #[test]
    fn test_tampered_and_foreign_tokens_malformed() {
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        let mut parts: Vec<String> = t.token.split('.').map(str::to_string).collect();
        let mut claims = t.claims.clone();
        claims.agent_id = "root".into();
        parts[1] = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            serde_json::to_vec(&claims).unwrap(),
        );
        let forged = parts.join(".");
        assert!(matches!(
            err(block_on(e.svc.validate(&forged))),
            TokenError::Malformed(_)
        ));
        // Flip one signature character.
        let mut sig = t.token.clone().into_bytes();
        let last = sig.len() - 2;
        sig[last] = if sig[last] == b'A' { b'B' } else { b'A' };
        assert!(matches!(
            err(block_on(e.svc.validate(std::str::from_utf8(&sig).unwrap()))),
            TokenError::Malformed(_)
        ));
        // Signed by a stranger's key.
        let stranger = env();
        let st = stranger.svc.fresh_token().unwrap().token;
        assert!(matches!(
            err(block_on(e.svc.validate(&st.token))),
            TokenError::Malformed(_)
        ));
        for junk in ["", "not-a-valid-token-format", "expired-token-xyz", "a.b.c"] {
            let r = block_on(e.svc.validate(junk)).unwrap_err();
            assert!(matches!(r.error, TokenError::Malformed(_)), "{junk}");
            assert_eq!(r.token_id, None);
        }
        // The genuine token was not burnt by the failed attempts.
        block_on(e.svc.validate(&t.token)).unwrap();
    }

    #[test]
    fn test_binding_modes() {
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        let b = sibling(&e, |_| {}, binding(200), H1);
        assert_eq!(
            err(block_on(b.validate(&t.token))),
            TokenError::SessionMismatch
        );
        // The refused attempt did not record the nonce: the right process still accepts it.
        block_on(e.svc.validate(&t.token)).unwrap();

        let mut other_host = binding(100);
        other_host.hostname = "elsewhere".into();
        let t = e.svc.fresh_token().unwrap().token;
        let process_mode = sibling(&e, |_| {}, other_host.clone(), H1);
        block_on(process_mode.validate(&t.token)).unwrap();

        let strict = env_with(|c| c.session_binding = BindingMode::Strict);
        let t = strict.svc.fresh_token().unwrap().token;
        let s2 = sibling(&strict, |_| {}, other_host, H1);
        assert_eq!(
            err(block_on(s2.validate(&t.token))),
            TokenError::BindingMismatch("hostname")
        );
        let s3 = sibling(&strict, |_| {}, binding(101), H1);
        assert_eq!(
            err(block_on(s3.validate(&t.token))),
            TokenError::BindingMismatch("process_id")
        );

        let policy = env_with(|c| c.session_binding = BindingMode::Policy);
        let t = policy.svc.fresh_token().unwrap().token;
        let p2 = sibling(&policy, |_| {}, binding(999), H1);
        block_on(p2.validate(&t.token)).unwrap();
    }

    #[test]
    fn test_binding_check_issued_elsewhere() {
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        let server = TokenService::builder(e.svc.config().clone())
            .policy_hash(H1)
            .binding(binding(555))
            .binding_check(BindingCheck::IssuedElsewhere)
            .keys(e.svc.keys().clone())
            .store(e.svc.store().clone())
            .clock(Arc::new(e.clock.clone()))
            .build()
            .unwrap();
        block_on(server.validate(&t.token)).unwrap();
        assert_eq!(
            err(block_on(server.validate(&t.token))),
            TokenError::ReplayDetected
        );
    }

    #[derive(Debug)]
    struct DownStore;
    impl NonceStore for DownStore {
        fn check_and_record<'a>(&'a self, _: &'a str, _: Duration) -> StoreFuture<'a, bool> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }
        fn revoke<'a>(&'a self, _: &'a Revocation, _: Duration) -> StoreFuture<'a, ()> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }
        fn revocation<'a>(&'a self, _: &'a str, _: &'a str) -> StoreFuture<'a, Option<Revocation>> {
            Box::pin(async { Err(StoreError::Unavailable("down".into())) })
        }
        fn backend(&self) -> &'static str {
            "down"
        }
    }

    #[test]
    fn test_store_down_fails_closed() {
        let svc = TokenService::builder(IdentityConfig::new("a"))
            .policy_hash(H1)
            .store(Arc::new(DownStore))
            .build()
            .unwrap();
        let t = svc.fresh_token().unwrap().token;
        let e = err(block_on(svc.validate(&t.token)));
        assert!(matches!(e, TokenError::Unavailable(_)));
        assert_eq!(e.token_error(), "validation_unavailable");
        assert!(block_on(svc.revoke_session("s", None)).is_err());
    }

    #[test]
    fn test_key_rotation_period() {
        let e = env_with(|c| {
            c.algorithm = SigningAlgorithm::EdDsa;
            c.key_rotation_period = Duration::from_secs(3600);
        });
        let t_old = e.svc.fresh_token().unwrap().token;
        let kid_old = e.svc.keys().current_kid();
        e.clock.advance(Duration::from_secs(3600));
        let t_new = e.svc.fresh_token().unwrap().token;
        assert_ne!(e.svc.keys().current_kid(), kid_old);
        assert_eq!(e.svc.jwks()["keys"].as_array().unwrap().len(), 2);
        // The old token expired long ago; a fresh token under the new key validates.
        assert_eq!(
            err(block_on(e.svc.validate(&t_old.token))),
            TokenError::Expired
        );
        block_on(e.svc.validate(&t_new.token)).unwrap();
    }

    #[test]
    fn test_old_key_verifies_within_grace() {
        let e = env();
        let t = e.svc.fresh_token().unwrap().token;
        e.svc.reload_key_file().unwrap();
        assert_eq!(e.svc.keys().live_keys(e.clock.now()), 2);
        block_on(e.svc.validate(&t.token)).unwrap();
    }

    #[test]
    fn test_build_refusals() {
        let mut cfg = IdentityConfig::new("a");
        cfg.algorithm = SigningAlgorithm::Hs256;
        cfg.server_enabled = true;
        assert!(matches!(
            TokenService::builder(cfg).policy_hash(H1).build(),
            Err(IdentityError::Config(_))
        ));
        let mut cfg = IdentityConfig::new("a");
        cfg.nonce_storage.backend = NonceBackend::Redis {
            address: "redis://127.0.0.1:1".into(),
        };
        assert!(matches!(
            TokenService::builder(cfg).policy_hash(H1).build(),
            Err(IdentityError::Missing(_))
        ));
        assert!(matches!(
            TokenService::builder(IdentityConfig::new("a")).build(),
            Err(IdentityError::Missing("policy_hash"))
        ));
        let e = env();
        let mut cfg = IdentityConfig::new("a");
        cfg.algorithm = SigningAlgorithm::EdDsa;
        assert!(
            TokenService::builder(cfg)
                .policy_hash(H1)
                .keys(e.svc.keys().clone())
                .build()
                .is_err()
        );
    }

    #[test]
    fn test_hs256_local_tokens() {
        let e = env_with(|c| c.algorithm = SigningAlgorithm::Hs256);
        let t = e.svc.fresh_token().unwrap().token;
        block_on(e.svc.validate(&t.token)).unwrap();
        assert_eq!(e.svc.jwks(), serde_json::json!({"keys": []}));
    }
}
