//! Shared helpers for the integration tests: locating the real `aip` binary, the mock MCP server
//! and fixtures, and driving a running `aip` over its stdio line by line.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the `aip` binary built for this test run.
pub fn aip_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aip"))
}

/// Repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The official conformance vectors, outside the repository.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("AIP_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/aip-conformance"))
}

/// The mock MCP server (`examples/mock_mcp_server.rs`, built by `cargo test`).
pub fn mock_server() -> PathBuf {
    let bin = aip_bin();
    let dir = bin.parent().expect("binary has a directory");
    let p = dir.join("examples").join("mock_mcp_server");
    assert!(
        p.exists(),
        "{} missing: build it with `cargo build --example mock_mcp_server` (cargo test does)",
        p.display()
    );
    p
}

/// Where the real MCP peers are installed (`scripts/install-peers.sh`), if they are.
pub fn peers_dir() -> Option<PathBuf> {
    let p = std::env::var_os("AIP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".peers"));
    p.join(".stamp").exists().then_some(p)
}

/// Test fixtures under `tests/data`.
pub fn data(rel: &str) -> PathBuf {
    repo_root().join("tests/data").join(rel)
}

/// Writes `text` to `dir/name` and returns the path.
pub fn write_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write fixture");
    p
}

/// A running process driven over stdin/stdout, with stdout read line by line on a thread.
pub struct Driver {
    pub child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Receiver<String>,
}

impl Driver {
    pub fn spawn(mut cmd: Command) -> Driver {
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout");
        let err_pipe = child.stderr.take().expect("stderr");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            loop {
                let mut buf = Vec::new();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf).into_owned();
                        if tx.send(s).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let (etx, stderr) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(err_pipe).lines() {
                let Ok(line) = line else { break };
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        Driver {
            child,
            stdin,
            lines,
            stderr,
        }
    }

    /// Writes one line (a newline is added).
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line.as_bytes()).expect("write");
        stdin.write_all(b"\n").expect("write");
        stdin.flush().expect("flush");
    }

    /// Writes raw bytes (no newline added).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(bytes).expect("write");
        stdin.flush().expect("flush");
    }

    /// The next stdout line as JSON, waiting up to 10 s.
    pub fn recv(&self) -> Value {
        let line = self
            .recv_line(Duration::from_secs(10))
            .expect("a reply line");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"))
    }

    /// The next stdout line, raw.
    pub fn recv_line(&self, timeout: Duration) -> Option<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Asserts nothing arrives on stdout for `d`.
    pub fn expect_silence(&self, d: Duration) {
        if let Some(l) = self.recv_line(d) {
            panic!("unexpected output: {l}");
        }
    }

    /// Sends a request and returns the reply with the same id (other lines are returned in
    /// `others`).
    pub fn call(&mut self, line: &str) -> Value {
        let id = serde_json::from_str::<Value>(line).expect("json")["id"].clone();
        self.send(line);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let v = self.recv();
            if v["id"] == id && v.get("method").is_none() {
                return v;
            }
        }
        panic!("no reply for id {id}");
    }

    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for exit up to `timeout`; kills and panics after.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("process did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stderr lines received so far (non-blocking).
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.try_iter().collect()
    }

    /// Waits up to `timeout` for a stderr line containing `needle`.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.stderr.recv_timeout(Duration::from_millis(50)) {
                Ok(l) if l.contains(needle) => return Some(l),
                _ => {}
            }
        }
        None
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads a JSONL audit file.
pub fn audit_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad audit line ({e}): {l}")))
        .collect()
}

/// The parent pid of `pid`, from `/proc/PID/stat` (`None` once it is gone).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The live children of `pid`.
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| parent_of(*p) == Some(pid))
        .collect()
}

/// The command name of `pid` (`/proc/PID/comm`).
pub fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim_end().to_string())
}
