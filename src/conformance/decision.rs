//! The decision shape (basic/authorization, basic/errors, basic/methods, full/arguments,
//! full/normalization): `input {method, tool?, args?, request_id?, context?}` →
//! `expected {decision, error_code, violation, error_message, error_data, response_format}`.
//! `context.previous_calls` replays identical calls first; `context.user_response` answers an
//! `ask` through an [`Approver`]; `context.window` is descriptive only.
//!
//! Must not: pass a test whose expectation names a field it does not compare.

use std::sync::Arc;

use serde_json::{Value, json};

use super::approval::{Approver, ScriptedApprover};
use super::compare::{show, subset};
use super::vectors::{Test, VectorFile};
use super::{Outcome, compare};
use crate::policy::{
    ApprovalOutcome, Decision, Engine, EvalContext, ManualClock, ToolVerdict, load_str,
};

/// Home directory and server cwd the vectors are evaluated with.
pub const HOME: &str = "/home/agent";
pub const CWD: &str = "/srv/mcp";

const INPUT_KEYS: &[&str] = &["method", "tool", "args", "request_id", "context"];
const CONTEXT_KEYS: &[&str] = &["previous_calls", "window", "user_response"];
const OFFICIAL_EXPECTED: &[&str] = &[
    "decision",
    "error_code",
    "violation",
    "error_message",
    "error_data",
    "response_format",
];
/// Fields the project's vectors may also expect.
pub const PROJECT_EXPECTED: &[&str] = &["failed_arg", "failed_rule", "kind"];

/// An engine for a test's policy (or none), with a manual clock.
pub struct Env {
    pub engine: Engine,
    pub clock: Arc<ManualClock>,
}

pub fn env(file: &VectorFile, test: &Test<'_>) -> Result<Env, String> {
    let clock = Arc::new(ManualClock::new());
    let ctx = EvalContext::new(CWD)
        .with_home(Some(HOME.into()))
        .with_clock(clock.clone())
        .with_symlink_resolution(false);
    let engine = match test.policy()? {
        None => Engine::no_policy(ctx),
        Some(text) => {
            let p = load_str(text, &test.origin(file))
                .map_err(|e| format!("the policy does not load: {e}"))?;
            Engine::new(Arc::new(p), ctx)
        }
    };
    Ok(Env { engine, clock })
}

/// What the engine did with one input.
#[derive(Debug, Clone)]
pub struct Actual {
    pub decision: String,
    pub error_code: Option<i64>,
    pub violation: bool,
    pub error_message: Option<String>,
    pub error_data: Option<Value>,
    pub response: Option<Value>,
    pub verdict: Option<ToolVerdict>,
}

/// Runs one input through the engine.
pub fn evaluate(env: &Env, input: &Value) -> Result<Actual, String> {
    let obj = input.as_object().ok_or("`input` must be a mapping")?;
    if let Some(k) = obj.keys().find(|k| !INPUT_KEYS.contains(&k.as_str())) {
        return Err(format!("unsupported input field `{k}`"));
    }
    let ctx = match obj.get("context") {
        None | Some(Value::Null) => None,
        Some(Value::Object(c)) => Some(c),
        Some(_) => return Err("`input.context` must be a mapping".into()),
    };
    if let Some(k) = ctx.and_then(|c| c.keys().find(|k| !CONTEXT_KEYS.contains(&k.as_str()))) {
        return Err(format!("unsupported context field `{k}`"));
    }
    let method = obj
        .get("method")
        .and_then(Value::as_str)
        .ok_or("`input.method` must be a string")?;
    let id = obj.get("request_id").cloned().unwrap_or(json!(1));
    let e = &env.engine;
    let mv = e.check_method(method);
    if let Some(d) = &mv.denial {
        return Ok(Actual {
            decision: "BLOCK".into(),
            error_code: Some(d.code),
            violation: true,
            error_message: Some(d.message.into()),
            error_data: Some(d.data.clone()),
            response: Some(d.response(&id)),
            verdict: None,
        });
    }
    if !mv.is_tools_call() {
        if obj.contains_key("tool") || obj.contains_key("args") {
            return Err(format!(
                "`tool`/`args` given for method `{method}`, which is not tools/call"
            ));
        }
        return Ok(Actual {
            decision: "ALLOW".into(),
            error_code: None,
            violation: false,
            error_message: None,
            error_data: None,
            response: None,
            verdict: None,
        });
    }
    let tool = obj
        .get("tool")
        .and_then(Value::as_str)
        .ok_or("`input.tool` must be a string for tools/call")?;
    let args = obj.get("args");
    let previous = match ctx.and_then(|c| c.get("previous_calls")) {
        None => 0,
        Some(v) => v
            .as_u64()
            .ok_or("`context.previous_calls` must be a count")?,
    };
    for _ in 0..previous {
        // Calls that happened: an `ask` among them was approved.
        let v = e.check_tool_call(tool, args);
        if v.decision == Decision::Ask {
            e.resolve_ask(&v, ApprovalOutcome::Approved);
        }
    }
    let mut verdict = e.check_tool_call(tool, args);
    if let Some(answer) = ctx.and_then(|c| c.get("user_response")) {
        let answer = answer
            .as_str()
            .and_then(ScriptedApprover::parse)
            .ok_or_else(|| {
                format!("unknown context.user_response {answer} (approve, deny or timeout)")
            })?;
        if verdict.decision != Decision::Ask {
            return Err(format!(
                "context.user_response is given but the engine did not ask (decision {})",
                verdict.conformance_decision()
            ));
        }
        verdict = e.resolve_ask(&verdict, answer.answer(&verdict.tool, args));
    }
    Ok(from_verdict(verdict, &id))
}

