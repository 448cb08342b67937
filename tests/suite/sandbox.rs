//! Integration tests: the sandbox. Every test runs the real `aip` binary and real sandboxes.
//! Escape attempts run `aip doctor --probe CHECK…` inside `aip sandbox` and assert the specific
//! failure (errno) of the layer that must stop them; controls show the same probe succeeding
//! where access is granted, so a failure means the layer, not a broken probe. Tests that need
//! root (CI runs as root) or an optional tool skip with a printed reason.
// Helpers below are test code too: a failed step should panic with its context.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use aip::sandbox::probe::ProbeResult;
use pretty_assertions::assert_eq;

use crate::support::{aip_bin, children_of, repo_root};

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `aip sandbox ARGS… -- aip doctor --probe CHECKS…`, run in `/`.
fn probe_with(args: &[&str], checks: &[&str]) -> (Vec<ProbeResult>, Output) {
    let aip = aip_bin();
    let output = Command::new(&aip)
        .current_dir("/")
        .arg("sandbox")
        .args(args)
        .arg("--")
        .arg(&aip)
        .args(["doctor", "--probe"])
        .args(checks)
        .stdin(Stdio::null())
        .output()
        .expect("run aip sandbox");
    let results = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    (results, output)
}

fn probe(checks: &[&str]) -> Vec<ProbeResult> {
    let (results, output) = probe_with(&[], checks);
    assert!(
        output.status.success(),
        "aip sandbox failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    results
}

fn get<'a>(results: &'a [ProbeResult], check: &str) -> &'a ProbeResult {
    results
        .iter()
        .find(|r| r.check == check)
        .unwrap_or_else(|| panic!("no result for {check}: {results:?}"))
}

/// Asserts the check failed with `errno` (by name).
#[track_caller]
fn assert_denied(results: &[ProbeResult], check: &str, errno: &str) {
    let r = get(results, check);
    assert!(!r.succeeded, "{check} succeeded inside the sandbox: {r:?}");
    assert_eq!(r.detail, errno, "{check}: wrong failure {r:?}");
}

#[track_caller]
fn assert_allowed(results: &[ProbeResult], check: &str) {
    let r = get(results, check);
    assert!(r.succeeded, "{check} should succeed (control): {r:?}");
}

/// `aip sandbox ARGS…` run in `/` with stdin from /dev/null.
fn aip_sandbox<S: AsRef<OsStr>>(args: &[S]) -> Output {
    Command::new(aip_bin())
        .current_dir("/")
        .arg("sandbox")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run aip sandbox")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// The layer report printed by `aip sandbox --report`.
fn report_of(output: &Output) -> serde_json::Value {
    stderr(output)
        .lines()
        .find_map(|l| l.strip_prefix("aip: report: "))
        .and_then(|j| serde_json::from_str(j).ok())
        .unwrap_or_else(|| panic!("no report in: {}", stderr(output)))
}

/// A temporary directory the sandbox user (65534 as root) can use.
fn shared_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("aip-sandbox-test")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    dir
}

fn write_policy(dir: &Path, sandbox_yaml: &str) -> PathBuf {
    let path = dir.join("policy.yaml");
    let mut text = String::from(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: sandbox-test\nspec:\n  sandbox:\n",
    );
    for line in sandbox_yaml.lines() {
        text.push_str("    ");
        text.push_str(line);
        text.push('\n');
    }
    std::fs::write(&path, text).expect("write policy");
    path
}

#[test]
fn host_secrets_and_trees_are_not_visible() {
    let r = probe(&[
        "read:/etc/shadow",
        "list:/root",
        "list:/sys",
        "list:/run",
        "stat:/var/run/docker.sock",
        "read:/etc/hostname",
    ]);
    assert_denied(&r, "read:/etc/shadow", "ENOENT");
    assert_denied(&r, "list:/root", "ENOENT");
    assert_denied(&r, "list:/sys", "ENOENT");
    assert_denied(&r, "list:/run", "ENOENT");
    assert_denied(&r, "stat:/var/run/docker.sock", "ENOENT");
    assert_allowed(&r, "read:/etc/hostname");
}

