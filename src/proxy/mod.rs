//! The session pumps: client → server and server → client. Each line is framed, parsed once,
//! decided, audited, then forwarded byte for byte (or answered with an error built here).
//!
//! Threads, not async: each direction has one thread doing blocking reads and writes on pipes,
//! which keeps the added latency to a couple of context switches. A call waiting for a human
//! runs on its own thread, so it never stalls other traffic. Shared state is small: the two write
//! ends (whole lines under a lock), the pending-request tables, and the tool cache.
//!
//! This module must not spawn or sandbox anything: the caller hands in the streams and a
//! [`ServerProcess`] it can signal and wait for.

mod approval;
mod decide;
mod dlp;
mod downstream;
mod identity;
mod lifecycle;
mod memory;
mod output;
mod pending;
mod records;
mod spin;
mod tools;
mod upstream;

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::approval::Approver;
pub use crate::audit::Direction;
use crate::audit::Sink;
use crate::policy::Engine;

pub use identity::Identity;
pub use lifecycle::Event;
use lifecycle::Shutdown;
use output::Output;
use pending::Pending;
pub use spin::SpinRead;

/// Tunables of one session.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Longest line accepted in either direction (`--max-message-bytes`, default 4 MiB).
    pub max_message_bytes: usize,
    /// Remove tools the policy blocks from `tools/list` replies (enforce mode only).
    pub filter_tools_list: bool,
    /// How long a human has to answer an `ask`.
    pub approval_timeout: Duration,
    /// Most calls waiting for a human at once; more are answered -32005 at once.
    pub max_waiting_approvals: usize,
    /// Most requests in flight per direction.
    pub max_pending: usize,
    /// After the server's stdin is closed, how long it may take to exit before SIGTERM.
    pub shutdown_grace: Duration,
    /// After SIGTERM, how long before SIGKILL.
    pub kill_grace: Duration,
    /// After the server exited, how long to keep draining a stdout someone kept open.
    pub drain_timeout: Duration,
    /// Server name for approvals and audit (command name, or the daemon's server name).
    pub server_name: String,
    /// How long a pump polls its input after handling a message before it sleeps in `read`
    /// (see `SpinRead`); zero disables polling.
    pub spin: Duration,
    /// Once the session runs, drop start-up code pages and trim the heap (a one-session
    /// process; not the daemon, whose later sessions would fault them back in).
    pub release_startup_memory: bool,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            max_message_bytes: 4 * 1024 * 1024,
            filter_tools_list: true,
            approval_timeout: crate::approval::DEFAULT_TIMEOUT,
            max_waiting_approvals: 16,
            max_pending: 4096,
            shutdown_grace: Duration::from_secs(5),
            kill_grace: Duration::from_secs(3),
            drain_timeout: Duration::from_secs(2),
            server_name: "server".into(),
            spin: Duration::from_micros(100),
            release_startup_memory: false,
        }
    }
}

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerExit {
    Code(i32),
    Signal(i32),
}

impl ServerExit {
    /// The proxy's own exit code: the server's, or 128+N when it was killed by signal N.
    pub fn exit_code(self) -> u8 {
        match self {
            ServerExit::Code(c) => (c & 0xff) as u8,
            ServerExit::Signal(n) => (128 + n).clamp(0, 255) as u8,
        }
    }
}

/// The running server, as the proxy needs it.
pub trait ServerProcess: Send + Sync {
    /// SIGTERM to every process of the server.
    fn terminate(&self);
    /// SIGKILL to every process of the server.
    fn kill(&self);
    /// Blocks until the server exits (called once, from a dedicated thread).
    fn wait(&self) -> std::io::Result<ServerExit>;
}

/// The byte streams of one session.
pub struct Streams {
    pub client_in: Box<dyn Read + Send>,
    pub client_out: Box<dyn Write + Send>,
    pub server_in: Box<dyn Write + Send>,
    pub server_out: Box<dyn Read + Send>,
    pub server_err: Option<Box<dyn Read + Send>>,
    /// Where the server's stderr and non-JSON-RPC stdout lines go (our stderr).
    pub diagnostics: Box<dyn Write + Send>,
}

