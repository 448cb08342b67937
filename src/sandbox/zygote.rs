//! The spawn server: a small process forked from a long-lived supervisor (aipd) while it is
//! still small, which forks every sandbox on the supervisor's behalf.
//!
//! Why: `fork` copies the forking process's page tables and every setup process's exit or
//! `execve` tears a copy down again, so a sandbox forked from aipd costs time in proportion to
//! aipd's memory, which grows with its live sessions (measured: session start p50 11 ms with one
//! session open, 74 ms with 200), and each reaper (pid 1 of a sandbox, a fork that never execs)
//! pins a copy-on-write image of aipd. Forked from a process that stays at its start-up size, a
//! spawn costs the same with 500 sessions open as with none, and reapers share nearly all pages.
//!
//! Shape: aipd forks the server once (on the sandbox spawner thread, so the server's
//! parent-death signal fires only when aipd dies). Each request is the [`SandboxSpec`] (JSON,
//! its generated files' contents raw after it, except those the server holds from the previous
//! request with the same bytes) plus the three stdio descriptors
//! (`SCM_RIGHTS`); the server runs the same `prepare` and `launch` as an in-process spawn and
//! answers as soon as the reaper has handed over (not after the server's exec): the reaper's pid,
//! pidfd, the setup report's read end, control socket, listener descriptors, the planned layer
//! report and cgroup, or the error. The client reads the setup's report to the exec (or the
//! first failure) itself, as an in-process spawn does, and turns that into a [`SandboxChild`]
//! that observes the reaper through its pidfd (it is the server's child, not aipd's); the
//! server reaps it. Requests are served one at a time, as the spawner thread does.
//!
//! Lifetime: the server ignores termination signals (aipd decides when sessions end), dies with
//! aipd (parent-death `SIGKILL`, checked against a race at start), and exits when its socket
//! closes; its reapers then die of their own parent-death signal, which kills each sandbox.
//! If the server breaks (dies, answers garbage, times out), the request fails, the error is
//! logged once, and later spawns fork in-process again: slower, never weaker.

use std::collections::HashMap;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpid, getppid};
use serde::{Deserialize, Serialize};

use super::cgroup::Cgroup;
use super::error::SandboxError;
use super::handle::{Detached, SandboxChild};
use super::protocol::MAX_LISTENERS;
use super::report::LayerReport;
use super::spec::SandboxSpec;
use super::supervise::{Launched, SETUP_TIMEOUT};
use super::sys::{self, Forked};

/// Longest message either side accepts (a spec carries generated files; a few KiB in practice).
const MAX_MESSAGE: usize = 8 << 20;
/// Descriptors in a reply: pidfd, control socket, listeners.
const MAX_FDS: usize = MAX_LISTENERS + 2;
/// The client's wait for an answer: the setup's own timeout (10 s) plus slack.
const REPLY_TIMEOUT: Duration = Duration::from_secs(15);

/// The supervisor's handle on a running spawn server.
pub struct SpawnServer {
    /// `None` once the server broke; spawns then fork in-process.
    conn: Mutex<Option<Conn>>,
    pid: Pid,
}

/// The client's end of the server's socket, and what the server holds from the last request.
struct Conn {
    sock: UnixStream,
    /// The generated files of the last request sent, by path: the server keeps the same map
    /// (see [`Request::reused`]).
    sent: Files,
}

/// Generated files' contents by path, as both sides keep the last request's.
type Files = HashMap<PathBuf, Arc<[u8]>>;

static INSTALLED: OnceLock<SpawnServer> = OnceLock::new();

/// Makes `server` fork every enabled sandbox of this process from now on. Returns `false` if one
/// was installed already.
pub fn install(server: SpawnServer) -> bool {
    INSTALLED.set(server).is_ok()
}

/// The installed server, unless none was installed or it broke.
pub(super) fn installed() -> Option<&'static SpawnServer> {
    INSTALLED.get().filter(|s| s.healthy())
}

