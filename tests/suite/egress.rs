//! Integration tests: egress control with real kernel namespaces and real clients.
//!
//! Every test builds its own little world, touching nothing outside it:
//! - `R`, a named network namespace playing the remote host (tests/data/egress/remote.py: HTTP on
//!   :80, HTTPS on :443 with a test-made certificate for remote.test, a line echo on :7000);
//! - `H`, a named network namespace playing the supervisor's host side, joined to `R` by a veth
//!   pair (10.231.0.1/30 ↔ 10.231.0.2/30), with a canary HTTP server on its own loopback. The
//!   supervisor's tokio threads (and so every upstream socket it opens) live in `H`;
//! - `S`, the sandbox's fresh network namespace, made by `sandbox::net::setup_in_netns` from the
//!   `EgressPlan`, where the clients (curl, python, node, raw sockets) run with the plan's proxy
//!   environment and its `resolv.conf`/`hosts` bind-mounted in a private mount namespace.
//!
//! Names resolve on the host side through a `StaticResolver` (remote.test → 10.231.0.2, plus
//! rebinding names), wrapped to count lookups so tests can show refused names never leave.
// Harness helpers outside #[test] fns: clippy's in-tests allowances do not reach them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aip::audit::{AuditError, MemorySink, Record, Sink};
use aip::egress::resolve::ResolveFuture;
use aip::egress::{EgressPlan, Resolve, StaticResolver, Supervisor, SupervisorCtx};
use aip::policy::egress_config::EgressConfig;
use aip::sandbox::net::setup_in_netns;
use nix::sched::{CloneFlags, setns, unshare};

use crate::support::repo_root;

const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 2);
const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 231, 0, 1);

static SEQ: AtomicU32 = AtomicU32::new(0);

fn skip(reason: &str) {
    eprintln!("skipped: {reason}");
}

/// Whether this machine can run the namespace tests (root, `ip`, `nsenter`, `unshare`).
fn capable() -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip("egress namespace tests need root");
        return false;
    }
    for tool in ["ip", "nsenter", "unshare", "openssl", "python3", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            skip(&format!("`{tool}` is not installed"));
            return false;
        }
    }
    true
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace, deleted on drop.
struct NamedNetns(String);

impl NamedNetns {
    fn new(tag: &str) -> NamedNetns {
        let name = format!(
            "aipeg-{}-{}-{tag}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::SeqCst)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        NamedNetns(name)
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.0)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Runs a child to completion with a deadline; kills it when the deadline passes.
fn run(cmd: &mut Command, timeout: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn client");
    let pid = child.id();
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = done.clone();
    let killer = std::thread::spawn(move || {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if flag.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    });
    let out = child.wait_with_output().expect("wait client");
    done.store(true, Ordering::SeqCst);
    let _ = killer.join();
    out
}

/// The remote host (`R`) and the supervisor's host side (`H`).
struct World {
    host: NamedNetns,
    remote: NamedNetns,
    dir: tempfile::TempDir,
    servers: Vec<Child>,
}

impl World {
    fn new() -> Option<World> {
        if !capable() {
            return None;
        }
        let host = NamedNetns::new("h");
        let remote = NamedNetns::new("r");
        let n = SEQ.fetch_add(1, Ordering::SeqCst);
        let (vh, vr) = (format!("aeh{}", n % 100_000), format!("aer{}", n % 100_000));
        ip(&[
            "-n", &host.0, "link", "add", &vh, "type", "veth", "peer", "name", &vr, "netns",
            &remote.0,
        ]);
        ip(&[
            "-n",
            &host.0,
            "addr",
            "add",
            &format!("{HOST_IP}/30"),
            "dev",
            &vh,
        ]);
        ip(&["-n", &host.0, "link", "set", &vh, "up"]);
        ip(&[
            "-n",
            &remote.0,
            "addr",
            "add",
            &format!("{REMOTE_IP}/30"),
            "dev",
            &vr,
        ]);
        ip(&["-n", &remote.0, "link", "set", &vr, "up"]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "2",
            ])
            .args([
                "-subj",
                "/CN=remote.test",
                "-addext",
                "subjectAltName=DNS:remote.test,DNS:fronted.test,DNS:other.test",
            ])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut world = World {
            host,
            remote,
            dir,
            servers: Vec::new(),
        };
        let script = repo_root().join("tests/data/egress/remote.py");
        let remote_ns = world.remote.0.clone();
        world.start_server(
            &remote_ns,
            &[
                script.to_str().unwrap(),
                cert.to_str().unwrap(),
                key.to_str().unwrap(),
            ],
        );
        // Canary on the host side's loopback: nothing in the sandbox may ever reach it unless a
        // CIDR rule names 127.0.0.1.
        let canary = world.dir.path().join("canary.py");
        std::fs::write(
            &canary,
            "import http.server,sys\nclass H(http.server.BaseHTTPRequestHandler):\n    def do_GET(self):\n        b=b'host loopback canary\\n'\n        self.send_response(200);self.send_header('Content-Length',str(len(b)));self.end_headers();self.wfile.write(b)\n    def log_message(self,*a):pass\ns=http.server.ThreadingHTTPServer(('127.0.0.1',80),H)\nimport threading;threading.Thread(target=s.serve_forever,daemon=True).start()\nprint('ready',flush=True)\nsys.stdin.read()\n",
        )
        .unwrap();
        let host_ns = world.host.0.clone();
        world.start_server(&host_ns, &[canary.to_str().unwrap()]);
        Some(world)
    }

    fn start_server(&mut self, netns: &str, args: &[&str]) {
        let mut child = Command::new("ip")
            .args(["netns", "exec", netns, "python3"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready", "test server did not start");
        self.servers.push(child);
    }

    /// A tokio runtime whose threads all live in the host side (`H`), so every socket the
    /// supervisor opens upstream is opened there.
    fn host_runtime(&self) -> tokio::runtime::Runtime {
        let host_path = self.host.path();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let f = File::open(&host_path).expect("open host-side netns");
                setns(&f, CloneFlags::CLONE_NEWNET).expect("enter host-side netns");
            })
            .build()
            .unwrap()
    }

    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }
}

