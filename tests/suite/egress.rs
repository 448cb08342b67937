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

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aip::audit::{MemorySink, Record};
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
        ip(&["-n", &host.0, "link", "add", &vh, "type", "veth", "peer", "name", &vr, "netns", &remote.0]);
        ip(&["-n", &host.0, "addr", "add", &format!("{HOST_IP}/30"), "dev", &vh]);
        ip(&["-n", &host.0, "link", "set", &vh, "up"]);
        ip(&["-n", &remote.0, "addr", "add", &format!("{REMOTE_IP}/30"), "dev", &vr]);
        ip(&["-n", &remote.0, "link", "set", &vr, "up"]);
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=remote.test", "-addext", "subjectAltName=DNS:remote.test,DNS:fronted.test,DNS:other.test"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let mut world = World {
            host,
            remote,
            dir,
            servers: Vec::new(),
        };
        let script = repo_root().join("tests/data/egress/remote.py");
        let remote_ns = world.remote.0.clone();
        world.start_server(&remote_ns, &[script.to_str().unwrap(), cert.to_str().unwrap(), key.to_str().unwrap()]);
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

/// One sandbox (`S`) with its egress supervisor running in `H`.
struct Sandbox {
    rt: tokio::runtime::Runtime,
    sup: Option<Supervisor>,
    netns: File,
    plan: EgressPlan,
    audit: Arc<MemorySink>,
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
        let host_path = world.host.path();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .on_thread_start(move || {
                let f = File::open(&host_path).expect("open host-side netns");
                setns(&f, CloneFlags::CLONE_NEWNET).expect("enter host-side netns");
            })
            .build()
            .unwrap();
        let audit = Arc::new(MemorySink::default());
        let resolver = Arc::new(Counting {
            inner: StaticResolver::new()
                .with("remote.test", &[IpAddr::V4(REMOTE_IP)])
                .with("other.test", &[IpAddr::V4(REMOTE_IP)])
                .with("rebind-loopback.test", &["127.0.0.1".parse().unwrap()])
                .with("rebind-private.test", &[IpAddr::V4(HOST_IP)])
                .with("rebind-metadata.test", &["169.254.169.254".parse().unwrap()]),
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

    /// A command that runs inside the sandbox's network namespace with the plan's environment,
    /// `resolv.conf` and `hosts`.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!(
            "--net=/proc/{}/fd/{}",
            std::process::id(),
            self.netns.as_raw_fd()
        ));
        c.args(["--", "unshare", "-m", "--propagation", "private", "--", "sh", "-c"]);
        c.arg("mount --bind \"$1\" /etc/resolv.conf && mount --bind \"$2\" /etc/hosts && shift 2 && exec \"$@\"");
        c.arg("sh");
        c.arg(self.files.path().join("resolv.conf"));
        c.arg(self.files.path().join("hosts"));
        c.arg(program);
        c.args(args);
        for (k, v) in self.plan.env() {
            c.env(k, v);
        }
        c.env("SSL_CERT_FILE", &self.cert);
        c.env("NODE_EXTRA_CA_CERTS", &self.cert);
        c.env("CURL_CA_BUNDLE", &self.cert);
        c
    }

    fn run(&self, program: &str, args: &[&str]) -> Output {
        run(&mut self.command(program, args), Duration::from_secs(60))
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
        self.audit.records()
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
        .filter(|r| r.get_str("event") == Some("EGRESS_CONNECTION") && r.get_str("host") == Some(host))
        .collect()
}

/// A DNS A query for `name` sent to the stub from inside the sandbox; returns (rcode, addresses).
fn dns_query(sb: &Sandbox, name: &str) -> (u8, Vec<Ipv4Addr>) {
    use hickory_proto::op::{Message, MessageType, OpCode, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let mut m = Message::new(42, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
    let q = m.to_vec().unwrap();
    let resp = sb.inside(move || {
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

    let o = sb.run("curl", &["-sS", "-m", "20", "https://remote.test/tls"]);
    assert_eq!(stdout(&o), "hello from remote remote.test /tls\n", "{}", stderr(&o));
    let o = sb.run("curl", &["-sS", "-m", "20", "http://remote.test/plain?x=1"]);
    assert_eq!(stdout(&o), "hello from remote remote.test /plain?x=1\n", "{}", stderr(&o));

    let o = sb.python("import urllib.request as u;print(u.urlopen('https://remote.test/py').read().decode(),end='')");
    assert_eq!(stdout(&o), "hello from remote remote.test /py\n", "{}", stderr(&o));
    let o = sb.python("import urllib.request as u;print(u.urlopen('http://remote.test/py').read().decode(),end='')");
    assert_eq!(stdout(&o), "hello from remote remote.test /py\n", "{}", stderr(&o));

    // Denied name: the proxy answers 403 and says why.
    let o = sb.run("curl", &["-sS", "-m", "20", "http://denied.test/"]);
    assert!(stdout(&o).contains("denied.test:80 denied by mode=block (not in allowed_hosts)"), "{}", stdout(&o));
    let o = sb.run("curl", &["-sS", "-m", "20", "https://denied.test/"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    let o = sb.python("import urllib.request as u\ntry:\n u.urlopen('https://denied.test/')\nexcept Exception as e: print(e)");
    assert!(stdout(&o).contains("403"), "{}", stdout(&o));
    // Port outside the rules.
    let o = sb.run("curl", &["-sS", "-m", "20", "https://remote.test:8443/"]);
    assert!(stderr(&o).contains("403"), "{}", stderr(&o));
    assert_eq!(sb.lookups("denied.test"), 0, "a denied name was resolved on the host");

    let records = sb.finish();
    let ok = connections(&records, "remote.test");
    let tls = ok
        .iter()
        .find(|r| r.get_str("via") == Some("http_connect") && r.get_str("decision") == Some("ALLOW"))
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
    assert_eq!(port.get_str("rule"), Some("allowed_ports (port 8443 not listed)"));
}
