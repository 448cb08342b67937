//! The code that runs inside the sandbox's setup processes, between `fork` and the server's
//! `execve` (the numbered list in `sandbox/mod.rs` is the contract):
//!
//! * `init` (root supervisors: forked by the spawner thread straight into the new pid
//!   namespace, whose pid 1 it is) or `first` (unprivileged: forked by the spawner thread; it
//!   creates the user namespace, then clones the reaper as a sibling with `CLONE_PARENT`, hands
//!   its pid over and exits). Both run `isolate`: close every inherited fd, enter the cgroup,
//!   unshare the namespaces, host name, network; the listener fds go to the supervisor.
//! * `reaper` (pid 1 of the new pid namespace, child of the supervisor): arms its parent-death
//!   signal and checks the supervisor is still there, builds the root file system and pivots
//!   into it, sheds what it can of its privileges, starts the server sharing its memory until
//!   the server's `execve`, drops to `CAP_KILL` and becomes the reaper loop.
//! * `server`: new session, stdio, fds, cwd, rlimits, Landlock ruleset, privileges,
//!   Landlock enforcement, seccomp, signal mask, `execve`.
//!
//! Every failure is reported as a [`SetupFailure`] frame on the close-on-exec report pipe before
//! the process exits. Constraints (we are a fork of a multi-threaded process): no logging, no
//! stdio, no `std::env`, no locks another thread may hold; allocation is fine (glibc fork; the
//! server allocates in the reaper's heap, which is suspended meanwhile).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::sys::signal::{SigmaskHow, Signal, sigprocmask};
use nix::unistd::{Pid, getgid, getppid, getuid};

use super::error::SetupFailure;
use super::landlock as ll;
use super::namespaces;
use super::net::NetMode;
use super::prepare::Prepared;
use super::privileges;
use super::protocol::{self, Frame};
use super::reaper;
use super::resources;
use super::seccomp;
use super::spec::Layer;
use super::sys::{self, Forked};

/// The fds a setup process works with.
pub struct Channels {
    pub stdio: [OwnedFd; 3],
    pub report: OwnedFd,
    pub ctl: OwnedFd,
}

fn report_failure(report: BorrowedFd<'_>, failure: SetupFailure) -> ! {
    protocol::send_frame(report, &Frame::Failure(failure));
    sys::exit_now(126)
}

/// Closes every fd of the process except `keep`.
fn close_all_except(keep: &[RawFd]) -> io::Result<()> {
    let mut keep: Vec<u32> = keep.iter().filter_map(|f| u32::try_from(*f).ok()).collect();
    keep.sort_unstable();
    let mut next = 0u32;
    for k in keep {
        if k > next {
            sys::close_range(next, k - 1)?;
        }
        next = k.saturating_add(1);
    }
    sys::close_range(next, u32::MAX)
}

/// Arms the parent-death signal and checks the parent is still the one we expect (it may have
/// died between `fork` and `prctl`).
fn die_with(parent: Pid) -> io::Result<()> {
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    if getppid() != parent {
        sys::exit_now(125);
    }
    Ok(())
}

/// Entry of the first setup process (unprivileged supervisors). Never returns.
pub fn first(prepared: &Prepared, channels: Channels) -> ! {
    // Our own copy: `channels` moves into the reaper below.
    let Ok(report_fd) = channels.report.try_clone() else {
        sys::exit_now(125)
    };
    let report = report_fd.as_fd();
    let result = (|| -> Result<(), SetupFailure> {
        let lifecycle = |step: &str, e: io::Error| SetupFailure::new(Layer::Lifecycle, step, &e);
        die_with(prepared.supervisor).map_err(|e| lifecycle("parent-death signal", e))?;
        let listeners = isolate(prepared, &channels, report_fd.as_raw_fd(), true)?;
        match sys::clone_parent().map_err(|e| lifecycle("clone reaper", e))? {
            Forked::Child => reaper_process(prepared, channels),
            Forked::Parent(pid) => {
                protocol::send_pid(channels.ctl.as_fd(), pid, &listeners)
                    .map_err(|e| lifecycle("hand over reaper", e))?;
                Ok(())
            }
        }
    })();
    match result {
        Ok(()) => sys::exit_now(0),
        Err(failure) => report_failure(report, failure),
    }
}