/// Everything a session needs besides its streams.
pub struct Session {
    pub config: ProxyConfig,
    pub engine: Arc<Engine>,
    pub audit: Arc<dyn Sink>,
    pub approver: Arc<dyn Approver>,
    pub session_id: String,
    /// Identity tokens (`spec.identity.enabled`).
    pub identity: Option<Identity>,
    /// A remote validation server that must also allow each call.
    pub remote: Option<Remote>,
}

/// A remote AIP validation server (`--validation-server`): every tool call the local policy
/// allows must also be allowed there; when it cannot answer, `spec.server.failover_mode` decides.
#[derive(Clone)]
pub struct Remote {
    pub validator: Arc<crate::server::RemoteValidator>,
    pub runtime: tokio::runtime::Handle,
}

/// Live view of a session for other components (egress audit asks which call is in flight).
#[derive(Clone)]
pub struct SessionHandle {
    shared: Arc<Mutex<Option<Arc<Shared>>>>,
}

impl SessionHandle {
    pub fn new() -> Self {
        SessionHandle {
            shared: Arc::new(Mutex::new(None)),
        }
    }

    /// The `(request id, tool)` of the most recent `tools/call` the server is working on.
    pub fn current_tool_call(&self) -> Option<(String, String)> {
        let guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        guard
            .as_ref()
            .and_then(|sh| sh.pending().current_tool_call())
    }

    /// Sends an event to the session's lifecycle (used by launchers to forward signals).
    pub fn send(&self, ev: Event) {
        let guard = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(sh) = guard.as_ref() {
            let _ = sh.events.send(ev);
        }
    }
}

impl Default for SessionHandle {
    fn default() -> Self {
        Self::new()
    }
}

/// Rate limit for records an untrusted peer can trigger at will (dropped lines): at most
/// `PER_WINDOW` per `WINDOW`, the rest counted and reported with the next admitted one.
pub(crate) struct DropLimiter {
    window_start: Mutex<Instant>,
    count: AtomicU64,
}

impl DropLimiter {
    const WINDOW: Duration = Duration::from_secs(60);
    const PER_WINDOW: u64 = 100;

    fn new() -> Self {
        DropLimiter {
            window_start: Mutex::new(Instant::now()),
            count: AtomicU64::new(0),
        }
    }

    pub(crate) fn admit(&self) -> bool {
        let mut start = self.window_start.lock().unwrap_or_else(|p| p.into_inner());
        if start.elapsed() >= Self::WINDOW {
            *start = Instant::now();
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_WINDOW
    }
}

/// State shared by the pump threads, approval threads and the lifecycle.
pub(crate) struct Shared {
    cfg: ProxyConfig,
    engine: Arc<Engine>,
    audit: Arc<dyn Sink>,
    approver: Arc<dyn Approver>,
    session_id: Arc<str>,
    identity: Option<Identity>,
    remote: Option<Remote>,
    to_server: Output,
    to_client: Output,
    stderr: Mutex<Box<dyn Write + Send>>,
    pending: Mutex<Pending>,
    tools: Mutex<tools::ToolCache>,
    asks: AtomicUsize,
    shutdown: Shutdown,
    events: Sender<Event>,
    drop_limiter: DropLimiter,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enforcing(&self) -> bool {
        self.engine.mode() == crate::policy::Mode::Enforce
    }

    fn mode_str(&self) -> &'static str {
        if self.enforcing() {
            "enforce"
        } else {
            "monitor"
        }
    }

    /// Wakes every call waiting for a human with a cancellation (the session is ending).
    fn cancel_approvals(&self) {
        let pending = self.pending();
        pending.cancel_approvals();
    }
}

