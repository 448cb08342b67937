//! The sandbox planner: `spec.sandbox` + the server command + the working directory + CLI
//! overrides → a complete `sandbox::SandboxSpec`. It resolves what the server needs to run (PATH
//! lookup, symlinks, `#!` interpreters, `env NAME`, `node_modules/.bin` links → the enclosing
//! `node_modules`, Python venvs → `pyvenv.cfg` home and the base prefix, pyenv shims → the
//! selected version), adds the system runtime directories and the few `/etc` files programs need,
//! generates a sanitized passwd/group/hosts/resolv.conf, builds the scrubbed environment, and
//! refuses plans that would expose the policy or audit file.
//!
//! Decide, don't do: the only I/O is reading host metadata through [`HostFs`] (injected, so the
//! unit tests run on a fake tree); nothing is created, spawned or logged. Things the caller
//! should tell the user come back as [`Note`]s.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

use crate::policy::sandbox_config::{
    DegradableLayer, Network, Runtime, SandboxConfig, env_forbidden,
};
use crate::sandbox::net::NetMode;
use crate::sandbox::{
    Access, GeneratedFile, LandlockSpec, Layer, Limit, Mount, MountKind, Resources, SandboxSpec,
    SeccompProfile, Symlink, User,
};

/// Defaults.
pub const DEFAULT_TMP_SIZE: u64 = 128 << 20;
pub const DEFAULT_SHM_SIZE: u64 = 64 << 20;
pub const DEFAULT_OPEN_FILES: u64 = 4096;
pub const DEFAULT_LANDLOCK_FLOOR: u32 = 1;
pub const DEFAULT_UID: u32 = 65534;
pub const HOSTNAME: &str = "sandbox";
const ROOT_SIZE: u64 = 4 << 20;
/// `/etc` files up to this size are copied into the sandbox rather than bound.
const COPY_LIMIT: usize = 256 << 10;

/// Directories whose contents are the system runtime (read-only, executable).
const SYSTEM_DIRS: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32",
];
/// `/etc` entries programs need (loader cache, name service switch, time zone, CA certificates).
const ETC_ENTRIES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/localtime",
    "/etc/timezone",
    "/etc/ssl/certs",
    "/etc/ssl/openssl.cnf",
    "/etc/ca-certificates.conf",
    "/etc/pki/tls/certs",
    "/etc/pki/ca-trust",
    "/etc/crypto-policies",
    "/etc/alternatives",
    "/etc/mime.types",
    "/etc/protocols",
    "/etc/services",
    "/etc/os-release",
];
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];
/// Variables passed through by default (locale and time zone only).
const DEFAULT_PASS: &[&str] = &[
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_COLLATE",
    "LC_MESSAGES",
    "LC_MONETARY",
    "LC_NUMERIC",
    "LC_TIME",
    "TZ",
    "NO_COLOR",
];

/// What the host file system looks like, as far as planning needs. [`RealFs`] reads the host.
pub trait HostFs {
    fn kind(&self, path: &Path) -> io::Result<Kind>;
    fn read_link(&self, path: &Path) -> io::Result<PathBuf>;
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf>;
    /// The first bytes of a file (for `#!` lines).
    fn read_head(&self, path: &Path, len: usize) -> io::Result<Vec<u8>>;
    /// A small text file (`pyvenv.cfg`, pyenv's `version`).
    fn read_small(&self, path: &Path) -> io::Result<String>;
    /// `(effective uid, real uid, real gid)` of the supervisor.
    fn ids(&self) -> (u32, u32, u32);
}

/// Type of a path, without following a final symlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File { executable: bool },
    Dir,
    Symlink,
    Other,
}

/// The real host.
pub struct RealFs;

impl HostFs for RealFs {
    fn kind(&self, path: &Path) -> io::Result<Kind> {
        let meta = std::fs::symlink_metadata(path)?;
        let t = meta.file_type();
        Ok(if t.is_symlink() {
            Kind::Symlink
        } else if t.is_dir() {
            Kind::Dir
        } else if t.is_file() {
            Kind::File {
                executable: meta.permissions().mode() & 0o111 != 0,
            }
        } else {
            Kind::Other
        })
    }
    fn read_link(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::read_link(path)
    }
    fn canonicalize(&self, path: &Path) -> io::Result<PathBuf> {
        std::fs::canonicalize(path)
    }
    fn read_head(&self, path: &Path, len: usize) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut buf = vec![0; len];
        let n = std::fs::File::open(path)?.read(&mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
    fn read_small(&self, path: &Path) -> io::Result<String> {
        use std::io::Read;
        let mut text = String::new();
        std::fs::File::open(path)?
            .take(64 * 1024)
            .read_to_string(&mut text)?;
        Ok(text)
    }
    fn ids(&self) -> (u32, u32, u32) {
        (
            nix::unistd::geteuid().as_raw(),
            nix::unistd::getuid().as_raw(),
            nix::unistd::getgid().as_raw(),
        )
    }
}

/// CLI conveniences layered on top of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// `--allow-read PATH`: added to `filesystem.read_only`.
    pub allow_read: Vec<PathBuf>,
    /// `--allow-write PATH`: added to `filesystem.read_write`.
    pub allow_write: Vec<PathBuf>,
    /// `--no-sandbox`: plain spawn (the caller must log and audit it loudly).
    pub no_sandbox: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Copy)]
