//! The supervisor's side of one spawn: creates the report pipe and the control socket, forks the
//! reaper into its pid namespace (root) or the first setup process (which clones it and sends
//! its pid), and receives the listener fds ([`launch`]); then reads the layers' reports until
//! the server has exec'd or a step failed, and completes the [`SandboxChild`]'s [`LayerReport`]
//! ([`Launched::finish`], on the caller's thread, or in the spawn server's client).
//!
//! All forks happen on one long-lived spawner thread: `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked exits, so forking from short-lived threads (tokio's blocking pool) would
//! kill sandboxes at random. The thread never exits; `spawn` hands it the job and waits.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::mpsc::{Sender, channel, sync_channel};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::fcntl::OFlag;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::waitpid;
use nix::unistd::pipe2;

use super::error::SandboxError;
use super::handle::SandboxChild;
use super::landlock::COMPILED_ABI;
use super::net::NetMode;
use super::prepare::Prepared;
use super::protocol::{self, Frame};
use super::report::*;
use super::setup::{self, Channels};
use super::sys::{self, Forked};

/// How long the setup may take before the sandbox is killed.
pub(super) const SETUP_TIMEOUT: Duration = Duration::from_secs(10);

type Job = Box<dyn FnOnce() + Send>;

/// Which long-lived thread forks: sandboxes, or disabled (`--no-sandbox`) spawns.
#[derive(Clone, Copy)]
enum Spawner {
    Sandbox,
    Plain,
}

fn spawner(kind: Spawner) -> Result<&'static Mutex<Sender<Job>>, SandboxError> {
    static SANDBOX: OnceLock<Result<Mutex<Sender<Job>>, String>> = OnceLock::new();
    static PLAIN: OnceLock<Result<Mutex<Sender<Job>>, String>> = OnceLock::new();
    let (cell, name) = match kind {
        Spawner::Sandbox => (&SANDBOX, "aip-sandbox-spawner"),
        Spawner::Plain => (&PLAIN, "aip-plain-spawner"),
    };
    cell.get_or_init(|| {
        let (tx, rx) = channel::<Job>();
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                if matches!(kind, Spawner::Sandbox) {
                    empty_bounding_set();
                }
                // Runs for the life of the process: its exit would fire the sandboxes'
                // parent-death signals.
                for job in rx {
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })
            .map(|_| Mutex::new(tx))
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| SandboxError::Supervisor {
        step: "start spawner thread".into(),
        source: std::io::Error::other(e.clone()),
    })
}

/// Empties the sandbox spawner thread's capability bounding set (credentials are per thread),
/// once: every process it forks inherits the empty set, so the reaper and the server, which
/// still clear and verify theirs, find nothing left to drop (each drop is a credential commit).
/// The set only limits what an `execve` can gain; this thread never execs, and only forks
/// sandboxes, whose bounding sets are emptied anyway. Disabled sandboxes fork on another thread
/// so they keep the supervisor's. Unprivileged supervisors cannot drop (no `CAP_SETPCAP`), and
/// their sandboxes' user namespaces start with a full set anyway.
fn empty_bounding_set() {
    if nix::unistd::geteuid().is_root() {
        let _ = sys::clear_bounding_set(super::privileges::last_cap());
    }
}

/// Runs `launch` on the spawner thread and waits here for the server's exec.
pub fn on_spawner_thread(
    prepared: Prepared,
    stdio: [OwnedFd; 3],
) -> Result<SandboxChild, SandboxError> {
    let kind = if prepared.spec.enabled {
        Spawner::Sandbox
    } else {
        Spawner::Plain
    };
    run_on(kind, move || launch(prepared, stdio))??.finish()
}

/// Runs `f` on the sandbox spawner thread (the only thread that forks sandboxes) and returns its
/// result.
pub fn run_on_spawner<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    run_on(Spawner::Sandbox, f)
}

