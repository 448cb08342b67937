//! Cost of identity operations: token issuance and validation (ES256, EdDSA; memory nonce
//! store), the JCS policy hash, a tool schema hash, and policy signature verification.
//! `cargo bench --bench identity`. Measures only; asserts nothing about time.

#![allow(clippy::expect_used)] // a benchmark that cannot set up has nothing to measure

use std::sync::Arc;

use aip::identity::{
    IdentityConfig, PolicySigningKey, SigningAlgorithm, TokenService, policy_hash, schema_hash,
    sign_policy, verify_policy_signature,
};
use serde_json::{Value, json};

fn main() {
    divan::main();
}

const ALGS: [SigningAlgorithm; 2] = [SigningAlgorithm::Es256, SigningAlgorithm::EdDsa];

fn service(alg: SigningAlgorithm) -> Arc<TokenService> {
    let mut cfg = IdentityConfig::new("bench-agent");
    cfg.algorithm = alg;
    // A window long enough that no nonce expires mid-run; the store grows with the run.
    cfg.token_ttl = std::time::Duration::from_secs(3600);
    Arc::new(
        TokenService::builder(cfg)
            .policy_hash("ab".repeat(32))
            .build()
            .expect("service"),
    )
}

fn policy_doc() -> Value {
    json!({
        "apiVersion": "aip.io/v1alpha2", "kind": "AgentPolicy",
        "metadata": {"name": "bench-agent", "version": "1.0.0"},
        "spec": {
            "mode": "enforce",
            "allowed_tools": ["read_file", "list_directory", "search_files", "get_file_info"],
            "tool_rules": [
                {"tool": "write_file", "action": "ask", "allow_args": {"path": "^/srv/data/.*"}},
                {"tool": "exec", "action": "block"},
                {"tool": "fetch", "rate_limit": "10/minute", "allow_args": {"url": "^https://docs\\.example\\.com/.*"}}
            ],
            "protected_paths": ["~/.ssh", "~/.aws", "/etc/shadow"],
            "dlp": {"patterns": [{"name": "AWS Key", "regex": "AKIA[0-9A-Z]{16}"}]},
            "identity": {"enabled": true, "token_ttl": "5m", "require_token": true}
        }
    })
}

#[divan::bench(args = ALGS)]
fn issue_token(bencher: divan::Bencher, alg: SigningAlgorithm) {
    let svc = service(alg);
    bencher.bench_local(|| svc.fresh_token().expect("token"));
}

#[divan::bench(args = ALGS)]
fn validate_token(bencher: divan::Bencher, alg: SigningAlgorithm) {
    let svc = service(alg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    bencher
        .with_inputs(|| svc.fresh_token().expect("token").token.token)
        .bench_local_values(|t| rt.block_on(svc.validate(&t)).expect("valid"));
}

#[divan::bench]
fn reject_forged_token(bencher: divan::Bencher) {
    let svc = service(SigningAlgorithm::Es256);
    let other = service(SigningAlgorithm::Es256);
    let forged = other.fresh_token().expect("token").token.token;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    bencher.bench_local(|| rt.block_on(svc.validate(&forged)).is_err());
}

#[divan::bench]
fn policy_hash_jcs(bencher: divan::Bencher) {
    let doc = policy_doc();
    bencher.bench_local(|| policy_hash(&doc).expect("hash"));
}

#[divan::bench]
fn tool_schema_hash(bencher: divan::Bencher) {
    let tool = json!({"name": "read_text_file", "description": "Read the complete contents of a file as text.",
        "inputSchema": {"type": "object", "properties": {"path": {"type": "string"},
        "tail": {"type": "number", "description": "last N lines"}, "head": {"type": "number", "description": "first N lines"}},
        "required": ["path"], "$schema": "http://json-schema.org/draft-07/schema#"}});
    bencher.bench_local(|| schema_hash(&tool));
}

#[divan::bench]
fn verify_policy_signature_ed25519(bencher: divan::Bencher) {
    let key = PolicySigningKey::generate().expect("key");
    let mut doc = policy_doc();
    let sig = sign_policy(&doc, &key).expect("sign");
    doc["metadata"]["signature"] = Value::String(sig);
    let public = key.public();
    bencher.bench_local(|| verify_policy_signature(&doc, &public).expect("valid"));
}