/// Runs one session to its end and returns how the server ended.
///
/// `signals`: handle SIGINT/SIGTERM/SIGHUP (for `aip run`; the daemon handles its own).
pub fn run(
    session: Session,
    streams: Streams,
    server: Arc<dyn ServerProcess>,
    handle: &SessionHandle,
    signals: bool,
) -> ServerExit {
    let (tx, rx) = mpsc::channel();
    let sh = Arc::new(Shared {
        to_server: Output::new(
            "server",
            streams.server_in,
            tx.clone(),
            Event::ServerInputGone,
        ),
        to_client: Output::new("client", streams.client_out, tx.clone(), Event::ClientGone),
        stderr: Mutex::new(streams.diagnostics),
        pending: Mutex::new(Pending::new(session.config.max_pending)),
        tools: Mutex::new(tools::ToolCache::default()),
        asks: AtomicUsize::new(0),
        shutdown: Shutdown::default(),
        events: tx.clone(),
        drop_limiter: DropLimiter::new(),
        cfg: session.config,
        engine: session.engine,
        audit: session.audit,
        approver: session.approver,
        session_id: Arc::from(session.session_id),
        identity: session.identity,
        remote: session.remote,
    });
    *handle.shared.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&sh));

    let mut threads = Vec::new();
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        std::thread::Builder::new()
            .name(name.into())
            .stack_size(512 * 1024)
            .spawn(f)
    };
    {
        let sh2 = Arc::clone(&sh);
        let input = streams.client_in;
        // The client reader may block forever on a client that never closes; it is not joined.
        let _ = spawn("aip-upstream", Box::new(move || upstream::pump(sh2, input)));
    }
    {
        let sh2 = Arc::clone(&sh);
        let input = streams.server_out;
        threads.push(spawn(
            "aip-downstream",
            Box::new(move || downstream::pump(sh2, input)),
        ));
    }
    if let Some(err) = streams.server_err {
        let sh2 = Arc::clone(&sh);
        threads.push(spawn(
            "aip-stderr",
            Box::new(move || downstream::stderr_pump(sh2, err)),
        ));
    }
    {
        let tx = tx.clone();
        let server = Arc::clone(&server);
        let _ = spawn(
            "aip-wait",
            Box::new(move || {
                let ev = match server.wait() {
                    Ok(status) => Event::ServerExited(status),
                    Err(e) => Event::WaitFailed(e.to_string()),
                };
                let _ = tx.send(ev);
            }),
        );
    }
    if signals {
        watch_signals(tx.clone());
    }
    drop(tx);

    let status = lifecycle::supervise(&sh, server.as_ref(), &rx);
    // Calls the server never answered get an error, if the client is still listening.
    let orphans = sh.pending().drain_client();
    if !orphans.is_empty() && sh.to_client.is_open() {
        let err = crate::jsonrpc::ErrorReply::standard(
            crate::jsonrpc::codes::INTERNAL_ERROR,
            "the server exited before answering",
        );
        let mut out = Vec::new();
        for r in orphans.iter().filter(|r| r.approval.is_none()) {
            out.extend_from_slice(&err.to_line(Some(&r.id_text)));
        }
        let _ = sh.to_client.write(&out);
    }
    for t in threads.into_iter().flatten() {
        // Both have ended or will end promptly: the server is gone, so its pipes are closed.
        let _ = t.join();
    }
    *handle.shared.lock().unwrap_or_else(|p| p.into_inner()) = None;
    status
}

/// The loop both pumps share: frames from `input`, each handed to `on_frame`; `flush` whenever
/// no further complete line is already buffered (so pipelined input is handled in batches and
/// nothing waits behind a blocking read), once more at the end; then `done` goes to the
/// lifecycle.
fn pump_frames<B>(
    sh: &Shared,
    input: Box<dyn Read + Send>,
    peer: &str,
    batch: &mut B,
    mut on_frame: impl FnMut(crate::jsonrpc::Frame<'_>, &mut B),
    mut flush: impl FnMut(&mut B),
    done: Event,
) {
    let mut reader = crate::jsonrpc::LineReader::new(input, sh.cfg.max_message_bytes);
    loop {
        match reader.next_frame() {
            Ok(Some(frame)) => on_frame(frame, batch),
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %e, "reading from the {peer} failed");
                break;
            }
        }
        if !reader.has_buffered_line() {
            flush(batch);
        }
    }
    flush(batch);
    let _ = sh.events.send(done);
}

fn watch_signals(tx: Sender<Event>) {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    match signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP]) {
        Ok(mut signals) => {
            let _ = std::thread::Builder::new()
                .name("aip-signals".into())
                .stack_size(128 * 1024)
                .spawn(move || {
                    for sig in signals.forever() {
                        if tx.send(Event::Signal(sig)).is_err() {
                            break;
                        }
                    }
                });
        }
        Err(e) => tracing::warn!(error = %e, "cannot install signal handlers"),
    }
}
