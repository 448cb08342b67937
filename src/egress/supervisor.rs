//! The egress supervisor: serves the sockets the sandbox created inside its network namespace
//! (HTTP proxy, SOCKS5, DNS stub over UDP and TCP, transparent capture listeners) from the
//! supervisor's tokio runtime. Every TCP connection goes through one path: find the target (proxy
//! request, SOCKS request, or capture destination mapped back through the fake-address pool) →
//! decide (`Rules`) → for names on port 443/80 check the TLS SNI / HTTP `Host` against the target
//! → resolve on the host and pin the addresses → connect with a timeout → relay with limits →
//! one `EGRESS_CONNECTION` audit record.
//!
//! Must not run anything inside the sandbox, forward DNS queries, or dial an address that
//! `Rules` did not pass.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinHandle;

use crate::audit::Sink;

use super::EgressError;
use super::audit::{AuditContext, Auditor, ConnectionAudit, InFlight, WriterHandle};
use super::dns;
use super::fakeip::FakePool;
use super::forward::{Budget, End, relay};
use super::http::{self, HttpError, ProxyKind};
use super::plan::{EgressPlan, Role};
use super::resolve::{Resolve, SystemResolver};
use super::rules::{Decision, Host, Outcome, Rules};
use super::socks;
use super::tls::{self, Sni};

/// Time a client has to send its request head, SOCKS messages, TLS ClientHello or HTTP head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(10);
/// Concurrent host-side name resolutions (each holds a blocking-pool thread).
const MAX_RESOLVING: usize = 32;
/// Concurrent DNS-over-TCP clients, queries per TCP connection and its idle timeout.
const MAX_DNS_TCP: usize = 32;
const DNS_TCP_QUERIES: usize = 256;
const DNS_TCP_IDLE: Duration = Duration::from_secs(10);
/// How often suppressed-record counts are flushed.
const SUPPRESSED_FLUSH: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to close and records to be written.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Who the supervisor works for, where its records go and how it resolves names.
pub struct SupervisorCtx {
    /// MCP server name, for the audit records.
    pub server: String,
    pub session_id: String,
    pub audit: Arc<dyn Sink>,
    /// The in-flight `tools/call` (id, tool), asked at the start of each connection and lookup.
    pub in_flight: InFlight,
    /// Host-side resolver; [`SystemResolver`] unless a caller pins names itself.
    pub resolver: Arc<dyn Resolve>,
}

impl SupervisorCtx {
    /// A context with the system resolver and no in-flight call information.
    pub fn new(server: &str, session_id: &str, audit: Arc<dyn Sink>) -> Self {
        SupervisorCtx {
            server: server.to_owned(),
            session_id: session_id.to_owned(),
            audit,
            in_flight: Arc::new(|| None),
            resolver: Arc::new(SystemResolver),
        }
    }
}

struct State {
    rules: Arc<Rules>,
    pool: FakePool,
    auditor: Arc<Auditor>,
    resolver: Arc<dyn Resolve>,
    conns: Arc<Semaphore>,
    resolving: Semaphore,
    dns_tcp: Arc<Semaphore>,
    budget: Budget,
    shutdown: watch::Receiver<bool>,
    active: AtomicUsize,
}

/// Counts live connection tasks so shutdown can wait for their audit records.
struct Active(Arc<State>);