impl Drop for World {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Counts host-side lookups per name (to show refused names are never resolved).
struct Counting {
    inner: StaticResolver,
    seen: Mutex<HashMap<String, u32>>,
}

impl Resolve for Counting {
    fn resolve<'a>(&'a self, name: &'a str) -> ResolveFuture<'a> {
        *self
            .seen
            .lock()
            .unwrap()
            .entry(name.to_owned())
            .or_default() += 1;
        self.inner.resolve(name)
    }
}

/// A memory sink that can be made to fail (to show egress stops when audit does).
#[derive(Default)]
struct BreakableSink {
    inner: MemorySink,
    broken: std::sync::atomic::AtomicBool,
}

impl Sink for BreakableSink {
    fn write(&self, record: &Record) -> Result<(), AuditError> {
        if self.broken.load(Ordering::SeqCst) {
            return Err(AuditError::Write {
                target: "test".into(),
                source: std::io::Error::other("disk full"),
            });
        }
        self.inner.write(record)
    }
}

/// One sandbox (`S`) with its egress supervisor running in `H`.
struct Sandbox {
    rt: tokio::runtime::Runtime,
    sup: Option<Supervisor>,
    netns: File,
    plan: EgressPlan,
    audit: Arc<BreakableSink>,
    resolver: Arc<Counting>,
    files: tempfile::TempDir,
    cert: PathBuf,
    in_flight: Arc<Mutex<Option<(String, String)>>>,
}

fn policy(yaml: &str) -> EgressConfig {
    let cfg: EgressConfig = serde_saphyr::from_str(yaml).expect("test policy parses");
    cfg.validate().expect("test policy validates");
    cfg
}

impl Sandbox {
    fn new(world: &World, cfg: &EgressConfig) -> Sandbox {
        let plan = EgressPlan::new(cfg).unwrap();
        let net = plan.net_mode();
        let (netns, fds) = std::thread::spawn(move || {
            unshare(CloneFlags::CLONE_NEWNET).expect("unshare netns");
            let ns = File::open("/proc/thread-self/ns/net").unwrap();
            let fds = setup_in_netns(&net).expect("sandbox network setup");
            (ns, fds)
        })
        .join()
        .unwrap();
        let rt = world.host_runtime();
        let audit = Arc::new(BreakableSink::default());
        let resolver = Arc::new(Counting {
            inner: StaticResolver::new()
                .with("remote.test", &[IpAddr::V4(REMOTE_IP)])
                .with("other.test", &[IpAddr::V4(REMOTE_IP)])
                .with("rebind-loopback.test", &["127.0.0.1".parse().unwrap()])
                .with("rebind-private.test", &[IpAddr::V4(HOST_IP)])
                .with(
                    "rebind-metadata.test",
                    &["169.254.169.254".parse().unwrap()],
                ),
            seen: Mutex::new(HashMap::new()),
        });
        let in_flight: Arc<Mutex<Option<(String, String)>>> = Arc::new(Mutex::new(None));
        let probe = in_flight.clone();
        let ctx = SupervisorCtx {
            server: "test-server".into(),
            session_id: "sess-1".into(),
            audit: audit.clone(),
            in_flight: Arc::new(move || probe.lock().unwrap().clone()),
            resolver: resolver.clone(),
        };
        let sup = {
            let _g = rt.enter();
            Supervisor::start(&plan, fds, ctx).expect("supervisor starts")
        };
        let files = tempfile::tempdir().unwrap();
        std::fs::write(files.path().join("resolv.conf"), plan.resolv_conf()).unwrap();
        std::fs::write(files.path().join("hosts"), plan.hosts()).unwrap();
        Sandbox {
            rt,
            sup: Some(sup),
            netns,
            plan,
            audit,
            resolver,
            files,
            cert: world.cert(),
            in_flight,
        }
    }

    /// The argv that runs `program` inside the sandbox's network namespace, with its
    /// `resolv.conf` and `hosts` bind-mounted in a private mount namespace.
    fn argv(&self, program: &str, args: &[&str]) -> Vec<String> {
        let mut v = vec![
            "nsenter".to_owned(),
            format!(
                "--net=/proc/{}/fd/{}",
                std::process::id(),
                self.netns.as_raw_fd()
            ),
        ];
        v.extend(
            [
                "--",
                "unshare",
                "-m",
                "--propagation",
                "private",
                "--",
                "sh",
                "-c",
            ]
            .map(String::from),
        );
        v.push("mount --bind \"$1\" /etc/resolv.conf && mount --bind \"$2\" /etc/hosts && shift 2 && exec \"$@\"".into());
        v.push("sh".into());
        for f in ["resolv.conf", "hosts"] {
            v.push(self.files.path().join(f).to_string_lossy().into_owned());
        }
        v.push(program.to_owned());
        v.extend(args.iter().map(|a| a.to_string()));
        v
    }

    /// The plan's proxy environment plus trust for the test certificate.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = self.plan.env();
        let cert = self.cert.to_string_lossy().into_owned();
        for k in ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"] {
            env.push((k.to_owned(), cert.clone()));
        }
        env
    }

    /// A command that runs inside the sandbox (see [`Sandbox::argv`]) with [`Sandbox::env`].
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let argv = self.argv(program, args);
        let mut c = Command::new(&argv[0]);
        c.args(&argv[1..]);
        c.envs(self.env());
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        run(&mut self.command(program, args), Duration::from_secs(60))
    }

    /// curl with a 20 s deadline, errors on stderr.
    fn curl(&self, args: &[&str]) -> Output {
        let mut all = vec!["-sS", "-m", "20"];
        all.extend_from_slice(args);
        self.run("curl", &all)
    }

    fn python(&self, code: &str) -> Output {
        self.run("python3", &["-c", code])
    }

    /// Runs `f` on a thread inside the sandbox's network namespace.
    fn inside<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = self.netns.try_clone().unwrap();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }

    fn set_call(&self, id: &str, tool: &str) {
        *self.in_flight.lock().unwrap() = Some((id.into(), tool.into()));
    }

    fn lookups(&self, name: &str) -> u32 {
        self.resolver
            .seen
            .lock()
            .unwrap()
            .get(name)
            .copied()
            .unwrap_or(0)
    }

    /// Stops the supervisor (every record written) and returns the records.
    fn finish(mut self) -> Vec<Record> {
        if let Some(sup) = self.sup.take() {
            self.rt.block_on(sup.shutdown());
        }
        self.audit.inner.records()
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn connections<'a>(records: &'a [Record], host: &str) -> Vec<&'a Record> {
    records
        .iter()
        .filter(|r| {
            r.get_str("event") == Some("EGRESS_CONNECTION") && r.get_str("host") == Some(host)
        })
        .collect()
}

/// A DNS A query for `name` sent to the stub from inside the sandbox; returns (rcode, addresses).
fn dns_query(sb: &Sandbox, name: &str) -> (u8, Vec<Ipv4Addr>) {
    dns_query_over(sb, name, false)
}

/// As [`dns_query`], over UDP or (`tcp`) over TCP with the two-byte length prefix.
fn dns_query_over(sb: &Sandbox, name: &str, tcp: bool) -> (u8, Vec<Ipv4Addr>) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    use std::io::{Read, Write};
    let mut m = Message::new(42, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let q = m.to_vec().unwrap();
    let resp = sb.inside(move || {
        if tcp {
            let mut s = std::net::TcpStream::connect("127.0.0.1:53").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s.write_all(&(q.len() as u16).to_be_bytes()).unwrap();
            s.write_all(&q).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).unwrap();
            return buf;
        }
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.send_to(&q, "127.0.0.1:53").unwrap();
        let mut buf = [0u8; 1500];
        let n = s.recv(&mut buf).unwrap();
        buf[..n].to_vec()
    });
    let m = Message::from_vec(&resp).unwrap();
    let ips = m
        .answers
        .iter()
        .filter_map(|r| match r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    (u16::from(m.metadata.response_code) as u8, ips)
}

