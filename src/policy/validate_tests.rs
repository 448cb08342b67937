//! Unit tests of load-time validation: every rejection of AIP §1.9 names the field, the
//! position and a fix; valid documents load with their defaults.

use pretty_assertions::assert_eq;

use crate::policy::{
    Action, ApiVersion, FailoverMode, Mode, PolicyError, SessionBinding, load_str,
};

fn doc(version: &str, spec: &str) -> String {
    format!(
        "apiVersion: aip.io/{version}\nkind: AgentPolicy\nmetadata:\n  name: test-policy\nspec:\n{spec}"
    )
}

fn rejects(text: &str, field: &str, needle: &str) -> PolicyError {
    let e = match load_str(text, "p.yaml") {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e,
    };
    assert_eq!(e.field(), Some(field), "{e}");
    assert!(
        e.to_string().contains(needle),
        "{e}\n--- should contain: {needle}"
    );
    e
}

#[test]
fn header_rejections() {
    rejects(
        "kind: AgentPolicy\nmetadata: {name: a}\nspec: {}\n",
        "apiVersion",
        "missing required field",
    );
    rejects(
        "apiVersion: aip.io/v1\nkind: AgentPolicy\nmetadata: {name: a}\nspec: {}\n",
        "apiVersion",
        "unsupported apiVersion",
    );
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: Policy\nmetadata: {name: a}\nspec: {}\n",
        "kind",
        "AgentPolicy",
    );
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nspec: {}\n",
        "metadata",
        "missing required field `metadata`",
    );
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {}\nspec: {}\n",
        "metadata.name",
        "missing",
    );
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: a}\n",
        "spec",
        "missing required field `spec`",
    );
    rejects("- a\n- b\n", "", "must be a mapping");
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: a}\nspec: {}\nextra: 1\n",
        "extra",
        "unknown field",
    );
}

#[test]
fn metadata_rejections() {
    let m = |meta: &str| {
        format!("apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n{meta}spec: {{}}\n")
    };
    for bad in ["-a", "a-", "A", "a.b", "a_b", ""] {
        rejects(
            &m(&format!("  name: '{bad}'\n")),
            "metadata.name",
            "not a valid name",
        );
    }
    rejects(
        &m(&format!("  name: '{}'\n", "a".repeat(254))),
        "metadata.name",
        "not a valid name",
    );
    rejects(
        &m("  name: a\n  version: '1.0'\n"),
        "metadata.version",
        "semantic version",
    );
    rejects(
        &m("  name: a\n  owner: nobody\n"),
        "metadata.owner",
        "email",
    );
    rejects(
        &m("  name: a\n  signature: 'rsa:AAAA'\n"),
        "metadata.signature",
        "ed25519",
    );
    rejects(
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: a\n  signature: 'ed25519:AAAA'\nspec: {}\n",
        "metadata.signature",
        "v1alpha2 field",
    );
    load_str(&m("  name: a-1\n  version: 2.1.0-beta\n  owner: sec@example.com\n  signature: 'ed25519:QUJD+/='\n"), "p").unwrap();
}

#[test]
fn unknown_keys_get_did_you_mean_hints_with_positions() {
    let e = rejects(
        &doc(
            "v1alpha1",
            "  allowed_tools: [a]\n  protected_path: [~/.ssh]\n",
        ),
        "spec.protected_path",
        "did you mean `protected_paths`?",
    );
    let d = e.diagnostic().unwrap();
    assert_eq!((d.pos.unwrap().line, d.pos.unwrap().column), (7, 3));
    rejects(
        &doc(
            "v1alpha1",
            "  tool_rules:\n    - tool: a\n      alow_args: {}\n",
        ),
        "spec.tool_rules[0].alow_args",
        "did you mean `allow_args`?",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  dlp:\n    patterns:\n      - name: a\n        regexp: x\n",
        ),
        "spec.dlp.patterns[0].regexp",
        "did you mean `regex`?",
    );
    rejects(
        &doc("v1alpha1", "  telemetry: {}\n"),
        "spec.telemetry",
        "later AIP version",
    );
    rejects(
        &doc("v1alpha2", "  identity:\n    federation: {type: oidc}\n"),
        "spec.identity.federation",
        "valid fields here",
    );
}

