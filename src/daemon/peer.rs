//! Who is on the other end of a Unix socket: uid, gid and pid from `SO_PEERCRED`, supplementary
//! groups from `SO_PEERGROUPS` (both recorded by the kernel at `connect`, not claimed by the
//! client), and the user name for logs.
//!
//! Must not: decide who is allowed (that is `config::Allow` and the control socket's check).

use std::io;
use std::os::unix::net::UnixStream;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// A connected peer's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
    pub groups: Vec<u32>,
    /// The user name, if the uid has one.
    pub user: Option<String>,
}

impl Peer {
    /// Reads the credentials of the process that connected `stream`.
    pub fn of(stream: &UnixStream) -> io::Result<Peer> {
        let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
        let groups = super::sys::peer_groups(stream)?;
        let user = nix::unistd::User::from_uid(cred.uid().into())
            .ok()
            .flatten()
            .map(|u| u.name);
        Ok(Peer {
            uid: cred.uid(),
            gid: cred.gid(),
            pid: cred.pid(),
            groups,
            user,
        })
    }

    /// `alice (uid 1001)` or `uid 1001`.
    pub fn describe(&self) -> String {
        match &self.user {
            Some(name) => format!("{name} (uid {})", self.uid),
            None => format!("uid {}", self.uid),
        }
    }

    /// Whether the peer's primary or any supplementary group is in `groups`.
    pub fn in_any(&self, groups: &std::collections::BTreeSet<u32>) -> bool {
        groups.contains(&self.gid) || self.groups.iter().any(|g| groups.contains(g))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_of_a_socketpair_are_ours() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = Peer::of(&a).unwrap();
        assert_eq!(p.uid, nix::unistd::getuid().as_raw());
        assert_eq!(p.gid, nix::unistd::getgid().as_raw());
        assert_eq!(p.pid, std::process::id() as i32);
        assert!(p.describe().contains(&format!("uid {}", p.uid)));
    }
}