const BASIC: &str = "
mode: block
allowed_hosts: [remote.test, other.test, rebind-loopback.test, rebind-private.test, rebind-metadata.test, 10.231.0.2]
allowed_ports: [80, 443, 7000]
";

#[test]
fn curl_and_python_through_the_proxy_env_reach_allowed_hosts_only() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    sb.set_call("17", "fetch");

    let o = sb.curl(&["https://remote.test/tls"]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /tls\n",
        "{}",
        stderr(&o)
    );
    let o = sb.curl(&["http://remote.test/plain?x=1"]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /plain?x=1\n",
        "{}",
        stderr(&o)
    );

    let o = sb.python("import urllib.request as u;print(u.urlopen('https://remote.test/py').read().decode(),end='')");
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /py\n",
        "{}",
        stderr(&o)
    );
    let o = sb.python("import urllib.request as u;print(u.urlopen('http://remote.test/py').read().decode(),end='')");
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /py\n",
        "{}",
        stderr(&o)
    );

    // Denied name: the proxy answers 403 and says why.
    let o = sb.curl(&["http://denied.test/"]);
    assert!(
        stdout(&o).contains("denied.test:80 denied by mode=block (not in allowed_hosts)"),
        "{}",
        stdout(&o)
    );
    let o = sb.curl(&["https://denied.test/"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    let o = sb.python("import urllib.request as u\ntry:\n u.urlopen('https://denied.test/')\nexcept Exception as e: print(e)");
    assert!(stdout(&o).contains("403"), "{}", stdout(&o));
    // Port outside the rules.
    let o = sb.curl(&["https://remote.test:8443/"]);
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    assert_eq!(
        sb.lookups("denied.test"),
        0,
        "a denied name was resolved on the host"
    );

    let records = sb.finish();
    let ok = connections(&records, "remote.test");
    let tls = ok
        .iter()
        .find(|r| {
            r.get_str("via") == Some("http_connect") && r.get_str("decision") == Some("ALLOW")
        })
        .expect("CONNECT record");
    assert_eq!(tls.get_str("sni"), Some("remote.test"));
    assert_eq!(tls.get_str("addr"), Some("10.231.0.2:443"));
    assert_eq!(tls.get_str("request_id"), Some("17"));
    assert_eq!(tls.get_str("tool"), Some("fetch"));
    assert_eq!(tls.get_str("server"), Some("test-server"));
    assert_eq!(tls.get_str("session_id"), Some("sess-1"));
    assert_eq!(tls.get_str("rule"), Some("allowed_hosts[0]=remote.test"));
    assert!(tls.get("bytes_up").unwrap().as_u64().unwrap() > 100);
    assert!(tls.get("bytes_down").unwrap().as_u64().unwrap() > 100);
    assert!(tls.get("duration_ms").is_some());
    assert!(ok.iter().any(|r| r.get_str("via") == Some("http_forward")));
    let denied = connections(&records, "denied.test");
    assert!(denied.len() >= 3);
    assert!(denied.iter().all(|r| r.get_str("decision") == Some("BLOCK")
        && r.get_str("rule") == Some("mode=block (not in allowed_hosts)")));
    let port = connections(&records, "remote.test")
        .into_iter()
        .find(|r| r.get("port").and_then(|p| p.as_u64()) == Some(8443))
        .expect("port record");
    assert_eq!(
        port.get_str("rule"),
        Some("allowed_ports (port 8443 not listed)")
    );
}

#[test]
fn transparent_capture_serves_clients_that_ignore_proxy_settings() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));

    // Raw TCP through getaddrinfo → stub → fake address → capture listener on :7000.
    let o = sb.python(
        "import socket\ns=socket.create_connection(('remote.test',7000),timeout=10)\ns.sendall(b'hi there\\n')\nprint(s.makefile().readline(),end='')\nprint(s.getpeername()[0])",
    );
    let out = stdout(&o);
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("echo hi there"), "{}", stderr(&o));
    let fake: Ipv4Addr = lines.next().unwrap().parse().unwrap();
    assert_eq!(
        fake.octets()[..2],
        [198, 18],
        "the sandbox sees a fake address, not the real one"
    );

    // curl with the proxy explicitly disabled, plain and TLS.
    for url in ["http://remote.test/cap", "https://remote.test/cap"] {
        let o = sb.curl(&["--noproxy", "*", url]);
        assert_eq!(
            stdout(&o),
            "hello from remote remote.test /cap\n",
            "{url}: {}",
            stderr(&o)
        );
    }

    // Node 20's fetch ignores NODE_USE_ENV_PROXY (added in 22.21/24.5), so it takes this path.
    let o = sb.run(
        "node",
        &["-e", "fetch('https://remote.test/node').then(r=>r.text()).then(t=>process.stdout.write(t)).catch(e=>{console.log('ERR',e.cause&&e.cause.code);process.exit(1)})"],
    );
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /node\n",
        "{}",
        stderr(&o)
    );
    let o = sb.run(
        "node",
        &["-e", "fetch('https://denied.test/').then(r=>console.log(r.status)).catch(e=>console.log('ERR',e.cause&&e.cause.code))"],
    );
    assert_eq!(stdout(&o).trim(), "ERR ENOTFOUND", "{}", stderr(&o));

    // A port with no rule has no listener: refused at once.
    let o = sb.python("import socket\ntry:\n socket.create_connection(('remote.test',7001),timeout=5)\nexcept Exception as e: print(type(e).__name__)");
    assert_eq!(
        stdout(&o).trim(),
        "ConnectionRefusedError",
        "{}",
        stderr(&o)
    );

    let records = sb.finish();
    let cap: Vec<_> = connections(&records, "remote.test")
        .into_iter()
        .filter(|r| r.get_str("via") == Some("capture"))
        .collect();
    assert!(
        cap.iter()
            .any(|r| r.get("port").and_then(|p| p.as_u64()) == Some(7000)
                && r.get_str("addr") == Some("10.231.0.2:7000")
                && r.get("bytes_down").and_then(|b| b.as_u64()) == Some(14))
    );
    assert!(cap.iter().any(|r| r.get_str("sni") == Some("remote.test")));
    assert!(
        cap.iter().all(|r| r.get_str("decision") == Some("ALLOW")),
        "{cap:?}"
    );
}

