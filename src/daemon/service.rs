//! The aipd process: loads the configuration, opens the audit sinks and the sockets (systemd
//! socket activation or its own), then accepts connections until SIGTERM. Each client
//! connection gets a thread running [`super::session::serve`]; each control connection one
//! running [`super::control::serve`]. SIGHUP and `aip reload` reread the configuration without
//! touching live sessions. Talks to systemd with sd_notify: READY, STATUS, RELOADING, STOPPING
//! and the watchdog.
//!
//! Must not: contain sandbox, policy or proxy logic (sessions go through `launch`).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use libsystemd::daemon::NotifyState;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use serde::Serialize;

use crate::audit::{AuditError, JournaldSink, JsonlSink, MultiSink, Record, Sink, StderrSink};

use super::approvals::ApprovalQueue;
use super::config::{self, DaemonConfig, Problem, Servers, Trust};
use super::sessions::Sessions;
use super::uids::UidPool;

/// How aipd was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// `aipd.yaml`.
    pub config: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Config(Box<Problem>),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Audit(#[from] AuditError),
    #[error("{0}")]
    Other(String),
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DaemonError {
    let what = what.into();
    move |source| DaemonError::Io { what, source }
}

/// The configuration in force.
pub(super) struct Loaded {
    pub daemon: DaemonConfig,
    pub servers: Servers,
}

/// State shared by the accept loop, session threads and control threads.
pub(super) struct Shared {
    loaded: RwLock<Arc<Loaded>>,
    pub sessions: Arc<Sessions>,
    pub uids: Arc<UidPool>,
    pub approvals: Arc<ApprovalQueue>,
    pub audit: Arc<dyn Sink>,
    pub audit_path: Option<PathBuf>,
    pub runtime: tokio::runtime::Handle,
    stopping: AtomicBool,
    reload_lock: Mutex<()>,
    pub root: bool,
    pub trust: Trust,
    pub refusals: super::session::RefusalLimiter,
    /// Client connections between accept and the end of their hello.
    pub hellos: std::sync::atomic::AtomicUsize,
    /// Control connections being served.
    controls: std::sync::atomic::AtomicUsize,
    config_path: PathBuf,
}

/// Most control connections served at once (each holds a thread for at most its timeout).
const MAX_CONTROL_CONNECTIONS: usize = 16;

/// Decrements a counter when dropped.
pub(super) struct Counted<'a>(pub &'a std::sync::atomic::AtomicUsize);

impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What a reload did (returned to `aip reload`, logged, audited).
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    /// `ok`, `partial` (some server files skipped or kept), or `failed` (old config kept).
    pub status: &'static str,
    pub servers: Vec<String>,
    pub problems: Vec<String>,
    /// Servers whose file broke and whose previous definition stays in force.
    pub kept: Vec<String>,
    /// Settings that changed but only apply after a restart.
    pub restart_needed: Vec<String>,
}

impl Shared {
    pub fn current(&self) -> Arc<Loaded> {
        Arc::clone(&self.loaded.read().unwrap_or_else(|p| p.into_inner()))
    }

