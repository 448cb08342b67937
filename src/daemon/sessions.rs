//! The live sessions: what `aip ps` shows, what SIGTERM signals, what the limits count. Also the
//! per-session audit sink, which adds the session's context (server, caller uid, session uid,
//! policy) to every record before it reaches the daemon's sinks and picks the server pid and
//! the sandbox layer report out of `SESSION_START`.
//!
//! Must not: start or stop anything itself (the session handler and the service do).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use serde::Serialize;
use serde_json::{Value, json};

use crate::audit::{AuditError, Record, Sink};
use crate::proxy::{Event, SessionHandle};

use super::peer::Peer;

/// One live session.
pub struct SessionInfo {
    pub key: u64,
    /// The session id of the audit records (set from `SESSION_START` when identity replaced it).
    pub id: Mutex<String>,
    pub server: String,
    pub peer: Peer,
    pub session_uid: Option<u32>,
    pub policy: String,
    pub policy_path: String,
    pub since: SystemTime,
    pub started: Instant,
    pub handle: SessionHandle,
    /// Filled from `SESSION_START`: the reaper's pid, the sandbox layer report, and how long
    /// the start took (milliseconds from registration).
    started_info: Mutex<Option<(u64, Value, f64)>>,
}

/// A session as `aip ps` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct SessionView {
    pub session: String,
    pub server: String,
    pub uid: u32,
    pub user: Option<String>,
    pub client_pid: i32,
    pub session_uid: Option<u32>,
    /// The sandbox's pid (its reaper), once started.
    pub pid: Option<u64>,
    /// Milliseconds from accepting the hello to the server running (plan, sandbox, exec).
    pub start_ms: Option<f64>,
    pub since: String,
    pub uptime_secs: u64,
    pub policy: String,
    pub policy_path: String,
    /// Each layer and its status (`enforced`, `partial`, `not_enforced`, `disabled`).
    pub layers: Value,
}

impl SessionInfo {
    pub fn view(&self) -> SessionView {
        let started = self
            .started_info
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        SessionView {
            session: self.id.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            server: self.server.clone(),
            uid: self.peer.uid,
            user: self.peer.user.clone(),
            client_pid: self.peer.pid,
            session_uid: self.session_uid,
            pid: started.as_ref().map(|(pid, _, _)| *pid),
            start_ms: started.as_ref().map(|(_, _, ms)| *ms),
            since: super::rfc3339(self.since),
            uptime_secs: self.started.elapsed().as_secs(),
            policy: self.policy.clone(),
            policy_path: self.policy_path.clone(),
            layers: started
                .map(|(_, report, _)| layer_summary(&report))
                .unwrap_or(Value::Null),
        }
    }
}

/// `{"namespaces":"enforced","landlock":"partial",…}` from a sandbox layer report.
pub fn layer_summary(report: &Value) -> Value {
    let mut out = serde_json::Map::new();
    if report.get("enabled") == Some(&Value::Bool(false)) {
        out.insert("sandbox".into(), json!("disabled"));
        return Value::Object(out);
    }
    if let Some(obj) = report.as_object() {
        for (layer, v) in obj {
            if let Some(status) = v.get("status").and_then(Value::as_str) {
                out.insert(layer.clone(), json!(status));
            }
        }
    }
    Value::Object(out)
}

/// Why a session could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitError {
    #[error("aipd runs its maximum of {0} sessions")]
    Daemon(usize),
    #[error("{user} already has {limit} sessions")]
    User { user: String, limit: usize },
    #[error("server {server} runs its maximum of {limit} sessions")]
    Server { server: String, limit: usize },
}

/// Limits checked when a session registers.
#[derive(Debug, Clone, Copy)]
pub struct Caps {
    pub daemon: usize,
    pub per_user: usize,
    pub per_server: Option<usize>,
}

/// The table of live sessions.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<u64, Arc<SessionInfo>>>,
    next: AtomicU64,
}

/// Removes its session from the table when dropped.
pub struct Registration {
    table: Arc<Sessions>,
    pub info: Arc<SessionInfo>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.table
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.info.key);
    }
}

/// What a new session is.
pub struct NewSession {
    pub id: String,
    pub server: String,
    pub peer: Peer,
    pub session_uid: Option<u32>,
    pub policy: String,
    pub policy_path: String,
}

impl Sessions {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Registers a session if the limits allow it.
    pub fn register(
        self: &Arc<Self>,
        new: NewSession,
        caps: Caps,
    ) -> Result<Registration, LimitError> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= caps.daemon {
            return Err(LimitError::Daemon(caps.daemon));
        }
        let user_count = map.values().filter(|s| s.peer.uid == new.peer.uid).count();
        if user_count >= caps.per_user {
            return Err(LimitError::User {
                user: new.peer.describe(),
                limit: caps.per_user,
            });
        }
        if let Some(limit) = caps.per_server {
            let n = map.values().filter(|s| s.server == new.server).count();
            if n >= limit {
                return Err(LimitError::Server {
                    server: new.server,
                    limit,
                });
            }
        }
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let info = Arc::new(SessionInfo {
            key,
            id: Mutex::new(new.id),
            server: new.server,
            peer: new.peer,
            session_uid: new.session_uid,
            policy: new.policy,
            policy_path: new.policy_path,
            since: SystemTime::now(),
            started: Instant::now(),
            handle: SessionHandle::new(),
            started_info: Mutex::new(None),
        });
        map.insert(key, Arc::clone(&info));
        Ok(Registration {
            table: Arc::clone(self),
            info,
        })
    }

    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Vec<Arc<SessionInfo>> {
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.values().cloned().collect()
    }

    /// Every live session, oldest first.
    pub fn list(&self) -> Vec<SessionView> {
        let mut all = self.snapshot();
        all.sort_by_key(|s| s.key);
        all.iter().map(|s| s.view()).collect()
    }

    /// Asks every session to end as if its client had gone (stdin closed, grace, SIGTERM,
    /// SIGKILL). Sessions still starting ignore it; callers repeat until the table is empty.
    pub fn signal_all(&self, signal: i32) {
        for s in self.snapshot() {
            s.handle.send(Event::Signal(signal));
        }
    }
}

