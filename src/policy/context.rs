//! What the engine needs to know about its surroundings: the home directory (for `~` and
//! `$HOME`), the server's working directory (for relative paths), files that are always
//! protected (the policy file, the audit file), and a clock (for rate limits). Injected, so
//! evaluation stays a pure function of its inputs and tests can fake each part.
//!
//! Must not: be read from the environment during evaluation (only by the constructors here).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic clock: time elapsed since an arbitrary fixed origin.
pub trait Clock: Send + Sync + fmt::Debug {
    fn now(&self) -> Duration;
}

/// The real monotonic clock.
#[derive(Debug)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Duration {
        self.origin.elapsed()
    }
}

/// A clock that moves only when told to (tests, conformance `wait` steps).
#[derive(Debug, Default)]
pub struct ManualClock {
    nanos: AtomicU64,
}

impl ManualClock {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn advance(&self, by: Duration) {
        let by = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
        self.nanos.fetch_add(by, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_nanos(self.nanos.load(Ordering::SeqCst))
    }
}

/// The evaluation environment of one engine.
#[derive(Debug, Clone)]
pub struct EvalContext {
    /// Home directory for `~`, `~/…`, `$HOME`, `${HOME}`; `None` disables those expansions
    /// (the unexpanded forms are still matched literally).
    pub home: Option<PathBuf>,
    /// The MCP server's working directory: relative paths in arguments and in
    /// `protected_paths` are resolved against it.
    pub cwd: PathBuf,
    /// Files protected whatever the policy says (the audit file; the engine adds the policy's
    /// own source file itself).
    pub protected_files: Vec<PathBuf>,
    pub clock: Arc<dyn Clock>,
    /// Resolve symlinks in path-like arguments (longest existing prefix). On by default; the
    /// only I/O evaluation does.
    pub resolve_symlinks: bool,
}

impl EvalContext {
    /// A context for a server running in `cwd`, with the home directory of this process
    /// (`$HOME`, else the passwd entry of the real uid) and the monotonic clock.
    pub fn new(cwd: impl Into<PathBuf>) -> Self {
        EvalContext {
            home: process_home(),
            cwd: cwd.into(),
            protected_files: Vec::new(),
            clock: Arc::new(MonotonicClock::new()),
            resolve_symlinks: true,
        }
    }

    /// [`EvalContext::new`] with this process's working directory (`/` if it cannot be read).
    pub fn from_process() -> Self {
        Self::new(std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")))
    }

    pub fn with_home(mut self, home: Option<PathBuf>) -> Self {
        self.home = home;
        self
    }

    pub fn with_cwd(mut self, cwd: impl Into<PathBuf>) -> Self {
        self.cwd = cwd.into();
        self
    }

    /// Adds a file that is always protected (e.g. the audit log).
    pub fn with_protected_file(mut self, path: impl AsRef<Path>) -> Self {
        self.protected_files.push(path.as_ref().to_path_buf());
        self
    }

    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn with_symlink_resolution(mut self, on: bool) -> Self {
        self.resolve_symlinks = on;
        self
    }
}

fn process_home() -> Option<PathBuf> {
    if let Some(h) = std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        return Some(PathBuf::from(h));
    }
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.dir)
}
