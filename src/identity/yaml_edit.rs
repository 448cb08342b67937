//! Writes `metadata.signature` into a policy's YAML *text* without a YAML round-trip, so the
//! author's comments, key order, quoting and blank lines survive `aip policy sign`. Owns only
//! the line-level edit of a block-style top-level `metadata:` mapping; anything else (flow
//! style, multi-line signature values, several documents) is refused with a hint rather than
//! guessed. Callers must re-parse the result and check that only the signature changed (the CLI
//! does), which turns any mistake here into an error instead of a silently altered policy.

/// The edit could not be made safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlEditError {
    #[error(
        "no top-level block `metadata:` mapping found (hint: write `metadata:` on its own line with its keys indented below)"
    )]
    NoMetadataBlock,
    #[error(
        "`metadata:` on line {0} is not a block mapping (flow style or inline value); rewrite it in block style to sign"
    )]
    NotBlock(usize),
    #[error("`metadata:` on line {0} has no keys")]
    EmptyMetadata(usize),
    #[error(
        "`signature:` on line {0} spans several lines; replace it with a single-line value or remove it"
    )]
    MultiLineSignature(usize),
    #[error("the file holds several YAML documents; sign a file with one policy")]
    MultipleDocuments,
}

/// Returns `text` with `metadata.signature` set to `signature` (double-quoted): an existing
/// `signature:` line at the metadata key indentation is replaced in place, otherwise a new line
/// is appended after the last line of the metadata block. Line endings (LF or CRLF) follow the
/// file.
pub fn set_metadata_signature(text: &str, signature: &str) -> Result<String, YamlEditError> {
    let eol = if text.contains("\r\n") { "\r\n" } else { "\n" };
    let mut lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let had_final_newline = text.ends_with('\n');
    if had_final_newline {
        lines.pop();
    }

    let starts = lines
        .iter()
        .enumerate()
        .filter(|(_, l)| {
            l.starts_with("---") && l[3..].chars().next().is_none_or(char::is_whitespace)
        })
        .map(|(i, _)| i)
        .collect::<Vec<_>>();
    let first_content = lines.iter().position(|l| is_content(l));
    if starts.len() > 1 || starts.iter().any(|&i| first_content.is_some_and(|c| i > c)) {
        return Err(YamlEditError::MultipleDocuments);
    }

    let meta = lines
        .iter()
        .position(|l| key_rest(l, "metadata").is_some())
        .ok_or(YamlEditError::NoMetadataBlock)?;
    let rest = key_rest(lines[meta], "metadata").unwrap_or_default();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(YamlEditError::NotBlock(meta + 1));
    }

    // The block runs until the next content line at column 0.
    let end = (meta + 1..lines.len())
        .find(|&i| is_content(lines[i]) && indent(lines[i]) == 0)
        .unwrap_or(lines.len());
    let children: Vec<usize> = (meta + 1..end).filter(|&i| is_content(lines[i])).collect();
    let Some(&first_child) = children.first() else {
        return Err(YamlEditError::EmptyMetadata(meta + 1));
    };
    let child_indent = indent(lines[first_child]);
    let pad = &lines[first_child][..child_indent];
    let new_line = format!("{pad}signature: \"{signature}\"");

    let existing = children.iter().copied().find(|&i| {
        indent(lines[i]) == child_indent
            && key_rest(&lines[i][child_indent..], "signature").is_some()
    });
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    match existing {
        Some(i) => {
            let continued = children
                .iter()
                .copied()
                .find(|&j| j > i)
                .is_some_and(|j| indent(lines[j]) > child_indent);
            let value = key_rest(&lines[i][child_indent..], "signature").unwrap_or_default();
            if continued || value.is_empty() || value.starts_with('|') || value.starts_with('>') {
                return Err(YamlEditError::MultiLineSignature(i + 1));
            }
            out[i] = new_line;
        }
        None => {
            let last = *children.last().unwrap_or(&first_child);
            out.insert(last + 1, new_line);
        }
    }
    let mut result = out.join(eol);
    if had_final_newline {
        result.push_str(eol);
    }
    Ok(result)
}

/// A line that is neither blank nor a comment.
fn is_content(line: &str) -> bool {
    let t = line.trim_start();
    !t.is_empty() && !t.starts_with('#')
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start_matches(' ').len()
}