fn run_on<T: Send + 'static>(
    kind: Spawner,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, SandboxError> {
    let (tx, rx) = sync_channel(1);
    let job: Job = Box::new(move || {
        let _ = tx.send(f());
    });
    spawner(kind)?
        .lock()
        .map_err(|_| SandboxError::Supervisor {
            step: "spawner lock".into(),
            source: std::io::Error::other("poisoned"),
        })?
        .send(job)
        .map_err(|_| SandboxError::Supervisor {
            step: "spawner thread".into(),
            source: std::io::Error::other("gone"),
        })?;
    rx.recv()
        .map_err(|_| SandboxError::Died("the spawner thread dropped the request".into()))
}

/// A sandbox whose reaper runs and has handed over its listeners, while its setup may still be
/// going on. [`Launched::finish`] waits for the server's exec (or the first failure), in any
/// process that holds the parts: the spawn server hands them to its client before the setup is
/// done, so the answer's trip overlaps the setup instead of following the exec.
pub(super) struct Launched {
    pub child: SandboxChild,
    /// The report pipe's read end, until the server's exec closes the last write end; `None`
    /// once the outcome is known.
    pub setup: Option<std::fs::File>,
    pub deadline: Instant,
}

impl Launched {
    /// Reads the setup's report to its end. On success the child's report is complete; on a
    /// failure the sandbox is killed, waited for and its cgroup removed (dropping the handle
    /// does that), and the first failure is returned.
    pub fn finish(mut self) -> Result<SandboxChild, SandboxError> {
        let Some(setup) = self.setup.take() else {
            return Ok(self.child);
        };
        let frames = outcome(protocol::read_frames(setup, self.deadline))?;
        apply_frames(self.child.report_mut(), &frames);
        Ok(self.child)
    }
}

/// Forks the setup and waits for the hand-over. Runs on the spawner thread (or the spawn
/// server's only one).
pub(super) fn launch(
    mut prepared: Prepared,
    stdio: [OwnedFd; 3],
) -> Result<Launched, SandboxError> {
    // Only a root supervisor's sandboxes can mount a clone of it (an unprivileged one's are in
    // a user namespace of their own).
    if prepared.root_sandbox() {
        prepared.root_template = super::mounts::Template::for_spec(&prepared.spec);
    }
    let launched = supervise(prepared, stdio);
    super::netpool::refill();
    launched
}

