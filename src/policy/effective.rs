//! The effective policy: the document with every default filled in and every name normalized,
//! as `aip policy check` prints it. The output is itself a valid policy of the same apiVersion
//! (v1alpha2-only fields appear only in v1alpha2+ documents).
//!
//! Must not: include anything that depends on the environment (home, cwd): those expansions
//! are the engine's and are printed separately.

use serde_json::{Map, Value, json};

use super::dlp::Dlp;
use super::identity_config::IdentityConfig;
use super::model::{Policy, ToolRule};
use super::server_config::ServerConfig;
use super::units::{format_duration as d, format_size};

impl Policy {
    /// The policy with defaults filled in (see the module docs).
    pub fn effective(&self) -> Value {
        let v2 = self.api_version.has_v1alpha2();
        let mut meta = Map::new();
        meta.insert("name".into(), json!(self.metadata.name));
        opt(&mut meta, "version", self.metadata.version.as_deref());
        opt(&mut meta, "owner", self.metadata.owner.as_deref());
        opt(&mut meta, "signature", self.metadata.signature.as_deref());

        let s = &self.spec;
        let mut spec = Map::new();
        spec.insert("mode".into(), json!(s.mode.as_str()));
        spec.insert(
            "allowed_tools".into(),
            json!(s.allowed_tools.clone().unwrap_or_default()),
        );
        spec.insert("allowed_methods".into(), json!(s.allowed_methods));
        spec.insert("denied_methods".into(), json!(s.denied_methods));
        spec.insert("strict_args_default".into(), json!(s.strict_args_default));
        spec.insert(
            "tool_rules".into(),
            Value::Array(s.tool_rules.iter().map(|r| rule(r, v2)).collect()),
        );
        let mut protected = s.protected_paths.clone();
        if let Some(src) = &self.source {
            let src = src.to_string_lossy().into_owned();
            if !protected.contains(&src) {
                protected.push(src);
            }
        }
        spec.insert("protected_paths".into(), json!(protected));
        if let Some(x) = &s.dlp {
            spec.insert("dlp".into(), dlp(x, v2));
        }
        if let Some(i) = &s.identity {
            spec.insert("identity".into(), identity(i));
        }
        if let Some(x) = &s.server {
            spec.insert("server".into(), server(x));
        }
        if let Some(x) = &s.sandbox {
            spec.insert(
                "sandbox".into(),
                serde_json::to_value(x).unwrap_or(Value::Null),
            );
        }
        if let Some(x) = &s.egress {
            spec.insert(
                "egress".into(),
                serde_json::to_value(x).unwrap_or(Value::Null),
            );
        }
        json!({
            "apiVersion": self.api_version.as_str(),
            "kind": "AgentPolicy",
            "metadata": meta,
            "spec": spec,
        })
    }
}

