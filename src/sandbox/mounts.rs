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
//!
//! In a long-lived root supervisor (aipd) the root tmpfs is a clone of a per-spec read-only
//! template (see [`template`]) with the same content, made once; what lies below the spec's
//! other mounts is still made per sandbox.

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, fstat, mkdirat};
use nix::unistd::{fchdir, pivot_root, symlinkat};

use super::error::SetupFailure;
use super::spec::{Access, GeneratedFile, Layer, MountKind, SandboxSpec, Symlink};
use super::sys;

/// Where the new root tmpfs is mounted before `pivot_root` (inside our private mount namespace,
/// so the host never sees it; bind sources were opened before it covers anything).
const STAGING: &str = "/tmp";

mod template;
pub use template::Template;

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

/// An opened directory of the new root.
struct Dir {
    fd: OwnedFd,
    /// On one of our tmpfs mounts: directories and files may be created in it.
    ours: bool,
    /// Made by us during this build (or the root of a tmpfs we just mounted): it holds exactly
    /// what [`Tree::made`] lists below it, so a name not listed there needs no lookup first.
    fresh: bool,
}

/// The new root while it is being built: directories already opened (each path is resolved
/// once), which tmpfs mounts are ours (by device number), and what this build created. Only
/// our tmpfs mounts ever get directories or files created in them.
struct Tree {
    root: OwnedFd,
    dirs: HashMap<PathBuf, Dir>,
    ours: HashSet<u64>,
    made: HashSet<PathBuf>,
}

impl Tree {
    fn new(root: OwnedFd) -> Tree {
        let mut tree = Tree {
            root,
            dirs: HashMap::new(),
            ours: HashSet::new(),
            made: HashSet::new(),
        };
        let root_fd = tree.root.try_clone().ok();
        if let Some(fd) = root_fd {
            tree.mark_ours(&fd);
        }
        tree
    }

    fn is_ours(&self, fd: BorrowedFd<'_>) -> bool {
        fstat(fd)
            .map(|st| self.ours.contains(&st.st_dev))
            .unwrap_or(false)
    }

    fn mark_ours(&mut self, fd: &impl AsFd) {
        if let Ok(st) = fstat(fd.as_fd()) {
            self.ours.insert(st.st_dev);
        }
    }

    fn fd(&self, dir: &Path) -> BorrowedFd<'_> {
        self.dirs
            .get(dir)
            .map_or(self.root.as_fd(), |d| d.fd.as_fd())
    }

    /// Whether `dir` (opened by [`Tree::open_dirs`]) is on one of our tmpfs mounts.
    fn dir_is_ours(&self, dir: &Path) -> bool {
        match self.dirs.get(dir) {
            Some(d) => d.ours,
            // The root tmpfs, which `fd` falls back to.
            None => dir == Path::new("/"),
        }
    }

    /// Whether `path` certainly does not exist yet: its directory was made by this build and
    /// this build did not make `path` in it.
    fn surely_absent(&self, parent: &Path, path: &Path) -> bool {
        let fresh = match self.dirs.get(parent) {
            Some(d) => d.fresh,
            None => parent == Path::new("/"),
        };
        fresh && !self.made.contains(path)
    }

    /// Opens (creating on our tmpfs when missing) every directory of `dir`; [`Tree::fd`] then
    /// returns it.
    fn open_dirs(&mut self, dir: &Path) -> Result<(), SetupFailure> {
        let step = || format!("create {}", dir.display());
        let mut prefix = PathBuf::from("/");
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
            let path = prefix.join(name);
            if !self.dirs.contains_key(&path) {
                let opened = open_or_create(self, &prefix, name, true, 0o755)
                    .map_err(|e| fail(step(), &e))?;
                self.dirs.insert(path.clone(), opened);
            }
            prefix = path;
        }
        Ok(())
    }

    /// A mount now covers `target`: cached descriptors at or below it refer to what it hides,
    /// and what this build made below it is hidden too.
    fn covered(&mut self, target: &Path) {
        self.dirs.retain(|path, _| !path.starts_with(target));
        self.made
            .retain(|path| path == target || !path.starts_with(target));
    }
}

