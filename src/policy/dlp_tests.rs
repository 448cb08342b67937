//! Unit tests of DLP: the vector algorithm, JSON redaction, scopes, encodings, size bounds and
//! the streaming stderr filter.

use pretty_assertions::assert_eq;
use serde_json::json;

use super::*;
use crate::policy::load_str;
use crate::policy::stderr_filter::OVERLAP;

fn dlp(body: &str) -> Dlp {
    let text = format!(
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n  dlp:\n{body}"
    );
    let p = load_str(&text, "t.yaml").unwrap_or_else(|e| panic!("{e}"));
    p.dlp().cloned().unwrap()
}

const AWS: &str = "    patterns:\n      - name: AWS Key\n        regex: 'AKIA[A-Z0-9]{16}'\n";

fn hits(r: &Redaction) -> Vec<(String, usize)> {
    r.hits.iter().map(|h| (h.rule.clone(), h.count)).collect()
}

#[test]
fn patterns_apply_in_order_on_the_previous_output() {
    let d = dlp(
        "    patterns:\n      - name: Email\n        regex: '[a-z]+@[a-z]+\\.[a-z]{2,}'\n      - name: SSN\n        regex: '\\b\\d{3}-\\d{2}-\\d{4}\\b'\n      - name: Marker\n        regex: 'REDACTED:Email'\n",
    );
    let (out, r) = d.redact_str(
        "User: alice@test.com, SSN: 123-45-6789, bob@x.org",
        Direction::Response,
    );
    // The third pattern sees the first one's markers: order is observable, as specified.
    assert_eq!(
        out,
        "User: [[REDACTED:Marker]], SSN: [REDACTED:SSN], [[REDACTED:Marker]]"
    );
    assert_eq!(
        hits(&r),
        vec![("Email".into(), 2), ("SSN".into(), 1), ("Marker".into(), 2)]
    );
}

#[test]
fn clean_text_is_borrowed_and_unreported() {
    let d = dlp(AWS);
    let (out, r) = d.redact_str("nothing here", Direction::Response);
    assert!(matches!(out, Cow::Borrowed(_)));
    assert_eq!(
        r,
        Redaction {
            total_bytes: 12,
            ..Redaction::default()
        }
    );
    assert!(!d.may_match("nothing here", Direction::Response));
}

#[test]
fn json_values_are_redacted_in_place_without_touching_other_fields() {
    let d = dlp(AWS);
    let mut v = json!({
        "content": [{"type": "text", "text": "key AKIAIOSFODNN7EXAMPLE"}],
        "structuredContent": {"n": 1.5, "ok": true, "deep": [null, {"k": "AKIAIOSFODNN7EXAMPLE"}]},
        "isError": false
    });
    let r = d.redact_value(&mut v, Direction::Response);
    assert_eq!(
        v.to_string(),
        r#"{"content":[{"type":"text","text":"key [REDACTED:AWS Key]"}],"structuredContent":{"n":1.5,"ok":true,"deep":[null,{"k":"[REDACTED:AWS Key]"}]},"isError":false}"#
    );
    assert_eq!(hits(&r), vec![("AWS Key".into(), 2)]);
}

#[test]
fn object_keys_are_redacted_and_order_kept() {
    let d = dlp(AWS);
    let mut v = json!({"a": 1, "AKIAIOSFODNN7EXAMPLE": 2, "AKIAIOSFODNN7EXAMPLF": 3, "z": 4});
    d.redact_value(&mut v, Direction::Response);
    assert_eq!(
        v.to_string(),
        r#"{"a":1,"[REDACTED:AWS Key]":2,"[REDACTED:AWS Key]#2":3,"z":4}"#
    );
}

#[test]
fn scopes_select_the_direction() {
    let d = dlp(
        "    scan_requests: true\n    patterns:\n      - name: Req\n        regex: 'REQ[0-9]'\n        scope: request\n      - name: Resp\n        regex: 'RESP[0-9]'\n        scope: response\n      - name: Both\n        regex: 'BOTH[0-9]'\n",
    );
    let (out, _) = d.redact_str("REQ1 RESP2 BOTH3", Direction::Request);
    assert_eq!(out, "[REDACTED:Req] RESP2 [REDACTED:Both]");
    let (out, _) = d.redact_str("REQ1 RESP2 BOTH3", Direction::Response);
    assert_eq!(out, "REQ1 [REDACTED:Resp] [REDACTED:Both]");
}

#[test]
fn disabled_or_unscanned_directions_change_nothing() {
    let off = dlp(&format!("    enabled: false\n{AWS}"));
    let mut v = json!({"t": "AKIAIOSFODNN7EXAMPLE"});
    assert!(!off.redact_value(&mut v, Direction::Response).matched());
    assert_eq!(v["t"], "AKIAIOSFODNN7EXAMPLE");
    let no_resp = dlp(&format!("    scan_responses: false\n{AWS}"));
    assert!(
        !no_resp
            .redact_str("AKIAIOSFODNN7EXAMPLE", Direction::Response)
            .1
            .matched()
    );
    // Requests are not scanned unless scan_requests.
    assert!(
        !dlp(AWS)
            .redact_str("AKIAIOSFODNN7EXAMPLE", Direction::Request)
            .1
            .matched()
    );
    assert!(off.stderr_filter().is_none());
}