impl SpawnServer {
    /// Forks the server now. Call it early, while the process is small: everything the process
    /// holds at this moment is what each sandbox's fork copies. `prewarm_netns` > 0 keeps that
    /// many network namespaces ready inside the server (root only).
    pub fn start(prewarm_netns: usize) -> Result<SpawnServer, SandboxError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(SandboxError::supervisor("spawn server socket pair"))?;
        let parent = getpid();
        // Forked on the spawner thread: the server's parent-death signal is tied to the thread
        // that forked it, and that thread lives as long as the process.
        let forked = super::supervise::run_on_spawner(move || match sys::fork() {
            Ok(Forked::Child) => serve(theirs, parent, prewarm_netns),
            Ok(Forked::Parent(pid)) => Ok(pid),
            Err(e) => Err(e),
        })?;
        let pid = forked.map_err(SandboxError::supervisor("fork the spawn server"))?;
        ours.set_read_timeout(Some(REPLY_TIMEOUT))
            .map_err(SandboxError::supervisor("spawn server socket timeout"))?;
        Ok(SpawnServer {
            conn: Mutex::new(Some(Conn {
                sock: ours,
                sent: Files::new(),
            })),
            pid,
        })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.pid.as_raw() as u32
    }

    fn healthy(&self) -> bool {
        self.conn.lock().is_ok_and(|s| s.is_some())
    }

    /// Starts `spec` through the server; the same contract as [`super::spawn`].
    pub fn spawn(
        &self,
        spec: &SandboxSpec,
        stdio: [OwnedFd; 3],
    ) -> Result<SandboxChild, SandboxError> {
        let mut guard = self.conn.lock().map_err(|_| SandboxError::Supervisor {
            step: "spawn server lock".into(),
            source: io::Error::other("poisoned"),
        })?;
        let Some(conn) = guard.as_mut() else {
            return Err(broken_error(io::Error::other("it stopped earlier")));
        };
        let reused = reusable(spec, &conn.sent);
        let light = encode_request(spec, &reused).map_err(|e| SandboxError::InvalidSpec {
            field: "spec".into(),
            message: format!("cannot be encoded for the spawn server: {e}"),
        })?;
        let body: Vec<&[u8]> = std::iter::once(&light[..])
            .chain(
                spec.files
                    .iter()
                    .zip(&reused)
                    .filter(|(_, reused)| !**reused)
                    .map(|(f, _)| &f.contents[..]),
            )
            .collect();
        let raw: Vec<RawFd> = stdio.iter().map(|f| f.as_raw_fd()).collect();
        let mut buf = Vec::new();
        let exchange = send_message(&conn.sock, &body, &raw).and_then(|()| {
            // Sent whole: the server holds these now (or, failing to decode them, exits).
            conn.sent = files_by_path(spec);
            drop(stdio);
            recv_message(&conn.sock, &mut buf)?.ok_or_else(|| io::Error::other("it exited"))
        });
        let (reply, fds) = match exchange.and_then(|fds| {
            let reply = serde_json::from_slice::<Reply>(&buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok((reply, fds))
        }) {
            Ok(r) => r,
            Err(e) => {
                // A desynchronized or dead server cannot be trusted with the next request.
                tracing::error!(error = %e, "sandbox spawn server failed; sandboxes are forked by this process from now on");
                if let Some(conn) = guard.take() {
                    let _ = conn.sock.shutdown(std::net::Shutdown::Both);
                }
                let _ = nix::sys::signal::kill(self.pid, Signal::SIGKILL);
                return Err(broken_error(e));
            }
        };
        drop(guard);
        match reply {
            Reply::Failed(e) => Err(e),
            Reply::Started {
                pid,
                has_setup,
                has_ctl,
                report,
                cgroup,
            } => {
                let mut fds = fds.into_iter();
                let Some(pidfd) = fds.next() else {
                    // Unsupervisable: end it by pid (the reaper is alive, still unreaped).
                    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                    return Err(broken_error(io::Error::other("no pidfd in the answer")));
                };
                // The setup runs on; its deadline counts from here, not from the wait for the
                // lock (concurrent starts queue on it).
                let deadline = Instant::now() + SETUP_TIMEOUT;
                // Each flagged descriptor is taken only when flagged: the listeners follow.
                let setup = match has_setup.then(|| fds.next()) {
                    None => None,
                    Some(Some(fd)) => Some(std::fs::File::from(fd)),
                    Some(None) => {
                        // Without the report, neither the exec nor a failure would be known.
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
                        return Err(broken_error(io::Error::other(
                            "no setup report in the answer",
                        )));
                    }
                };
                let ctl = match has_ctl.then(|| fds.next()) {
                    None => None,
                    Some(Some(fd)) => Some(fd),
                    Some(None) => {
                        // Without the control socket the server's exit status would be lost.
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
                        return Err(broken_error(io::Error::other(
                            "no control socket in the answer",
                        )));
                    }
                };
                let child = SandboxChild::attach(Detached {
                    pid: Pid::from_raw(pid),
                    pidfd,
                    ctl,
                    report: *report,
                    listeners: fds.collect(),
                    cgroup: cgroup.map(|(path, relative)| Cgroup { path, relative }),
                });
                Launched {
                    child,
                    setup,
                    deadline,
                }
                .finish()
            }
        }
    }
}

