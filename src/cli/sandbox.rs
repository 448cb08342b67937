//! `aip sandbox [--policy FILE] [--allow-read PATH]… [--allow-write PATH]… -- CMD [ARGS…]`:
//! runs a command in the sandbox exactly as `aip run` would run an MCP server, but without the
//! MCP proxy (stdio goes straight through). Useful to see what a server sees, to debug a policy's
//! `spec.sandbox`, and for the benchmark. Exits with the command's code (128 + N for signal N).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;
use nix::sys::signal::{SigSet, Signal};

use crate::launch::plan::{self, NoteLevel, Overrides, PlanInput, RealFs};
use crate::policy::sandbox_config::SandboxConfig;
use crate::sandbox;

/// Run a command in the sandbox, without the MCP proxy.
#[derive(Debug, Args)]
pub struct SandboxArgs {
    /// Policy file whose `spec.sandbox` section configures the sandbox (default: safe defaults).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Make PATH visible read-only (repeatable).
    #[arg(long = "allow-read", value_name = "PATH")]
    pub allow_read: Vec<PathBuf>,
    /// Make PATH visible read-write (repeatable).
    #[arg(long = "allow-write", value_name = "PATH")]
    pub allow_write: Vec<PathBuf>,
    /// Print the layer report on stderr once the command runs (one line: `aip: report: {json}`).
    #[arg(long)]
    pub report: bool,
    /// Print the planned sandbox (mounts, environment) and exit without running anything.
    #[arg(long)]
    pub dry_run: bool,
    /// Run the command N times in fresh sandboxes (stdin from /dev/null) and print the sandbox
    /// setup time (spawn until the command is exec'd) and the time until it exits: p50, p90, p99.
    /// Runs as aipd does: through a spawn server (as root, network namespaces are prepared ahead
    /// of time and sandboxes of one spec share a root template).
    #[arg(long, value_name = "N", conflicts_with_all = ["dry_run", "report"])]
    pub timing: Option<u32>,
    /// The command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// Reads `spec.sandbox` from a policy file (absent section = defaults).
pub fn load_sandbox_config(path: &std::path::Path) -> anyhow::Result<SandboxConfig> {
    // The whole policy is loaded (and validated) so errors carry file, line and field.
    let policy = crate::policy::load_file(path)?;
    Ok(policy.sandbox().cloned().unwrap_or_default())
}

#[allow(clippy::print_stderr)]
pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    // Block the signals we forward before any thread exists, so every thread inherits the mask
    // and only the forwarding thread below receives them.
    let mut forwarded = SigSet::empty();
    for s in [
        Signal::SIGINT,
        Signal::SIGTERM,
        Signal::SIGHUP,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
    ] {
        forwarded.add(s);
    }
    forwarded.thread_block().context("cannot block signals")?;

