//! `spec.egress` (AIP Appendix D.1, our documented extension): raw serde model and validation.

use serde::{Deserialize, Serialize};

/// Placeholder until the egress section is specified; unknown keys are rejected.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EgressConfig {}