impl Drop for SpawnServer {
    fn drop(&mut self) {
        if let Ok(mut conn) = self.conn.lock()
            && let Some(conn) = conn.take()
        {
            let _ = conn.sock.shutdown(std::net::Shutdown::Both);
        }
        // It exits at end-of-file; reaping it keeps no zombie behind.
        let _ = waitpid(self.pid, None);
    }
}

fn broken_error(source: io::Error) -> SandboxError {
    SandboxError::Supervisor {
        step: "sandbox spawn server".into(),
        source,
    }
}

/// A request's body: `[JSON length u32 LE][the spec as JSON, each generated file's contents
/// left out][the contents of each generated file not reused, raw, in order]`.
///
/// Why not the spec as JSON alone: the generated files are copies of host `/etc` files (~145
/// KiB by default), and base64 plus JSON escaping made each request cost 0.55 ms to encode and
/// 0.13 ms to decode, a third of a spawn. Raw, they go from the spec to the socket with no copy
/// on this side. Why reuse: sending, copying and freeing them still cost ~0.2 ms a spawn, and
/// they rarely change between two sessions (only `/etc/passwd` and `/etc/group` do, when each
/// session has its own uid).
#[derive(Serialize, Deserialize)]
struct Request<S> {
    spec: S,
    /// Byte length of each generated file's contents, in `spec.files` order.
    contents: Vec<usize>,
    /// Files (indices into `spec.files`, ascending) whose contents are not in this request: the
    /// same bytes as the previous request's file at the same path. The client decides by
    /// comparing the bytes; the server checks the length.
    reused: Vec<usize>,
}

/// Which of `spec`'s files the server holds already, as `sent` (the last request's files) says.
fn reusable(spec: &SandboxSpec, sent: &Files) -> Vec<bool> {
    spec.files
        .iter()
        .map(|f| {
            sent.get(&f.path)
                .is_some_and(|c| Arc::ptr_eq(c, &f.contents) || **c == *f.contents)
        })
        .collect()
}

fn files_by_path(spec: &SandboxSpec) -> Files {
    spec.files
        .iter()
        .map(|f| (f.path.clone(), Arc::clone(&f.contents)))
        .collect()
}

/// The length prefix and the JSON part of `spec`'s request; the contents of its files not
/// `reused` follow it.
fn encode_request(spec: &SandboxSpec, reused: &[bool]) -> Result<Vec<u8>, serde_json::Error> {
    let light = spec.without_file_contents();
    let mut out = vec![0u8; 4];
    serde_json::to_writer(
        &mut out,
        &Request {
            spec: &light,
            contents: spec.files.iter().map(|f| f.contents.len()).collect(),
            reused: (0..spec.files.len()).filter(|&i| reused[i]).collect(),
        },
    )?;
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    Ok(out)
}