#[test]
fn spec_value_rejections() {
    rejects(
        &doc("v1alpha1", "  mode: enforcing\n"),
        "spec.mode",
        "did you mean `enforce`?",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  tool_rules:\n    - tool: a\n      action: deny\n",
        ),
        "spec.tool_rules[0].action",
        "valid values: allow, block, ask",
    );
    rejects(
        &doc("v1alpha1", "  tool_rules:\n    - action: allow\n"),
        "spec.tool_rules[0].tool",
        "missing required field `tool`",
    );
    rejects(
        &doc("v1alpha1", "  tool_rules:\n    - tool: A\n    - tool: a\n"),
        "spec.tool_rules[1].tool",
        "second rule",
    );
    for rl in ["10/day", "0/minute", "ten/minute", "10 / minute", "-1/s"] {
        rejects(
            &doc(
                "v1alpha1",
                &format!("  tool_rules:\n    - tool: a\n      rate_limit: '{rl}'\n"),
            ),
            "spec.tool_rules[0].rate_limit",
            rl,
        );
    }
    for re in ["(a)\\1", "(?=x)", "(?<=x)y", "[", "\\C"] {
        rejects(
            &doc(
                "v1alpha1",
                &format!("  tool_rules:\n    - tool: a\n      allow_args:\n        p: '{re}'\n"),
            ),
            "spec.tool_rules[0].allow_args.p",
            "regex",
        );
    }
    rejects(
        &doc("v1alpha1", "  allowed_tools: [a, a]\n"),
        "spec.allowed_tools[1]",
        "duplicate",
    );
    rejects(
        &doc("v1alpha1", "  allowed_tools: ['\u{200B}']\n"),
        "spec.allowed_tools[0]",
        "empty after normalization",
    );
    rejects(
        &doc("v1alpha1", "  allowed_methods: ['']\n"),
        "spec.allowed_methods[0]",
        "empty",
    );
    rejects(
        &doc("v1alpha1", "  denied_methods: ['*']\n"),
        "spec.denied_methods[0]",
        "not supported",
    );
    rejects(
        &doc("v1alpha1", "  protected_paths: [~/.ssh, ~/.ssh]\n"),
        "spec.protected_paths[1]",
        "duplicate",
    );
    rejects(
        &doc("v1alpha1", "  protected_paths: ['']\n"),
        "spec.protected_paths[0]",
        "must not be empty",
    );
    rejects(
        &doc("v1alpha1", "  strict_args_default: 'true'\n"),
        "spec.strict_args_default",
        "expected `true` or `false`",
    );
    rejects(
        &doc("v1alpha1", "  allowed_tools: read_file\n"),
        "spec.allowed_tools",
        "expected a list",
    );
    rejects(
        &doc("v1alpha1", "  allowed_tools: [1]\n"),
        "spec.allowed_tools[0]",
        "quote the value",
    );
}

#[test]
fn dlp_rejections() {
    rejects(
        &doc("v1alpha1", "  dlp: {enabled: true}\n"),
        "spec.dlp.patterns",
        "missing required field `patterns`",
    );
    rejects(
        &doc("v1alpha1", "  dlp: {patterns: []}\n"),
        "spec.dlp.patterns",
        "empty",
    );
    rejects(
        &doc("v1alpha1", "  dlp:\n    patterns:\n      - regex: x\n"),
        "spec.dlp.patterns[0].name",
        "missing",
    );
    rejects(
        &doc("v1alpha1", "  dlp:\n    patterns:\n      - name: x\n"),
        "spec.dlp.patterns[0].regex",
        "missing",
    );
    rejects(
        &doc(
            "v1alpha1",
            &format!(
                "  dlp:\n    patterns:\n      - name: '{}'\n        regex: x\n",
                "n".repeat(65)
            ),
        ),
        "spec.dlp.patterns[0].name",
        "1 to 64",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  dlp:\n    patterns:\n      - name: x\n        regex: 'a*'\n",
        ),
        "spec.dlp.patterns[0].regex",
        "empty string",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  dlp:\n    patterns:\n      - name: x\n        regex: '(a)\\1'\n",
        ),
        "spec.dlp.patterns[0].regex",
        "does not compile",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  dlp:\n    scan_requests: true\n    patterns:\n      - {name: x, regex: x}\n",
        ),
        "spec.dlp.scan_requests",
        "v1alpha2 field",
    );
    rejects(
        &doc(
            "v1alpha1",
            "  dlp:\n    patterns:\n      - {name: x, regex: x, scope: all}\n",
        ),
        "spec.dlp.patterns[0].scope",
        "v1alpha2 field",
    );
    let p = |extra: &str| {
        doc(
            "v1alpha2",
            &format!("  dlp:\n{extra}    patterns:\n      - {{name: x, regex: x}}\n"),
        )
    };
    rejects(
        &p("    on_request_match: redacted\n"),
        "spec.dlp.on_request_match",
        "did you mean `redact`?",
    );
    rejects(
        &p("    on_redaction_failure: allow\n"),
        "spec.dlp.on_redaction_failure",
        "valid values",
    );
    rejects(
        &p("    max_scan_size: 1TB\n"),
        "spec.dlp.max_scan_size",
        "not a size",
    );
    rejects(
        &p("    max_scan_size: 0MB\n"),
        "spec.dlp.max_scan_size",
        "between",
    );
    rejects(
        &doc(
            "v1alpha2",
            "  dlp:\n    patterns:\n      - {name: x, regex: x, scope: both}\n",
        ),
        "spec.dlp.patterns[0].scope",
        "valid values",
    );
}

