//! The sandbox's root file system: a fresh tmpfs assembled from the spec's allowlist, then
//! `pivot_root` into it with the host's tree detached. Runs in the sandbox's pid 1 (it needs the
//! new pid namespace for `/proc`) while it still holds its capabilities.
//!
//! Invariants: every bind source is opened once with `openat2(RESOLVE_NO_SYMLINKS)` and bound
//! from that fd (`open_tree` + `mount_setattr` + `move_mount`), so a symlink swapped in after
//! planning cannot redirect it, and its read-only/nosuid/nodev/noexec attributes are set while
//! it is still detached (never visible writable). Targets are resolved beneath the new root
//! without following symlinks, and directories or files are only ever created on tmpfs mounts
//! this module made: never inside a bind of a host directory. This module must not choose
//! paths: the spec does.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{fchdir, pivot_root, symlinkat};

use super::error::SetupFailure;
use super::spec::{Access, Layer, MountKind, SandboxSpec};
use super::sys;

/// Where the new root tmpfs is mounted before `pivot_root` (inside our private mount namespace,
/// so the host never sees it; bind sources were opened before it covers anything).
const STAGING: &str = "/tmp";

fn fail(step: String, err: &io::Error) -> SetupFailure {
    SetupFailure::new(Layer::Filesystem, step, err)
}

fn errno(e: nix::errno::Errno) -> io::Error {
    io::Error::from(e)
}

fn how(flags: OFlag) -> OpenHow {
    OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

/// Mount attributes for a bind of the given access.
fn bind_attrs(access: Access) -> u64 {
    let (ro, nosuid, nodev, noexec) = (
        libc::MOUNT_ATTR_RDONLY,
        libc::MOUNT_ATTR_NOSUID,
        libc::MOUNT_ATTR_NODEV,
        libc::MOUNT_ATTR_NOEXEC,
    );
    match access {
        Access::ReadOnly => ro | nosuid | nodev | noexec,
        Access::Exec => ro | nosuid | nodev,
        Access::ReadWrite => nosuid | nodev | noexec,
        Access::Device => nosuid | noexec,
    }
}

/// Prepared bind: the detached mount, already carrying its final attributes.
struct Detached {
    mount: OwnedFd,
    is_dir: bool,
}

/// Opens a bind source without following symlinks and clones it into a detached mount.
fn detach_source(
    host_root: &OwnedFd,
    source: &Path,
    access: Access,
) -> Result<Detached, SetupFailure> {
    let step = || format!("bind source {}", source.display());
    let root = host_root;
    let relative = source.strip_prefix("/").unwrap_or(source);
    let fd = openat2(
        root.as_fd(),
        relative,
        how(OFlag::O_PATH | OFlag::O_NOFOLLOW),
    )
    .map_err(|e| {
        let f = fail(step(), &errno(e));
        match e {
            nix::errno::Errno::ENOENT => {
                f.hint("the path does not exist (any more); fix or remove the grant")
            }
            nix::errno::Errno::ELOOP | nix::errno::Errno::EXDEV => {
                f.hint("a component became a symlink after planning; grants must name real paths")
            }
            _ => f,
        }
    })?;
    let is_dir = fstat(fd.as_fd())
        .map(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR)
        .unwrap_or(false);
    let attrs = bind_attrs(access);
    let (mount, recursive) = match sys::open_tree_clone(fd.as_fd(), false) {
        Ok(m) => (m, false),
        // In a user namespace, a non-recursive copy of a mount whose children are locked to it
        // is refused; carry them along (they are below the granted path) and restrict them too.
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => (
            sys::open_tree_clone(fd.as_fd(), true).map_err(|e| fail(step(), &e))?,
            true,
        ),
        Err(e) => return Err(fail(step(), &e)),
    };
    sys::mount_setattr(mount.as_fd(), attrs, 0, recursive)
        .map_err(|e| fail(format!("restrict bind of {}", source.display()), &e))?;
    Ok(Detached { mount, is_dir })
}

/// The tmpfs mounts this module created, by device number: the only places where it may create
/// directories and files.
struct Ours {
    devices: HashSet<u64>,
}

impl Ours {
    fn contains(&self, fd: &impl AsFd) -> bool {
        fstat(fd.as_fd())
            .map(|st| self.devices.contains(&st.st_dev))
            .unwrap_or(false)
    }
    fn add(&mut self, fd: &impl AsFd) {
        if let Ok(st) = fstat(fd.as_fd()) {
            self.devices.insert(st.st_dev);
        }
    }
}

/// Opens (creating on our tmpfs when missing) every directory of `dir`, relative to `root`.
fn open_dirs(root: &OwnedFd, dir: &Path, ours: &Ours) -> Result<OwnedFd, SetupFailure> {
    let step = || format!("create {}", dir.display());
    let mut current = root.try_clone().map_err(|e| fail(step(), &e))?;
    for component in dir.components() {
        let name = match component {
            Component::Normal(name) => name,
            Component::RootDir => continue,
            _ => {
                return Err(SetupFailure::reason(
                    Layer::Filesystem,
                    step(),
                    "path is not clean",
                ));
            }
        };
        current =
            open_or_create(&current, name, true, 0o755, ours).map_err(|e| fail(step(), &e))?;
    }
    Ok(current)
}

/// Opens `name` in `parent` as an `O_PATH` fd, creating it (directory or empty file) first when
/// it is missing and `parent` is one of our tmpfs mounts.
fn open_or_create(
    parent: &OwnedFd,
    name: &OsStr,
    dir: bool,
    mode: u32,
    ours: &Ours,
) -> io::Result<OwnedFd> {
    let flags = if dir {
        OFlag::O_PATH | OFlag::O_DIRECTORY
    } else {
        OFlag::O_PATH | OFlag::O_NOFOLLOW
    };
    match openat2(parent.as_fd(), name, how(flags)) {
        Ok(fd) => Ok(fd),
        Err(nix::errno::Errno::ENOENT) => {
            if !ours.contains(parent) {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "missing inside a bind of a host directory (it is never created there)",
                ));
            }
            if dir {
                mkdirat(parent.as_fd(), name, Mode::from_bits_truncate(mode)).map_err(errno)?;
            } else {
                let how = how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW)
                    .mode(Mode::from_bits_truncate(mode));
                drop(openat2(parent.as_fd(), name, how).map_err(errno)?);
            }
            openat2(parent.as_fd(), name, self::how(flags)).map_err(errno)
        }
        Err(e) => Err(errno(e)),
    }
}

