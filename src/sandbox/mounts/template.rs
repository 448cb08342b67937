//! A per-spec template of the sandbox's root tmpfs, made once by a root supervisor and cloned
//! for each sandbox.
//!
//! Every sandbox of one spec gets the same root tmpfs: its directories, the mount points, the
//! generated `/etc` files and the symlinks. Writing them (~145 KiB with the default spec, mostly
//! copies of host `/etc` files) was about a quarter of a spawn. The template is a detached tmpfs
//! (`fsmount`: never attached in the supervisor's mount namespace, reachable only through its
//! descriptor) holding exactly what a build would write on the root tmpfs, then made read-only,
//! noexec, nosuid and nodev. A sandbox attaches its own clone of it (`open_tree` with
//! `OPEN_TREE_CLONE`) where it would have mounted a fresh tmpfs, and mounts over it as before.
//!
//! Clones share the template's inodes. That is sound because the mount is read-only in every
//! sandbox (the root is read-only anyway, and a read-only mount does not even update access
//! times) and its content is the spec's own, the same for every sandbox of that spec. What lies
//! below another mount of the spec (a tmpfs, a bind) is not in the template: it is made per
//! sandbox, as before.
//!
//! Anything unexpected means no template, never a different root: a kernel that cannot clone a
//! detached mount, a build error, a bind source whose type changed since the template was made.
//! The sandbox then gets a fresh tmpfs built the long way, with the same content.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use super::super::spec::{GeneratedFile, Mount, MountKind, SandboxSpec, Symlink};
use super::super::sys;
use super::{Detached, Tree, make_symlink, open_or_create, split, write_file};

/// Templates kept per process, least recently used dropped first: one per distinct spec (aipd
/// has one per server, and per session uid in use when sessions get their own uids, whose
/// `/etc/passwd` names them). Each holds ~150 KiB of tmpfs with the default spec.
const CACHE_SIZE: usize = 16;

static CACHE: Mutex<Vec<Arc<Template>>> = Mutex::new(Vec::new());
/// Set once the kernel refused a template: later spawns do not try again.
static UNSUPPORTED: AtomicBool = AtomicBool::new(false);
/// Templates are for processes that start many sandboxes ([`Template::enable`]).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// A read-only, detached tmpfs holding one spec's root tmpfs content.
pub struct Template {
    /// The process that made it. A process forked from it (the spawn server) inherits the cache
    /// but closes the descriptors it inherited: their numbers may name other files there.
    owner: nix::unistd::Pid,
    mount: OwnedFd,
    /// Every path it holds, as a build's `Tree::made`.
    made: HashSet<PathBuf>,
    /// The mount targets it has a mount point for, and whether that is a directory.
    points: HashMap<PathBuf, bool>,
    // What it was made from: a spec matches only when all of these are equal.
    root_size: u64,
    mounts: Vec<Mount>,
    files: Vec<GeneratedFile>,
    symlinks: Vec<Symlink>,
    /// Indices of `files`, smallest first.
    by_size: Vec<usize>,
}

