//! The only raw syscalls of the crate: one documented safe wrapper per call that `nix`, `caps`,
//! `landlock` and `seccompiler` do not offer safely. Every wrapper states its scope (calling
//! thread, whole process, children), whether it can be undone, whether it is async-signal-safe,
//! and which errnos matter to us. No policy and no ordering logic lives here: callers in
//! `sandbox::*` decide what to call and when.
//!
//! "Async-signal-safe" matters for the code that runs between `fork` and `execve` in a child of a
//! multi-threaded process. glibc's `fork` resets malloc's locks in the child, so allocation is
//! fine there; locks owned by *Rust* code in other threads (stdout, the environment lock, tracing
//! writers) are not reset, so child code never touches them.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::signal::{SigHandler, Signal};
use nix::unistd::Pid;

/// Result of [`fork`] and [`clone_parent`]: which side of the split we are on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forked {
    /// In the parent; the child's pid (in the parent's pid namespace).
    Parent(Pid),
    /// In the new child process.
    Child,
}

/// `fork(2)` through glibc, so malloc stays usable in the child even when the caller is
/// multi-threaded. Scope: creates a process holding a copy of only the calling thread.
/// Async-signal-safe: no (it runs atfork handlers), which is why only the dedicated spawner
/// thread calls it. Errors: `EAGAIN` (pid or rlimit exhausted), `ENOMEM`.
pub fn fork() -> io::Result<Forked> {
    if PID_NAMESPACE_LOST.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(namespace_lost());
    }
    // SAFETY: the child side only runs code that avoids locks held by other threads of the parent
    // (documented at the module level and in `sandbox::child`); glibc's fork makes malloc safe.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Ok(nix::unistd::ForkResult::Child) => Ok(Forked::Child),
        Err(errno) => Err(errno.into()),
    }
}

/// Set when the spawner thread's pid namespace for children could not be put back: no fork may
/// happen from this process afterwards (see [`fork_into_new_pid_namespace`]).
static PID_NAMESPACE_LOST: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// [`fork`] straight into a new pid namespace, whose pid 1 the child is: `unshare(CLONE_NEWPID)`
/// makes the calling thread's next child the first process of a new namespace, and right after
/// the fork the thread's setting is put back (`setns` to our own namespace through a pidfd of our
/// process), so other forks stay ordinary. Saves the intermediate process an `unshare` in a
/// child would need. Scope: the calling thread's namespace for new children, restored before
/// returning. Needs `CAP_SYS_ADMIN`. Should restoring fail, a later fork would land in this
/// sandbox's pid namespace: every fork of this process is refused from then on. Errors: as
/// [`fork`], `EPERM`, `ENOSPC` (`user.max_pid_namespaces`), `ENOSYS` before Linux 5.8.
pub fn fork_into_new_pid_namespace() -> Result<Forked, PidForkError> {
    use nix::sched::{CloneFlags, setns, unshare};
    if PID_NAMESPACE_LOST.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(PidForkError::Fork(namespace_lost()));
    }
    let own = pidfd_open(nix::unistd::getpid()).map_err(PidForkError::Fork)?;
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| PidForkError::Namespace(e.into()))?;
    let forked = fork();
    if matches!(forked, Ok(Forked::Child)) {
        return forked.map_err(PidForkError::Fork);
    }
    if setns(&own, CloneFlags::CLONE_NEWPID).is_err() {
        PID_NAMESPACE_LOST.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Ok(Forked::Parent(pid)) = forked {
            let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        }
        return Err(PidForkError::Fork(namespace_lost()));
    }
    forked.map_err(PidForkError::Fork)
}

/// Why [`fork_into_new_pid_namespace`] failed: the pid namespace could not be made (a sandbox
/// layer; the caller reports it as such), or the fork itself.
#[derive(Debug)]
pub enum PidForkError {
    Namespace(io::Error),
    Fork(io::Error),
}

fn namespace_lost() -> io::Error {
    io::Error::other("the spawner thread's pid namespace could not be restored; no more sandboxes")
}

