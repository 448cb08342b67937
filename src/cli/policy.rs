//! `aip policy check FILE`: validates a policy and prints the effective policy (defaults filled
//! in) on stdout, as YAML or JSON; warnings and the expanded protected paths go to stderr.
//! Exit status 0 when valid, 2 when not (the error names file, line:column, field and a fix).

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};

use crate::policy::{self, Engine, EvalContext};

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The policy file.
    pub file: PathBuf,
    /// Output format of the effective policy.
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Print nothing on success; only the exit status tells.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

pub fn check(args: CheckArgs) -> anyhow::Result<ExitCode> {
    let policy = match policy::load_file(&args.file) {
        Ok(p) => p,
        Err(e) => {
            #[allow(clippy::print_stderr)]
            {
                eprintln!("aip: {e}");
            }
            return Ok(ExitCode::from(2));
        }
    };
    if args.quiet {
        return Ok(ExitCode::SUCCESS);
    }
    let effective = policy.effective();
    let body = match args.format {
        Format::Json => serde_json::to_string_pretty(&effective)? + "\n",
        Format::Yaml => format!(
            "# effective policy of {} (defaults filled in, names normalized)\n{}",
            policy.origin(),
            serde_saphyr::to_string(&effective)?
        ),
    };
    let name = policy.name().to_owned();
    let (version, mode) = (policy.api_version().as_str(), policy.mode().as_str());
    let rules = policy.spec().tool_rules.len();
    let warnings: Vec<String> = policy.warnings().iter().map(ToString::to_string).collect();
    let engine = Engine::new(Arc::new(policy), EvalContext::from_process());
    let mut err = std::io::stderr().lock();
    for w in &warnings {
        writeln!(err, "aip: warning: {}: {w}", args.file.display())?;
    }
    writeln!(
        err,
        "{}: valid {version} policy `{name}` ({mode} mode, {rules} tool rules)",
        args.file.display()
    )?;
    for (written, expanded) in engine.protected_paths() {
        if written == expanded {
            writeln!(err, "  protected: {expanded}")?;
        } else {
            writeln!(err, "  protected: {written} -> {expanded}")?;
        }
    }
    let mut out = std::io::stdout().lock();
    match out.write_all(body.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e.into()),
        _ => {}
    }
    Ok(ExitCode::SUCCESS)
}