impl Active {
    fn enter(state: &Arc<State>) -> Active {
        state.active.fetch_add(1, Ordering::SeqCst);
        Active(state.clone())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running egress supervisor for one sandbox.
pub struct Supervisor {
    state: Option<Arc<State>>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    writer: Option<WriterHandle>,
}

impl Supervisor {
    /// Starts serving `listeners` (the sockets `sandbox::net::setup_in_netns` returned for
    /// `plan.net_mode()`, in that order). Must be called from within a tokio runtime; the tasks
    /// run on it until [`Supervisor::shutdown`].
    pub fn start(
        plan: &EgressPlan,
        listeners: Vec<OwnedFd>,
        ctx: SupervisorCtx,
    ) -> Result<Supervisor, EgressError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| EgressError::Runtime(e.to_string()))?;
        let expected = plan.listeners();
        if listeners.len() != expected.len() {
            return Err(EgressError::ListenerCount {
                expected: expected.len(),
                got: listeners.len(),
            });
        }
        let rules = plan.rules().clone();
        let limits = rules.limits().clone();
        let (auditor, writer) = Auditor::start(
            AuditContext {
                server: ctx.server,
                session_id: ctx.session_id,
                mode: rules.mode(),
                in_flight: ctx.in_flight,
            },
            ctx.audit,
        )
        .map_err(|e| EgressError::Runtime(format!("audit writer thread: {e}")))?;
        let (tx, rx) = watch::channel(false);
        let state = Arc::new(State {
            pool: FakePool::new(limits.max_dns_names),
            rules,
            auditor,
            resolver: ctx.resolver,
            conns: Arc::new(Semaphore::new(limits.max_connections as usize)),
            resolving: Semaphore::new(MAX_RESOLVING),
            dns_tcp: Arc::new(Semaphore::new(MAX_DNS_TCP)),
            budget: Budget::new(limits.max_bytes),
            shutdown: rx,
            active: AtomicUsize::new(0),
        });
        let mut tasks = Vec::new();
        let _guard = runtime.enter();
        for ((role, req), fd) in expected.iter().zip(listeners) {
            let err = |source| EgressError::Listener {
                addr: req.addr,
                source,
            };
            match role {
                Role::DnsUdp => {
                    let std = std::net::UdpSocket::from(fd);
                    check_addr(std.local_addr(), req.addr).map_err(err)?;
                    let sock = UdpSocket::from_std(std).map_err(err)?;
                    tasks.push(tokio::spawn(dns_udp(sock, state.clone())));
                }
                role => {
                    let std = std::net::TcpListener::from(fd);
                    check_addr(std.local_addr(), req.addr).map_err(err)?;
                    let l = TcpListener::from_std(std).map_err(err)?;
                    tasks.push(tokio::spawn(accept_loop(l, *role, state.clone())));
                }
            }
        }
        let flusher = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut stop = flusher.shutdown.clone();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SUPPRESSED_FLUSH) => flusher.auditor.flush_suppressed().await,
                    _ = stop.changed() => break,
                }
            }
        }));
        Ok(Supervisor {
            state: Some(state),
            shutdown: tx,
            tasks,
            writer: Some(writer),
        })
    }

    /// Names currently holding a fake address.
    pub fn fake_names(&self) -> usize {
        self.state.as_ref().map_or(0, |s| s.pool.len())
    }

    /// Stops accepting, ends live connections (each still gets its record), reports suppressed
    /// counts and waits until every record is written (bounded by a grace period).
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks.drain(..) {
            let _ = t.await;
        }
        let Some(state) = self.state.take() else {
            return;
        };
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        while state.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        state.auditor.flush_suppressed().await;
        let left = state.active.load(Ordering::SeqCst);
        drop(state);
        if left > 0 {
            tracing::error!(
                connections = left,
                "egress connections still open after shutdown grace period; their records may be missing"
            );
            return;
        }
        if let Some(w) = self.writer.take() {
            let join = tokio::task::spawn_blocking(move || w.join());
            if tokio::time::timeout(SHUTDOWN_GRACE, join).await.is_err() {
                tracing::error!("egress audit writer did not finish within the grace period");
            }
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

fn check_addr(actual: io::Result<SocketAddr>, want: SocketAddr) -> io::Result<()> {
    let actual = actual?;
    // Port 0 requests (tests) get a kernel-chosen port.
    if actual.ip() == want.ip() && (want.port() == 0 || actual.port() == want.port()) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket is bound to {actual}, expected {want} (fds out of order?)"),
        ))
    }
}