#[test]
fn dns_answers_only_allowed_names_and_never_forwards() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(
        &world,
        &policy("mode: block\nallowed_hosts: [remote.test, '*.wild.test', 10.231.0.2]\n"),
    );
    let (rcode, ips) = dns_query(&sb, "remote.test.");
    assert_eq!((rcode, ips.len()), (0, 1));
    let (_, again) = dns_query(&sb, "REMOTE.test.");
    assert_eq!(again, ips, "stable fake address");
    assert_eq!(
        dns_query_over(&sb, "remote.test.", true),
        (0, ips.clone()),
        "TCP agrees"
    );
    assert_eq!(dns_query_over(&sb, "unlisted.test.", true).0, 3);
    let (rcode, sub) = dns_query(&sb, "a.wild.test.");
    assert_eq!((rcode, sub.len()), (0, 1));
    assert_ne!(sub, ips, "one address per name");
    for name in [
        "unlisted.test.",
        "x7f3a9.remote.test.",
        "wild.test.",
        "c2VjcmV0.exfil.example.",
    ] {
        let (rcode, ips) = dns_query(&sb, name);
        assert_eq!((rcode, ips.len()), (3, 0), "{name} must be NXDOMAIN");
    }
    // Through the system resolver too.
    let o = sb.python("import socket\nfor n in ['unlisted.test','x1.remote.test']:\n try: socket.getaddrinfo(n,443)\n except socket.gaierror as e: print(n, e.errno == socket.EAI_NONAME)");
    assert_eq!(
        stdout(&o),
        "unlisted.test True\nx1.remote.test True\n",
        "{}",
        stderr(&o)
    );
    // Nothing was resolved on the host side: the stub answers from policy alone.
    assert_eq!(sb.resolver.seen.lock().unwrap().len(), 0);

    let records = sb.finish();
    let dns: Vec<_> = records
        .iter()
        .filter(|r| r.get_str("event") == Some("EGRESS_DNS"))
        .collect();
    for name in [
        "unlisted.test",
        "x7f3a9.remote.test",
        "wild.test",
        "c2vjcmv0.exfil.example",
        "x1.remote.test",
    ] {
        let r = dns
            .iter()
            .find(|r| r.get_str("name") == Some(name))
            .unwrap_or_else(|| panic!("no record for {name}"));
        assert_eq!(r.get_str("decision"), Some("BLOCK"));
        assert_eq!(r.get_str("rule"), Some("mode=block (not in allowed_hosts)"));
    }
}

#[test]
fn denied_dns_records_are_rate_limited_with_a_count() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy("mode: block\n"));
    let sent = sb.inside(|| {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut answered = 0;
        for i in 0..1000u32 {
            let mut q = vec![(i >> 8) as u8, i as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
            let label = format!("flood{i}");
            q.push(label.len() as u8);
            q.extend_from_slice(label.as_bytes());
            q.extend_from_slice(&[4, b't', b'e', b's', b't', 0, 0, 1, 0, 1]);
            s.send_to(&q, "127.0.0.1:53").unwrap();
            let mut buf = [0u8; 512];
            if s.recv(&mut buf).is_ok() && buf[3] & 0x0f == 3 {
                answered += 1;
            }
        }
        answered
    });
    assert_eq!(sent, 1000, "every query gets NXDOMAIN");
    let records = sb.finish();
    let dns = records
        .iter()
        .filter(|r| r.get_str("event") == Some("EGRESS_DNS"))
        .count();
    let suppressed: u64 = records
        .iter()
        .filter(|r| {
            r.get_str("event") == Some("EGRESS_SUPPRESSED") && r.get_str("kind") == Some("dns")
        })
        .chain(
            records
                .iter()
                .filter(|r| r.get_str("event") == Some("EGRESS_DNS")),
        )
        .filter_map(|r| {
            r.get("suppressed")
                .or(r.get("suppressed_before"))
                .and_then(|v| v.as_u64())
        })
        .sum();
    assert!(
        (100..200).contains(&dns),
        "{dns} DNS records for 1000 denials"
    );
    assert_eq!(
        dns as u64 + suppressed,
        1000,
        "every denial is either recorded or counted"
    );
}

#[test]
fn private_loopback_and_rebinding_destinations_are_refused() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    // Names that resolve (host side) to loopback, a private address not named by a CIDR, and
    // the cloud metadata address.
    for name in [
        "rebind-loopback.test",
        "rebind-private.test",
        "rebind-metadata.test",
    ] {
        let o = sb.curl(&[&format!("http://{name}/")]);
        assert!(
            stdout(&o).contains("special_range="),
            "{name}: {}",
            stdout(&o)
        );
        let o = sb.curl(&["--noproxy", "*", &format!("http://{name}/")]);
        assert!(!o.status.success(), "{name} via capture");
    }
    // Direct connections to loopback (the sandbox's own 127.0.0.1 is where capture listens;
    // the host side's loopback canary must stay unreachable) and to the host side's address.
    for url in [
        "http://127.0.0.1/",
        "http://10.231.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/",
    ] {
        let o = sb.curl(&["--noproxy", "*", url]);
        assert!(!stdout(&o).contains("canary"), "{url}");
        assert!(!o.status.success(), "{url}: {}", stdout(&o));
        // NO_PROXY covers loopback, so name the proxy explicitly.
        let o = sb.curl(&["-x", "http://127.0.0.1:3128", "--noproxy", "", url]);
        assert!(
            stdout(&o).contains("denied by special_range="),
            "{url}: {}",
            stdout(&o)
        );
    }
    let o = sb.curl(&["-x", "socks5h://127.0.0.1:1080", "http://127.0.0.1/"]);
    assert!(!o.status.success() && !stdout(&o).contains("canary"));
    let records = sb.finish();
    let r = connections(&records, "rebind-metadata.test");
    assert!(r.iter().all(|r| r.get_str("decision") == Some("BLOCK")));
    assert!(r.iter().any(|r| {
        r.get_str("rule")
            .unwrap()
            .contains("link-local (cloud metadata)")
            && r.get_str("rule")
                .unwrap()
                .contains("resolved 169.254.169.254")
    }));
}

#[test]
fn a_cidr_rule_opens_host_loopback_explicitly() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(
        &world,
        &policy("mode: block\nallowed_hosts: [127.0.0.1]\nallowed_ports: [80]\n"),
    );
    let o = sb.curl(&["http://127.0.0.1/"]);
    assert_eq!(stdout(&o), "host loopback canary\n", "{}", stderr(&o));
    let o = sb.curl(&["http://127.0.0.2/"]);
    assert!(
        stdout(&o).contains("special_range=loopback"),
        "{}",
        stdout(&o)
    );
    drop(sb.finish());
}