pub struct PlanInput<'a> {
    /// `spec.sandbox`, or the default when the policy has none.
    pub config: &'a SandboxConfig,
    /// The server command (argv).
    pub command: &'a [OsString],
    /// aip's working directory (absolute).
    pub cwd: &'a Path,
    pub overrides: &'a Overrides,
    /// aip's environment (PATH lookup and pass-through).
    pub env: &'a [(OsString, OsString)],
    /// Files that must never be visible inside: the policy file, the audit file.
    pub hidden: &'a [PathBuf],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoteLevel {
    Info,
    Warn,
}

/// Something the caller should tell the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub level: NoteLevel,
    pub message: String,
}

/// The planner's result.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    pub spec: SandboxSpec,
    pub notes: Vec<Note>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("spec.sandbox.{field}: {message}")]
    Config { field: String, message: String },
    #[error("the server command is empty")]
    EmptyCommand,
    #[error(
        "{command}: command not found in PATH\nhint: write the command's absolute path, or fix PATH"
    )]
    NotFound { command: String },
    #[error("{}: {message}\nhint: {hint}", path.display())]
    Path {
        path: PathBuf,
        message: String,
        hint: String,
    },
    #[error(
        "filesystem: {} would be visible inside the sandbox through {}\nhint: move it out of granted directories \
         or narrow the grant; the policy and audit files must never be reachable by the server",
        hidden.display(),
        through.display()
    )]
    Exposed { hidden: PathBuf, through: PathBuf },
}