#[test]
fn the_policy_file_is_never_visible_and_granting_its_directory_is_refused() {
    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), "resources: {open_files: 512}");
    let check = format!("read:{}", policy.display());
    let (r, out) = probe_with(&["--policy", policy.to_str().unwrap()], &[&check]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_denied(&r, &check, "ENOENT");

    let (_, out) = probe_with(
        &[
            "--policy",
            policy.to_str().unwrap(),
            "--allow-read",
            dir.path().to_str().unwrap(),
        ],
        &[&check],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("would be visible inside the sandbox"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn writes_outside_read_write_paths_fail_and_granted_writes_land_on_the_host() {
    let ro = shared_tempdir();
    let rw = shared_tempdir();
    std::fs::write(ro.path().join("data"), "x").unwrap();
    let private = format!("/tmp/aip-private-{}", std::process::id());
    let private_check = format!("write:{private}");
    let ro_file = format!("write:{}/new", ro.path().display());
    let rw_file = format!("write:{}/new", rw.path().display());
    let (r, out) = probe_with(
        &[
            "--allow-read",
            ro.path().to_str().unwrap(),
            "--allow-write",
            rw.path().to_str().unwrap(),
        ],
        &[
            "write:/usr/aip-test",
            "write:/etc/aip-test",
            "write:/aip-test",
            &ro_file,
            &rw_file,
            &private_check,
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    // Read-only mounts answer EROFS before Landlock is consulted.
    assert_denied(&r, "write:/usr/aip-test", "EROFS");
    assert_denied(&r, "write:/etc/aip-test", "EROFS");
    assert_denied(&r, "write:/aip-test", "EROFS");
    assert_denied(&r, &ro_file, "EROFS");
    assert_allowed(&r, &rw_file);
    assert_allowed(&r, &private_check);
    assert!(
        rw.path().join("new").exists(),
        "the granted write did not reach the host"
    );
    assert!(
        !Path::new(&private).exists(),
        "the private /tmp leaked to the host"
    );
}

#[test]
fn host_loopback_is_unreachable_over_tcp_and_udp() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let tcp_check = format!("connect:127.0.0.1:{}", tcp.local_addr().unwrap().port());
    let udp_check = format!("udp:127.0.0.1:{}", udp.local_addr().unwrap().port());
    let r = probe(&[&tcp_check, &udp_check]);
    // Landlock (ABI >= 4) refuses the TCP connect before routing; the empty network namespace
    // would answer ECONNREFUSED without it.
    let abi = aip::sandbox::landlock::kernel_abi();
    assert_denied(
        &r,
        &tcp_check,
        if abi >= 4 { "EACCES" } else { "ECONNREFUSED" },
    );
    // UDP is not covered by Landlock before ABI 10: the send succeeds into the sandbox's own
    // loopback, and nothing arrives on the host's.
    let mut buf = [0u8; 64];
    assert!(
        udp.recv_from(&mut buf).is_err(),
        "a datagram from the sandbox reached the host"
    );
}

#[test]
fn host_network_opt_in_reaches_loopback_and_still_scopes_abstract_sockets() {
    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), "network: host");
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let name = format!("aip-test-abstract-{}", std::process::id());
    let _listener = bind_abstract(&name);
    let tcp_check = format!("connect:127.0.0.1:{}", tcp.local_addr().unwrap().port());
    let abstract_check = format!("abstract:{name}");
    let (r, out) = probe_with(
        &["--policy", policy.to_str().unwrap()],
        &[&tcp_check, &abstract_check],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("shares aip's network"),
        "the opt-in must be loud: {}",
        stderr(&out)
    );
    assert_allowed(&r, &tcp_check);
    if aip::sandbox::landlock::kernel_abi() >= 6 {
        assert_denied(&r, &abstract_check, "EPERM");
    } else {
        println!("skipped the abstract-socket scope assertion: Landlock ABI < 6");
    }
}

fn bind_abstract(name: &str) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .unwrap();
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &UnixAddr::new_abstract(name.as_bytes()).unwrap(),
    )
    .unwrap();
    listen(&sock, Backlog::new(4).unwrap()).unwrap();
    sock
}

#[test]
fn abstract_unix_sockets_of_the_host_are_unreachable() {
    let name = format!("aip-test-abstract-none-{}", std::process::id());
    let _listener = bind_abstract(&name);
    let check = format!("abstract:{name}");
    let r = probe(&[&check]);
    // Abstract sockets live in the network namespace: the sandbox's has none.
    assert_denied(&r, &check, "ECONNREFUSED");
}

#[test]
fn names_do_not_resolve_but_localhost_does() {
    let r = probe(&["resolve:example.com", "resolve:localhost"]);
    let example = get(&r, "resolve:example.com");
    assert!(!example.succeeded, "{example:?}");
    assert_allowed(&r, "resolve:localhost");
}

#[test]
fn dangerous_syscalls_are_denied_by_seccomp_with_distinct_errnos() {
    let r = probe(&[
        "ptrace",
        "mount",
        "unshare-user",
        "unshare-net",
        "setns",
        "clone-newuser",
        "keyctl",
        "bpf",
        "perf",
        "userfaultfd",
        "personality",
        "clone3",
        "io-uring",
    ]);
    for check in [
        "ptrace",
        "mount",
        "unshare-user",
        "unshare-net",
        "setns",
        "clone-newuser",
        "keyctl",
        "bpf",
        "perf",
        "userfaultfd",
        "personality",
    ] {
        assert_denied(&r, check, "EPERM");
    }
    // ENOSYS so glibc falls back to clone(2) and libuv to epoll.
    assert_denied(&r, "clone3", "ENOSYS");
    assert_denied(&r, "io-uring", "ENOSYS");
}

