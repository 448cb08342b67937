//! Vector files: reading one YAML file of tests (bounded, through the policy YAML parser) and
//! typed access to each test's fields.
//!
//! Must not: interpret expectations (the shapes do).

use std::path::Path;

use serde_json::Value;

use crate::policy::yaml;

/// One parsed vector file.
#[derive(Debug, Clone)]
pub struct VectorFile {
    /// Path relative to the vector directory (`basic/errors.yaml`).
    pub rel: String,
    pub doc: Value,
}

/// One test of a file.
#[derive(Debug, Clone, Copy)]
pub struct Test<'a> {
    pub value: &'a Value,
}

impl VectorFile {
    pub fn read(path: &Path, rel: &str) -> Result<VectorFile, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
        let node = yaml::parse(&text).map_err(|e| match e.pos {
            Some(p) => format!("not valid YAML at {}:{}: {}", p.line, p.column, e.message),
            None => format!("not valid YAML: {}", e.message),
        })?;
        let doc = node.to_json();
        if !doc.get("tests").is_some_and(Value::is_array) {
            return Err("the file has no `tests:` list".into());
        }
        Ok(VectorFile {
            rel: rel.to_owned(),
            doc,
        })
    }

    pub fn tests(&self) -> Vec<Test<'_>> {
        self.doc
            .get("tests")
            .and_then(Value::as_array)
            .map(|t| t.iter().map(|value| Test { value }).collect())
            .unwrap_or_default()
    }
}

impl<'a> Test<'a> {
    pub fn id(&self) -> &'a str {
        self.value
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or("<no id>")
    }

    pub fn description(&self) -> &'a str {
        self.value
            .get("description")
            .and_then(Value::as_str)
            .unwrap_or("")
    }

    pub fn get(&self, key: &str) -> Option<&'a Value> {
        self.value.get(key)
    }

    /// Why the test cannot be run at all (no id, not a mapping).
    pub fn problem(&self) -> Option<String> {
        if !self.value.is_object() {
            return Some("a test must be a mapping".into());
        }
        if !self.value.get("id").is_some_and(Value::is_string) {
            return Some("the test has no string `id`".into());
        }
        None
    }

    /// `policy:` as text, `None` for YAML null (no policy); an error when absent or not text.
    pub fn policy(&self) -> Result<Option<&'a str>, String> {
        match self.value.get("policy") {
            Some(Value::String(s)) => Ok(Some(s)),
            Some(Value::Null) => Ok(None),
            Some(_) => Err("`policy` must be YAML text or null".into()),
            None => Err("the test has no `policy`".into()),
        }
    }

    /// The keys of the test other than `known` (for loud failures on unsupported fields).
    pub fn unknown_keys(&self, known: &[&str]) -> Vec<&'a str> {
        self.value
            .as_object()
            .map(|m| {
                m.keys()
                    .map(String::as_str)
                    .filter(|k| !known.contains(k))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// A label for `load_str` errors: `basic/errors.yaml#err-010`.
    pub fn origin(&self, file: &VectorFile) -> String {
        format!("{}#{}", file.rel, self.id())
    }
}