/// Plans the sandbox for `input`.
pub fn plan(input: &PlanInput<'_>, fs: &dyn HostFs) -> Result<Plan, PlanError> {
    input
        .config
        .validate()
        .map_err(|(field, message)| PlanError::Config { field, message })?;
    let argv0 = input.command.first().ok_or(PlanError::EmptyCommand)?;
    let host_path = env_value(input.env, "PATH").unwrap_or_default();
    let executable = locate(argv0, input.cwd, &host_path, fs)?;
    let mut notes = Vec::new();

    if input.overrides.no_sandbox {
        notes.push(Note {
            level: NoteLevel::Warn,
            message: "the sandbox is DISABLED (--no-sandbox): the server runs with aip's privileges, files, network \
                      and environment"
                .into(),
        });
        let (_, uid, gid) = fs.ids();
        let spec = SandboxSpec {
            enabled: false,
            argv: input.command.to_vec(),
            executable,
            cwd: input.cwd.to_path_buf(),
            env: input.env.to_vec(),
            mounts: vec![],
            files: vec![],
            symlinks: vec![],
            root_size: 0,
            net: NetMode::Host,
            resources: Resources {
                memory: None,
                pids: None,
                cpu: None,
                open_files: DEFAULT_OPEN_FILES,
            },
            seccomp: SeccompProfile::Generic,
            landlock: LandlockSpec {
                min_abi: 0,
                connect_tcp: vec![],
                bind_tcp: vec![],
                connect_udp: vec![],
            },
            user: User { uid, gid },
            hostname: HOSTNAME.into(),
            allow_degraded: Default::default(),
            hidden: input.hidden.to_vec(),
        };
        return Ok(Plan { spec, notes });
    }

    let config = input.config;
    let mut program = Program::default();
    resolve_program(&executable, &host_path, fs, &mut program, 0)?;
    if let Some(script) = script_argument(input.command, input.cwd, program.runtime, fs) {
        notes.push(Note {
            level: NoteLevel::Info,
            message: format!(
                "the script {} and its project directory are visible read-only",
                script.display()
            ),
        });
        add_script_dirs(&script, program.runtime, fs, &mut program);
    }

    let mut mounts: Vec<Mount> = Vec::new();
    let mut symlinks: Vec<Symlink> = Vec::new();
    for dir in SYSTEM_DIRS {
        match fs.kind(Path::new(dir)) {
            Ok(Kind::Dir) => mounts.push(bind(dir, dir, Access::Exec)),
            Ok(Kind::Symlink) => symlinks.push(Symlink {
                path: dir.into(),
                target: fs.read_link(Path::new(dir)).map_err(|e| io_error(dir, e))?,
            }),
            _ => {}
        }
    }
    for dir in collapse(&program.exec_dirs) {
        if !is_system(&dir) {
            // Derived from the server's own files (its path, #! lines, node_modules, a venv):
            // held to the same limits as a grant, and said.
            if let Some((forbidden, why)) = forbidden_grant(&dir) {
                return Err(PlanError::Path {
                    path: dir,
                    message: "is where the server's program or runtime lives, and cannot be visible in the sandbox".into(),
                    hint: format!("{forbidden}: {why}"),
                });
            }
            notes.push(Note {
                level: NoteLevel::Info,
                message: format!(
                    "{} is visible read-only and executable: the server's program or runtime lives there",
                    dir.display()
                ),
            });
            mounts.push(Mount {
                target: dir.clone(),
                kind: MountKind::Bind {
                    source: dir,
                    access: Access::Exec,
                },
            });
        }
    }

    // The policy's and the command line's grants.
    let fsc = &config.filesystem;
    let mut grants: Vec<(PathBuf, Access, String)> = Vec::new();
    for (list, access, paths) in [
        ("read_only", Access::ReadOnly, &fsc.read_only),
        ("read_write", Access::ReadWrite, &fsc.read_write),
        ("exec", Access::Exec, &fsc.exec),
    ] {
        for (i, p) in paths.iter().enumerate() {
            grants.push((
                PathBuf::from(p),
                access,
                format!("spec.sandbox.filesystem.{list}[{i}]"),
            ));
        }
    }
    for p in &input.overrides.allow_read {
        grants.push((p.clone(), Access::ReadOnly, "--allow-read".into()));
    }
    for p in &input.overrides.allow_write {
        grants.push((p.clone(), Access::ReadWrite, "--allow-write".into()));
    }
    for (path, access, origin) in grants {
        let absolute = input.cwd.join(&path);
        let real = fs.canonicalize(&absolute).map_err(|e| PlanError::Path {
            path: absolute.clone(),
            message: format!("cannot be granted ({origin}): {e}"),
            hint: "grant an existing path (create it first)".into(),
        })?;
        if let Some((forbidden, why)) = forbidden_grant(&real) {
            return Err(PlanError::Path {
                path: absolute,
                message: format!(
                    "resolves to {} ({origin}), which cannot be granted",
                    real.display()
                ),
                hint: format!("{forbidden}: {why}"),
            });
        }
        if real != absolute {
            notes.push(Note {
                level: NoteLevel::Info,
                message: format!(
                    "{} is granted at its real path {}",
                    absolute.display(),
                    real.display()
                ),
            });
        }
        add_grant(&mut mounts, real, access, &origin)?;
    }

    // /proc, /dev, /tmp.
    let tmp_size = size_or(&fsc.tmpfs.tmp, DEFAULT_TMP_SIZE, "filesystem.tmpfs.tmp")?;
    let shm_size = size_or(&fsc.tmpfs.shm, DEFAULT_SHM_SIZE, "filesystem.tmpfs.shm")?;
    mounts.push(Mount {
        target: "/proc".into(),
        kind: MountKind::Proc,
    });
    // Device nodes are bound onto the read-only root tmpfs (no /dev tmpfs: one mount less).
    for dev in DEVICES {
        mounts.push(bind(dev, dev, Access::Device));
    }
    mounts.push(Mount {
        target: "/dev/shm".into(),
        kind: MountKind::Tmpfs {
            size: shm_size,
            mode: 0o1777,
            writable: true,
        },
    });
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ] {
        symlinks.push(Symlink {
            path: Path::new("/dev").join(name),
            target: target.into(),
        });
    }
    if !mounts.iter().any(|m| m.target == Path::new("/tmp")) {
        mounts.push(Mount {
            target: "/tmp".into(),
            kind: MountKind::Tmpfs {
                size: tmp_size,
                mode: 0o1777,
                writable: true,
            },
        });
    }

    // /etc: what programs need, skipping anything a grant already covers.
    let network = config.network.unwrap_or(Network::None);
    let (euid, uid, gid) = fs.ids();
    let root = euid == 0;
    let user = match (&config.user, root) {
        (Some(u), true) => User {
            uid: u.uid,
            gid: u.gid.unwrap_or(u.uid),
        },
        (_, true) => User {
            uid: DEFAULT_UID,
            gid: DEFAULT_UID,
        },
        (_, false) => User { uid, gid },
    };
    if config.user.is_some() && !root {
        notes.push(Note {
            level: NoteLevel::Info,
            message: "spec.sandbox.user applies only when aip runs as root; the server runs as your own uid".into(),
        });
    }
    let mut etc: Vec<&str> = ETC_ENTRIES.to_vec();
    if network == Network::Host {
        etc.extend(["/etc/resolv.conf", "/etc/hosts"]);
    }
    // Small files are copied onto the root tmpfs (a write is far cheaper than a bind mount, and
    // a snapshot is what a read-only view means); directories and large files are bound.
    let mut copies: Vec<GeneratedFile> = Vec::new();
    for entry in etc {
        let path = Path::new(entry);
        if covered(&mounts, path) {
            continue;
        }
        let source = match fs.kind(path) {
            Ok(Kind::Symlink) => {
                let target = fs.read_link(path).map_err(|e| io_error(entry, e))?;
                // A link into the visible tree stays a link; one that leaves it (e.g. to /run)
                // would dangle, so its target is used when that is a regular file (never a
                // socket).
                match fs.canonicalize(path).ok() {
                    Some(real)
                        if !covered(&mounts, &real)
                            && matches!(fs.kind(&real), Ok(Kind::File { .. })) =>
                    {
                        real
                    }
                    _ => {
                        symlinks.push(Symlink {
                            path: path.into(),
                            target,
                        });
                        continue;
                    }
                }
            }
            Ok(Kind::File { .. }) => path.to_path_buf(),
            Ok(Kind::Dir) => {
                mounts.push(bind(entry, entry, Access::ReadOnly));
                continue;
            }
            _ => continue,
        };
        match fs.read_head(&source, COPY_LIMIT + 1) {
            Ok(contents) if contents.len() <= COPY_LIMIT => copies.push(GeneratedFile {
                path: path.into(),
                contents: contents.into(),
                mode: 0o644,
            }),
            _ => mounts.push(Mount {
                target: path.into(),
                kind: MountKind::Bind {
                    source,
                    access: Access::ReadOnly,
                },
            }),
        }
    }
    let name = if user.uid == DEFAULT_UID {
        "nobody"
    } else {
        "sandbox"
    };
    let mut files = copies;
    files.extend([
        GeneratedFile {
            path: "/etc/passwd".into(),
            contents: passwd(name, &user).into_bytes().into(),
            mode: 0o644,
        },
        GeneratedFile {
            path: "/etc/group".into(),
            contents: group(name, &user).into_bytes().into(),
            mode: 0o644,
        },
        GeneratedFile {
            path: "/etc/hostname".into(),
            contents: format!("{HOSTNAME}\n").into_bytes().into(),
            mode: 0o644,
        },
    ]);
    if network != Network::Host {
        files.push(GeneratedFile {
            path: "/etc/hosts".into(),
            contents: hosts().into_bytes().into(),
            mode: 0o644,
        });
        files.push(GeneratedFile {
            path: "/etc/resolv.conf".into(),
            contents: b"# aip sandbox: name resolution goes through the supervisor (or nowhere)\nnameserver 127.0.0.1\noptions timeout:1 attempts:1\n"[..].into(),
            mode: 0o644,
        });
    }
    files.retain(|f| {
        let keep = !covered(&mounts, &f.path);
        if !keep {
            notes.push(Note {
                level: NoteLevel::Info,
                message: format!(
                    "{} comes from a granted directory, not generated",
                    f.path.display()
                ),
            });
        }
        keep
    });
    symlinks.retain(|l| !covered(&mounts, &l.path) && !mounts.iter().any(|m| m.target == l.path));

    mounts.sort_by(|a, b| a.target.components().cmp(b.target.components()));
    for hidden in input.hidden {
        let real = fs.canonicalize(hidden).unwrap_or_else(|_| hidden.clone());
        for m in &mounts {
            if let MountKind::Bind { source, .. } = &m.kind
                && (real.starts_with(source) || hidden.starts_with(source))
            {
                return Err(PlanError::Exposed {
                    hidden: hidden.clone(),
                    through: source.clone(),
                });
            }
        }
    }

    let cwd = if covered(&mounts, input.cwd) {
        input.cwd.to_path_buf()
    } else {
        notes.push(Note {
            level: NoteLevel::Info,
            message: format!(
                "the working directory {} is not granted; the server starts in /",
                input.cwd.display()
            ),
        });
        PathBuf::from("/")
    };

    if network == Network::Host {
        notes.push(Note {
            level: NoteLevel::Warn,
            message: "spec.sandbox.network is `host`: the server shares aip's network (host loopback services, the \
                      LAN and the internet are reachable)"
                .into(),
        });
    }

    let env = environment(input.env, config, &program, name);
    let resources = Resources {
        memory: config
            .resources
            .memory
            .as_ref()
            .map(|m| {
                m.bytes().map(|value| Limit {
                    value,
                    required: true,
                })
            })
            .transpose()
            .map_err(|message| PlanError::Config {
                field: "resources.memory".into(),
                message,
            })?,
        pids: config.resources.pids.map(|value| Limit {
            value,
            required: true,
        }),
        cpu: config.resources.cpu.map(|cores| crate::sandbox::CpuLimit {
            quota_us: (cores * 100_000.0).round() as u64,
            period_us: 100_000,
            required: true,
        }),
        open_files: config.resources.open_files.unwrap_or(DEFAULT_OPEN_FILES),
    };
    let seccomp = match config.runtime.unwrap_or(program.runtime) {
        Runtime::Node => SeccompProfile::Node,
        Runtime::Python => SeccompProfile::Python,
        Runtime::Generic => SeccompProfile::Generic,
    };
    let allow_degraded = config
        .allow_degraded
        .iter()
        .map(|l| match l {
            DegradableLayer::Landlock => Layer::Landlock,
            DegradableLayer::Seccomp => Layer::Seccomp,
            DegradableLayer::Resources => Layer::Resources,
        })
        .collect();
    let spec = SandboxSpec {
        enabled: true,
        argv: input.command.to_vec(),
        executable,
        cwd,
        env,
        mounts,
        files,
        symlinks,
        root_size: ROOT_SIZE,
        net: if network == Network::Host {
            NetMode::Host
        } else {
            NetMode::None
        },
        resources,
        seccomp,
        landlock: LandlockSpec {
            min_abi: config.landlock.min_abi.unwrap_or(DEFAULT_LANDLOCK_FLOOR),
            connect_tcp: vec![],
            bind_tcp: vec![],
            connect_udp: vec![],
        },
        user,
        hostname: HOSTNAME.into(),
        allow_degraded,
        hidden: input.hidden.to_vec(),
    };
    Ok(Plan { spec, notes })
}

