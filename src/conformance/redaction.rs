//! The DLP shape (full/dlp): `input {type: response, content}` → `expected {redacted, output,
//! dlp_events}`. The project's vectors extend it (documented in tests/vectors/README.md):
//! `content` may be any JSON value (redacted in place: structuredContent, keys, nesting);
//! `type: request` runs a `tools/call` through the tool checks and request-side DLP
//! (`expected` adds `decision`, `error_code`, `dlp_action`, `truncated`; `output` is the
//! forwarded arguments); `type: stderr` feeds `chunks` through the stderr filter.
//!
//! Must not: report `redacted` from anything but a real difference between input and output.

use serde_json::{Value, json};

use super::compare::{equal, show};
use super::decision::{Env, env};
use super::vectors::{Test, VectorFile};
use super::{Outcome, compare};
use crate::policy::{Direction, DlpHit, RequestDlpAction};

const OFFICIAL_EXPECTED: &[&str] = &["redacted", "output", "dlp_events"];
const PROJECT_EXPECTED: &[&str] = &["decision", "error_code", "dlp_action", "truncated"];

struct Got {
    output: Value,
    events: Vec<DlpHit>,
    decision: Option<&'static str>,
    error_code: Option<i64>,
    dlp_action: Option<&'static str>,
    truncated: bool,
}

pub fn run(file: &VectorFile, test: &Test<'_>, project: bool) -> Outcome {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "input", "expected"])
        .first()
    {
        return Outcome::fail(format!("unsupported test field `{k}`"));
    }
    let (Some(input), Some(expected)) = (test.get("input"), test.get("expected")) else {
        return Outcome::fail("the test needs `input` and `expected`");
    };
    let Some(exp) = expected.as_object() else {
        return Outcome::fail("`expected` must be a mapping");
    };
    let allowed: Vec<&str> = if project {
        OFFICIAL_EXPECTED
            .iter()
            .chain(PROJECT_EXPECTED)
            .copied()
            .collect()
    } else {
        OFFICIAL_EXPECTED.to_vec()
    };
    if let Some(k) = exp.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Outcome::fail(format!("unsupported expectation `{k}`"));
    }
    let got = match env(file, test).and_then(|e| evaluate(&e, input, project)) {
        Ok(g) => g,
        Err(e) => return Outcome::Fail(e),
    };
    let original = input
        .get("content")
        .or_else(|| input.get("args"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut diffs = Vec::new();
    for (k, ev) in exp {
        let actual = match k.as_str() {
            "redacted" => json!(!equal(&original, &got.output)),
            "output" => got.output.clone(),
            "dlp_events" => serde_json::to_value(&got.events).unwrap_or(Value::Null),
            "decision" => got.decision.map_or(Value::Null, |d| json!(d)),
            "error_code" => got.error_code.map_or(Value::Null, |c| json!(c)),
            "dlp_action" => got.dlp_action.map_or(Value::Null, |a| json!(a)),
            "truncated" => json!(got.truncated),
            _ => Value::Null,
        };
        if !compare::equal(ev, &actual) {
            diffs.push(format!("expected {k} {ev} got {}", show(Some(&actual))));
        }
    }
    if diffs.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(diffs.join("; "))
    }
}

fn evaluate(env: &Env, input: &Value, project: bool) -> Result<Got, String> {
    let obj = input.as_object().ok_or("`input` must be a mapping")?;
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or("`input.type` must be a string")?;
    let dlp = env.engine.dlp();
    let known: &[&str] = match (kind, project) {
        ("response", _) => &["type", "content"],
        ("request", true) => &["type", "method", "tool", "args"],
        ("stderr", true) => &["type", "chunks"],
        _ => return Err(format!("unsupported input type `{kind}`")),
    };
    if let Some(k) = obj.keys().find(|k| !known.contains(&k.as_str())) {
        return Err(format!("unsupported input field `{k}`"));
    }
    let empty = |output: Value| Got {
        output,
        events: Vec::new(),
        decision: None,
        error_code: None,
        dlp_action: None,
        truncated: false,
    };
    match kind {
        "response" => {
            let content = obj.get("content").ok_or("`input.content` is required")?;
            let Some(dlp) = dlp else {
                return Ok(empty(content.clone()));
            };
            match content {
                Value::String(s) => {
                    let (out, r) = dlp.redact_str(s, Direction::Response);
                    Ok(Got {
                        output: json!(out),
                        events: r.hits,
                        truncated: r.truncated,
                        ..empty(Value::Null)
                    })
                }
                _ if !project => Err("`input.content` must be a string".into()),
                other => {
                    let mut v = other.clone();
                    let r = dlp.redact_value(&mut v, Direction::Response);
                    Ok(Got {
                        output: v,
                        events: r.hits,
                        truncated: r.truncated,
                        ..empty(Value::Null)
                    })
                }
            }
        }
        "request" => {
            let method = obj
                .get("method")
                .and_then(Value::as_str)
                .unwrap_or("tools/call");
            if !env.engine.check_method(method).is_tools_call() {
                return Err("a request input must be a tools/call".into());
            }
            let tool = obj
                .get("tool")
                .and_then(Value::as_str)
                .ok_or("`input.tool` must be a string")?;
            let mut args = obj.get("args").cloned().unwrap_or(json!({}));
            let v = env.engine.check_tool_call(tool, Some(&args));
            if !v.forwards() {
                return Ok(Got {
                    decision: Some(v.conformance_decision()),
                    error_code: v.error_code(),
                    ..empty(args)
                });
            }
            let r = env.engine.scan_request(&v, &mut args);
            let action = match r.action {
                RequestDlpAction::Forward => "forward",
                RequestDlpAction::ForwardRedacted => "redact",
                RequestDlpAction::ForwardWarned => "warn",
                RequestDlpAction::ForwardOriginal => "allow_original",
                RequestDlpAction::Block => "block",
            };
            let (decision, code) = match &r.denial {
                Some(d) => ("BLOCK", Some(d.code)),
                None => (v.conformance_decision(), None),
            };
            Ok(Got {
                output: args,
                truncated: r.report.truncated,
                events: r.report.hits,
                decision: Some(decision),
                error_code: code,
                dlp_action: Some(action),
            })
        }
        _ => {
            let chunks = obj
                .get("chunks")
                .and_then(Value::as_array)
                .ok_or("`input.chunks` must be a list of strings")?;
            let mut filter = dlp
                .and_then(|d| d.stderr_filter())
                .ok_or("the policy does not filter stderr (dlp.filter_stderr)")?;
            let mut out = Vec::new();
            for c in chunks {
                let c = c
                    .as_str()
                    .ok_or("`input.chunks` must be a list of strings")?;
                out.extend(filter.push(c.as_bytes()));
            }
            out.extend(filter.finish());
            Ok(Got {
                output: json!(String::from_utf8_lossy(&out)),
                events: filter.hits().to_vec(),
                ..empty(Value::Null)
            })
        }
    }
}
