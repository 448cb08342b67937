//! Command-line interface: one clap struct per subcommand; turns arguments and files into
//! validated configurations and prints user errors with hints.

use std::process::ExitCode;

/// Entry point used by `main.rs`.
pub fn main() -> ExitCode {
    ExitCode::SUCCESS
}