#[test]
fn socket_families_are_limited() {
    let r = probe(&[
        "socket:packet",
        "socket:netlink-audit",
        "socket:vsock",
        "socket:alg",
        "socket:inet",
        "socket:unix",
        "socket:netlink-route",
    ]);
    for family in [
        "socket:packet",
        "socket:netlink-audit",
        "socket:vsock",
        "socket:alg",
    ] {
        assert_denied(&r, family, "EPERM");
    }
    for family in ["socket:inet", "socket:unix"] {
        assert_allowed(&r, family);
    }
    // NETLINK_ROUTE passes seccomp (getifaddrs); a raw netlink socket still needs no capability.
    assert_allowed(&r, "socket:netlink-route");
}

#[test]
fn tiocsti_is_denied() {
    let r = probe(&["tiocsti"]);
    // Without the filter, stdin (/dev/null here) would answer ENOTTY.
    assert_denied(&r, "tiocsti", "EPERM");
}

#[test]
fn host_processes_are_invisible_and_cannot_be_signalled() {
    let own = std::process::id().to_string();
    let kill_host = format!("kill:{own}");
    let r = probe(&["pids", &kill_host, "kill:1"]);
    let pids = get(&r, "pids");
    assert!(pids.succeeded);
    let visible: Vec<&str> = pids.detail.split(',').collect();
    assert!(
        !visible.contains(&own.as_str()),
        "host pid visible: {visible:?}"
    );
    assert!(
        visible.len() <= 3,
        "too many processes visible: {visible:?}"
    );
    // The test's pid does not exist in the sandbox's pid namespace.
    assert_denied(&r, &kill_host, "ESRCH");
    // The reaper (pid 1) is outside the server's Landlock domain and another uid.
    assert_denied(&r, "kill:1", "EPERM");
}

#[test]
fn the_server_has_no_privileges() {
    let r = probe(&["whoami"]);
    let who = &get(&r, "whoami").detail;
    assert!(who.contains("CapEff: 0000000000000000"), "{who}");
    assert!(who.contains("CapBnd: 0000000000000000"), "{who}");
    assert!(who.contains("NoNewPrivs: 1"), "{who}");
    assert!(who.contains("Seccomp: 2"), "{who}");
    if is_root() {
        assert!(who.contains("Uid: 65534 65534 65534 65534"), "{who}");
        assert!(who.contains("Groups: 65534"), "{who}");
    }
}