/// The other side of [`encode_request`], with `held` the previous request's files. Strict: the
/// lengths must account for every byte and match the files one to one, a reused file must be
/// held with that length, and no file may carry contents inside the JSON.
fn decode_request(body: &[u8], held: &Files) -> Result<SandboxSpec, String> {
    let (len, rest) = body
        .split_first_chunk::<4>()
        .ok_or("shorter than its length prefix")?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > rest.len() {
        return Err("JSON length past the end".into());
    }
    let (json, mut raw) = rest.split_at(len);
    let Request::<SandboxSpec> {
        mut spec,
        contents,
        reused,
    } = serde_json::from_slice(json).map_err(|e| e.to_string())?;
    if contents.len() != spec.files.len() {
        return Err("content lengths do not match the generated files".into());
    }
    if !reused.is_sorted_by(|a, b| a < b) || reused.last().is_some_and(|&i| i >= contents.len()) {
        return Err("reused files out of order or out of range".into());
    }
    let mut reused = reused.into_iter().peekable();
    for (i, (file, n)) in spec.files.iter_mut().zip(contents).enumerate() {
        if !file.contents.is_empty() {
            return Err("generated file contents inside the JSON".into());
        }
        if reused.next_if_eq(&i).is_some() {
            match held.get(&file.path) {
                Some(c) if c.len() == n => file.contents = Arc::clone(c),
                _ => return Err(format!("{} is not held as reused", file.path.display())),
            }
            continue;
        }
        if n > raw.len() {
            return Err("generated file contents do not match their lengths".into());
        }
        let (mine, next) = raw.split_at(n);
        file.contents = Arc::from(mine);
        raw = next;
    }
    if !raw.is_empty() {
        return Err("bytes left over after the generated files".into());
    }
    Ok(spec)
}

#[derive(Serialize, Deserialize)]
enum Reply {
    Started {
        pid: i32,
        /// The setup report's read end follows the pidfd: the client reads it to the server's
        /// exec (see `supervise::Launched`).
        has_setup: bool,
        has_ctl: bool,
        report: Box<LayerReport>,
        cgroup: Option<(PathBuf, String)>,
    },
    Failed(SandboxError),
}

/// The server's life: never returns.
fn serve(sock: UnixStream, parent: Pid, prewarm_netns: usize) -> ! {
    let armed = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_ok();
    if !armed || getppid() != parent {
        // The supervisor died before the signal was armed (or it cannot be armed).
        sys::exit_now(1);
    }
    sys::reset_signal_dispositions();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGPIPE,
    ] {
        sys::ignore_signal(s);
    }
    // Nothing of the supervisor's stays open here (client sockets, listeners, log sockets).
    let fd = sock.as_raw_fd() as u32;
    if fd > 3 {
        let _ = sys::close_range(3, fd - 1);
    }
    let _ = sys::close_range(fd + 1, u32::MAX);
    let _ = nix::sys::prctl::set_name(c"aipd-spawner");
    // This process starts every session's sandbox: sessions of one daemon server share a spec,
    // so they share its root template.
    super::mounts::Template::enable();
    if prewarm_netns > 0 {
        super::netpool::enable(prewarm_netns);
    }
    // Reused: a request is ~150 KiB, which malloc would otherwise map and unmap each time. Not
    // kept past 1 MiB: every fork of this process copies the page tables of what it holds.
    let mut body = Vec::new();
    // The last request's files, which the next may reuse.
    let mut held = Files::new();
    loop {
        if body.capacity() > 1 << 20 {
            body = Vec::new();
        }
        reap_children();
        match wait_readable(&sock) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(_) => sys::exit_now(1),
        }
        match recv_message(&sock, &mut body) {
            Ok(Some(fds)) => {
                let spec = match decode_request(&body, &held) {
                    Ok(spec) => spec,
                    Err(e) => {
                        // The client's idea of what is held here may now be wrong: answer,
                        // then stop, so that it forks its sandboxes itself from now on.
                        let reply = Reply::Failed(SandboxError::Died(format!("bad request: {e}")));
                        let encoded = serde_json::to_vec(&reply).unwrap_or_default();
                        let _ = send_message(&sock, &[&encoded], &[]);
                        sys::exit_now(1);
                    }
                };
                held = files_by_path(&spec);
                let (reply, fds) = std::panic::catch_unwind(move || handle(spec, fds))
                    .unwrap_or_else(|_| {
                        (
                            Reply::Failed(SandboxError::Died("the spawn server panicked".into())),
                            Vec::new(),
                        )
                    });
                let encoded = serde_json::to_vec(&reply).unwrap_or_default();
                let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
                if send_message(&sock, &[&encoded], &raw).is_err() {
                    // Nobody will supervise this sandbox: end it.
                    if let (Reply::Started { .. }, Some(pidfd)) = (&reply, fds.first()) {
                        let _ = sys::pidfd_send_signal(pidfd.as_fd(), Signal::SIGKILL);
                    }
                    sys::exit_now(1);
                }
            }
            Ok(None) => sys::exit_now(0),
            Err(_) => sys::exit_now(1),
        }
    }
}

