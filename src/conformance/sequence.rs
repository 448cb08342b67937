//! The project's sequence shape: several calls against one engine, with time moving between
//! them (rate limits, refunds). `steps: [{input, expected} | {advance: "30s"}]`; each `input` /
//! `expected` pair is the decision shape.
//!
//! Must not: let a step without expectations pass silently.

use serde_json::Value;

use super::Outcome;
use super::decision::{self, PROJECT_EXPECTED};
use super::vectors::{Test, VectorFile};
use crate::policy::parse_duration;

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "steps"])
        .first()
    {
        return Outcome::fail(format!("unsupported test field `{k}`"));
    }
    let Some(steps) = test
        .get("steps")
        .and_then(Value::as_array)
        .filter(|s| !s.is_empty())
    else {
        return Outcome::fail("`steps` must be a non-empty list");
    };
    let env = match decision::env(file, test) {
        Ok(e) => e,
        Err(e) => return Outcome::Fail(e),
    };
    for (i, step) in steps.iter().enumerate() {
        let n = i + 1;
        let Some(obj) = step.as_object() else {
            return Outcome::fail(format!("step {n}: must be a mapping"));
        };
        if let Some(d) = obj.get("advance") {
            if obj.len() != 1 {
                return Outcome::fail(format!("step {n}: `advance` stands alone"));
            }
            match d.as_str().map(parse_duration) {
                Some(Ok(d)) => env.clock.advance(d),
                _ => {
                    return Outcome::fail(format!(
                        "step {n}: `advance` must be a duration such as \"30s\""
                    ));
                }
            }
            continue;
        }
        if let Some(k) = obj
            .keys()
            .find(|k| !["input", "expected"].contains(&k.as_str()))
        {
            return Outcome::fail(format!("step {n}: unsupported field `{k}`"));
        }
        let (Some(input), Some(expected)) = (obj.get("input"), obj.get("expected")) else {
            return Outcome::fail(format!("step {n}: needs `input` and `expected`"));
        };
        let r = decision::evaluate(&env, input)
            .and_then(|a| decision::check(expected, &a, PROJECT_EXPECTED));
        if let Err(e) = r {
            return Outcome::fail(format!("step {n}: {e}"));
        }
    }
    Outcome::Pass
}