#[test]
fn a_setuid_binary_gains_nothing() {
    if !is_root() {
        println!("skipped: creating a setuid-root binary needs root");
        return;
    }
    let dir = shared_tempdir();
    let id = dir.path().join("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let policy_dir = tempfile::tempdir().unwrap();
    let policy_path = write_policy(
        policy_dir.path(),
        &format!("filesystem:\n  exec: [{}]", dir.path().display()),
    );
    let out = aip_sandbox(&[
        OsStr::new("--policy"),
        policy_path.as_os_str(),
        OsStr::new("--"),
        id.as_os_str(),
        OsStr::new("-u"),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534");
}

#[test]
fn an_fd_leaked_by_the_parent_is_not_inherited() {
    let secret = shared_tempdir();
    let file = secret.path().join("secret");
    std::fs::write(&file, "s3cret").unwrap();
    let aip = aip_bin();
    let script = format!(
        "exec 7<'{}'; exec '{}' sandbox -- '{}' doctor --probe fd:7 fd:3 fd:4",
        file.display(),
        aip.display(),
        aip.display()
    );
    let out = Command::new("/bin/sh")
        .current_dir("/")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let r: Vec<ProbeResult> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for fd in ["fd:7", "fd:3", "fd:4"] {
        assert_denied(&r, fd, "ENOENT");
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

#[test]
fn nothing_outlives_a_sigkilled_supervisor() {
    let mut supervisor = Command::new(aip_bin())
        .current_dir("/")
        .args([
            "sandbox",
            "--",
            "/bin/sh",
            "-c",
            "sleep 300 & sleep 300 & wait",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = supervisor.id();
    let mut tree = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            tree = descendants(pid);
            tree.len() >= 4
        }),
        "the sandbox did not start: {tree:?}"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    supervisor.wait().unwrap();
    let gone = wait_until(Duration::from_secs(5), || {
        tree.iter()
            .all(|p| !Path::new(&format!("/proc/{p}")).exists())
    });
    assert!(gone, "processes survived the supervisor: {tree:?}");
}

fn descendants(pid: u32) -> Vec<u32> {
    let mut all = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        for c in children_of(p) {
            all.push(c);
            todo.push(c);
        }
    }
    all
}

#[test]
fn exit_codes_and_signals_propagate() {
    let run = |script: &str| {
        Command::new(aip_bin())
            .current_dir("/")
            .args(["sandbox", "--", "/bin/sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
            .status
            .code()
    };
    assert_eq!(run("exit 7"), Some(7));
    assert_eq!(run("kill -TERM $$"), Some(128 + 15));
}

#[test]
fn signals_sent_to_aip_reach_the_server() {
    let mut child = Command::new(aip_bin())
        .current_dir("/")
        .args([
            "sandbox",
            "--",
            "/bin/sh",
            "-c",
            "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut ready = [0u8; 6];
    stdout.read_exact(&mut ready).unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(42));
}

#[test]
fn landlock_missing_refuses_to_start_unless_the_policy_allows_degrading() {
    let helper = repo_root().join("tests/data/sandbox/deny_landlock.py");
    if !Path::new("/usr/bin/python3").exists() {
        println!("skipped: /usr/bin/python3 is needed to simulate a kernel without Landlock");
        return;
    }
    let out = Command::new("/usr/bin/python3")
        .arg(&helper)
        .arg(aip_bin())
        .args(["sandbox", "--", "/bin/true"])
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("landlock: the kernel has no Landlock"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("allow_degraded"), "{}", stderr(&out));

    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), "allow_degraded: [landlock]");
    let out = Command::new("/usr/bin/python3")
        .arg(&helper)
        .arg(aip_bin())
        .args([
            "sandbox",
            "--report",
            "--policy",
            policy.to_str().unwrap(),
            "--",
            "/bin/true",
        ])
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report = report_of(&out);
    assert_eq!(report["landlock"]["status"], "not_enforced");
    assert_eq!(report["landlock"]["abi"], 0);
    assert_eq!(report["seccomp"]["status"], "enforced");
}

#[test]
fn a_landlock_floor_above_the_kernel_is_refused() {
    let abi = aip::sandbox::landlock::kernel_abi();
    if abi >= 10 {
        println!("skipped: the kernel's Landlock ABI {abi} meets every floor aip accepts");
        return;
    }
    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), &format!("landlock: {{min_abi: {}}}", abi + 1));
    let out = aip_sandbox(&["--policy", policy.to_str().unwrap(), "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains(&format!("below the policy's floor {}", abi + 1)),
        "{}",
        stderr(&out)
    );
}

/// As aipd runs them (root): sandboxes of one spec mount clones of one read-only template of
/// their root tmpfs. Each still gets the whole root, read-only, and a `/tmp` of its own.
#[test]
fn sandboxes_sharing_a_root_template_each_get_the_read_only_root_and_their_own_tmp() {
    if !is_root() {
        println!("skipped: root templates are made by root supervisors only");
        return;
    }
    let checks = [
        "stat:/tmp/mark",
        "write:/tmp/mark",
        "read:/etc/passwd",
        "write:/etc/passwd",
        "write:/aip-test",
        "read:/etc/shadow",
        "inode:/etc/passwd",
    ];
    // `--timing` spawns through a spawn server, as aipd does: its first sandbox makes the
    // template. The server gets each spec with its generated files after the JSON, raw.
    let (results, output) = probe_with(&["--timing", "3"], &checks);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout.contains("runs: 3 (non-zero exits: 0), spawned through the spawn server"),
        "{stdout}"
    );
    assert_eq!(results.len(), 3 * checks.len(), "{stdout}");
    for run in results.chunks(checks.len()) {
        // Nothing of an earlier sandbox's /tmp is left.
        assert_denied(run, "stat:/tmp/mark", "ENOENT");
        assert_allowed(run, "write:/tmp/mark");
        assert_allowed(run, "read:/etc/passwd");
        // Root's file, so the permission check answers before the read-only mount does (the
        // same as in a root built per sandbox).
        assert_denied(run, "write:/etc/passwd", "EACCES");
        assert_denied(run, "write:/aip-test", "EROFS");
        assert_denied(run, "read:/etc/shadow", "ENOENT");
    }
    // The roots were clones of one template: the same file, made once (a root built per
    // sandbox writes its own copy, with its own change time).
    let passwd: std::collections::BTreeSet<&str> = results
        .iter()
        .filter(|r| r.check == "inode:/etc/passwd")
        .map(|r| r.detail.as_str())
        .collect();
    assert_eq!(passwd.len(), 1, "{stdout}");
}

#[test]
fn the_report_names_every_layer() {
    let out = aip_sandbox(&["--report", "--", "/bin/true"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = report_of(&out);
    for layer in [
        "namespaces",
        "filesystem",
        "seccomp",
        "capabilities",
        "resources",
        "network",
        "lifecycle",
    ] {
        assert_eq!(report[layer]["status"], "enforced", "{layer}: {report}");
    }
    let landlock = report["landlock"]["status"].as_str().unwrap();
    assert!(landlock == "enforced" || landlock == "partial", "{report}");
    assert_eq!(report["seccomp"]["profile"], "generic");
    assert_eq!(report["resources"]["limits"]["RLIMIT_CORE"], "0");
}

#[test]
fn an_unenforceable_cpu_limit_is_refused_without_degradation() {
    let hierarchy = std::fs::read_to_string("/sys/fs/cgroup/unified/cgroup.controllers")
        .or_else(|_| std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers"))
        .unwrap_or_default();
    if hierarchy.split_whitespace().any(|c| c == "cpu") {
        println!("skipped: this host delegates the cpu controller, so the limit is enforceable");
        return;
    }
    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), "resources: {cpu: 0.5}");
    let out = aip_sandbox(&["--policy", policy.to_str().unwrap(), "--", "/bin/true"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).starts_with("aip: resources: cannot enforce cpu.max"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn memory_limits_apply_without_cgroups() {
    let dir = shared_tempdir();
    let policy = write_policy(dir.path(), "resources: {memory: 64M}");
    let out = aip_sandbox(&[
        "--report",
        "--policy",
        policy.to_str().unwrap(),
        "--",
        "/bin/sh",
        "-c",
        "ulimit -d",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let report = report_of(&out);
    if report["resources"]["mechanism"] == "rlimit" {
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65536");
    } else {
        assert_eq!(report["resources"]["limits"]["memory.max"], "67108864");
    }
}

#[test]
fn a_missing_interpreter_is_named_before_anything_runs() {
    let dir = shared_tempdir();
    let script = dir.path().join("server");
    std::fs::write(&script, "#!/opt/nowhere/bin/node\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = aip_sandbox(&[OsStr::new("--"), script.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("the #! interpreter of"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_exec_failure_inside_names_the_layer_and_a_fix() {
    let dir = shared_tempdir();
    let script = dir.path().join("not-executable");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = aip_sandbox(&[OsStr::new("--"), script.as_os_str()]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.contains("filesystem: execve"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn doctor_reports_the_kernel_and_passes_the_canary() {
    let out = Command::new(aip_bin())
        .args(["doctor", "--json"])
        .output()
        .unwrap();
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", stderr(&out)));
    assert_eq!(report["canary"]["passed"], true, "{report:#}");
    let landlock = report["features"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "landlock")
        .unwrap();
    if landlock["level"] == "ok" {
        assert!(out.status.success());
    }
}

// ---- unprivileged path -------------------------------------------------------------------------

/// Runs `aip sandbox … probe` as an ordinary user: directly when the tests are not root, through
/// a test user created with `useradd` when they are.
fn as_ordinary_user(checks: &[&str]) -> Option<(Vec<ProbeResult>, Output)> {
    let aip = aip_bin();
    let mut command = Command::new(&aip);
    command
        .current_dir("/")
        .args(["sandbox", "--report", "--"])
        .arg(&aip)
        .args(["doctor", "--probe"])
        .args(checks);
    if is_root() {
        let user = "aip-sandbox-test";
        let exists = Command::new("id")
            .arg(user)
            .output()
            .is_ok_and(|o| o.status.success());
        if !exists {
            let made = Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                    user,
                ])
                .status()
                .is_ok_and(|s| s.success());
            if !made {
                println!("skipped: cannot create the test user {user} (useradd)");
                return None;
            }
        }
        let id = |flag: &str| -> u32 {
            let out = Command::new("id").args([flag, user]).output().unwrap();
            String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
        };
        use std::os::unix::process::CommandExt;
        command.uid(id("-u")).gid(id("-g"));
    }
    let output = command.stdin(Stdio::null()).output().unwrap();
    if !output.status.success() && stderr(&output).contains("user namespace") {
        println!(
            "skipped: unprivileged user namespaces are not available here: {}",
            stderr(&output)
        );
        return None;
    }
    let results = String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    Some((results, output))
}

#[test]
fn the_unprivileged_path_enforces_the_same_layers() {
    let tcp = TcpListener::bind("127.0.0.1:0").unwrap();
    let tcp_check = format!("connect:127.0.0.1:{}", tcp.local_addr().unwrap().port());
    let kill_host = format!("kill:{}", std::process::id());
    let checks = [
        "whoami",
        "read:/etc/shadow",
        "list:/root",
        "write:/usr/x",
        "pids",
        "ptrace",
        "mount",
        "unshare-user",
        "clone3",
        "io-uring",
        "keyctl",
        "tiocsti",
        "list:/sys",
        "list:/run",
        "write:/etc/x",
        "unshare-net",
        "setns",
        "clone-newuser",
        "bpf",
        "perf",
        "userfaultfd",
        "personality",
        "socket:packet",
        "socket:vsock",
        "resolve:example.com",
        &kill_host,
        &tcp_check,
    ];
    let Some((r, out)) = as_ordinary_user(&checks) else {
        return;
    };
    assert!(out.status.success(), "{}", stderr(&out));
    let report = report_of(&out);
    assert_eq!(report["namespaces"]["user_namespace"], true);
    assert_eq!(report["capabilities"]["status"], "enforced");
    let who = &get(&r, "whoami").detail;
    assert!(
        who.contains("CapEff: 0000000000000000")
            && who.contains("NoNewPrivs: 1")
            && who.contains("Seccomp: 2"),
        "{who}"
    );
    assert!(!who.contains("Uid: 0 "), "{who}");
    assert_denied(&r, "read:/etc/shadow", "ENOENT");
    assert_denied(&r, "list:/root", "ENOENT");
    assert_denied(&r, "write:/usr/x", "EROFS");
    for check in [
        "ptrace",
        "mount",
        "unshare-user",
        "keyctl",
        "tiocsti",
        "unshare-net",
        "setns",
        "clone-newuser",
        "bpf",
        "perf",
        "userfaultfd",
        "personality",
        "socket:packet",
        "socket:vsock",
    ] {
        assert_denied(&r, check, "EPERM");
    }
    assert_denied(&r, "list:/sys", "ENOENT");
    assert_denied(&r, "list:/run", "ENOENT");
    assert_denied(&r, "write:/etc/x", "EROFS");
    assert_denied(&r, &kill_host, "ESRCH");
    assert!(!get(&r, "resolve:example.com").succeeded);
    assert_denied(&r, "clone3", "ENOSYS");
    assert_denied(&r, "io-uring", "ENOSYS");
    if aip::sandbox::landlock::kernel_abi() >= 4 {
        assert_denied(&r, &tcp_check, "EACCES");
    }
    assert!(get(&r, "pids").detail.split(',').count() <= 3);
}

// ---- real MCP servers --------------------------------------------------------------------------

fn peers() -> Option<PathBuf> {
    let dir = std::env::var_os("AIP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".peers"));
    if dir.join("node").exists() && dir.join("py").exists() {
        Some(dir)
    } else {
        println!(
            "skipped: MCP peers not installed at {} (scripts/install-peers.sh, or set AIP_PEERS)",
            dir.display()
        );
        None
    }
}

/// Drives a server through `aip sandbox` with raw JSON-RPC lines; returns responses by id.
fn mcp_session(
    args: &[&OsStr],
    requests: &[serde_json::Value],
) -> (Vec<serde_json::Value>, String) {
    let mut child = Command::new(aip_bin())
        .current_dir("/")
        .arg("sandbox")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    let expected = requests.iter().filter(|r| r.get("id").is_some()).count();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut responses = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line)
                && v.get("id").is_some()
            {
                responses.push(v);
                if responses.len() == expected {
                    break;
                }
            }
        }
        responses
    });
    for request in requests {
        writeln!(stdin, "{request}").unwrap();
    }
    stdin.flush().unwrap();
    let start = Instant::now();
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(stdin);
    let _ = child.kill();
    let _ = child.wait();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (
        if reader.is_finished() {
            reader.join().unwrap()
        } else {
            Vec::new()
        },
        err,
    )
}

fn initialize() -> [serde_json::Value; 2] {
    [
        serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "aip-tests", "version": "1"}}}),
        serde_json::json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
    ]
}

fn response(responses: &[serde_json::Value], id: u64) -> &serde_json::Value {
    responses
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no response {id}: {responses:?}"))
}

#[test]
fn python_mcp_server_time_serves_tools_in_the_default_sandbox() {
    let Some(peers) = peers() else { return };
    let server = peers.join("py/bin/mcp-server-time");
    let mut requests = initialize().to_vec();
    requests.push(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    requests.push(
        serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}}),
    );
    let (responses, err) = mcp_session(&[OsStr::new("--"), server.as_os_str()], &requests);
    assert_eq!(responses.len(), 3, "stderr: {err}");
    let tools = response(&responses, 2)["result"]["tools"]
        .as_array()
        .unwrap();
    assert!(
        tools.iter().any(|t| t["name"] == "get_current_time"),
        "{tools:?}"
    );
    let call = &response(&responses, 3)["result"];
    assert_eq!(call["isError"], false, "{call}");
    assert!(
        call["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("Europe/Paris"),
        "{call}"
    );
}

#[test]
fn node_mcp_server_filesystem_works_in_its_granted_directory_only() {
    let Some(peers) = peers() else { return };
    let server = peers.join("node/node_modules/.bin/mcp-server-filesystem");
    let dir = shared_tempdir();
    std::fs::write(dir.path().join("hello.txt"), "hello from the host\n").unwrap();
    if is_root() {
        nix::unistd::chown(
            dir.path(),
            Some(nix::unistd::Uid::from_raw(65534)),
            Some(nix::unistd::Gid::from_raw(65534)),
        )
        .unwrap();
    }
    let granted = dir.path().to_str().unwrap();
    let mut requests = initialize().to_vec();
    requests.push(serde_json::json!({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}));
    requests.push(serde_json::json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
        "params": {"name": "read_text_file", "arguments": {"path": format!("{granted}/hello.txt")}}}));
    requests.push(serde_json::json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call",
        "params": {"name": "write_file", "arguments": {"path": format!("{granted}/out.txt"), "content": "from the sandbox"}}}));
    let (responses, err) = mcp_session(
        &[
            OsStr::new("--allow-write"),
            OsStr::new(granted),
            OsStr::new("--"),
            server.as_os_str(),
            OsStr::new(granted),
        ],
        &requests,
    );
    assert_eq!(responses.len(), 4, "stderr: {err}");
    let tools = response(&responses, 2)["result"]["tools"]
        .as_array()
        .unwrap();
    assert!(tools.iter().any(|t| t["name"] == "read_text_file"));
    assert_eq!(
        response(&responses, 3)["result"]["content"][0]["text"],
        "hello from the host\n"
    );
    assert!(
        response(&responses, 4)["result"]
            .get("isError")
            .is_none_or(|e| e == false),
        "{responses:?}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out.txt")).unwrap(),
        "from the sandbox"
    );
}

