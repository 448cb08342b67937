//! `aip policy check FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file.
    pub file: PathBuf,
}

pub fn check(_args: CheckArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip policy check")
}
