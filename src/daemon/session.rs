//! One client connection: peer credentials, the bounded hello, authorization against the
//! server's `allow`, the limits, a per-session uid, the welcome, then one `launch` instance
//! (sandbox + proxy) bridged to the connection until either side ends. A refused connection
//! gets a refusal line and an audit record, and nothing is spawned for it.
//!
//! Must not: parse policies, plan sandboxes or pump JSON-RPC itself (`launch` does).

use std::io::{Cursor, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::approval::{Approver, FatigueLimited, HeadlessApprover, NoApprover};
use crate::audit::{Record, Sink};
use crate::launch::{self, ClientIo, Instance, plan::Overrides};
use crate::proxy::ProxyConfig;

use super::approvals::QueueApprover;
use super::config::{ApproverKind, RunAs, ServerDef};
use super::hello::{self, Reason, Reply};
use super::peer::Peer;
use super::service::{Loaded, Shared};
use super::sessions::{Caps, NewSession, Registration, SessionSink};
use super::uids::SessionUid;

/// The environment the sandbox planner looks commands up in (the server's own environment is
/// built by the planner from the policy).
const SEARCH_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Bounds `SESSION_REFUSED` records, which any local user can trigger at will: at most
/// `PER_WINDOW` per `WINDOW`; the next admitted record says how many were left out.
pub(super) struct RefusalLimiter {
    state: Mutex<(Instant, u64, u64)>,
}

impl RefusalLimiter {
    const WINDOW: Duration = Duration::from_secs(10);
    const PER_WINDOW: u64 = 100;

    pub fn new() -> Self {
        RefusalLimiter {
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed so far)` when a record may be written.
    fn admit(&self) -> Option<u64> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.0.elapsed() >= Self::WINDOW {
            st.0 = Instant::now();
            st.1 = 0;
        }
        st.1 += 1;
        if st.1 > Self::PER_WINDOW {
            st.2 += 1;
            return None;
        }
        Some(std::mem::take(&mut st.2))
    }
}

/// Why a connection is refused.
struct Refusal {
    server: Option<String>,
    reason: Reason,
    message: String,
    /// What the audit record says beyond the message the client sees.
    detail: Option<&'static str>,
}

impl Refusal {
    fn new(server: Option<&str>, reason: Reason, message: impl Into<String>) -> Self {
        Refusal {
            server: server.map(str::to_owned),
            reason,
            message: message.into(),
            detail: None,
        }
    }
}

/// A connection that may start its session.
struct Admitted {
    /// The configuration the hello was judged by (and the session runs under).
    loaded: Arc<Loaded>,
    def: Arc<ServerDef>,
    /// Bytes the client sent after its hello.
    leftover: Vec<u8>,
    id: String,
    session_uid: Option<SessionUid>,
    registration: Registration,
}

/// Reads the hello and applies every check: server known and allowed, limits, a free uid.
fn admit(
    shared: &Arc<Shared>,
    loaded: &Loaded,
    stream: &UnixStream,
    peer: &Peer,
) -> Result<Admitted, Refusal> {
    let limits = &loaded.daemon.limits;
    let bad = |e: hello::HelloError| Refusal::new(None, Reason::BadHello, e.to_string());
    let (line, leftover) = hello::read_line(&mut &*stream, limits.hello_max_bytes).map_err(bad)?;
    let hello = hello::parse_hello(&line).map_err(bad)?;
    // Judged by the configuration in force now, not the one from when the connection was
    // accepted: a reload that revoked a grant while this hello was pending must apply to it.
    let loaded = shared.current();
    let limits = &loaded.daemon.limits;
    let name = hello.server.as_str();
    let stopping = || Refusal::new(Some(name), Reason::ShuttingDown, "aipd is stopping");
    if shared.stopping() {
        return Err(stopping());
    }
    // One answer for unknown and forbidden servers: names a user may not use stay private.
    let not_allowed = |detail| Refusal {
        detail: Some(detail),
        ..Refusal::new(
            Some(name),
            Reason::NotAllowed,
            format!("server `{name}` is not available to {}", peer.describe()),
        )
    };
    let def = loaded
        .servers
        .by_name
        .get(name)
        .map(Arc::clone)
        .ok_or_else(|| not_allowed("no such server"))?;
    if !def.allow.permits(peer.uid, peer.gid, &peer.groups) {
        return Err(not_allowed(
            "user and groups not in the server's allow list",
        ));
    }
    let session_uid = if shared.root && def.run_as == RunAs::Dynamic {
        Some(shared.uids.allocate(peer.uid).ok_or_else(|| {
            Refusal::new(
                Some(name),
                Reason::Busy,
                "no free per-session uid (session_users range exhausted)",
            )
        })?)
    } else {
        None
    };
    let id = uuid::Uuid::new_v4().to_string();
    let caps = Caps {
        daemon: limits.max_sessions,
        per_user: limits.max_sessions_per_user,
        per_server: def.max_sessions,
    };
    let new = NewSession {
        id: id.clone(),
        server: def.name.clone(),
        peer: peer.clone(),
        session_uid: session_uid.as_ref().map(|u| u.uid),
        policy: def.policy.name().to_owned(),
        policy_path: def.policy_path.display().to_string(),
    };
    let registration = shared
        .sessions
        .register(new, caps)
        .map_err(|e| Refusal::new(Some(name), Reason::Busy, e.to_string()))?;
    // Registered before this check, so a stop that began meanwhile either sees the session or
    // is seen here.
    if shared.stopping() {
        return Err(stopping());
    }
    Ok(Admitted {
        loaded,
        def,
        leftover,
        id,
        session_uid,
        registration,
    })
}

/// Serves one client connection to its end.
pub(super) fn serve(shared: &Arc<Shared>, stream: UnixStream) {
    let peer = match Peer::of(&stream) {
        Ok(p) => p,
        Err(e) => {
            shared
                .hellos
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            tracing::warn!("cannot read the peer's credentials; closing: {e}");
            return;
        }
    };
    let loaded = shared.current();
    let limits = &loaded.daemon.limits;
    let _ = stream.set_read_timeout(Some(limits.hello_timeout));
    let _ = stream.set_write_timeout(Some(limits.hello_timeout));
    let admitted = {
        // Counted by the accept loop until the hello is over, whatever its outcome.
        let _hello = super::service::Counted(&shared.hellos);
        admit(shared, &loaded, &stream, &peer)
    };
    let a = match admitted {
        Ok(a) => a,
        Err(r) => return refuse(shared, &stream, &peer, &r),
    };
    let welcome = Reply::Welcome {
        version: hello::VERSION,
        server: a.def.name.clone(),
        session: a.id.clone(),
    };
    if (&stream).write_all(&welcome.to_line()).is_err() {
        return;
    }
    let _ = stream.set_read_timeout(None);
    let _ = stream.set_write_timeout(Some(a.loaded.daemon.limits.client_write_timeout));
    let uid = a.session_uid.as_ref().map(|u| u.uid);
    tracing::info!(server = %a.def.name, session = %a.id, uid = peer.uid, session_uid = ?uid, "session starting");
    let sink: Arc<dyn Sink> = Arc::new(SessionSink {
        inner: Arc::clone(&shared.audit),
        info: Arc::clone(&a.registration.info),
    });
    run(
        shared,
        &a.loaded,
        &a.def,
        &peer,
        &stream,
        a.leftover,
        &a.id,
        uid,
        sink,
        &a.registration.info.handle,
    );
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[allow(clippy::too_many_arguments)]
fn run(
    shared: &Arc<Shared>,
    loaded: &Loaded,
    def: &Arc<ServerDef>,
    peer: &Peer,
    stream: &UnixStream,
    leftover: Vec<u8>,
    id: &str,
    session_uid: Option<u32>,
    sink: Arc<dyn Sink>,
    handle: &crate::proxy::SessionHandle,
) {
    let cfg = &loaded.daemon;
    let clones = (stream.try_clone(), stream.try_clone());
    let (Ok(input), Ok(output)) = clones else {
        tracing::error!(session = %id, "cannot duplicate the client socket");
        return;
    };
    let approver: Arc<dyn Approver> = match def.approvals {
        ApproverKind::Queue => Arc::new(FatigueLimited::new(
            QueueApprover {
                queue: Arc::clone(&shared.approvals),
                uid: peer.uid,
                user: peer.user.clone(),
            },
            cfg.approvals.prompts_per_minute,
            Duration::from_secs(60),
        )),
        ApproverKind::Deny => Arc::new(HeadlessApprover::deny()),
        ApproverKind::None => Arc::new(NoApprover),
    };
    let proxy = ProxyConfig {
        max_message_bytes: cfg.proxy.max_message_bytes,
        approval_timeout: cfg.approvals.timeout,
        shutdown_grace: cfg.proxy.shutdown_grace,
        kill_grace: cfg.proxy.kill_grace,
        server_name: def.name.clone(),
        ..ProxyConfig::default()
    };
    let inst = Instance {
        policy: Arc::clone(&def.policy),
        policy_path: def.policy_path.clone(),
        audit: Arc::clone(&sink),
        audit_path: shared.audit_path.clone(),
        command: def.command.clone(),
        cwd: def.cwd.clone(),
        env: vec![("PATH".into(), SEARCH_PATH.into())],
        overrides: Overrides::default(),
        user: session_uid.map(|u| (u, u)),
        approver,
        proxy,
        runtime: Some(shared.runtime.clone()),
        embedded_server: false,
        session_id: Some(id.to_owned()),
        // `$AIP_VALIDATION_SERVER` in aipd's environment (a unit drop-in) applies to all.
        validation_server: None,
    };
    let client = ClientIo {
        input: Box::new(Cursor::new(leftover).chain(input)),
        output: Box::new(output),
        diagnostics: Box::new(ServerStderr::new(&def.name, id)),
    };
    match launch::run_instance(inst, client, handle, false) {
        Ok(exit) => {
            tracing::info!(server = %def.name, session = %id, exit = ?exit, "session ended");
        }
        Err(e) => {
            let reason = e.to_string();
            tracing::error!(server = %def.name, session = %id, "the server could not be started: {reason}");
            let record = Record::event("SESSION_FAILED")
                .with("session_id", id)
                .with("server", def.name.as_str())
                .with("reason", reason.as_str());
            if let Err(e) = sink.write(&record) {
                tracing::error!("cannot audit the failed start: {e}");
            }
            // Tell the MCP client why, on every request it sends (bounded).
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let mut out = stream;
            hello::answer_with_error(
                stream,
                &mut out,
                crate::jsonrpc::codes::INTERNAL_ERROR,
                &format!("server `{}` could not be started", def.name),
                Some(json!({"reason": reason})),
                cfg.proxy.max_message_bytes,
                16,
            );
        }
    }
}

/// Refuses a connection before its hello is read (too many hellos at once), without a thread.
pub(super) fn refuse_busy(shared: &Arc<Shared>, stream: &UnixStream, message: &str) {
    // The accept loop must not block on a client that does not read.
    let _ = stream.set_nonblocking(true);
    match Peer::of(stream) {
        Ok(peer) => refuse(
            shared,
            stream,
            &peer,
            &Refusal::new(None, Reason::Busy, message),
        ),
        Err(_) => {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

/// Writes the refusal, audits it (bounded), and closes.
fn refuse(shared: &Arc<Shared>, stream: &UnixStream, peer: &Peer, r: &Refusal) {
    tracing::warn!(uid = peer.uid, pid = peer.pid, server = ?r.server, reason = r.reason.as_str(), "connection refused: {}", r.message);
    let _ = (&*stream).write_all(&Reply::refused(r.reason, r.message.as_str()).to_line());
    if let Some(suppressed) = shared.refusals.admit() {
        let mut record = Record::event("SESSION_REFUSED")
            .with_opt("server", r.server.clone())
            .with("uid", peer.uid)
            .with("gid", peer.gid)
            .with_opt("user", peer.user.clone())
            .with("client_pid", peer.pid)
            .with("reason", r.reason.as_str())
            .with("message", r.message.as_str())
            .with_opt("detail", r.detail);
        if suppressed > 0 {
            record.set("suppressed_before", suppressed);
        }
        if let Err(e) = shared.audit.write(&record) {
            tracing::error!("cannot audit a refused connection: {e}");
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The server's stderr, line by line into aipd's log (journald under systemd), tagged with the
/// server and session; bounded per line and per minute (these are diagnostics, not audit).
struct ServerStderr {
    server: String,
    session: String,
    buf: Vec<u8>,
    window: Instant,
    lines: u32,
    suppressed: u32,
}

impl ServerStderr {
    const MAX_LINE: usize = 4096;
    const PER_MINUTE: u32 = 600;

    fn new(server: &str, session: &str) -> Self {
        ServerStderr {
            server: server.into(),
            session: session.into(),
            buf: Vec::new(),
            window: Instant::now(),
            lines: 0,
            suppressed: 0,
        }
    }

    fn emit(&mut self) {
        if self.window.elapsed() >= Duration::from_secs(60) {
            if self.suppressed > 0 {
                tracing::info!(server = %self.server, session = %self.session, "{} server stderr lines not logged", self.suppressed);
            }
            self.window = Instant::now();
            self.lines = 0;
            self.suppressed = 0;
        }
        self.lines += 1;
        if self.lines > Self::PER_MINUTE {
            self.suppressed += 1;
        } else {
            let text = String::from_utf8_lossy(&self.buf);
            tracing::info!(target: "aipd::server", server = %self.server, session = %self.session, "{}", text.trim_end());
        }
        self.buf.clear();
    }
}

impl Write for ServerStderr {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        for chunk in data.split_inclusive(|b| *b == b'\n') {
            let room = Self::MAX_LINE.saturating_sub(self.buf.len());
            self.buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
            if chunk.ends_with(b"\n") {
                self.emit();
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for ServerStderr {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_records_are_bounded_and_count_what_was_left_out() {
        let l = RefusalLimiter::new();
        for _ in 0..RefusalLimiter::PER_WINDOW {
            assert_eq!(l.admit(), Some(0));
        }
        assert_eq!(l.admit(), None);
        assert_eq!(l.admit(), None);
        l.state.lock().unwrap().0 = Instant::now() - RefusalLimiter::WINDOW;
        assert_eq!(l.admit(), Some(2));
    }
}
