//! The spawned server as the proxy sees it: a sandboxed (or, with `--no-sandbox`, plain)
//! process tree it can signal and wait for, wired to three pipes.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;

use crate::proxy::{ServerExit, ServerProcess};
use crate::sandbox::{self, SandboxChild, SandboxError, SandboxExit, SandboxSpec};

/// A running server and the supervisor's ends of its stdio pipes.
pub struct Spawned {
    pub child: Arc<SandboxChild>,
    /// Writes to the server's stdin.
    pub stdin: File,
    /// Reads the server's stdout.
    pub stdout: File,
    /// Reads the server's stderr.
    pub stderr: File,
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(std::io::Error::from)
}

/// Starts `spec` with fresh pipes for its stdio.
pub fn spawn(spec: &SandboxSpec) -> Result<Spawned, SandboxError> {
    let pipes = (|| Ok::<_, std::io::Error>((pipe()?, pipe()?, pipe()?)))().map_err(|source| {
        SandboxError::Supervisor {
            step: "create the server's stdio pipes".into(),
            source,
        }
    })?;
    let ((in_r, in_w), (out_r, out_w), (err_r, err_w)) = pipes;
    // The child's ends are moved in and closed here once the server runs.
    let child = sandbox::spawn(spec, [in_r, out_w, err_w])?;
    Ok(Spawned {
        child: Arc::new(child),
        stdin: File::from(in_w),
        stdout: File::from(out_r),
        stderr: File::from(err_r),
    })
}

/// `ServerProcess` over a sandbox: signals reach every process of it.
pub struct ServerTree(pub Arc<SandboxChild>);

impl ServerProcess for ServerTree {
    fn terminate(&self) {
        let _ = self.0.signal_all(Signal::SIGTERM);
    }

    fn kill(&self) {
        let _ = self.0.kill_all();
    }

    fn wait(&self) -> std::io::Result<ServerExit> {
        Ok(match self.0.wait()? {
            SandboxExit::Code(c) => ServerExit::Code(c),
            SandboxExit::Signal(s) => ServerExit::Signal(s),
        })
    }
}
