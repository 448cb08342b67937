//! Composes one sandboxed, policed MCP server instance: load the policy, open the audit sink,
//! build the engine (the policy file and audit file always protected), plan and spawn the
//! sandbox, then run the proxy until the server ends. Shared by `aip run` and the daemon.
//!
//! Must not parse command-line flags or accept clients; callers hand in [`Options`].

mod child;
mod identity;
pub mod plan;

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::approval::{Approver, DesktopApprover, FatigueLimited, HeadlessApprover, NoApprover};
use crate::audit::{JsonlSink, MultiSink, Record, Sink, StderrSink};
use crate::policy::sandbox_config::SandboxConfig;
use crate::policy::{self, Engine, EvalContext, Policy};
use crate::proxy::{self, ProxyConfig, ServerExit, SessionHandle, Streams};

pub use child::{ServerTree, Spawned};
pub use identity::SignaturePolicy;

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
    /// How the policy's signature is checked.
    pub signature: SignaturePolicy,
    /// Remote validation server URL.
    pub validation_server: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    #[error("egress: {0}")]
    Egress(#[from] crate::egress::EgressError),
    #[error("no server command given")]
    NoCommand,
    #[error("identity: {0}")]
    Identity(String),
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
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

/// One instance, decided but not started: what `aip run` and each daemon session hand to
/// [`run_instance`].
pub struct Instance {
    pub policy: Arc<Policy>,
    /// Absolute path of the policy file (protected, hidden from the sandbox, token binding).
    pub policy_path: PathBuf,
    pub audit: Arc<dyn Sink>,
    /// The audit file, if any (protected and hidden like the policy).
    pub audit_path: Option<PathBuf>,
    pub command: Vec<OsString>,
    /// Working directory of the server.
    pub cwd: PathBuf,
    /// Environment the planner may pass through (its allowlist decides).
    pub env: Vec<(OsString, OsString)>,
    /// `--allow-read/--allow-write/--no-sandbox`.
    pub overrides: plan::Overrides,
    /// uid/gid the server runs as when started as root (the daemon's per-session ids).
    pub user: Option<(u32, u32)>,
    pub approver: Arc<dyn Approver>,
    pub proxy: ProxyConfig,
    /// Async runtime for identity, the validation server and egress (one per process).
    pub runtime: Option<tokio::runtime::Handle>,
    /// Start the validation server when `spec.server.enabled` (`aip run` only: daemon sessions
    /// would fight over the port).
    pub embedded_server: bool,
    /// Session id (a fresh UUID when `None`; the token service's when identity is on).
    pub session_id: Option<String>,
    /// Remote validation server URL (`--validation-server`; `$AIP_VALIDATION_SERVER` otherwise).
    pub validation_server: Option<String>,
}

/// The client side of a session.
pub struct ClientIo {
    pub input: Box<dyn Read + Send>,
    pub output: Box<dyn Write + Send>,
    /// Where the server's stderr goes.
    pub diagnostics: Box<dyn Write + Send>,
}

/// Plans the sandbox of `inst`, starts the server, and runs the proxy until the session ends.
pub fn run_instance(
    inst: Instance,
    client: ClientIo,
    handle: &SessionHandle,
    signals: bool,
) -> Result<ServerExit, LaunchError> {
    let Instance {
        policy,
        policy_path,
        audit,
        audit_path,
        command,
        cwd,
        env,
        overrides,
        user,
        approver,
        proxy: proxy_config,
        runtime,
        embedded_server,
        session_id,
        validation_server,
    } = inst;
    let hash = identity::policy_hash(&policy)?;
    let mut ctx = EvalContext::new(&cwd)
        .with_home(std::env::var_os("HOME").map(PathBuf::from))
        .with_protected_file(&policy_path);
    if let Some(a) = &audit_path {
        ctx = ctx.with_protected_file(a);
    }
    let engine = Arc::new(Engine::new(Arc::clone(&policy), ctx));
    let tokens = match &runtime {
        Some(rt) => identity::token_service(rt, &policy, &policy_path, &hash)?,
        None if policy.identity().is_some_and(|i| i.enabled) => {
            return Err(LaunchError::Identity(
                "no runtime for the token service".into(),
            ));
        }
        None => None,
    };
    let session_id = tokens
        .as_ref()
        .map(|t| t.session_id())
        .or(session_id)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let _server = match (&runtime, embedded_server) {
        (Some(rt), true) => identity::embedded_server(
            rt,
            &policy,
            Arc::clone(&engine),
            &hash,
            tokens.clone(),
            Arc::clone(&audit),
        )?,
        _ => None,
    };

    // The sandbox: planned from spec.sandbox (or its safe defaults), never showing the policy
    // or the audit file to the server.
    let default_config = SandboxConfig::default();
    let mut hidden = vec![canonical(&policy_path)];
    hidden.extend(audit_path.as_deref().map(canonical));
    let input = plan::PlanInput {
        config: policy.sandbox().unwrap_or(&default_config),
        command: &command,
        cwd: &cwd,
        overrides: &overrides,
        env: &env,
        hidden: &hidden,
    };
    let mut planned = plan::plan(&input, &plan::RealFs)?;
    if let Some((uid, gid)) = user {
        planned.spec.user = crate::sandbox::User { uid, gid };
    }
    // spec.egress: listeners inside the sandbox's network namespace, proxy variables, a DNS
    // stub in resolv.conf, Landlock connect ports; served from this process once it runs.
    let egress_plan = match policy.egress() {
        Some(cfg) => {
            let p = crate::egress::EgressPlan::new(cfg)?;
            p.apply(&mut planned.spec)?;
            if runtime.is_none() {
                return Err(LaunchError::Identity(
                    "no async runtime for the egress supervisor".into(),
                ));
            }
            Some(p)
        }
        None => None,
    };
    for note in &planned.notes {
        match note.level {
            plan::NoteLevel::Warn => tracing::warn!("{}", note.message),
            plan::NoteLevel::Info => tracing::debug!("{}", note.message),
        }
    }
    let spawned = child::spawn(&planned.spec)?;
    // The plan carries copies of /etc files (hundreds of KiB); aipd holds one per live session
    // otherwise.
    drop(planned);
    let egress = match (&egress_plan, &runtime) {
        (Some(p), Some(rt)) => {
            let _entered = rt.enter();
            let live = handle.clone();
            let ctx = crate::egress::SupervisorCtx {
                in_flight: Arc::new(move || live.current_tool_call()),
                ..crate::egress::SupervisorCtx::new(
                    &proxy_config.server_name,
                    &session_id,
                    Arc::clone(&audit),
                )
            };
            match crate::egress::Supervisor::start(p, spawned.child.take_listeners(), ctx) {
                Ok(s) => Some(s),
                Err(e) => {
                    let _ = spawned.child.kill_all();
                    return Err(e.into());
                }
            }
        }
        _ => None,
    };
    let mut start = Record::event("SESSION_START")
        .with("session_id", session_id.as_str())
        .with("server", proxy_config.server_name.as_str())
        .with(
            "command",
            command
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect::<Vec<_>>(),
        )
        .with("policy", policy.name())
        .with("policy_path", policy_path.display().to_string())
        .with("policy_hash", hash.as_str())
        .with("policy_mode", engine.mode().as_str())
        .with("pid", spawned.child.pid())
        .with("sandbox", spawned.child.report().to_json());
    if overrides.no_sandbox {
        start.set("dangerously_no_sandbox", true);
    }
    if let Err(e) = audit.write(&start) {
        let _ = spawned.child.kill_all();
        return Err(e.into());
    }
    let streams = Streams {
        client_in: client.input,
        client_out: client.output,
        server_in: Box::new(spawned.stdin),
        server_out: Box::new(proxy::SpinRead::new(spawned.stdout, proxy_config.spin)),
        server_err: Some(Box::new(spawned.stderr)),
        diagnostics: client.diagnostics,
    };
    let remote = match crate::server::remote_config(validation_server.as_deref(), policy.server())
        .map_err(|e| LaunchError::Identity(format!("validation server: {e}")))?
    {
        None => None,
        Some(cfg) => {
            let rt = runtime.clone().ok_or_else(|| {
                LaunchError::Identity("no runtime for the validation client".into())
            })?;
            let validator = crate::server::RemoteValidator::new(cfg, true)
                .map_err(|e| LaunchError::Identity(format!("validation server: {e}")))?;
            Some(proxy::Remote {
                validator: Arc::new(validator),
                runtime: rt,
            })
        }
    };
    let identity = match (&tokens, &runtime) {
        (Some(t), Some(rt)) => Some(proxy::Identity {
            tokens: Arc::clone(t),
            require_token: policy.identity().is_some_and(|i| i.require_token),
            runtime: rt.clone(),
        }),
        _ => None,
    };
    let session = proxy::Session {
        config: proxy_config,
        engine,
        audit: Arc::clone(&audit),
        approver,
        session_id: session_id.clone(),
        identity,
        remote,
    };
    let server = Arc::new(child::ServerTree(Arc::clone(&spawned.child)));
    let status = proxy::run(session, streams, server, handle, signals);
    if let (Some(sup), Some(rt)) = (egress, &runtime) {
        // Ends open connections and writes their records before SESSION_END.
        rt.block_on(sup.shutdown());
    }
    let _ = audit.write(
        &Record::event("SESSION_END")
            .with("session_id", session_id.as_str())
            .with("exit", exit_json(status)),
    );
    Ok(status)
}

fn canonical(p: &Path) -> PathBuf {
    std::fs::canonicalize(p).unwrap_or_else(|_| p.to_owned())
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
    if let Err(reason) = identity::check_signature(&policy, &opts.signature) {
        audit.write(
            &Record::event("POLICY_SIGNATURE_INVALID")
                .with("policy_path", policy_path.display().to_string())
                .with("reason", reason.as_str()),
        )?;
        tracing::error!(policy = %policy_path.display(), %reason, "policy signature check failed; the server is not started");
        refuse_all(&policy_path, &reason);
        return Ok(2);
    }
    if opts.no_sandbox {
        tracing::warn!("--no-sandbox: the server runs with your privileges, unconfined (audited)");
    }
    let needs_runtime = policy.identity().is_some_and(|i| i.enabled)
        || policy.server().is_some_and(|s| s.enabled)
        || policy.egress().is_some()
        || opts.validation_server.is_some();
    let runtime = if needs_runtime {
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .thread_name("aip-rt")
                .enable_all()
                .build()
                .map_err(LaunchError::Runtime)?,
        )
    } else {
        None
    };
    let inst = Instance {
        policy,
        policy_path,
        audit,
        audit_path: Some(audit_path),
        command: opts.command.iter().map(OsString::from).collect(),
        cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
        env: std::env::vars_os().collect(),
        overrides: plan::Overrides {
            allow_read: opts.allow_read.clone(),
            allow_write: opts.allow_write.clone(),
            no_sandbox: opts.no_sandbox,
        },
        user: None,
        approver: build_approver(opts.approver, opts.approval_prompts_per_minute),
        proxy: proxy::ProxyConfig {
            // One session per process: its start-up code is never needed again.
            release_startup_memory: true,
            ..opts.proxy.clone()
        },
        runtime: runtime.as_ref().map(|r| r.handle().clone()),
        embedded_server: true,
        session_id: None,
        validation_server: opts.validation_server.clone(),
    };
    // Our own handle on fd 0 (not Stdin's buffer), polled briefly before each blocking read.
    let stdin = std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(LaunchError::Runtime)?;
    let client = ClientIo {
        input: Box::new(proxy::SpinRead::new(stdin, opts.proxy.spin)),
        output: Box::new(std::io::stdout()),
        diagnostics: Box::new(std::io::stderr()),
    };
    let status = run_instance(inst, client, &SessionHandle::new(), true)?;
    Ok(status.exit_code())
}