fn supervise(prepared: Prepared, stdio: [OwnedFd; 3]) -> Result<Launched, SandboxError> {
    let (report_r, report_w) =
        pipe2(OFlag::O_CLOEXEC).map_err(|e| SandboxError::supervisor("report pipe")(e.into()))?;
    let (ctl, ctl_child) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(|e| SandboxError::supervisor("control socket")(e.into()))?;
    let deadline = Instant::now() + SETUP_TIMEOUT;
    let channels = Channels {
        stdio,
        report: report_w,
        ctl: ctl_child,
    };
    // As root the reaper is forked straight into its pid namespace. An unprivileged pid
    // namespace must belong to a user namespace, which only a single-threaded process can
    // create: a first setup process makes both and clones the reaper.
    let direct = prepared.root_sandbox();
    let forked = if direct {
        sys::fork_into_new_pid_namespace().map_err(|e| match e {
            // Said as the layer that stopped the server, as when a setup process unshares.
            sys::PidForkError::Namespace(e) => SandboxError::Setup(super::SetupFailure::new(
                super::Layer::Namespaces,
                "unshare pid namespace",
                &e,
            )),
            sys::PidForkError::Fork(e) => SandboxError::supervisor("fork")(e),
        })
    } else {
        sys::fork().map_err(SandboxError::supervisor("fork"))
    };
    let first = match forked? {
        Forked::Child if !prepared.spec.enabled => setup::plain(&prepared, channels),
        Forked::Child if direct => setup::init(&prepared, channels),
        Forked::Child => setup::first(&prepared, channels),
        Forked::Parent(pid) => pid,
    };
    drop(channels);
    let report_r = std::fs::File::from(report_r);

    if !prepared.spec.enabled {
        let pidfd = sys::pidfd_open(first).map_err(SandboxError::supervisor("pidfd_open"))?;
        let frames = protocol::read_frames(report_r, deadline);
        return match outcome(frames) {
            Ok(_) => Ok(Launched {
                child: SandboxChild::new(
                    first,
                    pidfd,
                    None,
                    LayerReport::disabled(
                        nix::unistd::getuid().as_raw(),
                        nix::unistd::getgid().as_raw(),
                        LIFECYCLE_PLAIN,
                    ),
                    Vec::new(),
                    None,
                ),
                setup: None,
                deadline,
            }),
            Err(e) => {
                let _ = sys::pidfd_send_signal(pidfd.as_fd(), nix::sys::signal::Signal::SIGKILL);
                let _ = waitpid(first, None);
                Err(e)
            }
        };
    }

    let handoff = protocol::recv_pid(
        ctl.as_fd(),
        deadline.saturating_duration_since(Instant::now()),
    );
    // The first setup process exits right after the handoff (or after reporting a failure); it
    // is reaped once the reaper runs, off the critical path. Forked directly, it is the reaper.
    let reap_first = || {
        if !direct {
            let _ = waitpid(first, None);
        }
    };
    let cleanup = |prepared: &Prepared| {
        if let Some(cg) = &prepared.cgroup {
            cg.remove();
        }
    };
    let (reaper, listeners) = match handoff {
        Ok(Some((_, listeners))) if direct => (first, listeners),
        Ok(Some(handoff)) => handoff,
        Ok(None) | Err(_) => {
            // Exited after reporting, or stuck past the deadline: either way it is ended here.
            let _ = nix::sys::signal::kill(first, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(first, None);
            let frames = protocol::read_frames(report_r, deadline);
            cleanup(&prepared);
            return Err(match outcome(frames) {
                Err(e) => e,
                Ok(_) => {
                    SandboxError::Died("the first setup process exited without handing over".into())
                }
            });
        }
    };
    let kill_reaper = |pidfd: Option<&OwnedFd>| {
        match pidfd {
            Some(fd) => {
                let _ = sys::pidfd_send_signal(fd.as_fd(), nix::sys::signal::Signal::SIGKILL);
            }
            None => {
                let _ = nix::sys::signal::kill(reaper, nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = waitpid(reaper, None);
    };
    let pidfd = match sys::pidfd_open(reaper) {
        Ok(fd) => fd,
        Err(e) => {
            kill_reaper(None);
            reap_first();
            cleanup(&prepared);
            return Err(SandboxError::supervisor("pidfd_open")(e));
        }
    };
    reap_first();
    // From here on, a failure is read from the report by `finish`, and dropping the handle
    // kills the reaper, waits for it and removes the cgroup.
    let report = planned_report(&prepared);
    let Prepared { cgroup, .. } = prepared;
    Ok(Launched {
        child: SandboxChild::new(reaper, pidfd, Some(ctl), report, listeners, cgroup),
        setup: Some(report_r),
        deadline,
    })
}

const LIFECYCLE_PLAIN: &str = "process group + parent-death signal (no pid namespace)";
const LIFECYCLE_SANDBOX: &str =
    "reaper as pid 1 of a pid namespace; parent-death signal on the reaper kills the namespace";

/// Turns the frames into success (the server exec'd) or the first failure.
fn outcome(frames: std::io::Result<Vec<Frame>>) -> Result<Vec<Frame>, SandboxError> {
    let frames = frames.map_err(|e| {
        if e.kind() == std::io::ErrorKind::TimedOut {
            SandboxError::Timeout(SETUP_TIMEOUT.as_millis() as u64)
        } else {
            SandboxError::supervisor("read setup report")(e)
        }
    })?;
    if let Some(failure) = frames.iter().find_map(|f| match f {
        Frame::Failure(failure) => Some(failure.clone()),
        _ => None,
    }) {
        return Err(SandboxError::Setup(failure));
    }
    if !frames.contains(&Frame::Ready) {
        return Err(SandboxError::Died(
            "the setup processes ended before the server was started".into(),
        ));
    }
    Ok(frames)
}

/// The network report's mode of `NetMode::Host`, which `apply_frames` tells from the others by it.
const NET_HOST: &str = "host";

/// The report before the setup says anything: what was planned, every layer "not reported".
fn planned_report(prepared: &Prepared) -> LayerReport {
    let spec = &prepared.spec;
    LayerReport {
        enabled: true,
        namespaces: NamespacesReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            user_namespace: false,
            created: vec![],
        },
        filesystem: FilesystemReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            mounts: 0,
        },
        landlock: LandlockReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            abi: prepared.kernel_abi,
            compiled_abi: COMPILED_ABI,
            floor: spec.landlock.min_abi,
        },
        seccomp: SeccompReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            profile: spec.seccomp.name().into(),
            arch: std::env::consts::ARCH.into(),
            filters: 0,
        },
        capabilities: CapabilitiesReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            no_new_privs: false,
            securebits_locked: false,
            uid: 0,
            gid: 0,
        },
        resources: prepared
            .resources_report
            .clone()
            .unwrap_or(ResourcesReport {
                status: LayerStatus::NotEnforced {
                    reason: "not planned".into(),
                },
                mechanism: "none".into(),
                cgroup: None,
                limits: Default::default(),
            }),
        network: NetworkReport {
            status: LayerStatus::NotEnforced {
                reason: "not reported".into(),
            },
            mode: match &spec.net {
                NetMode::None => "none",
                NetMode::Host => NET_HOST,
                NetMode::Egress(_) => "egress",
            }
            .into(),
            listeners: 0,
        },
        lifecycle: LifecycleReport {
            status: LayerStatus::Enforced,
            mechanism: LIFECYCLE_SANDBOX.into(),
        },
    }
}

