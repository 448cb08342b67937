//! Runs the official AIP conformance vectors (and the project's own vectors in the same format)
//! against the real engine and reports one line per test, then `N passed, M failed`.
//!
//! Layout of a vector directory: level subdirectories (`basic/`, `full/`, `identity/`,
//! `server/`) holding `*.yaml` files, and/or `*.yaml` files directly in it (the project's own
//! vectors, run as level `project`). Each level is one module that knows which test shapes it
//! runs; a test whose shape or fields a level does not know FAILS with the reason — nothing is
//! skipped or passed without every expected field compared.
//!
//! Must not: weaken a comparison, or count a test it could not run as passed.

mod approval;
mod basic;
mod compare;
mod decision;
mod full;
mod identity;
mod load_error;
mod project;
mod redaction;
mod sequence;
mod server;
mod vectors;

use std::path::{Path, PathBuf};

pub use approval::{Approver, ScriptedApprover};
pub use vectors::{Test, VectorFile};

/// A conformance level (a subdirectory of the vector directory, or the loose files).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Basic,
    Full,
    Identity,
    Server,
    /// `*.yaml` files directly in the directory (the project's own vectors).
    Project,
}

impl Level {
    pub const ALL: [Level; 5] = [
        Level::Basic,
        Level::Full,
        Level::Identity,
        Level::Server,
        Level::Project,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Basic => "basic",
            Level::Full => "full",
            Level::Identity => "identity",
            Level::Server => "server",
            Level::Project => "project",
        }
    }

    pub fn parse(s: &str) -> Option<Level> {
        Level::ALL.into_iter().find(|l| l.as_str() == s)
    }

    fn run_test(self, file: &VectorFile, test: &Test) -> Outcome {
        match self {
            Level::Basic => basic::run(file, test),
            Level::Full => full::run(file, test),
            Level::Identity => identity::run(file, test),
            Level::Server => server::run(file, test),
            Level::Project => project::run(file, test),
        }
    }
}

/// The result of one test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Pass,
    /// Why it failed (`expected X got Y`, or why it could not run).
    Fail(String),
}

impl Outcome {
    fn fail(msg: impl Into<String>) -> Self {
        Outcome::Fail(msg.into())
    }
}

/// One reported line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestResult {
    /// `basic/errors.yaml`.
    pub file: String,
    pub id: String,
    pub description: String,
    pub outcome: Outcome,
}

impl std::fmt::Display for TestResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.outcome {
            Outcome::Pass => write!(f, "PASS {} {} {}", self.file, self.id, self.description),
            Outcome::Fail(why) => write!(
                f,
                "FAIL {} {} {}: {why}",
                self.file, self.id, self.description
            ),
        }
    }
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConformanceError {
    #[error("{}: cannot read the vector directory: {source}", dir.display())]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no `{level}` vectors (expected {}/{level}/*.yaml)", dir.display(), dir.display())]
    MissingLevel { dir: PathBuf, level: &'static str },
    #[error("{}: no vector files found\n  hint: pass the directory holding basic/ and full/, or *.yaml vector files", dir.display())]
    Empty { dir: PathBuf },
}

/// Runs `levels` (all present levels when empty) of the vectors under `dir`, calling `report`
/// for each test as it finishes. Returns every result.
pub fn run(
    dir: &Path,
    levels: &[Level],
    mut report: impl FnMut(&TestResult),
) -> Result<Vec<TestResult>, ConformanceError> {
    let plan = plan(dir, levels)?;
    let mut results = Vec::new();
    for (level, path) in plan {
        let rel = path
            .strip_prefix(dir)
            .unwrap_or(&path)
            .to_string_lossy()
            .into_owned();
        match VectorFile::read(&path, &rel) {
            Ok(file) => {
                for test in file.tests() {
                    let outcome = match test.problem() {
                        Some(p) => Outcome::fail(p),
                        None => level.run_test(&file, &test),
                    };
                    let r = TestResult {
                        file: rel.clone(),
                        id: test.id().to_owned(),
                        description: test.description().to_owned(),
                        outcome,
                    };
                    report(&r);
                    results.push(r);
                }
                if file.tests().is_empty() {
                    let r = TestResult {
                        file: rel.clone(),
                        id: "-".into(),
                        description: String::new(),
                        outcome: Outcome::fail("the file holds no tests"),
                    };
                    report(&r);
                    results.push(r);
                }
            }
            Err(why) => {
                let r = TestResult {
                    file: rel,
                    id: "-".into(),
                    description: String::new(),
                    outcome: Outcome::Fail(why),
                };
                report(&r);
                results.push(r);
            }
        }
    }
    Ok(results)
}

/// The (level, file) pairs to run, in level then file-name order.
fn plan(dir: &Path, levels: &[Level]) -> Result<Vec<(Level, PathBuf)>, ConformanceError> {
    let wanted: Vec<Level> = if levels.is_empty() {
        Level::ALL.to_vec()
    } else {
        let mut l = levels.to_vec();
        l.sort();
        l.dedup();
        l
    };
    let mut plan = Vec::new();
    for level in wanted {
        let files = match level {
            Level::Project => yaml_files(dir)?,
            _ => {
                let sub = dir.join(level.as_str());
                if sub.is_dir() {
                    yaml_files(&sub)?
                } else {
                    Vec::new()
                }
            }
        };
        if files.is_empty() && !levels.is_empty() {
            return Err(ConformanceError::MissingLevel {
                dir: dir.to_path_buf(),
                level: level.as_str(),
            });
        }
        plan.extend(files.into_iter().map(|f| (level, f)));
    }
    if plan.is_empty() {
        return Err(ConformanceError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    Ok(plan)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, ConformanceError> {
    let rd = std::fs::read_dir(dir).map_err(|source| ConformanceError::ReadDir {
        dir: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    Ok(files)
}
