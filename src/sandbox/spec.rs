//! `SandboxSpec`: the complete, plain-data description of one sandbox, produced by
//! `launch::plan` and consumed by [`crate::sandbox::spawn`]. It says *what* is visible and
//! allowed; it never decides it (no policy file is read here) and never touches the kernel.
//! [`SandboxSpec::validate`] checks the invariants `spawn` relies on (absolute paths, parents
//! before children, hidden paths not exposed) so a wrong plan is refused before any fork.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::error::SandboxError;
use super::net::NetMode;

/// Everything `spawn` needs. All paths are absolute; mount targets are paths *inside* the
/// sandbox, which equal the host paths for binds made by the planner.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxSpec {
    /// `false` = `--no-sandbox`: plain spawn in its own session, killed with the supervisor and
    /// as a process group, nothing else. The report says "disabled".
    pub enabled: bool,
    /// The server's argv (argv[0] as the user wrote it).
    pub argv: Vec<OsString>,
    /// Absolute path of the file to execute, visible at the same path inside.
    pub executable: PathBuf,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
    /// The complete environment of the server (already scrubbed by the planner).
    pub env: Vec<(OsString, OsString)>,
    /// Mounts on the tmpfs root, applied in order (a parent before anything below it).
    pub mounts: Vec<Mount>,
    /// Files written onto the root tmpfs before it is made read-only (passwd, group, hosts,
    /// resolv.conf…).
    pub files: Vec<GeneratedFile>,
    /// Symlinks created on the root tmpfs (`/bin -> usr/bin`, `/dev/fd -> /proc/self/fd`…).
    pub symlinks: Vec<Symlink>,
    /// Size of the root tmpfs in bytes (it only holds directories and generated files).
    pub root_size: u64,
    /// Network namespace setup (see `sandbox::net`).
    pub net: NetMode,
    pub resources: Resources,
    pub seccomp: SeccompProfile,
    pub landlock: LandlockSpec,
    /// Identity of the server when the supervisor runs as root (ignored otherwise: an
    /// unprivileged supervisor maps only its own uid/gid).
    pub user: User,
    /// Host name inside the UTS namespace.
    pub hostname: String,
    /// Layers the policy explicitly allows to be weaker than requested. Anything not listed
    /// here makes `spawn` refuse instead of degrading.
    pub allow_degraded: BTreeSet<Layer>,
    /// Host paths that must never be visible inside (the policy file, the audit file).
    pub hidden: Vec<PathBuf>,
}

/// One mount inside the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Absolute path inside the sandbox.
    pub target: PathBuf,
    pub kind: MountKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A non-recursive bind of a host file or directory (mounts below `source` are not carried).
    Bind { source: PathBuf, access: Access },
    /// A fresh tmpfs. `writable: false` makes it read-only once everything below it exists
    /// (used for `/dev`).
    Tmpfs {
        size: u64,
        mode: u32,
        writable: bool,
    },
    /// A fresh procfs for the sandbox's pid namespace (`hidepid=invisible`).
    Proc,
}

/// What a bind allows. Mount flags and Landlock rights both follow from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Read-only, no exec, nosuid, nodev.
    ReadOnly,
    /// Read-only and executable (runtimes, libraries), nosuid, nodev.
    Exec,
    /// Read-write, no exec, nosuid, nodev.
    ReadWrite,
    /// A device node (`/dev/null`…): read-write, nosuid, noexec, device access kept.
    Device,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeneratedFile {
    pub path: PathBuf,
    /// Base64 when serialized (copies of `/etc` files run to hundreds of KiB; a JSON array of
    /// numbers would be four times that). Requests to the spawn server carry them raw instead.
    /// Shared: every clone of a spec (the spawn server's cache, a root template) holds the same
    /// bytes instead of a copy, and equal `Arc`s compare without reading them.
    #[serde(with = "base64_bytes")]
    pub contents: Arc<[u8]>,
    pub mode: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symlink {
    /// Where the link is created (inside).
    pub path: PathBuf,
    /// What it points to (stored verbatim).
    pub target: PathBuf,
}

/// Resource limits. `required` marks limits the policy set explicitly: if the kernel cannot
/// enforce them, `spawn` refuses unless `Layer::Resources` may degrade.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes (cgroup `memory.max`; `RLIMIT_DATA` per process without cgroups).
    pub memory: Option<Limit>,
    /// Processes + threads (cgroup `pids.max`; `RLIMIT_NPROC` of the sandbox uid without cgroups).
    pub pids: Option<Limit>,
    /// CPU bandwidth (cgroup `cpu.max`; no rlimit equivalent).
    pub cpu: Option<CpuLimit>,
    /// `RLIMIT_NOFILE` (soft = hard).
    pub open_files: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limit {
    pub value: u64,
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuLimit {
    /// Microseconds of CPU per period (`cpu.max` first field).
    pub quota_us: u64,
    pub period_us: u64,
    pub required: bool,
}

/// Which seccomp allowlist the server runs under (`src/sandbox/seccomp/profiles/*.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeccompProfile {
    Node,
    Python,
    Generic,
}

impl SeccompProfile {
    pub const ALL: [SeccompProfile; 3] = [Self::Node, Self::Python, Self::Generic];

    pub fn name(self) -> &'static str {
        match self {
            Self::Node => "node",
            Self::Python => "python",
            Self::Generic => "generic",
        }
    }
}