    pub fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Rereads `aipd.yaml` and servers.d. A broken `aipd.yaml` keeps everything as it was;
    /// broken server files are skipped (or keep their previous definition).
    pub fn reload(&self, trigger: &str) -> ReloadReport {
        let _guard = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        notify(&[
            NotifyState::Reloading,
            NotifyState::Status("reloading".into()),
        ]);
        let old = self.current();
        let report = match config::load_daemon(&self.config_path, self.trust) {
            Err(problem) => {
                tracing::error!(
                    "reload ({trigger}) failed, the previous configuration stays in force: {problem}"
                );
                ReloadReport {
                    status: "failed",
                    servers: old.servers.by_name.keys().cloned().collect(),
                    problems: vec![problem.to_string()],
                    kept: vec![],
                    restart_needed: vec![],
                }
            }
            Ok(mut new) => {
                let mut restart_needed = Vec::new();
                if new.socket != old.daemon.socket {
                    restart_needed.push("socket".to_string());
                    new.socket = old.daemon.socket.clone();
                }
                if new.control.path != old.daemon.control.path
                    || new.control.mode != old.daemon.control.mode
                    || new.control.group != old.daemon.control.group
                {
                    restart_needed.push("control socket".to_string());
                }
                if new.audit != old.daemon.audit {
                    restart_needed.push("audit".to_string());
                    new.audit = old.daemon.audit.clone();
                }
                if new.prewarm_netns != old.daemon.prewarm_netns {
                    restart_needed.push("prewarm_netns".to_string());
                }
                for what in &restart_needed {
                    tracing::warn!("reload: `{what}` changed; it takes effect after a restart");
                }
                let servers =
                    config::load_servers(&new.servers_dir, self.trust, Some(&old.servers));
                for p in &servers.problems {
                    tracing::warn!("{p}");
                }
                for k in &servers.kept {
                    tracing::warn!(
                        "server {k}: its file is broken; the previous definition stays in force"
                    );
                }
                self.uids.set_range(new.session_uids);
                self.approvals.set_max_pending(new.approvals.max_pending);
                let report = ReloadReport {
                    status: if servers.problems.is_empty() {
                        "ok"
                    } else {
                        "partial"
                    },
                    servers: servers.by_name.keys().cloned().collect(),
                    problems: servers.problems.iter().map(|p| p.to_string()).collect(),
                    kept: servers.kept.clone(),
                    restart_needed,
                };
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Loaded {
                    daemon: new,
                    servers,
                });
                tracing::info!(
                    servers = report.servers.len(),
                    problems = report.problems.len(),
                    "configuration reloaded ({trigger})"
                );
                report
            }
        };
        self.audit_config(trigger, &report);
        notify(&[NotifyState::Ready, NotifyState::Status(self.status_line())]);
        report
    }

    fn audit_config(&self, trigger: &str, report: &ReloadReport) {
        let record = Record::event("CONFIG_RELOAD")
            .with("trigger", trigger)
            .with("config", self.config_path.display().to_string())
            .with("status", report.status)
            .with("servers", report.servers.clone())
            .with("problems", report.problems.clone())
            .with("kept", report.kept.clone())
            .with("restart_needed", report.restart_needed.clone());
        if let Err(e) = self.audit.write(&record) {
            tracing::error!("cannot audit the configuration change: {e}");
        }
    }

    pub fn status_line(&self) -> String {
        let loaded = self.current();
        format!(
            "{} sessions, {} servers, {} approvals waiting",
            self.sessions.len(),
            loaded.servers.by_name.len(),
            self.approvals.list().len()
        )
    }
}

/// Sends sd_notify states; a no-op outside systemd.
pub(super) fn notify(states: &[NotifyState]) {
    if let Err(e) = libsystemd::daemon::notify(false, states) {
        tracing::warn!("sd_notify failed: {e}");
    }
}

/// The configuration files, checked without starting (`aip daemon --check`).
pub struct CheckReport {
    pub daemon: Result<DaemonConfig, Problem>,
    pub servers: Servers,
}

pub fn check(config_path: &Path) -> CheckReport {
    let trust = Trust::for_current_process();
    let daemon = config::load_daemon(config_path, trust);
    let servers = match &daemon {
        Ok(d) => config::load_servers(&d.servers_dir, trust, None),
        Err(_) => Servers::default(),
    };
    CheckReport { daemon, servers }
}

/// The audit sinks: journald (or stderr with one warning when journald is absent) and the
/// optional JSONL file.
/// The daemon's audit sink, the JSONL path (protected in every session), and whether
/// journald is in use.
struct AuditSetup {
    sink: Arc<dyn Sink>,
    jsonl: Option<PathBuf>,
    journald: bool,
}