/// Opens `name` in the directory `parent_path` as a [`Dir`]-like descriptor (`O_PATH` when it
/// existed; a new file is opened for writing, which serves as well as a mount point), creating
/// it (directory or empty file) when it is missing and `parent_path` is on one of our tmpfs
/// mounts. In a directory this build made, a name it did not make is created straight away
/// (`O_EXCL`/`mkdirat` still refuse anything that exists), without looking it up first.
fn open_or_create(
    tree: &mut Tree,
    parent_path: &Path,
    name: &OsStr,
    dir: bool,
    mode: u32,
) -> io::Result<Dir> {
    let path = parent_path.join(name);
    let parent_ours = tree.dir_is_ours(parent_path);
    let flags = if dir {
        OFlag::O_PATH | OFlag::O_DIRECTORY
    } else {
        OFlag::O_PATH | OFlag::O_NOFOLLOW
    };
    if parent_ours && tree.surely_absent(parent_path, &path) {
        match create(tree.fd(parent_path), name, dir, mode) {
            Ok(fd) => {
                tree.made.insert(path);
                return Ok(Dir {
                    fd,
                    ours: true,
                    fresh: true,
                });
            }
            // Not what the bookkeeping expected: fall back to looking it up.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    let parent = tree.fd(parent_path);
    match openat2(parent, name, how(flags)) {
        Ok(fd) => {
            let ours = tree.is_ours(fd.as_fd());
            Ok(Dir {
                fd,
                ours,
                fresh: false,
            })
        }
        Err(nix::errno::Errno::ENOENT) => {
            if !parent_ours {
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "missing inside a bind of a host directory (it is never created there)",
                ));
            }
            let fd = create(parent, name, dir, mode)?;
            tree.made.insert(path);
            Ok(Dir {
                fd,
                ours: true,
                fresh: true,
            })
        }
        Err(e) => Err(errno(e)),
    }
}

/// Creates `name` in `parent` (which must not have it yet) and opens it: a directory as
/// `O_PATH`, a file as the descriptor that created it.
fn create(parent: BorrowedFd<'_>, name: &OsStr, dir: bool, mode: u32) -> io::Result<OwnedFd> {
    if dir {
        mkdirat(parent, name, Mode::from_bits_truncate(mode)).map_err(errno)?;
        openat2(parent, name, how(OFlag::O_PATH | OFlag::O_DIRECTORY)).map_err(errno)
    } else {
        let how = how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW)
            .mode(Mode::from_bits_truncate(mode));
        openat2(parent, name, how).map_err(errno)
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
fn parent_on_our_tmpfs<'t, 'p>(
    tree: &'t mut Tree,
    path: &'p Path,
    step: &str,
) -> Result<(BorrowedFd<'t>, &'p OsStr), SetupFailure> {
    let (parent_path, name) = split(path);
    tree.open_dirs(parent_path)?;
    if !tree.dir_is_ours(parent_path) {
        return Err(SetupFailure::reason(
            Layer::Filesystem,
            step,
            "its directory is a bind of a host directory",
        ));
    }
    tree.made.insert(path.to_path_buf());
    Ok((tree.fd(parent_path), name))
}

/// Writes a generated file (on one of our tmpfs mounts) with its exact mode.
fn write_file(tree: &mut Tree, file: &GeneratedFile) -> Result<(), SetupFailure> {
    let step = format!("write {}", file.path.display());
    let (parent, name) = parent_on_our_tmpfs(tree, &file.path, &step)?;
    let how = how(OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW)
        .mode(Mode::from_bits_truncate(file.mode));
    let fd = openat2(parent, name, how).map_err(|e| fail(step.clone(), &errno(e)))?;
    std::fs::File::from(fd)
        .write_all(&file.contents)
        .map_err(|e| fail(step, &e))
}

/// Creates a symlink of the spec (on one of our tmpfs mounts).
fn make_symlink(tree: &mut Tree, link: &Symlink) -> Result<(), SetupFailure> {
    let step = format!("symlink {}", link.path.display());
    let (parent, name) = parent_on_our_tmpfs(tree, &link.path, &step)?;
    symlinkat(link.target.as_os_str().as_bytes(), parent, name).map_err(|e| fail(step, &errno(e)))
}

fn proc_fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

/// Builds the root file system and pivots into it. Returns the number of mounts made.
pub fn build_root(spec: &SandboxSpec, template: Option<&Template>) -> Result<usize, SetupFailure> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("make mounts private".into(), &errno(e)))?;
    // Modes are meant exactly; the caller's umask is restored before anything else runs.
    let umask = nix::sys::stat::umask(Mode::empty());
    let built = build_tree(spec, template);
    nix::sys::stat::umask(umask);
    let root = built?;

    fchdir(root.as_fd()).map_err(|e| fail("enter new root".into(), &errno(e)))?;
    pivot_root(".", ".").map_err(|e| fail("pivot_root".into(), &errno(e)))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach host root".into(), &errno(e)))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /".into(), &errno(e)))?;
    Ok(spec.mounts.len())
}

