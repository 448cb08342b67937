//! `aip run` and the Go reference proxy's drop-in flags.

use std::process::ExitCode;

use clap::Args;

/// `aip run --policy FILE [--audit FILE] [--verbose] -- CMD [ARGS…]`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The server command and its arguments.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// Flags of the Go reference proxy, accepted at top level.
#[derive(Debug, Args)]
pub struct LegacyArgs {}

pub fn run(_args: RunArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip run")
}

pub fn run_legacy(_args: LegacyArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip --target")
}
