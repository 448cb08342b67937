//! aipd's only unsafe code, one safe wrapper per operation the safe crates do not offer:
//! taking ownership of a socket systemd passed (socket activation), `SO_PEERGROUPS` (the
//! peer's supplementary groups as the kernel recorded them at `connect`), and glibc's malloc
//! tuning (fewer arenas, returning freed memory), which keeps aipd's resident memory small:
//! every sandbox starts with forks of aipd, whose cost grows with it.
//!
//! Must not: decide anything; callers check what the descriptors are and what the ids mean.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Takes ownership of a descriptor systemd passed at start (`LISTEN_FDS`).
///
/// The caller must pass each descriptor number systemd announced for this process
/// (`LISTEN_PID` matched) exactly once, before anything else could have taken it.
pub fn adopt_passed_fd(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 3 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "socket activation passes descriptors from 3 up",
        ));
    }
    nix::fcntl::fcntl(
        // SAFETY: only borrowed for the duration of the fcntl call, which fails with EBADF if
        // the number is not an open descriptor.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        nix::fcntl::FcntlArg::F_GETFD,
    )
    .map_err(io::Error::from)?;
    // SAFETY: the descriptor is open (checked above) and, per this function's contract, was
    // handed to this process by systemd and is adopted once, so nothing else owns or closes it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Most supplementary groups read from `SO_PEERGROUPS` (the kernel's NGROUPS_MAX is 65536; a
/// larger answer is an error rather than a truncation, so no group is silently ignored).
const MAX_GROUPS: usize = 65_536;

/// The supplementary groups of the process that connected `sock` (Linux ≥ 4.13).
pub fn peer_groups(sock: &impl AsFd) -> io::Result<Vec<u32>> {
    let fd = sock.as_fd().as_raw_fd();
    let mut groups: Vec<libc::gid_t> = vec![0; 64];
    loop {
        let mut len = (groups.len() * std::mem::size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` is a live, writable buffer of exactly `len` bytes; the kernel writes
        // at most `len` bytes and stores the needed size in `len`.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast(),
                &mut len,
            )
        };
        let count = len as usize / std::mem::size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(count);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ERANGE) && count > groups.len() && count <= MAX_GROUPS {
            groups.resize(count, 0);
            continue;
        }
        return Err(err);
    }
}

/// Caps glibc's malloc arenas (default: eight per CPU). aipd's threads mostly wait on I/O, so
/// a few arenas cost no contention and hold far less memory than dozens. Call before threads
/// exist. Returns false where not supported.
pub fn limit_malloc_arenas(n: i32) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; M_ARENA_MAX takes any positive int.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, n) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = n;
        false
    }
}

/// Returns memory freed by ended sessions to the kernel (glibc keeps it otherwise).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only releases free pages of the allocator's own heaps; it is
        // thread-safe (it takes each arena's lock).
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_groups_of_a_socketpair_are_ours() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let mut mine: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        let mut theirs = peer_groups(&a).unwrap();
        mine.sort_unstable();
        theirs.sort_unstable();
        mine.dedup();
        theirs.dedup();
        assert_eq!(theirs, mine);
    }

    #[test]
    fn adopting_a_closed_or_stdio_descriptor_fails() {
        assert!(adopt_passed_fd(1).is_err());
        assert!(adopt_passed_fd(987_654).is_err());
    }
}
