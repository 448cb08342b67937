//! The sandbox's pid 1: reaps every process that ends up orphaned in the pid namespace, forwards
//! the signals the supervisor sends it to every process of the sandbox, and, when the server
//! exits, kills what the server left behind, reports the server's status to the supervisor and
//! exits. Its own death (the supervisor died: parent-death signal; or `kill_all`) makes the
//! kernel kill the whole pid namespace, which is how no process outlives the sandbox.
//!
//! It runs with only `CAP_KILL`, non-dumpable, with signals blocked and read from a signalfd, so
//! no signal handler ever runs in it. It must not do anything else.

use std::os::fd::{AsFd, OwnedFd};

use nix::sys::signal::{SigSet, Signal, kill};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::protocol::{self, Ended};
use super::sys;

/// Signals the reaper forwards to the sandbox (all catchable, terminal-independent ones).
pub const FORWARDED: [Signal; 9] = [
    Signal::SIGHUP,
    Signal::SIGINT,
    Signal::SIGQUIT,
    Signal::SIGTERM,
    Signal::SIGUSR1,
    Signal::SIGUSR2,
    Signal::SIGALRM,
    Signal::SIGCONT,
    Signal::SIGWINCH,
];

/// The set blocked from the first setup step on (so none is lost before the signalfd exists)
/// and unblocked by the server right before `execve`.
pub fn blocked_set() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// Runs the reaper loop for `server` and never returns.
pub fn run(server: Pid, ctl: OwnedFd) -> ! {
    let Ok(sfd) = SignalFd::with_flags(&blocked_set(), SfdFlags::SFD_CLOEXEC) else {
        // Without a signalfd we cannot reap; kill the sandbox rather than leak it.
        sys::exit_now(125);
    };
    let mut ended = None;
    loop {
        match sfd.read_signal() {
            Ok(Some(info)) => {
                let signo = info.ssi_signo as i32;
                if signo == Signal::SIGCHLD as i32 {
                    if let Some(e) = reap(server) {
                        ended = Some(e);
                    }
                } else if let Ok(sig) = Signal::try_from(signo) {
                    // kill(-1) reaches every process of the namespace except pid 1 itself.
                    let _ = kill(Pid::from_raw(-1), sig);
                }
            }
            Ok(None) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(_) => sys::exit_now(125),
        }
        if let Some(ended) = ended {
            finish(ended, ctl.as_fd());
        }
    }
}

/// Reaps every exited child; returns the server's status if it was among them.
fn reap(server: Pid) -> Option<Ended> {
    let mut ended = None;
    loop {
        match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) if pid == server => ended = Some(Ended::Code(code)),
            Ok(WaitStatus::Signaled(pid, sig, _)) if pid == server => {
                ended = Some(Ended::Signal(sig as i32))
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return ended,
            Ok(_) => {}
        }
    }
}

fn finish(ended: Ended, ctl: std::os::fd::BorrowedFd<'_>) -> ! {
    let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
    while waitpid(Pid::from_raw(-1), None).is_ok() {}
    protocol::send_exit(ctl, ended);
    sys::exit_now(match ended {
        Ended::Code(c) => c,
        Ended::Signal(s) => 128 + s,
    })
}