/// One request: the spec and exactly three stdio descriptors.
fn handle(spec: SandboxSpec, fds: Vec<OwnedFd>) -> (Reply, Vec<OwnedFd>) {
    let failed = |e: SandboxError| (Reply::Failed(e), Vec::new());
    let Ok(stdio) = <[OwnedFd; 3]>::try_from(fds) else {
        return failed(SandboxError::Died(
            "bad request: not three stdio fds".into(),
        ));
    };
    // Answered as soon as the reaper has handed over: the client reads the rest of the setup's
    // report itself, so the answer travels while the setup goes on.
    let started = super::prepare::prepare(&spec)
        .and_then(|prepared| super::supervise::launch(prepared, stdio))
        .and_then(|launched| {
            let setup = launched.setup.map(OwnedFd::from);
            launched
                .child
                .detach()
                .map(|d| (d, setup))
                .map_err(SandboxError::supervisor("duplicate the pidfd"))
        });
    match started {
        Err(e) => failed(e),
        Ok((d, setup)) => {
            let reply = Reply::Started {
                pid: d.pid.as_raw(),
                has_setup: setup.is_some(),
                has_ctl: d.ctl.is_some(),
                report: Box::new(d.report),
                cgroup: d.cgroup.map(|c| (c.path, c.relative)),
            };
            let mut fds = vec![d.pidfd];
            fds.extend(setup);
            fds.extend(d.ctl);
            fds.extend(d.listeners);
            (reply, fds)
        }
    }
}

/// Reaps every exited reaper (they are the server's children).
fn reap_children() {
    while let Ok(status) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
        if status == WaitStatus::StillAlive {
            break;
        }
    }
}

/// Waits up to a second for a request, so exited reapers are reaped at least that often.
fn wait_readable(sock: &UnixStream) -> io::Result<bool> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(1000u16)) {
        Ok(n) => Ok(n > 0),
        Err(nix::errno::Errno::EINTR) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// `[len u32 LE][fd count u32 LE][body]`, the body given in parts (sent as they are, not
/// joined), the descriptors attached to the first byte.
fn send_message(sock: &UnixStream, body: &[&[u8]], fds: &[RawFd]) -> io::Result<()> {
    let len = body.iter().map(|p| p.len()).sum::<usize>();
    if len > MAX_MESSAGE || fds.len() > MAX_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "message too large",
        ));
    }
    let mut header = [0u8; 8];
    header[..4].copy_from_slice(&(len as u32).to_le_bytes());
    header[4..].copy_from_slice(&(fds.len() as u32).to_le_bytes());
    let cmsgs: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(fds)]
    };
    let parts: Vec<&[u8]> = std::iter::once(&header[..])
        .chain(body.iter().copied())
        .collect();
    let iov: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
    let mut sent = sendmsg::<()>(sock.as_raw_fd(), &iov, &cmsgs, MsgFlags::MSG_NOSIGNAL, None)?;
    // A stream socket may take less than all of it; the rest goes without the descriptors.
    for part in parts {
        let skip = sent.min(part.len());
        sent -= skip;
        (&*sock).write_all(&part[skip..])?;
    }
    Ok(())
}