fn audit_sinks(cfg: &config::AuditConfig) -> Result<AuditSetup, DaemonError> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    let mut journald = false;
    if cfg.journald {
        match JournaldSink::connect(&cfg.identifier) {
            Ok(j) => {
                journald = true;
                sinks.push(Box::new(j));
            }
            Err(e) => {
                tracing::warn!("journald is not available ({e}); audit records go to stderr");
                sinks.push(Box::new(StderrSink));
            }
        }
    }
    if let Some(path) = &cfg.jsonl {
        sinks.push(Box::new(JsonlSink::open(path)?));
    }
    if sinks.is_empty() {
        tracing::warn!(
            "audit.journald is off and no audit.jsonl is set; audit records go to stderr"
        );
        sinks.push(Box::new(StderrSink));
    }
    let sink: Arc<dyn Sink> = if sinks.len() == 1 {
        Arc::from(sinks.remove(0))
    } else {
        Arc::new(MultiSink::new(sinks))
    };
    Ok(AuditSetup {
        sink,
        jsonl: cfg.jsonl.clone(),
        journald,
    })
}

/// A listening socket and, if aipd created it, the path to remove at exit.
struct Listener {
    sock: UnixListener,
    owned_path: Option<PathBuf>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(p) = &self.owned_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Sockets systemd passed; the one named `control` (FileDescriptorName=control) is the
/// control socket.
fn activated() -> Result<(Vec<UnixListener>, Option<UnixListener>), DaemonError> {
    // Names are optional (systemd-socket-activate sets none); without them every passed
    // socket is a client socket.
    let fds = libsystemd::activation::receive_descriptors(false)
        .map_err(|e| DaemonError::Other(format!("socket activation: {e}")))?;
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|n| n.split(':').map(str::to_owned).collect())
        .unwrap_or_default();
    let mut clients = Vec::new();
    let mut control = None;
    for (i, fd) in fds.into_iter().enumerate() {
        let name = names.get(i).map(String::as_str).unwrap_or("");
        use std::os::fd::IntoRawFd;
        let owned: OwnedFd =
            super::sys::adopt_passed_fd(fd.into_raw_fd()).map_err(io_err("socket activation"))?;
        let listening = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::AcceptConn)
            .unwrap_or(false);
        let kind = nix::sys::socket::getsockopt(&owned, nix::sys::socket::sockopt::SockType);
        if !listening || kind != Ok(nix::sys::socket::SockType::Stream) {
            return Err(DaemonError::Other(format!(
                "socket activation: descriptor `{name}` is not a listening stream socket (use ListenStream= in aipd.socket)"
            )));
        }
        let l = UnixListener::from(owned);
        l.set_nonblocking(true)
            .map_err(io_err("socket activation"))?;
        if name == "control" {
            control = Some(l);
        } else {
            clients.push(l);
        }
    }
    Ok((clients, control))
}

/// Binds a Unix socket at `path` with `mode`, owner and group; replaces a stale socket file,
/// refuses to take over one a live process still listens on.
fn bind(
    path: &Path,
    mode: u32,
    user: Option<u32>,
    group: Option<u32>,
) -> Result<Listener, DaemonError> {
    if let Some(dir) = path.parent()
        && !dir.exists()
    {
        std::fs::create_dir_all(dir).map_err(io_err(format!("create {}", dir.display())))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755));
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(DaemonError::Other(format!(
                    "{} is in use by a running process (another aipd?)",
                    path.display()
                )));
            }
            std::fs::remove_file(path)
                .map_err(io_err(format!("remove stale {}", path.display())))?;
        }
        Ok(_) => {
            return Err(DaemonError::Other(format!(
                "{} exists and is not a socket; refusing to replace it",
                path.display()
            )));
        }
        Err(_) => {}
    }
    // Bind under a tight umask so the socket is never more open than `mode`, even briefly.
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let sock = bound.map_err(io_err(format!("bind {}", path.display())))?;
    let listener = Listener {
        sock,
        owned_path: Some(path.to_owned()),
    };
    if user.is_some() || group.is_some() {
        std::os::unix::fs::chown(path, user, group)
            .map_err(io_err(format!("chown {}", path.display())))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(format!("chmod {}", path.display())))?;
    listener
        .sock
        .set_nonblocking(true)
        .map_err(io_err("set the socket non-blocking"))?;
    Ok(listener)
}