/// Everything up to the pivot; returns the (read-only) new root.
fn build_tree(spec: &SandboxSpec, template: Option<&Template>) -> Result<OwnedFd, SetupFailure> {
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

    // A clone of the spec's template when it fits, else a fresh tmpfs built the long way.
    let template = template.filter(|t| t.fits(spec, &detached));
    let template = template.filter(|t| t.attach(Path::new(STAGING)).is_ok());
    if template.is_none() {
        let root_options = format!("size={},mode=0755", spec.root_size);
        mount(
            Some("tmpfs"),
            STAGING,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some(root_options.as_str()),
        )
        .map_err(|e| fail("mount root tmpfs".into(), &errno(e)))?;
    }
    let root = nix::fcntl::open(
        STAGING,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fail("open root tmpfs".into(), &errno(e)))?;
    let mut tree = Tree::new(root);
    if let Some(t) = template {
        tree.made = t.made().clone();
    }

    let mut seal_later = Vec::new();
    for (entry, prepared) in spec.mounts.iter().zip(detached) {
        let target = &entry.target;
        let step = |what: &str| format!("{what} {}", target.display());
        let (parent_path, name) = split(target);
        let is_dir = prepared.as_ref().is_none_or(|d| d.is_dir);
        tree.open_dirs(parent_path)?;
        let point = open_or_create(
            &mut tree,
            parent_path,
            name,
            is_dir,
            if is_dir { 0o755 } else { 0o644 },
        )
        .map_err(|e| fail(step("mount point"), &e))?
        .fd;
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
                tree.covered(target);
                let mounted = openat2(
                    tree.fd(parent_path),
                    name,
                    how(OFlag::O_PATH | OFlag::O_DIRECTORY),
                )
                .map_err(|e| fail(step("open tmpfs"), &errno(e)))?;
                tree.mark_ours(&mounted);
                if !writable {
                    let sealed = mounted
                        .try_clone()
                        .map_err(|e| fail(step("open tmpfs"), &e))?;
                    seal_later.push((target.clone(), sealed));
                }
                // Empty and ours: what is made in it needs no lookups.
                let dir = Dir {
                    fd: mounted,
                    ours: true,
                    fresh: true,
                };
                tree.dirs.insert(target.clone(), dir);
                continue;
            }
            (MountKind::Proc, _) => {
                let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
                mount(Some("proc"), proc_fd_path(&point).as_str(), Some("proc"), flags, Some("hidepid=invisible"))
                    .map_err(|e| {
                        fail(step("proc"), &errno(e)).hint(
                            "procfs can only be mounted where the host's /proc is fully visible (not inside \
                             containers that mask parts of it)",
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
        tree.covered(target);
    }

    // What the template holds is there already.
    let in_template = |path: &Path| template.is_some_and(|t| t.made().contains(path));
    for file in spec.files.iter().filter(|f| !in_template(&f.path)) {
        write_file(&mut tree, file)?;
    }
    for link in spec.symlinks.iter().filter(|l| !in_template(&l.path)) {
        make_symlink(&mut tree, link)?;
    }

    for (target, fd) in seal_later {
        sys::mount_setattr(fd.as_fd(), libc::MOUNT_ATTR_RDONLY, 0, false)
            .map_err(|e| fail(format!("make {} read-only", target.display()), &e))?;
    }
    let Tree { root, .. } = tree;
    let root_attrs = libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR_NOEXEC;
    sys::mount_setattr(root.as_fd(), root_attrs, 0, false)
        .map_err(|e| fail("make root read-only".into(), &e))?;
    Ok(root)
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