fn bind(target: &str, source: &str, access: Access) -> Mount {
    Mount {
        target: target.into(),
        kind: MountKind::Bind {
            source: source.into(),
            access,
        },
    }
}

fn io_error(path: &str, e: io::Error) -> PlanError {
    PlanError::Path {
        path: path.into(),
        message: e.to_string(),
        hint: "check the host file system".into(),
    }
}

fn size_or(
    size: &Option<crate::policy::sandbox_config::Size>,
    default: u64,
    field: &str,
) -> Result<u64, PlanError> {
    size.as_ref()
        .map(|s| s.bytes())
        .transpose()
        .map(|v| v.unwrap_or(default))
        .map_err(|message| PlanError::Config {
            field: field.into(),
            message,
        })
}

fn forbidden_grant(real: &Path) -> Option<(&'static str, &'static str)> {
    crate::policy::sandbox_config::FORBIDDEN_GRANTS
        .iter()
        .copied()
        .find(|(f, _)| {
            let f = Path::new(f);
            real == f || (f != Path::new("/") && real.starts_with(f))
        })
}

/// Whether `path` lies at or below a bind or tmpfs target.
fn covered(mounts: &[Mount], path: &Path) -> bool {
    mounts.iter().any(|m| path.starts_with(&m.target))
}

