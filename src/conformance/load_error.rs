//! The project's load-rejection shape: a policy that must NOT load, and where the error must
//! point. `expected: {load_error: {field, contains, line?}}`: `field` is the exact field path
//! of the error, `contains` a substring of its rendered text (message and hint), `line` the
//! 1-based line inside the policy text.
//!
//! Must not: pass when the policy loads.

use serde_json::Value;

use super::Outcome;
use super::vectors::{Test, VectorFile};
use crate::policy::load_str;

pub fn run(file: &VectorFile, test: &Test<'_>) -> Outcome {
    if let Some(k) = test
        .unknown_keys(&["id", "description", "note", "policy", "expected"])
        .first()
    {
        return Outcome::fail(format!("unsupported test field `{k}`"));
    }
    let Some(want) = test
        .get("expected")
        .and_then(|e| e.get("load_error"))
        .and_then(Value::as_object)
    else {
        return Outcome::fail("`expected.load_error` must be a mapping");
    };
    if let Some(k) = test
        .get("expected")
        .and_then(Value::as_object)
        .and_then(|m| m.keys().find(|k| k.as_str() != "load_error"))
    {
        return Outcome::fail(format!("unsupported expectation `{k}` next to load_error"));
    }
    if let Some(k) = want
        .keys()
        .find(|k| !["field", "contains", "line"].contains(&k.as_str()))
    {
        return Outcome::fail(format!("unsupported load_error field `{k}`"));
    }
    let text = match test.policy() {
        Ok(Some(t)) => t,
        Ok(None) => return Outcome::fail("a load_error test needs policy text"),
        Err(e) => return Outcome::Fail(e),
    };
    let err = match load_str(text, &test.origin(file)) {
        Ok(_) => return Outcome::fail("expected the policy to be rejected, but it loaded"),
        Err(e) => e,
    };
    let rendered = err.to_string();
    let mut diffs = Vec::new();
    if let Some(f) = want.get("field") {
        let got = err.field().unwrap_or("");
        if f.as_str() != Some(got) {
            diffs.push(format!("expected field {f} got \"{got}\""));
        }
    }
    if let Some(c) = want.get("contains") {
        match c.as_str() {
            Some(c) if rendered.contains(c) => {}
            _ => diffs.push(format!(
                "expected the error to contain {c}, got: {rendered}"
            )),
        }
    }
    if let Some(l) = want.get("line") {
        let got = err.diagnostic().and_then(|d| d.pos).map(|p| p.line);
        if l.as_u64() != got {
            diffs.push(format!(
                "expected line {l} got {}",
                got.map_or("none".into(), |g| g.to_string())
            ));
        }
    }
    if diffs.is_empty() {
        Outcome::Pass
    } else {
        Outcome::Fail(diffs.join("; "))
    }
}