// ---- the library contract (what `launch` and the daemon rely on) -------------------------------

/// Plans `command` with default policy through the real planner.
fn planned(command: &[&str], no_sandbox: bool) -> aip::sandbox::SandboxSpec {
    use aip::launch::plan::{Overrides, PlanInput, RealFs, plan};
    let command: Vec<std::ffi::OsString> = command.iter().map(Into::into).collect();
    let env: Vec<(std::ffi::OsString, std::ffi::OsString)> = std::env::vars_os().collect();
    let config = aip::policy::sandbox_config::SandboxConfig::default();
    let overrides = Overrides {
        no_sandbox,
        ..Default::default()
    };
    let input = PlanInput {
        config: &config,
        command: &command,
        cwd: Path::new("/"),
        overrides: &overrides,
        env: &env,
        hidden: &[],
    };
    plan(&input, &RealFs).expect("plan").spec
}

fn null_stdio() -> [std::os::fd::OwnedFd; 3] {
    let open = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .unwrap()
            .into()
    };
    [open(), open(), open()]
}

fn alive(pid: u32) -> bool {
    // A zombie still has /proc/PID; its state is Z.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .map(|x| x.1.trim_start().starts_with(|c| c != 'Z'))
                .unwrap_or(false)
        })
        .unwrap_or(false)
}

