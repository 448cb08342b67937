//! `aip run` and the Go reference proxy's drop-in flags
//! (`aip --policy FILE --target "CMD ARGS" [--audit FILE] [--verbose] [--generate-cursor-config]`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};

use crate::launch::{self, ApproverChoice, Options};
use crate::proxy::ProxyConfig;

/// Flags shared by `aip run` and the drop-in form.
#[derive(Debug, Args, Clone)]
pub struct CommonArgs {
    /// Policy file (AgentPolicy YAML).
    #[arg(long, value_name = "FILE", default_value = "agent.yaml")]
    pub policy: PathBuf,
    /// Audit log (JSON Lines, created 0600).
    #[arg(long, value_name = "FILE", default_value = "aip-audit.jsonl")]
    pub audit: PathBuf,
    /// Log decisions and lifecycle to stderr.
    #[arg(long)]
    pub verbose: bool,
    /// Ed25519 public key (PEM) the policy's metadata.signature must verify against.
    #[arg(long, value_name = "FILE")]
    pub policy_pubkey: Option<PathBuf>,
    /// Refuse a policy without metadata.signature.
    #[arg(long)]
    pub require_signed_policy: bool,
    /// Also ask this AIP validation server (https://…/v1/validate, or http to loopback) about
    /// every tool call the policy allows; spec.server.failover_mode decides when it is down.
    #[arg(long, value_name = "URL", env = "AIP_VALIDATION_SERVER")]
    pub validation_server: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ApproverArg {
    /// A desktop dialog when a graphical session exists, otherwise nobody (asks time out).
    Auto,
    /// zenity or kdialog.
    Desktop,
    /// Nobody: asks time out (-32005).
    None,
    /// Deny every ask (-32004).
    Deny,
    /// Approve every ask without a human (for tests; loudly logged).
    Approve,
}

/// `aip run [OPTIONS] -- CMD [ARGS…]`
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Run the server without the OS sandbox (audited as such).
    #[arg(long)]
    pub no_sandbox: bool,
    /// Make PATH readable inside the sandbox (repeatable).
    #[arg(long, value_name = "PATH")]
    pub allow_read: Vec<PathBuf>,
    /// Make PATH readable and writable inside the sandbox (repeatable).
    #[arg(long, value_name = "PATH")]
    pub allow_write: Vec<PathBuf>,
    /// Longest JSON-RPC line accepted in either direction.
    #[arg(long, value_name = "BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Keep tools the policy blocks in `tools/list` replies.
    #[arg(long)]
    pub no_filter_tools_list: bool,
    /// Who answers `action: ask`.
    #[arg(long, value_enum, default_value_t = ApproverArg::Auto)]
    pub approver: ApproverArg,
    /// Seconds a human has to answer an `ask`.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub approval_timeout: u64,
    /// Prompts per minute before further asks are denied without prompting.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub approval_limit: usize,
    /// Seconds the server may take to exit after its stdin closes, before SIGTERM.
    #[arg(long, value_name = "SECS", default_value_t = 5)]
    pub shutdown_grace: u64,
    /// Microseconds each direction polls for the next message before sleeping (lower latency
    /// for back-to-back traffic at a little CPU; 0 disables).
    #[arg(long, value_name = "µS", default_value_t = 100)]
    pub poll_us: u64,
    /// The server command and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// Flags of the Go reference proxy, accepted at top level.
#[derive(Debug, Args)]
pub struct LegacyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// The server command line, split like a shell does (quotes respected).
    #[arg(long, value_name = "\"CMD ARGS\"")]
    pub target: Option<String>,
    /// Print a Cursor `mcp.json` entry that runs this proxy, then exit.
    #[arg(long)]
    pub generate_cursor_config: bool,
}