fn is_system(path: &Path) -> bool {
    SYSTEM_DIRS.iter().any(|d| path.starts_with(d))
}

/// Adds a user grant, merging with an automatic mount of the same path.
fn add_grant(
    mounts: &mut Vec<Mount>,
    path: PathBuf,
    access: Access,
    origin: &str,
) -> Result<(), PlanError> {
    if let Some(existing) = mounts.iter_mut().find(|m| m.target == path) {
        let MountKind::Bind {
            access: current, ..
        } = &mut existing.kind
        else {
            return Err(PlanError::Path {
                path,
                message: format!("is already a sandbox mount ({origin})"),
                hint: "remove the grant".into(),
            });
        };
        *current = match (*current, access) {
            (a, b) if a == b => a,
            (Access::Exec, Access::ReadOnly) | (Access::ReadOnly, Access::Exec) => Access::Exec,
            (Access::ReadOnly, Access::ReadWrite) => Access::ReadWrite,
            _ => {
                return Err(PlanError::Path {
                    path,
                    message: format!("is needed executable (it holds the server's runtime) but {origin} grants it writable"),
                    hint: "grant a subdirectory read-write instead (writable paths are never executable)".into(),
                });
            }
        };
        return Ok(());
    }
    mounts.push(Mount {
        target: path.clone(),
        kind: MountKind::Bind {
            source: path,
            access,
        },
    });
    Ok(())
}

/// Keeps only the outermost of nested directories.
fn collapse(dirs: &BTreeSet<PathBuf>) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = Vec::new();
    for d in dirs {
        if !out.iter().any(|o| d.starts_with(o)) {
            out.push(d.clone());
        }
    }
    out
}

/// What running the command needs.
#[derive(Debug)]
struct Program {
    /// Directories to mount read-only + executable.
    exec_dirs: BTreeSet<PathBuf>,
    /// Directories to put on the sandbox's PATH (where interpreters were found).
    path_dirs: Vec<PathBuf>,
    runtime: Runtime,
}

impl Default for Program {
    fn default() -> Self {
        Program {
            exec_dirs: BTreeSet::new(),
            path_dirs: Vec::new(),
            runtime: Runtime::Generic,
        }
    }
}

