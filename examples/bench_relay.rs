//! The floor for `scripts/bench-proxy.sh` (not a product feature): a relay that does nothing but
//! copy bytes, built the way aip's pumps are (one thread per direction, blocking reads on pipes,
//! each read written on at once). What it adds to a round trip is the cost of the two extra pipe
//! hops and thread wake-ups alone, on this machine, in the same run; what aip adds beyond it is
//! its own work (framing, parsing, policy, audit).
//!
//! `bench_relay CMD [ARGS…]`: runs CMD with piped stdin/stdout and relays our stdin to it and its
//! stdout to ours until either side closes.

// A benchmark tool, not product code: failing loudly on a broken pipe is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::process::{Command, Stdio};

fn copy(mut from: impl Read, mut to: impl Write) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if to.write_all(&buf[..n]).and_then(|()| to.flush()).is_err() {
                    return;
                }
            }
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (cmd, rest) = args.split_first().expect("usage: bench_relay CMD [ARGS…]");
    let mut child = Command::new(cmd)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn");
    let to_child = child.stdin.take().expect("stdin");
    let from_child = child.stdout.take().expect("stdout");
    let down = std::thread::spawn(move || copy(from_child, std::io::stdout().lock()));
    // Our stdin's end closes the child's stdin (dropped with `to_child`), as aip does.
    copy(std::io::stdin().lock(), to_child);
    down.join().expect("relay thread");
    child.wait().expect("wait");
}
