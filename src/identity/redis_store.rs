//! Redis backend of the nonce/revocation store (`nonce_storage.type: redis`), shared by every
//! supervisor that points at the same server: a nonce recorded by one process is a replay in all
//! others. Check-and-record is one `SET key 1 NX PX <ms>` (atomic in Redis). Must not log the
//! address (it may carry a password) and must fail closed on any error or timeout.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::store::{NonceStore, Revocation, RevocationKind, StoreError, StoreFuture};

/// Upper bound of one store operation, reconnects included.
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(2);

/// Nonces and revocations in Redis, under `key_prefix`:
/// `<prefix><nonce>` (value `1`), `<prefix>revoked:session:<id>` and
/// `<prefix>revoked:token:<nonce>` (value: the revocation as JSON). Every key has a TTL.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    op_timeout: Duration,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `address` (`redis://[:password@]host:port[/db]`, `rediss://…`, or
    /// `redis+unix:///path`) and checks the server answers `PING`. Must run inside a tokio
    /// runtime (the connection manager spawns its reconnect task there).
    pub async fn connect(
        address: &str,
        key_prefix: &str,
        op_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(address).map_err(|e| {
            StoreError::Unavailable(format!("invalid redis address: {}", e.category()))
        })?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(op_timeout))
            .set_response_timeout(Some(op_timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_millis(500));
        let conn = tokio::time::timeout(
            op_timeout,
            ConnectionManager::new_with_config(client, config),
        )
        .await
        .map_err(|_| StoreError::Unavailable("redis connection timed out".into()))?
        .map_err(redis_err)?;
        let store = Self {
            conn,
            prefix: key_prefix.to_string(),
            op_timeout,
        };
        let pong: String = store.run(redis::cmd("PING")).await?;
        if pong != "PONG" {
            return Err(StoreError::Corrupt(format!("PING answered {pong:?}")));
        }
        Ok(store)
    }

    async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.op_timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(r) => r.map_err(redis_err),
            Err(_) => Err(StoreError::Unavailable("redis operation timed out".into())),
        }
    }

    fn revocation_key(&self, kind: RevocationKind, target: &str) -> String {
        format!("{}revoked:{}:{target}", self.prefix, kind.as_str())
    }
}

fn redis_err(e: redis::RedisError) -> StoreError {
    // The error's Display can echo connection details; keep kind and detail only.
    StoreError::Unavailable(format!(
        "redis {}: {}",
        e.category(),
        e.detail().unwrap_or("")
    ))
}

fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl NonceStore for RedisStore {
    fn check_and_record<'a>(&'a self, nonce: &'a str, ttl: Duration) -> StoreFuture<'a, bool> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(format!("{}{nonce}", self.prefix))
                .arg(1)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl));
            let reply: Option<String> = self.run(cmd).await?;
            match reply.as_deref() {
                Some("OK") => Ok(true),
                None => Ok(false),
                Some(other) => Err(StoreError::Corrupt(format!("SET NX answered {other:?}"))),
            }
        })
    }

    fn revoke<'a>(&'a self, revocation: &'a Revocation, ttl: Duration) -> StoreFuture<'a, ()> {
        Box::pin(async move {
            let value = serde_json::to_string(revocation)
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.revocation_key(revocation.kind, &revocation.target))
                .arg(value)
                .arg("NX")
                .arg("PX")
                .arg(ttl_ms(ttl));
            // NX: an existing revocation keeps its original time; either answer is success.
            let _: Option<String> = self.run(cmd).await?;
            Ok(())
        })
    }

    fn revocation<'a>(
        &'a self,
        session_id: &'a str,
        nonce: &'a str,
    ) -> StoreFuture<'a, Option<Revocation>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("MGET");
            cmd.arg(self.revocation_key(RevocationKind::Session, session_id))
                .arg(self.revocation_key(RevocationKind::Token, nonce));
            let values: Vec<Option<String>> = self.run(cmd).await?;
            match values.into_iter().flatten().next() {
                Some(v) => serde_json::from_str(&v)
                    .map(Some)
                    .map_err(|e| StoreError::Corrupt(format!("revocation record: {e}"))),
                None => Ok(None),
            }
        })
    }

    fn backend(&self) -> &'static str {
        "redis"
    }
}
