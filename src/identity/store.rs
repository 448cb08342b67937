//! Nonce and revocation storage (v1alpha2 §5.6, §5.7) behind one trait: atomic
//! check-and-record of token nonces over the nonce window, and revoked sessions/tokens. Owns the
//! in-memory backend; the Redis backend is in `redis_store`. Must not decide token validity
//! (the token service does) and must fail closed: an unreachable store is an error, never
//! "nonce unseen".

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::clock::Clock;

/// Boxed future returned by store operations (the trait must be object safe).
pub type StoreFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// Largest number of live entries the memory store keeps. Only tokens with a valid signature
/// are recorded, so reaching this means an issuer minted over a million tokens within one nonce
/// window; refusing (fail closed) is better than growing without bound.
pub const MEMORY_STORE_CAPACITY: usize = 1_000_000;

/// The store could not answer; callers must treat the token as not validated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("nonce store unavailable: {0}")]
    Unavailable(String),
    #[error("nonce store full ({0} live entries)")]
    Full(usize),
    #[error("nonce store returned unexpected data: {0}")]
    Corrupt(String),
}

/// What was revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevocationKind {
    /// Every token of a session.
    Session,
    /// One token, by nonce.
    Token,
}

impl RevocationKind {
    /// `session` or `token` (the `type` field of `/v1/revoke` and of audit records).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Session => "session",
            Self::Token => "token",
        }
    }
}

/// One revocation record, as stored and as reported in `-32011` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    #[serde(rename = "type")]
    pub kind: RevocationKind,
    /// Session id or token nonce.
    pub target: String,
    /// RFC 3339 UTC.
    pub revoked_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Shared replay and revocation state.
pub trait NonceStore: Send + Sync + std::fmt::Debug {
    /// Atomically records `nonce` for `ttl` unless present. `Ok(true)`: first use;
    /// `Ok(false)`: already recorded (a replay).
    fn check_and_record<'a>(&'a self, nonce: &'a str, ttl: Duration) -> StoreFuture<'a, bool>;

    /// Records a revocation, kept for `ttl`.
    fn revoke<'a>(&'a self, revocation: &'a Revocation, ttl: Duration) -> StoreFuture<'a, ()>;

    /// The revocation that applies to a token of `session_id` with `nonce`, session first.
    fn revocation<'a>(
        &'a self,
        session_id: &'a str,
        nonce: &'a str,
    ) -> StoreFuture<'a, Option<Revocation>>;

    /// Backend name for logs and health output (`memory`, `redis`).
    fn backend(&self) -> &'static str;
}

#[derive(Default)]
struct MemoryState {
    nonces: HashMap<String, OffsetDateTime>,
    sessions: HashMap<String, (Revocation, OffsetDateTime)>,
    tokens: HashMap<String, (Revocation, OffsetDateTime)>,
    inserts_since_prune: usize,
}

/// Process-local store. Expiry follows the injected clock, so tests with a manual clock see
/// nonces age out exactly at the window.
#[derive(Clone)]
pub struct MemoryStore {
    clock: Arc<dyn Clock>,
    capacity: usize,
    state: Arc<Mutex<MemoryState>>,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new(clock: Arc<dyn Clock>) -> Self {
        Self::with_capacity(clock, MEMORY_STORE_CAPACITY)
    }

    /// An empty store holding at most `capacity` live nonces.
    pub fn with_capacity(clock: Arc<dyn Clock>, capacity: usize) -> Self {
        Self {
            clock,
            capacity,
            state: Arc::new(Mutex::new(MemoryState::default())),
        }
    }

    /// Live nonces (for tests and health output).
    pub fn nonce_count(&self) -> usize {
        self.lock().nonces.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_and_record_now(&self, nonce: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = self.clock.now();
        let mut st = self.lock();
        if let Some(expiry) = st.nonces.get(nonce)
            && now < *expiry
        {
            return Ok(false);
        }
        st.inserts_since_prune += 1;
        if st.nonces.len() >= self.capacity || st.inserts_since_prune >= 4096 {
            st.nonces.retain(|_, e| now < *e);
            st.sessions.retain(|_, (_, e)| now < *e);
            st.tokens.retain(|_, (_, e)| now < *e);
            st.inserts_since_prune = 0;
            if st.nonces.len() >= self.capacity {
                return Err(StoreError::Full(st.nonces.len()));
            }
        }
        st.nonces.insert(nonce.to_string(), now + ttl);
        Ok(true)
    }
}

impl NonceStore for MemoryStore {
    fn check_and_record<'a>(&'a self, nonce: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        let r = self.check_and_record_now(nonce, ttl);
        Box::pin(async move { r })
    }