/// Landlock parameters. Every right of the compiled ABI is handled; `min_abi` is the floor the
/// kernel must reach (0 = none), rights above it are applied when the kernel has them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockSpec {
    pub min_abi: u32,
    /// TCP ports the server may connect to (ABI ≥ 4); empty = none. Ignored with host network.
    pub connect_tcp: Vec<u16>,
    /// TCP ports the server may bind (ABI ≥ 4); empty = none.
    pub bind_tcp: Vec<u16>,
    /// UDP ports the server may send to (ABI ≥ 10); empty = none.
    pub connect_udp: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
}

/// The layers named in reports, errors and `allow_degraded`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layer {
    Namespaces,
    Filesystem,
    Landlock,
    Seccomp,
    Capabilities,
    Resources,
    Network,
    Lifecycle,
}

impl Layer {
    pub fn name(self) -> &'static str {
        match self {
            Self::Namespaces => "namespaces",
            Self::Filesystem => "filesystem",
            Self::Landlock => "landlock",
            Self::Seccomp => "seccomp",
            Self::Capabilities => "capabilities",
            Self::Resources => "resources",
            Self::Network => "network",
            Self::Lifecycle => "lifecycle",
        }
    }

    /// Layers a policy may allow to degrade; the others are never weakened.
    pub const DEGRADABLE: [Layer; 3] = [Layer::Landlock, Layer::Seccomp, Layer::Resources];
}

impl std::fmt::Display for Layer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl SandboxSpec {
    /// A copy whose generated files have empty contents (the spawn server's requests carry the
    /// contents apart from the JSON). Cheap: the clone shares the contents' buffers.
    pub(crate) fn without_file_contents(&self) -> SandboxSpec {
        let mut light = self.clone();
        for file in &mut light.files {
            file.contents = Arc::from([]);
        }
        light
    }

    /// Checks the invariants `spawn` relies on. Pure: no file system access.
    pub fn validate(&self) -> Result<(), SandboxError> {
        let invalid = |field: &str, message: String| SandboxError::InvalidSpec {
            field: field.to_string(),
            message,
        };
        if self.argv.is_empty() {
            return Err(invalid("argv", "the command is empty".into()));
        }
        if !self.executable.is_absolute() {
            return Err(invalid(
                "executable",
                format!("{} is not absolute", self.executable.display()),
            ));
        }
        if !self.enabled {
            return Ok(());
        }
        if !is_clean_absolute(&self.cwd) {
            return Err(invalid(
                "cwd",
                format!("{} is not a clean absolute path", self.cwd.display()),
            ));
        }
        for layer in &self.allow_degraded {
            if !Layer::DEGRADABLE.contains(layer) {
                return Err(invalid(
                    "allow_degraded",
                    format!("layer {layer} can never be degraded"),
                ));
            }
        }
        let mut seen: Vec<&Path> = Vec::new();
        for mount in &self.mounts {
            if !is_clean_absolute(&mount.target) || mount.target == Path::new("/") {
                return Err(invalid(
                    "mounts",
                    format!("bad mount target {}", mount.target.display()),
                ));
            }
            if seen.contains(&mount.target.as_path()) {
                return Err(invalid(
                    "mounts",
                    format!("{} is mounted twice", mount.target.display()),
                ));
            }
            // A later mount may sit below an earlier one, never above it: the earlier one would be
            // hidden and, worse, created inside a host directory.
            if let Some(child) = seen.iter().find(|s| s.starts_with(&mount.target)) {
                return Err(invalid(
                    "mounts",
                    format!(
                        "{} comes after {} which lies below it",
                        mount.target.display(),
                        child.display()
                    ),
                ));
            }
            if let MountKind::Bind { source, .. } = &mount.kind {
                if !is_clean_absolute(source) {
                    return Err(invalid(
                        "mounts",
                        format!("bad bind source {}", source.display()),
                    ));
                }
                for hidden in &self.hidden {
                    if hidden.starts_with(source) {
                        return Err(SandboxError::Exposed {
                            hidden: hidden.clone(),
                            through: source.clone(),
                        });
                    }
                }
            }
            seen.push(&mount.target);
        }
        for file in &self.files {
            if !is_clean_absolute(&file.path) {
                return Err(invalid(
                    "files",
                    format!("bad generated file {}", file.path.display()),
                ));
            }
        }
        for link in &self.symlinks {
            if !is_clean_absolute(&link.path) {
                return Err(invalid(
                    "symlinks",
                    format!("bad symlink {}", link.path.display()),
                ));
            }
        }
        if !self.mounts.iter().any(|m| covers_exec(m, &self.executable)) {
            return Err(SandboxError::NotVisible {
                what: "executable".into(),
                path: self.executable.clone(),
                hint: format!(
                    "add its directory ({}) to spec.sandbox.filesystem.exec",
                    self.executable.parent().unwrap_or(Path::new("/")).display()
                ),
            });
        }
        Ok(())
    }
}