/// Entry of the reaper when the supervisor forked it straight into the new pid namespace (root
/// supervisors): the first process's steps, then the reaper's. Never returns.
pub fn init(prepared: &Prepared, channels: Channels) -> ! {
    arm_parent_death(&channels);
    let report = channels.report.as_fd();
    let handed_over =
        isolate(prepared, &channels, channels.report.as_raw_fd(), false).and_then(|listeners| {
            // The supervisor has our pid from `fork`; only the listeners travel.
            protocol::send_pid(channels.ctl.as_fd(), nix::unistd::getpid(), &listeners)
                .map_err(|e| SetupFailure::new(Layer::Lifecycle, "hand over listeners", &e))
        });
    if let Err(failure) = handed_over {
        report_failure(report, failure);
    }
    build_and_serve(prepared, channels)
}

/// The steps before the reaper exists: signals, descriptors, cgroup, namespaces (the pid
/// namespace too when `pid_namespace`: the caller then clones its pid 1), host name, network.
/// Returns the egress listeners. `report_copy` is kept open along with `channels`.
fn isolate(
    prepared: &Prepared,
    channels: &Channels,
    report_copy: RawFd,
    pid_namespace: bool,
) -> Result<Vec<OwnedFd>, SetupFailure> {
    let report = channels.report.as_fd();
    let lifecycle = |step: &str, e: io::Error| SetupFailure::new(Layer::Lifecycle, step, &e);
    sys::reset_signal_dispositions();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&reaper::blocked_set()), None)
        .map_err(|e| lifecycle("block signals", e.into()))?;
    let mut keep: Vec<RawFd> = channels.stdio.iter().map(|f| f.as_raw_fd()).collect();
    keep.extend([
        channels.report.as_raw_fd(),
        report_copy,
        channels.ctl.as_raw_fd(),
    ]);
    if let Some(procs) = &prepared.cgroup_procs {
        keep.push(procs.as_raw_fd());
    }
    if let Some(netns) = &prepared.netns {
        keep.push(netns.as_raw_fd());
    }
    if let Some(template) = &prepared.root_template {
        keep.push(template.fd().as_raw_fd());
    }
    close_all_except(&keep).map_err(|e| lifecycle("close inherited fds", e))?;

    if let Some(procs) = &prepared.cgroup_procs {
        nix::unistd::write(procs, b"0")
            .map_err(|e| SetupFailure::new(Layer::Resources, "enter cgroup", &e.into()))?;
    }
    let ns = |step: &str, e: io::Error| SetupFailure::new(Layer::Namespaces, step, &e);
    if let Some((uid, gid)) = prepared.userns {
        namespaces::enter_user_namespace(uid, gid)
            .map_err(|e| ns("user namespace", e).hint(namespaces::USERNS_HINT))?;
    }
    let flags = namespaces::flags(&prepared.spec.net);
    let mut unshared = flags;
    if !pid_namespace {
        unshared.remove(nix::sched::CloneFlags::CLONE_NEWPID);
    }
    if let Some(netns) = &prepared.netns {
        // A fresh namespace made ahead of time by the pool (root only).
        nix::sched::setns(netns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| ns("join pre-created network namespace", e.into()))?;
        unshared.remove(nix::sched::CloneFlags::CLONE_NEWNET);
    }
    nix::sched::unshare(unshared).map_err(|e| ns("unshare", e.into()))?;
    nix::unistd::sethostname(&prepared.spec.hostname).map_err(|e| ns("sethostname", e.into()))?;
    protocol::send_frame(
        report,
        &Frame::Namespaces {
            user_namespace: prepared.userns.is_some(),
            created: namespaces::names(flags, prepared.userns.is_some()),
        },
    );

    let listeners = network(&prepared.spec.net, prepared.netns.is_some())?;
    protocol::send_frame(
        report,
        &Frame::Network {
            listeners: listeners.len(),
        },
    );
    Ok(listeners)
}