    let config = match &args.policy {
        Some(path) => load_sandbox_config(path)?,
        None => SandboxConfig::default(),
    };
    let mut hidden = Vec::new();
    if let Some(policy) = &args.policy {
        hidden.push(std::fs::canonicalize(policy).unwrap_or_else(|_| policy.clone()));
    }
    let cwd = std::env::current_dir().context("cannot read the working directory")?;
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    let overrides = Overrides {
        allow_read: args.allow_read.clone(),
        allow_write: args.allow_write.clone(),
        no_sandbox: false,
    };
    let input = PlanInput {
        config: &config,
        command: &args.command,
        cwd: &cwd,
        overrides: &overrides,
        env: &env,
        hidden: &hidden,
    };
    let planned = plan::plan(&input, &RealFs)?;
    for note in &planned.notes {
        match note.level {
            NoteLevel::Warn => eprintln!("aip: warning: {}", note.message),
            NoteLevel::Info if args.report || args.dry_run => {
                eprintln!("aip: note: {}", note.message)
            }
            NoteLevel::Info => {}
        }
    }
    if args.dry_run {
        print_plan(&planned.spec)?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Some(runs) = args.timing {
        return timing(&planned.spec, runs);
    }

    let stdio = [
        std::io::stdin().as_fd().try_clone_to_owned()?,
        std::io::stdout().as_fd().try_clone_to_owned()?,
        std::io::stderr().as_fd().try_clone_to_owned()?,
    ];
    let child = Arc::new(sandbox::spawn(&planned.spec, stdio)?);
    if args.report {
        eprintln!(
            "aip: report: {}",
            serde_json::to_string(&child.report().to_json())?
        );
    }
    let forwarder = Arc::clone(&child);
    std::thread::Builder::new()
        .name("aip-signals".into())
        .spawn(move || {
            while let Ok(signal) = forwarded.wait() {
                let _ = forwarder.signal_all(signal);
            }
        })?;
    let exit = child.wait().context("waiting for the sandbox")?;
    Ok(ExitCode::from((exit.code() & 0xff) as u8))
}

/// Prints the plan on stdout (a closed pipe, as with `| head`, is not an error).
fn print_plan(spec: &sandbox::SandboxSpec) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "executable: {}", spec.executable.display())?;
    writeln!(out, "cwd: {}", spec.cwd.display())?;
    writeln!(out, "seccomp: {}", spec.seccomp.name())?;
    writeln!(out, "user (when root): {}:{}", spec.user.uid, spec.user.gid)?;
    writeln!(out, "network: {:?}", spec.net)?;
    writeln!(out, "landlock floor: {}", spec.landlock.min_abi)?;
    writeln!(out, "mounts:")?;
    for m in &spec.mounts {
        match &m.kind {
            sandbox::MountKind::Bind { source, access } if *source == m.target => {
                writeln!(out, "  {} ({access:?})", m.target.display())?
            }
            sandbox::MountKind::Bind { source, access } => writeln!(
                out,
                "  {} <- {} ({access:?})",
                m.target.display(),
                source.display()
            )?,
            sandbox::MountKind::Tmpfs { size, writable, .. } => writeln!(
                out,
                "  {} (tmpfs, {} KiB{})",
                m.target.display(),
                size >> 10,
                if *writable { "" } else { ", read-only" }
            )?,
            sandbox::MountKind::Proc => writeln!(out, "  {} (proc)", m.target.display())?,
        }
    }
    for l in &spec.symlinks {
        writeln!(out, "  {} -> {}", l.path.display(), l.target.display())?;
    }
    for f in &spec.files {
        writeln!(
            out,
            "  {} ({} bytes, generated)",
            f.path.display(),
            f.contents.len()
        )?;
    }
    writeln!(out, "environment:")?;
    for (k, v) in &spec.env {
        writeln!(out, "  {}={}", k.to_string_lossy(), v.to_string_lossy())?;
    }
    match std::io::Write::write_all(&mut std::io::stdout().lock(), out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `--timing N`: spawn-to-exec and spawn-to-exit latencies over N sandboxes.
#[allow(clippy::print_stdout, clippy::print_stderr)]
fn timing(spec: &sandbox::SandboxSpec, runs: u32) -> anyhow::Result<ExitCode> {
    use std::time::{Duration, Instant};
    let runs = runs.clamp(1, 100_000) as usize;
    // As aipd runs: through a spawn server forked while this process is small, which keeps
    // network namespaces made ahead of time and a shared root template (root only); without
    // one, forked here with the same two.
    let root = nix::unistd::geteuid().is_root();
    let through = match sandbox::use_spawn_server(if root { 2 } else { 0 }) {
        Ok(_) => "the spawn server (as aipd)",
        Err(e) => {
            eprintln!("aip: warning: no spawn server ({e}); sandboxes are forked by this process");
            "this process (no spawn server)"
        }
    };
    let mut setup = Vec::with_capacity(runs);
    let mut total = Vec::with_capacity(runs);
    let mut failures = 0usize;
    for _ in 0..runs {
        let stdio = [
            std::fs::File::open("/dev/null")?.into(),
            std::io::stdout().as_fd().try_clone_to_owned()?,
            std::io::stderr().as_fd().try_clone_to_owned()?,
        ];
        let start = Instant::now();
        let child = sandbox::spawn(spec, stdio)?;
        setup.push(start.elapsed());
        if !child.wait()?.success() {
            failures += 1;
        }
        total.push(start.elapsed());
    }
    let pct = |v: &mut Vec<Duration>, p: f64| {
        v.sort();
        let i = ((v.len() as f64 - 1.0) * p).round() as usize;
        v[i].as_secs_f64() * 1000.0
    };
    println!("runs: {runs} (non-zero exits: {failures}), spawned through {through}");
    for (name, v) in [
        ("setup (spawn to exec)", &mut setup),
        ("total (spawn to exit)", &mut total),
    ] {
        println!(
            "{name}: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 1.0)
        );
    }
    Ok(ExitCode::SUCCESS)
}
