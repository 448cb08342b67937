//! The in-sandbox probe: attempts one forbidden (or, as a control, allowed) action and reports
//! what happened as data. `aip doctor` runs it inside a canary sandbox (`aip doctor --probe
//! CHECK…`), and the integration tests use it for every escape attempt, asserting the specific
//! errno each layer produces. It only observes: nothing here configures a sandbox.
//!
//! Checks (one argument after a colon where noted):
//! `read:PATH`, `write:PATH`, `list:PATH`, `stat:PATH`, `exec:PATH`, `connect:ADDR:PORT`,
//! `udp:ADDR:PORT`, `abstract:NAME`, `resolve:HOST`, `kill:PID`, `fd:N`, `socket:FAMILY`
//! (`packet`, `netlink-audit`, `vsock`, `alg`, `inet`, `unix`), `ptrace`, `mount`,
//! `unshare-user`, `unshare-net`, `setns`, `clone-newuser`, `clone3`, `keyctl`, `io-uring`,
//! `bpf`, `perf`, `userfaultfd`, `personality`, `tiocsti`, `pids`, `netns`, `loopback`, `whoami`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use serde::{Deserialize, Serialize};

use super::sys;

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeResult {
    pub check: String,
    /// Whether the action succeeded (for a forbidden action: the sandbox failed).
    pub succeeded: bool,
    /// The OS error when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errno: Option<i32>,
    /// The error name (`EPERM`…) or extra output (`pids`, `whoami`).
    pub detail: String,
}

fn outcome(check: &str, result: io::Result<String>) -> ProbeResult {
    match result {
        Ok(detail) => ProbeResult {
            check: check.into(),
            succeeded: true,
            errno: None,
            detail,
        },
        Err(e) => ProbeResult {
            check: check.into(),
            succeeded: false,
            errno: e.raw_os_error(),
            detail: e
                .raw_os_error()
                .map(|n| format!("{:?}", nix::errno::Errno::from_raw(n)))
                .unwrap_or_else(|| e.to_string()),
        },
    }
}

fn done(_: impl Sized) -> String {
    String::new()
}

/// Runs one check.
pub fn run_check(check: &str) -> ProbeResult {
    let (name, arg) = check.split_once(':').unwrap_or((check, ""));
    let result: io::Result<String> = match name {
        "read" => std::fs::read(arg).map(|b| format!("{} bytes", b.len())),
        "write" => std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(arg)
            .map(done),
        "list" => std::fs::read_dir(arg).map(|d| d.count().to_string()),
        "stat" => std::fs::symlink_metadata(arg).map(done),
        // Which inode the path is, and when it was made: tells a shared file from a copy.
        "inode" => std::fs::symlink_metadata(arg).map(|m| {
            use std::os::unix::fs::MetadataExt;
            format!(
                "{}:{}:{}.{:09}",
                m.dev(),
                m.ino(),
                m.ctime(),
                m.ctime_nsec()
            )
        }),
        "exec" => std::process::Command::new(arg)
            .stdin(std::process::Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()),
        "connect" => std::net::TcpStream::connect(arg).map(done),
        "udp" => std::net::UdpSocket::bind("0.0.0.0:0")
            .and_then(|s| s.send_to(b"aip-probe", arg))
            .map(|n| n.to_string()),
        "abstract" => abstract_connect(arg),
        "resolve" => {
            use std::net::ToSocketAddrs;
            (arg, 443)
                .to_socket_addrs()
                .map(|a| a.map(|x| x.ip().to_string()).collect::<Vec<_>>().join(","))
        }
        "kill" => arg
            .parse::<i32>()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|pid| {
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).map_err(Into::into)
            })
            .map(done),
        "fd" => arg
            .parse::<i32>()
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
            .and_then(|fd| std::fs::read_link(format!("/proc/self/fd/{fd}")))
            .map(|p| p.display().to_string()),
        "socket" => socket(arg),
        "ptrace" => sys::probe_ptrace_traceme().map(done),
        "mount" => nix::mount::mount(
            Some("tmpfs"),
            "/tmp",
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(Into::into)
        .map(done),
        "unshare-user" => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWUSER)
            .map_err(Into::into)
            .map(done),
        "unshare-net" => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(Into::into)
            .map(done),
        "setns" => sys::probe_setns().map(done),
        "clone-newuser" => sys::probe_clone(libc::CLONE_NEWUSER).map(done),
        "clone3" => sys::probe_clone3().map(done),
        "keyctl" => sys::probe_keyctl().map(done),
        "io-uring" => sys::probe_io_uring_setup().map(done),
        "bpf" => sys::probe_bpf().map(done),
        "perf" => sys::probe_perf_event_open().map(done),
        "userfaultfd" => sys::probe_userfaultfd().map(done),
        "personality" => sys::probe_personality_no_randomize().map(done),
        "tiocsti" => sys::probe_tiocsti(std::io::stdin().as_fd()).map(done),
        "pids" => pids(),
        "netns" => std::fs::read_link("/proc/self/ns/net").map(|p| p.display().to_string()),
        "loopback" => loopback(),
        "whoami" => whoami(),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("unknown check {name}"),
        )),
    };
    outcome(check, result)
}

fn abstract_connect(name: &str) -> io::Result<String> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new_abstract(name.as_bytes())?;
    connect(std::os::fd::AsRawFd::as_raw_fd(&sock), &addr)?;
    Ok(String::new())
}

fn socket(family: &str) -> io::Result<String> {
    let (domain, ty, proto) = match family {
        "packet" => (libc::AF_PACKET, libc::SOCK_RAW, 0x0300),
        "netlink-audit" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_AUDIT),
        "netlink-route" => (libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE),
        "vsock" => (libc::AF_VSOCK, libc::SOCK_STREAM, 0),
        "alg" => (libc::AF_ALG, libc::SOCK_SEQPACKET, 0),
        "inet" => (libc::AF_INET, libc::SOCK_STREAM, 0),
        "unix" => (libc::AF_UNIX, libc::SOCK_STREAM, 0),
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unknown family",
            ));
        }
    };
    sys::probe_socket(domain, ty | libc::SOCK_CLOEXEC, proto).map(done)
}

/// A datagram to ourselves over 127.0.0.1: works only when `lo` is up.
fn loopback() -> io::Result<String> {
    let sock = std::net::UdpSocket::bind("127.0.0.1:0")?;
    sock.set_read_timeout(Some(std::time::Duration::from_secs(1)))?;
    sock.send_to(b"ping", sock.local_addr()?)?;
    let mut buf = [0u8; 8];
    let (n, _) = sock.recv_from(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Numeric entries of `/proc` (the pids visible from here).
fn pids() -> io::Result<String> {
    let mut pids: Vec<u32> = std::fs::read_dir("/proc")?
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    pids.sort_unstable();
    Ok(pids
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(","))
}

/// Identity and confinement as the kernel sees it.
fn whoami() -> io::Result<String> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let keep = [
        "Uid:",
        "Gid:",
        "Groups:",
        "CapEff:",
        "CapBnd:",
        "NoNewPrivs:",
        "Seccomp:",
    ];
    Ok(status
        .lines()
        .filter(|l| keep.iter().any(|k| l.starts_with(k)))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("; "))
}

/// Runs every check in `checks` and returns one JSON line per check.
pub fn run_all<I: IntoIterator<Item = S>, S: AsRef<OsStr>>(checks: I) -> Vec<String> {
    checks
        .into_iter()
        .map(|c| {
            let check = String::from_utf8_lossy(c.as_ref().as_bytes()).into_owned();
            serde_json::to_string(&run_check(&check)).unwrap_or_default()
        })
        .collect()
}