    fn revoke<'a>(&'a self, revocation: &'a Revocation, ttl: Duration) -> StoreFuture<'a, ()> {
        let expiry = self.clock.now() + ttl;
        let mut st = self.lock();
        let map = match revocation.kind {
            RevocationKind::Session => &mut st.sessions,
            RevocationKind::Token => &mut st.tokens,
        };
        map.entry(revocation.target.clone())
            .or_insert_with(|| (revocation.clone(), expiry));
        drop(st);
        Box::pin(async { Ok(()) })
    }

    fn revocation<'a>(
        &'a self,
        session_id: &'a str,
        nonce: &'a str,
    ) -> StoreFuture<'a, Option<Revocation>> {
        let now = self.clock.now();
        let st = self.lock();
        let live = |e: Option<&(Revocation, OffsetDateTime)>| {
            e.filter(|(_, exp)| now < *exp).map(|(r, _)| r.clone())
        };
        let r = live(st.sessions.get(session_id)).or_else(|| live(st.tokens.get(nonce)));
        drop(st);
        Box::pin(async move { Ok(r) })
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::clock::ManualClock;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(f)
    }

    #[test]
    fn test_check_and_record_expires_with_clock() {
        let clock = ManualClock::starting_now();
        let s = MemoryStore::new(Arc::new(clock.clone()));
        let w = Duration::from_secs(60);
        assert!(block_on(s.check_and_record("n1", w)).unwrap());
        assert!(!block_on(s.check_and_record("n1", w)).unwrap());
        assert!(block_on(s.check_and_record("n2", w)).unwrap());
        clock.advance(Duration::from_secs(61));
        assert!(block_on(s.check_and_record("n1", w)).unwrap());
    }

    #[test]
    fn test_capacity_fails_closed() {
        let clock = ManualClock::starting_now();
        let s = MemoryStore::with_capacity(Arc::new(clock.clone()), 2);
        let w = Duration::from_secs(60);
        assert!(block_on(s.check_and_record("a", w)).unwrap());
        assert!(block_on(s.check_and_record("b", w)).unwrap());
        assert_eq!(
            block_on(s.check_and_record("c", w)),
            Err(StoreError::Full(2))
        );
        // Still detects replays of what it holds.
        assert!(!block_on(s.check_and_record("a", w)).unwrap());
        clock.advance(Duration::from_secs(61));
        assert!(block_on(s.check_and_record("c", w)).unwrap());
        assert_eq!(s.nonce_count(), 1);
    }

    #[test]
    fn test_revocations() {
        let clock = ManualClock::starting_now();
        let s = MemoryStore::new(Arc::new(clock.clone()));
        let rev = |kind, target: &str| Revocation {
            kind,
            target: target.into(),
            revoked_at: "2026-01-01T00:00:00Z".into(),
            reason: None,
        };
        assert_eq!(block_on(s.revocation("s1", "n1")).unwrap(), None);
        block_on(s.revoke(&rev(RevocationKind::Token, "n1"), Duration::from_secs(10))).unwrap();
        assert_eq!(
            block_on(s.revocation("s1", "n1")).unwrap().map(|r| r.kind),
            Some(RevocationKind::Token)
        );
        assert_eq!(block_on(s.revocation("s1", "n2")).unwrap(), None);
        block_on(s.revoke(
            &rev(RevocationKind::Session, "s1"),
            Duration::from_secs(100),
        ))
        .unwrap();
        assert_eq!(
            block_on(s.revocation("s1", "n1")).unwrap().map(|r| r.kind),
            Some(RevocationKind::Session)
        );
        clock.advance(Duration::from_secs(101));
        assert_eq!(block_on(s.revocation("s1", "n1")).unwrap(), None);
    }
}