/// Sets up the network namespace (the egress helper's `net` module owns the details).
/// `pooled`: the namespace came from the pool, with `lo` already up.
fn network(mode: &NetMode, pooled: bool) -> Result<Vec<OwnedFd>, SetupFailure> {
    let fail = |e: io::Error| SetupFailure::new(Layer::Network, "network namespace setup", &e);
    match mode {
        NetMode::Host => Ok(Vec::new()),
        // Bringing `lo` up is all "none" needs, and the pool did it already.
        NetMode::None if pooled => Ok(Vec::new()),
        NetMode::None => match super::net::setup_in_netns(mode) {
            Ok(fds) => Ok(fds),
            // Until `net` implements it, bringing `lo` up is all "none" needs.
            Err(e) if e.kind() == io::ErrorKind::Unsupported && pooled => Ok(Vec::new()),
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                sys::loopback_up().map(|()| Vec::new()).map_err(fail)
            }
            Err(e) => Err(fail(e)),
        },
        NetMode::Egress(_) => super::net::setup_in_netns(mode).map_err(fail),
    }
}

/// The reaper process cloned by the first setup process (pid 1 of the sandbox's pid
/// namespace). Never returns.
fn reaper_process(prepared: &Prepared, channels: Channels) -> ! {
    arm_parent_death(&channels);
    build_and_serve(prepared, channels)
}

/// Our parent is the supervisor's spawner thread (forked by it, or cloned with CLONE_PARENT).
/// Arms the parent-death signal, then makes sure the supervisor did not die before it was armed
/// (its end of the control socket is still open; `getppid` says 0 across a pid namespace).
fn arm_parent_death(channels: &Channels) {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err()
        || !protocol::peer_alive(channels.ctl.as_fd())
    {
        sys::exit_now(125);
    }
}

/// The reaper's work: the root file system, the server, then the reaper loop. Never returns.
fn build_and_serve(prepared: &Prepared, channels: Channels) -> ! {
    let report = channels.report.as_fd();
    if prepared.userns.is_none()
        && let Err(failure) = seal_memfd_exec()
    {
        report_failure(report, failure);
    }
    let mounts = match super::mounts::build_root(&prepared.spec, prepared.root_template.as_deref())
    {
        Ok(n) => n,
        Err(failure) => report_failure(report, failure),
    };
    protocol::send_frame(report, &Frame::Filesystem { mounts });
    // Most of the reaper's own reduction happens before the server exists: the server inherits
    // it (and drops the same itself, finding nothing left: its bounding set is already empty),
    // and the supervisor, which waits for the reaper's report too, is not kept waiting after the
    // server's exec.
    if let Err(failure) = privileges::prepare_reaper() {
        report_failure(report, failure);
    }
    // The server shares our memory until it execs (we are suspended meanwhile): no page table
    // copy, and its exec has no copy of this process to tear down.
    let server = match sys::spawn_sharing_memory(|| server_process(prepared, &channels)) {
        Ok(pid) => pid,
        Err(e) => report_failure(
            report,
            SetupFailure::new(Layer::Lifecycle, "start server", &e),
        ),
    };
    let Channels { stdio, report, ctl } = channels;
    drop(stdio);
    if let Err(failure) = privileges::reduce_to_kill() {
        report_failure(report.as_fd(), failure);
    }
    drop(report);
    // Keep only the control socket: any other copy of the report pipe (the first process's
    // duplicate lives on in our inherited stack) would hide the server's exec from the
    // supervisor, which waits for end-of-file.
    if close_all_except(&[ctl.as_raw_fd()]).is_err() {
        sys::exit_now(125);
    }
    reaper::run(server, ctl)
}

