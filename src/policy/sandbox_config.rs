//! `spec.sandbox`: our extension describing the OS sandbox for the wrapped server (raw serde
//! model and validation). Turned into a `sandbox::SandboxSpec` by `launch`.

use serde::{Deserialize, Serialize};

/// Placeholder until the sandbox section is specified; unknown keys are rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxConfig {}