#[test]
fn sni_must_name_the_destination() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    // Transparent path: connect to remote.test's fake address, present another name.
    let code = "import socket,ssl\nctx=ssl.create_default_context()\nfor sni in ['remote.test','fronted.test']:\n try:\n  s=ctx.wrap_socket(socket.create_connection(('remote.test',443),timeout=10),server_hostname=sni)\n  s.sendall(b'GET /sni HTTP/1.0\\r\\nHost: remote.test\\r\\n\\r\\n'); print(sni, s.recv(100).split(b'\\r\\n')[0].decode())\n except Exception as e: print(sni, type(e).__name__)";
    let o = sb.python(code);
    let out = stdout(&o);
    assert!(
        out.contains("remote.test HTTP/1.1 200 OK"),
        "{out} {}",
        stderr(&o)
    );
    assert!(out.contains("fronted.test ConnectionResetError"), "{out}");
    // Through CONNECT: curl asks for remote.test but would speak TLS for fronted.test.
    let o = sb.curl(&[
        "--connect-to",
        "fronted.test:443:remote.test:443",
        "https://fronted.test/",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    // Plain HTTP on a captured port 80 with a Host header for another name.
    let o = sb.curl(&[
        "--noproxy",
        "*",
        "-H",
        "Host: other-vhost.test",
        "http://remote.test/",
    ]);
    assert!(!o.status.success(), "{}", stdout(&o));
    let records = sb.finish();
    let rules: Vec<&str> = connections(&records, "remote.test")
        .iter()
        .filter(|r| r.get_str("decision") == Some("BLOCK"))
        .filter_map(|r| r.get_str("rule"))
        .collect();
    assert!(
        rules.contains(&"sni_mismatch (SNI fronted.test, destination remote.test)"),
        "{rules:?}"
    );
    assert!(
        rules
            .iter()
            .filter(|r| r.starts_with("sni_mismatch"))
            .count()
            >= 2,
        "{rules:?}"
    );
    assert!(
        rules.contains(&"http_host_mismatch (Host other-vhost.test, destination remote.test)"),
        "{rules:?}"
    );
}

#[test]
fn socks5_with_remote_resolution() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    let o = sb.curl(&[
        "-x",
        "socks5h://127.0.0.1:1080",
        "https://remote.test/socks",
    ]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /socks\n",
        "{}",
        stderr(&o)
    );
    // ALL_PROXY from the plan's environment.
    let o = sb.curl(&["--proxy", "", "--noproxy", "", "https://remote.test/all"]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /all\n",
        "{}",
        stderr(&o)
    );
    let o = sb.curl(&["-x", "socks5h://127.0.0.1:1080", "https://denied.test/"]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).to_lowercase().contains("not allowed") || stderr(&o).contains("97"),
        "{}",
        stderr(&o)
    );
    // socks5 (local resolution through the stub): the fake address maps back to the name.
    let o = sb.curl(&["-x", "socks5://127.0.0.1:1080", "https://remote.test/local"]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /local\n",
        "{}",
        stderr(&o)
    );
    let records = sb.finish();
    let socks: Vec<_> = records
        .iter()
        .filter(|r| r.get_str("via") == Some("socks5"))
        .collect();
    assert!(socks.iter().any(
        |r| r.get_str("host") == Some("denied.test") && r.get_str("decision") == Some("BLOCK")
    ));
    assert!(
        socks
            .iter()
            .filter(|r| r.get_str("host") == Some("remote.test")
                && r.get_str("decision") == Some("ALLOW"))
            .count()
            >= 2
    );
}

#[test]
fn monitor_mode_lets_violations_through_and_records_them() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(
        &world,
        &policy("mode: monitor\nallowed_hosts: [remote.test, 10.231.0.2]\n"),
    );
    let o = sb.curl(&["https://other.test/m"]);
    assert_eq!(
        stdout(&o),
        "hello from remote other.test /m\n",
        "{}",
        stderr(&o)
    );
    let (rcode, ips) = dns_query(&sb, "other.test.");
    assert_eq!((rcode, ips.len()), (0, 1));
    // The SSRF guard is not a policy rule: still enforced.
    let o = sb.curl(&["http://rebind-loopback.test/"]);
    assert!(
        stdout(&o).contains("special_range=loopback"),
        "{}",
        stdout(&o)
    );
    let records = sb.finish();
    let r = connections(&records, "other.test");
    assert_eq!(r[0].get_str("decision"), Some("ALLOW_MONITOR"));
    assert_eq!(r[0].get("violation").and_then(|v| v.as_bool()), Some(true));
    assert_eq!(r[0].get_str("egress_mode"), Some("monitor"));
    assert!(
        records
            .iter()
            .any(|r| r.get_str("event") == Some("EGRESS_DNS")
                && r.get_str("name") == Some("other.test")
                && r.get_str("decision") == Some("ALLOW_MONITOR"))
    );
}

#[test]
fn connection_and_byte_limits() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(
        &world,
        &policy(
            "mode: block\nallowed_hosts: [remote.test, 10.231.0.2]\nallowed_ports: [7000]\nlimits: {max_connections: 1, max_bytes: 64}\n",
        ),
    );
    let o = sb.python(
        "import socket\na=socket.create_connection(('remote.test',7000),timeout=10)\na.sendall(b'one\\n'); print(a.makefile().readline(),end='')\ntry:\n b=socket.create_connection(('remote.test',7000),timeout=10)\n b.sendall(b'two\\n'); print('second:', repr(b.recv(100)))\nexcept Exception as e: print('second:', type(e).__name__)\ntry:\n a.sendall(b'x'*100+b'\\n'); print('big:', repr(a.recv(200)))\nexcept Exception as e: print('big:', type(e).__name__)",
    );
    let out = stdout(&o);
    assert!(out.starts_with("echo one\n"), "{out} {}", stderr(&o));
    // Refused or cut: reset, broken pipe or EOF, depending on timing, but never an echo.
    for (what, line) in [("second", "second: "), ("big", "big: ")] {
        let got = out.lines().find(|l| l.starts_with(line)).unwrap_or("");
        assert!(
            ["ConnectionResetError", "BrokenPipeError", "b''"]
                .iter()
                .any(|e| got.ends_with(e)),
            "{what}: {out} {}",
            stderr(&o)
        );
    }
    let records = sb.finish();
    assert!(
        records
            .iter()
            .any(|r| r.get_str("rule") == Some("limits.max_connections")),
        "{records:?}"
    );
    let r = connections(&records, "remote.test");
    assert!(
        r.iter()
            .any(|r| r.get_str("error") == Some("limits.max_bytes reached")),
        "{r:?}"
    );
}

