//! The OS sandbox: every wrapped MCP server runs in fresh namespaces, on a tmpfs root assembled
//! from an allowlist, under Landlock and a default-deny seccomp allowlist, without capabilities,
//! with a reaper as pid 1, and dies with its supervisor. [`SandboxSpec`] is plain data (built by
//! `launch::plan`); [`spawn`] applies the layers in the order below and returns a
//! [`SandboxChild`] whose [`LayerReport`] says which layers are in force. This module never
//! reads policy files and never decides what to allow.
//!
//! # Shape and why
//! A sandbox costs one fork (two unprivileged) and one `CLONE_VM` start, and leaves two
//! processes: the reaper and the server.
//! 1. **Supervisor, before forking** (`prepare`): validate the spec, check the Landlock floor
//!    against the kernel, pick cgroup v2 or rlimits (and create the cgroup), compile the seccomp
//!    filters (once per process), build the `execve` strings. Refusals happen here.
//! 2. **Spawner thread** (`supervise`): a dedicated long-lived thread forks through glibc, so
//!    malloc keeps working in the child of our multi-threaded process, and the parent-death
//!    signal (tied to the forking *thread*) only fires when the supervisor process dies. Its
//!    capability bounding set is emptied once (root), so its children inherit an empty one.
//!    A long-lived supervisor with many sessions (aipd) calls [`use_spawn_server`] instead: a
//!    small process forked at its start that runs steps 1 and 2 on its behalf, because a fork's
//!    cost grows with the forking process's memory (`zygote`).
//! 3. **Namespaces** (`setup::init`, `setup::isolate`): as root the spawner thread unshares the
//!    pid namespace and forks the reaper straight into it (then puts its own setting back). An
//!    unprivileged pid namespace must belong to a user namespace that only a single-threaded
//!    process can create, so there a first setup process (`setup::first`) does this step and
//!    `clone(CLONE_PARENT)`s the reaper, which is then the supervisor's own child too. The
//!    step: parent-death signal, close every inherited fd, enter the cgroup, create the user
//!    namespace first when not root (own uid/gid mapped), unshare mount, (pid,) net (or join
//!    one made ahead by `netpool`), ipc, uts and cgroup namespaces, set the host name, bring up
//!    the network namespace (`net::setup_in_netns`: `lo`, capture routes, egress listeners,
//!    whose fds go to the supervisor over `SCM_RIGHTS`).
//! 4. **Reaper, pid 1 inside** (`setup::build_and_serve`, `mounts`, `reaper`): arms its
//!    parent-death signal and checks the supervisor's end of the control socket is still open
//!    (closing the race), builds the root: private propagation,
//!    binds opened with `openat2(RESOLVE_NO_SYMLINKS)` and made read-only/nosuid/nodev/noexec
//!    while detached, fresh `/proc` (`hidepid=invisible`), minimal `/dev`, private `/tmp` and
//!    `/dev/shm`, generated `/etc` files, then `pivot_root` and detach the host tree; becomes
//!    non-dumpable with empty bounding, ambient and inheritable sets and `no_new_privs`; starts
//!    the server with `clone(CLONE_VM | CLONE_VFORK)` (no page tables copied; the reaper waits
//!    until the server's `execve`), keeps only `CAP_KILL`, and reaps and forwards signals until
//!    the server exits.
//! 5. **Server** (`setup::server_steps`): `setsid`, stdio on 0-2 and every other fd
//!    close-on-exec, cwd, rlimits (`RLIMIT_CORE=0`…), the Landlock ruleset (built while paths
//!    can still be opened), securebits locked, all capability sets emptied, uid/gid switch,
//!    `no_new_privs`, Landlock enforced, the seccomp filter last (kill on foreign arch/x32,
//!    ENOSYS for clone3/io_uring, allowlist, EPERM), signal mask cleared, `execve`.
//!
//! Each step reports to the supervisor over a close-on-exec pipe; the end of that pipe after the
//! "ready" frame means the server runs, a failure frame names the layer and step, so `spawn`
//! fails synchronously with the reason.
//!
//! Killing the reaper kills the pid namespace: that is how `kill_all`, drop and the supervisor's
//! death (even `SIGKILL`, through the reaper's parent-death signal) take every process with them.

