//! Relaying bytes between a sandbox connection and its pinned upstream connection, both ways, with
//! half-close, a shared idle timeout, the per-sandbox byte budget and the supervisor's shutdown
//! signal, counting bytes for the audit record.
//!
//! A plain buffer loop per direction, as `copy_bidirectional` does, plus the accounting it
//! cannot do; the buffer grows from 16 KiB to 256 KiB while reads fill it.
//! `scripts/bench-egress.sh` measures it. Must not look at the bytes.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;

/// Per-direction buffer: starts small (most connections move little) and doubles while reads
/// fill it, up to the largest size (bulk transfers make fewer, larger system calls).
const BUF_START: usize = 16 * 1024;
const BUF_MAX: usize = 256 * 1024;

/// Bytes the sandbox may still move (all connections, both directions); `None` = unlimited.
#[derive(Debug, Clone, Default)]
pub struct Budget(Option<Arc<AtomicU64>>);

impl Budget {
    pub fn new(limit: Option<u64>) -> Self {
        Budget(limit.map(|l| Arc::new(AtomicU64::new(l))))
    }

    /// Takes `n` bytes from the budget; false (and the budget emptied) if it does not hold them.
    pub fn take(&self, n: u64) -> bool {
        let Some(rem) = &self.0 else { return true };
        let ok = rem
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |r| r.checked_sub(n))
            .is_ok();
        if !ok {
            rem.store(0, Ordering::SeqCst);
        }
        ok
    }

    pub fn exhausted(&self) -> bool {
        self.0
            .as_ref()
            .is_some_and(|r| r.load(Ordering::SeqCst) == 0)
    }
}

/// Why relaying stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Both sides closed normally.
    Closed,
    /// No traffic either way for the idle timeout.
    Idle,
    /// `limits.max_bytes` reached.
    Budget,
    /// The supervisor is shutting down.
    Shutdown,
    /// A read or write failed.
    Error(String),
}

/// Outcome of [`relay`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relayed {
    /// Sandbox → upstream bytes.
    pub up: u64,
    /// Upstream → sandbox bytes.
    pub down: u64,
    pub end: End,
}

struct Shared {
    start: Instant,
    /// Milliseconds since `start` of the last byte moved either way.
    last: AtomicU64,
    idle: Duration,
}

impl Shared {
    fn touch(&self) {
        self.last
            .store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

enum PumpEnd {
    Eof,
    Idle,
    Budget,
    Error(io::Error),
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    count: &AtomicU64,
    shared: &Shared,
    budget: &Budget,
) -> PumpEnd {
    let mut buf = vec![0u8; BUF_START];
    loop {
        let n = match tokio::time::timeout(shared.idle, from.read(&mut buf)).await {
            Err(_) if shared.idle_for() < shared.idle => continue,
            Err(_) => return PumpEnd::Idle,
            Ok(Ok(0)) => {
                // Half-close: pass the EOF on, keep the other direction running.
                let _ = to.shutdown().await;
                return PumpEnd::Eof;
            }
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return PumpEnd::Error(e),
        };
        if !budget.take(n as u64) {
            return PumpEnd::Budget;
        }
        if let Err(e) = to.write_all(&buf[..n]).await {
            return PumpEnd::Error(e);
        }
        count.fetch_add(n as u64, Ordering::Relaxed);
        shared.touch();
        if n == buf.len() && buf.len() < BUF_MAX {
            buf.resize(buf.len() * 2, 0);
        }
    }
}

/// Relays until both directions end, one fails, the idle timeout or the budget is hit, or
/// `shutdown` turns true. Both sockets are closed on return.
pub async fn relay(
    client: TcpStream,
    upstream: TcpStream,
    idle: Duration,
    budget: &Budget,
    mut shutdown: watch::Receiver<bool>,
) -> Relayed {
    let shared = Shared {
        start: Instant::now(),
        last: AtomicU64::new(0),
        idle,
    };
    let (up_n, down_n) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let up = pump(cr, uw, &up_n, &shared, budget);
    let down = pump(ur, cw, &down_n, &shared, budget);
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let end = loop {
        if *shutdown.borrow() {
            break End::Shutdown;
        }
        let finished = tokio::select! {
            r = &mut up, if !up_done => { up_done = true; r }
            r = &mut down, if !down_done => { down_done = true; r }
            _ = shutdown.changed() => continue,
        };
        match finished {
            PumpEnd::Eof if up_done && down_done => break End::Closed,
            PumpEnd::Eof => continue,
            PumpEnd::Idle => break End::Idle,
            PumpEnd::Budget => break End::Budget,
            PumpEnd::Error(e) => break End::Error(e.to_string()),
        }
    };
    Relayed {
        up: up_n.load(Ordering::Relaxed),
        down: down_n.load(Ordering::Relaxed),
        end,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (s, _) = l.accept().await.unwrap();
        (c, s)
    }

    #[tokio::test]
    async fn relays_both_ways_with_half_close() {
        let (mut app, proxy_side) = pair().await;
        let (proxy_up, mut origin) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            relay(
                proxy_side,
                proxy_up,
                Duration::from_secs(5),
                &Budget::default(),
                rx,
            )
            .await
        });
        app.write_all(b"hello").await.unwrap();
        app.shutdown().await.unwrap();
        let mut got = Vec::new();
        origin.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        origin.write_all(b"world!").await.unwrap();
        drop(origin);
        let mut back = Vec::new();
        app.read_to_end(&mut back).await.unwrap();
        assert_eq!(back, b"world!");
        let r = task.await.unwrap();
        assert_eq!((r.up, r.down, r.end), (5, 6, End::Closed));
    }

    #[tokio::test]
    async fn budget_and_idle_and_shutdown_end_the_relay() {
        let (mut app, p) = pair().await;
        let (u, _origin) = pair().await;
        let budget = Budget::new(Some(3));
        let (_tx, rx) = watch::channel(false);
        app.write_all(b"12345").await.unwrap();
        let r = relay(p, u, Duration::from_secs(5), &budget, rx).await;
        assert_eq!(r.end, End::Budget);
        assert!(budget.exhausted());

        let (_app, p) = pair().await;
        let (u, _origin) = pair().await;
        let (_tx, rx) = watch::channel(false);
        let r = relay(p, u, Duration::from_millis(100), &Budget::default(), rx).await;
        assert_eq!(r.end, End::Idle);

        let (_app, p) = pair().await;
        let (u, _origin) = pair().await;
        let (tx, rx) = watch::channel(false);
        let t = tokio::spawn(async move {
            relay(p, u, Duration::from_secs(30), &Budget::default(), rx).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.send(true).unwrap();
        assert_eq!(t.await.unwrap().end, End::Shutdown);
    }
}