fn init_tracing(verbose: bool) {
    let default = if verbose { "debug" } else { "warn" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("AIP_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}

fn options(common: &CommonArgs, command: Vec<String>) -> Options {
    Options {
        policy_path: common.policy.clone(),
        audit_path: common.audit.clone(),
        verbose: common.verbose,
        command,
        approver: ApproverChoice::Auto,
        approval_prompts_per_minute: 10,
        proxy: ProxyConfig::default(),
        no_sandbox: false,
        allow_read: Vec::new(),
        allow_write: Vec::new(),
        signature: launch::SignaturePolicy {
            pubkey: common.policy_pubkey.clone(),
            require_signed: common.require_signed_policy,
        },
        validation_server: common.validation_server.clone(),
    }
}

fn server_name(command: &[String]) -> String {
    command
        .first()
        .map(|c| {
            Path::new(c)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| c.clone())
        })
        .unwrap_or_else(|| "server".into())
}

fn launch(opts: Options) -> anyhow::Result<ExitCode> {
    let code = launch::run_stdio(opts)?;
    Ok(ExitCode::from(code))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.common.verbose);
    let mut opts = options(&args.common, args.command);
    opts.no_sandbox = args.no_sandbox;
    opts.allow_read = args.allow_read;
    opts.allow_write = args.allow_write;
    opts.approver = match args.approver {
        ApproverArg::Auto => ApproverChoice::Auto,
        ApproverArg::Desktop => ApproverChoice::Desktop,
        ApproverArg::None => ApproverChoice::None,
        ApproverArg::Deny => ApproverChoice::Deny,
        ApproverArg::Approve => ApproverChoice::Approve,
    };
    opts.approval_prompts_per_minute = args.approval_limit.max(1);
    opts.proxy = ProxyConfig {
        max_message_bytes: args.max_message_bytes.max(1024),
        filter_tools_list: !args.no_filter_tools_list,
        approval_timeout: Duration::from_secs(args.approval_timeout.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
        server_name: server_name(&opts.command),
        spin: Duration::from_micros(args.poll_us.min(10_000)),
        ..ProxyConfig::default()
    };
    launch(opts)
}

pub fn run_legacy(args: LegacyArgs) -> anyhow::Result<ExitCode> {
    init_tracing(args.common.verbose);
    let Some(target) = args.target.as_deref() else {
        bail!(
            "no server to run\n  hint: aip --policy FILE --target \"CMD ARGS\", or aip run --policy FILE -- CMD ARGS (see aip --help)"
        );
    };
    let command = shell_words::split(target)
        .with_context(|| format!("cannot split --target {target:?} like a shell would"))?;
    if command.is_empty() {
        bail!("--target is empty");
    }
    if args.generate_cursor_config {
        print_cursor_config(&args.common, target)?;
        return Ok(ExitCode::SUCCESS);
    }
    let mut opts = options(&args.common, command);
    opts.proxy.server_name = server_name(&opts.command);
    launch(opts)
}

/// The Cursor `mcp.json` entry, with absolute paths for the binary, the policy and the audit
/// log (Cursor starts servers from an unrelated working directory).
fn print_cursor_config(common: &CommonArgs, target: &str) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find the aip binary's path")?;
    let policy = launch::absolute(&common.policy);
    let audit = launch::absolute(&common.audit);
    let name = crate::policy::load_file(&policy)
        .map(|p| p.name().to_owned())
        .unwrap_or_else(|_| "aip-protected".into());
    let mut args = vec![
        "--policy".to_owned(),
        policy.display().to_string(),
        "--audit".to_owned(),
        audit.display().to_string(),
        "--target".to_owned(),
        target.to_owned(),
    ];
    if common.verbose {
        args.push("--verbose".into());
    }
    let cfg = serde_json::json!({
        "mcpServers": { name: { "command": exe.display().to_string(), "args": args } }
    });
    #[allow(clippy::print_stdout)]
    {
        println!("{}", serde_json::to_string_pretty(&cfg)?);
    }
    Ok(())
}
