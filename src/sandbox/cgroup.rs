//! cgroup v2 per sandbox: a child cgroup of the supervisor's own cgroup with `memory.max`,
//! `memory.swap.max`, `memory.oom.group`, `pids.max` and `cpu.max`, entered by the sandbox's
//! first process before it unshares its cgroup namespace, removed after the sandbox is reaped.
//!
//! Used only where a writable cgroup2 hierarchy delegates the needed controllers to us; hybrid
//! hosts (v1 controllers with an empty v2 hierarchy, like the build VM) and unprivileged users
//! without delegation fall back to rlimits (`sandbox::resources`), and the report says which.
//! Kernel paths are parameters (`/proc/self/mountinfo`, `/proc/self/cgroup` contents), so the
//! detection is unit-tested on fixtures. This module never assumes a v2-only layout.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

/// Where sandboxes' cgroups go and which controllers they can use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// The cgroup2 mount point.
    pub mount: PathBuf,
    /// The supervisor's cgroup, relative to the mount (`/` for the root).
    pub own: String,
    /// Controllers available to children of `own` (`cgroup.controllers` of `own`).
    pub controllers: BTreeSet<String>,
}

/// Finds the cgroup2 mount in `/proc/self/mountinfo` content.
pub fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let fstype = right.split_whitespace().next()?;
        (fstype == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// The process's cgroup2 path from `/proc/self/cgroup` content (the `0::` line).
pub fn own_cgroup(proc_self_cgroup: &str) -> Option<String> {
    proc_self_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::").map(str::to_string))
}

/// Detects the hierarchy from the given kernel files. `None` when there is no cgroup2 mount.
pub fn detect(mountinfo: &str, proc_self_cgroup: &str) -> Option<Hierarchy> {
    let mount = cgroup2_mount(mountinfo)?;
    let own = own_cgroup(proc_self_cgroup)?;
    let dir = mount.join(own.trim_start_matches('/'));
    let controllers = fs::read_to_string(dir.join("cgroup.controllers"))
        .map(|c| c.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Some(Hierarchy {
        mount,
        own,
        controllers,
    })
}

/// Detects the running system's hierarchy.
pub fn detect_system() -> Option<Hierarchy> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let cgroup = fs::read_to_string("/proc/self/cgroup").ok()?;
    detect(&mountinfo, &cgroup)
}

impl Hierarchy {
    pub fn own_dir(&self) -> PathBuf {
        self.mount.join(self.own.trim_start_matches('/'))
    }

    /// Whether the controllers the limits need are available.
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.contains(controller)
    }

    /// Makes `wanted` controllers available to new child cgroups. The no-internal-process rule
    /// forbids enabling controllers for children of a non-root cgroup that has processes, so the
    /// supervisor first moves itself into a leaf `aip-supervisor` (once; documented in
    /// docs/sandbox.md: run aipd with `Delegate=yes`).
    pub fn delegate(&self, wanted: &[&str]) -> io::Result<()> {
        let own = self.own_dir();
        let enabled = fs::read_to_string(own.join("cgroup.subtree_control")).unwrap_or_default();
        let missing: Vec<&str> = wanted
            .iter()
            .copied()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if self.own != "/" {
            let procs = fs::read_to_string(own.join("cgroup.procs")).unwrap_or_default();
            if !procs.trim().is_empty() {
                let leaf = own.join("aip-supervisor");
                match fs::create_dir(&leaf) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                    Err(e) => return Err(e),
                }
                for pid in procs.split_whitespace() {
                    // Threads of other processes may have exited meanwhile: skip those.
                    let _ = fs::write(leaf.join("cgroup.procs"), pid);
                }
            }
        }
        let line: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
        fs::write(own.join("cgroup.subtree_control"), line.join(" "))
    }

    /// Creates a fresh child cgroup for one sandbox.
    pub fn create_child(&self) -> io::Result<Cgroup> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "aip-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let path = self.own_dir().join(name);
        fs::create_dir(&path)?;
        let relative = format!(
            "{}/{}",
            self.own.trim_end_matches('/'),
            path.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        );
        Ok(Cgroup { path, relative })
    }
}

/// One sandbox's cgroup. Removed by [`Cgroup::remove`] once the sandbox is gone.
#[derive(Debug)]
pub struct Cgroup {
    pub path: PathBuf,
    /// Path relative to the cgroup2 mount, for the report.
    pub relative: String,
}

impl Cgroup {
    pub fn write(&self, file: &str, value: &str) -> io::Result<()> {
        fs::write(self.path.join(file), value)
    }

    /// Opens `cgroup.procs` for the sandbox's first process to move itself in (`write("0")`).
    pub fn procs_file(&self) -> io::Result<fs::File> {
        fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("cgroup.procs"))
    }

    /// Kills whatever is left (`cgroup.kill`, Linux ≥ 5.14) and removes the directory.
    pub fn remove(&self) {
        let _ = fs::write(self.path.join("cgroup.kill"), "1");
        for _ in 0..50 {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                Err(_) => return,
            }
        }
    }
}

/// `cpu.max` content for a quota.
pub fn cpu_max(quota_us: u64, period_us: u64) -> String {
    format!("{quota_us} {period_us}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
25 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 25 0:26 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:27 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:35 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const HYBRID_CGROUP: &str = "4:memory:/process_api/552c\n1:cpu:/\n0::/\n";

    #[test]
    fn finds_the_v2_mount_on_a_hybrid_host() {
        assert_eq!(
            cgroup2_mount(HYBRID_MOUNTINFO),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(own_cgroup(HYBRID_CGROUP), Some("/".to_string()));
    }

    #[test]
    fn no_v2_mount_means_no_hierarchy() {
        let v1_only = "31 30 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(detect(v1_only, HYBRID_CGROUP), None);
    }

    #[test]
    fn controllers_and_delegation_work_on_a_fake_hierarchy() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("service");
        fs::create_dir(&own).unwrap();
        fs::write(own.join("cgroup.controllers"), "cpu memory pids\n").unwrap();
        fs::write(own.join("cgroup.subtree_control"), "").unwrap();
        fs::write(own.join("cgroup.procs"), "").unwrap();
        let mountinfo = format!(
            "40 30 0:35 / {} rw - cgroup2 cgroup2 rw\n",
            dir.path().display()
        );
        let h = detect(&mountinfo, "0::/service\n").unwrap();
        assert!(h.has("memory") && h.has("pids") && !h.has("io"));
        h.delegate(&["memory", "pids"]).unwrap();
        assert_eq!(
            fs::read_to_string(own.join("cgroup.subtree_control")).unwrap(),
            "+memory +pids"
        );
        let child = h.create_child().unwrap();
        assert!(child.relative.starts_with("/service/aip-"));
        child.write("pids.max", "64").unwrap();
        assert_eq!(
            fs::read_to_string(child.path.join("pids.max")).unwrap(),
            "64"
        );
    }
}
