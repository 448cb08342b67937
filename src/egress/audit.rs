//! Egress audit: the `EGRESS_CONNECTION` and `EGRESS_DNS` records, the rate limiter that keeps a
//! flood of denied lookups or denied connection attempts from filling the disk (the suppressed
//! count goes into the next record, or into an `EGRESS_SUPPRESSED` record when the flood stops),
//! and the writer thread that hands records to the `audit::Sink` off the async runtime.
//!
//! Allowed connections are never rate-limited: each is one record. If the sink fails, the writer
//! raises a flag the supervisor checks before opening any new connection (fail closed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::audit::{Record, Sink};
use crate::policy::egress_config::EgressMode;

use super::rules::Decision;

/// Who the records are about, and what the server is doing when a connection starts.
#[derive(Clone)]
pub struct AuditContext {
    pub server: String,
    pub session_id: String,
    pub mode: EgressMode,
    /// The in-flight `tools/call` (JSON-RPC id, tool name), asked when a connection or lookup
    /// starts.
    pub in_flight: InFlight,
}

/// Callback giving the in-flight `tools/call` (JSON-RPC id as text, tool name), if any.
pub type InFlight = Arc<dyn Fn() -> Option<(String, String)> + Send + Sync>;

/// Burst and refill rate of rate-limited (denial) records, per kind.
const BURST: f64 = 100.0;
const PER_SECOND: f64 = 10.0;
/// Queue between the runtime and the writer thread.
const QUEUE: usize = 4096;

/// Token bucket with a count of what it suppressed.
#[derive(Debug)]
pub struct RateLimiter {
    tokens: f64,
    last: Instant,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(now: Instant) -> Self {
        RateLimiter {
            tokens: BURST,
            last: now,
            suppressed: 0,
        }
    }

    /// `Some(suppressed_before)` if a record may be written now (the count is reset), `None` if
    /// this one is suppressed (and counted).
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * PER_SECOND).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }

    /// Takes the count suppressed since the last admitted record.
    pub fn take_suppressed(&mut self) -> u64 {
        std::mem::take(&mut self.suppressed)
    }

    /// Counts a record that could not be queued.
    pub fn count_dropped(&mut self) {
        self.suppressed += 1;
    }
}

/// The audit side of the supervisor: builds records and queues them for the writer thread.
pub struct Auditor {
    ctx: AuditContext,
    tx: mpsc::Sender<Record>,
    broken: Arc<AtomicBool>,
    dns_limit: std::sync::Mutex<RateLimiter>,
    deny_limit: std::sync::Mutex<RateLimiter>,
}

/// Handle to join the writer thread after the last `Auditor` is dropped.
pub struct WriterHandle(std::thread::JoinHandle<()>);

impl WriterHandle {
    /// Waits (blocking) until every queued record is written.
    pub fn join(self) {
        if self.0.join().is_err() {
            tracing::error!("egress audit writer thread panicked");
        }
    }
}

