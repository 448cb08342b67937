//! Command-line interface: one clap struct per subcommand; turns arguments and files into
//! validated configurations and prints user errors with hints. Each subcommand lives in its own
//! file and exposes `run(args) -> anyhow::Result<ExitCode>`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod conformance;
mod daemon;
mod doctor;
mod policy;
mod run;
mod sandbox;
mod server;
mod sign;

/// Runs MCP servers in a sandbox they cannot leave and enforces AIP policy on their stdio.
#[derive(Debug, Parser)]
#[command(name = "aip", version, about, args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Drop-in flags of the Go reference proxy (`aip --policy FILE --target "CMD ARGS"`).
    #[command(flatten)]
    legacy: run::LegacyArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an MCP server under policy (and, by default, in the sandbox).
    Run(run::RunArgs),
    /// Inspect, sign and verify policy files.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Run the AIP conformance vectors against the engine.
    Conformance(conformance::ConformanceArgs),
    /// Report kernel support for each sandbox layer and run a canary sandbox.
    Doctor(doctor::DoctorArgs),
    /// Run a command in the sandbox without the MCP proxy (see what a server sees).
    Sandbox(sandbox::SandboxArgs),
    /// Run the aipd service.
    Daemon(daemon::DaemonArgs),
    /// Bridge stdio to a server defined in aipd (what an MCP client config runs).
    Connect(daemon::ConnectArgs),
    /// List live aipd sessions.
    Ps(daemon::PsArgs),
    /// List and answer pending `ask` approvals of aipd sessions.
    Approve(daemon::ApproveArgs),
    /// Ask aipd to reread its configuration.
    Reload(daemon::ReloadArgs),
    /// Run the HTTP(S) validation server.
    Server(server::ServerArgs),
    /// Print `sha256:…` schema hashes of a server's tools.
    SchemaHash(server::SchemaHashArgs),
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy and print the effective policy (defaults filled in).
    Check(policy::CheckArgs),
    /// Sign a policy (Ed25519 over its canonical form) into `metadata.signature`.
    Sign(sign::SignArgs),
    /// Verify a policy's `metadata.signature`.
    Verify(sign::VerifyArgs),
    /// Generate an Ed25519 key pair for policy signing.
    Keygen(sign::KeygenArgs),
}

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => run::run_legacy(cli.legacy),
        Some(Command::Run(a)) => run::run(a),
        Some(Command::Policy(PolicyCommand::Check(a))) => policy::check(a),
        Some(Command::Policy(PolicyCommand::Sign(a))) => sign::sign(a),
        Some(Command::Policy(PolicyCommand::Verify(a))) => sign::verify(a),
        Some(Command::Policy(PolicyCommand::Keygen(a))) => sign::keygen(a),
        Some(Command::Conformance(a)) => conformance::run(a),
        Some(Command::Doctor(a)) => doctor::run(a),
        Some(Command::Sandbox(a)) => sandbox::run(a),
        Some(Command::Daemon(a)) => daemon::daemon(a),
        Some(Command::Connect(a)) => daemon::connect(a),
        Some(Command::Ps(a)) => daemon::ps(a),
        Some(Command::Approve(a)) => daemon::approve(a),
        Some(Command::Reload(a)) => daemon::reload(a),
        Some(Command::Server(a)) => server::server(a),
        Some(Command::SchemaHash(a)) => server::schema_hash(a),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            report(&err);
            ExitCode::from(2)
        }
    }
}

/// Prints an error chain the way ripgrep does: program name, then each cause on its own line.
fn report(err: &anyhow::Error) {
    #[allow(clippy::print_stderr)]
    {
        eprintln!("aip: {err}");
        for cause in err.chain().skip(1) {
            eprintln!("  caused by: {cause}");
        }
    }
}
