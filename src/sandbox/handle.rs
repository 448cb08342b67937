//! `SandboxChild`: the supervisor's handle on a running sandbox. Usable from any thread: signals
//! go through a pidfd (never to a recycled pid), waiting is serialized, and dropping the handle
//! kills and reaps the sandbox. For an enabled sandbox the handle's process is the sandbox's pid 1
//! (the reaper): killing it makes the kernel kill every process of the pid namespace, and its
//! exit status is the server's, reported over the control socket.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Mutex, OnceLock};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::cgroup::Cgroup;
use super::protocol::{self, Ended};
use super::report::LayerReport;
use super::sys;

/// How the server ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxExit {
    /// Exited with this code.
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl SandboxExit {
    /// The supervisor's own exit code: the server's code, or 128 + N for signal N.
    pub fn code(self) -> i32 {
        match self {
            Self::Code(c) => c,
            Self::Signal(s) => 128 + s,
        }
    }

    pub fn success(self) -> bool {
        self == Self::Code(0)
    }
}

impl std::fmt::Display for SandboxExit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Code(c) => write!(f, "exit code {c}"),
            Self::Signal(s) => match Signal::try_from(*s) {
                Ok(sig) => write!(f, "killed by {sig}"),
                Err(_) => write!(f, "killed by signal {s}"),
            },
        }
    }
}

/// A sandbox's parts in transit between the spawn server and its client.
pub(crate) struct Detached {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub ctl: Option<OwnedFd>,
    pub report: LayerReport,
    pub listeners: Vec<OwnedFd>,
    pub cgroup: Option<Cgroup>,
}

/// A running sandbox.
#[derive(Debug)]
pub struct SandboxChild {
    pid: Pid,
    pidfd: OwnedFd,
    /// Control socket to the reaper (enabled sandboxes only).
    ctl: Option<OwnedFd>,
    /// `--no-sandbox`: the handle's process is the server itself, leader of its process group.
    plain: bool,
    /// Started by the spawn server (`sandbox::zygote`): the process is not our child, so its end
    /// is observed through the pidfd and its status comes only from the reaper's report.
    remote: bool,
    report: LayerReport,
    listeners: Mutex<Vec<OwnedFd>>,
    waiting: Mutex<()>,
    status: OnceLock<SandboxExit>,
    cgroup: Mutex<Option<Cgroup>>,
}

impl SandboxChild {
    pub(crate) fn new(
        pid: Pid,
        pidfd: OwnedFd,
        ctl: Option<OwnedFd>,
        report: LayerReport,
        listeners: Vec<OwnedFd>,
        cgroup: Option<Cgroup>,
    ) -> Self {
        SandboxChild {
            pid,
            pidfd,
            plain: ctl.is_none(),
            remote: false,
            ctl,
            report,
            listeners: Mutex::new(listeners),
            waiting: Mutex::new(()),
            status: OnceLock::new(),
            cgroup: Mutex::new(cgroup),
        }
    }

    /// Pid of the sandbox's top process in the supervisor's pid namespace: the reaper (pid 1
    /// inside) for an enabled sandbox, the server for a disabled one.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    /// Which layers are in force.
    pub fn report(&self) -> &LayerReport {
        &self.report
    }

    /// The report, while the setup's frames are being filled in.
    pub(super) fn report_mut(&mut self) -> &mut LayerReport {
        &mut self.report
    }

