//! What the running kernel offers each sandbox layer, for `aip doctor`: Landlock ABI, seccomp,
//! user namespaces, the mount API, cgroup v2 delegation. Detection only reads kernel files and
//! asks the kernel (a throw-away child tries `unshare(CLONE_NEWUSER)`); it changes nothing.
//! Kernel file paths are parameters of the parsing helpers so they are unit-tested on fixtures.

use serde::Serialize;

use super::cgroup;
use super::landlock::{self, COMPILED_ABI};
use super::sys::{self, Forked};

/// How one feature stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    /// Available and used.
    Ok,
    /// Missing or weaker, with a working fallback (reported, not fatal).
    Warn,
    /// A layer the default policy requires is missing: sandboxes refuse to start.
    Missing,
    /// Not relevant here (e.g. user namespaces when running as root).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
}

fn feature(name: &'static str, level: Level, detail: impl Into<String>) -> Feature {
    Feature {
        name,
        level,
        detail: detail.into(),
    }
}

/// Parses `major.minor` from a kernel release string (`6.18.44-fc-v657`).
pub fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Detects every feature.
pub fn detect() -> Vec<Feature> {
    let root = nix::unistd::geteuid().is_root();
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut out = Vec::new();

    let version = kernel_version(&release);
    out.push(match version {
        Some(v) if v >= (5, 12) => feature(
            "kernel",
            Level::Ok,
            format!("{release} (mount API, pidfd, close_range)"),
        ),
        _ => feature(
            "kernel",
            Level::Missing,
            format!("{release}: aip needs Linux 5.12 or newer (mount_setattr)"),
        ),
    });

    out.push(if root {
        feature("privileges", Level::Ok, "root: namespaces are created with real capabilities; servers run as an unprivileged uid")
    } else {
        feature("privileges", Level::Ok, "unprivileged: each sandbox starts in its own user namespace")
    });

    let abi = landlock::kernel_abi();
    out.push(match abi {
        0 => {
            let why = match sys::landlock_abi_version() {
                Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                    "built in but disabled at boot (add landlock to lsm=)"
                }
                _ => "not built into this kernel",
            };
            feature(
                "landlock",
                Level::Missing,
                format!("{why}; the default policy requires Landlock (min_abi 1)"),
            )
        }
        a if a < COMPILED_ABI => feature(
            "landlock",
            Level::Ok,
            format!(
                "ABI {a} (aip handles up to ABI {COMPILED_ABI}; missing: {})",
                landlock::missing_above(a).join(", ")
            ),
        ),
        a => feature("landlock", Level::Ok, format!("ABI {a}")),
    });

    let actions =
        std::fs::read_to_string("/proc/sys/kernel/seccomp/actions_avail").unwrap_or_default();
    let needed = ["kill_process", "errno", "allow"];
    out.push(
        if needed
            .iter()
            .all(|a| actions.split_whitespace().any(|x| x == *a))
        {
            feature(
                "seccomp",
                Level::Ok,
                format!("filter mode ({})", actions.trim()),
            )
        } else {
            feature(
                "seccomp",
                Level::Missing,
                "seccomp filters are not available (CONFIG_SECCOMP_FILTER)",
            )
        },
    );

    out.push(if root {
        feature("user namespaces", Level::Skip, "not needed when running as root")
    } else if user_namespaces_work() {
        feature("user namespaces", Level::Ok, "unprivileged user namespaces work")
    } else {
        feature(
            "user namespaces",
            Level::Missing,
            "unprivileged user namespaces are blocked (user.max_user_namespaces, kernel.unprivileged_userns_clone or \
             kernel.apparmor_restrict_unprivileged_userns); run aip as root or through aipd",
        )
    });

    out.push(match cgroup::detect_system() {
        None => feature("cgroup v2", Level::Warn, "no cgroup2 hierarchy: memory/pids limits use rlimits, cpu limits are unavailable"),
        Some(h) => {
            let wanted = ["memory", "pids", "cpu"];
            let have: Vec<&str> = wanted.iter().copied().filter(|c| h.has(c)).collect();
            let writable = nix::unistd::access(&h.own_dir(), nix::unistd::AccessFlags::W_OK).is_ok();
            if have.len() == wanted.len() && writable {
                feature("cgroup v2", Level::Ok, format!("{} at {}: memory, pids, cpu delegated", h.own, h.mount.display()))
            } else {
                feature(
                    "cgroup v2",
                    Level::Warn,
                    format!(
                        "{} at {}: controllers available: [{}], writable: {writable}; limits fall back to rlimits (cpu \
                         limits unavailable). For aipd, use a systemd unit with Delegate=yes",
                        h.own,
                        h.mount.display(),
                        have.join(", ")
                    ),
                )
            }
        }
    });
    out
}

/// Whether a child can create a user namespace (tried in a throw-away process).
fn user_namespaces_work() -> bool {
    match sys::fork() {
        Ok(Forked::Child) => {
            let ok = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER).is_ok()
                && std::fs::write("/proc/self/setgroups", "deny").is_ok();
            sys::exit_now(if ok { 0 } else { 1 })
        }
        Ok(Forked::Parent(pid)) => {
            matches!(
                nix::sys::wait::waitpid(pid, None),
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0))
            )
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_versions_parse() {
        assert_eq!(kernel_version("6.18.44-fc-v657"), Some((6, 18)));
        assert_eq!(kernel_version("5.4.0-150-generic"), Some((5, 4)));
        assert_eq!(kernel_version("garbage"), None);
        assert!(Some((5, 4)) < Some((5, 12)));
    }
}
