//! AIP `AgentPolicy`: the model, loading from YAML with positions, name normalization, the pure
//! evaluation engine, protected paths, rate limits and DLP.

pub mod egress_config;
pub mod sandbox_config;