/// Makes every memfd of this pid namespace non-executable (`vm.memfd_noexec` = 2, Linux 6.3+,
/// a per-pid-namespace setting that children cannot lower): Landlock does not cover anonymous
/// files, so a server could otherwise write any binary into a memfd and run it although /tmp is
/// noexec and every grant read-only. Mapping a memfd executable (JIT code spaces) still works.
/// Only a root reaper may set it (the file belongs to the initial user namespace); on older
/// kernels there is nothing to set. Both are documented limits. Where the kernel has it and a
/// root reaper cannot set it, the start fails instead of running without it.
fn seal_memfd_exec() -> Result<(), SetupFailure> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode;
    let fail = |e: nix::errno::Errno| {
        SetupFailure::new(Layer::Landlock, "seal memfds (vm.memfd_noexec)", &e.into())
    };
    match open(
        c"/proc/sys/vm/memfd_noexec",
        OFlag::O_WRONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(fail(e)),
        Ok(fd) => nix::unistd::write(&fd, b"2").map(drop).map_err(fail),
    }
}

/// The server process: last steps, then `execve`. Never returns. It shares the reaper's memory
/// until `execve`, so it only borrows the reaper's values; the descriptors it does not install
/// (the control socket among them) are close-on-exec.
fn server_process(prepared: &Prepared, channels: &Channels) -> ! {
    let report = channels.report.as_fd();
    match server_steps(prepared, &channels.stdio, report) {
        Ok(()) => {}
        Err(failure) => report_failure(report, failure),
    }
    // Only reached when execve failed.
    sys::exit_now(127)
}

fn server_steps(
    prepared: &Prepared,
    stdio: &[OwnedFd; 3],
    report: BorrowedFd<'_>,
) -> Result<(), SetupFailure> {
    let spec = &prepared.spec;
    let life = |step: &str, e: io::Error| SetupFailure::new(Layer::Lifecycle, step, &e);
    nix::unistd::setsid().map_err(|e| life("setsid", e.into()))?;
    install_stdio(stdio).map_err(|e| life("stdio", e))?;
    sys::cloexec_from(3).map_err(|e| life("close-on-exec fds", e))?;
    nix::unistd::chdir(&spec.cwd).map_err(|e| {
        SetupFailure::new(Layer::Filesystem, format!("chdir {}", spec.cwd.display()), &e.into())
            .hint("the working directory is not visible in the sandbox: grant it in spec.sandbox.filesystem")
    })?;
    resources::apply_rlimits(&prepared.rlimits)?;

    let restrict_network = !matches!(spec.net, NetMode::Host);
    let ruleset = ll::build(
        &spec.landlock,
        &prepared.landlock_rules,
        restrict_network,
        prepared.landlock_floor_required,
    )?;
    let privileges = privileges::drop_all(prepared.switch_to)?;
    protocol::send_frame(
        report,
        &Frame::Privileges {
            no_new_privs: privileges.no_new_privs,
            securebits_locked: privileges.securebits_locked,
            uid: getuid().as_raw(),
            gid: getgid().as_raw(),
        },
    );
    let landlock = ruleset.restrict(prepared.kernel_abi)?;
    protocol::send_frame(
        report,
        &Frame::Landlock {
            status: landlock.status,
        },
    );

    let filters = match prepared.filters {
        Some(filters) => match seccomp::install(filters) {
            Ok(()) => filters.programs.len() as u32,
            Err(e) if prepared.seccomp_may_degrade => {
                protocol::send_frame(
                    report,
                    &Frame::SeccompDegraded {
                        reason: e.to_string(),
                    },
                );
                0
            }
            Err(e) => {
                return Err(
                    SetupFailure::reason(Layer::Seccomp, "install filters", e.to_string()).hint(
                        "the kernel refused the seccomp filter; `aip doctor` shows seccomp support",
                    ),
                );
            }
        },
        None => 0,
    };
    protocol::send_frame(report, &Frame::Seccomp { filters });
    sigprocmask(
        SigmaskHow::SIG_SETMASK,
        Some(&nix::sys::signal::SigSet::empty()),
        None,
    )
    .map_err(|e| life("unblock signals", e.into()))?;
    protocol::send_frame(report, &Frame::Ready);
    Err(exec_failure(prepared, exec(prepared)))
}

