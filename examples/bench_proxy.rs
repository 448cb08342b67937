//! Load driver for `scripts/bench-proxy.sh` (not a product feature).
//!
//! `bench_proxy latency N -- CMD…`: N sequential `tools/call` round trips; prints p50/p90/p99 in
//! microseconds as JSON. `bench_proxy throughput N -- CMD…`: N pipelined requests (writer and
//! reader threads), prints messages per second. `bench_proxy rss BYTES -- CMD…`: idle RSS of the
//! child after a handshake, then its peak RSS (VmHWM) after sending one line of BYTES bytes,
//! in KiB. CMD is either the mock server itself or `aip run … -- mock`.

// A test and benchmark tool, not product code: failing loudly on a broken pipe is what we want.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

type Replies = BufReader<aip::proxy::SpinRead<ChildStdout>>;

/// `BENCH_SPIN_US`: poll for replies this long before blocking (keeps the client's own wake-ups
/// out of the measurement).
fn spin() -> Duration {
    std::env::var("BENCH_SPIN_US")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(Duration::ZERO, Duration::from_micros)
}

fn spawn(cmd: &[String]) -> (Child, ChildStdin, Replies) {
    let mut child = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let stdin = child.stdin.take().unwrap();
    let stdout = BufReader::with_capacity(
        1 << 16,
        aip::proxy::SpinRead::new(child.stdout.take().unwrap(), spin()),
    );
    (child, stdin, stdout)
}

fn request(id: u64) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"hello from the benchmark, id {id}\",\"path\":\"/tmp/work/file-{id}.txt\"}}}}}}\n"
    )
}

fn read_reply(out: &mut Replies, line: &mut String) {
    line.clear();
    if out.read_line(line).unwrap_or(0) == 0 {
        panic!("server closed stdout");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn latency(n: usize, cmd: &[String]) {
    let (mut child, mut stdin, mut out) = spawn(cmd);
    let mut line = String::new();
    // Warm up (page faults, allocator, caches).
    for id in 0..2000u64 {
        stdin.write_all(request(id).as_bytes()).unwrap();
        stdin.flush().unwrap();
        read_reply(&mut out, &mut line);
    }
    let mut samples = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let req = request(10_000 + i);
        let t0 = Instant::now();
        stdin.write_all(req.as_bytes()).unwrap();
        stdin.flush().unwrap();
        read_reply(&mut out, &mut line);
        samples.push(t0.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(|a, b| a.total_cmp(b));
    println!(
        "{{\"n\":{n},\"p50_us\":{:.2},\"p90_us\":{:.2},\"p99_us\":{:.2}}}",
        percentile(&samples, 0.50),
        percentile(&samples, 0.90),
        percentile(&samples, 0.99)
    );
    drop(stdin);
    let _ = child.wait();
}

fn throughput(n: usize, cmd: &[String]) {
    let (mut child, mut stdin, mut out) = spawn(cmd);
    let writer = std::thread::spawn(move || {
        let mut buf = Vec::with_capacity(1 << 20);
        let t0 = Instant::now();
        for id in 0..n as u64 {
            buf.extend_from_slice(request(id).as_bytes());
            if buf.len() > (1 << 16) {
                stdin.write_all(&buf).unwrap();
                buf.clear();
            }
        }
        stdin.write_all(&buf).unwrap();
        stdin.flush().unwrap();
        (stdin, t0)
    });
    let mut seen = 0usize;
    let mut chunk = vec![0u8; 1 << 16];
    let reader = out.get_mut();
    while seen < n {
        let k = reader.read(&mut chunk).unwrap();
        if k == 0 {
            break;
        }
        seen += chunk[..k].iter().filter(|b| **b == b'\n').count();
    }
    let (stdin, t0) = writer.join().unwrap();
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{{\"n\":{n},\"seconds\":{secs:.3},\"requests_per_s\":{:.0},\"messages_per_s\":{:.0}}}",
        n as f64 / secs,
        2.0 * n as f64 / secs
    );
    drop(stdin);
    let _ = child.wait();
}

fn status_kib(pid: u32, key: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rss(bytes: usize, cmd: &[String]) {
    let (mut child, mut stdin, mut out) = spawn(cmd);
    let pid = child.id();
    let mut line = String::new();
    stdin
        .write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\",\"params\":{}}\n")
        .unwrap();
    stdin.flush().unwrap();
    read_reply(&mut out, &mut line);
    std::thread::sleep(Duration::from_millis(300));
    let idle = status_kib(pid, "VmRSS:");
    let startup_peak = status_kib(pid, "VmHWM:");
    // Reset the high-water mark, so the peak below is the huge line's and not start-up's.
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").expect("reset VmHWM via clear_refs");
    // One huge line, written in pieces, then a normal request to prove the session survived.
    let head = b"{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"";
    stdin.write_all(head).unwrap();
    let piece = vec![b'a'; 1 << 20];
    let mut left = bytes.saturating_sub(head.len() + 8);
    while left > 0 {
        let k = left.min(piece.len());
        stdin.write_all(&piece[..k]).unwrap();
        left -= k;
    }
    stdin.write_all(b"\"}}}\n").unwrap();
    stdin.write_all(request(3).as_bytes()).unwrap();
    stdin.flush().unwrap();
    read_reply(&mut out, &mut line); // the error for id 2
    let first = line.clone();
    read_reply(&mut out, &mut line); // the answer for id 3
    let peak = status_kib(pid, "VmHWM:");
    println!(
        "{{\"idle_rss_kib\":{idle},\"startup_peak_rss_kib\":{startup_peak},\"peak_rss_kib\":{peak},\"line_bytes\":{bytes},\"reply_to_huge\":{},\"next_ok\":{}}}",
        first.trim(),
        line.contains("\"result\"")
    );
    drop(stdin);
    let _ = child.wait();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sep = args
        .iter()
        .position(|a| a == "--")
        .expect("usage: MODE N -- CMD…");
    let cmd = &args[sep + 1..];
    let n: usize = args[1].parse().expect("N");
    match args[0].as_str() {
        "latency" => latency(n, cmd),
        "throughput" => throughput(n, cmd),
        "rss" => rss(n, cmd),
        m => panic!("unknown mode {m}"),
    }
}
