//! Level `project`: the project's own vectors (`tests/vectors/*.yaml`), in the official format
//! plus the shapes documented in tests/vectors/README.md: load rejections
//! (`expected.load_error`), sequences (`steps`), request/stderr/JSON DLP, and the audit fields
//! `failed_arg`, `failed_rule`, `kind` in decision expectations.
//!
//! Must not: run identity or server shapes (those levels own them).

use super::vectors::{Test, VectorFile};
use super::{Outcome, decision, load_error, redaction, sequence};

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    if test
        .get("expected")
        .and_then(|e| e.get("load_error"))
        .is_some()
    {
        return load_error::run(file, test);
    }
    if test.get("steps").is_some() {
        return sequence::run(file, test);
    }
    let input = test.get("input");
    if input.and_then(|i| i.get("type")).is_some() {
        return redaction::run(file, test, true);
    }
    if input.and_then(|i| i.get("method")).is_some() {
        return decision::run(file, test, decision::PROJECT_EXPECTED);
    }
    Outcome::fail("unknown test shape (expected load_error, steps, input.type or input.method)")
}
