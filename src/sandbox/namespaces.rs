//! Namespaces: which ones a sandbox gets and the user namespace's id maps. As root the
//! supervisor creates the namespaces with its real capabilities (no user namespace: immune to
//! distributions that restrict unprivileged user namespaces); as an ordinary user it first
//! creates a user namespace that maps only its own uid and gid. This module never mounts.

use std::io;

use nix::sched::{CloneFlags, unshare};

use super::net::NetMode;

/// The namespaces unshared after the (optional) user namespace, in one call. The new pid
/// namespace applies to the children of the caller, which is why the caller forks right after.
pub fn flags(net: &NetMode) -> CloneFlags {
    let mut flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWCGROUP;
    if !matches!(net, NetMode::Host) {
        flags |= CloneFlags::CLONE_NEWNET;
    }
    flags
}

/// Names of the namespaces in `flags`, for the report.
pub fn names(flags: CloneFlags, user: bool) -> Vec<String> {
    let table = [
        (CloneFlags::CLONE_NEWNS, "mount"),
        (CloneFlags::CLONE_NEWPID, "pid"),
        (CloneFlags::CLONE_NEWNET, "net"),
        (CloneFlags::CLONE_NEWIPC, "ipc"),
        (CloneFlags::CLONE_NEWUTS, "uts"),
        (CloneFlags::CLONE_NEWCGROUP, "cgroup"),
    ];
    let mut out: Vec<String> = user.then(|| "user".to_string()).into_iter().collect();
    out.extend(
        table
            .iter()
            .filter(|(f, _)| flags.contains(*f))
            .map(|(_, n)| (*n).to_string()),
    );
    out
}

/// The `uid_map`/`gid_map` line mapping one outside id to the same id inside.
pub fn identity_map_line(id: u32) -> String {
    format!("{id} {id} 1\n")
}

/// Creates a user namespace for the calling (single-threaded) process and maps its own uid and
/// gid to themselves. `setgroups` is denied first, as the kernel requires for an unprivileged
/// gid map; the process keeps its supplementary groups (shown as `nogroup` inside).
/// Errors: `EPERM`/`ENOSPC` from `unshare` when unprivileged user namespaces are disabled.
pub fn enter_user_namespace(uid: u32, gid: u32) -> io::Result<()> {
    unshare(CloneFlags::CLONE_NEWUSER)?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/uid_map", identity_map_line(uid))?;
    std::fs::write("/proc/self/gid_map", identity_map_line(gid))?;
    Ok(())
}

/// Hint for a failed user-namespace creation.
pub const USERNS_HINT: &str = "unprivileged user namespaces are disabled on this system \
     (user.max_user_namespaces, kernel.unprivileged_userns_clone or AppArmor's \
     kernel.apparmor_restrict_unprivileged_userns); run aip as root (e.g. through aipd) or \
     enable them; `aip doctor` shows what the kernel offers";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_network_keeps_the_network_namespace() {
        assert!(!flags(&NetMode::Host).contains(CloneFlags::CLONE_NEWNET));
        assert!(flags(&NetMode::None).contains(CloneFlags::CLONE_NEWNET));
        assert_eq!(
            names(flags(&NetMode::None), true),
            ["user", "mount", "pid", "net", "ipc", "uts", "cgroup"]
        );
    }

    #[test]
    fn identity_map_maps_one_id() {
        assert_eq!(identity_map_line(1000), "1000 1000 1\n");
    }
}
