//! Comparisons used by every shape: exact equality with numeric tolerance for integer/float
//! spelling, and subset matching for `error_data`/`response_format` (every expected key must
//! be present and equal; extra actual keys are fine). The special expected strings of the
//! identity/server vectors (`">0"`, `">=0"`, `"!null"`) are understood here.
//!
//! Must not: treat a missing actual value as a match.

use serde_json::Value;

/// Exact JSON equality, numbers compared by value (`123` equals `123.0`).
pub fn equal(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (Value::Array(a), Value::Array(b)) => {
            a.len() == b.len() && a.iter().zip(b).all(|(x, y)| equal(x, y))
        }
        (Value::Object(a), Value::Object(b)) => {
            a.len() == b.len() && a.iter().all(|(k, v)| b.get(k).is_some_and(|w| equal(v, w)))
        }
        _ => expected == actual,
    }
}

/// `actual` contains `expected` (see module docs); the error names the first difference.
pub fn subset(expected: &Value, actual: &Value, path: &str) -> Result<(), String> {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => {
            for (k, ev) in e {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match a.get(k) {
                    Some(av) => subset(ev, av, &p)?,
                    None => return Err(format!("expected {p} = {ev}, got nothing")),
                }
            }
            Ok(())
        }
        (Value::Array(e), Value::Array(a)) if e.len() == a.len() => {
            for (i, (ev, av)) in e.iter().zip(a).enumerate() {
                subset(ev, av, &format!("{path}[{i}]"))?;
            }
            Ok(())
        }
        (Value::String(s), a) if s == ">0" => match a.as_f64() {
            Some(n) if n > 0.0 => Ok(()),
            _ => Err(format!("expected {path} > 0, got {a}")),
        },
        (Value::String(s), a) if s == ">=0" => match a.as_f64() {
            Some(n) if n >= 0.0 => Ok(()),
            _ => Err(format!("expected {path} >= 0, got {a}")),
        },
        (Value::String(s), a) if s == "!null" => {
            if a.is_null() {
                Err(format!("expected {path} to be set, got null"))
            } else {
                Ok(())
            }
        }
        (e, a) if equal(e, a) => Ok(()),
        (e, a) => Err(format!("expected {path} = {e}, got {a}")),
    }
}

/// Renders an optional value for messages (`null` when absent).
pub fn show(v: Option<&Value>) -> String {
    v.map_or_else(|| "null".to_owned(), Value::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn subset_requires_every_expected_key() {
        assert!(subset(&json!({"a": 1}), &json!({"a": 1, "b": 2}), "").is_ok());
        assert!(subset(&json!({"a": {"b": 1}}), &json!({"a": {"b": 1, "c": 0}}), "").is_ok());
        let e = subset(&json!({"a": {"b": 1}}), &json!({"a": {}}), "data").unwrap_err();
        assert_eq!(e, "expected data.a.b = 1, got nothing");
        assert!(subset(&json!({"id": 123}), &json!({"id": "123"}), "").is_err());
        assert!(subset(&json!([1, 2]), &json!([1]), "").is_err());
    }

    #[test]
    fn special_markers_and_numbers() {
        assert!(subset(&json!(">0"), &json!(3), "").is_ok());
        assert!(subset(&json!(">0"), &json!(0), "").is_err());
        assert!(subset(&json!(">=0"), &json!(0), "").is_ok());
        assert!(subset(&json!("!null"), &json!(null), "").is_err());
        assert!(equal(&json!(1), &json!(1.0)));
        assert!(!equal(&json!({"a": 1}), &json!({"a": 1, "b": 2})));
    }
}
