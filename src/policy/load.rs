//! Loading a policy: read the file (bounded, regular files only), parse the YAML once, validate.
//!
//! Must not: follow anything but the given path, read more than `MAX_POLICY_BYTES`, or return
//! a partially valid policy.

use std::io::Read;
use std::path::Path;

use super::error::PolicyError;
use super::model::Policy;
use super::validate::validate;
use super::yaml::{MAX_POLICY_BYTES, parse};

/// Loads and validates the policy file at `path`.
pub fn load_file(path: &Path) -> Result<Policy, PolicyError> {
    let read_err = |message: String| PolicyError::Read {
        path: path.to_path_buf(),
        message,
    };
    let meta = std::fs::metadata(path).map_err(|e| read_err(e.to_string()))?;
    if !meta.is_file() {
        return Err(read_err("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_POLICY_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(|e| read_err(e.to_string()))?;
    let origin = path.display().to_string();
    if bytes.len() > MAX_POLICY_BYTES {
        return Err(PolicyError::invalid(
            &origin,
            None,
            "",
            format!("the policy is larger than {} KiB", MAX_POLICY_BYTES >> 10),
            Some("a policy is a few KiB of YAML; is this the right file?".into()),
        ));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        PolicyError::invalid(
            &origin,
            None,
            "",
            format!(
                "the policy is not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
            None,
        )
    })?;
    load_text(&text, &origin, Some(path))
}

/// Loads and validates a policy given as text; `origin` names it in errors (`<stdin>`,
/// `vectors/basic/errors.yaml#err-010`).
pub fn load_str(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    load_text(text, origin, None)
}

fn load_text(text: &str, origin: &str, source: Option<&Path>) -> Result<Policy, PolicyError> {
    let root = parse(text).map_err(|e| {
        let lower = e.message.to_ascii_lowercase();
        let hint = if lower.contains("budget") || lower.contains("alias") {
            "the document uses too many nodes, aliases or nesting levels for a policy"
        } else if lower.contains("duplicate") {
            "each key may appear once per mapping; remove or merge the repeated one"
        } else if e.pos.is_none() {
            "a policy is a YAML mapping starting with `apiVersion:`"
        } else {
            "check the indentation and quoting at this position"
        };
        PolicyError::invalid(origin, e.pos, "", e.message, Some(hint.to_owned()))
    })?;
    let source = source.map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()));
    validate(origin, &root, source)
}
