//! Engine decision time for a typical policy (allowlist, rules with argument regexes, protected
//! paths, DLP): `cargo bench --bench policy_eval`. Measures only; the numbers go into README.

use std::path::PathBuf;
use std::sync::Arc;

use aip::policy::{Direction, Engine, EvalContext, Policy, load_str, normalize};
use divan::{Bencher, black_box};
use serde_json::{Value, json};

fn main() {
    divan::main();
}

const POLICY: &str = r#"
apiVersion: aip.io/v1alpha2
kind: AgentPolicy
metadata:
  name: typical
spec:
  allowed_tools: [read_file, read_multiple_files, list_directory, directory_tree, search_files,
                  get_file_info, list_allowed_directories, get_current_time, convert_time]
  protected_paths: [~/.ssh, ~/.aws, ~/.gnupg, /etc/shadow, .env]
  tool_rules:
    - tool: write_file
      action: ask
      allow_args:
        path: '^/srv/data/'
    - tool: fetch
      rate_limit: 600/minute
      allow_args:
        url: '^https://(github\.com|docs\.rs)/'
    - tool: query
      strict_args: true
      allow_args:
        sql: '^SELECT\s'
        limit: '^\d{1,4}$'
    - tool: run_command
      action: block
  dlp:
    patterns:
      - {name: AWS Key, regex: 'AKIA[A-Z0-9]{16}'}
      - {name: GitHub Token, regex: 'ghp_[a-zA-Z0-9]{36}'}
      - {name: Private Key, regex: '-----BEGIN (RSA |EC |OPENSSH )?PRIVATE KEY-----'}
      - {name: Email, regex: '[a-zA-Z0-9._%+-]+@[a-zA-Z0-9.-]+\.[a-zA-Z]{2,}'}
"#;

struct Fixture {
    engine: Engine,
    existing: String,
}

fn policy() -> Arc<Policy> {
    Arc::new(load_str(POLICY, "bench.yaml").unwrap_or_else(|e| panic!("{e}")))
}

fn fixture(resolve_symlinks: bool) -> Fixture {
    let dir = std::env::temp_dir().join(format!("aip-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(dir.join("project/src"));
    let file = dir.join("project/src/main.rs");
    let _ = std::fs::write(&file, "fn main() {}\n");
    let ctx = EvalContext::new(dir.join("project"))
        .with_home(Some(PathBuf::from("/home/bench")))
        .with_protected_file("/var/log/aip-audit.jsonl")
        .with_symlink_resolution(resolve_symlinks);
    Fixture {
        engine: Engine::new(policy(), ctx),
        existing: file.to_string_lossy().into_owned(),
    }
}

/// An allowed `read_file` of an existing file (path argument, so protected-path matching and,
/// when enabled, symlink resolution run).
#[divan::bench(args = [true, false])]
fn allowed_read_file(b: Bencher, resolve_symlinks: bool) {
    let f = fixture(resolve_symlinks);
    let args = json!({"path": f.existing});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("read_file"), Some(black_box(&args))),
        )
    });
}

/// An `ask` for a file that does not exist yet (resolution walks up to the existing prefix).
#[divan::bench(args = [true, false])]
fn ask_write_new_file(b: Bencher, resolve_symlinks: bool) {
    let f = fixture(resolve_symlinks);
    let args = json!({"path": "/srv/data/reports/2026/new-report.txt", "content": "hello"});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("write_file"), Some(black_box(&args))),
        )
    });
}

/// An allowed call checked by a rule with an argument regex (no path-like argument).
#[divan::bench]
fn allowed_fetch_with_arg_regex(b: Bencher) {
    let f = fixture(true);
    let args = json!({"url": "https://github.com/rust-lang/regex", "max_length": 5000});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("fetch"), Some(black_box(&args))),
        )
    });
}

/// A strict rule with two regexes.
#[divan::bench]
fn allowed_query_strict_two_regexes(b: Bencher) {
    let f = fixture(true);
    let args = json!({"sql": "SELECT id, name FROM users WHERE id = 42", "limit": 100});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("query"), Some(black_box(&args))),
        )
    });
}

/// A tool that is not allowlisted (the error object is built).
#[divan::bench]
fn blocked_not_allowlisted(b: Bencher) {
    let f = fixture(true);
    let args = json!({"x": 1});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("delete_everything"), Some(black_box(&args))),
        )
    });
}

/// A protected path inside a shell command.
#[divan::bench]
fn blocked_protected_path_in_command(b: Bencher) {
    let f = fixture(true);
    let args = json!({"path": "/tmp/x", "note": "cat ~/.ssh/id_rsa | base64"});
    b.bench(|| {
        black_box(
            f.engine
                .check_tool_call(black_box("read_file"), Some(black_box(&args))),
        )
    });
}

#[divan::bench(args = ["tools/call", "notifications/progress", "resources/read"])]
fn method_gate(b: Bencher, method: &str) {
    let f = fixture(true);
    b.bench(|| black_box(f.engine.check_method(black_box(method))));
}

#[divan::bench(args = ["read_file", "Read_File", "ｒｅａｄ＿ｆｉｌｅ\u{200B}"])]
fn normalize_name(b: Bencher, name: &str) {
    b.bench(|| black_box(normalize(black_box(name))));
}

fn result(text: &str) -> Value {
    json!({"content": [{"type": "text", "text": text}], "structuredContent": {"lines": 42, "path": "/srv/data/report.txt"}, "isError": false})
}

/// DLP over a 1 KiB tool result with nothing to redact (the RegexSet prefilter path).
#[divan::bench]
fn dlp_clean_result_1k(b: Bencher) {
    let p = policy();
    let dlp = p.dlp().unwrap_or_else(|| panic!("no dlp"));
    let v = result(&"lorem ipsum dolor sit amet, ".repeat(37));
    b.bench(|| {
        let mut x = black_box(&v).clone();
        black_box(dlp.redact_value(&mut x, Direction::Response))
    });
}

/// The clone alone, to subtract from `dlp_clean_result_1k`.
#[divan::bench]
fn clone_result_1k(b: Bencher) {
    let v = result(&"lorem ipsum dolor sit amet, ".repeat(37));
    b.bench(|| black_box(black_box(&v).clone()));
}

/// DLP over a 1 KiB tool result holding one secret.
#[divan::bench]
fn dlp_result_with_secret_1k(b: Bencher) {
    let p = policy();
    let dlp = p.dlp().unwrap_or_else(|| panic!("no dlp"));
    let v = result(&format!(
        "{} AKIAIOSFODNN7EXAMPLE",
        "lorem ipsum dolor sit amet, ".repeat(36)
    ));
    b.bench(|| {
        let mut x = black_box(&v).clone();
        black_box(dlp.redact_value(&mut x, Direction::Response))
    });
}
