//! The validation toolkit shared by every section validator: builds located errors (position
//! looked up from the field path in the YAML tree), collects warnings, and checks the common
//! value shapes (enums with "did you mean", durations, non-empty strings, unique lists).
//!
//! Must not: know any particular section's rules.

use std::collections::HashMap;
use std::time::Duration;

use super::error::{PolicyError, PolicyWarning, did_you_mean};
use super::model::ApiVersion;
use super::normalize::normalize;
use super::units::{format_duration, parse_duration};
use super::yaml::Node;

pub(crate) struct Checker<'a> {
    pub origin: &'a str,
    pub root: &'a Node,
    pub version: ApiVersion,
    pub warnings: Vec<PolicyWarning>,
}

pub(crate) type Checked<T> = Result<T, PolicyError>;

impl<'a> Checker<'a> {
    pub fn new(origin: &'a str, root: &'a Node, version: ApiVersion) -> Self {
        Checker {
            origin,
            root,
            version,
            warnings: Vec::new(),
        }
    }

    /// An error at `path` (positioned at that node, or its nearest existing parent).
    pub fn err(&self, path: &str, message: impl Into<String>, hint: Option<String>) -> PolicyError {
        let pos = self.root.locate(path).pos;
        PolicyError::invalid(self.origin, Some(pos), path, message, hint)
    }

    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(PolicyWarning {
            field: path.to_owned(),
            message: message.into(),
        });
    }

    /// Rejects a field that only exists from v1alpha2 on.
    pub fn require_v1alpha2(&self, path: &str, present: bool) -> Checked<()> {
        if present && !self.version.has_v1alpha2() {
            return Err(self.err(
                path,
                format!(
                    "`{}` is a v1alpha2 field, not valid in an {} policy",
                    last_key(path),
                    self.version.as_str()
                ),
                Some("set `apiVersion: aip.io/v1alpha2` to use it, or remove it".into()),
            ));
        }
        Ok(())
    }

    /// Maps `value` to one of `options` (exact, case-sensitive), with a "did you mean" hint.
    pub fn one_of<T: Copy>(&self, path: &str, value: &str, options: &[(&str, T)]) -> Checked<T> {
        if let Some((_, v)) = options.iter().find(|(name, _)| *name == value) {
            return Ok(*v);
        }
        let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
        let hint = match did_you_mean(value, &names) {
            Some(s) => format!("did you mean `{s}`? valid values: {}", names.join(", ")),
            None => format!("valid values: {}", names.join(", ")),
        };
        Err(self.err(path, format!("`{value}` is not a valid value"), Some(hint)))
    }

    pub fn duration(&self, path: &str, value: &str) -> Checked<Duration> {
        parse_duration(value).map_err(|m| self.err(path, m, Some("units: ms, s, m, h, d".into())))
    }

    pub fn positive_duration(&self, path: &str, value: &str) -> Checked<Duration> {
        let d = self.duration(path, value)?;
        if d.is_zero() {
            return Err(self.err(path, "must be greater than zero", None));
        }
        Ok(d)
    }

    pub fn non_empty<'s>(&self, path: &str, value: &'s str) -> Checked<&'s str> {
        if value.trim().is_empty() {
            return Err(self.err(path, "must not be empty", None));
        }
        Ok(value)
    }

    /// Normalizes a list of names, rejecting empty entries and duplicates (as written, or equal
    /// after normalization).
    pub fn name_list(&self, path: &str, items: &[String]) -> Checked<Vec<String>> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            let n = normalize(item).into_owned();
            if n.is_empty() {
                return Err(self.err(
                    &p,
                    format!("`{item}` is empty after normalization (NFKC, lowercase, invisible characters removed)"),
                    Some("write the name with visible characters".into()),
                ));
            }
            if let Some(first) = seen.get(&n) {
                return Err(self.err(
                    &p,
                    format!("duplicate entry `{item}` (same as {path}[{first}] after normalization to `{n}`)"),
                    Some("remove one of them".into()),
                ));
            }
            seen.insert(n.clone(), i);
            out.push(n);
        }
        Ok(out)
    }

    /// Rejects exact duplicates in a list of strings (schema `uniqueItems`) and empty items.
    pub fn unique_strings(&self, path: &str, items: &[String]) -> Checked<()> {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, item) in items.iter().enumerate() {
            let p = format!("{path}[{i}]");
            self.non_empty(&p, item)?;
            if let Some(first) = seen.insert(item.as_str(), i) {
                return Err(self.err(
                    &p,
                    format!("duplicate entry `{item}` (also {path}[{first}])"),
                    Some("remove one of them".into()),
                ));
            }
        }
        Ok(())
    }
}

/// `"5m (300s)"`-style rendering for messages.
pub(crate) fn show(d: Duration) -> String {
    format_duration(d)
}

fn last_key(path: &str) -> &str {
    path.rsplit('.').next().unwrap_or(path)
}

/// `^[a-zA-Z][a-zA-Z0-9+.-]*:` followed by something: an absolute URI.
pub(crate) fn is_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
        && !rest.is_empty()
        && !s.chars().any(char::is_whitespace)
}

/// An HTTP endpoint path: `^/[a-zA-Z0-9/_-]*$` (schema `EndpointsConfig`).
pub(crate) fn is_endpoint_path(s: &str) -> bool {
    s.starts_with('/')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'_' | b'-'))
}