/// `execve` of the prepared command; returns only the error.
fn exec(prepared: &Prepared) -> io::Error {
    match nix::unistd::execve(&prepared.exe, &prepared.argv, &prepared.envp) {
        Err(e) => e.into(),
        Ok(never) => match never {},
    }
}

/// Makes the three fds the server's 0, 1 and 2, whatever numbers they had (the originals are
/// left to close-on-exec).
fn install_stdio(stdio: &[OwnedFd; 3]) -> io::Result<()> {
    // First copy them above 2 so installing one cannot clobber another.
    let high: Vec<OwnedFd> = stdio
        .iter()
        .map(|fd| {
            nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3))
                .map(sys::own_fd_from_kernel)
        })
        .collect::<Result<_, _>>()?;
    nix::unistd::dup2_stdin(&high[0])?;
    nix::unistd::dup2_stdout(&high[1])?;
    nix::unistd::dup2_stderr(&high[2])?;
    Ok(())
}

fn exec_failure(prepared: &Prepared, err: io::Error) -> SetupFailure {
    let exe = prepared.spec.executable.display().to_string();
    let dir = prepared
        .spec
        .executable
        .parent()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let failure = SetupFailure::new(Layer::Filesystem, format!("execve {exe}"), &err);
    match err.raw_os_error() {
        Some(libc::ENOENT) => failure.hint(format!(
            "{exe}, its #! interpreter or its ELF loader is not visible in the sandbox: add the directory ({dir}) \
             to spec.sandbox.filesystem.exec"
        )),
        Some(libc::EACCES) => failure.hint(format!(
            "{exe} may not be executed in the sandbox: only spec.sandbox.filesystem.exec paths (and the runtime \
             directories) are mounted executable; add {dir} there"
        )),
        _ => failure,
    }
}

/// Disabled sandbox (`--no-sandbox`): own session, parent-death signal, stdio, fds, cwd, exec.
pub fn plain(prepared: &Prepared, channels: Channels) -> ! {
    let Channels { stdio, report, ctl } = channels;
    drop(ctl);
    let report = report.as_fd();
    let result = (|| -> Result<(), SetupFailure> {
        let life = |step: &str, e: io::Error| SetupFailure::new(Layer::Lifecycle, step, &e);
        die_with(prepared.supervisor).map_err(|e| life("parent-death signal", e))?;
        sys::reset_signal_dispositions();
        sigprocmask(
            SigmaskHow::SIG_SETMASK,
            Some(&nix::sys::signal::SigSet::empty()),
            None,
        )
        .map_err(|e| life("unblock signals", e.into()))?;
        nix::unistd::setsid().map_err(|e| life("setsid", e.into()))?;
        install_stdio(&stdio).map_err(|e| life("stdio", e))?;
        drop(stdio);
        sys::cloexec_from(3).map_err(|e| life("close-on-exec fds", e))?;
        nix::unistd::chdir(&prepared.spec.cwd)
            .map_err(|e| SetupFailure::new(Layer::Filesystem, "chdir", &e.into()))?;
        protocol::send_frame(report, &Frame::Ready);
        Err(exec_failure(prepared, exec(prepared)))
    })();
    match result {
        Ok(()) => sys::exit_now(127),
        Err(failure) => report_failure(report, failure),
    }
}

/// Converts argv/env to C strings (done by the supervisor before forking).
pub fn c_strings<I, S>(items: I) -> Result<Vec<CString>, String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<[u8]>,
{
    items
        .into_iter()
        .map(|s| CString::new(s.as_ref()).map_err(|_| "contains a NUL byte".to_string()))
        .collect()
}