/// Measurements for `scripts/bench-egress.sh` (run in release mode; prints, asserts nothing
/// about speed). The supervisor runs on a 2-worker runtime in this process; clients run on
/// threads inside the sandbox namespace; the upstream is a loopback server of this process,
/// opened to the sandbox by an explicit `127.0.0.1` CIDR rule.
#[test]
#[ignore = "benchmark: run by scripts/bench-egress.sh"]
#[allow(clippy::print_stdout)]
fn bench_egress() {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    if !nix::unistd::geteuid().is_root() {
        skip("the egress benchmark needs root (network namespaces)");
        return;
    }
    let secs = |name: &str, default: u64| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    let bulk_mib: u64 = secs("AIP_BENCH_BULK_MIB", 4096);
    let rounds: usize = secs("AIP_BENCH_CONNECTS", 2000) as usize;
    let dns_secs: u64 = secs("AIP_BENCH_DNS_SECS", 3);

    // Upstream on the host's loopback: echo for latency, a byte source for bulk.
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let source = TcpListener::bind("127.0.0.1:0").unwrap();
    let (echo_port, source_port) = (
        echo.local_addr().unwrap().port(),
        source.local_addr().unwrap().port(),
    );
    std::thread::spawn(move || {
        for s in echo.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut b = [0u8; 64];
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        for s in source.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut want = [0u8; 8];
                if s.read_exact(&mut want).is_err() {
                    return;
                }
                let mut left = u64::from_be_bytes(want);
                let buf = vec![0x5au8; 256 * 1024];
                while left > 0 {
                    let n = left.min(buf.len() as u64) as usize;
                    if s.write_all(&buf[..n]).is_err() {
                        return;
                    }
                    left -= n as u64;
                }
            });
        }
    });

    let cfg = policy(&format!(
        "mode: block\nallowed_hosts: [127.0.0.1, bench.test]\nallowed_ports: [{echo_port}, {source_port}]\n"
    ));
    let plan = EgressPlan::new(&cfg).unwrap();
    let net = plan.net_mode();
    let (netns, fds) = std::thread::spawn(move || {
        unshare(CloneFlags::CLONE_NEWNET).unwrap();
        (
            File::open("/proc/thread-self/ns/net").unwrap(),
            setup_in_netns(&net).unwrap(),
        )
    })
    .join()
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = Arc::new(MemorySink::default());
    let sup = {
        let _g = rt.enter();
        Supervisor::start(
            &plan,
            fds,
            SupervisorCtx::new("bench", "bench", sink.clone()),
        )
        .unwrap()
    };
    let inside = |f: Box<dyn FnOnce() -> Vec<f64> + Send>| {
        let ns = netns.try_clone().unwrap();
        std::thread::spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    };
    fn connect_via_proxy(port: u16) -> TcpStream {
        let mut s = TcpStream::connect("127.0.0.1:3128").unwrap();
        s.set_nodelay(true).unwrap();
        write!(
            s,
            "CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        )
        .unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut b).unwrap();
            head.push(b[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 200"));
        s
    }
    fn ping(s: &mut TcpStream) {
        let mut b = [0u8; 1];
        s.write_all(b"x").unwrap();
        s.read_exact(&mut b).unwrap();
    }
    fn percentile(v: &mut [f64], p: f64) -> f64 {
        v.sort_by(|a, b| a.total_cmp(b));
        v[((v.len() - 1) as f64 * p) as usize]
    }

    // 1. Connect latency: connect + first round trip, direct vs through the proxy.
    let mut direct: Vec<f64> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            let mut s = TcpStream::connect(("127.0.0.1", echo_port)).unwrap();
            s.set_nodelay(true).unwrap();
            ping(&mut s);
            t.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    let mut proxied = inside(Box::new(move || {
        (0..rounds)
            .map(|_| {
                let t = Instant::now();
                let mut s = connect_via_proxy(echo_port);
                ping(&mut s);
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect()
    }));
    let (d50, p50) = (percentile(&mut direct, 0.5), percentile(&mut proxied, 0.5));
    let (d99, p99) = (
        percentile(&mut direct, 0.99),
        percentile(&mut proxied, 0.99),
    );
    println!(
        "connect+first byte, {rounds} rounds: direct p50 {d50:.3} ms p99 {d99:.3} ms; via proxy p50 {p50:.3} ms p99 {p99:.3} ms"
    );
    println!("RESULT added_connect_latency_ms_p50 {:.3}", p50 - d50);

    // 2. Bulk download through the proxy (and the same loopback transfer direct, for reference).
    let bytes = bulk_mib * 1024 * 1024;
    let pull = move |s: &mut TcpStream| {
        s.write_all(&bytes.to_be_bytes()).unwrap();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0u64;
        let t = Instant::now();
        while got < bytes {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "stream ended early");
            got += n as u64;
        }
        got as f64 / t.elapsed().as_secs_f64() / 1e9
    };
    let direct_gbs = pull(&mut TcpStream::connect(("127.0.0.1", source_port)).unwrap());
    let proxied_gbs = inside(Box::new(move || {
        vec![pull(&mut connect_via_proxy(source_port))]
    }))[0];
    println!("bulk {bulk_mib} MiB: direct {direct_gbs:.2} GB/s; via proxy {proxied_gbs:.2} GB/s");
    println!("RESULT proxy_throughput_gb_per_s {proxied_gbs:.2}");

    // 3. DNS stub: queries/s with 64 in flight from one client thread.
    let qps = inside(Box::new(move || {
        use hickory_proto::op::{Message, MessageType, OpCode, Query};
        use hickory_proto::rr::{Name, RecordType};
        let mut m = Message::new(0, MessageType::Query, OpCode::Query);
        m.add_query(Query::query(
            Name::from_ascii("bench.test.").unwrap(),
            RecordType::A,
        ));
        let q = m.to_vec().unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.connect("127.0.0.1:53").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        for _ in 0..64 {
            s.send(&q).unwrap();
        }
        let mut buf = [0u8; 512];
        let (mut answered, end) = (0u64, Instant::now() + Duration::from_secs(dns_secs));
        let t = Instant::now();
        while Instant::now() < end {
            if s.recv(&mut buf).is_err() {
                // A datagram was dropped (full socket buffer): put one back in flight.
                s.send(&q).unwrap();
                continue;
            }
            answered += 1;
            s.send(&q).unwrap();
        }
        vec![answered as f64 / t.elapsed().as_secs_f64()]
    }))[0];
    println!("RESULT dns_queries_per_s {qps:.0}");
    rt.block_on(sup.shutdown());
    let records = sink.records();
    assert!(
        records
            .iter()
            .filter(|r| r.get_str("event") == Some("EGRESS_CONNECTION"))
            .count()
            >= rounds
    );
}

/// The installed MCP peers (`scripts/install-peers.sh`; `AIP_PEERS` or `<repo>/.peers`).
fn peers() -> Option<PathBuf> {
    let dir = std::env::var_os("AIP_PEERS")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".peers"));
    if dir.join("py/bin/mcp-server-fetch").exists() {
        Some(dir)
    } else {
        skip(&format!(
            "MCP peers not installed in {} (scripts/install-peers.sh)",
            dir.display()
        ));
        None
    }
}

/// The real PyPI mcp-server-fetch, in the sandbox's network namespace, driven by the official
/// Python SDK client. `--allow-private-ips` is needed because the server's own SSRF guard sees
/// the stub's fake address (198.18.0.0/15) for every allowed name; the supervisor enforces the
/// real address checks on the host side. The in-flight call is set by the test here; through
/// `aip run` the proxy supplies it from the stdio stream.
#[test]
fn mcp_server_fetch_reaches_the_allowed_host_and_not_the_denied_one() {
    let Some(peers) = peers() else { return };
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    sb.set_call("3", "fetch");
    let fetch = peers.join("py/bin/mcp-server-fetch");
    let mut env: serde_json::Map<String, serde_json::Value> =
        sb.env().into_iter().map(|(k, v)| (k, v.into())).collect();
    env.insert(
        "PATH".into(),
        std::env::var("PATH").unwrap_or_default().into(),
    );
    let spec = serde_json::json!({
        "command": sb.argv(fetch.to_str().unwrap(), &["--ignore-robots-txt", "--allow-private-ips"]),
        "env": env,
        "calls": [
            {"tool": "fetch", "arguments": {"url": "https://remote.test/mcp", "raw": true}},
            {"tool": "fetch", "arguments": {"url": "http://remote.test/plain", "raw": true}},
            {"tool": "fetch", "arguments": {"url": "https://denied.test/", "raw": true}},
        ],
    });
    let client = repo_root().join("tests/data/egress/fetch_client.py");
    let o = run(
        Command::new(peers.join("py/bin/python"))
            .arg(client)
            .arg(spec.to_string()),
        Duration::from_secs(120),
    );
    let out = stdout(&o);
    let results: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{out}\n{}", stderr(&o));
    assert_eq!(results[0]["isError"], false, "{}", results[0]);
    assert!(
        results[0]["text"]
            .as_str()
            .unwrap()
            .contains("hello from remote remote.test /mcp")
    );
    assert!(
        results[1]["text"]
            .as_str()
            .unwrap()
            .contains("hello from remote remote.test /plain")
    );
    assert_eq!(results[2]["isError"], true);
    assert!(
        results[2]["text"].as_str().unwrap().contains("403"),
        "{}",
        results[2]
    );
    let records = sb.finish();
    let ok = connections(&records, "remote.test");
    assert!(ok.iter().any(|r| r.get_str("decision") == Some("ALLOW")
        && r.get_str("via") == Some("http_connect")
        && r.get_str("request_id") == Some("3")
        && r.get_str("tool") == Some("fetch")));
    assert!(ok.iter().any(|r| r.get_str("via") == Some("http_forward")));
    let denied = connections(&records, "denied.test");
    assert!(
        denied
            .iter()
            .any(|r| r.get_str("decision") == Some("BLOCK") && r.get_str("tool") == Some("fetch"))
    );
}

