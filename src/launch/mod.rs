//! Composes one sandboxed, policed MCP server instance (policy → sandbox spec → spawn → proxy,
//! egress and audit wiring). Shared by `aip run` and the daemon.

pub mod plan;