/// Raises the soft open-files limit to the hard one (a session holds about ten descriptors).
fn raise_nofile() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
    {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.min(1 << 20), hard);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sig {
    Reload,
    Stop,
}

/// Signals arrive on a thread; they are queued here and the accept loop is woken through a
/// socket pair.
fn watch_signals(wake: UnixStream) -> Result<Receiver<Sig>, DaemonError> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])
        .map_err(io_err("install signal handlers"))?;
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("aipd-signals".into())
        .stack_size(128 * 1024)
        .spawn(move || {
            use std::io::Write;
            for s in signals.forever() {
                let sig = if s == SIGHUP { Sig::Reload } else { Sig::Stop };
                if tx.send(sig).is_err() {
                    break;
                }
                let _ = (&wake).write(&[1]);
            }
        })
        .map_err(io_err("start the signal thread"))?;
    Ok(rx)
}

/// Stack of a session thread: planning and spawning the sandbox, then waiting for the proxy
/// (virtual size; only touched pages cost memory).
const SESSION_STACK: usize = 1024 * 1024;
/// Stack of a control thread: a reload parses and validates every policy, which needs the
/// same room as the main thread.
const CONTROL_STACK: usize = 8 * 1024 * 1024;

fn spawn_thread(name: &str, stack: usize, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(stack)
        .spawn(f)
        .map(|_| ())
}