/// Raw `clone(CLONE_PARENT | SIGCHLD)` without a new stack: fork semantics, but the new process
/// becomes a child of the caller's *parent*, so the caller can exit right away and the supervisor
/// waits on the new process directly (no intermediate waiting process). When the caller has
/// unshared `CLONE_NEWPID`, the new process is pid 1 of the new pid namespace.
///
/// Scope: the calling process must be single-threaded (it is a fresh fork). glibc's per-thread
/// cached tid in the child is stale (it still names the caller); the child must not rely on
/// glibc thread-identity bookkeeping (we never create threads there nor use pthread mutexes with
/// owner tracking). Errors: `EINVAL` when the caller is a pid-namespace init, `EAGAIN`, `ENOMEM`.
pub fn clone_parent() -> io::Result<Forked> {
    let flags = (libc::CLONE_PARENT | libc::SIGCHLD) as libc::c_ulong;
    // SAFETY: a null stack pointer makes clone behave like fork (the child continues on a copy of
    // the caller's stack); the remaining pointer arguments are null because no CLONE_*TID or
    // CLONE_SETTLS flag is passed. The caller is single-threaded, so no lock can be held by
    // another thread at the moment of the copy.
    let rc = unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Ok(Forked::Parent(Pid::from_raw(pid as libc::pid_t))),
    }
}

/// Size of the stack a [`spawn_sharing_memory`] child runs on (reserved, not committed: only the
/// pages it touches cost anything).
const SHARED_MEMORY_STACK: usize = 1 << 20;

/// `clone(CLONE_VM | CLONE_VFORK | SIGCHLD)` with a stack of its own (what `posix_spawn` does):
/// runs `child` in a new process that shares the caller's memory while the caller is suspended,
/// until the child calls `execve` (it then has its own memory) or exits. Nothing else is shared:
/// the child has its own copy of the fd table, signal dispositions, credentials and namespaces,
/// as after `fork`. No page table is copied, and the child's `execve` has no copy to tear down,
/// which is most of the cost of a fork followed by an exec.
///
/// Scope: the caller must be single-threaded (the child runs with the caller's thread state,
/// including malloc's, which only works because nothing else uses it until the child is done).
/// `child` must end in `execve` or `_exit`; returning or panicking ends the child with status
/// 127. What it captured is consumed by it (its destructors never run, so nothing the caller
/// owns is freed); its allocations stay in the caller's heap. Returns the child's pid once it
/// has exec'd or exited. Errors: `EAGAIN`, `ENOMEM` (nothing was run then).
pub fn spawn_sharing_memory<F: FnOnce()>(child: F) -> io::Result<Pid> {
    extern "C" fn trampoline<F: FnOnce()>(slot: *mut libc::c_void) -> libc::c_int {
        // SAFETY: `slot` is the `Option<F>` in `spawn_sharing_memory`'s frame, which stays alive
        // and untouched while the caller is suspended (CLONE_VFORK); only this child takes it.
        let child = unsafe { &mut *slot.cast::<Option<F>>() }.take();
        if let Some(child) = child {
            // Unwinding must not reach clone's frame: there is nothing above it on this stack.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(child));
        }
        exit_now(127)
    }

    // SAFETY: sysconf has no pointer arguments.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
    // SAFETY: a fresh anonymous mapping at an address the kernel picks; no memory of ours is
    // touched.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            SHARED_MEMORY_STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let unmap = |stack: *mut libc::c_void| {
        // SAFETY: `stack` is the mapping made above, no longer used by anyone (the child has
        // exec'd or exited, or was never created).
        unsafe { libc::munmap(stack, SHARED_MEMORY_STACK) };
    };
    // A guard page at the bottom: an overflow faults instead of writing into other memory.
    // SAFETY: the first page of our own mapping.
    if unsafe { libc::mprotect(stack, page, libc::PROT_NONE) } == -1 {
        let err = io::Error::last_os_error();
        unmap(stack);
        return Err(err);
    }
    // The stack grows down from the (16-byte aligned) end of the mapping.
    let top = stack.wrapping_byte_add(SHARED_MEMORY_STACK);
    let mut slot = Some(child);
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD;
    // SAFETY: `trampoline::<F>` matches the expected signature and never returns into clone's
    // frame; `top` is the end of a mapping of ours that nothing else uses; the argument points to
    // `slot`, which outlives the child's use of it (we are suspended until it execs or exits).
    let rc = unsafe {
        libc::clone(
            trampoline::<F>,
            top,
            flags,
            (&raw mut slot).cast::<libc::c_void>(),
        )
    };
    let err = io::Error::last_os_error();
    unmap(stack);
    if rc == -1 {
        return Err(err);
    }
    // The child took the closure; whatever it left is its business, not ours to drop.
    std::mem::forget(slot);
    Ok(Pid::from_raw(rc))
}