#[test]
fn identity_rejections() {
    let i = |body: &str| doc("v1alpha2", &format!("  identity:\n{body}"));
    let e = rejects(
        &i("    token_ttl: 5m\n    rotation_interval: 6m\n"),
        "spec.identity.rotation_interval",
        "rotation_interval (6m) must be less than token_ttl (5m)",
    );
    assert!(e.to_string().contains("hint:"));
    rejects(
        &i("    token_ttl: 5m\n    rotation_interval: 5m\n"),
        "spec.identity.rotation_interval",
        "must be less",
    );
    rejects(
        &i("    token_ttl: 5m\n    nonce_window: 1m\n"),
        "spec.identity.nonce_window",
        "at least token_ttl",
    );
    rejects(
        &i("    token_ttl: 2h\n"),
        "spec.identity.token_ttl",
        "longer than 1h",
    );
    rejects(
        &i("    token_ttl: 0s\n"),
        "spec.identity.token_ttl",
        "greater than zero",
    );
    rejects(
        &i("    token_ttl: five\n"),
        "spec.identity.token_ttl",
        "not a duration",
    );
    rejects(
        &i("    audience: ''\n"),
        "spec.identity.audience",
        "must not be empty",
    );
    rejects(
        &i("    audience: 'https://*.example.com'\n"),
        "spec.identity.audience",
        "wildcards",
    );
    rejects(
        &i("    audience: other-name\n"),
        "spec.identity.audience",
        "neither a URI",
    );
    rejects(
        &i("    session_binding: pid\n"),
        "spec.identity.session_binding",
        "valid values: process, policy, strict",
    );
    rejects(
        &i("    nonce_storage: {type: redis}\n"),
        "spec.identity.nonce_storage.address",
        "required for redis",
    );
    rejects(
        &i("    nonce_storage: {type: postgres, address: 'redis://x'}\n"),
        "spec.identity.nonce_storage.address",
        "postgres://",
    );
    rejects(
        &i("    nonce_storage: {type: etcd}\n"),
        "spec.identity.nonce_storage.type",
        "valid values",
    );
    rejects(
        &i("    keys: {key_source: file}\n"),
        "spec.identity.keys.key_path",
        "required with `key_source: file`",
    );
    rejects(
        &i("    keys: {signing_algorithm: ES512}\n"),
        "spec.identity.keys.signing_algorithm",
        "valid values",
    );
    rejects(
        &i("    keys: {key_source: vault}\n"),
        "spec.identity.keys.key_source",
        "valid values",
    );
    rejects(
        &doc(
            "v1alpha2",
            "  identity:\n    keys: {signing_algorithm: HS256}\n  server: {enabled: true}\n",
        ),
        "spec.identity.keys.signing_algorithm",
        "HS256",
    );
    rejects(
        &doc("v1alpha1", "  identity: {enabled: true}\n"),
        "spec.identity",
        "v1alpha2 field",
    );
}

#[test]
fn server_rejections() {
    let s = |body: &str| doc("v1alpha2", &format!("  server:\n{body}"));
    rejects(
        &s("    enabled: true\n    listen: '0.0.0.0:9443'\n"),
        "spec.server.listen",
        "no TLS",
    );
    rejects(
        &s("    enabled: true\n    listen: ':9443'\n"),
        "spec.server.listen",
        "no TLS",
    );
    rejects(
        &s("    listen: 'localhost'\n"),
        "spec.server.listen",
        "not a listen address",
    );
    rejects(
        &s("    listen: 'h:99999'\n"),
        "spec.server.listen",
        "not a listen address",
    );
    rejects(
        &s("    tls: {cert: c.pem}\n"),
        "spec.server.tls.key",
        "missing required field `key`",
    );
    rejects(
        &s("    tls: {cert: c, key: k, require_client_cert: true}\n"),
        "spec.server.tls.require_client_cert",
        "client_ca",
    );
    rejects(
        &s("    failover_mode: open\n"),
        "spec.server.failover_mode",
        "valid values",
    );
    rejects(
        &s("    endpoints: {validate: 'v1/validate'}\n"),
        "spec.server.endpoints.validate",
        "not an endpoint path",
    );
    rejects(
        &s("    endpoints: {health: /v1/validate}\n"),
        "spec.server.endpoints.health",
        "also the validate endpoint",
    );
    rejects(
        &s("    fail_open_constraints: {alert_webhook: 'ftp://x'}\n"),
        "spec.server.fail_open_constraints.alert_webhook",
        "http(s)",
    );
    rejects(
        &s("    timeout: -1s\n"),
        "spec.server.timeout",
        "not a duration",
    );
    load_str(
        &s("    enabled: true\n    listen: '0.0.0.0:9443'\n    tls: {cert: c.pem, key: k.pem}\n"),
        "p",
    )
    .unwrap();
    load_str(&s("    enabled: true\n    listen: '[::1]:9443'\n"), "p").unwrap();
}

