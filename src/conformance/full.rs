//! Level `full` (arguments, normalization, DLP): decision-shaped and DLP-shaped tests.
//!
//! Must not: run a test of another shape.

use super::vectors::{Test, VectorFile};
use super::{Outcome, decision, redaction};

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    let input = test.get("input");
    if input.and_then(|i| i.get("type")).is_some() {
        return redaction::run(file, test, false);
    }
    if input.and_then(|i| i.get("method")).is_some() {
        return decision::run(file, test, &[]);
    }
    Outcome::fail("neither a decision-shaped (input.method) nor a DLP-shaped (input.type) test")
}