fn from_verdict(v: ToolVerdict, id: &Value) -> Actual {
    Actual {
        decision: v.conformance_decision().into(),
        error_code: v.error_code(),
        violation: v.violation,
        error_message: v.denial.as_ref().map(|d| d.message.to_owned()),
        error_data: v.denial.as_ref().map(|d| d.data.clone()),
        response: v.error_response(id),
        verdict: Some(v),
    }
}

/// Compares every expected field; `extra` lists fields allowed beyond the official ones.
pub fn check(expected: &Value, actual: &Actual, extra: &[&str]) -> Result<(), String> {
    let exp = expected.as_object().ok_or("`expected` must be a mapping")?;
    let mut diffs = Vec::new();
    for (k, ev) in exp {
        let r = match k.as_str() {
            "decision" => same(k, ev, &json!(actual.decision)),
            "error_code" => same(k, ev, &actual.error_code.map_or(Value::Null, |c| json!(c))),
            "violation" => same(k, ev, &json!(actual.violation)),
            "error_message" => same(
                k,
                ev,
                &actual
                    .error_message
                    .as_ref()
                    .map_or(Value::Null, |m| json!(m)),
            ),
            "error_data" => match &actual.error_data {
                Some(d) => subset(ev, d, "error_data"),
                None => Err(format!("expected error_data {ev}, got no error")),
            },
            "response_format" => match &actual.response {
                Some(r) => subset(ev, r, "response"),
                None => Err(format!(
                    "expected an error response {ev}, got none (decision {})",
                    actual.decision
                )),
            },
            "failed_arg" | "failed_rule" | "kind" if extra.contains(&k.as_str()) => {
                let v = actual.verdict.as_ref();
                let got = match k.as_str() {
                    "failed_arg" => v
                        .and_then(|v| v.failed_arg.clone())
                        .map_or(Value::Null, Value::String),
                    "failed_rule" => v
                        .and_then(|v| v.failed_rule.clone())
                        .map_or(Value::Null, Value::String),
                    _ => v.map_or(Value::Null, |v| json!(v.kind.as_str())),
                };
                same(k, ev, &got)
            }
            other => Err(format!("unsupported expectation `{other}`")),
        };
        if let Err(d) = r {
            diffs.push(d);
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(diffs.join("; "))
    }
}

fn same(key: &str, expected: &Value, actual: &Value) -> Result<(), String> {
    if compare::equal(expected, actual) {
        Ok(())
    } else {
        Err(format!(
            "expected {key} {expected} got {}",
            show(Some(actual))
        ))
    }
}

/// Runs a whole decision-shaped test.
pub fn run(file: &VectorFile, test: &Test<'_>, extra_expected: &[&str]) -> Outcome {
    let known = ["id", "description", "note", "policy", "input", "expected"];
    if let Some(k) = test.unknown_keys(&known).first() {
        return Outcome::fail(format!("unsupported test field `{k}`"));
    }
    let (Some(input), Some(expected)) = (test.get("input"), test.get("expected")) else {
        return Outcome::fail("the test needs `input` and `expected`");
    };
    let mut allowed = OFFICIAL_EXPECTED.to_vec();
    allowed.extend_from_slice(extra_expected);
    if let Some(k) = expected
        .as_object()
        .and_then(|m| m.keys().find(|k| !allowed.contains(&k.as_str())))
    {
        return Outcome::fail(format!("unsupported expectation `{k}`"));
    }
    let result = env(file, test)
        .and_then(|env| evaluate(&env, input))
        .and_then(|a| check(expected, &a, extra_expected));
    match result {
        Ok(()) => Outcome::Pass,
        Err(e) => Outcome::Fail(e),
    }
}