impl Auditor {
    pub fn start(
        ctx: AuditContext,
        sink: Arc<dyn Sink>,
    ) -> std::io::Result<(Arc<Auditor>, WriterHandle)> {
        let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
        let broken = Arc::new(AtomicBool::new(false));
        let flag = broken.clone();
        let handle = std::thread::Builder::new()
            .name("aip-egress-audit".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(64);
                while let Some(first) = rx.blocking_recv() {
                    batch.push(first);
                    while batch.len() < 64 {
                        match rx.try_recv() {
                            Ok(r) => batch.push(r),
                            Err(_) => break,
                        }
                    }
                    if let Err(e) = sink.write_batch(&batch) {
                        flag.store(true, Ordering::SeqCst);
                        tracing::error!(error = %e, "egress audit records could not be written; refusing new egress connections");
                    }
                    batch.clear();
                }
            })?;
        let now = Instant::now();
        Ok((
            Arc::new(Auditor {
                ctx,
                tx,
                broken,
                dns_limit: std::sync::Mutex::new(RateLimiter::new(now)),
                deny_limit: std::sync::Mutex::new(RateLimiter::new(now)),
            }),
            WriterHandle(handle),
        ))
    }

    /// True once a record failed to be written; no new connection may start.
    pub fn broken(&self) -> bool {
        self.broken.load(Ordering::SeqCst)
    }

    pub fn in_flight(&self) -> Option<(String, String)> {
        (self.ctx.in_flight)()
    }

    fn base(&self, event: &str, call: &Option<(String, String)>) -> Record {
        let (id, tool) = match call {
            Some((id, tool)) => (Some(id.clone()), Some(tool.clone())),
            None => (None, None),
        };
        Record::event(event)
            .with("server", self.ctx.server.as_str())
            .with("session_id", self.ctx.session_id.as_str())
            .with_opt("request_id", id)
            .with_opt("tool", tool)
    }

    /// Queues a connection record. Denials are rate-limited; allowed connections never are.
    pub async fn connection(&self, c: &ConnectionAudit) {
        let suppressed = if c.decision.outcome.allows() {
            Some(0)
        } else {
            self.deny_limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .admit(Instant::now())
        };
        let Some(suppressed) = suppressed else { return };
        let mut r = self
            .base("EGRESS_CONNECTION", &c.call)
            .with("via", c.via)
            .with("host", c.host.as_str())
            .with("port", c.port)
            .with_opt("sni", c.sni.clone())
            .with_opt("addr", c.addr.map(|a| a.to_string()))
            .with("decision", c.decision.outcome.as_str())
            .with("egress_mode", self.ctx.mode.as_str())
            .with("violation", c.decision.outcome.violation())
            .with("rule", c.decision.rule.as_str())
            .with_opt("error", c.error.clone())
            .with("bytes_up", c.bytes_up)
            .with("bytes_down", c.bytes_down)
            .with("duration_ms", c.duration.as_millis() as u64);
        if suppressed > 0 {
            r.set("suppressed_before", suppressed);
        }
        if c.decision.outcome.allows() {
            // Must not be lost: wait for room in the queue.
            if self.tx.send(r).await.is_err() {
                self.broken.store(true, Ordering::SeqCst);
            }
        } else if self.tx.try_send(r).is_err() {
            self.deny_limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .count_dropped();
        }
    }

    /// Queues a DNS record (refused or monitored lookup), rate-limited, never blocking.
    pub fn dns(&self, name: &str, qtype: &str, decision: &Decision) {
        let admitted = self
            .dns_limit
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .admit(Instant::now());
        let Some(suppressed) = admitted else { return };
        // The callback is the caller's: never call it with our lock held.
        let call = self.in_flight();
        let mut r = self
            .base("EGRESS_DNS", &call)
            .with("name", name)
            .with("qtype", qtype)
            .with("decision", decision.outcome.as_str())
            .with("egress_mode", self.ctx.mode.as_str())
            .with("violation", decision.outcome.violation())
            .with("rule", decision.rule.as_str());
        if suppressed > 0 {
            r.set("suppressed_before", suppressed);
        }
        if self.tx.try_send(r).is_err() {
            self.dns_limit
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .count_dropped();
        }
    }

    /// Writes `EGRESS_SUPPRESSED` records for counts not yet reported (called periodically and at
    /// shutdown).
    pub async fn flush_suppressed(&self) {
        for (kind, lim) in [("dns", &self.dns_limit), ("connection", &self.deny_limit)] {
            let n = lim
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take_suppressed();
            if n > 0 {
                let r = self
                    .base("EGRESS_SUPPRESSED", &None)
                    .with("kind", kind)
                    .with("suppressed", n);
                if self.tx.send(r).await.is_err() {
                    self.broken.store(true, Ordering::SeqCst);
                }
            }
        }
    }
}

/// Everything one `EGRESS_CONNECTION` record says.
#[derive(Debug, Clone)]
pub struct ConnectionAudit {
    pub call: Option<(String, String)>,
    /// `http_connect`, `http_forward`, `socks5` or `capture`.
    pub via: &'static str,
    /// The host as requested (a name, or an address literal).
    pub host: String,
    pub port: u16,
    pub sni: Option<String>,
    /// The pinned upstream address actually connected to.
    pub addr: Option<std::net::SocketAddr>,
    pub decision: Decision,
    pub error: Option<String>,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub duration: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_bursts_then_counts() {
        let t0 = Instant::now();
        let mut l = RateLimiter::new(t0);
        for _ in 0..100 {
            assert_eq!(l.admit(t0), Some(0));
        }
        for _ in 0..50 {
            assert_eq!(l.admit(t0), None);
        }
        // 0.1 s later one token is back; the admitted record reports the 50 suppressed.
        assert_eq!(l.admit(t0 + Duration::from_millis(100)), Some(50));
        assert_eq!(l.admit(t0 + Duration::from_millis(100)), None);
        assert_eq!(l.take_suppressed(), 1);
        assert_eq!(l.take_suppressed(), 0);
    }
}