#[test]
fn egress_stops_when_audit_records_cannot_be_written() {
    let Some(world) = World::new() else { return };
    let sb = Sandbox::new(&world, &policy(BASIC));
    let o = sb.curl(&["https://remote.test/before"]);
    assert_eq!(
        stdout(&o),
        "hello from remote remote.test /before\n",
        "{}",
        stderr(&o)
    );
    sb.audit.broken.store(true, Ordering::SeqCst);
    // The record of this connection is the one that fails to be written…
    let o = sb.curl(&["https://remote.test/during"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // …and from then on nothing leaves.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let o = sb.curl(&["http://remote.test/after"]);
        if stdout(&o).contains("audit log unavailable; egress stopped") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "egress kept going without audit: {}",
            stdout(&o)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = sb.python("import socket\ntry:\n s=socket.create_connection(('remote.test',7000),timeout=5); s.sendall(b'x\\n'); print(repr(s.recv(10)))\nexcept Exception as e: print(type(e).__name__)");
    assert!(!stdout(&o).contains("echo"), "{}", stdout(&o));
}

/// What a command run in a real sandbox produced.
struct SandboxRun {
    code: i32,
    stdout: String,
    stderr: String,
    records: Vec<Record>,
    network: String,
}

/// Runs `argv` in the real sandbox (the launch planner's spec for it, made egress-ready by
/// `EgressPlan::apply`, started by `sandbox::spawn`) with the egress supervisor serving the
/// listeners from the world's host side. The test certificate is visible inside as
/// `/etc/aip-test-ca.pem`.
fn run_sandboxed(world: &World, cfg: &EgressConfig, argv: &[&str]) -> SandboxRun {
    use aip::launch::plan::{Overrides, PlanInput, RealFs, plan};
    use aip::policy::sandbox_config::SandboxConfig;
    use aip::sandbox::GeneratedFile;
    use std::ffi::OsString;
    use std::io::Read;
    use std::os::fd::OwnedFd;

    let eplan = EgressPlan::new(cfg).unwrap();
    let command: Vec<OsString> = argv.iter().map(OsString::from).collect();
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let config = SandboxConfig::default();
    let overrides = Overrides::default();
    let planned = plan(
        &PlanInput {
            config: &config,
            command: &command,
            cwd: std::path::Path::new("/"),
            overrides: &overrides,
            env: &env,
            hidden: &[],
        },
        &RealFs,
    )
    .expect("sandbox plan");
    let mut spec = planned.spec;
    eplan.apply(&mut spec).unwrap();
    spec.files.push(GeneratedFile {
        path: "/etc/aip-test-ca.pem".into(),
        contents: std::fs::read(world.cert()).unwrap().into(),
        mode: 0o644,
    });
    for k in ["SSL_CERT_FILE", "NODE_EXTRA_CA_CERTS", "CURL_CA_BUNDLE"] {
        spec.env.push((k.into(), "/etc/aip-test-ca.pem".into()));
    }

    let rt = world.host_runtime();
    let (out_r, out_w) = nix::unistd::pipe().unwrap();
    let (err_r, err_w) = nix::unistd::pipe().unwrap();
    let null: OwnedFd = File::open("/dev/null").unwrap().into();
    let child = aip::sandbox::spawn(&spec, [null, out_w, err_w]).expect("sandbox spawn");
    let network = format!("{:?}", child.report().network);
    let sink = Arc::new(MemorySink::default());
    let mut ctx = SupervisorCtx::new("sandboxed", "sess-2", sink.clone());
    ctx.resolver = Arc::new(StaticResolver::new().with("remote.test", &[IpAddr::V4(REMOTE_IP)]));
    ctx.in_flight = Arc::new(|| Some(("9".to_owned(), "probe".to_owned())));
    let sup = {
        let _g = rt.enter();
        Supervisor::start(&eplan, child.take_listeners(), ctx).expect("supervisor starts")
    };
    let reader = |fd: OwnedFd| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = File::from(fd).read_to_string(&mut s);
            s
        })
    };
    let (out, err) = (reader(out_r), reader(err_r));
    let code = child.wait().unwrap().code();
    rt.block_on(sup.shutdown());
    SandboxRun {
        code,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
        records: sink.records(),
        network,
    }
}

const SANDBOX_PROBE: &str = r#"
import socket, urllib.request
def attempt(label, f):
    try: print(label, f())
    except Exception as e: print(label, type(e).__name__, e)
attempt("proxy-https", lambda: urllib.request.urlopen("https://remote.test/p", timeout=10).read().decode().strip())
attempt("proxy-http", lambda: urllib.request.urlopen("http://remote.test/q", timeout=10).read().decode().strip())
attempt("proxy-denied", lambda: urllib.request.urlopen("https://denied.test/", timeout=10).read())
def raw():
    s = socket.create_connection(("remote.test", 7000), timeout=10)
    s.sendall(b"raw\n")
    return s.makefile().readline().strip()
attempt("capture-raw", raw)
attempt("dns-denied", lambda: socket.getaddrinfo("denied.test", 443))
attempt("dns-sub", lambda: socket.getaddrinfo("x.remote.test", 443))
attempt("loopback", lambda: socket.create_connection(("127.0.0.1", 80), timeout=5).recv(10))
attempt("host-side", lambda: socket.create_connection(("10.231.0.1", 80), timeout=5).recv(10))
attempt("other-port", lambda: socket.create_connection(("remote.test", 7001), timeout=5))
def udp():
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
    u.connect(("8.8.8.8", 53)); u.send(b"x"); return u.recv(10)
attempt("udp-out", udp)
"#;

