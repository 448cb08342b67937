//! Level `identity` (v1alpha2 tokens and validation). Not implemented by this runner yet: every
//! test FAILS with that reason, so a run never reports identity conformance it does not have.
//!
//! Must not: pass anything until token issuance and validation are wired in.

use super::Outcome;
use super::vectors::{Test, VectorFile};

pub fn run(_file: &VectorFile, _test: &Test<'_>) -> Outcome {
    Outcome::fail(
        "the identity level (token issuance and validation) is not implemented by this runner yet",
    )
}
