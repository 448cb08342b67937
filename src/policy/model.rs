//! The validated, immutable policy: names already normalized, regexes compiled, units parsed,
//! defaults applied. Built only by `validate` (through `load_*`), shared behind an `Arc`.
//!
//! Must not: be constructible from outside the module in an unvalidated state, or do I/O.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;

use super::dlp::Dlp;
use super::egress_config::EgressConfig;
use super::error::PolicyWarning;
use super::identity_config::IdentityConfig;
use super::sandbox_config::SandboxConfig;
use super::server_config::ServerConfig;
use super::units::RateLimit;

/// Client→server methods allowed when a policy does not list `allowed_methods`.
///
/// The AIP default safe list (`initialize`, `initialized`, `ping`, `tools/call`, `tools/list`,
/// `completion/complete`, `notifications/initialized`, `notifications/progress`,
/// `notifications/message`, `notifications/resources/updated`,
/// `notifications/resources/list_changed`, `notifications/tools/list_changed`,
/// `notifications/prompts/list_changed`, `cancelled`) plus what MCP clients of both protocol
/// eras send to use tools at all:
/// - `server/discover`: the first request of a 2026-07-28 client (and the probe a dual-era client
///   sends before falling back to `initialize`);
/// - `notifications/cancelled`: how both eras cancel a request (the spec list has only the
///   pre-MCP `cancelled`);
/// - `notifications/roots/list_changed`: sent by 2025-era clients that expose roots.
///
/// Deliberately absent, as in the AIP list: `resources/*`, `prompts/*`, `logging/setLevel`,
/// `subscriptions/listen`, `tasks/*`, `sampling/*` (a policy enables them explicitly). Responses
/// the client sends to server requests (sampling, roots, elicitation) are not methods and are
/// not gated here.
pub const DEFAULT_ALLOWED_METHODS: &[&str] = &[
    "initialize",
    "initialized",
    "ping",
    "tools/call",
    "tools/list",
    "completion/complete",
    "notifications/initialized",
    "notifications/progress",
    "notifications/message",
    "notifications/resources/updated",
    "notifications/resources/list_changed",
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "cancelled",
    "server/discover",
    "notifications/cancelled",
    "notifications/roots/list_changed",
];

/// The policy document's `apiVersion`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiVersion {
    V1Alpha1,
    V1Alpha2,
    /// v1alpha2 plus `spec.egress` (AIP Appendix D.1, proposed for v1beta1).
    V1Beta1,
}

impl ApiVersion {
    pub const ALL: [&'static str; 3] = ["aip.io/v1alpha1", "aip.io/v1alpha2", "aip.io/v1beta1"];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiVersion::V1Alpha1 => "aip.io/v1alpha1",
            ApiVersion::V1Alpha2 => "aip.io/v1alpha2",
            ApiVersion::V1Beta1 => "aip.io/v1beta1",
        }
    }

    pub fn parse(s: &str) -> Option<ApiVersion> {
        match s {
            "aip.io/v1alpha1" => Some(ApiVersion::V1Alpha1),
            "aip.io/v1alpha2" => Some(ApiVersion::V1Alpha2),
            "aip.io/v1beta1" => Some(ApiVersion::V1Beta1),
            _ => None,
        }
    }

    /// Whether v1alpha2 fields (identity, server, schema_hash, signature, DLP v2) are allowed.
    pub fn has_v1alpha2(self) -> bool {
        self >= ApiVersion::V1Alpha2
    }
}

/// `spec.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    Enforce,
    Monitor,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

/// `tool_rules[].action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Block,
    Ask,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Block => "block",
            Action::Ask => "ask",
        }
    }
}

/// `metadata`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    pub name: String,
    pub version: Option<String>,
    pub owner: Option<String>,
    /// `<algorithm>:<base64>` (v1alpha2); verified by the identity module, not here.
    pub signature: Option<String>,
}

/// One `allow_args` entry: the argument must be present and its STRING() must match.
#[derive(Debug, Clone)]
pub struct ArgPattern {
    pub name: String,
    /// The pattern as written (audit `failed_rule`; never sent to the client).
    pub pattern: String,
    pub regex: Regex,
}

/// `schema_hash` algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in hex characters.
    pub fn hex_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 64,
            HashAlgorithm::Sha384 => 96,
            HashAlgorithm::Sha512 => 128,
        }
    }
}

/// `tool_rules[].schema_hash` (v1alpha2): `<algorithm>:<lowercase hex digest>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaHash {
    pub algorithm: HashAlgorithm,
    pub hex: String,
}

impl std::fmt::Display for SchemaHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.as_str(), self.hex)
    }
}