#[test]
fn schema_hash_is_v1alpha2_and_well_formed() {
    let r = |h: &str| format!("  tool_rules:\n    - tool: a\n      schema_hash: '{h}'\n");
    let good = format!("sha256:{}", "A".repeat(64));
    rejects(
        &doc("v1alpha1", &r(&good)),
        "spec.tool_rules[0].schema_hash",
        "v1alpha2 field",
    );
    rejects(
        &doc("v1alpha2", &r("md5:abcd")),
        "spec.tool_rules[0].schema_hash",
        "valid values",
    );
    rejects(
        &doc("v1alpha2", &r("sha256:abcd")),
        "spec.tool_rules[0].schema_hash",
        "64 hex",
    );
    let p = load_str(&doc("v1alpha2", &r(&good)), "p").unwrap();
    assert_eq!(
        p.spec().tool_rules[0]
            .schema_hash
            .as_ref()
            .unwrap()
            .to_string(),
        format!("sha256:{}", "a".repeat(64))
    );
}

#[test]
fn defaults_are_filled_in() {
    let p = load_str(&doc("v1alpha2", "  tool_rules:\n    - tool: Read_File\n  identity: {enabled: true, token_ttl: 1s}\n  server: {}\n"), "p").unwrap();
    assert_eq!(p.api_version(), ApiVersion::V1Alpha2);
    assert_eq!(p.mode(), Mode::Enforce);
    let r = &p.spec().tool_rules[0];
    assert_eq!(
        (r.tool.as_str(), r.written.as_str(), r.action, r.strict_args),
        ("read_file", "Read_File", Action::Allow, false)
    );
    let i = p.identity().unwrap();
    // The default rotation (4m) would exceed a 1s ttl: it shrinks to 80% of the ttl.
    assert_eq!(i.rotation_interval, std::time::Duration::from_millis(800));
    assert_eq!(
        (i.session_binding, i.audience.as_str()),
        (SessionBinding::Process, "test-policy")
    );
    assert_eq!(i.nonce_window, std::time::Duration::from_secs(1));
    let s = p.server().unwrap();
    assert_eq!(
        (
            s.listen.as_str(),
            s.failover_mode,
            s.endpoints.jwks.as_str()
        ),
        ("127.0.0.1:9443", FailoverMode::FailClosed, "/v1/jwks")
    );
    assert!(p.spec().allowed_tools.is_none());
    assert!(!p.spec().allowed_methods_explicit);
}

#[test]
fn the_document_is_kept_as_authored() {
    let text = doc("v1alpha1", "  mode: monitor\n  allowed_tools: [B, a]\n");
    let p = load_str(&text, "p").unwrap();
    assert_eq!(
        p.document().to_string(),
        r#"{"apiVersion":"aip.io/v1alpha1","kind":"AgentPolicy","metadata":{"name":"test-policy"},"spec":{"mode":"monitor","allowed_tools":["B","a"]}}"#
    );
    assert!(p.warnings().iter().any(|w| w.field == "spec.mode"));
}

#[test]
fn egress_and_sandbox_sections_are_accepted_in_every_version() {
    for v in ["v1alpha1", "v1alpha2", "v1beta1"] {
        let p = load_str(&doc(v, "  sandbox: {}\n  egress: {}\n"), "p").unwrap();
        assert!(p.sandbox().is_some() && p.egress().is_some());
    }
}

#[test]
fn yaml_problems_are_located() {
    let e = load_str("apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: a}\nspec:\n  allowed_tools: [a\n", "p.yaml").unwrap_err();
    assert!(e.diagnostic().unwrap().pos.is_some(), "{e}");
    let e = load_str("a: &x [1]\nb: *y\n", "p.yaml").unwrap_err();
    assert!(e.to_string().starts_with("p.yaml:"), "{e}");
    let e = load_str("spec:\n  mode: enforce\n  mode: monitor\n", "p.yaml").unwrap_err();
    assert!(e.to_string().to_lowercase().contains("duplicate"), "{e}");
}

#[test]
fn unanchored_argument_patterns_are_warned_about() {
    let p = load_str(&doc("v1alpha1", "  tool_rules:\n    - tool: a\n      allow_args:\n        p: '/srv/'\n        q: '^x$'\n"), "p").unwrap();
    let w: Vec<String> = p.warnings().iter().map(|w| w.field.clone()).collect();
    assert_eq!(w, vec!["spec.tool_rules[0].allow_args.p".to_string()]);
}
