//! Shared helpers for the integration tests: locating the real `aip` binary and test fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

/// Path of the `aip` binary built for this test run.
pub fn aip_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_aip"))
}

/// Repository root (where Cargo.toml lives).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The official conformance vectors, outside the repository.
pub fn conformance_dir() -> PathBuf {
    std::env::var_os("AIP_CONFORMANCE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/aip-conformance"))
}