impl Template {
    /// The template for `spec`, made on first use. Call it on the thread that forks the
    /// sandboxes (it unshares that thread's umask). `None` when templates cannot be used.
    pub fn for_spec(spec: &SandboxSpec) -> Option<Arc<Template>> {
        if !ENABLED.load(Ordering::Relaxed) || UNSUPPORTED.load(Ordering::Relaxed) {
            return None;
        }
        // Not waiting: another thread may have held the lock when this process was forked from
        // the one that made the cache, and then nobody ever releases it here.
        let mut cache = CACHE.try_lock().ok()?;
        let me = nix::unistd::getpid();
        if cache.iter().any(|t| t.owner != me) {
            let (ours, inherited): (Vec<_>, Vec<_>) = cache.drain(..).partition(|t| t.owner == me);
            // Dropping them would close descriptor numbers this process may use for other files.
            std::mem::forget(inherited);
            *cache = ours;
        }
        if let Some(i) = cache.iter().position(|t| t.matches(spec)) {
            let hit = cache.remove(i);
            cache.push(Arc::clone(&hit));
            return Some(hit);
        }
        let made = match Template::build(spec) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::EPERM)
                ) {
                    UNSUPPORTED.store(true, Ordering::Relaxed);
                }
                tracing::debug!(error = %e, "no root template: each sandbox builds its root");
                return None;
            }
        };
        if cache.len() == CACHE_SIZE {
            cache.remove(0);
        }
        cache.push(Arc::clone(&made));
        Some(made)
    }

    /// Lets [`Template::for_spec`] make and keep templates in this process.
    pub fn enable() {
        ENABLED.store(true, Ordering::Relaxed);
    }

    /// The descriptor a forked setup process must keep open.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.mount.as_fd()
    }

    pub(super) fn made(&self) -> &HashSet<PathBuf> {
        &self.made
    }

    fn matches(&self, spec: &SandboxSpec) -> bool {
        let same_shape = |a: &GeneratedFile, b: &GeneratedFile| {
            a.path == b.path && a.mode == b.mode && a.contents.len() == b.contents.len()
        };
        self.root_size == spec.root_size
            && self.mounts == spec.mounts
            && self.symlinks == spec.symlinks
            && self.files.len() == spec.files.len()
            && self.files.iter().zip(&spec.files).all(|(a, b)| same_shape(a, b))
            // Small files first: specs that differ (by a session uid in /etc/passwd) differ there,
            // and the large copies of host files are then not compared at all.
            && self.by_size.iter().all(|&i| {
                let (ours, theirs) = (&self.files[i].contents, &spec.files[i].contents);
                Arc::ptr_eq(ours, theirs) || ours == theirs
            })
    }

    /// Whether each bind's mount point in the template has the type of its source as just
    /// opened (a host path may have changed from a file to a directory since).
    pub(super) fn fits(&self, spec: &SandboxSpec, detached: &[Option<Detached>]) -> bool {
        spec.mounts.iter().zip(detached).all(|(entry, d)| {
            match (d, self.points.get(&entry.target)) {
                (Some(d), Some(&is_dir)) => d.is_dir == is_dir,
                _ => true,
            }
        })
    }

    /// Mounts a clone of the template on `at` (in the caller's mount namespace).
    pub(super) fn attach(&self, at: &Path) -> io::Result<()> {
        let clone = sys::open_tree_clone(self.mount.as_fd(), false)?;
        let point = nix::fcntl::open(
            at,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        sys::move_mount(clone.as_fd(), point.as_fd())
    }

    fn build(spec: &SandboxSpec) -> io::Result<Template> {
        // Modes are meant exactly, as in a sandbox's own build; the umask is per process unless
        // this thread has its own file system context (only the forking thread gets one).
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
        let umask = nix::sys::stat::umask(Mode::empty());
        let built = Template::populate(spec);
        nix::sys::stat::umask(umask);
        let (tree, points) = built?;
        let Tree { root, made, .. } = tree;
        sys::mount_setattr(root.as_fd(), libc::MOUNT_ATTR_RDONLY, 0, false)?;
        // Older kernels only clone mounts of the caller's own namespace: find out now.
        drop(sys::open_tree_clone(root.as_fd(), false)?);
        let mut by_size: Vec<usize> = (0..spec.files.len()).collect();
        by_size.sort_by_key(|&i| spec.files[i].contents.len());
        Ok(Template {
            owner: nix::unistd::getpid(),
            by_size,
            mount: root,
            made,
            points,
            root_size: spec.root_size,
            mounts: spec.mounts.clone(),
            files: spec.files.clone(),
            symlinks: spec.symlinks.clone(),
        })
    }

    /// Writes everything of `spec` that lies on the root tmpfs itself (not below another mount).
    fn populate(spec: &SandboxSpec) -> io::Result<(Tree, HashMap<PathBuf, bool>)> {
        let attrs = libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NOEXEC;
        let mut tree = Tree::new(sys::detached_tmpfs(spec.root_size, 0o755, attrs)?);
        let on_root = |path: &Path| {
            let parent = path.parent().unwrap_or(Path::new("/"));
            !spec.mounts.iter().any(|m| parent.starts_with(&m.target))
        };
        let failed = |e: super::SetupFailure| io::Error::other(e.to_string());
        let mut points = HashMap::new();
        for entry in spec.mounts.iter().filter(|m| on_root(&m.target)) {
            let is_dir = match &entry.kind {
                MountKind::Bind { source, .. } => std::fs::symlink_metadata(source)?.is_dir(),
                MountKind::Tmpfs { .. } | MountKind::Proc => true,
            };
            let (parent, name) = split(&entry.target);
            tree.open_dirs(parent).map_err(failed)?;
            let mode = if is_dir { 0o755 } else { 0o644 };
            open_or_create(&mut tree, parent, name, is_dir, mode)?;
            points.insert(entry.target.clone(), is_dir);
        }
        for file in spec.files.iter().filter(|f| on_root(&f.path)) {
            write_file(&mut tree, file).map_err(failed)?;
        }
        for link in spec.symlinks.iter().filter(|l| on_root(&l.path)) {
            make_symlink(&mut tree, link).map_err(failed)?;
        }
        Ok((tree, points))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;

    use super::super::super::spec::{self, Access};
    use super::*;

    #[test]
    fn holds_what_lies_on_the_root_tmpfs_read_only_and_with_exact_modes() {
        if !nix::unistd::geteuid().is_root() {
            return; // fsmount needs CAP_SYS_ADMIN; CI runs as root.
        }
        let mut spec = spec::tests::minimal();
        spec.mounts.extend([
            Mount {
                target: "/tmp".into(),
                kind: MountKind::Tmpfs {
                    size: 1 << 20,
                    mode: 0o1777,
                    writable: true,
                },
            },
            Mount {
                target: "/dev/null".into(),
                kind: MountKind::Bind {
                    source: "/dev/null".into(),
                    access: Access::Device,
                },
            },
        ]);
        spec.files = vec![
            GeneratedFile {
                path: "/etc/passwd".into(),
                contents: b"nobody:x:65534:65534::/:/bin/false\n"[..].into(),
                mode: 0o444,
            },
            GeneratedFile {
                path: "/tmp/below-a-mount".into(),
                contents: b"made per sandbox"[..].into(),
                mode: 0o600,
            },
        ];
        spec.symlinks = vec![Symlink {
            path: "/bin".into(),
            target: "usr/bin".into(),
        }];
        let t = Template::build(&spec).expect("template");
        assert!(t.matches(&spec));
        for held in [
            "/etc",
            "/etc/passwd",
            "/bin",
            "/usr",
            "/tmp",
            "/dev",
            "/dev/null",
        ] {
            assert!(t.made.contains(Path::new(held)), "{held} missing");
        }
        assert!(!t.made.contains(Path::new("/tmp/below-a-mount")));
        assert_eq!(t.points.get(Path::new("/dev/null")), Some(&false));
        assert_eq!(t.points.get(Path::new("/usr")), Some(&true));

        let root = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&t.fd()));
        let mut text = String::new();
        std::fs::File::open(format!("{root}/etc/passwd"))
            .and_then(|mut f| f.read_to_string(&mut text))
            .expect("read passwd");
        assert!(text.starts_with("nobody:"), "{text}");
        let mode = std::fs::metadata(format!("{root}/etc/passwd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o444);
        assert_eq!(
            std::fs::read_link(format!("{root}/bin")).unwrap(),
            Path::new("usr/bin")
        );
        let write = std::fs::File::create(format!("{root}/etc/new"));
        assert_eq!(
            write.unwrap_err().raw_os_error(),
            Some(libc::EROFS),
            "the template must be read-only"
        );

        let mut copied = spec.clone();
        for f in &mut copied.files {
            f.contents = Arc::from(f.contents.to_vec());
        }
        assert!(t.matches(&copied), "equal bytes in other buffers match");
        let mut other = spec.clone();
        other.files[0].contents = [&other.files[0].contents[..], b"#"].concat().into();
        assert!(
            !t.matches(&other),
            "different content must not share a template"
        );
        let mut same_length = spec.clone();
        let mut changed = same_length.files[0].contents.to_vec();
        changed[0] = b'N';
        same_length.files[0].contents = changed.into();
        assert!(!t.matches(&same_length), "same sizes, other bytes");
    }
}
