//! Runs the official AIP conformance vectors (and the project's own vectors in the same format)
//! against the real engine and reports one line per test.