/// `_exit(2)`: ends the process without running atexit handlers or flushing Rust's stdio (whose
/// locks may be held by threads that do not exist in a forked child). Async-signal-safe: yes.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: `_exit` takes no pointers and never returns.
    unsafe { libc::_exit(code) }
}

/// `close_range(first, last, 0)`: closes every fd in the range. Scope: calling process (all
/// threads share the table). Irreversible. Async-signal-safe: yes. Errors: `EINVAL` when
/// `first > last`; `ENOSYS` before Linux 5.9.
pub fn close_range(first: u32, last: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; fds closed here are never used again by the caller (the
    // callers only pass ranges that contain no fd they own).
    let rc = unsafe { libc::syscall(libc::SYS_close_range, first, last, 0u32) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `close_range(first, ~0, CLOSE_RANGE_CLOEXEC)`: marks every fd from `first` on close-on-exec,
/// so they vanish atomically at `execve` while staying usable until then. Scope: calling process.
/// Async-signal-safe: yes. Errors: `ENOSYS` before Linux 5.11.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: plain integer arguments; no fd is closed, only flagged.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `prctl(PR_SET_SECUREBITS, bits)`. Scope: calling thread's credentials, inherited by children
/// and across exec. Irreversible for the `*_LOCKED` bits. Needs `CAP_SETPCAP`. Errors: `EPERM`.
pub fn set_securebits(bits: u32) -> io::Result<()> {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `prctl(PR_GET_SECUREBITS)`. Scope: calling thread. Never fails on Linux ≥ 2.6.26.
pub fn securebits() -> io::Result<u32> {
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::prctl(libc::PR_GET_SECUREBITS, 0, 0, 0, 0) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

/// The result of a raw `syscall`: `-1` means the error is in `errno`.
fn checked(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The descriptor a raw `syscall` that creates one returned.
fn new_fd(rc: libc::c_long) -> io::Result<OwnedFd> {
    let fd = checked(rc)?;
    // SAFETY: the kernel just created this fd for us; nobody else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_open(pid, 0)`: a handle on a process that cannot be confused with a later process that
/// reuses the pid. Errors: `ESRCH` (gone), `ENOSYS` before Linux 5.3.
pub fn pidfd_open(pid: Pid) -> io::Result<OwnedFd> {
    // SAFETY: integer arguments only.
    new_fd(unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0u32) })
}

/// `pidfd_send_signal(pidfd, sig, NULL, 0)`. Errors: `ESRCH` once the process has been reaped
/// (never another process: that is the point of a pidfd), `EPERM`.
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: Signal) -> io::Result<()> {
    // SAFETY: the fd is borrowed for the call; the siginfo pointer is null as documented.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal as libc::c_int,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)`: the kernel's Landlock ABI
/// version. Errors: `ENOSYS` (not built in), `EOPNOTSUPP` (built in but disabled at boot); both
/// mean "no Landlock" to the caller.
pub fn landlock_abi_version() -> io::Result<u32> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1 << 0;
    // SAFETY: a null attribute pointer with size 0 is the documented way to query the version.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc as u32)
    }
}

/// A new tmpfs of `size` bytes whose root directory has `mode`, as a detached mount carrying
/// `attrs` (`fsopen` + `fsconfig` + `fsmount`): reachable only through the returned descriptor
/// until it is attached somewhere. Needs `CAP_SYS_ADMIN`; `ENOSYS` before 5.2.
pub fn detached_tmpfs(size: u64, mode: u32, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: the file system name is a valid NUL-terminated string.
    let context = new_fd(unsafe {
        libc::syscall(libc::SYS_fsopen, c"tmpfs".as_ptr(), libc::FSOPEN_CLOEXEC)
    })?;
    let fsconfig = |command: libc::fsconfig_command,
                    key: Option<&std::ffi::CStr>,
                    value: Option<&std::ffi::CStr>| {
        let ptr = |s: Option<&std::ffi::CStr>| s.map_or(std::ptr::null(), |s| s.as_ptr());
        // SAFETY: key and value are null or valid NUL-terminated strings that outlive the call.
        checked(unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                context.as_raw_fd(),
                command,
                ptr(key),
                ptr(value),
                0,
            )
        })
    };
    let options = [
        // Named as a tmpfs mounted with mount(2) is, in the sandbox's mount table.
        (c"source", c"tmpfs".to_owned()),
        (
            c"size",
            std::ffi::CString::new(size.to_string()).map_err(io::Error::other)?,
        ),
        (
            c"mode",
            std::ffi::CString::new(format!("{mode:o}")).map_err(io::Error::other)?,
        ),
    ];
    for (key, value) in &options {
        fsconfig(libc::FSCONFIG_SET_STRING, Some(key), Some(value))?;
    }
    fsconfig(libc::FSCONFIG_CMD_CREATE, None, None)?;
    // SAFETY: integer arguments only.
    new_fd(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            context.as_raw_fd(),
            libc::FSMOUNT_CLOEXEC,
            attrs as libc::c_uint,
        )
    })
}

