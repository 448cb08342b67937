//! `aip server` and `aip schema-hash`.

use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ServerArgs {}
#[derive(Debug, Args)]
pub struct SchemaHashArgs {}

pub fn server(_args: ServerArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip server")
}
pub fn schema_hash(_args: SchemaHashArgs) -> anyhow::Result<ExitCode> {
    super::not_yet("aip schema-hash")
}