fn env_value(env: &[(OsString, OsString)], name: &str) -> Option<OsString> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

/// Makes `path` absolute with canonical directories but the last component as given (a final
/// symlink stays a symlink, so interpreters see the name they were invoked by).
fn parent_canonical(path: &Path, fs: &dyn HostFs) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let parent = path.parent().unwrap_or(Path::new("/"));
    Ok(fs.canonicalize(parent)?.join(name))
}

fn is_pyenv_shim(path: &Path) -> bool {
    path.components().collect::<Vec<_>>().windows(2).any(|w| {
        matches!((w[0], w[1]), (Component::Normal(a), Component::Normal(b)) if a == ".pyenv" && b == "shims")
    })
}

/// Finds the program to execute: a path with a slash is taken relative to `cwd`; a bare name is
/// looked up in PATH (pyenv shims are resolved to the selected interpreter).
fn locate(
    argv0: &OsStr,
    cwd: &Path,
    path_var: &OsStr,
    fs: &dyn HostFs,
) -> Result<PathBuf, PlanError> {
    let name = Path::new(argv0);
    if argv0.as_bytes().contains(&b'/') {
        let absolute = cwd.join(name);
        return match fs.kind(&absolute) {
            Ok(Kind::File { .. } | Kind::Symlink) => {
                parent_canonical(&absolute, fs).map_err(|e| not_executable(&absolute, e))
            }
            _ => Err(PlanError::Path {
                path: absolute,
                message: "does not exist or is not a file".into(),
                hint: "check the server command".into(),
            }),
        };
    }
    for dir in std::env::split_paths(path_var) {
        if !dir.is_absolute() {
            continue;
        }
        let candidate = dir.join(name);
        let Ok(real) = fs.canonicalize(&candidate) else {
            continue;
        };
        if !matches!(fs.kind(&real), Ok(Kind::File { executable: true })) {
            continue;
        }
        if is_pyenv_shim(&candidate) {
            if let Some(resolved) = resolve_pyenv_shim(&candidate, name, fs) {
                return Ok(resolved);
            }
            continue;
        }
        return parent_canonical(&candidate, fs).map_err(|e| not_executable(&candidate, e));
    }
    Err(PlanError::NotFound {
        command: argv0.to_string_lossy().into_owned(),
    })
}

fn not_executable(path: &Path, e: io::Error) -> PlanError {
    PlanError::Path {
        path: path.into(),
        message: e.to_string(),
        hint: "check the server command".into(),
    }
}

/// `~/.pyenv/shims/NAME` → `~/.pyenv/versions/<global version>/bin/NAME` (the shim itself is a
/// shell script that needs pyenv, $HOME and more; we run the interpreter it would pick).
fn resolve_pyenv_shim(shim: &Path, name: &Path, fs: &dyn HostFs) -> Option<PathBuf> {
    let root = shim.parent()?.parent()?;
    let version = fs.read_small(&root.join("version")).ok()?;
    let version = version.lines().next()?.trim();
    let candidate = root.join("versions").join(version).join("bin").join(name);
    matches!(
        fs.canonicalize(&candidate).map(|r| fs.kind(&r)),
        Ok(Ok(Kind::File { executable: true }))
    )
    .then(|| parent_canonical(&candidate, fs).ok())
    .flatten()
}

