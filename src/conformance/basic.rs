//! Level `basic` (authorization, errors, methods): decision-shaped tests only.
//!
//! Must not: run a test of another shape.

use super::vectors::{Test, VectorFile};
use super::{Outcome, decision};

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    if test.get("input").and_then(|i| i.get("method")).is_some() {
        return decision::run(file, test, &[]);
    }
    Outcome::fail("not a decision-shaped test (input.method), which is all the basic level has")
}