/// One `tool_rules` entry.
#[derive(Debug, Clone)]
pub struct ToolRule {
    /// Normalized tool name.
    pub tool: String,
    /// The name as written in the policy.
    pub written: String,
    pub action: Action,
    pub rate_limit: Option<RateLimit>,
    /// Effective strictness (`strict_args`, else `strict_args_default`).
    pub strict_args: bool,
    /// In the order written.
    pub allow_args: Vec<ArgPattern>,
    pub schema_hash: Option<SchemaHash>,
}

/// `spec`, validated.
#[derive(Debug, Clone)]
pub struct Spec {
    pub mode: Mode,
    /// Normalized, in the order written; `None` when the key is absent.
    pub allowed_tools: Option<Vec<String>>,
    /// Normalized effective list (the defaults when the key is absent or empty).
    pub allowed_methods: Vec<String>,
    /// Whether `allowed_methods` came from the policy (false: [`DEFAULT_ALLOWED_METHODS`]).
    pub allowed_methods_explicit: bool,
    /// Normalized.
    pub denied_methods: Vec<String>,
    pub tool_rules: Vec<ToolRule>,
    /// As written (expanded against the environment when an engine is built).
    pub protected_paths: Vec<String>,
    pub strict_args_default: bool,
    pub dlp: Option<Dlp>,
    pub identity: Option<IdentityConfig>,
    pub server: Option<ServerConfig>,
    pub sandbox: Option<SandboxConfig>,
    pub egress: Option<EgressConfig>,
}

/// A loaded, validated AIP policy. Immutable; share it with `Arc<Policy>`.
#[derive(Debug, Clone)]
pub struct Policy {
    pub(crate) api_version: ApiVersion,
    pub(crate) metadata: Metadata,
    pub(crate) spec: Spec,
    pub(crate) origin: String,
    pub(crate) source: Option<PathBuf>,
    pub(crate) document: Value,
    pub(crate) warnings: Vec<PolicyWarning>,
    pub(crate) index: Index,
}

/// Lookup tables derived from the spec at load.
#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    pub allowed_tools: HashSet<String>,
    pub rules: HashMap<String, usize>,
    pub allowed_methods: HashSet<String>,
    pub any_method: bool,
    pub denied_methods: HashSet<String>,
}

impl Policy {
    pub fn api_version(&self) -> ApiVersion {
        self.api_version
    }
    /// `metadata.name` (the agent id).
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }
    pub fn mode(&self) -> Mode {
        self.spec.mode
    }
    pub fn spec(&self) -> &Spec {
        &self.spec
    }
    /// The file the policy was read from (`None` for `load_str`).
    pub fn source_path(&self) -> Option<&Path> {
        self.source.as_deref()
    }
    /// What errors call the policy: its path, or the label given to `load_str`.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    pub fn dlp(&self) -> Option<&Dlp> {
        self.spec.dlp.as_ref()
    }
    pub fn identity(&self) -> Option<&IdentityConfig> {
        self.spec.identity.as_ref()
    }
    pub fn server(&self) -> Option<&ServerConfig> {
        self.spec.server.as_ref()
    }
    pub fn sandbox(&self) -> Option<&SandboxConfig> {
        self.spec.sandbox.as_ref()
    }
    pub fn egress(&self) -> Option<&EgressConfig> {
        self.spec.egress.as_ref()
    }
    /// The document exactly as authored (YAML 1.2 core schema → JSON, key order kept, no
    /// defaults), for the JCS policy hash and signatures.
    pub fn document(&self) -> &Value {
        &self.document
    }
    /// Non-fatal remarks found at load (also logged with `tracing::warn!`).
    pub fn warnings(&self) -> &[PolicyWarning] {
        &self.warnings
    }
    /// The rule for a normalized tool name.
    pub fn rule(&self, normalized_tool: &str) -> Option<&ToolRule> {
        self.index
            .rules
            .get(normalized_tool)
            .and_then(|i| self.spec.tool_rules.get(*i))
    }
    pub(crate) fn rule_index(&self, normalized_tool: &str) -> Option<usize> {
        self.index.rules.get(normalized_tool).copied()
    }
    /// Whether a normalized tool name is allowlisted: listed in `allowed_tools`, or has a rule
    /// whose action is `allow` (AIP vector auth-020).
    pub fn is_allowlisted(&self, normalized_tool: &str) -> bool {
        self.index.allowed_tools.contains(normalized_tool)
            || self
                .rule(normalized_tool)
                .is_some_and(|r| r.action == Action::Allow)
    }
    pub(crate) fn index(&self) -> &Index {
        &self.index
    }
}