#[test]
fn the_real_sandbox_with_egress_reaches_allowed_hosts_only() {
    let Some(world) = World::new() else { return };
    let r = run_sandboxed(
        &world,
        &policy(BASIC),
        &["/usr/bin/python3", "-c", SANDBOX_PROBE],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    assert!(r.network.contains("egress"), "{}", r.network);
    let line = |label: &str| {
        r.stdout
            .lines()
            .find(|l| l.starts_with(&format!("{label} ")))
            .unwrap_or_else(|| panic!("no {label} line in {}\n{}", r.stdout, r.stderr))
            .to_owned()
    };
    assert_eq!(
        line("proxy-https"),
        "proxy-https hello from remote remote.test /p"
    );
    assert_eq!(
        line("proxy-http"),
        "proxy-http hello from remote remote.test /q"
    );
    assert!(
        line("proxy-denied").contains("403"),
        "{}",
        line("proxy-denied")
    );
    assert_eq!(line("capture-raw"), "capture-raw echo raw");
    assert!(
        line("dns-denied").contains("gaierror"),
        "{}",
        line("dns-denied")
    );
    assert!(line("dns-sub").contains("gaierror"), "{}", line("dns-sub"));
    for l in ["loopback", "host-side"] {
        let got = line(l);
        assert!(!got.contains("canary") && got.contains("Error"), "{got}");
    }
    // Landlock refuses the connect (EACCES) before the empty port could (ECONNREFUSED).
    let other = line("other-port");
    assert!(
        other.contains("PermissionError") || other.contains("ConnectionRefusedError"),
        "{other}"
    );
    assert!(line("udp-out").contains("Error"), "{}", line("udp-out"));

    let conns: Vec<&Record> = r
        .records
        .iter()
        .filter(|x| x.get_str("event") == Some("EGRESS_CONNECTION"))
        .collect();
    assert!(
        conns
            .iter()
            .any(|x| x.get_str("host") == Some("remote.test")
                && x.get_str("via") == Some("capture")
                && x.get_str("decision") == Some("ALLOW")
                && x.get_str("request_id") == Some("9")
                && x.get_str("tool") == Some("probe"))
    );
    assert!(conns.iter().any(|x| x.get_str("host") == Some("127.0.0.1")
        && x.get_str("decision") == Some("BLOCK")
        && x.get_str("rule") == Some("special_range=loopback 127.0.0.0/8")));
}

#[test]
fn node_and_curl_in_the_real_sandbox() {
    let Some(world) = World::new() else { return };
    let script = "fetch('https://remote.test/node').then(r=>r.text()).then(t=>process.stdout.write(t)).catch(e=>console.log('ERR', e.cause && e.cause.code));\
                  fetch('https://denied.test/').then(r=>console.log(r.status)).catch(e=>console.log('denied', e.cause && e.cause.code));";
    let r = run_sandboxed(&world, &policy(BASIC), &["/usr/bin/node", "-e", script]);
    assert!(
        r.stdout.contains("hello from remote remote.test /node"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stdout.contains("denied ENOTFOUND"), "{}", r.stdout);
    let r = run_sandboxed(
        &world,
        &policy(BASIC),
        &[
            "/usr/bin/curl",
            "-sS",
            "-m",
            "20",
            "https://remote.test/curl",
            "https://denied.test/",
        ],
    );
    assert!(
        r.stdout.contains("hello from remote remote.test /curl"),
        "{}\n{}",
        r.stdout,
        r.stderr
    );
    assert!(r.stderr.contains("403"), "{}", r.stderr);
}

/// The whole product: `aip run` with a policy carrying `spec.egress`, the real PyPI
/// mcp-server-fetch in the sandbox, driven by the official Python SDK client; the audit file
/// names the tool call behind each connection. `aip` runs in the host side `H` (where its
/// resolver sees remote.test through a private /etc/hosts).
#[test]
fn aip_run_with_mcp_server_fetch_and_an_egress_policy() {
    let Some(peers) = peers() else { return };
    let Some(world) = World::new() else { return };
    let dir = tempfile::tempdir().unwrap();
    let hosts = dir.path().join("hosts");
    std::fs::write(
        &hosts,
        format!("127.0.0.1 localhost\n{REMOTE_IP} remote.test\n"),
    )
    .unwrap();
    let ca_dir = dir.path().join("ca");
    std::fs::create_dir(&ca_dir).unwrap();
    let ca = ca_dir.join("ca.pem");
    std::fs::copy(world.cert(), &ca).unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(
        &policy_path,
        format!(
            "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: fetch-egress\nspec:\n  allowed_tools: [fetch]\n  sandbox:\n    filesystem:\n      read_only: [{}]\n    env:\n      set: {{SSL_CERT_FILE: {}}}\n  egress:\n    mode: block\n    allowed_hosts: [remote.test, 10.231.0.2]\n",
            ca_dir.display(),
            ca.display()
        ),
    )
    .unwrap();
    let audit = dir.path().join("audit.jsonl");
    let fetch = peers.join("py/bin/mcp-server-fetch");
    let command: Vec<String> = [
        "ip",
        "netns",
        "exec",
        &world.host.0,
        "unshare",
        "-m",
        "--",
        "sh",
        "-c",
        "mount --bind \"$1\" /etc/hosts && shift && exec \"$@\"",
        "sh",
        hosts.to_str().unwrap(),
        crate::support::aip_bin().to_str().unwrap(),
        "run",
        "--policy",
        policy_path.to_str().unwrap(),
        "--audit",
        audit.to_str().unwrap(),
        "--",
        fetch.to_str().unwrap(),
        "--ignore-robots-txt",
        "--allow-private-ips",
    ]
    .map(String::from)
    .to_vec();
    let spec = serde_json::json!({
        "command": command,
        "env": {"PATH": std::env::var("PATH").unwrap_or_default()},
        "calls": [
            {"tool": "fetch", "arguments": {"url": "https://remote.test/aip", "raw": true}},
            {"tool": "fetch", "arguments": {"url": "https://denied.test/", "raw": true}},
        ],
    });
    // aip's working directory becomes the server's: `/` is always visible in the sandbox.
    let o = run(
        Command::new(peers.join("py/bin/python"))
            .arg(repo_root().join("tests/data/egress/fetch_client.py"))
            .arg(spec.to_string())
            .current_dir("/"),
        Duration::from_secs(120),
    );
    let results: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert_eq!(results.len(), 2, "{}\n{}", stdout(&o), stderr(&o));
    assert!(
        results[0]["text"]
            .as_str()
            .unwrap()
            .contains("hello from remote remote.test /aip"),
        "{}",
        results[0]
    );
    assert_eq!(results[1]["isError"], true, "{}", results[1]);
    let records: Vec<serde_json::Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let egress = |host: &str| {
        records
            .iter()
            .find(|r| r["event"] == "EGRESS_CONNECTION" && r["host"] == host)
            .unwrap_or_else(|| panic!("no EGRESS_CONNECTION for {host} in {records:?}"))
            .clone()
    };
    let ok = egress("remote.test");
    assert_eq!(ok["decision"], "ALLOW");
    assert_eq!(ok["tool"], "fetch");
    assert!(ok["request_id"].is_string(), "{ok}");
    let denied = egress("denied.test");
    assert_eq!(denied["decision"], "BLOCK");
    assert_eq!(denied["tool"], "fetch");
    // The denied call's connection belongs to the second tools/call, not the first.
    assert_ne!(denied["request_id"], ok["request_id"]);
}