#[test]
fn a_sandbox_spawned_from_a_short_lived_thread_outlives_the_thread_and_is_usable_elsewhere() {
    let spec = planned(&["/bin/sleep", "300"], false);
    let child =
        std::thread::spawn(move || aip::sandbox::spawn(&spec, null_stdio()).expect("spawn"))
            .join()
            .unwrap();
    // The spawning thread is gone; the parent-death signal must not have fired.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        alive(child.pid()),
        "the sandbox died with the thread that spawned it"
    );
    assert_eq!(child.try_wait().unwrap(), None);
    assert!(child.take_listeners().is_empty());
    let child = std::sync::Arc::new(child);
    let waiter = {
        let child = std::sync::Arc::clone(&child);
        std::thread::spawn(move || child.wait().unwrap())
    };
    child.signal_all(nix::sys::signal::Signal::SIGTERM).unwrap();
    let exit = waiter.join().unwrap();
    assert_eq!(exit, aip::sandbox::SandboxExit::Signal(15));
    assert_eq!(exit.code(), 143);
    assert_eq!(child.try_wait().unwrap(), Some(exit));
    // Signalling a finished sandbox is harmless.
    child.kill_all().unwrap();
}

#[test]
fn dropping_the_handle_kills_the_whole_sandbox() {
    let spec = planned(&["/bin/sh", "-c", "sleep 300 & sleep 300 & wait"], false);
    let child = aip::sandbox::spawn(&spec, null_stdio()).expect("spawn");
    let reaper = child.pid();
    let mut tree = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        tree = descendants(reaper);
        tree.len() >= 3
    }));
    drop(child);
    assert!(!alive(reaper));
    assert!(
        wait_until(Duration::from_secs(5), || tree.iter().all(|p| !alive(*p))),
        "{tree:?}"
    );
}

