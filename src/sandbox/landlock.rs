//! Landlock over the mount namespace: every right of the compiled ABI is handled, so the server
//! may only read, write and execute beneath the paths its mounts grant, connect/bind only the TCP
//! (and, from ABI 10, UDP) ports the spec lists, and neither reach abstract unix sockets nor
//! signal processes outside its domain (ABI 6 scopes).
//!
//! The policy's floor (`min_abi`) is a hard requirement: the supervisor checks the kernel's ABI
//! before forking and refuses below it unless Landlock may degrade; inside the sandbox the floor's
//! rights are requested with `HardRequirement` and everything above with `BestEffort`, and the
//! status we report comes from the kernel's answer, with the rights it lacks named.
//!
//! Rules are built after `pivot_root`, from the paths as the server sees them, and applied as
//! the server's last step before seccomp. This module must never widen a right to make something
//! work: the planner decides the paths.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use landlock::{
    ABI, Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath,
    PathFd, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetStatus, Scope,
};

use super::error::SetupFailure;
use super::report::LayerStatus;
use super::spec::{Access as MountAccess, LandlockSpec, Layer, MountKind, SandboxSpec};
use super::sys;

/// The ABI whose rights we handle (the newest the `landlock` crate knows).
pub const COMPILED_ABI: u32 = 10;
const COMPILED: ABI = ABI::V10;

/// The running kernel's Landlock ABI; 0 when Landlock is missing or disabled.
pub fn kernel_abi() -> u32 {
    sys::landlock_abi_version().unwrap_or(0)
}

fn abi_of(version: u32) -> ABI {
    match version {
        0 => ABI::Unsupported,
        1 => ABI::V1,
        2 => ABI::V2,
        3 => ABI::V3,
        4 => ABI::V4,
        5 => ABI::V5,
        6 => ABI::V6,
        7 => ABI::V7,
        8 => ABI::V8,
        9 => ABI::V9,
        _ => ABI::V10,
    }
}

/// What a rule grants beneath its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grant {
    Read,
    ReadExec,
    ReadWrite,
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub grant: Grant,
}

/// The rules implied by the spec's mounts and generated files (paths inside the sandbox).
pub fn rules_for(spec: &SandboxSpec) -> Vec<Rule> {
    let mut rules = Vec::new();
    for mount in &spec.mounts {
        let grant = match &mount.kind {
            MountKind::Bind { access, .. } => match access {
                MountAccess::ReadOnly => Grant::Read,
                MountAccess::Exec => Grant::ReadExec,
                MountAccess::ReadWrite => Grant::ReadWrite,
                MountAccess::Device => Grant::Device,
            },
            MountKind::Tmpfs { writable: true, .. } => Grant::ReadWrite,
            MountKind::Tmpfs {
                writable: false, ..
            }
            | MountKind::Proc => Grant::Read,
        };
        rules.push(Rule {
            path: mount.target.clone(),
            grant,
        });
    }
    // Generated files sit on the read-only root tmpfs: one read rule per directory holding them
    // (fewer rules to build; such a directory holds nothing else but mount points, which have
    // their own rules).
    let mut dirs: Vec<PathBuf> = Vec::new();
    for file in &spec.files {
        let dir = file
            .path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"));
        let on_root_tmpfs =
            dir != Path::new("/") && !spec.mounts.iter().any(|m| dir.starts_with(&m.target));
        if !on_root_tmpfs {
            rules.push(Rule {
                path: file.path.clone(),
                grant: Grant::Read,
            });
        } else if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    rules.extend(dirs.into_iter().map(|path| Rule {
        path,
        grant: Grant::Read,
    }));
    rules
}

fn rights(grant: Grant) -> BitFlags<AccessFs> {
    let read = AccessFs::ReadFile | AccessFs::ReadDir;
    match grant {
        Grant::Read => read,
        Grant::ReadExec => read | AccessFs::Execute,
        // Everything but exec: writable paths are mounted noexec as well.
        Grant::ReadWrite => AccessFs::from_all(COMPILED) & !AccessFs::Execute,
        Grant::Device => {
            AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev
        }
    }
}

/// Names of what the compiled ABI handles but a kernel at `abi` lacks.
pub fn missing_above(abi: u32) -> Vec<String> {
    const FEATURES: [(u32, &str); 9] = [
        (2, "fs.refer (ABI 2)"),
        (3, "fs.truncate (ABI 3)"),
        (4, "net.tcp (ABI 4)"),
        (5, "fs.ioctl_dev (ABI 5)"),
        (6, "scope.abstract_unix_socket+signal (ABI 6)"),
        (7, "audit logging (ABI 7)"),
        (8, "all-threads enforcement (ABI 8)"),
        (9, "fs.resolve_unix (ABI 9)"),
        (10, "net.udp (ABI 10)"),
    ];
    if abi == 0 {
        return vec!["landlock (kernel has no Landlock)".into()];
    }
    FEATURES
        .iter()
        .filter(|(v, _)| *v > abi)
        .map(|(_, n)| (*n).to_string())
        .collect()
}

/// What applying Landlock produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub status: LayerStatus,
}

/// A ruleset with all its rules, not enforced yet.
pub struct Built(RulesetCreated);