/// For a line starting (at column 0) with mapping key `key` — plain, `"key"` or `'key'` —
/// followed by `:` and a space or the end, returns what follows, trimmed.
fn key_rest<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let after = [key.to_string(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .find_map(|k| line.strip_prefix(k.as_str()))?;
    let after = after.trim_start_matches(' ').strip_prefix(':')?;
    if !after.is_empty() && !after.starts_with([' ', '\t']) {
        return None;
    }
    Some(after.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "ed25519:QUJD";

    #[test]
    fn test_insert_keeps_comments_and_order() {
        let text = "# my policy\napiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:   # who\n  name: demo  # the agent\n  version: 1.0.0\n\n# tools follow\nspec:\n  allowed_tools: [read_file]\n";
        let out = set_metadata_signature(text, SIG).unwrap();
        assert_eq!(
            out,
            "# my policy\napiVersion: aip.io/v1alpha2\nkind: AgentPolicy\nmetadata:   # who\n  name: demo  # the agent\n  version: 1.0.0\n  signature: \"ed25519:QUJD\"\n\n# tools follow\nspec:\n  allowed_tools: [read_file]\n"
        );
    }

    #[test]
    fn test_replace_existing() {
        let text = "metadata:\n    name: demo\n    signature: \"ed25519:OLD\"\n    owner: a@b.c\nspec: {}\n";
        let out = set_metadata_signature(text, SIG).unwrap();
        assert_eq!(
            out,
            "metadata:\n    name: demo\n    signature: \"ed25519:QUJD\"\n    owner: a@b.c\nspec: {}\n"
        );
        // Idempotent.
        assert_eq!(set_metadata_signature(&out, SIG).unwrap(), out);
    }

    #[test]
    fn test_nested_signature_key_is_not_ours() {
        let text = "metadata:\n  name: demo\n  labels:\n    signature: x\nspec: {}\n";
        let out = set_metadata_signature(text, SIG).unwrap();
        assert_eq!(
            out,
            "metadata:\n  name: demo\n  labels:\n    signature: x\n  signature: \"ed25519:QUJD\"\nspec: {}\n"
        );
    }

    #[test]
    fn test_crlf_and_no_final_newline() {
        let text = "metadata:\r\n  name: demo\r\nspec: {}";
        let out = set_metadata_signature(text, SIG).unwrap();
        assert_eq!(
            out,
            "metadata:\r\n  name: demo\r\n  signature: \"ed25519:QUJD\"\r\nspec: {}"
        );
    }

    #[test]
    fn test_metadata_last_and_leading_document_marker() {
        let text = "---\nspec: {}\nmetadata:\n  name: demo\n";
        assert_eq!(
            set_metadata_signature(text, SIG).unwrap(),
            "---\nspec: {}\nmetadata:\n  name: demo\n  signature: \"ed25519:QUJD\"\n"
        );
    }

    #[test]
    fn test_refusals() {
        assert_eq!(
            set_metadata_signature("spec: {}\n", SIG),
            Err(YamlEditError::NoMetadataBlock)
        );
        assert_eq!(
            set_metadata_signature("metadata: {name: x}\n", SIG),
            Err(YamlEditError::NotBlock(1))
        );
        assert_eq!(
            set_metadata_signature("metadata:\nspec: {}\n", SIG),
            Err(YamlEditError::EmptyMetadata(1))
        );
        assert_eq!(
            set_metadata_signature(
                "metadata:\n  name: x\n  signature: >\n    ed25519:AAA\n",
                SIG
            ),
            Err(YamlEditError::MultiLineSignature(3))
        );
        assert_eq!(
            set_metadata_signature("metadata:\n  name: x\n  signature:\n    ed25519:AAA\n", SIG),
            Err(YamlEditError::MultiLineSignature(3))
        );
        assert_eq!(
            set_metadata_signature("metadata:\n  name: a\n---\nmetadata:\n  name: b\n", SIG),
            Err(YamlEditError::MultipleDocuments)
        );
        // `metadata_x:` and nested `metadata:` are not the top-level key.
        assert_eq!(
            set_metadata_signature(
                "metadata_x:\n  name: a\nspec:\n  metadata:\n    a: 1\n",
                SIG
            ),
            Err(YamlEditError::NoMetadataBlock)
        );
    }
}
