//! Integration tests: the stdio proxy, through the real `aip` binary and the mock MCP server.
//! Each test asserts what the client receives, what the server received (the mock logs every
//! line it reads) and what the audit log says.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{Driver, aip_bin, audit_records, data, mock_server};

struct Run {
    drv: Driver,
    dir: tempfile::TempDir,
}

impl Run {
    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.jsonl")
    }

    fn server_log(&self) -> PathBuf {
        self.dir.path().join("server-received.jsonl")
    }

    /// Lines the server received, parsed.
    fn received(&self) -> Vec<Value> {
        std::fs::read_to_string(self.server_log())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    fn received_raw(&self) -> String {
        std::fs::read_to_string(self.server_log()).unwrap_or_default()
    }
}

fn start_with(policy: &Path, aip_args: &[&str], mock_args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(aip_bin());
    cmd.arg("run")
        .arg("--no-sandbox")
        .arg("--policy")
        .arg(policy)
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .args(aip_args)
        .arg("--")
        .arg(mock_server())
        .args(mock_args)
        .env("AIP_MOCK_LOG", dir.path().join("server-received.jsonl"));
    Run {
        drv: Driver::spawn(cmd),
        dir,
    }
}

fn start(aip_args: &[&str]) -> Run {
    start_with(&data("policies/proxy.yaml"), aip_args, &[])
}

fn call(id: Value, tool: &str, args: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}})
        .to_string()
}

