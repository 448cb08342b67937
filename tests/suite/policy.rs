//! Integration tests: policy. Runs the real `aip` binary: `aip policy check` (effective policy,
//! located errors, exit codes) and `aip conformance` on the official vectors, on the project's
//! own vectors, and on deliberately wrong vectors (which must fail, never pass hollowly).

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{aip_bin, conformance_dir, repo_root};

#[allow(clippy::expect_used)]
fn aip(args: &[&str]) -> Output {
    Command::new(aip_bin())
        .args(args)
        .output()
        .expect("run aip")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[allow(clippy::unwrap_used)]
fn write(dir: &Path, name: &str, body: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p.to_string_lossy().into_owned()
}

const GOOD: &str = "apiVersion: aip.io/v1alpha2
kind: AgentPolicy
metadata:
  name: demo
spec:
  allowed_tools: [Read_File, list_directory]
  protected_paths: [~/.ssh]
  tool_rules:
    - tool: write_file
      action: ask
      allow_args:
        path: '^/srv/data/'
  dlp:
    scan_requests: true
    patterns:
      - name: AWS Key
        regex: 'AKIA[A-Z0-9]{16}'
";

#[test]
fn policy_check_prints_the_effective_policy_and_exits_0() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.yaml", GOOD);
    let out = aip(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    for needle in [
        "mode: enforce",
        "- read_file",
        "- server/discover",
        "strict_args: false",
        "on_request_match: block",
        "max_scan_size: 1MB",
        "scope: all",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("valid aip.io/v1alpha2 policy `demo`"),
        "{stderr}"
    );
    assert!(stderr.contains("protected: ~/.ssh -> "), "{stderr}");
    assert!(
        stderr.contains(&format!("protected: {file}")),
        "the policy file itself is protected: {stderr}"
    );

    // The effective policy is itself a valid policy with the same meaning.
    let eff = write(dir.path(), "effective.yaml", &stdout);
    let again = aip(&["policy", "check", &eff]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again.stderr));
}

#[test]
fn policy_check_json_is_machine_readable() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "p.yaml", GOOD);
    let out = aip(&["policy", "check", "--format", "json", &file]);
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(v["spec"]["tool_rules"][0]["tool"], "write_file");
    assert_eq!(v["spec"]["tool_rules"][0]["action"], "ask");
    assert_eq!(v["spec"]["dlp"]["patterns"][0]["scope"], "all");
}