#[test]
fn encoded_secrets_are_found_and_the_whole_token_redacted() {
    use base64::Engine as _;
    let d = dlp(&format!("    detect_encoding: true\n{AWS}"));
    let b64 = base64::engine::general_purpose::STANDARD.encode("aws_key=AKIAIOSFODNN7EXAMPLE");
    let hexed = hex::encode("AKIAIOSFODNN7EXAMPLE");
    let text = format!("a {b64} b {hexed} c");
    let (out, r) = d.redact_str(&text, Direction::Response);
    assert_eq!(out, "a [REDACTED:AWS Key] b [REDACTED:AWS Key] c");
    assert_eq!(hits(&r), vec![("AWS Key".into(), 2)]);
    // Harmless encoded text stays.
    let benign = base64::engine::general_purpose::STANDARD.encode("hello world, nothing secret");
    assert_eq!(d.redact_str(&benign, Direction::Response).0, benign);
    // Without detect_encoding the encoded secret passes (documented behaviour).
    assert_eq!(dlp(AWS).redact_str(&b64, Direction::Response).0, b64);
}

#[test]
fn max_scan_size_bounds_the_scan_and_reports_truncation() {
    let d = dlp(&format!("    max_scan_size: 32B\n{AWS}"));
    let text = format!(
        "AKIAIOSFODNN7EXAMPLE {} AKIAIOSFODNN7EXAMPLE",
        "x".repeat(40)
    );
    let (out, r) = d.redact_str(&text, Direction::Response);
    assert!(out.starts_with("[REDACTED:AWS Key] "));
    assert!(out.ends_with(" AKIAIOSFODNN7EXAMPLE"));
    assert!(r.truncated);
    // Across a JSON value the budget is shared.
    let mut v = json!([
        "AKIAIOSFODNN7EXAMPLE",
        "0123456789abcdef",
        "AKIAIOSFODNN7EXAMPLE"
    ]);
    let r = d.redact_value(&mut v, Direction::Response);
    assert!(r.truncated);
    assert_eq!(v[0], "[REDACTED:AWS Key]");
    assert_eq!(v[2], "AKIAIOSFODNN7EXAMPLE");
}

#[test]
fn truncation_never_splits_a_character() {
    let d = dlp(&format!("    max_scan_size: 3B\n{AWS}"));
    let (out, r) = d.redact_str("ééé", Direction::Response);
    assert_eq!(out, "ééé");
    assert!(r.truncated);
}

fn filter(max_line: usize) -> StderrFilter {
    dlp(&format!("    filter_stderr: true\n{AWS}"))
        .stderr_filter()
        .unwrap()
        .with_max_line(max_line)
}

#[test]
fn stderr_secrets_split_across_chunks_are_redacted() {
    let mut f = filter(64 * 1024);
    let mut out = Vec::new();
    for chunk in [
        "log: AKIAIOSF",
        "ODNN7EXA",
        "MPLE done\nnext ",
        "line\nAKIAIOSFODNN7EXAMPLE",
    ] {
        out.extend(f.push(chunk.as_bytes()));
    }
    assert_eq!(
        String::from_utf8_lossy(&out),
        "log: [REDACTED:AWS Key] done\nnext line\n"
    );
    out.extend(f.finish());
    assert_eq!(
        String::from_utf8_lossy(&out),
        "log: [REDACTED:AWS Key] done\nnext line\n[REDACTED:AWS Key]"
    );
    assert_eq!(f.redactions(), 2);
}

#[test]
fn stderr_passes_non_utf8_and_clean_bytes_unchanged() {
    let mut f = filter(64 * 1024);
    let raw = b"\xff\xfe binary \x00 line\n".to_vec();
    assert_eq!(f.push(&raw), raw);
}

#[test]
fn stderr_long_lines_are_flushed_without_splitting_a_secret() {
    let mut f = filter(2 * OVERLAP);
    let mut out = Vec::new();
    // Put the secret across the first forced-flush cut (at max_line - OVERLAP).
    let prefix = "p".repeat(2 * OVERLAP - OVERLAP - 10);
    let line = format!("{prefix}AKIAIOSFODNN7EXAMPLE{}\n", "s".repeat(3 * OVERLAP));
    for chunk in line.as_bytes().chunks(1000) {
        out.extend(f.push(chunk));
        assert!(f.held() <= 2 * OVERLAP + 1000);
    }
    out.extend(f.finish());
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text,
        line.replace("AKIAIOSFODNN7EXAMPLE", "[REDACTED:AWS Key]")
    );
}

#[test]
fn server_messages_are_redacted_everywhere_but_the_envelope() {
    let d = dlp(AWS);
    let mut m = json!({"jsonrpc": "2.0", "id": "AKIAIOSFODNN7EXAMPLE", "error": {"code": -32000,
        "message": "bad key AKIAIOSFODNN7EXAMPLE", "data": {"k": "AKIAIOSFODNN7EXAMPLE"}}});
    let r = d.redact_server_message(&mut m);
    assert_eq!(r.match_count(), 2);
    assert_eq!(m["id"], "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(m["error"]["message"], "bad key [REDACTED:AWS Key]");
    let mut n = json!({"jsonrpc": "2.0", "method": "notifications/message",
        "params": {"level": "info", "data": "AKIAIOSFODNN7EXAMPLE"}});
    d.redact_server_message(&mut n);
    assert_eq!(n["params"]["data"], "[REDACTED:AWS Key]");
    assert_eq!(n["method"], "notifications/message");
}

#[test]
fn scan_value_reports_without_changing_and_counts_size() {
    let d = dlp(&format!(
        "    scan_requests: true\n    max_scan_size: 16B\n{AWS}"
    ));
    let v = json!({"a": "short"});
    let r = d.scan_value(&v, Direction::Request);
    assert_eq!((r.matched(), r.truncated, r.total_bytes), (false, false, 6));
    let v = json!({"a": "AKIAIOSFODNN7EXAMPLE"});
    let r = d.scan_value(&v, Direction::Request);
    assert!(r.truncated);
    assert_eq!(v["a"], "AKIAIOSFODNN7EXAMPLE");
}
