//! Unit tests of the engine: check order, monitor mode, rate limits, ask, visibility, DLP.

use std::path::Path;
use std::time::Duration;

use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::policy::{ManualClock, load_str};

fn engine_with_clock(spec: &str) -> (Engine, Arc<ManualClock>) {
    let text = format!(
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n{spec}"
    );
    let policy = load_str(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    let clock = Arc::new(ManualClock::new());
    let ctx = EvalContext::new("/srv/app")
        .with_home(Some("/home/alice".into()))
        .with_clock(clock.clone())
        .with_protected_file(Path::new("/var/log/aip-audit.jsonl"))
        .with_symlink_resolution(false);
    (Engine::new(Arc::new(policy), ctx), clock)
}

fn engine(spec: &str) -> Engine {
    engine_with_clock(spec).0
}

fn call(e: &Engine, tool: &str, args: serde_json::Value) -> ToolVerdict {
    e.check_tool_call(tool, Some(&args))
}

#[test]
fn method_gate_defaults_cover_both_mcp_eras_and_block_resources() {
    let e = engine("  allowed_tools: []\n");
    for m in [
        "initialize",
        "notifications/initialized",
        "tools/list",
        "tools/call",
        "server/discover",
        "notifications/cancelled",
        "ping",
        "Tools/Call",
    ] {
        assert!(e.check_method(m).allowed(), "{m}");
    }
    for m in [
        "resources/read",
        "prompts/get",
        "logging/setLevel",
        "sampling/createMessage",
        "tasks/result",
    ] {
        let v = e.check_method(m);
        assert_eq!(v.denial.as_ref().map(|d| d.code), Some(-32006), "{m}");
    }
    assert!(e.check_method("TOOLS/CALL").is_tools_call());
}

#[test]
fn denied_methods_win_over_wildcard_and_data_names_the_method() {
    let e = engine("  allowed_methods: ['*']\n  denied_methods: [logging/setLevel]\n");
    assert!(e.check_method("anything/at-all").allowed());
    let v = e.check_method("Logging/SetLevel");
    let d = v.denial.unwrap();
    assert_eq!(d.message, "Method not allowed");
    assert_eq!(d.data["method"], "logging/setlevel");
}

#[test]
fn no_policy_fails_closed_for_tools_and_keeps_default_methods() {
    let e = Engine::no_policy(EvalContext::new("/"));
    let v = e.check_tool_call("anything", None);
    assert_eq!(
        (v.conformance_decision(), v.error_code(), v.violation),
        ("BLOCK", Some(-32001), true)
    );
    assert!(e.check_method("initialize").allowed());
    assert!(!e.check_method("resources/read").allowed());
    assert!(!e.tool_visible("anything"));
}

#[test]
fn error_response_echoes_the_id_and_its_type() {
    let e = engine("  allowed_tools: []\n");
    let v = call(&e, "any_tool", json!({}));
    assert_eq!(
        v.error_response(&json!(123)).unwrap(),
        json!({"jsonrpc": "2.0", "id": 123, "error": {"code": -32001, "message": "Forbidden",
            "data": {"tool": "any_tool", "reason": "Tool not in allowed_tools list"}}})
    );
    assert_eq!(
        v.error_response(&json!("abc-123")).unwrap()["id"],
        "abc-123"
    );
}

#[test]
fn data_never_reveals_the_regex_but_audit_fields_do() {
    let e = engine(
        "  tool_rules:\n    - tool: fetch\n      allow_args:\n        url: '^https://github\\.com/.*'\n",
    );
    let v = call(&e, "fetch", json!({"url": "https://evil.com"}));
    assert_eq!(v.error_code(), Some(-32001));
    let data = v.denial.as_ref().unwrap().data.to_string();
    assert!(!data.contains("github"), "{data}");
    assert_eq!(v.failed_arg.as_deref(), Some("url"));
    assert_eq!(v.failed_rule.as_deref(), Some("^https://github\\.com/.*"));
    assert_eq!(v.kind, VerdictKind::ArgumentMismatch);
}

#[test]
fn check_order_rate_limit_then_protected_path_then_rules() {
    let (e, _clock) = engine_with_clock(
        "  allowed_tools: [read]\n  protected_paths: ['~/.ssh']\n  tool_rules:\n    - tool: read\n      rate_limit: 1/minute\n    - tool: nuke\n      action: block\n",
    );
    // Protected path beats `action: block`.
    let v = call(&e, "nuke", json!({"p": "~/.ssh/id_rsa"}));
    assert_eq!(v.error_code(), Some(-32007));
    assert_eq!(v.failed_rule.as_deref(), Some("~/.ssh"));
    // The audit file (from the context) is protected too.
    assert_eq!(
        call(&e, "read", json!({"p": "/var/log/aip-audit.jsonl"})).error_code(),
        Some(-32007)
    );
    // That refusal took no token: the next call passes, the one after is rate limited even
    // with a protected path (rate limit is checked first).
    assert!(call(&e, "read", json!({"p": "/tmp/x"})).forwards());
    let v = call(&e, "read", json!({"p": "~/.ssh/id_rsa"}));
    assert_eq!(
        (v.conformance_decision(), v.error_code()),
        ("RATE_LIMITED", Some(-32002))
    );
    assert_eq!(
        v.denial.unwrap().data["reason"],
        "Rate limit exceeded for read. Try again later."
    );
}

#[test]
fn blocked_calls_consume_no_quota_and_buckets_refill() {
    let (e, clock) = engine_with_clock(
        "  tool_rules:\n    - tool: q\n      rate_limit: 2/minute\n      allow_args:\n        sql: '^SELECT '\n",
    );
    for _ in 0..5 {
        assert_eq!(
            call(&e, "q", json!({"sql": "DROP TABLE x"})).error_code(),
            Some(-32001)
        );
    }
    assert!(call(&e, "q", json!({"sql": "SELECT 1"})).forwards());
    assert!(call(&e, "q", json!({"sql": "SELECT 2"})).forwards());
    assert_eq!(
        call(&e, "q", json!({"sql": "SELECT 3"})).decision,
        Decision::RateLimited
    );
    clock.advance(Duration::from_secs(30));
    assert!(call(&e, "q", json!({"sql": "SELECT 4"})).forwards());
    assert_eq!(
        call(&e, "q", json!({"sql": "SELECT 5"})).decision,
        Decision::RateLimited
    );
    clock.advance(Duration::from_secs(60));
    assert!(call(&e, "q", json!({"sql": "SELECT 6"})).forwards());
    assert!(call(&e, "q", json!({"sql": "SELECT 7"})).forwards());
    assert_eq!(
        call(&e, "q", json!({"sql": "SELECT 8"})).decision,
        Decision::RateLimited
    );
}

#[test]
fn ask_consumes_quota_and_a_no_or_timeout_refunds_it_once() {
    let (e, _clock) = engine_with_clock(
        "  tool_rules:\n    - tool: deploy\n      action: ask\n      rate_limit: 1/hour\n",
    );
    let v = call(&e, "deploy", json!({}));
    assert_eq!(
        (v.conformance_decision(), v.violation, v.error_code()),
        ("ASK", false, None)
    );
    assert_eq!(
        call(&e, "deploy", json!({})).decision,
        Decision::RateLimited
    );
    let denied = e.resolve_ask(&v, ApprovalOutcome::Denied);
    assert_eq!(
        (denied.conformance_decision(), denied.error_code()),
        ("BLOCK", Some(-32004))
    );
    assert_eq!(denied.denial.as_ref().unwrap().message, "User denied");
    e.refund(&v);
    e.refund(&denied);
    let v2 = call(&e, "deploy", json!({}));
    assert_eq!(v2.decision, Decision::Ask);
    // Only one token came back despite three refund attempts.
    assert_eq!(
        call(&e, "deploy", json!({})).decision,
        Decision::RateLimited
    );
    let t = e.resolve_ask(&v2, ApprovalOutcome::TimedOut);
    assert_eq!(
        (t.error_code(), t.denial.as_ref().unwrap().message),
        (Some(-32005), "User approval timeout")
    );
    let v3 = call(&e, "deploy", json!({}));
    let ok = e.resolve_ask(&v3, ApprovalOutcome::Approved);
    assert!(ok.forwards());
    assert_eq!(
        call(&e, "deploy", json!({})).decision,
        Decision::RateLimited
    );
}

#[test]
fn ask_with_failing_arguments_is_blocked_without_asking() {
    let e = engine(
        "  tool_rules:\n    - tool: run\n      action: ask\n      strict_args: true\n      allow_args:\n        cmd: '^ls'\n",
    );
    assert_eq!(
        call(&e, "run", json!({"cmd": "ls -l"})).decision,
        Decision::Ask
    );
    assert_eq!(
        call(&e, "run", json!({"cmd": "rm -rf /"})).error_code(),
        Some(-32001)
    );
    let v = call(&e, "run", json!({"cmd": "ls", "extra": 1}));
    assert_eq!(
        (v.kind, v.failed_arg.as_deref()),
        (VerdictKind::UndeclaredArgument, Some("extra"))
    );
}

#[test]
fn monitor_mode_forwards_violations_but_enforces_paths_limits_and_methods() {
    let (e, _) = engine_with_clock(
        "  mode: monitor\n  allowed_tools: [ok]\n  protected_paths: [/etc/shadow]\n  denied_methods: [x/y]\n  tool_rules:\n    - tool: nuke\n      action: block\n    - tool: ok\n      rate_limit: 1/hour\n",
    );
    for tool in ["unlisted", "nuke"] {
        let v = call(&e, tool, json!({}));
        assert_eq!(
            (
                v.conformance_decision(),
                v.audit_decision(),
                v.violation,
                v.error_code()
            ),
            ("ALLOW", "ALLOW_MONITOR", true, None)
        );
    }
    assert_eq!(
        call(&e, "unlisted", json!({"f": "/etc/shadow"})).error_code(),
        Some(-32007)
    );
    assert!(call(&e, "ok", json!({})).forwards());
    assert_eq!(call(&e, "ok", json!({})).decision, Decision::RateLimited);
    assert!(!e.check_method("x/y").allowed());
    assert!(e.tool_visible("nuke"));
}

#[test]
fn names_are_normalized_before_lookup() {
    let e = engine(
        "  allowed_tools: [Read_File]\n  tool_rules:\n    - tool: ＥＸＥＣ\n      action: block\n",
    );
    assert!(call(&e, "ｒｅａｄ＿ｆｉｌｅ", json!({})).forwards());
    assert!(call(&e, "\u{FEFF}READ_FILE ", json!({})).forwards());
    assert_eq!(call(&e, "exec", json!({})).kind, VerdictKind::RuleBlock);
    assert_eq!(
        call(&e, "read\u{200B}file", json!({})).kind,
        VerdictKind::NotAllowlisted
    );
}

#[test]
fn strict_args_apply_only_to_tools_with_rules() {
    let e = engine(
        "  strict_args_default: true\n  allowed_tools: [free]\n  tool_rules:\n    - tool: ruled\n    - tool: loose\n      strict_args: false\n",
    );
    assert!(call(&e, "free", json!({"anything": 1})).forwards());
    assert_eq!(
        call(&e, "ruled", json!({"anything": 1})).kind,
        VerdictKind::UndeclaredArgument
    );
    assert!(call(&e, "ruled", json!({})).forwards());
    assert!(call(&e, "loose", json!({"x": 1})).forwards());
}

#[test]
fn non_object_arguments_fail_constrained_rules() {
    let e = engine(
        "  allowed_tools: [free]\n  tool_rules:\n    - tool: ruled\n      allow_args:\n        a: '.'\n",
    );
    assert_eq!(
        e.check_tool_call("ruled", Some(&json!(["a"]))).kind,
        VerdictKind::ArgumentsNotObject
    );
    assert_eq!(
        e.check_tool_call("ruled", None).kind,
        VerdictKind::ArgumentMissing
    );
    assert!(e.check_tool_call("free", Some(&json!("x"))).forwards());
}

#[test]
fn tools_list_visibility_follows_the_policy() {
    let e = engine(
        "  allowed_tools: [a]\n  tool_rules:\n    - tool: b\n    - tool: c\n      action: ask\n    - tool: A2\n      action: block\n",
    );
    assert!(e.tool_visible("A"));
    assert!(e.tool_visible("b"));
    assert!(e.tool_visible("c"));
    assert!(!e.tool_visible("a2"));
    assert!(!e.tool_visible("z"));
}

const DLP: &str = "  allowed_tools: [send]\n  tool_rules:\n    - tool: send\n      allow_args:\n        to: '^[a-z]+$'\n        body: '.'\n  dlp:\n    scan_requests: true\n";

fn dlp_engine(extra: &str) -> Engine {
    engine(&format!(
        "{DLP}{extra}    patterns:\n      - name: AWS Key\n        regex: 'AKIA[A-Z0-9]{{16}}'\n      - name: Response Only\n        regex: 'RESP[0-9]+'\n        scope: response\n"
    ))
}

#[test]
fn request_dlp_blocks_by_default_without_touching_arguments() {
    let e = dlp_engine("");
    let mut args = json!({"to": "bob", "body": "key AKIAIOSFODNN7EXAMPLE"});
    let before = args.clone();
    let v = call(&e, "send", args.clone());
    let r = e.scan_request(&v, &mut args);
    assert_eq!(r.action, RequestDlpAction::Block);
    assert_eq!(r.denial.as_ref().unwrap().code, -32001);
    assert_eq!(
        r.report.hits,
        vec![crate::policy::DlpHit {
            rule: "AWS Key".into(),
            count: 1
        }]
    );
    assert_eq!(args, before);
    // Response-scoped patterns do not apply to requests.
    let mut clean = json!({"to": "bob", "body": "RESP123"});
    assert_eq!(
        e.scan_request(&v, &mut clean).action,
        RequestDlpAction::Forward
    );
}

#[test]
fn request_dlp_redacts_in_place_and_revalidates() {
    let e = dlp_engine("    on_request_match: redact\n");
    let mut args = json!({"to": "bob", "n": 5, "body": "key AKIAIOSFODNN7EXAMPLE!"});
    let v = call(&e, "send", args.clone());
    let r = e.scan_request(&v, &mut args);
    assert_eq!(r.action, RequestDlpAction::ForwardRedacted);
    assert_eq!(
        args.to_string(),
        r#"{"to":"bob","n":5,"body":"key [REDACTED:AWS Key]!"}"#
    );

    // A redaction that breaks allow_args: `to` must be lowercase letters only.
    for (mode, action, code) in [
        ("block", RequestDlpAction::Block, Some(-32001)),
        ("reject", RequestDlpAction::Block, Some(-32014)),
        ("allow_original", RequestDlpAction::ForwardOriginal, None),
    ] {
        let e = dlp_engine(&format!(
            "    on_request_match: redact\n    on_redaction_failure: {mode}\n"
        ));
        let mut args = json!({"to": "AKIAIOSFODNN7EXAMPLE", "body": "x"});
        let original = args.clone();
        let r = e.scan_request(
            &call(&e, "send", json!({"to": "ok", "body": "x"})),
            &mut args,
        );
        assert_eq!(
            (r.action, r.denial.as_ref().map(|d| d.code)),
            (action, code),
            "{mode}"
        );
        assert_eq!(r.failure_reason, Some("argument_validation_failed"));
        if mode == "allow_original" {
            assert_eq!(args, original);
        }
        if mode == "reject" {
            assert_eq!(r.denial.unwrap().data["dlp_rule"], "AWS Key");
        }
    }
}

#[test]
fn request_dlp_warn_forwards_unchanged() {
    let e = dlp_engine("    on_request_match: warn\n");
    let mut args = json!({"to": "bob", "body": "AKIAIOSFODNN7EXAMPLE"});
    let before = args.clone();
    let r = e.scan_request(&call(&e, "send", args.clone()), &mut args);
    assert_eq!(
        (r.action, r.report.match_count()),
        (RequestDlpAction::ForwardWarned, 1)
    );
    assert_eq!(args, before);
}

#[test]
fn oversize_requests_fail_closed() {
    for (mode, action) in [
        ("block", RequestDlpAction::Block),
        ("redact", RequestDlpAction::Block),
        ("warn", RequestDlpAction::ForwardWarned),
    ] {
        let e = dlp_engine(&format!(
            "    max_scan_size: 64B\n    on_request_match: {mode}\n"
        ));
        let mut args = json!({"to": "bob", "body": "x".repeat(200)});
        let r = e.scan_request(&call(&e, "send", args.clone()), &mut args);
        assert_eq!(
            (r.action, r.failure_reason),
            (action, Some("max_scan_size_exceeded")),
            "{mode}"
        );
        assert!(r.report.truncated);
    }
}

#[test]
fn request_scanning_off_by_default() {
    let e = engine(
        "  allowed_tools: [t]\n  dlp:\n    patterns:\n      - name: k\n        regex: 'AKIA'\n",
    );
    let mut args = json!({"a": "AKIA"});
    assert_eq!(
        e.scan_request(&call(&e, "t", args.clone()), &mut args)
            .action,
        RequestDlpAction::Forward
    );
}

#[test]
fn engine_policy_and_verdicts_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Engine>();
    assert_send_sync::<Policy>();
    assert_send_sync::<ToolVerdict>();
    assert_send_sync::<crate::policy::StderrFilter>();
}