/// Records what running `path` needs: every directory its symlink chain passes through, the
/// package or environment around it, and its `#!` interpreter, recursively.
fn resolve_program(
    path: &Path,
    path_var: &OsStr,
    fs: &dyn HostFs,
    program: &mut Program,
    depth: u32,
) -> Result<(), PlanError> {
    if depth > 4 {
        return Err(PlanError::Path {
            path: path.into(),
            message: "too many nested #! interpreters".into(),
            hint: "run the final interpreter directly".into(),
        });
    }
    let mut current = path.to_path_buf();
    for _ in 0..40 {
        add_runtime_dirs(&current, fs, program);
        match fs.kind(&current) {
            Ok(Kind::Symlink) => {
                let target = fs
                    .read_link(&current)
                    .map_err(|e| not_executable(&current, e))?;
                let next = current.parent().unwrap_or(Path::new("/")).join(target);
                current = parent_canonical(&next, fs).map_err(|e| not_executable(&next, e))?;
            }
            Ok(Kind::File { .. }) => break,
            _ => {
                return Err(PlanError::Path {
                    path: current,
                    message: "is not a regular file".into(),
                    hint: "check the server command".into(),
                });
            }
        }
    }
    let base = current
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    program.runtime = runtime_of(&base);
    let head = fs.read_head(&current, 256).unwrap_or_default();
    let Some(line) = head.strip_prefix(b"#!") else {
        return Ok(());
    };
    let line = line.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut words = line.split_whitespace();
    let Some(interpreter) = words.next() else {
        return Ok(());
    };
    let interpreter = PathBuf::from(interpreter);
    let is_env = interpreter.file_name() == Some(OsStr::new("env"));
    let resolved = parent_canonical(&interpreter, fs).map_err(|e| PlanError::Path {
        path: interpreter.clone(),
        message: format!(
            "the #! interpreter of {} is missing: {e}",
            current.display()
        ),
        hint: "install the interpreter or run it explicitly".into(),
    })?;
    resolve_program(&resolved, path_var, fs, program, depth + 1)?;
    if is_env {
        // `#!/usr/bin/env [OPTIONS] [NAME=VALUE…] NAME [ARGS]`: env looks NAME up in the
        // sandbox's PATH. The line comes with the (untrusted) server package and everything
        // found here becomes visible in the sandbox, so options are parsed as env parses them
        // (`-u /home/u/.ssh/id_rsa node` names node, not the key) and an unknown one is refused.
        let words: Vec<&str> = words.collect();
        let name = env_program(&words).map_err(|why| PlanError::Path {
            path: current.clone(),
            message: format!("cannot tell which program its #! line runs: {why}"),
            hint: "run the interpreter explicitly (aip run -- node server.js)".into(),
        })?;
        let Some(name) = name else {
            return Ok(());
        };
        let found = locate(OsStr::new(name), Path::new("/"), path_var, fs)?;
        let executable = fs
            .canonicalize(&found)
            .is_ok_and(|real| matches!(fs.kind(&real), Ok(Kind::File { executable: true })));
        if !executable {
            return Err(PlanError::Path {
                path: found,
                message: format!(
                    "is named by the #! line of {} but is not an executable file",
                    current.display()
                ),
                hint: "check the server's #! line".into(),
            });
        }
        if let Some(dir) = found.parent() {
            program.path_dirs.push(dir.to_path_buf());
        }
        resolve_program(&found, path_var, fs, program, depth + 1)?;
    }
    Ok(())
}

/// The program `env` runs, from the words after `env` on a `#!` line (GNU and BSD options:
/// `-i -0 -v -S` and `--` without an argument, `-u -C -P` with one, `--long=value` forms,
/// `NAME=VALUE` assignments). `None` when env would run nothing.
fn env_program<'w>(words: &[&'w str]) -> Result<Option<&'w str>, String> {
    let mut it = words.iter().copied();
    while let Some(w) = it.next() {
        match w {
            "-i"
            | "-0"
            | "-v"
            | "-S"
            | "--ignore-environment"
            | "--null"
            | "--debug"
            | "--split-string" => {}
            "--" => return Ok(it.next()),
            "-u" | "--unset" | "-C" | "--chdir" | "-P" => {
                if it.next().is_none() {
                    return Err(format!("`{w}` without its argument"));
                }
            }
            _ if w.starts_with("--unset=")
                || w.starts_with("--chdir=")
                || w.starts_with("--split-string=")
                || w.starts_with("--default-signal")
                || w.starts_with("--ignore-signal")
                || w.starts_with("--block-signal") => {}
            _ if w.starts_with('-') => return Err(format!("unknown env option `{w}`")),
            _ if w.contains('=') => {}
            _ => return Ok(Some(w)),
        }
    }
    Ok(None)
}

/// The script a `node`/`python` command runs (`node server.js`, `python3 -u app.py`), if any.
fn script_argument(
    command: &[OsString],
    cwd: &Path,
    runtime: Runtime,
    fs: &dyn HostFs,
) -> Option<PathBuf> {
    if runtime == Runtime::Generic {
        return None;
    }
    let mut args = command.iter().skip(1);
    // Options that take a value (python -W x, -X y; node -r x) are rare in server commands; the
    // first argument that is an existing file is the script. `-m`, `-c` and `-e` mean no script.
    let first = args.find(|a| {
        !a.as_bytes().starts_with(b"-") || matches!(a.as_bytes(), b"-m" | b"-c" | b"-e")
    })?;
    if first.as_bytes().starts_with(b"-") {
        return None;
    }
    let real = fs.canonicalize(&cwd.join(first)).ok()?;
    matches!(fs.kind(&real), Ok(Kind::File { .. })).then_some(real)
}

/// A script's project: the nearest directory with a `package.json` (node), or the script's
/// directory; inside `node_modules` or a venv, what [`add_runtime_dirs`] finds.
fn add_script_dirs(script: &Path, runtime: Runtime, fs: &dyn HostFs, program: &mut Program) {
    let Some(dir) = script.parent() else { return };
    if runtime == Runtime::Node
        && !dir
            .components()
            .any(|c| c == Component::Normal(OsStr::new("node_modules")))
    {
        let project = dir
            .ancestors()
            .take_while(|a| *a != Path::new("/"))
            .find(|a| matches!(fs.kind(&a.join("package.json")), Ok(Kind::File { .. })));
        if let Some(project) = project {
            program.exec_dirs.insert(project.to_path_buf());
            return;
        }
    }
    add_runtime_dirs(script, fs, program);
}