/// The audit sink of one session: the daemon's sinks, with the session's context added.
pub struct SessionSink {
    pub inner: Arc<dyn Sink>,
    pub info: Arc<SessionInfo>,
}

impl SessionSink {
    fn contextualize(&self, record: &Record) -> Record {
        let mut r = record.clone();
        let info = &self.info;
        let add = |r: &mut Record, key: &'static str, value: Value| {
            if r.get(key).is_none() {
                r.set(key, value);
            }
        };
        add(&mut r, "server", json!(info.server));
        add(&mut r, "uid", json!(info.peer.uid));
        if let Some(u) = &info.peer.user {
            add(&mut r, "user", json!(u));
        }
        add(&mut r, "client_pid", json!(info.peer.pid));
        if let Some(uid) = info.session_uid {
            add(&mut r, "session_uid", json!(uid));
        }
        add(&mut r, "policy", json!(info.policy));
        r
    }

    fn observe(&self, record: &Record) {
        if record.get_str("event") != Some("SESSION_START") {
            return;
        }
        if let Some(id) = record.get_str("session_id") {
            *self.info.id.lock().unwrap_or_else(|p| p.into_inner()) = id.to_owned();
        }
        let pid = record
            .get("pid")
            .as_ref()
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let report = record.get("sandbox").unwrap_or(Value::Null);
        let ms = self.info.started.elapsed().as_secs_f64() * 1000.0;
        tracing::debug!(server = %self.info.server, start_ms = ms, "sandbox started");
        *self
            .info
            .started_info
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some((pid, report, ms));
    }
}

impl Sink for SessionSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        self.observe(record);
        self.inner.write(&self.contextualize(record))
    }

    fn write_batch(&self, records: &[Record]) -> Result<(), AuditError> {
        records.iter().for_each(|r| self.observe(r));
        let with: Vec<Record> = records.iter().map(|r| self.contextualize(r)).collect();
        self.inner.write_batch(&with)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::MemorySink;

    fn peer(uid: u32) -> Peer {
        Peer {
            uid,
            gid: uid,
            pid: 42,
            groups: vec![],
            user: Some(format!("u{uid}")),
        }
    }

    fn new(server: &str, uid: u32) -> NewSession {
        NewSession {
            id: format!("id-{server}-{uid}"),
            server: server.into(),
            peer: peer(uid),
            session_uid: Some(1_900_000_000),
            policy: "p".into(),
            policy_path: "/etc/aip/p.yaml".into(),
        }
    }

    #[test]
    fn limits_count_daemon_user_and_server() {
        let t = Sessions::new();
        let caps = Caps {
            daemon: 3,
            per_user: 2,
            per_server: Some(2),
        };
        let a = t.register(new("fs", 1), caps).unwrap();
        let _b = t.register(new("fs", 2), caps).unwrap();
        assert!(matches!(
            t.register(new("fs", 3), caps),
            Err(LimitError::Server { .. })
        ));
        let _c = t.register(new("time", 1), caps).unwrap();
        assert!(matches!(
            t.register(new("time", 2), caps),
            Err(LimitError::Daemon(3))
        ));
        drop(a);
        assert!(t.register(new("x", 1), caps).is_ok());
        let caps1 = Caps {
            per_user: 1,
            ..caps
        };
        assert!(matches!(
            t.register(new("y", 2), caps1),
            Err(LimitError::User { .. })
        ));
        assert_eq!(t.list().len(), 2);
    }

    #[test]
    fn session_sink_adds_context_and_picks_up_the_start() {
        let t = Sessions::new();
        let reg = t
            .register(
                new("fs", 1001),
                Caps {
                    daemon: 9,
                    per_user: 9,
                    per_server: None,
                },
            )
            .unwrap();
        let mem = Arc::new(MemorySink::default());
        let sink = SessionSink {
            inner: mem.clone(),
            info: Arc::clone(&reg.info),
        };
        let report = json!({"enabled": true, "namespaces": {"status": "enforced"}, "landlock": {"status": "partial", "missing": ["x"]}});
        sink.write(
            &Record::event("SESSION_START")
                .with("session_id", "tok-session")
                .with("pid", 777)
                .with("policy", "from-record")
                .with("sandbox", report),
        )
        .unwrap();
        sink.write_batch(&[Record::now().with("decision", "BLOCK")])
            .unwrap();
        let recs = mem.records();
        assert_eq!(recs[0].get_str("server"), Some("fs"));
        assert_eq!(recs[0].get_str("policy"), Some("from-record"));
        assert_eq!(recs[1].get("uid"), Some(json!(1001)));
        assert_eq!(recs[1].get("session_uid"), Some(json!(1_900_000_000)));
        assert_eq!(recs[1].get_str("policy"), Some("p"));
        let v = &t.list()[0];
        assert_eq!(v.session, "tok-session");
        assert_eq!(v.pid, Some(777));
        assert_eq!(
            v.layers,
            json!({"namespaces": "enforced", "landlock": "partial"})
        );
    }
}