async fn accept_loop(listener: TcpListener, role: Role, state: Arc<State>) {
    let mut stop = state.shutdown.clone();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = stop.changed() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let active = Active::enter(&state);
                let st = state.clone();
                tokio::spawn(async move {
                    let _active = active;
                    match role {
                        Role::DnsTcp => dns_tcp(stream, st).await,
                        role => connection(stream, role, st).await,
                    }
                });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, ?role, "egress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn dns_udp(sock: UdpSocket, state: Arc<State>) {
    let mut stop = state.shutdown.clone();
    let mut buf = vec![0u8; dns::MAX_QUERY + 1];
    loop {
        let (n, peer) = tokio::select! {
            r = sock.recv_from(&mut buf) => match r {
                Ok(v) => v,
                Err(e) => {
                    tracing::debug!(error = %e, "egress DNS recv failed");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let a = dns::answer(&buf[..n], &state.rules, &state.pool);
        if let Some(resp) = a.response {
            let _ = sock.send_to(&resp, peer).await;
        }
        if let Some(ev) = a.event {
            state.auditor.dns(&ev.name, &ev.qtype, &ev.decision);
        }
    }
}

async fn dns_tcp(mut stream: TcpStream, state: Arc<State>) {
    let Ok(_permit) = state.dns_tcp.clone().try_acquire_owned() else {
        return;
    };
    let mut stop = state.shutdown.clone();
    let mut msg = vec![0u8; dns::MAX_QUERY];
    for _ in 0..DNS_TCP_QUERIES {
        let read = async {
            let len = stream.read_u16().await? as usize;
            if len > dns::MAX_QUERY {
                return Err(io::Error::from(io::ErrorKind::InvalidData));
            }
            stream.read_exact(&mut msg[..len]).await?;
            Ok::<usize, io::Error>(len)
        };
        let len = tokio::select! {
            r = tokio::time::timeout(DNS_TCP_IDLE, read) => match r {
                Ok(Ok(len)) => len,
                _ => return,
            },
            _ = stop.changed() => return,
        };
        let a = dns::answer(&msg[..len], &state.rules, &state.pool);
        if let Some(ev) = a.event {
            state.auditor.dns(&ev.name, &ev.qtype, &ev.decision);
        }
        let Some(resp) = a.response else { return };
        let mut out = Vec::with_capacity(resp.len() + 2);
        out.extend_from_slice(&(resp.len() as u16).to_be_bytes());
        out.extend_from_slice(&resp);
        if stream.write_all(&out).await.is_err() {
            return;
        }
    }
}

/// How the client reached us, which decides how refusals and success are signalled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// HTTP proxy listener, request not parsed yet.
    Http,
    HttpConnect,
    HttpForward,
    Socks,
    Capture,
}

impl Via {
    fn as_str(self) -> &'static str {
        match self {
            Via::Http => "http",
            Via::HttpConnect => "http_connect",
            Via::HttpForward => "http_forward",
            Via::Socks => "socks5",
            Via::Capture => "capture",
        }
    }
}

/// A refusal or failure to report to the client and the audit record.
struct Refusal {
    decision: Decision,
    /// HTTP status and reason, SOCKS reply code.
    http: (u16, &'static str),
    socks: u8,
    error: Option<String>,
    /// Nothing more is sent to the client (it is gone, or was already answered).
    silent: bool,
    /// Reset the client connection (a tunnel was already reported as established).
    reset: bool,
}

impl Refusal {
    fn policy(decision: Decision) -> Refusal {
        Refusal {
            decision,
            http: (403, "Forbidden by aip egress policy"),
            socks: socks::REP_NOT_ALLOWED,
            error: None,
            silent: false,
            reset: false,
        }
    }
    fn failure(rule: &str, http: (u16, &'static str), socks: u8, error: String) -> Refusal {
        Refusal {
            decision: Decision {
                outcome: Outcome::Deny,
                rule: rule.to_owned(),
            },
            http,
            socks,
            error: Some(error),
            silent: false,
            reset: false,
        }
    }
    fn silent(mut self) -> Refusal {
        self.silent = true;
        self
    }
    fn reset(mut self) -> Refusal {
        self.reset = true;
        self
    }
}

async fn connection(mut client: TcpStream, role: Role, state: Arc<State>) {
    let start = Instant::now();
    let _ = client.set_nodelay(true);
    let mut via = match role {
        Role::HttpProxy => Via::Http,
        Role::Socks => Via::Socks,
        _ => Via::Capture,
    };
    let mut rec = ConnectionAudit {
        call: state.auditor.in_flight(),
        via: via.as_str(),
        host: String::new(),
        port: 0,
        sni: None,
        addr: None,
        decision: Decision {
            outcome: Outcome::Deny,
            rule: String::new(),
        },
        error: None,
        bytes_up: 0,
        bytes_down: 0,
        duration: Duration::ZERO,
    };
    // Held for the connection's whole life, relay included.
    let permit = state.conns.clone().try_acquire_owned();
    let mut stop = state.shutdown.clone();
    let prepared = match &permit {
        Ok(_) => tokio::select! {
            r = prepare(&mut client, role, &mut via, &state, &mut rec) => r,
            _ = stop.wait_for(|down| *down) => Err(Refusal::failure(
                "shutdown",
                (503, "Service Unavailable"),
                socks::REP_GENERAL_FAILURE,
                "supervisor shutdown".into(),
            )),
        },
        Err(_) => Err(Refusal::failure(
            "limits.max_connections",
            (503, "Service Unavailable"),
            socks::REP_GENERAL_FAILURE,
            "too many concurrent connections".into(),
        )),
    };
    match prepared {
        Err(refusal) => {
            rec.via = via.as_str();
            rec.decision = refusal.decision.clone();
            rec.error = refusal.error.clone();
            refuse(&mut client, via, &rec, &refusal).await;
        }
        Ok(None) => {}
        Ok(Some(upstream)) => {
            let r = relay(
                client,
                upstream,
                state.rules.limits().idle_timeout,
                &state.budget,
                state.shutdown.clone(),
            )
            .await;
            rec.bytes_up += r.up;
            rec.bytes_down = r.down;
            rec.error = match r.end {
                End::Closed => None,
                End::Idle => Some("idle timeout".into()),
                End::Budget => Some("limits.max_bytes reached".into()),
                End::Shutdown => Some("supervisor shutdown".into()),
                End::Error(e) => Some(e),
            };
        }
    }
    rec.duration = start.elapsed();
    state.auditor.connection(&rec).await;
}

async fn refuse(client: &mut TcpStream, via: Via, rec: &ConnectionAudit, r: &Refusal) {
    if r.silent {
        return;
    }
    if r.reset {
        let _ = client.set_zero_linger();
        return;
    }
    let target = if rec.host.is_empty() {
        "request".to_owned()
    } else {
        format!("{}:{}", rec.host, rec.port)
    };
    match via {
        Via::Http | Via::HttpConnect | Via::HttpForward => {
            let detail = match &r.error {
                Some(e) => format!("{target}: {e} ({})", r.decision.rule),
                None => format!("{target} denied by {}", r.decision.rule),
            };
            let _ = client
                .write_all(&http::error_response(r.http.0, r.http.1, &detail))
                .await;
            let _ = client.shutdown().await;
        }
        Via::Socks => {
            let _ = client.write_all(&socks::reply(r.socks)).await;
            let _ = client.shutdown().await;
        }
        Via::Capture => {
            // Reset, so the client fails at once with ECONNRESET instead of waiting.
            let _ = client.set_zero_linger();
        }
    }
}

/// Everything from reading the request to the first bytes sent upstream: `Ok(Some(upstream))`
/// is ready to relay, `Ok(None)` ended early (reason in `rec.error`), `Err` is a refusal to
/// report to the client (nothing was relayed).
async fn prepare(
    client: &mut TcpStream,
    role: Role,
    via: &mut Via,
    state: &Arc<State>,
    rec: &mut ConnectionAudit,
) -> Result<Option<TcpStream>, Refusal> {
    if state.auditor.broken() {
        return Err(Refusal::failure(
            "audit",
            (503, "Service Unavailable"),
            socks::REP_GENERAL_FAILURE,
            "audit log unavailable; egress stopped".into(),
        ));
    }
    if state.budget.exhausted() {
        return Err(Refusal::failure(
            "limits.max_bytes",
            (503, "Service Unavailable"),
            socks::REP_GENERAL_FAILURE,
            "the sandbox's byte budget is spent".into(),
        ));
    }
    let mut buf: Vec<u8> = Vec::new();
    // What to send upstream before relaying: a rewritten head, or bytes already read.
    let mut first: Vec<u8> = Vec::new();
    let (host, port) = match role {
        Role::HttpProxy => {
            let req = read_until(client, &mut buf, http::MAX_HEAD, |b| {
                http::parse_proxy_request(b).map_err(HttpFront)
            })
            .await
            .map_err(|e| e.into_refusal())?;
            let extra = buf[req.head_len..].to_vec();
            match req.kind {
                ProxyKind::Connect => {
                    *via = Via::HttpConnect;
                    first = extra;
                }
                ProxyKind::Forward { upstream_head } => {
                    *via = Via::HttpForward;
                    first = upstream_head;
                    first.extend_from_slice(&extra);
                }
            }
            (req.host, req.port)
        }
        Role::Socks => socks_handshake(client, &mut buf, &mut first).await?,
        Role::Capture(port) => {
            let local = client.local_addr().map_err(|e| {
                Refusal::failure(
                    "capture",
                    (500, ""),
                    socks::REP_GENERAL_FAILURE,
                    format!("getsockname: {e}"),
                )
            })?;
            (Host::Ip(local.ip()), port)
        }
        Role::DnsUdp | Role::DnsTcp => return Ok(None),
    };
    let via = *via;
    rec.via = via.as_str();
    rec.port = port;
    rec.host = host.to_string();
    // A fake address (captured, or an address a client resolved through the stub and handed to a
    // proxy) stands for its name.
    let host = match host {
        Host::Ip(ip) if FakePool::in_range(ip) => match state.pool.lookup(ip) {
            Some(name) => {
                rec.host = name.to_string();
                Host::Name(name.to_string())
            }
            None => {
                return Err(Refusal::policy(Decision {
                    outcome: Outcome::Deny,
                    rule: format!("fake address {ip} was never handed out by the DNS stub"),
                }));
            }
        },
        h => h,
    };
    let mut decision = state.rules.decide(&host, port);
    if !decision.outcome.allows() {
        return Err(Refusal::policy(decision));
    }
    // Client-first protocols on captured ports: check before dialling anything.
    if via == Via::Capture
        && let Host::Name(name) = &host
    {
        if port == 443 {
            let sni = read_hello(client, &mut first).await?;
            rec.sni = sni.clone();
            check_sni(&state.rules, name, sni, &mut decision)?;
        } else if port == 80 {
            let h = read_until(client, &mut first, http::MAX_HEAD, |b| {
                http::origin_request_host(b).map_err(HttpFront)
            })
            .await
            .map_err(|e| e.into_refusal())?;
            if h != host {
                mismatch(
                    &state.rules,
                    &mut decision,
                    format!("http_host_mismatch (Host {h}, destination {name})"),
                )?;
            }
        }
    }
    let addrs = match &host {
        Host::Ip(ip) => vec![*ip],
        Host::Name(name) => {
            let (addrs, monitored) = resolve(state, name).await?;
            if let Some(rule) = monitored {
                decision = Decision {
                    outcome: Outcome::AllowMonitor,
                    rule,
                };
            }
            addrs
        }
    };
    let (upstream, addr) = dial(&addrs, port, state.rules.limits().connect_timeout).await?;
    rec.addr = Some(addr);
    let _ = upstream.set_nodelay(true);
    match via {
        Via::HttpConnect => {
            client
                .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await
                .map_err(client_gone)?;
        }
        Via::Socks => {
            // The bound address stays unspecified: the sandbox learns nothing about the host's
            // view of the network.
            client
                .write_all(&socks::reply(socks::REP_SUCCEEDED))
                .await
                .map_err(client_gone)?;
        }
        Via::Http | Via::HttpForward | Via::Capture => {}
    }
    if matches!(via, Via::HttpConnect | Via::Socks)
        && port == 443
        && let Host::Name(name) = &host
    {
        // The client already holds a success reply: a refusal now can only reset the tunnel.
        let sni = read_hello(client, &mut first)
            .await
            .map_err(Refusal::reset)?;
        rec.sni = sni.clone();
        if sni.is_some() {
            check_sni(&state.rules, name, sni, &mut decision).map_err(Refusal::reset)?;
        }
    }
    rec.decision = decision;
    let mut upstream = upstream;
    if !first.is_empty() {
        if !state.budget.take(first.len() as u64) {
            rec.error = Some("limits.max_bytes reached".into());
            return Ok(None);
        }
        if let Err(e) = upstream.write_all(&first).await {
            rec.error = Some(format!("upstream write: {e}"));
            return Ok(None);
        }
        rec.bytes_up = first.len() as u64;
    }
    Ok(Some(upstream))
}

fn client_gone(e: io::Error) -> Refusal {
    Refusal::failure(
        "client",
        (400, "Bad Request"),
        socks::REP_GENERAL_FAILURE,
        format!("client: {e}"),
    )
    .silent()
}

struct HttpFront(HttpError);

trait IntoRefusal {
    fn into_refusal(self) -> Refusal;
}

impl IntoRefusal for ReadError<HttpFront> {
    fn into_refusal(self) -> Refusal {
        match self {
            ReadError::Parse(HttpFront(e)) => {
                let status = e.status();
                Refusal::failure(
                    "malformed request",
                    status,
                    socks::REP_GENERAL_FAILURE,
                    e.to_string(),
                )
            }
            ReadError::Io(e) => client_gone(e),
            ReadError::Timeout => Refusal::failure(
                "request timeout",
                (408, "Request Timeout"),
                socks::REP_GENERAL_FAILURE,
                "no complete request within 10 s".into(),
            ),
            ReadError::TooLarge => Refusal::failure(
                "malformed request",
                (431, "Request Header Fields Too Large"),
                socks::REP_GENERAL_FAILURE,
                "request too large".into(),
            ),
            ReadError::Closed => client_gone(io::Error::from(io::ErrorKind::UnexpectedEof)),
        }
    }
}

enum ReadError<E> {
    Parse(E),
    Io(io::Error),
    Timeout,
    TooLarge,
    Closed,
}

/// Reads into `buf` until `parse` returns `Some`, the buffer reaches `max`, or the head timeout.
async fn read_until<T, E>(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<T, ReadError<E>> {
    let deadline = tokio::time::Instant::now() + HEAD_TIMEOUT;
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Ok(Some(t)) => return Ok(t),
                Ok(None) if buf.len() >= max => return Err(ReadError::TooLarge),
                Ok(None) => {}
                Err(e) => return Err(ReadError::Parse(e)),
            }
        }
        let old = buf.len();
        buf.resize(old + max.saturating_sub(old).clamp(1, 4096), 0);
        let n = match tokio::time::timeout_at(deadline, client.read(&mut buf[old..])).await {
            Err(_) => {
                buf.truncate(old);
                return Err(ReadError::Timeout);
            }
            Ok(Err(e)) => {
                buf.truncate(old);
                return Err(ReadError::Io(e));
            }
            Ok(Ok(n)) => n,
        };
        buf.truncate(old + n);
        if n == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Reads the TLS ClientHello into `first` and returns its server name.
async fn read_hello(
    client: &mut TcpStream,
    first: &mut Vec<u8>,
) -> Result<Option<String>, Refusal> {
    #[derive(Debug)]
    enum HelloErr {
        NotTls,
        Malformed,
    }
    let r = read_until(
        client,
        first,
        tls::MAX_HELLO,
        |b| match tls::client_hello_sni(b) {
            Sni::Hello(name) => Ok(Some(name)),
            Sni::Incomplete => Ok(None),
            Sni::NotTls => Err(HelloErr::NotTls),
            Sni::Malformed => Err(HelloErr::Malformed),
        },
    )
    .await;
    let fail = |what: &str| {
        Refusal::failure(
            "tls_client_hello",
            (400, "Bad Request"),
            socks::REP_GENERAL_FAILURE,
            what.to_owned(),
        )
    };
    match r {
        Ok(name) => Ok(name),
        Err(ReadError::Parse(HelloErr::NotTls)) => Err(fail(
            "port 443 carries TLS only; the first bytes are not a TLS handshake",
        )),
        Err(ReadError::Parse(HelloErr::Malformed)) | Err(ReadError::TooLarge) => {
            Err(fail("malformed TLS ClientHello"))
        }
        Err(ReadError::Timeout) => Err(fail("no TLS ClientHello within 10 s")),
        Err(ReadError::Io(e)) => Err(client_gone(e)),
        Err(ReadError::Closed) => Err(client_gone(io::Error::from(io::ErrorKind::UnexpectedEof))),
    }
}

/// The SNI must name the destination (`None` only passes when the caller allows it).
fn check_sni(
    rules: &Rules,
    name: &str,
    sni: Option<String>,
    decision: &mut Decision,
) -> Result<(), Refusal> {
    match sni {
        Some(s) if s == name => Ok(()),
        Some(s) => mismatch(
            rules,
            decision,
            format!("sni_mismatch (SNI {s}, destination {name})"),
        ),
        None => mismatch(rules, decision, format!("sni_missing (destination {name})")),
    }
}

fn mismatch(rules: &Rules, decision: &mut Decision, rule: String) -> Result<(), Refusal> {
    if rules.mode() == crate::policy::egress_config::EgressMode::Monitor {
        *decision = Decision {
            outcome: Outcome::AllowMonitor,
            rule,
        };
        Ok(())
    } else {
        Err(Refusal::policy(Decision {
            outcome: Outcome::Deny,
            rule,
        }))
    }
}

async fn socks_handshake(
    client: &mut TcpStream,
    buf: &mut Vec<u8>,
    first: &mut Vec<u8>,
) -> Result<(Host, u16), Refusal> {
    let fail = |e: ReadError<socks::SocksError>| match e {
        ReadError::Parse(e) => Refusal::failure(
            "malformed request",
            (400, ""),
            e.reply_code(),
            e.to_string(),
        ),
        ReadError::Io(e) => client_gone(e),
        ReadError::Timeout => Refusal::failure(
            "request timeout",
            (408, ""),
            socks::REP_GENERAL_FAILURE,
            "no SOCKS request within 10 s".into(),
        ),
        ReadError::TooLarge | ReadError::Closed => Refusal::failure(
            "malformed request",
            (400, ""),
            socks::REP_GENERAL_FAILURE,
            "incomplete SOCKS message".into(),
        ),
    };
    let greeting = read_until(client, buf, socks::MAX_GREETING, socks::parse_greeting).await;
    let n = match greeting {
        Ok(n) => n,
        Err(ReadError::Parse(socks::SocksError::NoAcceptableMethod)) => {
            let _ = client.write_all(&[5, 0xff]).await;
            return Err(Refusal::failure(
                "malformed request",
                (400, ""),
                socks::REP_GENERAL_FAILURE,
                socks::SocksError::NoAcceptableMethod.to_string(),
            )
            .silent());
        }
        Err(e) => return Err(fail(e)),
    };
    buf.drain(..n);
    client.write_all(&[5, 0]).await.map_err(client_gone)?;
    let (n, host, port) = read_until(client, buf, socks::MAX_REQUEST, socks::parse_request)
        .await
        .map_err(fail)?;
    first.extend_from_slice(&buf[n..]);
    Ok((host, port))
}

/// Resolves an allowed name on the host and filters the answer; the addresses returned are the
/// only ones this connection may dial. The second value names a monitor-mode violation found in
/// the answer (an address in a denied CIDR).
async fn resolve(state: &State, name: &str) -> Result<(Vec<IpAddr>, Option<String>), Refusal> {
    let timeout = state.rules.limits().connect_timeout;
    let lookup = async {
        let _permit = state.resolving.acquire().await.map_err(io::Error::other)?;
        state.resolver.resolve(name).await
    };
    let addrs = match tokio::time::timeout(timeout, lookup).await {
        Err(_) => {
            return Err(Refusal::failure(
                "resolution",
                (504, "Gateway Timeout"),
                socks::REP_TTL_EXPIRED,
                format!("resolving {name} timed out"),
            ));
        }
        Ok(Err(e)) => {
            return Err(Refusal::failure(
                "resolution",
                (502, "Bad Gateway"),
                socks::REP_HOST_UNREACHABLE,
                format!("cannot resolve {name}: {e}"),
            ));
        }
        Ok(Ok(a)) => a,
    };
    state.rules.filter_resolved(&addrs).map_err(Refusal::policy)
}

/// Connects to the first pinned address that answers within the (shared) timeout.
async fn dial(
    addrs: &[IpAddr],
    port: u16,
    timeout: Duration,
) -> Result<(TcpStream, SocketAddr), Refusal> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::from("no address");
    for ip in addrs {
        let sa = SocketAddr::new(*ip, port);
        match tokio::time::timeout_at(deadline, TcpStream::connect(sa)).await {
            Ok(Ok(s)) => return Ok((s, sa)),
            Ok(Err(e)) => last = format!("connect {sa}: {e}"),
            Err(_) => {
                return Err(Refusal::failure(
                    "connect",
                    (504, "Gateway Timeout"),
                    socks::REP_TTL_EXPIRED,
                    format!("connect {sa}: timed out"),
                ));
            }
        }
    }
    Err(Refusal::failure(
        "connect",
        (502, "Bad Gateway"),
        socks::REP_CONNECTION_REFUSED,
        last,
    ))
}
