//! `aip conformance DIR [--level basic|full|identity|server|project]…`: one line per test, then
//! exactly `N passed, M failed`; exit status 1 when any test failed, 2 when nothing could run.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::conformance::{self, Level};

#[derive(Debug, Args)]
pub struct ConformanceArgs {
    /// Directory holding the vectors (basic/, full/, identity/, server/, or *.yaml files).
    pub dir: PathBuf,
    /// Levels to run (repeatable). Default: every level whose directory exists, plus *.yaml
    /// files directly in DIR (level `project`).
    #[arg(long = "level", value_parser = parse_level)]
    pub levels: Vec<Level>,
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| {
        let names: Vec<&str> = Level::ALL.iter().map(|l| l.as_str()).collect();
        format!("unknown level `{s}` (one of {})", names.join(", "))
    })
}

pub fn run(args: ConformanceArgs) -> anyhow::Result<ExitCode> {
    let mut out = std::io::stdout().lock();
    let mut write_err = None;
    let results = conformance::run(&args.dir, &args.levels, |r| {
        if write_err.is_none()
            && let Err(e) = writeln!(out, "{r}")
        {
            write_err = Some(e);
        }
    })?;
    let failed = results
        .iter()
        .filter(|r| r.outcome != conformance::Outcome::Pass)
        .count();
    let passed = results.len() - failed;
    writeln!(out, "{passed} passed, {failed} failed")?;
    out.flush()?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
