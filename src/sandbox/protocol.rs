//! The two channels between the supervisor and the sandbox's setup processes.
//!
//! * The report pipe (close-on-exec write end in every setup process): newline-delimited JSON
//!   [`Frame`]s describing what each layer achieved, or the [`SetupFailure`] that stopped it.
//!   End-of-file means every writer is gone: either the server exec'd (success) or the setup
//!   processes died. Bounded to [`MAX_REPORT`] bytes.
//! * The control socket (`SOCK_SEQPACKET`): the first setup process sends the reaper's pid and
//!   the egress listener fds (`SCM_RIGHTS`), or, forked directly (root), the reaper sends the
//!   fds (the supervisor ignores the pid then: it has it from `fork`); the reaper checks the
//!   supervisor's end is still open once its parent-death signal is armed ([`peer_alive`]), and
//!   sends the server's exit status over it before it exits.

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::error::SetupFailure;
use super::report::LayerStatus;

/// Upper bound on the report stream.
pub const MAX_REPORT: usize = 64 * 1024;
/// Upper bound on listener fds passed in one message.
pub const MAX_LISTENERS: usize = 64;

/// One report from a setup process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Frame {
    Failure(SetupFailure),
    Namespaces {
        user_namespace: bool,
        created: Vec<String>,
    },
    Network {
        listeners: usize,
    },
    Filesystem {
        mounts: usize,
    },
    Landlock {
        status: LayerStatus,
    },
    Privileges {
        no_new_privs: bool,
        securebits_locked: bool,
        uid: u32,
        gid: u32,
    },
    Seccomp {
        filters: u32,
    },
    /// The policy allowed seccomp to degrade and the kernel refused the filters.
    SeccompDegraded {
        reason: String,
    },
    /// Sent right before `execve`: end-of-file after it means the server is running.
    Ready,
}

/// Writes one frame (one `write` for frames below `PIPE_BUF`). Errors are ignored: a broken
/// pipe means the supervisor is gone, and the parent-death signal ends us anyway.
pub fn send_frame(fd: BorrowedFd<'_>, frame: &Frame) {
    let mut line = serde_json::to_vec(frame).unwrap_or_default();
    line.push(b'\n');
    let mut rest = line.as_slice();
    while !rest.is_empty() {
        match nix::unistd::write(fd, rest) {
            Ok(n) => rest = &rest[n..],
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
    }
}

/// Reads frames until end-of-file or the deadline. Returns `Err(TimedOut)` on the deadline.
///
/// Waits for the hang-up (every writer gone: the server exec'd or the setup died) before reading
/// anything, instead of waking up for each frame: a setup sends seven, and each wake-up is a
/// context switch competing with the setup for the CPU. The frames fit in the pipe many times
/// over (a few hundred bytes against its 64 KiB), so no writer ever blocks on a full pipe.
pub fn read_frames(mut pipe: std::fs::File, deadline: Instant) -> io::Result<Vec<Frame>> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // No event requested: poll reports only POLLHUP/POLLERR, which writes do not raise.
        let mut fds = [PollFd::new(pipe.as_fd(), PollFlags::empty())];
        let ms = u16::try_from(left.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.len() > MAX_REPORT {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "sandbox setup report too large",
                    ));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(buf
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect())
}

/// Control messages.
const TAG_PID: u8 = b'P';
const TAG_EXIT: u8 = b'X';

/// How the server ended, as reported by the reaper.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Code(i32),
    Signal(i32),
}

/// First setup process → supervisor: the reaper's pid and the listener fds.
pub fn send_pid(ctl: BorrowedFd<'_>, pid: Pid, listeners: &[OwnedFd]) -> io::Result<()> {
    let mut msg = [0u8; 5];
    msg[0] = TAG_PID;
    msg[1..].copy_from_slice(&pid.as_raw().to_le_bytes());
    let raw: Vec<RawFd> = listeners.iter().map(|f| f.as_raw_fd()).collect();
    let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&raw)]
    };
    sendmsg::<()>(
        ctl.as_raw_fd(),
        &[IoSlice::new(&msg)],
        &cmsgs,
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Supervisor side of [`send_pid`]. `Ok(None)` when the sender died first (end-of-file).
pub fn recv_pid(ctl: BorrowedFd<'_>, timeout: Duration) -> io::Result<Option<(Pid, Vec<OwnedFd>)>> {
    if !wait_readable(ctl, timeout)? {
        return Err(io::ErrorKind::TimedOut.into());
    }
    let mut msg = [0u8; 5];
    let mut space = nix::cmsg_space!([RawFd; MAX_LISTENERS]);
    let mut iov = [IoSliceMut::new(&mut msg)];
    let received = recvmsg::<()>(
        ctl.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in received.cmsgs()? {
        if let ControlMessageOwned::ScmRights(raw) = cmsg {
            fds.extend(raw.into_iter().map(super::sys::own_fd_from_kernel));
        }
    }
    let n = received.bytes;
    if n == 0 {
        return Ok(None);
    }
    if n != 5 || msg[0] != TAG_PID {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad message from sandbox setup",
        ));
    }
    let pid = i32::from_le_bytes([msg[1], msg[2], msg[3], msg[4]]);
    Ok(Some((Pid::from_raw(pid), fds)))
}

