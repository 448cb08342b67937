//! In-process benchmark of the stdio proxy: the real `proxy::run` with a typical policy and a
//! JSONL audit file, between pipes driven by this process and the mock MCP server as a child
//! process. Prints round-trip latency percentiles (sequential) and pipelined throughput.
//!
//! `cargo bench --bench proxy_roundtrip` (needs `cargo build --release --example
//! mock_mcp_server` first; the bench finds it next to itself). Also usable under
//! `valgrind --tool=callgrind` to count instructions per message (`-- --quick`), since it avoids
//! the syscalls valgrind does not know (pidfd_open, openat2) that the sandbox uses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use aip::approval::NoApprover;
use aip::audit::JsonlSink;
use aip::policy::{Engine, EvalContext, load_str};
use aip::proxy::{self, ProxyConfig, ServerExit, ServerProcess, Session, SessionHandle, Streams};

const POLICY: &str = r#"
apiVersion: aip.io/v1alpha1
kind: AgentPolicy
metadata: {name: bench}
spec:
  allowed_tools: [echo, read_file, list_directory, search_files]
  tool_rules:
    - tool: echo
      allow_args:
        text: "^[a-z ,0-9]+$"
        path: "^/tmp/work/"
    - tool: delete_file
      action: block
  protected_paths: [~/.ssh, /etc/shadow]
"#;

struct Mock(Mutex<Child>, u32);

impl ServerProcess for Mock {
    fn terminate(&self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.1 as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
    fn kill(&self) {
        let _ = self.0.lock().unwrap().kill();
    }
    fn wait(&self) -> std::io::Result<ServerExit> {
        let st = self.0.lock().unwrap().wait()?;
        Ok(match st.code() {
            Some(c) => ServerExit::Code(c),
            None => ServerExit::Signal(st.signal().unwrap_or(9)),
        })
    }
}

fn mock_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let release = exe.parent().unwrap().parent().unwrap();
    let p = release.join("examples").join("mock_mcp_server");
    assert!(
        p.exists(),
        "build it first: cargo build --release --example mock_mcp_server"
    );
    p
}

fn request(id: u64) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello from the benchmark, id {id}\",\"path\":\"/tmp/work/file-{id}.txt\"}}}}}}\n"
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(mock_path())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let (server_in, server_out) = (child.stdin.take().unwrap(), child.stdout.take().unwrap());
    let pid = child.id();
    let (client_read, mut to_proxy) = std::io::pipe().unwrap();
    let (from_proxy, client_write) = std::io::pipe().unwrap();
    let policy = Arc::new(load_str(POLICY, "bench.yaml").unwrap());
    let engine = Arc::new(Engine::new(policy, EvalContext::new("/tmp")));
    let audit = Arc::new(JsonlSink::open(&dir.path().join("audit.jsonl")).unwrap());
    let session = Session {
        config: ProxyConfig::default(),
        engine,
        audit,
        approver: Arc::new(NoApprover),
        session_id: "bench".into(),
        identity: None,
        remote: None,
    };
    let streams = Streams {
        client_in: Box::new(client_read),
        client_out: Box::new(client_write),
        server_in: Box::new(server_in),
        server_out: Box::new(server_out),
        server_err: None,
        diagnostics: Box::new(std::io::sink()),
    };
    let server = Arc::new(Mock(Mutex::new(child), pid));
    let proxy = std::thread::spawn(move || {
        proxy::run(session, streams, server, &SessionHandle::new(), false)
    });
    let mut replies = BufReader::with_capacity(1 << 16, from_proxy);
    let mut line = String::new();

    let (warm, n, pipelined) = if quick {
        (100, 1_000, 10_000)
    } else {
        (2_000, 20_000, 200_000)
    };
    for id in 0..warm {
        to_proxy.write_all(request(id).as_bytes()).unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
    }
    let mut samples = Vec::with_capacity(n as usize);
    for id in 0..n {
        let req = request(100_000 + id);
        let t0 = Instant::now();
        to_proxy.write_all(req.as_bytes()).unwrap();
        line.clear();
        replies.read_line(&mut line).unwrap();
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    assert!(line.contains("\"result\""), "{line}");
    samples.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| samples[((samples.len() - 1) as f64 * p) as usize];
    println!(
        "round trip through the in-process proxy: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs ({n} calls)",
        pct(0.5),
        pct(0.9),
        pct(0.99)
    );

    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        for id in 0..pipelined {
            buf.extend_from_slice(request(1_000_000 + id).as_bytes());
            if buf.len() > 1 << 16 {
                to_proxy.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        to_proxy.write_all(&buf).unwrap();
        to_proxy
    });
    let t0 = Instant::now();
    let mut seen = 0u64;
    let mut chunk = vec![0u8; 1 << 16];
    let raw = replies.get_mut();
    while seen < pipelined {
        let k = raw.read(&mut chunk).unwrap();
        assert!(k > 0, "proxy closed early");
        seen += chunk[..k].iter().filter(|b| **b == b'\n').count() as u64;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "pipelined: {pipelined} calls in {secs:.2} s = {:.0} messages/s (requests + responses)",
        2.0 * pipelined as f64 / secs
    );
    drop(writer.join().unwrap());
    let _ = proxy.join();
}