#[test]
fn policy_check_reports_file_line_column_field_and_hint_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "bad.yaml",
        "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: demo\nspec:\n  allowed_tools: [a]\n  protected_path:\n    - ~/.ssh\n",
    );
    let out = aip(&["policy", "check", &file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(out.stdout.is_empty());
    assert_eq!(
        text(&out.stderr),
        format!(
            "aip: {file}:7:3: field spec.protected_path: unknown field `protected_path`\n  hint: did you mean `protected_paths`?\n"
        )
    );
}

#[test]
fn policy_check_refuses_unreadable_and_oversized_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.yaml");
    let out = aip(&["policy", "check", &missing.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("cannot read the policy"));
    let out = aip(&["policy", "check", &dir.path().to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("not a regular file"));
    let big = write(
        dir.path(),
        "big.yaml",
        &format!("# {}\n", "x".repeat(2 << 20)),
    );
    let out = aip(&["policy", "check", &big]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("larger than"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn official_basic_and_full_vectors_all_pass() {
    let dir = conformance_dir();
    if !dir.join("basic").is_dir() {
        println!(
            "skipped: official vectors not found at {} (set AIP_CONFORMANCE_DIR)",
            dir.display()
        );
        return;
    }
    let out = aip(&[
        "conformance",
        &dir.to_string_lossy(),
        "--level",
        "basic",
        "--level",
        "full",
    ]);
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some("65 passed, 0 failed"),
        "{stdout}"
    );
    assert_eq!(
        stdout.lines().filter(|l| l.starts_with("PASS ")).count(),
        65
    );
    assert!(
        stdout.contains("PASS basic/errors.yaml err-020 "),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(0));
}

#[test]
fn official_identity_and_server_levels_fail_loudly_until_implemented() {
    let dir = conformance_dir();
    if !dir.join("identity").is_dir() {
        println!(
            "skipped: official vectors not found at {} (set AIP_CONFORMANCE_DIR)",
            dir.display()
        );
        return;
    }
    let out = aip(&["conformance", &dir.to_string_lossy(), "--level", "identity"]);
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    if last.starts_with("0 passed") {
        assert!(stdout.contains("not implemented"), "{stdout}");
        assert_eq!(out.status.code(), Some(1));
    }
}

#[test]
fn project_vectors_pass() {
    let dir = repo_root().join("tests/vectors");
    let out = aip(&["conformance", &dir.to_string_lossy()]);
    let stdout = text(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_owned();
    assert!(last.ends_with(" passed, 0 failed"), "{stdout}");
    let passed: usize = last.split(' ').next().unwrap().parse().unwrap();
    assert!(passed >= 90, "{last}");
    for file in [
        "load-errors.yaml",
        "rate-limits.yaml",
        "ask.yaml",
        "protected-paths.yaml",
        "dlp-requests.yaml",
    ] {
        assert!(
            stdout.contains(&format!("PASS {file} ")),
            "no test from {file} ran"
        );
    }
    assert_eq!(out.status.code(), Some(0));
}

const POLICY: &str = "    policy: |\n      apiVersion: aip.io/v1alpha1\n      kind: AgentPolicy\n      metadata: {name: t}\n      spec:\n        allowed_tools: [a]\n";

#[test]
fn wrong_expectations_fail_and_unknown_shapes_never_pass() {
    let dir = tempfile::tempdir().unwrap();
    let tests = [
        // Wrong decision.
        format!(
            "  - id: w-1\n    description: d\n{POLICY}    input: {{method: tools/call, tool: b, args: {{}}}}\n    expected: {{decision: ALLOW}}\n"
        ),
        // Right decision, wrong violation flag.
        format!(
            "  - id: w-2\n    description: d\n{POLICY}    input: {{method: tools/call, tool: b, args: {{}}}}\n    expected: {{decision: BLOCK, violation: false}}\n"
        ),
        // Wrong error data.
        format!(
            "  - id: w-3\n    description: d\n{POLICY}    input: {{method: tools/call, tool: b, args: {{}}}}\n    expected: {{error_data: {{tool: c}}}}\n"
        ),
        // An expectation the runner does not know.
        format!(
            "  - id: w-4\n    description: d\n{POLICY}    input: {{method: tools/call, tool: a, args: {{}}}}\n    expected: {{decision: ALLOW, token_generated: true}}\n"
        ),
        // An ask answered while the engine does not ask.
        format!(
            "  - id: w-5\n    description: d\n{POLICY}    input: {{method: tools/call, tool: a, args: {{}}, context: {{user_response: deny}}}}\n    expected: {{decision: BLOCK}}\n"
        ),
        // A load_error test whose policy loads.
        format!(
            "  - id: w-6\n    description: d\n{POLICY}    expected: {{load_error: {{field: spec}}}}\n"
        ),
        // An unknown shape.
        format!(
            "  - id: w-7\n    description: d\n{POLICY}    http_request: {{method: GET, path: /health}}\n    expected: {{http_status: 200}}\n"
        ),
    ];
    write(
        dir.path(),
        "wrong.yaml",
        &format!("tests:\n{}", tests.concat()),
    );
    let out = aip(&["conformance", &dir.path().to_string_lossy()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        stdout.lines().last(),
        Some("0 passed, 7 failed"),
        "{stdout}"
    );
    assert!(
        stdout.contains("FAIL wrong.yaml w-1 d: expected decision \"ALLOW\" got \"BLOCK\""),
        "{stdout}"
    );
    assert!(
        stdout.contains("unsupported expectation `token_generated`"),
        "{stdout}"
    );
    assert!(
        stdout.contains("expected the policy to be rejected"),
        "{stdout}"
    );
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn conformance_on_a_directory_without_vectors_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = aip(&["conformance", &dir.path().to_string_lossy()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("no vector files found"),
        "{}",
        text(&out.stderr)
    );
    let out = aip(&[
        "conformance",
        &dir.path().to_string_lossy(),
        "--level",
        "basic",
    ]);
    assert_eq!(out.status.code(), Some(2));
}