pub mod net;

mod cgroup;
mod error;
pub mod features;
mod handle;
pub mod landlock;
mod mounts;
mod namespaces;
mod netpool;
mod prepare;
mod privileges;
pub mod probe;
mod protocol;
mod reaper;
mod report;
mod resources;
pub mod seccomp;
mod setup;
mod spec;
mod supervise;
mod sys;
mod zygote;

use std::os::fd::OwnedFd;

pub use error::{SandboxError, SetupFailure};
pub use handle::{SandboxChild, SandboxExit};
pub use report::{
    CapabilitiesReport, FilesystemReport, LandlockReport, LayerReport, LayerStatus,
    LifecycleReport, NamespacesReport, NetworkReport, ResourcesReport, SeccompReport,
};
pub use spec::{
    Access, CpuLimit, GeneratedFile, LandlockSpec, Layer, Limit, Mount, MountKind, Resources,
    SandboxSpec, SeccompProfile, Symlink, User,
};
pub use zygote::SpawnServer;

/// Keeps up to `size` fresh network namespaces ready so spawns skip creating one (about a
/// millisecond). For long-lived root supervisors (aipd); returns `false`, changing nothing, when
/// not running as root. Each namespace is used by exactly one sandbox.
pub fn prewarm_network_namespaces(size: usize) -> bool {
    netpool::enable(size)
}

/// Makes root sandboxes of one spec share a read-only template of their root tmpfs, built on
/// the first spawn and cloned by the next ones (see `docs/sandbox.md`, Filesystem). For
/// long-lived supervisors that start many sandboxes of one spec (aipd's spawn server does it
/// itself); a one-shot run would only pay for the template.
fn reuse_root_templates() {
    mounts::Template::enable();
}

/// Sets this process up to start many sandboxes, as aipd does: a spawn server forked now
/// (call it while the process is small: each sandbox's fork copies what the server holds) forks
/// them from here on, keeping `prewarm` network namespaces ready (root only; 0 for none) and a
/// root template per spec. Returns the server's pid, or why there is none: this process then
/// forks sandboxes itself, with the same namespace pool and templates.
pub fn use_spawn_server(prewarm: usize) -> Result<u32, SandboxError> {
    match SpawnServer::start(prewarm) {
        Ok(server) => {
            let pid = server.pid();
            zygote::install(server);
            Ok(pid)
        }
        Err(e) => {
            reuse_root_templates();
            if prewarm > 0 {
                prewarm_network_namespaces(prewarm);
            }
            Err(e)
        }
    }
}

/// Starts the command of `spec` in a new sandbox (through the spawn server when one is installed,
/// see [`SpawnServer`]) with `stdio` as its stdin, stdout and stderr.
///
/// Blocks until the server has been exec'd (two to three milliseconds) or a layer failed; the
/// error then names the layer and the rule. May be called from any thread, including async
/// runtimes' worker threads (the fork itself happens in the spawn server or on a dedicated
/// spawner thread).
pub fn spawn(spec: &SandboxSpec, stdio: [OwnedFd; 3]) -> Result<SandboxChild, SandboxError> {
    if spec.enabled
        && let Some(server) = zygote::installed()
    {
        // From the calling thread: a detour through the spawner thread cost two more thread
        // wake-ups per spawn, and a request allocates only its few KiB of JSON here (the
        // generated files are sent from `spec` as they are).
        return server.spawn(spec, stdio);
    }
    let prepared = prepare::prepare(spec)?;
    supervise::on_spawner_thread(prepared, stdio)
}