fn wait_for<F: Fn() -> bool>(what: &str, f: F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn allowed_call_is_forwarded_byte_for_byte_and_answered() {
    let mut r = start(&[]);
    // Odd spacing and key order: what reaches the server must be exactly these bytes.
    let line = r#"{ "params" : {"arguments":{"text":"hi"},"name":"echo"}, "id":1,"jsonrpc":"2.0","method":"tools/call" }"#;
    let reply = r.drv.call(line);
    assert_eq!(reply["result"]["content"][0]["text"], r#"{"text":"hi"}"#);
    assert_eq!(r.received_raw(), format!("{line}\n"));
    let recs = audit_records(&r.audit());
    let rec = recs
        .iter()
        .find(|x| x["tool"] == "echo")
        .expect("decision record");
    assert_eq!(rec["decision"], "ALLOW");
    assert_eq!(rec["direction"], "upstream");
    assert_eq!(rec["request_id"], 1);
    assert_eq!(rec["policy_mode"], "enforce");
}

#[test]
fn blocked_tool_gets_forbidden_with_the_request_id_and_is_never_forwarded() {
    let mut r = start(&[]);
    let reply = r.drv.call(&call(json!(123), "any_tool", json!({})));
    assert_eq!(
        reply,
        json!({"jsonrpc":"2.0","id":123,"error":{"code":-32001,"message":"Forbidden",
               "data":{"tool":"any_tool","reason":"Tool not in allowed_tools list"}}})
    );
    let reply = r.drv.call(&call(
        json!("abc-123"),
        "delete_file",
        json!({"path":"/tmp/x"}),
    ));
    assert_eq!(reply["id"], "abc-123");
    assert_eq!(reply["error"]["code"], -32001);
    r.drv.call(&call(json!(3), "echo", json!({})));
    let got: Vec<String> = r
        .received()
        .iter()
        .map(|m| m["params"]["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, ["echo"]);
}

#[test]
fn argument_and_protected_path_violations_do_not_reveal_the_rule() {
    let mut r = start(&[]);
    let reply = r
        .drv
        .call(&call(json!(1), "read_file", json!({"path":"/etc/passwd"})));
    assert_eq!(reply["error"]["code"], -32001);
    assert!(
        !reply.to_string().contains("^/tmp/"),
        "regex leaked: {reply}"
    );
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    // The argument regex sees the raw string (it matches "^/tmp/"); the protected path sees the
    // cleaned path, so `..` does not get past it.
    let reply = r.drv.call(&call(
        json!(2),
        "read_file",
        json!({"path": format!("/tmp/..{home}/.ssh//id_rsa")}),
    ));
    assert_eq!(reply["error"]["code"], -32007, "{reply}");
    let reply = r.drv.call(&call(
        json!(3),
        "echo",
        json!({"text": format!("cat {home}/.ssh/id_rsa")}),
    ));
    assert_eq!(reply["error"]["code"], -32007, "{reply}");
    assert!(r.received().is_empty());
    let recs = audit_records(&r.audit());
    let rec = recs.iter().find(|x| x["request_id"] == 1).unwrap();
    assert_eq!(rec["failed_arg"], "path");
    assert_eq!(rec["failed_rule"], "^/tmp/");
}

#[test]
fn method_gate_blocks_requests_and_drops_notifications() {
    let mut r = start(&[]);
    let reply = r.drv.call(r#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"file:///etc/passwd"}}"#);
    assert_eq!(reply["error"]["code"], -32006);
    assert_eq!(reply["error"]["data"]["method"], "resources/read");
    r.drv
        .send(r#"{"jsonrpc":"2.0","method":"notifications/resources/secret"}"#);
    r.drv.expect_silence(Duration::from_millis(300));
    // Both eras' handshakes pass with the default method list.
    let reply = r.drv.call(r#"{"jsonrpc":"2.0","id":6,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}"#);
    assert_eq!(reply["result"]["protocolVersion"], "2025-11-25");
    let reply = r.drv.call(r#"{"jsonrpc":"2.0","id":7,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28"}}}"#);
    assert_eq!(reply["result"]["resultType"], "complete");
    r.drv
        .send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    r.drv.call(r#"{"jsonrpc":"2.0","id":8,"method":"ping"}"#);
    let methods: Vec<String> = r
        .received()
        .iter()
        .map(|m| m["method"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        methods,
        [
            "initialize",
            "server/discover",
            "notifications/initialized",
            "ping"
        ]
    );
    let recs = audit_records(&r.audit());
    assert!(
        recs.iter()
            .any(|x| x["method"] == "notifications/resources/secret" && x["decision"] == "BLOCK")
    );
}

#[test]
fn ambiguous_or_malformed_input_is_rejected_and_never_forwarded() {
    let mut r = start(&[]);
    let cases: &[(&str, i64, Value)] = &[
        ("{not json", -32700, Value::Null),
        (
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}]"#,
            -32600,
            Value::Null,
        ),
        (
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list","method":"tools/call","params":{"name":"echo"}}"#,
            -32600,
            json!(2),
        ),
        (
            r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"echo","name":"delete_file"}}"#,
            -32600,
            json!(3),
        ),
        (
            r#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","Name":"delete_file"}}"#,
            -32600,
            json!(4),
        ),
        (
            r#"{"jsonrpc":"2.0","id":5,"Method":"tools/call","method":"ping"}"#,
            -32600,
            json!(5),
        ),
        (
            r#"{"jsonrpc":"2.0","id":6,"method":"tools/call","params":{"name":"echo","arguments":{"text":"a","text":"b"}}}"#,
            -32600,
            json!(6),
        ),
        (
            r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo","arguments":"x"}}"#,
            -32602,
            json!(7),
        ),
    ];
    for (line, code, id) in cases {
        r.drv.send(line);
        let reply = r.drv.recv();
        assert_eq!(reply["error"]["code"], *code, "{line} -> {reply}");
        assert_eq!(reply["id"], *id, "{line} -> {reply}");
    }
    // A tools/call without an id would run unanswered: dropped, audited, no reply.
    r.drv
        .send(r#"{"jsonrpc":"2.0","method":"tools/call","params":{"name":"echo"}}"#);
    r.drv.expect_silence(Duration::from_millis(300));
    assert!(r.received().is_empty(), "forwarded: {}", r.received_raw());
}

/// One call of `tool` to a reader that splits lines at `\n` only; to one that also ends lines
/// at a lone CR (Python's universal newlines), the `inner` request between two fragments.
fn behind_carriage_returns(id: u64, tool: &str, inner: &str) -> String {
    format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":{id},\"method\":\"tools/call\",\"params\":{{\"name\":\"{tool}\",\"arguments\":{{\"x\":\r{inner}\r}}}}}}"
    )
}

#[test]
fn a_carriage_return_inside_a_line_is_rejected_and_never_forwarded() {
    let mut r = start(&[]);
    let smuggled = behind_carriage_returns(1, "echo", &call(json!(2), "delete_file", json!({})));
    serde_json::from_str::<Value>(&smuggled).expect("one valid JSON object");
    r.drv.send(&smuggled);
    let reply = r.drv.recv();
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["error"]["code"], -32600, "{reply}");
    assert!(
        reply["error"]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("carriage return"),
        "{reply}"
    );
    // CRLF framing: a CR right before the newline is one line end, forwarded as it came.
    r.drv.send(&format!(
        "{}\r",
        call(json!(3), "echo", json!({"text": "hi"}))
    ));
    let reply = r.drv.recv();
    assert_eq!(reply["id"], 3, "{reply}");
    assert!(reply["result"].is_object(), "{reply}");
    let received = r.received();
    assert_eq!(received.len(), 1, "forwarded: {}", r.received_raw());
    assert_eq!(received[0]["id"], 3);
    let rejected: Vec<Value> = audit_records(&r.audit())
        .into_iter()
        .filter(|rec| rec["request_id"] == 1)
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["decision"], "BLOCK");
    assert_eq!(rejected[0]["error_code"], -32600);
}

/// The MCP Python SDK reads stdio through `TextIOWrapper` (universal newlines), so a lone CR
/// ends a line for it: before the fix, the smuggled `convert_time` below ran on the real server
/// (its answer came back for an id the proxy never saw, and was dropped) although the policy
/// does not allow the tool at all.
#[test]
fn a_python_server_never_sees_a_call_smuggled_behind_a_carriage_return() {
    let Some(peers) = crate::support::peers_dir() else {
        println!(
            "SKIP a_python_server_never_sees_a_call_smuggled_behind_a_carriage_return: peers not installed (scripts/install-peers.sh)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        dir.path(),
        "time-only.yaml",
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: time-only}\nspec:\n  allowed_tools: [get_current_time]\n",
    );
    let audit = dir.path().join("audit.jsonl");
    let mut cmd = Command::new(aip_bin());
    cmd.arg("run")
        .arg("--no-sandbox")
        .arg("--policy")
        .arg(&policy)
        .arg("--audit")
        .arg(&audit)
        .arg("--")
        .arg(peers.join("py/bin/mcp-server-time"));
    let mut drv = Driver::spawn(cmd);
    drv.send(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"aip-tests","version":"1"}}}"#);
    assert_eq!(drv.recv()["id"], 1);
    drv.send(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
    let smuggled = call(
        json!(2),
        "convert_time",
        json!({"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}),
    );
    // The outer call is allowed: its arguments are not checked against the tool's schema.
    drv.send(&behind_carriage_returns(3, "get_current_time", &smuggled));
    let refused = drv.recv_line(Duration::from_secs(10));
    // The session goes on, and the server answers what it is asked next.
    drv.send(&call(
        json!(4),
        "get_current_time",
        json!({"timezone": "UTC"}),
    ));
    let next = drv.recv_line(Duration::from_secs(10));
    drv.close_stdin();
    drv.wait(Duration::from_secs(15));
    // Had the server run the smuggled call, its answer (id 2) would be in the audit log as a
    // response to no pending request.
    let records = audit_records(&audit);
    assert!(
        records.iter().all(|rec| rec["request_id"] != 2),
        "the server ran the smuggled call: {records:?}"
    );
    let refused: Value = serde_json::from_str(&refused.expect("a reply to id 3")).unwrap();
    assert_eq!(refused["id"], 3, "{refused}");
    assert_eq!(refused["error"]["code"], -32600, "{refused}");
    let next: Value = serde_json::from_str(&next.expect("a reply to id 4")).unwrap();
    assert_eq!(next["id"], 4, "{next}");
    assert_eq!(next["result"]["isError"], false, "{next}");
}

#[test]
fn oversized_lines_get_an_error_and_the_session_goes_on() {
    let mut r = start(&["--max-message-bytes", "4096"]);
    let big = call(json!(9), "echo", json!({"text": "x".repeat(10_000)}));
    r.drv.send(&big);
    let reply = r.drv.recv();
    assert_eq!(reply["error"]["code"], -32600);
    assert_eq!(reply["id"], 9);
    // The server's reply to big_output is over the limit too: an error for that request.
    let reply = r
        .drv
        .call(&call(json!(10), "big_output", json!({"bytes": 20_000})));
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    let reply = r
        .drv
        .call(&call(json!(11), "echo", json!({"text":"small"})));
    assert!(reply["result"].is_object());
}

#[test]
fn tools_list_hides_blocked_tools() {
    let mut r = start(&[]);
    let reply = r
        .drv
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    let names: Vec<&str> = reply["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"));
    assert!(names.contains(&"read_file"), "allowed with argument rules");
    assert!(names.contains(&"write_file"), "ask is callable");
    assert!(!names.contains(&"delete_file"));
    assert!(!names.contains(&"run_command"));
    let mut r = start(&["--no-filter-tools-list"]);
    let reply = r
        .drv
        .call(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#);
    assert_eq!(reply["result"]["tools"].as_array().unwrap().len(), 14);
}

/// A cancellation must not free the id of a request the server has: reusing it would get the
/// server's tools/list answer matched to the new request and delivered unfiltered.
#[test]
fn a_cancelled_request_keeps_its_id_until_the_server_answers() {
    let mut r = start(&[]);
    // One write, so aip decides all three before the server answers the first.
    r.drv.send_raw(
        concat!(
            r#"{"jsonrpc":"2.0","id":5,"method":"tools/list"}"#,
            "\n",
            r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":5}}"#,
            "\n",
            r#"{"jsonrpc":"2.0","id":5,"method":"ping"}"#,
            "\n"
        )
        .as_bytes(),
    );
    let replies = [r.drv.recv(), r.drv.recv()];
    let refused = replies
        .iter()
        .find(|x| x["error"].is_object())
        .unwrap_or_else(|| panic!("the reused id was not refused: {replies:?}"));
    assert_eq!(refused["id"], 5);
    assert!(
        refused["error"]["data"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("already in flight"),
        "{refused}"
    );
    let listing = replies
        .iter()
        .find(|x| x["result"]["tools"].is_array())
        .unwrap_or_else(|| panic!("no listing: {replies:?}"));
    let names: Vec<&str> = listing["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"echo"), "{names:?}");
    assert!(!names.contains(&"run_command"), "unfiltered: {names:?}");
}

/// Server answers DLP could not see into: members beside result/error/params, and a parser
/// error that would quote the server's text. Neither may carry a secret to the client or into
/// the audit log. And a scan cut at `max_scan_size` is recorded.
#[test]
fn dlp_leaves_no_unscanned_path_from_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        dir.path(),
        "dlp.yaml",
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: dlp}\nspec:\n  allowed_tools: [raw_reply, echo]\n  dlp:\n    max_scan_size: 1KB\n    patterns:\n      - {name: AWS Key, regex: \"AKIA[A-Z0-9]{16}\"}\n",
    );
    let mut r = start_with(&policy, &[], &[]);
    let key = "AKIAIOSFODNN7EXAMPLE";
    let raw = |id: u64, line: &str| call(json!(id), "raw_reply", json!({ "line": line }));
    let extra = r.drv.call(&raw(
        1,
        &format!(r#"{{"jsonrpc":"2.0","id":{{id}},"result":{{"content":[]}},"debug":"{key}"}}"#),
    ));
    assert_eq!(extra["error"]["code"], -32603, "{extra}");
    let dup = r.drv.call(&raw(
        2,
        &format!(
            r#"{{"jsonrpc":"2.0","id":{{id}},"result":{{"content":[],"{key}":1,"{key}":2}}}}"#
        ),
    ));
    assert_eq!(dup["error"]["code"], -32603, "{dup}");
    for reply in [&extra, &dup] {
        assert!(!reply.to_string().contains(key), "{reply}");
    }
    // Past max_scan_size the rest goes unscanned, as the spec has it, and that is recorded.
    let long = r.drv.call(&call(
        json!(3),
        "echo",
        json!({"pad": "x".repeat(2048), "k": key}),
    ));
    assert!(long["result"].is_object(), "{long}");
    r.drv.close_stdin();
    r.drv.wait(Duration::from_secs(10));
    let records = audit_records(&r.audit());
    let audit = std::fs::read_to_string(r.audit()).unwrap();
    let leaked: Vec<&str> = audit
        .lines()
        .filter(|l| l.contains(key) && !l.contains("\"pad\""))
        .collect();
    assert!(leaked.is_empty(), "{leaked:?}");
    assert!(
        records
            .iter()
            .any(|x| x["event"] == "DLP_SCAN_TRUNCATED" && x["request_id"] == 3),
        "{records:?}"
    );
}

#[test]
fn dlp_redacts_responses_notifications_and_structured_content() {
    let mut r = start(&[]);
    let reply = r.drv.call(&call(json!(1), "leak_secret", json!({})));
    assert_eq!(
        reply["result"]["content"][0]["text"],
        "key [REDACTED:AWS Key] for [REDACTED:Email]"
    );
    assert_eq!(
        reply["result"]["structuredContent"]["token"],
        "[REDACTED:GitHub Token]"
    );
    assert_eq!(reply["result"]["structuredContent"]["count"], 3);
    r.drv.send(&call(json!(2), "notify", json!({})));
    let mut saw_log = false;
    loop {
        let v = r.drv.recv();
        if v["method"] == "notifications/message" {
            assert_eq!(v["params"]["data"], "secret [REDACTED:AWS Key]");
            saw_log = true;
        }
        if v["id"] == 2 {
            break;
        }
    }
    assert!(saw_log);
    let recs = audit_records(&r.audit());
    assert!(
        recs.iter()
            .any(|x| x["event"] == "DLP_TRIGGERED" && x["dlp_rule"] == "AWS Key")
    );
}

#[test]
fn non_jsonrpc_server_output_goes_to_stderr_not_to_the_client() {
    let mut r = start(&[]);
    let reply = r.drv.call(&call(json!(1), "print_garbage", json!({})));
    assert_eq!(reply["result"]["content"][0]["text"], "printed");
    assert!(
        r.drv
            .wait_stderr("this is not JSON-RPC", Duration::from_secs(5))
            .is_some()
    );
}

#[test]
fn last_line_without_newline_is_delivered_and_exit_code_passes_through() {
    let mut r = start_with(&data("policies/proxy.yaml"), &[], &["--no-final-newline"]);
    r.drv.send(&call(json!(1), "echo", json!({"text":"last"})));
    let reply = r.drv.recv();
    assert_eq!(reply["id"], 1);
    let st = r.drv.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(0));

    let mut r = start(&[]);
    r.drv.send(&call(json!(1), "exit", json!({"code": 7})));
    let st = r.drv.wait(Duration::from_secs(10));
    assert_eq!(st.code(), Some(7));
}

#[test]
fn client_eof_shuts_down_even_a_server_that_ignores_it() {
    let mut r = start_with(
        &data("policies/proxy.yaml"),
        &["--shutdown-grace", "0"],
        &["--ignore-sigterm"],
    );
    r.drv.call(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    r.drv.close_stdin();
    let st = r.drv.wait(Duration::from_secs(15));
    // SIGTERM ignored, so the server was SIGKILLed: 128 + 9.
    assert_eq!(st.code(), Some(137));
}

#[test]
fn sigterm_to_the_proxy_ends_the_session() {
    let mut r = start_with(
        &data("policies/proxy.yaml"),
        &["--shutdown-grace", "0"],
        &["--ignore-eof"],
    );
    r.drv.call(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    let pid = nix::unistd::Pid::from_raw(r.drv.child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let st = r.drv.wait(Duration::from_secs(15));
    assert_eq!(st.code(), Some(128 + 15), "server SIGTERMed by the proxy");
}

#[test]
fn asks_are_answered_without_stalling_other_traffic() {
    // Nobody to ask: -32005 after the timeout, and pings keep flowing meanwhile.
    let mut r = start(&["--approver", "none", "--approval-timeout", "1"]);
    r.drv.send(&call(
        json!(1),
        "write_file",
        json!({"path":"/tmp/a","content":"x"}),
    ));
    let reply = r.drv.recv();
    assert_eq!(reply["error"]["code"], -32005, "{reply}");

    let mut r = start(&["--approver", "deny"]);
    let reply = r
        .drv
        .call(&call(json!(1), "write_file", json!({"path":"/tmp/a"})));
    assert_eq!(reply["error"]["code"], -32004);
    assert_eq!(reply["error"]["message"], "User denied");

    let mut r = start(&["--approver", "approve"]);
    let reply = r
        .drv
        .call(&call(json!(1), "write_file", json!({"path":"/tmp/a"})));
    assert!(reply["result"].is_object(), "{reply}");
    assert_eq!(r.received().len(), 1);
}

/// A stand-in for zenity that records that it ran and never answers (a human who is away).
fn slow_dialog(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let p = bin.join("zenity");
    std::fs::write(
        &p,
        format!("#!/bin/sh\ntouch {}/asked\nexec sleep 60\n", dir.display()),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    bin
}

#[test]
fn a_waiting_ask_does_not_block_pings_and_can_be_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let bin = slow_dialog(dir.path());
    let mut cmd = Command::new(aip_bin());
    cmd.args([
        "run",
        "--no-sandbox",
        "--approver",
        "desktop",
        "--approval-timeout",
        "30",
        "--policy",
    ])
    .arg(data("policies/proxy.yaml"))
    .arg("--audit")
    .arg(dir.path().join("audit.jsonl"))
    .arg("--")
    .arg(mock_server())
    .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
    .env("DISPLAY", ":99")
    .env("AIP_MOCK_LOG", dir.path().join("server.jsonl"));
    let mut drv = Driver::spawn(cmd);
    drv.send(&call(json!(1), "write_file", json!({"path":"/tmp/a"})));
    wait_for("the dialog", || dir.path().join("asked").exists());
    let t0 = Instant::now();
    let reply = drv.call(r#"{"jsonrpc":"2.0","id":2,"method":"ping"}"#);
    assert!(reply["result"].is_object());
    assert!(t0.elapsed() < Duration::from_secs(5));
    drv.send(r#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1,"reason":"user"}}"#);
    drv.expect_silence(Duration::from_millis(500));
    let audit = dir.path().join("audit.jsonl");
    wait_for("cancel audit", || {
        audit_records(&audit)
            .iter()
            .any(|x| x["event"] == "APPROVAL" && x["approval"] == "CANCELLED")
    });
    // Neither the call nor the cancellation reached the server.
    let received = std::fs::read_to_string(dir.path().join("server.jsonl")).unwrap();
    let methods: Vec<String> = received
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["method"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(methods, ["ping"]);
}

#[test]
fn server_requests_and_client_answers_pass_but_stray_answers_do_not() {
    let mut r = start(&[]);
    r.drv.send(&call(json!(1), "ask_client", json!({})));
    let req = r.drv.recv();
    assert_eq!(req["method"], "sampling/createMessage");
    // A stray answer to an id the server never asked about is dropped.
    r.drv
        .send(r#"{"jsonrpc":"2.0","id":"srv-999","result":{"bogus":true}}"#);
    let answer = json!({"jsonrpc":"2.0","id":req["id"],"result":{"role":"assistant","content":{"type":"text","text":"ok"}}});
    r.drv.send(&answer.to_string());
    let reply = r.drv.recv();
    assert_eq!(reply["id"], 1);
    assert!(
        reply["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .contains("assistant")
    );
    assert!(!r.received_raw().contains("bogus"));
    // The answer that was forwarded has its record, like every client message.
    let records = audit_records(&r.audit());
    assert!(
        records
            .iter()
            .any(|x| x["event"] == "CLIENT_ANSWER_FORWARDED" && x["request_id"] == req["id"]),
        "{records:?}"
    );
}

#[test]
fn an_unwritable_audit_log_stops_the_start() {
    let out = Command::new(aip_bin())
        .args(["run", "--no-sandbox", "--policy"])
        .arg(data("policies/proxy.yaml"))
        .args(["--audit", "/dev/full", "--"])
        .arg(mock_server())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("audit"), "{err}");
}

#[test]
fn a_full_disk_blocks_calls_instead_of_forwarding_them_unaudited() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut cmd = Command::new(aip_bin());
    cmd.args(["run", "--no-sandbox", "--policy"])
        .arg(data("policies/proxy.yaml"))
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--")
        .arg(mock_server())
        .env("AIP_MOCK_LOG", &log);
    // A file-size limit makes the audit file "full" after a few records (EFBIG), the way a full
    // disk would; SIGXFSZ is ignored so the write fails instead of killing the proxy.
    let limit_file_size = || -> std::io::Result<()> {
        nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_FSIZE, 1500, 1500)?;
        let ignore = nix::sys::signal::SigAction::new(
            nix::sys::signal::SigHandler::SigIgn,
            nix::sys::signal::SaFlags::empty(),
            nix::sys::signal::SigSet::empty(),
        );
        #[allow(unsafe_code)]
        // SAFETY: installing SIG_IGN runs no handler code.
        unsafe {
            nix::sys::signal::sigaction(nix::sys::signal::Signal::SIGXFSZ, &ignore)?;
        }
        Ok(())
    };
    #[allow(unsafe_code)]
    // SAFETY: the closure runs between fork and exec and only makes async-signal-safe calls
    // (setrlimit, sigaction) without allocating.
    unsafe {
        cmd.pre_exec(limit_file_size);
    }
    let mut drv = Driver::spawn(cmd);
    let mut blocked = None;
    for i in 0..40 {
        let reply = drv.call(&call(json!(i), "echo", json!({"text": "x".repeat(100)})));
        if reply.get("error").is_some() {
            blocked = Some((i, reply));
            break;
        }
    }
    let (i, reply) = blocked.expect("a call was blocked once the audit log was full");
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    assert!(
        reply["error"]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("audit")
    );
    // Every call the server received was audited; the blocked one never reached it.
    let received = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(received.lines().count() as u64, i);
}

#[test]
fn audit_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let mut r = start(&[]);
    r.drv.call(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#);
    let mode = std::fs::metadata(r.audit()).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn monitor_mode_forwards_violations_and_records_them() {
    let mut r = start_with(&data("policies/monitor.yaml"), &[], &[]);
    let reply = r
        .drv
        .call(&call(json!(1), "delete_file", json!({"path":"/tmp/x"})));
    assert!(reply["result"].is_object(), "{reply}");
    let recs = audit_records(&r.audit());
    let rec = recs.iter().find(|x| x["tool"] == "delete_file").unwrap();
    assert_eq!(rec["decision"], "ALLOW_MONITOR");
    assert_eq!(rec["violation"], true);
}

#[test]
fn closed_client_stdout_does_not_crash_the_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(aip_bin())
        .args(["run", "--no-sandbox", "--shutdown-grace", "1", "--policy"])
        .arg(data("policies/proxy.yaml"))
        .arg("--audit")
        .arg(dir.path().join("a.jsonl"))
        .arg("--")
        .arg(mock_server())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut stdin = child.stdin.take().unwrap();
    use std::io::Write;
    for i in 0..50 {
        let _ = writeln!(stdin, "{}", call(json!(i), "echo", json!({})));
    }
    drop(stdin);
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "proxy hung");
        std::thread::sleep(Duration::from_millis(20));
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), None, "proxy died of a signal: {st:?}");
}

#[test]
fn drop_in_flags_split_target_like_a_shell() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let target = format!("{} --ignore-nothing 'quoted arg'", mock_server().display());
    let mut cmd = Command::new(aip_bin());
    cmd.arg("--policy")
        .arg(data("policies/proxy.yaml"))
        .arg("--audit")
        .arg(dir.path().join("a.jsonl"))
        .arg("--target")
        .arg(&target)
        .env("AIP_MOCK_LOG", &log);
    let mut drv = Driver::spawn(cmd);
    let reply = drv.call(&call(json!(1), "echo", json!({"text":"x"})));
    assert!(reply["result"].is_object());

    let out = Command::new(aip_bin())
        .current_dir(dir.path())
        .args([
            "--policy",
            "p.yaml",
            "--target",
            "npx server --flag",
            "--generate-cursor-config",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cfg: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = cfg["mcpServers"]
        .as_object()
        .unwrap()
        .values()
        .next()
        .unwrap();
    let args: Vec<&str> = entry["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let canon = dir.path().canonicalize().unwrap();
    assert!(Path::new(entry["command"].as_str().unwrap()).is_absolute());
    assert_eq!(args[0], "--policy");
    assert!(Path::new(args[1]).starts_with(&canon) || Path::new(args[1]).starts_with(dir.path()));
    assert_eq!(args[2], "--audit");
    assert!(Path::new(args[3]).is_absolute());
    assert_eq!(&args[4..6], ["--target", "npx server --flag"]);
}

/// Writes a policy file into the run's own temporary directory.
fn policy_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn identity_tokens_travel_in_meta_are_single_use_and_never_forwarded() {
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(
        dir.path(),
        "id.yaml",
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: id-test}\nspec:\n  allowed_tools: [echo]\n  identity:\n    enabled: true\n    require_token: true\n",
    );
    let mut r = start_with(&policy, &[], &[]);
    let reply = r.drv.call(&call(json!(1), "echo", json!({"text": "x"})));
    assert_eq!(reply["error"]["code"], -32008, "{reply}");
    assert_eq!(reply["error"]["message"], "Token required");

    let reply = r
        .drv
        .call(r#"{"jsonrpc":"2.0","id":2,"method":"aip/token"}"#);
    let token = reply["result"]["token"]
        .as_str()
        .expect("a token")
        .to_owned();
    assert_eq!(token.split('.').count(), 3, "a compact JWS");

    let with_token = |id: i64, t: &Value| {
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{
            "name":"echo","arguments":{"text":"y"},"_meta":{"aip.io/token": t}}})
        .to_string()
    };
    let reply = r.drv.call(&with_token(3, &json!(token)));
    assert!(reply["result"].is_object(), "{reply}");
    // Replayed: refused.
    let reply = r.drv.call(&with_token(4, &json!(token)));
    assert_eq!(reply["error"]["code"], -32009, "{reply}");
    assert_eq!(reply["error"]["data"]["token_error"], "replay_detected");
    // Not a string: refused as malformed, never forwarded.
    let reply = r.drv.call(&with_token(5, &json!(5)));
    assert_eq!(reply["error"]["data"]["token_error"], "malformed");
    // The server saw exactly one call, without the token or an empty _meta.
    let got = r.received();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        got[0]["params"],
        json!({"name":"echo","arguments":{"text":"y"}})
    );
    assert!(!r.received_raw().contains(&token));
    let recs = audit_records(&r.audit());
    assert!(recs.iter().any(|x| x["event"] == "TOKEN_ISSUED"));
    assert!(
        recs.iter()
            .any(|x| x["event"] == "TOKEN_VALIDATION_FAILED" && x["error"] == "replay_detected")
    );
    assert!(
        !std::fs::read_to_string(r.audit()).unwrap().contains(&token),
        "token logged"
    );
}

fn mock_schema_hash(tool: &str) -> String {
    let out = Command::new(aip_bin())
        .args(["schema-hash", "--json", "--"])
        .arg(mock_server())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .find(|t| t["tool"] == tool)
        .and_then(|t| t["schema_hash"].as_str())
        .unwrap()
        .to_owned()
}

#[test]
fn schema_hash_pins_a_tool_and_a_rug_pull_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let hash = mock_schema_hash("echo");
    let policy = policy_file(
        dir.path(),
        "pin.yaml",
        &format!(
            "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {{name: pin-test}}\nspec:\n  allowed_tools: [echo, rug_pull, ghost]\n  tool_rules:\n    - tool: echo\n      schema_hash: \"{hash}\"\n"
        ),
    );
    let mut r = start_with(&policy, &[], &[]);
    // Not listed yet: a pinned tool cannot be checked, so it is refused.
    let reply = r.drv.call(&call(json!(1), "echo", json!({})));
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    r.drv
        .call(r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#);
    let reply = r.drv.call(&call(json!(3), "echo", json!({})));
    assert!(reply["result"].is_object(), "{reply}");
    // Allowed by the policy but never listed by the server: refused.
    let reply = r.drv.call(&call(json!(4), "ghost", json!({})));
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    assert!(
        reply["error"]["data"]["reason"]
            .as_str()
            .unwrap()
            .contains("tools/list")
    );
    // The server changes echo's description, then lists again.
    r.drv.send(&call(json!(5), "rug_pull", json!({})));
    loop {
        if r.drv.recv()["id"] == 5 {
            break;
        }
    }
    r.drv
        .call(r#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#);
    let reply = r.drv.call(&call(json!(7), "echo", json!({})));
    assert_eq!(reply["error"]["code"], -32013, "{reply}");
    assert_eq!(reply["error"]["data"]["expected_hash"], hash.as_str());
    assert_ne!(reply["error"]["data"]["actual_hash"], hash.as_str());
    let recs = audit_records(&r.audit());
    assert!(
        recs.iter()
            .any(|x| x["event"] == "TOOL_DEFINITION_CHANGED" && x["tool"] == "echo")
    );
}

#[test]
fn a_policy_with_a_bad_signature_is_refused_with_32010() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(aip_bin())
            .current_dir(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&["policy", "keygen", "signer"]);
    let policy = policy_file(
        dir.path(),
        "signed.yaml",
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:\n  name: signed\nspec:\n  allowed_tools: [echo]\n",
    );
    let (private, public) = (dir.path().join("signer.key"), dir.path().join("signer.pub"));
    run(&[
        "policy",
        "sign",
        "--key",
        private.to_str().unwrap(),
        policy.to_str().unwrap(),
    ]);
    let pubkey = public.to_str().unwrap().to_owned();
    // Verified: the session works.
    let mut r = start_with(&policy, &["--policy-pubkey", &pubkey], &[]);
    assert!(r.drv.call(&call(json!(1), "echo", json!({})))["result"].is_object());
    drop(r);
    // Tampered: every request gets -32010 and the server never starts.
    let text = std::fs::read_to_string(&policy)
        .unwrap()
        .replace("[echo]", "[echo, delete_file]");
    std::fs::write(&policy, text).unwrap();
    let mut r = start_with(&policy, &["--policy-pubkey", &pubkey], &[]);
    let reply = r.drv.call(&call(json!(1), "echo", json!({})));
    assert_eq!(reply["error"]["code"], -32010, "{reply}");
    assert_eq!(reply["error"]["message"], "Policy signature invalid");
    r.drv.close_stdin();
    assert_eq!(r.drv.wait(Duration::from_secs(10)).code(), Some(2));
    assert!(r.received().is_empty());
}

/// An `aip server` on a free loopback port, killed on drop.
struct ValidationServer {
    child: std::process::Child,
    port: u16,
}

impl ValidationServer {
    fn start(policy: &Path) -> ValidationServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(aip_bin())
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--policy",
            ])
            .arg(policy)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        wait_for("the validation server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        ValidationServer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/v1/validate", self.port)
    }
}

impl Drop for ValidationServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_remote_validation_server_must_also_allow_each_call() {
    let dir = tempfile::tempdir().unwrap();
    let central = policy_file(
        dir.path(),
        "central.yaml",
        "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {name: central}\nspec:\n  allowed_tools: [echo]\n",
    );
    let local = |failover: &str| {
        policy_file(
            dir.path(),
            &format!("local-{failover}.yaml"),
            &format!(
                "apiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata: {{name: local}}\nspec:\n  allowed_tools: [echo, delete_file]\n  server:\n    failover_mode: {failover}\n    timeout: 2s\n"
            ),
        )
    };
    let server = ValidationServer::start(&central);
    let mut r = start_with(
        &local("fail_closed"),
        &["--validation-server", &server.url()],
        &[],
    );
    let reply = r.drv.call(&call(json!(1), "echo", json!({"text": "hi"})));
    assert!(reply["result"].is_object(), "{reply}");
    // Allowed locally, refused centrally.
    let reply = r
        .drv
        .call(&call(json!(2), "delete_file", json!({"path": "/tmp/x"})));
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    assert_eq!(
        reply["error"]["data"]["reason"],
        "Tool not in allowed_tools list"
    );
    // Pings are not stalled by a call waiting for the server.
    r.drv.call(r#"{"jsonrpc":"2.0","id":3,"method":"ping"}"#);
    let recs = audit_records(&r.audit());
    assert!(
        recs.iter()
            .any(|x| x["event"] == "REMOTE_VALIDATION" && x["tool"] == "delete_file")
    );
    drop(r);

    // The server is gone: fail_closed refuses, local_policy falls back to the local policy.
    let url = server.url();
    drop(server);
    let mut r = start_with(&local("fail_closed"), &["--validation-server", &url], &[]);
    let reply = r.drv.call(&call(json!(1), "echo", json!({})));
    assert_eq!(reply["error"]["code"], -32001, "{reply}");
    assert_eq!(reply["error"]["data"]["reason"], "validation_unavailable");
    let mut r = start_with(&local("local_policy"), &["--validation-server", &url], &[]);
    let reply = r
        .drv
        .call(&call(json!(1), "delete_file", json!({"path": "/tmp/x"})));
    assert!(reply["result"].is_object(), "{reply}");
    let recs = audit_records(&r.audit());
    assert!(
        recs.iter()
            .any(|x| x["event"] == "REMOTE_VALIDATION" && x["failover_mode"] == "local_policy")
    );
}

#[test]
fn a_server_answer_that_cannot_be_scanned_is_not_forwarded() {
    // A "server" whose answer hides a second, secret value under a duplicate key.
    let dir = tempfile::tempdir().unwrap();
    let server = dir.path().join("dup.sh");
    std::fs::write(
        &server,
        "#!/bin/sh\nread -r line\nprintf '%s\\n' '{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"content\":[{\"type\":\"text\",\"text\":\"fine\",\"text\":\"AKIAIOSFODNN7EXAMPLE\"}]}}'\nsleep 5\n",
    )
    .unwrap();
    std::fs::set_permissions(&server, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut cmd = Command::new(aip_bin());
    cmd.args(["run", "--no-sandbox", "--policy"])
        .arg(data("policies/proxy.yaml"))
        .arg("--audit")
        .arg(dir.path().join("audit.jsonl"))
        .arg("--")
        .arg(&server);
    let mut drv = Driver::spawn(cmd);
    let reply = drv.call(&call(json!(1), "echo", json!({})));
    assert_eq!(reply["error"]["code"], -32603, "{reply}");
    assert!(!reply.to_string().contains("AKIA"));
}

mod forwarded_is_evaluated {
    //! Property: every line the server receives is byte-identical to a line the client sent, and
    //! that line, parsed strictly and evaluated by the same engine, is allowed. Lines the strict
    //! parser refuses never reach the server. Runs the real `proxy::run` in process.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::sync::{Arc, Mutex};

    use aip::approval::NoApprover;
    use aip::audit::MemorySink;
    use aip::jsonrpc::{Kind, Origin, parse};
    use aip::policy::{Engine, EvalContext, load_str};
    use aip::proxy::{
        self, ProxyConfig, ServerExit, ServerProcess, Session, SessionHandle, Streams,
    };
    use proptest::prelude::*;

    const POLICY: &str = "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata: {name: prop}\nspec:\n  allowed_tools: [echo]\n  tool_rules:\n    - tool: read\n      allow_args: {path: '^/tmp/'}\n";

    /// A server that only reads: it records every line and exits at end of input.
    struct Recorder(Mutex<Option<std::thread::JoinHandle<Vec<String>>>>);

    impl ServerProcess for Recorder {
        fn terminate(&self) {}
        fn kill(&self) {}
        fn wait(&self) -> std::io::Result<ServerExit> {
            loop {
                if self
                    .0
                    .lock()
                    .unwrap()
                    .as_ref()
                    .is_none_or(|h| h.is_finished())
                {
                    return Ok(ServerExit::Code(0));
                }
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
    }

    fn engine() -> Engine {
        Engine::new(
            Arc::new(load_str(POLICY, "prop.yaml").unwrap()),
            EvalContext::new("/tmp"),
        )
    }

    fn allowed(engine: &Engine, line: &str) -> bool {
        let Ok(mut m) = parse(line.as_bytes(), Origin::Client) else {
            return false;
        };
        if !matches!(m.kind, Kind::Request | Kind::Notification) {
            return false;
        }
        let gate = engine.check_method(m.method.as_deref().unwrap_or_default());
        if !gate.allowed() {
            return false;
        }
        if !gate.is_tools_call() {
            return true;
        }
        let Some(Ok(params)) = m.params.as_mut().map(|p| p.decode().cloned()) else {
            return false;
        };
        let name = params
            .get("name")
            .and_then(|n| n.as_str())
            .unwrap_or_default();
        m.id.is_some()
            && engine
                .check_tool_call(name, params.get("arguments"))
                .forwards()
    }

    fn run(lines: &[String]) -> Vec<String> {
        let (client_read, mut to_proxy) = std::io::pipe().unwrap();
        let (mut from_proxy, client_write) = std::io::pipe().unwrap();
        let (server_read, server_write) = std::io::pipe().unwrap();
        let (server_out_read, server_out_write) = std::io::pipe().unwrap();
        // The server's stdout stays open (and silent) until it has read all its input.
        let recorder = std::thread::spawn(move || {
            let got = BufReader::new(server_read)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<_>>();
            drop(server_out_write);
            got
        });
        let server = Arc::new(Recorder(Mutex::new(Some(recorder))));
        let session = Session {
            config: ProxyConfig {
                shutdown_grace: std::time::Duration::from_millis(50),
                ..ProxyConfig::default()
            },
            engine: Arc::new(engine()),
            audit: Arc::new(MemorySink::default()),
            approver: Arc::new(NoApprover),
            session_id: "prop".into(),
            identity: None,
            remote: None,
        };
        let server_out: Box<dyn Read + Send> = Box::new(server_out_read);
        let streams = Streams {
            client_in: Box::new(client_read),
            client_out: Box::new(client_write),
            server_in: Box::new(server_write),
            server_out,
            server_err: None,
            diagnostics: Box::new(std::io::sink()),
        };
        let srv = Arc::clone(&server);
        let proxy = std::thread::spawn(move || {
            proxy::run(session, streams, srv, &SessionHandle::new(), false)
        });
        for l in lines {
            to_proxy.write_all(l.as_bytes()).unwrap();
            to_proxy.write_all(b"\n").unwrap();
        }
        drop(to_proxy);
        let mut sink = Vec::new();
        let _ = from_proxy.read_to_end(&mut sink);
        proxy.join().unwrap();
        let handle = server.0.lock().unwrap().take().unwrap();
        handle.join().unwrap()
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("jsonrpc".to_string()),
            Just("id".to_string()),
            Just("method".to_string()),
            Just("params".to_string()),
            Just("Method".to_string()),
            Just("ID".to_string()),
            Just("extra".to_string()),
        ]
    }

    fn value_for(key: &str) -> BoxedStrategy<String> {
        match key {
            "jsonrpc" => {
                prop_oneof![Just("\"2.0\"".to_string()), Just("\"1.0\"".to_string())].boxed()
            }
            "id" | "ID" => prop_oneof![
                (0u32..5).prop_map(|i| i.to_string()),
                Just("\"a\"".to_string()),
                Just("null".to_string())
            ]
            .boxed(),
            "method" | "Method" => prop_oneof![
                Just("\"tools/call\"".to_string()),
                Just("\"TOOLS/CALL\"".to_string()),
                Just("\"ping\"".to_string()),
                Just("\"resources/read\"".to_string()),
                Just("\"tools/list\"".to_string())
            ]
            .boxed(),
            "params" => prop_oneof![
                Just(r#"{"name":"echo"}"#.to_string()),
                Just(r#"{"name":"read","arguments":{"path":"/tmp/x"}}"#.to_string()),
                Just(r#"{"name":"read","arguments":{"path":"/etc/passwd"}}"#.to_string()),
                Just(
                    r#"{"name":"read","arguments":{"path":"/tmp/x","path":"/etc/passwd"}}"#
                        .to_string()
                ),
                Just(r#"{"name":"echo","name":"delete"}"#.to_string()),
                Just(r#"{"name":"echo","Name":"delete"}"#.to_string()),
                Just(r#"{"name":"delete"}"#.to_string()),
                Just(r#"[1,2]"#.to_string())
            ]
            .boxed(),
            _ => Just("1".to_string()).boxed(),
        }
    }

    fn line() -> impl Strategy<Value = String> {
        prop::collection::vec(
            key().prop_flat_map(|k| value_for(&k).prop_map(move |v| (k.clone(), v))),
            1..6,
        )
        .prop_flat_map(|pairs| {
            let n = pairs.len();
            (
                Just(pairs),
                prop::collection::vec(prop_oneof![Just(""), Just(" ")], n),
            )
        })
        .prop_map(|(pairs, spaces)| {
            let body: Vec<String> = pairs
                .iter()
                .zip(spaces)
                .map(|((k, v), sp)| format!("{sp}\"{k}\"{sp}:{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        })
    }

    #[test]
    fn the_harness_forwards_what_it_should() {
        let ok_call = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo"}}"#;
        let ping = r#"{ "method" : "ping", "jsonrpc":"2.0", "id":"a" }"#;
        let dup = r#"{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"echo","name":"delete"}}"#;
        let bad_path = r#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"read","arguments":{"path":"/etc/passwd"}}}"#;
        let lines: Vec<String> = [ok_call, ping, dup, bad_path].map(String::from).to_vec();
        assert_eq!(run(&lines), vec![ok_call.to_string(), ping.to_string()]);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]
        #[test]
        fn only_allowed_lines_reach_the_server_byte_for_byte(lines in prop::collection::vec(line(), 1..30)) {
            let engine = engine();
            let received = run(&lines);
            for r in &received {
                prop_assert!(lines.contains(r), "server got a line the client never sent: {}", r);
                prop_assert!(allowed(&engine, r), "server got a line the engine refuses: {}", r);
            }
            // And every allowed request with a unique id got through (ids may repeat in the
            // generated input; a repeated in-flight id is refused by design).
            let mut seen_ids = std::collections::HashSet::new();
            for l in &lines {
                if allowed(&engine, l) {
                    let id = serde_json::from_str::<serde_json::Value>(l).ok().and_then(|v| v.get("id").cloned());
                    let unique = id.as_ref().is_none_or(|i| seen_ids.insert(i.to_string()));
                    if unique && id.is_none() {
                        prop_assert!(received.contains(l), "allowed notification not forwarded: {}", l);
                    }
                }
            }
        }
    }
}
