//! `aip doctor`: what the kernel offers each sandbox layer, then a canary sandbox that must fail
//! a list of forbidden actions. Exits 1 when a layer the default policy requires is missing or
//! the canary got through anywhere. `--probe CHECK…` (hidden) is the canary's inside half.

use std::ffi::OsString;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use crate::launch::plan::{self, Overrides, PlanInput, RealFs};
use crate::policy::sandbox_config::SandboxConfig;
use crate::sandbox::features::{self, Level};
use crate::sandbox::probe::{self, ProbeResult};
use crate::sandbox::{self, LayerReport};

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Skip the canary sandbox (kernel checks only).
    #[arg(long)]
    pub no_canary: bool,
    /// Run probe checks in the current process and print one JSON line each (used inside the
    /// canary sandbox and by the test suite).
    #[arg(long, hide = true, num_args = 1.., value_name = "CHECK")]
    pub probe: Vec<OsString>,
}

/// One canary expectation: the check, and what a pass requires.
struct Expect {
    check: String,
    why: &'static str,
}

fn expectations(port: u16, abstract_name: &str) -> Vec<Expect> {
    let e = |check: String, why| Expect { check, why };
    vec![
        e("read:/etc/shadow".into(), "host secrets are not visible"),
        e("list:/root".into(), "home directories are not visible"),
        e("list:/sys".into(), "/sys is not visible"),
        e("list:/run".into(), "host sockets (/run) are not visible"),
        e(
            "write:/usr/aip-canary".into(),
            "system directories are read-only",
        ),
        e(
            "write:/etc/aip-canary".into(),
            "the root file system is read-only",
        ),
        e(
            format!("connect:127.0.0.1:{port}"),
            "host loopback services are unreachable",
        ),
        e(
            format!("abstract:{abstract_name}"),
            "host abstract unix sockets are unreachable",
        ),
        e("resolve:example.com".into(), "names do not resolve"),
        e(
            format!("kill:{}", std::process::id()),
            "host processes cannot be signalled",
        ),
        e("ptrace".into(), "ptrace is denied"),
        e("mount".into(), "mount is denied"),
        e("unshare-user".into(), "new user namespaces are denied"),
        e("unshare-net".into(), "new network namespaces are denied"),
        e("setns".into(), "setns is denied"),
        e(
            "clone-newuser".into(),
            "clone with namespace flags is denied",
        ),
        e("clone3".into(), "clone3 is unavailable (ENOSYS)"),
        e("keyctl".into(), "kernel keyrings are denied"),
        e("io-uring".into(), "io_uring is unavailable"),
        e("bpf".into(), "bpf is denied"),
        e("perf".into(), "perf_event_open is denied"),
        e("userfaultfd".into(), "userfaultfd is denied"),
        e("personality".into(), "ASLR cannot be disabled"),
        e("tiocsti".into(), "terminal input injection is denied"),
        e("socket:packet".into(), "raw packet sockets are denied"),
        e("socket:netlink-audit".into(), "audit netlink is denied"),
        e("socket:vsock".into(), "vsock is denied"),
        e("socket:alg".into(), "kernel crypto sockets are denied"),
    ]
}