/// `open_tree(fd, "", OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC | AT_EMPTY_PATH [| AT_RECURSIVE])`: a
/// detached copy of the mount at `fd` (a bind mount not attached anywhere yet). Non-recursive
/// unless asked, so mounts below the source are not carried along. Needs `CAP_SYS_ADMIN` in the
/// mount namespace's user namespace. Errors: `EPERM`; `EINVAL` when the fd is not in our mount
/// namespace or, in a user namespace, when a non-recursive copy would reveal what locked child
/// mounts cover; `ENOSYS` before 5.2.
pub fn open_tree_clone(fd: BorrowedFd<'_>, recursive: bool) -> io::Result<OwnedFd> {
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC | libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: the path is a valid NUL-terminated empty string; the fd is borrowed for the call.
    new_fd(unsafe { libc::syscall(libc::SYS_open_tree, fd.as_raw_fd(), c"".as_ptr(), flags) })
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH [| AT_RECURSIVE], {attr_set, attr_clr})` on the mount
/// `fd` refers to (attached or detached). Only the bits named change, so flags the kernel locked
/// in a user namespace (e.g. `nosuid` inherited from the host) are never cleared by accident.
/// Errors: `EPERM` (clearing a locked flag), `ENOSYS` before 5.12.
pub fn mount_setattr(
    fd: BorrowedFd<'_>,
    attr_set: u64,
    attr_clr: u64,
    recursive: bool,
) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set,
        attr_clr,
        propagation: 0,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH as u32;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: `attr` lives for the call and its size is passed; the path is an empty C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `move_mount(from, "", to, "", F_EMPTY_PATH | T_EMPTY_PATH)`: attaches the detached mount
/// `from` on top of the file or directory `to` refers to. Errors: `EPERM`, `EINVAL`.
pub fn move_mount(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both fds are borrowed for the call; both paths are valid empty C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets the `IFF_UP` flag on the loopback interface of the caller's network namespace with
/// `SIOCGIFFLAGS`/`SIOCSIFFLAGS`. Needs `CAP_NET_ADMIN` in the namespace's owning user
/// namespace. Used only while `sandbox::net` cannot do it yet.
pub fn loopback_up() -> io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: `req` is a valid `ifreq` that outlives the call; the socket fd is open.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS filled the `ifru_flags` member of the union.
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    req.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    // SAFETY: as above; the kernel only reads `req`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `setpriority(PRIO_PROCESS, gettid(), 19)`: the calling thread gets the smallest share of a
/// busy CPU, but (unlike SCHED_IDLE) a steady one, so a kernel lock it holds is never held for
/// long. Scope: calling thread. Errors: `EPERM` (not for lowering).
pub fn lowest_priority() -> io::Result<()> {
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: integer arguments only; PRIO_PROCESS with a thread id applies to that thread.
    checked(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, 19) }.into()).map(drop)
}

/// Resets every catchable signal to its default action (`SIG_DFL`). A forked child inherits the
/// supervisor's handlers (tokio installs some) and ignored signals (Rust ignores `SIGPIPE`), and
/// ignored signals survive `execve`. Scope: calling process. Errors are impossible for valid
/// signal numbers; `SIGKILL`/`SIGSTOP` are skipped.
pub fn reset_signal_dispositions() {
    for signal in Signal::iterator() {
        if matches!(signal, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: installing SIG_DFL runs no code of ours in signal context.
        let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigDfl) };
    }
}

/// Waits until the process behind `pidfd` has exited (the pidfd polls readable from then on,
/// reaped or not). `timeout_ms`: `None` blocks, `Some(0)` only checks. Returns whether it exited.
/// Scope: none. Errors: `EINVAL` for a descriptor that is not a pidfd.
pub fn wait_pidfd(pidfd: BorrowedFd<'_>, timeout_ms: Option<u16>) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    loop {
        let mut fds = [PollFd::new(pidfd, PollFlags::POLLIN)];
        let timeout = timeout_ms.map_or(PollTimeout::NONE, PollTimeout::from);
        match poll(&mut fds, timeout) {
            Ok(0) => return Ok(false),
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ignores `signal` (`SIG_IGN`). Scope: calling process; reset to default by
/// [`reset_signal_dispositions`] in every process forked from it before it execs.
pub fn ignore_signal(signal: Signal) {
    // SAFETY: SIG_IGN runs no code of ours in signal context.
    let _ = unsafe { nix::sys::signal::signal(signal, SigHandler::SigIgn) };
}

/// Takes ownership of an fd the kernel just created for us and returned as a raw number
/// (`SCM_RIGHTS` in `recvmsg`, `fcntl(F_DUPFD_CLOEXEC)`). Must be called exactly once per fd.
pub fn own_fd_from_kernel(fd: RawFd) -> OwnedFd {
    // SAFETY: the kernel created this fd for this process in the call that returned it; no
    // other owner exists, and callers wrap each returned number exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// `prctl(PR_CAPBSET_DROP, cap)` for every capability up to `last` (the kernel's
/// `cap_last_cap`): empties the bounding set, so no exec can ever regain a capability. Scope:
/// calling thread, inherited. Irreversible. Needs `CAP_SETPCAP`. `EINVAL` for numbers the kernel
/// does not know is ignored.
pub fn clear_bounding_set(last: u32) -> io::Result<()> {
    for cap in 0..=last {
        // Each drop allocates and commits new credentials (several microseconds); reading is
        // free. A thread whose set was already emptied (the spawner thread's, inherited by every
        // fork) then drops nothing.
        // SAFETY: integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong, 0, 0, 0) } == 0 {
            continue;
        }
        // SAFETY: integer arguments only.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc == -1 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(err);
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Probes: syscalls the canary sandbox (`aip doctor`) and the escape tests attempt from inside a
// sandbox, each with arguments chosen so the kernel *without* our filter answers differently from
// the filter (success, `EFAULT`, `EBADF`, `ENOTTY`…). Only integers and null pointers are passed,
// so nothing is dereferenced in our memory. They return the raw result: `Ok(value)` or the errno.

fn raw_result(rc: libc::c_long) -> io::Result<i64> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// `clone3(NULL, 0)`: `ENOSYS` from our filter, `EINVAL`/`EFAULT` from the kernel.
pub fn probe_clone3() -> io::Result<i64> {
    // SAFETY: a null `clone_args` with size 0 is rejected by the kernel before any use.
    raw_result(unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<libc::c_void>(), 0usize) })
}

/// `io_uring_setup(1, NULL)`: `ENOSYS` from our filter, `EFAULT` from the kernel.
pub fn probe_io_uring_setup() -> io::Result<i64> {
    // SAFETY: a null params pointer makes the kernel fail with EFAULT without writing anything.
    raw_result(unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            1u32,
            std::ptr::null::<libc::c_void>(),
        )
    })
}

/// `keyctl(KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0)`: succeeds or `ENOKEY` in the
/// kernel, `EPERM` from our filter.
pub fn probe_keyctl() -> io::Result<i64> {
    // SAFETY: integer arguments only.
    raw_result(unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            0 as libc::c_long,
            -3 as libc::c_long,
            0 as libc::c_long,
        )
    })
}

/// `bpf(BPF_PROG_LOAD, NULL, 0)`: `EFAULT`/`EINVAL`/`EPERM` from the kernel, `EPERM` from ours.
pub fn probe_bpf() -> io::Result<i64> {
    // SAFETY: a null attribute pointer with size 0 is rejected before any use.
    raw_result(unsafe {
        libc::syscall(
            libc::SYS_bpf,
            5 as libc::c_long,
            std::ptr::null::<libc::c_void>(),
            0u32,
        )
    })
}

/// `perf_event_open(NULL, 0, -1, -1, 0)`: `EFAULT` from the kernel, `EPERM` from our filter.
pub fn probe_perf_event_open() -> io::Result<i64> {
    // SAFETY: a null attribute pointer is rejected with EFAULT before any use.
    raw_result(unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::null::<libc::c_void>(),
            0,
            -1,
            -1,
            0u64,
        )
    })
}

/// `userfaultfd(O_CLOEXEC)`: a new fd (closed at once) or `EPERM`.
pub fn probe_userfaultfd() -> io::Result<i64> {
    // SAFETY: integer argument only; a returned fd is closed right away below.
    let rc = raw_result(unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) })?;
    drop(own_fd_from_kernel(rc as RawFd));
    Ok(rc)
}

/// `ptrace(PTRACE_TRACEME)`: succeeds in the kernel, `EPERM` from our filter.
pub fn probe_ptrace_traceme() -> io::Result<i64> {
    // SAFETY: integer arguments only; PTRACE_TRACEME has no effect without a tracer.
    raw_result(unsafe { libc::syscall(libc::SYS_ptrace, libc::PTRACE_TRACEME, 0, 0usize, 0usize) })
}

/// `personality(ADDR_NO_RANDOMIZE)`: succeeds in the kernel, `EPERM` from our filter. The old
/// persona is restored when the call succeeded.
pub fn probe_personality_no_randomize() -> io::Result<i64> {
    const ADDR_NO_RANDOMIZE: libc::c_ulong = 0x0040000;
    // SAFETY: integer argument only.
    let old = raw_result(unsafe { libc::syscall(libc::SYS_personality, ADDR_NO_RANDOMIZE) })?;
    // SAFETY: integer argument only (restores the previous persona).
    unsafe { libc::syscall(libc::SYS_personality, old as libc::c_ulong) };
    Ok(old)
}

/// `ioctl(fd, TIOCSTI, "x")`: `ENOTTY`/`EIO`/`EPERM` from the kernel (not a terminal, or no
/// `CAP_SYS_ADMIN` with `legacy_tiocsti=0`), `EPERM` from our filter.
pub fn probe_tiocsti(fd: BorrowedFd<'_>) -> io::Result<i64> {
    let byte: libc::c_char = b'x' as libc::c_char;
    // SAFETY: the pointer refers to a live local byte for the duration of the call.
    raw_result(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSTI, &byte) } as libc::c_long)
}

/// `setns(-1, 0)`: `EBADF` from the kernel, `EPERM` from our filter.
pub fn probe_setns() -> io::Result<i64> {
    // SAFETY: integer arguments only.
    raw_result(unsafe { libc::syscall(libc::SYS_setns, -1, 0) })
}

/// `clone(flags | SIGCHLD)` without a new stack (fork semantics); the child exits at once with
/// status 0 and is reaped here. Used to check that namespace flags are refused.
pub fn probe_clone(flags: libc::c_int) -> io::Result<i64> {
    // SAFETY: as in `clone_parent`: null stack, no pointer-taking flags; the child only calls
    // `_exit`.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match rc {
        -1 => Err(io::Error::last_os_error()),
        0 => exit_now(0),
        pid => {
            let _ = nix::sys::wait::waitpid(Pid::from_raw(pid as libc::pid_t), None);
            Ok(pid)
        }
    }
}

/// `socket(domain, type, protocol)` with raw numbers (families `nix` has no names for); a created
/// socket is closed at once.
pub fn probe_socket(
    domain: libc::c_int,
    ty: libc::c_int,
    protocol: libc::c_int,
) -> io::Result<i64> {
    // SAFETY: integer arguments only; a returned fd is closed right away below.
    let rc = raw_result(unsafe { libc::socket(domain, ty, protocol) } as libc::c_long)?;
    drop(own_fd_from_kernel(rc as RawFd));
    Ok(rc)
}