#[test]
fn a_disabled_sandbox_is_a_plain_process_group_that_still_dies_as_a_tree() {
    let spec = planned(&["/bin/sh", "-c", "sleep 300 & wait"], true);
    assert!(!spec.enabled);
    let child = aip::sandbox::spawn(&spec, null_stdio()).expect("spawn");
    assert!(!child.report().enabled);
    assert_eq!(child.report().to_json()["seccomp"]["status"], "disabled");
    let shell = child.pid();
    let mut tree = Vec::new();
    assert!(wait_until(Duration::from_secs(5), || {
        tree = descendants(shell);
        !tree.is_empty()
    }));
    // Its own session and process group.
    let stat = std::fs::read_to_string(format!("/proc/{shell}/stat")).unwrap();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .unwrap()
        .1
        .split_whitespace()
        .collect();
    assert_eq!(
        fields[2],
        shell.to_string(),
        "not a process-group leader: {stat}"
    );
    child.kill_all().unwrap();
    assert_eq!(child.wait().unwrap(), aip::sandbox::SandboxExit::Signal(9));
    assert!(
        wait_until(Duration::from_secs(5), || tree.iter().all(|p| !alive(*p))),
        "{tree:?}"
    );
}

#[test]
fn spawn_reports_a_failed_layer_synchronously() {
    let mut spec = planned(&["/bin/true"], false);
    spec.cwd = "/nonexistent-cwd".into();
    let err = aip::sandbox::spawn(&spec, null_stdio()).unwrap_err();
    assert_eq!(err.layer(), Some(aip::sandbox::Layer::Filesystem));
    assert!(err.to_string().contains("chdir /nonexistent-cwd"), "{err}");
    assert!(err.to_string().contains("hint:"), "{err}");
}