fn opt(m: &mut Map<String, Value>, k: &str, v: Option<&str>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

fn rule(r: &ToolRule, v2: bool) -> Value {
    let mut m = Map::new();
    m.insert("tool".into(), json!(r.tool));
    m.insert("action".into(), json!(r.action.as_str()));
    if let Some(rl) = &r.rate_limit {
        m.insert("rate_limit".into(), json!(rl.to_string()));
    }
    m.insert("strict_args".into(), json!(r.strict_args));
    if !r.allow_args.is_empty() {
        let args: Map<String, Value> = r
            .allow_args
            .iter()
            .map(|a| (a.name.clone(), json!(a.pattern)))
            .collect();
        m.insert("allow_args".into(), Value::Object(args));
    }
    if v2 && let Some(h) = &r.schema_hash {
        m.insert("schema_hash".into(), json!(h.to_string()));
    }
    Value::Object(m)
}

fn dlp(x: &Dlp, v2: bool) -> Value {
    let patterns: Vec<Value> = x
        .patterns()
        .iter()
        .map(|p| {
            if v2 {
                json!({"name": p.name, "regex": p.pattern, "scope": p.scope.as_str()})
            } else {
                json!({"name": p.name, "regex": p.pattern})
            }
        })
        .collect();
    let mut m = Map::new();
    m.insert("enabled".into(), json!(x.enabled));
    m.insert("detect_encoding".into(), json!(x.detect_encoding));
    m.insert("filter_stderr".into(), json!(x.filter_stderr));
    if v2 {
        m.insert("scan_requests".into(), json!(x.scan_requests));
        m.insert("scan_responses".into(), json!(x.scan_responses));
        m.insert(
            "max_scan_size".into(),
            json!(format_size(x.max_scan_size as u64)),
        );
        m.insert(
            "on_request_match".into(),
            json!(x.on_request_match.as_str()),
        );
        m.insert(
            "on_redaction_failure".into(),
            json!(x.on_redaction_failure.as_str()),
        );
        m.insert(
            "log_original_on_failure".into(),
            json!(x.log_original_on_failure),
        );
    }
    m.insert("patterns".into(), Value::Array(patterns));
    Value::Object(m)
}

fn identity(i: &IdentityConfig) -> Value {
    let mut storage = Map::new();
    storage.insert("type".into(), json!(i.nonce_storage.kind.as_str()));
    opt(&mut storage, "address", i.nonce_storage.address.as_deref());
    storage.insert("key_prefix".into(), json!(i.nonce_storage.key_prefix));
    storage.insert(
        "clock_skew_tolerance".into(),
        json!(d(i.nonce_storage.clock_skew_tolerance)),
    );
    let k = &i.keys;
    let mut keys = Map::new();
    keys.insert(
        "signing_algorithm".into(),
        json!(k.signing_algorithm.as_str()),
    );
    keys.insert("key_source".into(), json!(k.key_source.as_str()));
    if let Some(p) = &k.key_path {
        keys.insert("key_path".into(), json!(p.to_string_lossy()));
    }
    keys.insert("rotation_period".into(), json!(d(k.rotation_period)));
    keys.insert("jwks_endpoint".into(), json!(k.jwks_endpoint));
    if let Some(g) = k.grace_period {
        keys.insert("grace_period".into(), json!(d(g)));
    }
    if let Some(e) = &k.external {
        let mut m = Map::new();
        m.insert("type".into(), json!(e.kind));
        opt(&mut m, "address", e.address.as_deref());
        opt(&mut m, "key_name", e.key_name.as_deref());
        keys.insert("external".into(), Value::Object(m));
    }
    let mut m = Map::new();
    m.insert("enabled".into(), json!(i.enabled));
    m.insert("token_ttl".into(), json!(d(i.token_ttl)));
    m.insert("rotation_interval".into(), json!(d(i.rotation_interval)));
    m.insert("require_token".into(), json!(i.require_token));
    m.insert("session_binding".into(), json!(i.session_binding.as_str()));
    m.insert("nonce_window".into(), json!(d(i.nonce_window)));
    m.insert(
        "policy_transition_grace".into(),
        json!(d(i.policy_transition_grace)),
    );
    m.insert("audience".into(), json!(i.audience));
    m.insert("nonce_storage".into(), Value::Object(storage));
    m.insert("keys".into(), Value::Object(keys));
    Value::Object(m)
}

fn server(s: &ServerConfig) -> Value {
    let mut m = Map::new();
    m.insert("enabled".into(), json!(s.enabled));
    m.insert("listen".into(), json!(s.listen));
    m.insert("failover_mode".into(), json!(s.failover_mode.as_str()));
    m.insert("timeout".into(), json!(d(s.timeout)));
    if let Some(t) = &s.tls {
        let mut tls = Map::new();
        tls.insert("cert".into(), json!(t.cert.to_string_lossy()));
        tls.insert("key".into(), json!(t.key.to_string_lossy()));
        if let Some(ca) = &t.client_ca {
            tls.insert("client_ca".into(), json!(ca.to_string_lossy()));
        }
        tls.insert("require_client_cert".into(), json!(t.require_client_cert));
        m.insert("tls".into(), Value::Object(tls));
    }
    if let Some(f) = &s.fail_open_constraints {
        let mut fo = Map::new();
        fo.insert("allowed_tools".into(), json!(f.allowed_tools));
        if let Some(x) = f.max_duration {
            fo.insert("max_duration".into(), json!(d(x)));
        }
        if let Some(x) = f.max_requests {
            fo.insert("max_requests".into(), json!(x));
        }
        opt(&mut fo, "alert_webhook", f.alert_webhook.as_deref());
        fo.insert("require_local_policy".into(), json!(f.require_local_policy));
        m.insert("fail_open_constraints".into(), Value::Object(fo));
    }
    let e = &s.endpoints;
    m.insert(
        "endpoints".into(),
        json!({"validate": e.validate, "revoke": e.revoke, "jwks": e.jwks, "health": e.health, "metrics": e.metrics}),
    );
    Value::Object(m)
}
