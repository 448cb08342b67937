//! `aip doctor`: kernel support for each sandbox layer, plus a canary sandbox.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct DoctorArgs {}

pub fn run(_args: DoctorArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip doctor")
}
