//! `aip policy sign|verify|keygen`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct SignArgs {}
#[derive(Debug, Args)]
pub struct VerifyArgs {}
#[derive(Debug, Args)]
pub struct KeygenArgs {}

pub fn sign(_args: SignArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip policy sign")
}
pub fn verify(_args: VerifyArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip policy verify")
}
pub fn keygen(_args: KeygenArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip policy keygen")
}