/// The other side of [`send_message`]: the body into `body` (replaced), the descriptors
/// returned; `None` at end-of-file.
fn recv_message(sock: &UnixStream, body: &mut Vec<u8>) -> io::Result<Option<Vec<OwnedFd>>> {
    let mut header = [0u8; 8];
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (n, fds) = loop {
        let mut iov = [IoSliceMut::new(&mut header)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(r) => {
                let mut fds = Vec::new();
                for cmsg in r.cmsgs()? {
                    if let ControlMessageOwned::ScmRights(raw) = cmsg {
                        fds.extend(raw.into_iter().map(sys::own_fd_from_kernel));
                    }
                }
                if r.flags.contains(MsgFlags::MSG_CTRUNC) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "too many fds"));
                }
                break (r.bytes, fds);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if n == 0 {
        return Ok(None);
    }
    (&*sock).read_exact(&mut header[n..])?;
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let count = u32::from_le_bytes([header[4], header[5], header[6], header[7]]) as usize;
    if len > MAX_MESSAGE || count != fds.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message header",
        ));
    }
    body.clear();
    body.resize(len, 0);
    (&*sock).read_exact(body)?;
    Ok(Some(fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::error::SetupFailure;
    use crate::sandbox::spec::Layer;

    #[test]
    fn errors_keep_their_text_and_layer_across_the_socket() {
        let errors = [
            SandboxError::Unavailable {
                layer: Layer::Landlock,
                reason: "ABI 3 < floor 4".into(),
                hint: "upgrade".into(),
            },
            SandboxError::Setup(SetupFailure::reason(Layer::Filesystem, "bind /x", "ENOENT")),
            SandboxError::supervisor("fork")(io::Error::from_raw_os_error(libc::EAGAIN)),
            SandboxError::Timeout(10_000),
        ];
        for e in errors {
            let text = e.to_string();
            let layer = e.layer();
            let wire = serde_json::to_vec(&e).unwrap();
            let back: SandboxError = serde_json::from_slice(&wire).unwrap();
            assert_eq!(back.to_string(), text);
            assert_eq!(back.layer(), layer);
        }
    }

    fn spec_with_files() -> SandboxSpec {
        let mut spec = crate::sandbox::spec::tests::minimal();
        spec.files = ["passwd", "empty", "ld.so.cache"]
            .iter()
            .enumerate()
            .map(|(i, name)| crate::sandbox::spec::GeneratedFile {
                path: PathBuf::from("/etc").join(name),
                // Every byte value, so nothing depends on the contents being text.
                contents: (0..i * 300).map(|b| b as u8).collect::<Vec<u8>>().into(),
                mode: 0o644,
            })
            .collect();
        spec
    }

    /// The body as the client sends it after `sent`, joined.
    fn request_body_after(spec: &SandboxSpec, sent: &Files) -> Vec<u8> {
        let reused = reusable(spec, sent);
        let mut body = encode_request(spec, &reused).unwrap();
        for (f, reused) in spec.files.iter().zip(reused) {
            if !reused {
                body.extend_from_slice(&f.contents);
            }
        }
        body
    }

    fn request_body(spec: &SandboxSpec) -> Vec<u8> {
        request_body_after(spec, &Files::new())
    }

    fn json_len(body: &[u8]) -> usize {
        u32::from_le_bytes(body[..4].try_into().unwrap()) as usize
    }

    #[test]
    fn requests_carry_generated_files_raw_and_decode_to_the_same_spec() {
        let spec = spec_with_files();
        let body = request_body(&spec);
        assert_eq!(
            body.len(),
            4 + json_len(&body) + 900,
            "contents travel raw, once"
        );
        assert_eq!(decode_request(&body, &Files::new()).unwrap(), spec);
    }

    #[test]
    fn unchanged_files_are_not_sent_again_and_decode_to_what_the_server_holds() {
        let first = spec_with_files();
        let held = files_by_path(&first);
        // Equal bytes in another buffer (a new plan of the same host files) are reused too.
        let mut next = first.clone();
        next.files[2].contents = Arc::from(next.files[2].contents.to_vec());
        next.files[1].contents = Arc::from(vec![b'x'; 300]);
        assert_eq!(reusable(&next, &held), [true, false, true]);
        let body = request_body_after(&next, &held);
        assert_eq!(
            body.len(),
            4 + json_len(&body) + 300,
            "only the changed file travels"
        );
        let decoded = decode_request(&body, &held).unwrap();
        assert_eq!(decoded, next);
        assert!(Arc::ptr_eq(
            &decoded.files[2].contents,
            &held[&next.files[2].path]
        ));
        // A file at a new path is sent even when its bytes are known under another.
        let mut moved = first.clone();
        moved.files[2].path = "/etc/elsewhere".into();
        assert_eq!(reusable(&moved, &held), [true, true, false]);
    }

    #[test]
    fn reuse_the_server_cannot_honour_is_refused() {
        let first = spec_with_files();
        let held = files_by_path(&first);
        let body = request_body_after(&first, &held);
        assert_eq!(body.len(), 4 + json_len(&body), "everything reused");
        assert!(decode_request(&body, &Files::new()).is_err(), "not held");
        let mut other = held.clone();
        other.insert("/etc/ld.so.cache".into(), Arc::from(vec![0u8; 599]));
        assert!(
            decode_request(&body, &other).is_err(),
            "held with another length"
        );
        let json = &body[4..];
        let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let reframe = |v: &serde_json::Value| {
            let json = serde_json::to_vec(v).unwrap();
            let mut b = (json.len() as u32).to_le_bytes().to_vec();
            b.extend_from_slice(&json);
            b
        };
        for (what, reused) in [
            ("out of order", serde_json::json!([2, 1, 0])),
            ("twice", serde_json::json!([0, 1, 1, 2])),
            ("out of range", serde_json::json!([0, 1, 2, 3])),
        ] {
            value["reused"] = reused;
            assert!(decode_request(&reframe(&value), &held).is_err(), "{what}");
        }
        value["reused"] = serde_json::json!([0, 1, 2]);
        assert_eq!(decode_request(&reframe(&value), &held).unwrap(), first);
        let mut with_bytes = reframe(&value);
        with_bytes.extend_from_slice(&first.files[2].contents);
        assert!(
            decode_request(&with_bytes, &held).is_err(),
            "contents sent as well as reused"
        );
    }

    #[test]
    fn the_json_part_is_the_spec_with_only_the_contents_left_out() {
        let spec = spec_with_files();
        let mut expected = spec.clone();
        for f in &mut expected.files {
            f.contents = Arc::from([]);
        }
        assert_eq!(spec.without_file_contents(), expected);
    }

    #[test]
    fn requests_whose_lengths_do_not_add_up_are_refused() {
        let spec = spec_with_files();
        let body = request_body(&spec);
        let json_len = u32::from_le_bytes(body[..4].try_into().unwrap()) as usize;
        let json = &body[4..4 + json_len];
        let raw = &body[4 + json_len..];
        let reframe = |json: &[u8], raw: &[u8]| {
            let mut b = (json.len() as u32).to_le_bytes().to_vec();
            b.extend_from_slice(json);
            b.extend_from_slice(raw);
            b
        };
        let mut value: serde_json::Value = serde_json::from_slice(json).unwrap();
        let cases = [
            ("truncated", body[..body.len() - 1].to_vec()),
            ("trailing byte", [&body[..], &[0]].concat()),
            ("no prefix", body[..3].to_vec()),
            ("JSON length past the end", {
                let mut b = body.clone();
                b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
                b
            }),
            ("one length missing", {
                value["contents"].as_array_mut().unwrap().pop();
                reframe(&serde_json::to_vec(&value).unwrap(), raw)
            }),
            ("contents inside the JSON as well", {
                let mut v: serde_json::Value = serde_json::from_slice(json).unwrap();
                v["spec"]["files"][0]["contents"] = "eA==".into();
                reframe(&serde_json::to_vec(&v).unwrap(), raw)
            }),
        ];
        for (what, bad) in cases {
            assert!(
                decode_request(&bad, &Files::new()).is_err(),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn messages_carry_bodies_and_descriptors_in_order() {
        let (a, b) = UnixStream::pair().unwrap();
        let f1 = std::fs::File::open("/dev/null").unwrap();
        let (p_r, _p_w) = nix::unistd::pipe().unwrap();
        let body = vec![7u8; 300_000];
        let sender = std::thread::spawn(move || {
            let (head, tail) = body.split_at(1000);
            send_message(&a, &[head, &[], tail], &[f1.as_raw_fd(), p_r.as_raw_fd()]).unwrap();
            a
        });
        let mut got = vec![1u8; 5];
        let fds = recv_message(&b, &mut got).unwrap().unwrap();
        let a = sender.join().unwrap();
        assert_eq!(got.len(), 300_000);
        assert!(got.iter().all(|&x| x == 7));
        assert_eq!(fds.len(), 2);
        let kind = |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_fd()).unwrap().st_mode & libc::S_IFMT;
        assert_eq!(kind(&fds[0]), libc::S_IFCHR);
        assert_eq!(kind(&fds[1]), libc::S_IFIFO);
        drop(a);
        assert!(recv_message(&b, &mut got).unwrap().is_none());
    }
}
