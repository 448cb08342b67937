//! All integration tests form one binary; each area lives in `tests/suite/<area>.rs`.

// Test code: a failed unwrap is a failed test.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::print_stdout,
    clippy::print_stderr
)]

mod suite;
mod support;