/// Runs aipd until SIGTERM or SIGINT.
pub fn run(opts: &Options) -> Result<(), DaemonError> {
    let trust = Trust::for_current_process();
    let root = trust == Trust::RootOwned;
    let daemon =
        config::load_daemon(&opts.config, trust).map_err(|p| DaemonError::Config(Box::new(p)))?;
    if !root {
        tracing::warn!(
            "aipd is not running as root: sessions run as its own user inside a user namespace \
             (no per-session uids), and file ownership is not checked"
        );
    }
    raise_nofile();
    super::sys::limit_malloc_arenas(2);
    let AuditSetup {
        sink: audit,
        jsonl: audit_path,
        journald,
    } = audit_sinks(&daemon.audit)?;

    // Sockets first, while no other thread exists (bind changes the umask).
    let (activated_clients, activated_control) = activated()?;
    let activation = !activated_clients.is_empty();
    let mut clients: Vec<Listener> = activated_clients
        .into_iter()
        .map(|sock| Listener {
            sock,
            owned_path: None,
        })
        .collect();
    if clients.is_empty() {
        clients.push(bind(
            &daemon.socket.path,
            daemon.socket.mode,
            daemon.socket.user,
            daemon.socket.group,
        )?);
    }
    let control = match activated_control {
        Some(sock) => Listener {
            sock,
            owned_path: None,
        },
        None => bind(
            &daemon.control.path,
            daemon.control.mode,
            None,
            daemon.control.group,
        )?,
    };
    let (wake_rx, wake_tx) = UnixStream::pair().map_err(io_err("create the wake-up pair"))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(io_err("wake-up pair"))?;
    let signals = watch_signals(wake_tx)?;

    let servers = config::load_servers(&daemon.servers_dir, trust, None);
    for p in &servers.problems {
        tracing::warn!("{p}");
    }
    // Sandboxes are forked by a spawn server made now, while aipd is small: a fork's cost grows
    // with the forking process's memory, and aipd's grows with its sessions.
    let prewarm = if root {
        daemon.prewarm_netns.min(16)
    } else {
        0
    };
    match crate::sandbox::use_spawn_server(prewarm) {
        Ok(pid) => tracing::debug!(pid, "sandbox spawn server started"),
        Err(e) => {
            tracing::warn!(error = %e, "no sandbox spawn server; aipd forks sandboxes itself (slower with many sessions)");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("aipd-rt")
        .enable_all()
        .build()
        .map_err(io_err("start the async runtime"))?;
    let shared = Arc::new(Shared {
        uids: UidPool::new(daemon.session_uids),
        approvals: ApprovalQueue::new(daemon.approvals.max_pending),
        sessions: Sessions::new(),
        audit,
        audit_path,
        runtime: runtime.handle().clone(),
        stopping: AtomicBool::new(false),
        reload_lock: Mutex::new(()),
        root,
        trust,
        refusals: super::session::RefusalLimiter::new(),
        hellos: std::sync::atomic::AtomicUsize::new(0),
        controls: std::sync::atomic::AtomicUsize::new(0),
        config_path: opts.config.clone(),
        loaded: RwLock::new(Arc::new(Loaded {
            daemon: daemon.clone(),
            servers,
        })),
    });
    let start = Record::event("DAEMON_START")
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("pid", std::process::id())
        .with("config", opts.config.display().to_string())
        .with("socket_activation", activation)
        .with("journald", journald)
        .with("root", root);
    shared.audit.write(&start)?;
    let loaded = shared.current();
    shared.audit_config(
        "start",
        &ReloadReport {
            status: if loaded.servers.problems.is_empty() {
                "ok"
            } else {
                "partial"
            },
            servers: loaded.servers.by_name.keys().cloned().collect(),
            problems: loaded
                .servers
                .problems
                .iter()
                .map(|p| p.to_string())
                .collect(),
            kept: vec![],
            restart_needed: vec![],
        },
    );
    drop(loaded);
    tracing::info!(
        servers = shared.current().servers.by_name.len(),
        socket_activation = activation,
        "aipd ready"
    );
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(shared.status_line()),
    ]);

    accept_loop(&shared, &clients, &control, &wake_rx, &signals);

    // Stop: no new connections, then end every session within the timeout.
    shared.stopping.store(true, Ordering::SeqCst);
    notify(&[
        NotifyState::Stopping,
        NotifyState::Status("stopping".into()),
    ]);
    drop(clients);
    drop(control);
    let timeout = shared.current().daemon.limits.shutdown_timeout;
    let deadline = Instant::now() + timeout;
    let at_stop = shared.sessions.len();
    tracing::info!(sessions = at_stop, "stopping; ending sessions");
    while !shared.sessions.is_empty() && Instant::now() < deadline {
        shared.sessions.signal_all(libc::SIGTERM);
        std::thread::sleep(Duration::from_millis(100));
    }
    let left = shared.sessions.len();
    if left > 0 {
        tracing::warn!(
            sessions = left,
            "shutdown timeout reached; exiting (the kernel ends the remaining sandboxes with aipd)"
        );
    }
    let _ = shared.audit.write(
        &Record::event("DAEMON_STOP")
            .with("sessions_at_stop", at_stop)
            .with("sessions_left", left),
    );
    drop(runtime);
    Ok(())
}