#[allow(clippy::print_stdout)]
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    if !args.probe.is_empty() {
        for line in probe::run_all(&args.probe) {
            println!("{line}");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let features = features::detect();
    let mut failed = features.iter().any(|f| f.level == Level::Missing);
    let canary = if args.no_canary { None } else { Some(canary()) };
    if let Some(Ok(c)) = &canary {
        failed |= !c.passed();
    } else if let Some(Err(_)) = &canary {
        failed = true;
    }

    if args.json {
        let canary_json = match &canary {
            None => serde_json::Value::Null,
            Some(Ok(c)) => serde_json::json!({
                "passed": c.passed(),
                "report": c.report.as_ref().map(LayerReport::to_json),
                "checks": c.results.iter().map(|(r, ok, why)| serde_json::json!({
                    "check": r.check, "blocked": ok, "expected": why, "errno": r.detail,
                })).collect::<Vec<_>>(),
            }),
            Some(Err(e)) => serde_json::json!({ "passed": false, "error": format!("{e:#}") }),
        };
        println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({ "features": features, "canary": canary_json })
            )?
        );
    } else {
        for f in &features {
            let mark = match f.level {
                Level::Ok => "ok  ",
                Level::Warn => "warn",
                Level::Missing => "FAIL",
                Level::Skip => "--  ",
            };
            println!("[{mark}] {:<16} {}", f.name, f.detail);
        }
        match &canary {
            None => {}
            Some(Err(e)) => println!("[FAIL] canary           could not start: {e:#}"),
            Some(Ok(c)) => {
                let blocked = c.results.iter().filter(|(_, ok, _)| *ok).count();
                let mark = if c.passed() { "ok  " } else { "FAIL" };
                println!(
                    "[{mark}] canary           {blocked}/{} forbidden actions failed inside a default sandbox",
                    c.results.len()
                );
                for (r, ok, why) in &c.results {
                    let mark = if *ok { "blocked" } else { "ESCAPED" };
                    println!(
                        "         {mark:<8} {:<28} {why} ({})",
                        r.check,
                        if r.detail.is_empty() { "ok" } else { &r.detail }
                    );
                }
                if let Some(report) = &c.report {
                    for (name, status) in layer_lines(report) {
                        println!("         layer    {name:<12} {status}");
                    }
                }
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn layer_lines(report: &LayerReport) -> Vec<(String, String)> {
    let json = report.to_json();
    let mut out = Vec::new();
    if let Some(map) = json.as_object() {
        for (name, layer) in map {
            if let Some(status) = layer.get("status").and_then(|s| s.as_str()) {
                let extra = layer
                    .get("missing")
                    .map(|m| format!(" (missing: {m})"))
                    .unwrap_or_default();
                out.push((name.clone(), format!("{status}{extra}")));
            }
        }
    }
    out
}

struct Canary {
    results: Vec<(ProbeResult, bool, &'static str)>,
    report: Option<LayerReport>,
}

impl Canary {
    fn passed(&self) -> bool {
        !self.results.is_empty() && self.results.iter().all(|(_, ok, _)| *ok)
    }
}

/// Runs the probe in a default sandbox against host-side bait (a loopback TCP listener and an
/// abstract unix socket).
fn canary() -> anyhow::Result<Canary> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").context("cannot open the bait TCP listener")?;
    let port = listener.local_addr()?.port();
    let abstract_name = format!("aip-doctor-{}", std::process::id());
    let _abstract = bind_abstract(&abstract_name)?;
    let expect = expectations(port, &abstract_name);

    let exe = std::env::current_exe().context("cannot find the aip binary")?;
    let mut command: Vec<OsString> = vec![exe.into(), "doctor".into(), "--probe".into()];
    command.extend(expect.iter().map(|e| OsString::from(&e.check)));
    command.push("pids".into());
    command.push("whoami".into());
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let config = SandboxConfig::default();
    let overrides = Overrides::default();
    let cwd = std::path::Path::new("/");
    let input = PlanInput {
        config: &config,
        command: &command,
        cwd,
        overrides: &overrides,
        env: &env,
        hidden: &[],
    };
    let planned = plan::plan(&input, &RealFs)?;

    let (read_end, write_end) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let null: OwnedFd = std::fs::File::open("/dev/null")?.into();
    let err: OwnedFd = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")?
        .into();
    let child = sandbox::spawn(&planned.spec, [null, write_end, err])?;
    let mut output = String::new();
    std::fs::File::from(read_end)
        .take(1 << 20)
        .read_to_string(&mut output)?;
    child.wait()?;
    let results: Vec<ProbeResult> = output
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();

    let mut checked = Vec::new();
    for e in &expect {
        let r = results
            .iter()
            .find(|r| r.check == e.check)
            .cloned()
            .unwrap_or(ProbeResult {
                check: e.check.clone(),
                succeeded: true,
                errno: None,
                detail: "no answer from the probe".into(),
            });
        let blocked = !r.succeeded;
        checked.push((r, blocked, e.why));
    }
    if let Some(r) = results.iter().find(|r| r.check == "pids") {
        let own = std::process::id().to_string();
        let count = r.detail.split(',').filter(|p| !p.is_empty()).count();
        let blocked = r.succeeded && !r.detail.split(',').any(|p| p == own) && count <= 4;
        checked.push((
            r.clone(),
            blocked,
            "only the sandbox's own processes are visible",
        ));
    }
    if let Some(r) = results.iter().find(|r| r.check == "whoami") {
        let d = &r.detail;
        let blocked = d.contains("CapEff: 0000000000000000")
            && d.contains("NoNewPrivs: 1")
            && d.contains("Seccomp: 2");
        checked.push((
            r.clone(),
            blocked,
            "no capabilities, no_new_privs, seccomp filter",
        ));
    }
    Ok(Canary {
        results: checked,
        report: Some(child.report().clone()),
    })
}

fn bind_abstract(name: &str) -> anyhow::Result<OwnedFd> {
    use nix::sys::socket::{
        AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
    };
    let sock = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&sock),
        &UnixAddr::new_abstract(name.as_bytes())?,
    )?;
    listen(&sock, Backlog::new(4)?)?;
    Ok(sock)
}