fn runtime_of(base: &str) -> Runtime {
    if base.starts_with("node") {
        Runtime::Node
    } else if base.starts_with("python") {
        Runtime::Python
    } else {
        Runtime::Generic
    }
}

/// The directory of `file` and what surrounds it: the outermost `node_modules` (packages resolve
/// their dependencies up the tree), a Python venv and the interpreter prefix it was created from.
fn add_runtime_dirs(file: &Path, fs: &dyn HostFs, program: &mut Program) {
    let Some(dir) = file.parent() else { return };
    if is_system(dir) {
        return;
    }
    let mut prefix = PathBuf::new();
    for component in dir.components() {
        prefix.push(component);
        if component == Component::Normal(OsStr::new("node_modules")) {
            program.exec_dirs.insert(prefix);
            return;
        }
    }
    if let Some(root) = dir.parent()
        && dir.file_name() == Some(OsStr::new("bin"))
    {
        if let Ok(cfg) = fs.read_small(&root.join("pyvenv.cfg")) {
            program.exec_dirs.insert(root.to_path_buf());
            if let Some(home) = cfg.lines().find_map(|l| {
                let (k, v) = l.split_once('=')?;
                (k.trim() == "home").then(|| PathBuf::from(v.trim()))
            }) && let Ok(home) = fs.canonicalize(&home)
                // `home` is where the venv's interpreter came from; pointing it anywhere else
                // (it is the package's own file) must not make that directory visible.
                && ["python3", "python"].iter().any(|py| {
                    fs.canonicalize(&home.join(py)).is_ok_and(|real| {
                        matches!(fs.kind(&real), Ok(Kind::File { executable: true }))
                    })
                })
            {
                let prefix = if home.file_name() == Some(OsStr::new("bin")) {
                    home.parent().map(Path::to_path_buf)
                } else {
                    Some(home)
                };
                if let Some(prefix) = prefix
                    && !is_system(&prefix)
                {
                    program.exec_dirs.insert(prefix);
                }
            }
            return;
        }
        // An interpreter installed in its own prefix (pyenv, nvm, /opt/node): its libraries sit
        // next to bin/.
        if matches!(fs.kind(&root.join("lib")), Ok(Kind::Dir)) && root != Path::new("/") {
            program.exec_dirs.insert(root.to_path_buf());
            return;
        }
    }
    program.exec_dirs.insert(dir.to_path_buf());
}

/// The server's environment: defaults, pass-through and fixed values, never a forbidden name.
fn environment(
    host: &[(OsString, OsString)],
    config: &SandboxConfig,
    program: &Program,
    user: &str,
) -> Vec<(OsString, OsString)> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let mut path_dirs: Vec<String> = Vec::new();
    for dir in &program.path_dirs {
        let d = dir.display().to_string();
        if !path_dirs.contains(&d) {
            path_dirs.push(d);
        }
    }
    for d in ["/usr/local/bin", "/usr/bin", "/bin"] {
        if !path_dirs.iter().any(|p| p == d) {
            path_dirs.push(d.into());
        }
    }
    env.insert("PATH".into(), path_dirs.join(":").into());
    env.insert("HOME".into(), "/tmp".into());
    env.insert("TMPDIR".into(), "/tmp".into());
    env.insert("USER".into(), user.into());
    env.insert("LOGNAME".into(), user.into());
    let patterns: Vec<&str> = DEFAULT_PASS
        .iter()
        .copied()
        .chain(config.env.pass.iter().map(String::as_str))
        .collect();
    for (key, value) in host {
        let Some(name) = key.to_str() else { continue };
        let matches = patterns.iter().any(|p| match p.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => name == *p,
        });
        if matches && !env_forbidden(name) {
            env.insert(key.clone(), value.clone());
        }
    }
    for (key, value) in &config.env.set {
        env.insert(key.into(), value.into());
    }
    env.into_iter().collect()
}

fn passwd(name: &str, user: &User) -> String {
    let mut out = String::from("root:x:0:0:root:/root:/usr/sbin/nologin\n");
    if user.uid != DEFAULT_UID {
        out.push_str(&format!(
            "{name}:x:{}:{}:aip sandbox:/tmp:/usr/sbin/nologin\n",
            user.uid, user.gid
        ));
    }
    out.push_str("nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n");
    out
}

fn group(name: &str, user: &User) -> String {
    let mut out = String::from("root:x:0:\n");
    if user.gid != DEFAULT_UID {
        out.push_str(&format!("{name}:x:{}:\n", user.gid));
    }
    out.push_str("nogroup:x:65534:\n");
    out
}

fn hosts() -> String {
    format!(
        "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{HOSTNAME}\n"
    )
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
