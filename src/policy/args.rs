//! Argument checks of a tool rule (AIP §2.3 steps 5–6) and the STRING() conversion of §2.5:
//! strings as is, numbers in plain decimal (`8080`, `1.5`, never an exponent), booleans as
//! `true`/`false`, null as the empty string, arrays and objects as compact JSON with object keys
//! sorted (Go `json.Marshal` order; unlike Go, `<`, `>` and `&` are not escaped as `\u003c`…).
//!
//! Matching is an unanchored search (RE2 `MatchString`); authors anchor with `^…$`.
//!
//! Must not: look at anything but the rule and the arguments.

use std::borrow::Cow;

use serde_json::Value;

use super::model::ToolRule;

/// Why arguments failed a rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgFailure {
    Missing {
        arg: String,
        pattern: String,
    },
    Mismatch {
        arg: String,
        pattern: String,
    },
    Undeclared {
        arg: String,
    },
    /// Another key differs from a declared argument only by case: a server that matches keys
    /// case-insensitively (Go's `encoding/json`) could use the unchecked one.
    Ambiguous {
        arg: String,
        other: String,
    },
    NotAnObject,
}

/// STRING(value) of AIP §2.5.
pub fn string_of(v: &Value) -> Cow<'_, str> {
    match v {
        Value::String(s) => Cow::Borrowed(s),
        Value::Null => Cow::Borrowed(""),
        Value::Bool(true) => Cow::Borrowed("true"),
        Value::Bool(false) => Cow::Borrowed("false"),
        Value::Number(n) => Cow::Owned(number(n)),
        Value::Array(_) | Value::Object(_) => {
            let mut out = String::new();
            compact_sorted(v, &mut out);
            Cow::Owned(out)
        }
    }
}

fn number(n: &serde_json::Number) -> String {
    if let Some(i) = n.as_i64() {
        return i.to_string();
    }
    if let Some(u) = n.as_u64() {
        return u.to_string();
    }
    // Rust's `Display` for f64 is the shortest round-trip form without an exponent, which is
    // Go's FormatFloat(v, 'f', -1, 64).
    n.as_f64().map_or_else(|| n.to_string(), |f| f.to_string())
}

fn compact_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                if let Some(x) = map.get(k) {
                    compact_sorted(x, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                compact_sorted(x, out);
            }
            out.push(']');
        }
        Value::Number(n) => out.push_str(&number(n)),
        other => out.push_str(&other.to_string()),
    }
}

/// Checks `allow_args` (every declared argument present and matching) and, when the rule is
/// strict, that no undeclared argument is present. `None` arguments count as `{}`.
pub(crate) fn check(rule: &ToolRule, args: Option<&Value>) -> Result<(), ArgFailure> {
    let map = match args {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => {
            if rule.allow_args.is_empty() && !rule.strict_args {
                return Ok(());
            }
            return Err(ArgFailure::NotAnObject);
        }
    };
    for a in &rule.allow_args {
        if let Some(other) = map.and_then(|m| {
            m.keys()
                .find(|k| crate::jsonrpc::is_case_variant(k, &a.name))
        }) {
            return Err(ArgFailure::Ambiguous {
                arg: a.name.clone(),
                other: other.clone(),
            });
        }
        let Some(v) = map.and_then(|m| m.get(&a.name)) else {
            return Err(ArgFailure::Missing {
                arg: a.name.clone(),
                pattern: a.pattern.clone(),
            });
        };
        if !a.regex.is_match(&string_of(v)) {
            return Err(ArgFailure::Mismatch {
                arg: a.name.clone(),
                pattern: a.pattern.clone(),
            });
        }
    }
    if rule.strict_args
        && let Some(m) = map
        && let Some(k) = m
            .keys()
            .find(|k| !rule.allow_args.iter().any(|a| &a.name == *k))
    {
        return Err(ArgFailure::Undeclared { arg: k.clone() });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn rule(yaml_args: &[(&str, &str)]) -> ToolRule {
        let args: String = yaml_args
            .iter()
            .map(|(k, v)| format!("        {k}: '{v}'\n"))
            .collect();
        let text = format!(
            "apiVersion: aip.io/v1alpha1\nkind: AgentPolicy\nmetadata:\n  name: t\nspec:\n  tool_rules:\n    - tool: fetch\n      allow_args:\n{args}"
        );
        let p = crate::policy::load_str(&text, "t.yaml").unwrap();
        p.rule("fetch").unwrap().clone()
    }

    #[test]
    fn a_case_variant_of_a_checked_argument_is_refused() {
        let r = rule(&[("url", "^https://github\\.com/")]);
        assert!(check(&r, Some(&json!({"url": "https://github.com/x"}))).is_ok());
        for evil in ["URL", "Url", "urL"] {
            let args = json!({"url": "https://github.com/x", evil: "https://evil.example"});
            assert!(
                matches!(check(&r, Some(&args)), Err(ArgFailure::Ambiguous { .. })),
                "{evil}"
            );
        }
        let r = rule(&[("assets", "^[a-z]+$")]);
        let args = json!({"assets": "ok", "aſſets": "../../etc"});
        assert!(matches!(
            check(&r, Some(&args)),
            Err(ArgFailure::Ambiguous { .. })
        ));
    }

    #[test]
    fn string_conversion_follows_the_spec() {
        assert_eq!(string_of(&json!("x")), "x");
        assert_eq!(string_of(&json!(8080)), "8080");
        assert_eq!(string_of(&json!(-3)), "-3");
        assert_eq!(string_of(&json!(1.5)), "1.5");
        assert_eq!(string_of(&json!(8080.0)), "8080");
        assert_eq!(string_of(&json!(1e21)), "1000000000000000000000");
        assert_eq!(string_of(&json!(1e-7)), "0.0000001");
        assert_eq!(string_of(&json!(u64::MAX)), "18446744073709551615");
        assert_eq!(string_of(&json!(true)), "true");
        assert_eq!(string_of(&json!(false)), "false");
        assert_eq!(string_of(&json!(null)), "");
        assert_eq!(string_of(&json!(["tag1", "tag2"])), r#"["tag1","tag2"]"#);
        assert_eq!(
            string_of(&json!({"b": 1, "a": {"d": [true, null], "c": "x\"y"}})),
            r#"{"a":{"c":"x\"y","d":[true,null]},"b":1}"#
        );
    }

    proptest! {
        #[test]
        fn integers_render_as_plain_decimal(i in any::<i64>()) {
            let v = json!(i);
            prop_assert_eq!(string_of(&v), i.to_string());
        }

        #[test]
        fn floats_never_use_an_exponent_and_round_trip(f in any::<f64>().prop_filter("finite", |f| f.is_finite())) {
            let s = string_of(&json!(f)).into_owned();
            prop_assert!(!s.contains('e') && !s.contains('E'), "{}", s);
            prop_assert_eq!(s.parse::<f64>().unwrap(), f);
        }

        #[test]
        fn containers_are_valid_json_with_sorted_keys(keys in proptest::collection::vec("[a-z]{1,4}", 0..6)) {
            let mut m = serde_json::Map::new();
            for (i, k) in keys.iter().enumerate() {
                m.insert(k.clone(), json!(i));
            }
            let s = string_of(&Value::Object(m.clone())).into_owned();
            let back: Value = serde_json::from_str(&s).unwrap();
            prop_assert_eq!(&back, &Value::Object(m));
            let order: Vec<String> = match back { Value::Object(b) => b.keys().cloned().collect(), _ => vec![] };
            let mut sorted = order.clone();
            sorted.sort();
            prop_assert_eq!(order, sorted);
        }
    }
}
