//! A server started without the OS sandbox (`--no-sandbox`): its own process group, so
//! shutdown reaches every process it started.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

use crate::proxy::{ServerExit, ServerProcess};

pub struct PlainChild {
    pid: u32,
    child: Mutex<Child>,
}

pub struct Spawned {
    pub child: PlainChild,
    pub stdin: ChildStdin,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl PlainChild {
    pub fn spawn(argv: &[String]) -> std::io::Result<Spawned> {
        let (prog, args) = argv
            .split_first()
            .ok_or_else(|| std::io::Error::other("empty command"))?;
        let mut child = Command::new(prog)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            return Err(std::io::Error::other("child pipes missing"));
        };
        Ok(Spawned {
            child: PlainChild {
                pid: child.id(),
                child: Mutex::new(child),
            },
            stdin,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    fn signal(&self, sig: Signal) {
        let _ = killpg(Pid::from_raw(self.pid as i32), sig);
    }
}

impl ServerProcess for PlainChild {
    fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    fn kill(&self) {
        self.signal(Signal::SIGKILL);
    }

    fn wait(&self) -> std::io::Result<ServerExit> {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .wait()?;
        Ok(match (status.code(), status.signal()) {
            (Some(c), _) => ServerExit::Code(c),
            (None, Some(s)) => ServerExit::Signal(s),
            (None, None) => ServerExit::Code(1),
        })
    }
}

impl Drop for PlainChild {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
    }
}