/// Through a spawn server, as aipd spawns: a failure after the reaper has handed over (the
/// server's `chdir`) reaches the caller as the same layer error as in-process, the server stays
/// usable, and a generated file that changed since the previous request is the new one in the
/// sandbox (requests leave out files the server holds from the previous request).
#[test]
fn spawn_server_reports_late_failures_and_never_serves_stale_generated_files() {
    let server = aip::sandbox::SpawnServer::start(0).expect("spawn server");
    let mut failing = planned(&["/bin/true"], false);
    failing.cwd = "/nonexistent-cwd".into();
    let err = server.spawn(&failing, null_stdio()).unwrap_err();
    assert_eq!(err.layer(), Some(aip::sandbox::Layer::Filesystem), "{err}");
    assert!(err.to_string().contains("chdir /nonexistent-cwd"), "{err}");

    let run = |hostname: &str| {
        let mut spec = planned(&["/bin/cat", "/etc/hostname"], false);
        let file = spec
            .files
            .iter_mut()
            .find(|f| f.path == Path::new("/etc/hostname"))
            .expect("a generated /etc/hostname");
        file.contents = format!("{hostname}\n").into_bytes().into();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let [stdin, _, stderr] = null_stdio();
        let child = server.spawn(&spec, [stdin, write, stderr]).expect("spawn");
        assert!(child.report().seccomp.filters > 0, "the report is complete");
        let mut out = String::new();
        std::fs::File::from(read).read_to_string(&mut out).unwrap();
        assert!(child.wait().unwrap().success());
        out
    };
    // Same length, other bytes: only a comparison of the contents tells them apart.
    assert_eq!(run("first"), "first\n");
    assert_eq!(run("first"), "first\n");
    assert_eq!(run("again"), "again\n");
    assert_eq!(run("first"), "first\n");
}

#[test]
fn the_server_keeps_aips_umask_and_generated_files_their_modes() {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .unwrap()
        .trim()
        .to_string();
    let out = aip_sandbox(&[
        "--",
        "/bin/sh",
        "-c",
        "umask; stat -c %a /etc/passwd /etc/ld.so.cache /tmp",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines, [umask.as_str(), "644", "644", "1777"]);
}

/// Runs `spec` with stdout captured.
fn run_capturing(spec: &aip::sandbox::SandboxSpec) -> String {
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
    let [stdin, _, stderr] = null_stdio();
    let child = aip::sandbox::spawn(spec, [stdin, write, stderr]).expect("spawn");
    let mut out = String::new();
    std::fs::File::from(read).read_to_string(&mut out).unwrap();
    child.wait().unwrap();
    out
}

#[test]
fn pre_created_network_namespaces_are_fresh_and_never_shared() {
    if !is_root() {
        println!("skipped: the network namespace pool is for a root supervisor");
        return;
    }
    assert!(aip::sandbox::prewarm_network_namespaces(2));
    std::thread::sleep(Duration::from_millis(200));
    let aip = aip_bin();
    let probe = planned(
        &[aip.to_str().unwrap(), "doctor", "--probe", "loopback"],
        false,
    );
    let out = run_capturing(&probe);
    let r: Vec<ProbeResult> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_allowed(&r, "loopback");

    // Four sandboxes alive at once (namespace ids may be recycled once a namespace is gone).
    let spec = planned(
        &["/bin/sh", "-c", "readlink /proc/self/ns/net; read x"],
        false,
    );
    let host = std::fs::read_link("/proc/self/ns/net")
        .unwrap()
        .display()
        .to_string();
    let mut alive = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (stdin_r, stdin_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let (out_r, out_w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let [_, _, err] = null_stdio();
        let child = aip::sandbox::spawn(&spec, [stdin_r, out_w, err]).expect("spawn");
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(std::fs::File::from(out_r)),
            &mut line,
        )
        .unwrap();
        let netns = line.trim().to_string();
        assert!(netns.starts_with("net:["), "{netns}");
        assert_ne!(netns, host);
        assert!(
            seen.insert(netns),
            "a network namespace is shared: {seen:?}"
        );
        alive.push((child, stdin_w));
    }
}

/// Landlock does not cover anonymous files: without more, a server could write any binary into a
/// memfd and execute it, although /tmp is noexec and grants are read-only.
#[test]
fn a_memfd_cannot_be_executed() {
    if !is_root() {
        println!(
            "SKIP a_memfd_cannot_be_executed: vm.memfd_noexec is set only by a root supervisor"
        );
        return;
    }
    if !Path::new("/proc/sys/vm/memfd_noexec").exists() {
        println!(
            "SKIP a_memfd_cannot_be_executed: this kernel has no vm.memfd_noexec (Linux < 6.3)"
        );
        return;
    }
    let script = "import os, sys\n\
        fd = os.memfd_create('payload', 0)\n\
        os.write(fd, open('/usr/bin/true', 'rb').read())\n\
        try:\n    os.execv(f'/proc/self/fd/{fd}', ['payload'])\n\
        except OSError as e:\n    print('refused', e.errno); sys.exit(3)\n";
    let out = aip_sandbox(&["--", "/usr/bin/python3", "-c", script]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "the memfd ran: {} {}",
        String::from_utf8_lossy(&out.stdout),
        stderr(&out)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("refused"),
        "{}",
        stderr(&out)
    );
}
