//! Level `server` (v1alpha2 HTTP validation endpoints). Not implemented by this runner yet:
//! every test FAILS with that reason, so a run never reports server conformance it does not
//! have.
//!
//! Must not: pass anything until the validation server is wired in.

use super::Outcome;
use super::vectors::{Test, VectorFile};

pub fn run(_file: &VectorFile, _test: &Test<'_>) -> Outcome {
    Outcome::fail(
        "the server level (HTTP validation endpoints) is not implemented by this runner yet",
    )
}