/// Builds the ruleset. Runs in the server process after `pivot_root` and before it drops its
/// privileges (so every granted path can be opened whatever its owner); enforced afterwards by
/// [`Built::restrict`]. `floor_required` is false when the spec allows Landlock to degrade and
/// the kernel is below the floor.
pub fn build(
    spec: &LandlockSpec,
    rules: &[Rule],
    restrict_network: bool,
    floor_required: bool,
) -> Result<Built, SetupFailure> {
    let fail = |step: &str, err: &dyn std::fmt::Display| {
        SetupFailure::reason(Layer::Landlock, step.to_string(), err.to_string())
    };
    let floor = spec.min_abi.min(COMPILED_ABI);
    let mut ruleset = Ruleset::default();
    if floor_required && floor > 0 {
        // The floor's rights must be there: the crate errors instead of dropping them.
        let floor_abi = abi_of(floor);
        ruleset = ruleset
            .set_compatibility(CompatLevel::HardRequirement)
            .handle_access(AccessFs::from_all(floor_abi))
            .map_err(|e| fail("floor rights", &e))?;
        if restrict_network && floor >= 4 {
            ruleset = ruleset
                .handle_access(AccessNet::from_all(floor_abi))
                .map_err(|e| fail("floor rights", &e))?;
        }
        if floor >= 6 {
            ruleset = ruleset
                .scope(Scope::from_all(floor_abi))
                .map_err(|e| fail("floor scopes", &e))?;
        }
    }
    ruleset = ruleset
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(COMPILED))
        .map_err(|e| fail("handled rights", &e))?;
    if restrict_network {
        ruleset = ruleset
            .handle_access(AccessNet::from_all(COMPILED))
            .map_err(|e| fail("handled rights", &e))?;
    }
    ruleset = ruleset
        .scope(Scope::from_all(COMPILED))
        .map_err(|e| fail("scopes", &e))?;
    let mut created = ruleset.create().map_err(|e| fail("create ruleset", &e))?;
    for rule in rules {
        let fd = PathFd::new(&rule.path).map_err(|e| {
            SetupFailure::reason(
                Layer::Landlock,
                format!("rule for {}", rule.path.display()),
                e.to_string(),
            )
        })?;
        let mut access = rights(rule.grant);
        if !is_dir(&fd) {
            access &= AccessFs::from_file(COMPILED);
        }
        created = created
            .add_rule(PathBeneath::new(fd, access))
            .map_err(|e| fail(&format!("rule for {}", rule.path.display()), &e))?;
    }
    if restrict_network {
        for port in &spec.connect_tcp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectTcp))
                .map_err(|e| fail("tcp rule", &e))?;
        }
        for port in &spec.bind_tcp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::BindTcp))
                .map_err(|e| fail("tcp rule", &e))?;
        }
        if !spec.connect_udp.is_empty() {
            // Sending from an unbound socket binds an ephemeral port first (port 0 rule).
            created = created
                .add_rule(NetPort::new(0, AccessNet::BindUdp))
                .map_err(|e| fail("udp rule", &e))?;
        }
        for port in &spec.connect_udp {
            created = created
                .add_rule(NetPort::new(*port, AccessNet::ConnectSendUdp))
                .map_err(|e| fail("udp rule", &e))?;
        }
    }
    Ok(Built(created))
}

impl Built {
    /// Enforces the ruleset on the calling thread and its future children. Needs
    /// `no_new_privs` (set by the privilege drop) or `CAP_SYS_ADMIN`. Irreversible.
    pub fn restrict(self, kernel: u32) -> Result<Outcome, SetupFailure> {
        let status: RestrictionStatus = self
            .0
            .restrict_self()
            .map_err(|e| SetupFailure::reason(Layer::Landlock, "restrict_self", e.to_string()))?;
        Ok(Outcome {
            status: status_of(&status, kernel),
        })
    }
}

fn status_of(status: &RestrictionStatus, kernel: u32) -> LayerStatus {
    match status.ruleset {
        RulesetStatus::FullyEnforced => LayerStatus::Enforced,
        RulesetStatus::PartiallyEnforced => LayerStatus::Partial {
            missing: missing_above(kernel),
        },
        RulesetStatus::NotEnforced => LayerStatus::NotEnforced {
            reason: if kernel == 0 {
                "the kernel has no Landlock (or it is disabled at boot)".into()
            } else {
                format!("the kernel's Landlock ABI {kernel} could not enforce the ruleset")
            },
        },
    }
}

fn is_dir(fd: &PathFd) -> bool {
    nix::sys::stat::fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(false)
}

/// Whether `path` lies beneath a rule granting exec (used for exec-failure hints).
pub fn grants_exec(rules: &[Rule], path: &Path) -> bool {
    rules
        .iter()
        .any(|r| r.grant == Grant::ReadExec && path.starts_with(&r.path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_rights_are_named_above_the_kernel_abi() {
        assert_eq!(missing_above(10), Vec::<String>::new());
        assert_eq!(
            missing_above(7),
            vec![
                "all-threads enforcement (ABI 8)".to_string(),
                "fs.resolve_unix (ABI 9)".into(),
                "net.udp (ABI 10)".into()
            ]
        );
        assert_eq!(
            missing_above(0),
            vec!["landlock (kernel has no Landlock)".to_string()]
        );
    }

    #[test]
    fn write_grants_never_include_execute() {
        assert!(!rights(Grant::ReadWrite).contains(AccessFs::Execute));
        assert!(rights(Grant::ReadExec).contains(AccessFs::Execute));
        assert!(!rights(Grant::Read).contains(AccessFs::WriteFile));
    }
}