/// Fills in what the setup reported.
fn apply_frames(report: &mut LayerReport, frames: &[Frame]) {
    for frame in frames {
        match frame {
            Frame::Namespaces {
                user_namespace,
                created,
            } => {
                report.namespaces = NamespacesReport {
                    status: LayerStatus::Enforced,
                    user_namespace: *user_namespace,
                    created: created.clone(),
                }
            }
            Frame::Network { listeners } => {
                report.network.listeners = *listeners;
                report.network.status = match report.network.mode.as_str() {
                    NET_HOST => LayerStatus::NotEnforced {
                        reason: "host network requested by the policy (spec.sandbox.network: host)"
                            .into(),
                    },
                    _ => LayerStatus::Enforced,
                };
            }
            Frame::Filesystem { mounts } => {
                report.filesystem = FilesystemReport {
                    status: LayerStatus::Enforced,
                    mounts: *mounts,
                }
            }
            Frame::Landlock { status } => report.landlock.status = status.clone(),
            Frame::Privileges {
                no_new_privs,
                securebits_locked,
                uid,
                gid,
            } => {
                let complete = *no_new_privs && *securebits_locked;
                report.capabilities = CapabilitiesReport {
                    status: if complete {
                        LayerStatus::Enforced
                    } else {
                        LayerStatus::Partial {
                            missing: vec!["securebits".into()],
                        }
                    },
                    no_new_privs: *no_new_privs,
                    securebits_locked: *securebits_locked,
                    uid: *uid,
                    gid: *gid,
                }
            }
            Frame::Seccomp { filters } => {
                report.seccomp.filters = *filters;
                if *filters > 0 {
                    report.seccomp.status = LayerStatus::Enforced;
                }
            }
            Frame::SeccompDegraded { reason } => {
                report.seccomp.status = LayerStatus::NotEnforced {
                    reason: reason.clone(),
                };
            }
            Frame::Failure(_) | Frame::Ready => {}
        }
    }
}
