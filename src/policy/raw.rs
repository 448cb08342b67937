//! The policy file as written: serde structs that mirror the YAML keys one to one, every key
//! optional (presence matters for version gating and for "defaults filled in"), unknown keys
//! rejected. `validate` turns these into the model.
//!
//! Must not: fill defaults, interpret values or compile anything.

use serde::Deserialize;
use serde::de::{Deserializer, MapAccess, Visitor};

use super::egress_config::EgressConfig;
use super::sandbox_config::SandboxConfig;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    // Checked on the tree before deserialization (`validate::header`); declared here so they
    // are known fields.
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    pub api_version: Option<String>,
    #[allow(dead_code)]
    pub kind: Option<String>,
    pub metadata: Option<RawMetadata>,
    pub spec: Option<RawSpec>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetadata {
    pub name: Option<String>,
    pub version: Option<String>,
    pub owner: Option<String>,
    pub signature: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSpec {
    pub mode: Option<String>,
    pub allowed_tools: Option<Vec<String>>,
    pub allowed_methods: Option<Vec<String>>,
    pub denied_methods: Option<Vec<String>>,
    pub tool_rules: Option<Vec<RawToolRule>>,
    pub protected_paths: Option<Vec<String>>,
    pub strict_args_default: Option<bool>,
    pub dlp: Option<RawDlp>,
    pub identity: Option<RawIdentity>,
    pub server: Option<RawServer>,
    pub sandbox: Option<SandboxConfig>,
    pub egress: Option<EgressConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawToolRule {
    pub tool: Option<String>,
    pub action: Option<String>,
    pub rate_limit: Option<String>,
    pub strict_args: Option<bool>,
    pub allow_args: Option<Ordered<String>>,
    pub schema_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDlp {
    pub enabled: Option<bool>,
    pub detect_encoding: Option<bool>,
    pub filter_stderr: Option<bool>,
    pub patterns: Option<Vec<RawDlpPattern>>,
    pub scan_requests: Option<bool>,
    pub scan_responses: Option<bool>,
    pub max_scan_size: Option<String>,
    pub on_request_match: Option<String>,
    pub on_redaction_failure: Option<String>,
    pub log_original_on_failure: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDlpPattern {
    pub name: Option<String>,
    pub regex: Option<String>,
    pub scope: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIdentity {
    pub enabled: Option<bool>,
    pub token_ttl: Option<String>,
    pub rotation_interval: Option<String>,
    pub require_token: Option<bool>,
    pub session_binding: Option<String>,
    pub nonce_window: Option<String>,
    pub policy_transition_grace: Option<String>,
    pub audience: Option<String>,
    pub nonce_storage: Option<RawNonceStorage>,
    pub keys: Option<RawKeys>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawNonceStorage {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub address: Option<String>,
    pub key_prefix: Option<String>,
    pub clock_skew_tolerance: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeys {
    pub signing_algorithm: Option<String>,
    pub key_source: Option<String>,
    pub key_path: Option<String>,
    pub rotation_period: Option<String>,
    pub jwks_endpoint: Option<String>,
    pub grace_period: Option<String>,
    pub external: Option<RawExternalKey>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExternalKey {
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub address: Option<String>,
    pub key_name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub failover_mode: Option<String>,
    pub timeout: Option<String>,
    pub tls: Option<RawTls>,
    pub fail_open_constraints: Option<RawFailOpen>,
    pub endpoints: Option<RawEndpoints>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub cert: Option<String>,
    pub key: Option<String>,
    pub client_ca: Option<String>,
    pub require_client_cert: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFailOpen {
    pub allowed_tools: Option<Vec<String>>,
    pub max_duration: Option<String>,
    pub max_requests: Option<u64>,
    pub alert_webhook: Option<String>,
    pub require_local_policy: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoints {
    pub validate: Option<String>,
    pub revoke: Option<String>,
    pub jwks: Option<String>,
    pub health: Option<String>,
    pub metrics: Option<String>,
}

/// A string-keyed mapping that keeps the order the author wrote.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Ordered<V>(pub Vec<(String, V)>);

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Ordered<V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V_<V>(std::marker::PhantomData<V>);
        impl<'de, V: Deserialize<'de>> Visitor<'de> for V_<V> {
            type Value = Ordered<V>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Ordered<V>, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, V>()? {
                    out.push((k, v));
                }
                Ok(Ordered(out))
            }
        }
        d.deserialize_map(V_(std::marker::PhantomData))
    }
}
