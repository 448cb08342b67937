//! `PolicyError`: why a policy could not be loaded, with the file, `line:column`, the field path
//! (`spec.tool_rules[2].action`) and a hint that names the fix.
//!
//! Must not: decide what is valid (that is `validate`) or print anything.

use std::fmt;
use std::path::PathBuf;

use super::yaml::Pos;

/// A policy load failure. `Display` renders `FILE:LINE:COL: field PATH: message` followed by
/// `\n  hint: …` when a fix is known.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("{}: cannot read the policy: {message}\n  hint: check the path and its permissions", path.display())]
    Read { path: PathBuf, message: String },
    /// The text is not a valid policy (YAML syntax, budget, schema or semantic rule).
    #[error("{0}")]
    Invalid(Box<Diagnostic>),
}

/// One located problem in a policy document.
#[derive(Debug, Clone, PartialEq)]
pub struct Diagnostic {
    /// Where the text came from (a file path, or a label such as `<vector err-010>`).
    pub origin: String,
    /// Position of the offending node (or its nearest existing parent); `None` when the
    /// problem concerns the whole text (empty, too large).
    pub pos: Option<Pos>,
    /// Field path such as `spec.tool_rules[2].action`; empty for document-level problems.
    pub field: String,
    pub message: String,
    pub hint: Option<String>,
}

impl PolicyError {
    pub(crate) fn invalid(
        origin: &str,
        pos: Option<Pos>,
        field: impl Into<String>,
        message: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        PolicyError::Invalid(Box::new(Diagnostic {
            origin: origin.to_owned(),
            pos,
            field: field.into(),
            message: message.into(),
            hint,
        }))
    }

    /// The field path the error is about (empty for document-level errors, `None` for read
    /// errors).
    pub fn field(&self) -> Option<&str> {
        match self {
            PolicyError::Read { .. } => None,
            PolicyError::Invalid(d) => Some(&d.field),
        }
    }

    /// The located diagnostic, if this is not a read error.
    pub fn diagnostic(&self) -> Option<&Diagnostic> {
        match self {
            PolicyError::Read { .. } => None,
            PolicyError::Invalid(d) => Some(d),
        }
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(p) = self.pos {
            write!(f, ":{}:{}", p.line, p.column)?;
        }
        f.write_str(": ")?;
        if !self.field.is_empty() {
            write!(f, "field {}: ", self.field)?;
        }
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// A non-fatal remark about a policy (printed by `aip policy check`, logged at load).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyWarning {
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "field {}: {}", self.field, self.message)
        }
    }
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a plausible
/// typo (at most a third of the word's length, and at least 1, 2 for words of 5+ characters).
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let w = word.to_ascii_lowercase();
    let limit = (w.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (edit_distance(&w, &c.to_ascii_lowercase()), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters (two-row dynamic programming).
pub fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let subst = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = subst.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("protected_path", "protected_paths"), 1);
    }

    #[test]
    fn did_you_mean_finds_plausible_typos_only() {
        let fields = ["mode", "allowed_tools", "protected_paths", "tool_rules"];
        assert_eq!(
            did_you_mean("protected_path", &fields),
            Some("protected_paths")
        );
        assert_eq!(did_you_mean("alowed_tools", &fields), Some("allowed_tools"));
        assert_eq!(did_you_mean("Mode", &fields), Some("mode"));
        assert_eq!(did_you_mean("completely_else", &fields), None);
    }

    #[test]
    fn display_names_file_position_field_and_hint() {
        let e = PolicyError::invalid(
            "p.yaml",
            Some(Pos { line: 7, column: 3 }),
            "spec.protected_path",
            "unknown field `protected_path`",
            Some("did you mean `protected_paths`?".into()),
        );
        assert_eq!(
            e.to_string(),
            "p.yaml:7:3: field spec.protected_path: unknown field `protected_path`\n  hint: did you mean `protected_paths`?"
        );
    }
}
