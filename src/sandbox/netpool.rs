//! A small pool of fresh, empty network namespaces (loopback up), created ahead of time by a
//! background thread so a root supervisor (aipd) does not pay the network namespace creation
//! (about a millisecond on the build VM, the most expensive single step of a spawn) while a
//! client waits. Each namespace is handed to exactly one sandbox and never reused; the sandbox's
//! reaper joins it with `setns` instead of unsharing a new one.
//!
//! Only for a root supervisor: an unprivileged sandbox's network namespace must belong to its own
//! user namespace, which does not exist before the spawn. Off unless [`enable`] is called (a
//! one-shot `aip run` would only waste the work). This module does not configure anything inside
//! the namespaces beyond bringing `lo` up; egress listeners are still created per sandbox.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Condvar, Mutex, OnceLock};

use nix::fcntl::{OFlag, open};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::stat::Mode;

use super::sys;

struct Pool {
    /// The process whose filler thread fills it. A process forked from it (the spawn server)
    /// inherits the pool without the thread, and the namespaces' descriptor numbers without
    /// the descriptors once it closes what it inherited: to it, the pool does not exist.
    owner: nix::unistd::Pid,
    target: usize,
    ready: Mutex<Vec<OwnedFd>>,
    wanted: Condvar,
}

static POOL: OnceLock<Pool> = OnceLock::new();

/// Keeps up to `size` (1–16) namespaces ready. Returns `false` when the pool cannot run here
/// (not root, or the filler thread could not start); spawns then create namespaces inline.
pub fn enable(size: usize) -> bool {
    if !nix::unistd::geteuid().is_root() || POOL.get().is_some_and(|p| !p.ours()) {
        return false;
    }
    let Ok(home) = open(
        "/proc/thread-self/ns/net",
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) else {
        return false;
    };
    let mut started = false;
    POOL.get_or_init(|| {
        started = true;
        Pool {
            owner: nix::unistd::getpid(),
            target: size.clamp(1, 16),
            ready: Mutex::new(Vec::new()),
            wanted: Condvar::new(),
        }
    });
    if started {
        let spawned = std::thread::Builder::new()
            .name("aip-netns-pool".into())
            .spawn(move || fill(home));
        if spawned.is_err() {
            return false;
        }
    }
    true
}

/// A fresh namespace from the pool, if one is ready. The pool is refilled only on [`refill`]:
/// creating a namespace is about a millisecond of CPU, which on a small machine would compete
/// with the very spawn that took one.
pub fn take() -> Option<OwnedFd> {
    POOL.get().filter(|p| p.ours())?.ready.lock().ok()?.pop()
}

impl Pool {
    fn ours(&self) -> bool {
        self.owner == nix::unistd::getpid()
    }
}

/// Lets the filler replace what was taken; called once a spawn is over.
pub fn refill() {
    if let Some(pool) = POOL.get().filter(|p| p.ours()) {
        pool.wanted.notify_one();
    }
}

/// The filler: creates namespaces on its own thread (a thread's network namespace is its own)
/// and returns to `home` after each one.
fn fill(home: OwnedFd) {
    let Some(pool) = POOL.get() else { return };
    // Creating a namespace is CPU work in this thread's context: at the lowest priority it
    // yields to a spawn (or anything else). Not SCHED_IDLE: starved under load while holding
    // rtnl_lock, it would stall every network configuration. Should the pool run dry, spawns
    // create their own.
    let _ = sys::lowest_priority();
    loop {
        {
            let Ok(mut ready) = pool.ready.lock() else {
                return;
            };
            while ready.len() >= pool.target {
                ready = match pool.wanted.wait(ready) {
                    Ok(r) => r,
                    Err(_) => return,
                };
            }
        }
        match create(&home) {
            Ok(fd) => {
                if let Ok(mut ready) = pool.ready.lock() {
                    ready.push(fd);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "network namespace pool stopped; sandboxes create their own");
                return;
            }
        }
    }
}

fn create(home: &OwnedFd) -> std::io::Result<OwnedFd> {
    unshare(CloneFlags::CLONE_NEWNET)?;
    let made = (|| {
        sys::loopback_up()?;
        Ok::<_, std::io::Error>(open(
            "/proc/thread-self/ns/net",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?)
    })();
    setns(home.as_fd(), CloneFlags::CLONE_NEWNET)?;
    made
}