/// The policy cannot be used: answer every request of the client with -32010 until it goes.
fn refuse_all(policy_path: &Path, reason: &str) {
    use std::io::Write;
    let err = crate::jsonrpc::ErrorReply::new(
        crate::jsonrpc::codes::POLICY_SIGNATURE_INVALID,
        "Policy signature invalid",
        Some(serde_json::json!({"policy": policy_path.display().to_string(), "reason": reason})),
    );
    let mut reader = crate::jsonrpc::LineReader::new(std::io::stdin(), 4 * 1024 * 1024);
    let mut out = std::io::stdout();
    while let Ok(Some(frame)) = reader.next_frame() {
        let crate::jsonrpc::Frame::Line(line) = frame else {
            continue;
        };
        let id = crate::jsonrpc::parse(line, crate::jsonrpc::Origin::Client)
            .ok()
            .filter(|m| m.kind == crate::jsonrpc::Kind::Request)
            .and_then(|m| m.id_text().map(str::to_owned));
        if let Some(id) = id
            && out
                .write_all(&err.to_line(Some(&id)))
                .and_then(|()| out.flush())
                .is_err()
        {
            return;
        }
    }
}

fn exit_json(status: ServerExit) -> serde_json::Value {
    match status {
        ServerExit::Code(c) => serde_json::json!({"code": c}),
        ServerExit::Signal(s) => serde_json::json!({"signal": s}),
    }
}