/// Reaper side of the parent-death race: after arming its parent-death signal, the reaper
/// checks that the supervisor still holds its end of the control socket (only the supervisor
/// does). A hang-up means the supervisor died before the signal was armed.
pub fn peer_alive(ctl: BorrowedFd<'_>) -> bool {
    // A unix SOCK_SEQPACKET peer that closed leaves us fully shut down: POLLHUP.
    let mut fds = [PollFd::new(ctl, PollFlags::empty())];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(0) => true,
        Ok(_) => !fds[0]
            .revents()
            .is_some_and(|r| r.intersects(PollFlags::POLLHUP | PollFlags::POLLERR)),
        Err(_) => false,
    }
}

/// Reaper → supervisor: how the server ended.
pub fn send_exit(ctl: BorrowedFd<'_>, ended: Ended) {
    let (kind, value) = match ended {
        Ended::Code(c) => (0u8, c),
        Ended::Signal(s) => (1u8, s),
    };
    let mut msg = [0u8; 6];
    msg[0] = TAG_EXIT;
    msg[1] = kind;
    msg[2..].copy_from_slice(&value.to_le_bytes());
    let _ = nix::sys::socket::send(ctl.as_raw_fd(), &msg, MsgFlags::MSG_NOSIGNAL);
}

/// Supervisor side of [`send_exit`], non-blocking (called after the reaper was reaped).
pub fn try_recv_exit(ctl: BorrowedFd<'_>) -> Option<Ended> {
    let mut msg = [0u8; 6];
    loop {
        match nix::sys::socket::recv(ctl.as_raw_fd(), &mut msg, MsgFlags::MSG_DONTWAIT) {
            Ok(6) if msg[0] == TAG_EXIT => {
                let value = i32::from_le_bytes([msg[2], msg[3], msg[4], msg[5]]);
                return Some(if msg[1] == 0 {
                    Ended::Code(value)
                } else {
                    Ended::Signal(value)
                });
            }
            // Other messages (none expected) are skipped.
            Ok(n) if n > 0 => continue,
            _ => return None,
        }
    }
}

fn wait_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_millis().min(u128::from(u16::MAX))).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) if left.is_zero() => return Ok(false),
            Ok(0) => continue,
            Ok(_) => return Ok(true),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

    use super::*;

    #[test]
    fn pid_and_listener_fds_cross_the_control_socket_in_order() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let files: Vec<OwnedFd> = (0..3)
            .map(|i| {
                let mut f = tempfile::tempfile().unwrap();
                write!(f, "listener {i}").unwrap();
                OwnedFd::from(f)
            })
            .collect();
        send_pid(a.as_fd(), Pid::from_raw(4242), &files).unwrap();
        let (pid, fds) = recv_pid(b.as_fd(), Duration::from_secs(1))
            .unwrap()
            .unwrap();
        assert_eq!(pid, Pid::from_raw(4242));
        assert_eq!(fds.len(), 3);
        for (i, fd) in fds.into_iter().enumerate() {
            let mut f = std::fs::File::from(fd);
            use std::io::{Read, Seek};
            f.rewind().unwrap();
            let mut s = String::new();
            f.read_to_string(&mut s).unwrap();
            assert_eq!(s, format!("listener {i}"));
        }
        drop(a);
        assert!(
            recv_pid(b.as_fd(), Duration::from_secs(1))
                .unwrap()
                .is_none(),
            "end-of-file means no handoff"
        );
    }

    #[test]
    fn liveness_and_exit_status_round_trip() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        assert!(peer_alive(b.as_fd()));
        send_exit(b.as_fd(), Ended::Signal(15));
        assert_eq!(try_recv_exit(a.as_fd()), Some(Ended::Signal(15)));
        assert_eq!(try_recv_exit(a.as_fd()), None);
        drop(a);
        assert!(!peer_alive(b.as_fd()));
    }

    #[test]
    fn frames_survive_the_pipe_and_failures_are_found() {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        send_frame(w.as_fd(), &Frame::Filesystem { mounts: 3 });
        let failure = SetupFailure::reason(
            super::super::spec::Layer::Landlock,
            "restrict_self",
            "EPERM",
        );
        send_frame(w.as_fd(), &Frame::Failure(failure.clone()));
        drop(w);
        let frames = read_frames(
            std::fs::File::from(r),
            Instant::now() + Duration::from_secs(1),
        )
        .unwrap();
        assert_eq!(
            frames,
            vec![Frame::Filesystem { mounts: 3 }, Frame::Failure(failure)]
        );
    }
}