fn accept_loop(
    shared: &Arc<Shared>,
    clients: &[Listener],
    control: &Listener,
    wake: &UnixStream,
    signals: &Receiver<Sig>,
) {
    let watchdog = libsystemd::daemon::watchdog_enabled(false).map(|d| d / 2);
    let mut last_ping = Instant::now();
    let mut last_status = String::new();
    let mut last_count = 0;
    let tick = watchdog
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        let mut fds: Vec<PollFd<'_>> = clients
            .iter()
            .map(|l| PollFd::new(l.sock.as_fd(), PollFlags::POLLIN))
            .collect();
        fds.push(PollFd::new(control.sock.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(wake.as_fd(), PollFlags::POLLIN));
        let timeout = PollTimeout::try_from(tick).unwrap_or(PollTimeout::MAX);
        let ready: Vec<bool> = match poll(&mut fds, timeout) {
            Ok(_) => fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect(),
            Err(nix::errno::Errno::EINTR) => vec![false; fds.len()],
            Err(e) => {
                tracing::error!("poll failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                vec![false; fds.len()]
            }
        };
        drop(fds);
        if ready[ready.len() - 1] {
            use std::io::Read;
            let mut buf = [0u8; 64];
            while matches!((&*wake).read(&mut buf), Ok(n) if n > 0) {}
        }
        let mut stop = false;
        while let Ok(sig) = signals.try_recv() {
            match sig {
                Sig::Reload => {
                    shared.reload("SIGHUP");
                }
                Sig::Stop => stop = true,
            }
        }
        if stop {
            return;
        }
        for (l, _) in clients.iter().zip(&ready).filter(|(_, r)| **r) {
            accept_all(&l.sock, |stream| {
                // Bound the threads a flood of silent connections can hold.
                let limit = shared.current().daemon.limits.max_pending_hellos;
                if shared.hellos.fetch_add(1, Ordering::SeqCst) >= limit {
                    shared.hellos.fetch_sub(1, Ordering::SeqCst);
                    super::session::refuse_busy(
                        shared,
                        &stream,
                        "too many connections are in their hello",
                    );
                    return Ok(());
                }
                let sh = Arc::clone(shared);
                spawn_thread("aipd-session", SESSION_STACK, move || {
                    super::session::serve(&sh, stream)
                })
                .inspect_err(|_| {
                    shared.hellos.fetch_sub(1, Ordering::SeqCst);
                })
            });
        }
        if ready[clients.len()] {
            accept_all(&control.sock, |stream| {
                if shared.controls.fetch_add(1, Ordering::SeqCst) >= MAX_CONTROL_CONNECTIONS {
                    shared.controls.fetch_sub(1, Ordering::SeqCst);
                    tracing::warn!("control: too many connections at once; closing one");
                    return Ok(());
                }
                let sh = Arc::clone(shared);
                spawn_thread("aipd-control", CONTROL_STACK, move || {
                    let _counted = Counted(&sh.controls);
                    super::control::serve(&sh, stream)
                })
                .inspect_err(|_| {
                    shared.controls.fetch_sub(1, Ordering::SeqCst);
                })
            });
        }
        if let Some(period) = watchdog
            && last_ping.elapsed() >= period
        {
            notify(&[NotifyState::Watchdog]);
            last_ping = Instant::now();
        }
        // Sessions ended: give their memory back, so the next sandbox forks a small process.
        let count = shared.sessions.len();
        if count < last_count {
            super::sys::release_free_memory();
        }
        last_count = count;
        let status = shared.status_line();
        if status != last_status {
            notify(&[NotifyState::Status(status.clone())]);
            last_status = status;
        }
    }
}

/// Accepts every pending connection of `l`, handing each to `start`.
fn accept_all(l: &UnixListener, start: impl Fn(UnixStream) -> io::Result<()>) {
    loop {
        match l.accept() {
            Ok((stream, _)) => {
                if let Err(e) = stream.set_nonblocking(false) {
                    tracing::warn!("accepted connection unusable: {e}");
                    continue;
                }
                if let Err(e) = start(stream) {
                    // The stream was moved into the failed spawn and is closed with it.
                    tracing::error!("cannot start a thread for a connection: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::error!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sets_mode_and_refuses_live_or_foreign_paths() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("sub/aipd.sock");
        let l = bind(&p, 0o660, None, None).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o660);
        assert!(
            matches!(bind(&p, 0o660, None, None), Err(DaemonError::Other(m)) if m.contains("in use"))
        );
        drop(l);
        assert!(!p.exists(), "the socket aipd created is removed with it");
        // A stale socket file is replaced.
        let stale = UnixListener::bind(&p).unwrap();
        drop(stale);
        assert!(bind(&p, 0o600, None, None).is_ok());
        let f = d.path().join("file");
        std::fs::write(&f, "x").unwrap();
        assert!(
            matches!(bind(&f, 0o600, None, None), Err(DaemonError::Other(m)) if m.contains("not a socket"))
        );
    }
}