fn covers_exec(mount: &Mount, path: &Path) -> bool {
    matches!(
        mount.kind,
        MountKind::Bind {
            access: Access::Exec,
            ..
        }
    ) && path.starts_with(&mount.target)
}

/// Absolute, no `.`/`..` components, no trailing oddities.
pub(crate) fn is_clean_absolute(path: &Path) -> bool {
    path.is_absolute()
        && path
            .components()
            .all(|c| matches!(c, Component::RootDir | Component::Normal(_)))
}

/// `Vec<u8>` as a standard base64 string.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};
    use std::sync::Arc;

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Arc<[u8]>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map(Arc::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn minimal() -> SandboxSpec {
        SandboxSpec {
            enabled: true,
            argv: vec!["true".into()],
            executable: "/usr/bin/true".into(),
            cwd: "/".into(),
            env: vec![],
            mounts: vec![Mount {
                target: "/usr".into(),
                kind: MountKind::Bind {
                    source: "/usr".into(),
                    access: Access::Exec,
                },
            }],
            files: vec![],
            symlinks: vec![],
            root_size: 1 << 20,
            net: NetMode::None,
            resources: Resources {
                memory: None,
                pids: None,
                cpu: None,
                open_files: 1024,
            },
            seccomp: SeccompProfile::Generic,
            landlock: LandlockSpec {
                min_abi: 1,
                connect_tcp: vec![],
                bind_tcp: vec![],
                connect_udp: vec![],
            },
            user: User {
                uid: 65534,
                gid: 65534,
            },
            hostname: "sandbox".into(),
            allow_degraded: BTreeSet::new(),
            hidden: vec![],
        }
    }

    #[test]
    fn minimal_spec_is_valid() {
        minimal().validate().unwrap();
    }

    #[test]
    fn executable_outside_exec_mounts_is_refused_with_a_hint() {
        let mut spec = minimal();
        spec.executable = "/opt/node/bin/node".into();
        let err = spec.validate().unwrap_err().to_string();
        assert!(err.contains("/opt/node/bin/node"), "{err}");
        assert!(err.contains("spec.sandbox.filesystem.exec"), "{err}");
    }

    #[test]
    fn hidden_path_below_a_bind_is_refused() {
        let mut spec = minimal();
        spec.hidden = vec!["/usr/local/etc/aip/policy.yaml".into()];
        assert!(matches!(spec.validate(), Err(SandboxError::Exposed { .. })));
    }

    #[test]
    fn mount_above_an_earlier_mount_is_refused() {
        let mut spec = minimal();
        spec.mounts.push(Mount {
            target: "/".into(),
            kind: MountKind::Tmpfs {
                size: 1,
                mode: 0o755,
                writable: true,
            },
        });
        assert!(spec.validate().is_err());
        let mut spec = minimal();
        spec.mounts.insert(
            0,
            Mount {
                target: "/usr/lib".into(),
                kind: MountKind::Tmpfs {
                    size: 1,
                    mode: 0o755,
                    writable: true,
                },
            },
        );
        assert!(spec.validate().is_err());
    }

    #[test]
    fn relative_and_dotted_paths_are_refused() {
        let mut spec = minimal();
        spec.mounts[0].target = "/usr/../etc".into();
        assert!(spec.validate().is_err());
        let mut spec = minimal();
        spec.cwd = "relative".into();
        assert!(spec.validate().is_err());
    }

    #[test]
    fn only_degradable_layers_may_be_allowed_to_degrade() {
        let mut spec = minimal();
        spec.allow_degraded.insert(Layer::Filesystem);
        assert!(spec.validate().is_err());
        let mut spec = minimal();
        spec.allow_degraded.insert(Layer::Landlock);
        spec.validate().unwrap();
    }
}