    /// The listening sockets created inside the sandbox's network namespace, in request order.
    /// Returns them once; later calls return an empty vector.
    pub fn take_listeners(&self) -> Vec<OwnedFd> {
        self.listeners
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Sends `signal` to every process of the sandbox (the reaper forwards it; `SIGKILL` kills
    /// the reaper and with it the whole pid namespace). Succeeds silently once the sandbox is
    /// gone.
    pub fn signal_all(&self, signal: Signal) -> io::Result<()> {
        if self.plain {
            // The server leads its own process group; descendants that left it (setsid) are out
            // of reach without a pid namespace, which is what --no-sandbox means.
            let _ = killpg(self.pid, signal);
        }
        match sys::pidfd_send_signal(self.pidfd.as_fd(), signal) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Kills every process of the sandbox.
    pub fn kill_all(&self) -> io::Result<()> {
        self.signal_all(Signal::SIGKILL)
    }

    /// Waits for the sandbox to end and returns how the server ended.
    pub fn wait(&self) -> io::Result<SandboxExit> {
        if let Some(status) = self.status.get() {
            return Ok(*status);
        }
        let _guard = self
            .waiting
            .lock()
            .map_err(|_| io::Error::other("wait lock poisoned"))?;
        if let Some(status) = self.status.get() {
            return Ok(*status);
        }
        if self.remote {
            sys::wait_pidfd(self.pidfd.as_fd(), None)?;
            return Ok(self.finish(None));
        }
        loop {
            match waitpid(self.pid, None) {
                Ok(status) => {
                    if let Some(exit) = self.interpret(status) {
                        return Ok(exit);
                    }
                }
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Returns how the server ended if the sandbox is gone, without blocking.
    pub fn try_wait(&self) -> io::Result<Option<SandboxExit>> {
        if let Some(status) = self.status.get() {
            return Ok(Some(*status));
        }
        // Another thread blocked in wait() will record the status; report "still running".
        let Ok(_guard) = self.waiting.try_lock() else {
            return Ok(None);
        };
        if self.remote {
            return Ok(sys::wait_pidfd(self.pidfd.as_fd(), Some(0))?.then(|| self.finish(None)));
        }
        match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) => Ok(None),
            Ok(status) => Ok(self.interpret(status)),
            Err(e) => Err(e.into()),
        }
    }

    /// Records the final status from the top process's wait status.
    fn interpret(&self, status: WaitStatus) -> Option<SandboxExit> {
        let own = match status {
            WaitStatus::Exited(_, code) => SandboxExit::Code(code),
            WaitStatus::Signaled(_, sig, _) => SandboxExit::Signal(sig as i32),
            _ => return None,
        };
        Some(self.finish(Some(own)))
    }

    /// Records the final status once the top process is gone. `own` is its wait status when we
    /// are its parent; a remote reaper killed before it could report counts as `SIGKILL`d (the
    /// only way it ends without reporting).
    fn finish(&self, own: Option<SandboxExit>) -> SandboxExit {
        let own = own.unwrap_or(SandboxExit::Signal(libc::SIGKILL));
        // The reaper reports the server's exact status; without a report (it was killed), its
        // own status is the answer.
        let exit = match self
            .ctl
            .as_ref()
            .and_then(|c| protocol::try_recv_exit(c.as_fd()))
        {
            Some(Ended::Code(c)) => SandboxExit::Code(c),
            Some(Ended::Signal(s)) => SandboxExit::Signal(s),
            None => own,
        };
        if let Ok(mut cg) = self.cgroup.lock()
            && let Some(cg) = cg.take()
        {
            cg.remove();
        }
        *self.status.get_or_init(|| exit)
    }

    /// Hands a sandbox started in this process to another (the spawn server's client): its
    /// descriptors, pid, report and cgroup move out, and dropping what is left kills nothing.
    pub(crate) fn detach(mut self) -> io::Result<Detached> {
        let detached = Detached {
            pid: self.pid,
            pidfd: self.pidfd.try_clone()?,
            ctl: self.ctl.take(),
            report: self.report.clone(),
            listeners: self.take_listeners(),
            cgroup: self.cgroup.lock().ok().and_then(|mut c| c.take()),
        };
        // Marks it ended so Drop neither kills nor waits.
        let _ = self.status.set(SandboxExit::Code(0));
        Ok(detached)
    }

    /// The client side of [`SandboxChild::detach`], in the process that supervises the session.
    pub(crate) fn attach(d: Detached) -> Self {
        let mut child = SandboxChild::new(d.pid, d.pidfd, d.ctl, d.report, d.listeners, d.cgroup);
        child.plain = false;
        child.remote = true;
        child
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if self.status.get().is_none() {
            let _ = self.kill_all();
            let _ = self.wait();
        }
    }
}
