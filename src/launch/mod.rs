//! Composes one sandboxed, policed MCP server instance: load the policy, open the audit sink,
//! build the engine (the policy file and audit file always protected), plan and spawn the
//! sandbox, then run the proxy until the server ends. Shared by `aip run` and the daemon.
//!
//! Must not parse command-line flags or accept clients; callers hand in [`Options`].

mod child;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::approval::{Approver, DesktopApprover, FatigueLimited, HeadlessApprover, NoApprover};
use crate::audit::{JsonlSink, MultiSink, Record, Sink, StderrSink};
use crate::policy::{self, Engine, EvalContext, Policy};
use crate::proxy::{self, ProxyConfig, ServerExit, SessionHandle, Streams};

pub use child::{PlainChild, Spawned};

/// Which approver answers `action: ask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApproverChoice {
    /// zenity/kdialog when a graphical session is present, otherwise none.
    Auto,
    Desktop,
    /// Nobody: every ask times out (-32005).
    None,
    /// Deny every ask without a human (-32004).
    Deny,
    /// Approve every ask without a human (loudly logged).
    Approve,
}

/// Everything needed to run one instance on the current process's stdio.
#[derive(Debug, Clone)]
pub struct Options {
    pub policy_path: PathBuf,
    pub audit_path: PathBuf,
    /// Also print audit records on stderr.
    pub verbose: bool,
    /// The server command and its arguments.
    pub command: Vec<String>,
    pub approver: ApproverChoice,
    /// Prompts per minute before asks are denied without prompting.
    pub approval_prompts_per_minute: usize,
    pub proxy: ProxyConfig,
    /// Run the server without the OS sandbox (`--no-sandbox`, audited).
    pub no_sandbox: bool,
    /// Extra read-only and read-write paths for the sandbox (`--allow-read`, `--allow-write`).
    pub allow_read: Vec<PathBuf>,
    pub allow_write: Vec<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error("cannot start the server {command:?}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no server command given")]
    NoCommand,
}

/// Makes `p` absolute against the current directory (without touching the filesystem).
pub fn absolute(p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_owned()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_owned())
    }
}

fn build_approver(choice: ApproverChoice, per_minute: usize) -> Arc<dyn Approver> {
    let window = std::time::Duration::from_secs(60);
    match choice {
        ApproverChoice::Auto => match DesktopApprover::detect() {
            Some(d) => Arc::new(FatigueLimited::new(d, per_minute, window)),
            None => Arc::new(NoApprover),
        },
        ApproverChoice::Desktop => match DesktopApprover::detect() {
            Some(d) => Arc::new(FatigueLimited::new(d, per_minute, window)),
            None => {
                tracing::warn!(
                    "--approver desktop: no zenity/kdialog or no graphical session; asks will time out"
                );
                Arc::new(NoApprover)
            }
        },
        ApproverChoice::None => Arc::new(NoApprover),
        ApproverChoice::Deny => Arc::new(HeadlessApprover::deny()),
        ApproverChoice::Approve => {
            tracing::warn!("--approver approve: every `ask` rule is approved without a human");
            Arc::new(HeadlessApprover::approve())
        }
    }
}

/// The engine's view of the environment: home, the server's working directory, and the files
/// that must never be named in arguments.
pub fn eval_context(policy_path: &Path, audit_path: &Path, server_cwd: &Path) -> EvalContext {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    EvalContext::new(server_cwd)
        .with_home(home)
        .with_protected_file(absolute(policy_path))
        .with_protected_file(absolute(audit_path))
}

/// Runs one instance on this process's stdin/stdout; returns the exit code for the process.
pub fn run_stdio(opts: Options) -> Result<u8, LaunchError> {
    if opts.command.is_empty() {
        return Err(LaunchError::NoCommand);
    }
    let policy_path = absolute(&opts.policy_path);
    let audit_path = absolute(&opts.audit_path);
    let policy: Arc<Policy> = Arc::new(policy::load_file(&policy_path)?);
    for w in policy.warnings() {
        tracing::warn!("{w}");
    }
    let jsonl = JsonlSink::open(&audit_path)?;
    let audit: Arc<dyn Sink> = if opts.verbose {
        Arc::new(MultiSink::new(vec![Box::new(jsonl), Box::new(StderrSink)]))
    } else {
        Arc::new(jsonl)
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
    let engine = Arc::new(Engine::new(
        Arc::clone(&policy),
        eval_context(&policy_path, &audit_path, &cwd),
    ));
    let session_id = uuid::Uuid::new_v4().to_string();
    let approver = build_approver(opts.approver, opts.approval_prompts_per_minute);

    let spawned = PlainChild::spawn(&opts.command).map_err(|source| LaunchError::Spawn {
        command: opts.command.join(" "),
        source,
    })?;
    audit.write(
        &Record::event("SESSION_START")
            .with("session_id", session_id.as_str())
            .with("server", opts.proxy.server_name.as_str())
            .with("command", opts.command.clone())
            .with("policy", policy.name())
            .with("policy_path", policy_path.display().to_string())
            .with("policy_mode", engine.mode().as_str())
            .with("pid", spawned.child.pid())
            .with("sandbox", serde_json::json!({"enabled": false, "reason": "sandbox layer not built in this version"})),
    )?;

    let streams = Streams {
        client_in: Box::new(std::io::stdin()),
        client_out: Box::new(std::io::stdout()),
        server_in: Box::new(spawned.stdin),
        server_out: Box::new(spawned.stdout),
        server_err: Some(Box::new(spawned.stderr)),
        diagnostics: Box::new(std::io::stderr()),
    };
    let session = proxy::Session {
        config: opts.proxy.clone(),
        engine,
        audit: Arc::clone(&audit),
        approver,
        session_id: session_id.clone(),
    };
    let handle = SessionHandle::new();
    let status = proxy::run(session, streams, Arc::new(spawned.child), &handle, true);
    let _ = audit.write(
        &Record::event("SESSION_END")
            .with("session_id", session_id.as_str())
            .with("exit", exit_json(status)),
    );
    Ok(status.exit_code())
}

fn exit_json(status: ServerExit) -> serde_json::Value {
    match status {
        ServerExit::Code(c) => serde_json::json!({"code": c}),
        ServerExit::Signal(s) => serde_json::json!({"signal": s}),
    }
}