fn split(path: &Path) -> (&Path, &OsStr) {
    (
        path.parent().unwrap_or(Path::new("/")),
        path.file_name().unwrap_or(OsStr::new("")),
    )
}

/// Opens the directory that will hold `path`, which must be one of our tmpfs mounts (generated
/// files and symlinks are never written into a host directory).
fn parent_on_our_tmpfs<'p>(
    root: &OwnedFd,
    path: &'p Path,
    ours: &Ours,
    step: &str,
) -> Result<(OwnedFd, &'p OsStr), SetupFailure> {
    let (parent_path, name) = split(path);
    let parent = open_dirs(root, parent_path, ours)?;
    if !ours.contains(&parent) {
        return Err(SetupFailure::reason(
            Layer::Filesystem,
            step,
            "its directory is a bind of a host directory",
        ));
    }
    Ok((parent, name))
}

fn proc_fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Builds the root file system and pivots into it. Returns the number of mounts made.
pub fn build_root(spec: &SandboxSpec) -> Result<usize, SetupFailure> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make mounts private".into(), &errno(e)))?;

    // Every source is opened and detached before the staging tmpfs covers anything.
    let host_root = nix::fcntl::open(
        "/",
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open host root".into(), &errno(e)))?;
    let mut detached = Vec::with_capacity(spec.mounts.len());
    for entry in &spec.mounts {
        detached.push(match &entry.kind {
            MountKind::Bind { source, access } => Some(detach_source(&host_root, source, *access)?),
            _ => None,
        });
    }

    drop(host_root);
    let root_options = format!("size={},mode=0755", spec.root_size);
    mount(
        Some("tmpfs"),
        STAGING,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(root_options.as_str()),
    )
    .map_err(|e| fail("mount root tmpfs".into(), &errno(e)))?;
    let root = nix::fcntl::open(
        STAGING,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open root tmpfs".into(), &errno(e)))?;
    let mut ours = Ours {
        devices: HashSet::new(),
    };
    ours.add(&root);

    let mut seal_later = Vec::new();
    for (entry, prepared) in spec.mounts.iter().zip(detached) {
        let target = &entry.target;
        let step = |what: &str| format!("{what} {}", target.display());
        let (parent_path, name) = split(target);
        let parent = open_dirs(&root, parent_path, &ours)?;
        let is_dir = prepared.as_ref().is_none_or(|d| d.is_dir);
        let point = open_or_create(
            &parent,
            name,
            is_dir,
            if is_dir { 0o755 } else { 0o644 },
            &ours,
        )
        .map_err(|e| fail(step("mount point"), &e))?;
        match (&entry.kind, prepared) {
            (MountKind::Bind { .. }, Some(d)) => {
                sys::move_mount(d.mount.as_fd(), point.as_fd())
                    .map_err(|e| fail(step("bind"), &e))?;
            }
            (
                MountKind::Tmpfs {
                    size,
                    mode,
                    writable,
                },
                _,
            ) => {
                let options = format!("size={size},mode={mode:o}");
                let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
                if *writable {
                    flags |= MsFlags::MS_NOEXEC;
                }
                mount(
                    Some("tmpfs"),
                    proc_fd_path(&point).as_str(),
                    Some("tmpfs"),
                    flags,
                    Some(options.as_str()),
                )
                .map_err(|e| fail(step("tmpfs"), &errno(e)))?;
                let mounted = openat2(
                    parent.as_fd(),
                    name,
                    how(OFlag::O_PATH | OFlag::O_DIRECTORY),
                )
                .map_err(|e| fail(step("open tmpfs"), &errno(e)))?;
                ours.add(&mounted);
                if !writable {
                    seal_later.push((target.clone(), mounted));
                }
            }
            (MountKind::Proc, _) => {
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                mount(
                    Some("proc"),
                    proc_fd_path(&point).as_str(),
                    Some("proc"),
                    flags,
                    Some("hidepid=invisible"),
                )
                .map_err(|e| {
                    fail(step("proc"), &errno(e)).hint(
                        "procfs can only be mounted where the host's /proc is fully visible \
                             (not inside containers that mask parts of it)",
                    )
                })?;
            }
            (MountKind::Bind { .. }, None) => {
                return Err(SetupFailure::reason(
                    Layer::Filesystem,
                    step("bind"),
                    "source was not prepared",
                ));
            }
        }
    }

    for file in &spec.files {
        let step = format!("write {}", file.path.display());
        let (parent, name) = parent_on_our_tmpfs(&root, &file.path, &ours, &step)?;
        let how = how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(file.mode));
        let fd = openat2(parent.as_fd(), name, how).map_err(|e| fail(step.clone(), &errno(e)))?;
        nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(file.mode))
            .map_err(|e| fail(step.clone(), &errno(e)))?;
        std::fs::File::from(fd)
            .write_all(&file.contents)
            .map_err(|e| fail(step, &e))?;
    }

    for link in &spec.symlinks {
        let step = format!("symlink {}", link.path.display());
        let (parent, name) = parent_on_our_tmpfs(&root, &link.path, &ours, &step)?;
        symlinkat(link.target.as_os_str().as_bytes(), parent.as_fd(), name)
            .map_err(|e| fail(step, &errno(e)))?;
    }

    for (target, fd) in seal_later {
        sys::mount_setattr(fd.as_fd(), libc::MOUNT_ATTR_RDONLY, 0, false)
            .map_err(|e| fail(format!("make {} read-only", target.display()), &e))?;
    }
    let root_attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOEXEC;
    sys::mount_setattr(root.as_fd(), root_attrs, 0, false)
        .map_err(|e| fail("make root read-only".into(), &e))?;

    fchdir(root.as_fd()).map_err(|e| fail("enter new root".into(), &errno(e)))?;
    pivot_root(".", ".").map_err(|e| fail("pivot_root".into(), &errno(e)))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach host root".into(), &errno(e)))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /".into(), &errno(e)))?;
    Ok(spec.mounts.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_exec_binds_allow_exec_and_only_rw_binds_allow_writes() {
        for access in [
            Access::ReadOnly,
            Access::Exec,
            Access::ReadWrite,
            Access::Device,
        ] {
            let attrs = bind_attrs(access);
            assert_ne!(
                attrs & libc::MOUNT_ATTR_NOSUID,
                0,
                "{access:?} must be nosuid"
            );
            assert_eq!(
                attrs & libc::MOUNT_ATTR_NOEXEC == 0,
                access == Access::Exec,
                "{access:?}"
            );
            assert_eq!(
                attrs & libc::MOUNT_ATTR_RDONLY == 0,
                matches!(access, Access::ReadWrite | Access::Device)
            );
            assert_eq!(
                attrs & libc::MOUNT_ATTR_NODEV == 0,
                access == Access::Device
            );
        }
    }
}
