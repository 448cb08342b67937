//! `aip conformance DIR [--level basic|full|identity|server]`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Directory holding the vectors (basic/, full/, identity/, server/).
    pub dir: PathBuf,
}

pub fn run(_args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip conformance")
}
