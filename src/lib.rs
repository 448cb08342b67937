//! `aip`: a Linux supervisor that runs MCP servers inside a sandbox they cannot leave and enforces
//! AIP (Agent Identity Protocol) tool-call policy on the JSON-RPC stream between agent and server.
//!
//! Data flows one way: bytes → frame ([`jsonrpc`]) → message → decision ([`policy`]) → forward or
//! error ([`proxy`]) → record ([`audit`]). [`sandbox`] and [`egress`] confine the server process;
//! [`launch`] composes one sandboxed, policed server instance for `aip run` and the daemon.
//!
//! Dependency direction (an arrow means "may import"): `jsonrpc`, `identity`, `sandbox` are leaves;
//! `policy → jsonrpc`; `audit → jsonrpc`; `proxy → jsonrpc, policy, identity, audit, approval`;
//! `egress → audit`; `launch → sandbox, egress, proxy, policy, audit`; `server → policy, identity,
//! audit`; `daemon → launch, policy, audit`; `cli → everything`. Nothing imports `cli` or `daemon`.

pub mod approval;
pub mod audit;
pub mod cli;
pub mod conformance;
pub mod daemon;
pub mod egress;
pub mod identity;
pub mod jsonrpc;
pub mod launch;
pub mod policy;
pub mod proxy;
pub mod sandbox;
pub mod server;
