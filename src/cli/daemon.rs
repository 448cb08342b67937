//! `aip daemon`, `aip connect`, `aip ps`, `aip approve`, `aip reload`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct DaemonArgs {}
#[derive(Debug, Args)]
pub struct ConnectArgs {}
#[derive(Debug, Args)]
pub struct PsArgs {}
#[derive(Debug, Args)]
pub struct ApproveArgs {}
#[derive(Debug, Args)]
pub struct ReloadArgs {}

pub fn daemon(_args: DaemonArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip daemon")
}
pub fn connect(_args: ConnectArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip connect")
}
pub fn ps(_args: PsArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip ps")
}
pub fn approve(_args: ApproveArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip approve")
}
pub fn reload(_args: ReloadArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip reload")
}
