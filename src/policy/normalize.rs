//! AIP name normalization (spec §2.1) for tool names, method names and the policy's list
//! entries: NFKC, lowercase, then keep only printable characters (Unicode categories L, M, N,
//! P, S and the ASCII space), then trim surrounding whitespace.
//!
//! The spec lists trim before the removal of non-printables; removing first and trimming last
//! gives the same result on every conformance vector and makes the function idempotent (a
//! zero-width space before a blank would otherwise leave the blank in place). Lowercasing can
//! produce text that is not in NFKC form, so NFKC runs again after it.
//!
//! Must not: fold homoglyphs across scripts (Cyrillic `е` stays distinct from Latin `e`, as
//! vector norm-060 requires), or allocate for names that are already normalized ASCII.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;
use unicode_normalization::UnicodeNormalization;

/// Characters outside general categories L, M, N, P, S, other than U+0020.
static NON_PRINTABLE: LazyLock<Option<Regex>> =
    LazyLock::new(|| Regex::new(r"[^\p{L}\p{M}\p{N}\p{P}\p{S} ]").ok());

/// NORMALIZE(s) of AIP §2.1. Borrowed when `s` is already normalized printable ASCII.
pub fn normalize(s: &str) -> Cow<'_, str> {
    if s.is_ascii() {
        return normalize_ascii(s);
    }
    // Removing an invisible character can join a letter and a combining mark that NFKC then
    // composes (`A\0\u{300}` → `a\u{300}` → `à`): repeat until nothing changes, so that
    // NORMALIZE(NORMALIZE(x)) = NORMALIZE(x) and no spelling normalizes to a different name
    // on a second look. Each pass only shortens or composes, so this ends after a few passes.
    let mut cur = one_pass(s);
    for _ in 0..8 {
        let next = one_pass(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    Cow::Owned(cur)
}

fn one_pass(s: &str) -> String {
    let folded: String = s.nfkc().collect::<String>().to_lowercase().nfkc().collect();
    let printable = match NON_PRINTABLE.as_ref() {
        Some(re) => re.replace_all(&folded, "").into_owned(),
        // The class above is a constant that compiles; if it ever did not, drop every
        // non-ASCII-printable character rather than keep invisible ones.
        None => folded
            .chars()
            .filter(|c| c.is_alphanumeric() || c.is_ascii_graphic() || *c == ' ')
            .collect(),
    };
    printable.trim().to_owned()
}

fn normalize_ascii(s: &str) -> Cow<'_, str> {
    let clean = |b: u8| b.is_ascii_graphic() || b == b' ';
    let needs_work = s.bytes().any(|b| b.is_ascii_uppercase() || !clean(b))
        || s.starts_with(' ')
        || s.ends_with(' ');
    if !needs_work {
        return Cow::Borrowed(s);
    }
    let kept: String = s
        .bytes()
        .filter(|b| clean(*b))
        .map(|b| char::from(b.to_ascii_lowercase()))
        .collect();
    Cow::Owned(kept.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn conformance_examples_normalize() {
        for (input, want) in [
            ("READ_FILE", "read_file"),
            ("Delete_File", "delete_file"),
            ("ｄｅｌｅｔｅ＿ｆｉｌｅ", "delete_file"),
            ("ﬁle_read", "file_read"),
            ("ﬂow_control", "flow_control"),
            ("delete\u{200B}file", "deletefile"),
            ("exec\u{200C}command", "execcommand"),
            ("\u{FEFF}safe_tool", "safe_tool"),
            ("tool²", "tool2"),
            ("  read_file  ", "read_file"),
            ("\u{2003}read_file\u{2003}", "read_file"),
            ("TOOLS/CALL", "tools/call"),
            ("tools/call\n", "tools/call"),
            ("a\u{0}b\u{7F}c", "abc"),
        ] {
            assert_eq!(normalize(input), want, "{input:?}");
        }
    }

    #[test]
    fn homoglyphs_stay_distinct() {
        assert_ne!(normalize("dеlеtе_filе"), "delete_file");
    }

    #[test]
    fn normalized_ascii_is_borrowed() {
        assert!(matches!(normalize("read_file"), Cow::Borrowed(_)));
    }

    #[test]
    fn invisible_then_blank_is_fully_trimmed() {
        assert_eq!(normalize("\u{200B} read_file"), "read_file");
        assert_eq!(normalize("read_file \u{2060}"), "read_file");
    }

    proptest! {
        #[test]
        fn normalization_is_idempotent(s in "\\PC{0,16}|[\\x00-\\x7f]{0,16}|[\\u{0}-\\u{3000}]{0,12}") {
            let once = normalize(&s).into_owned();
            let twice = normalize(&once).into_owned();
            prop_assert_eq!(once, twice);
        }

        #[test]
        fn normalized_names_have_no_invisible_or_control_chars(s in "\\PC{0,16}|[\\u{0}-\\u{3000}]{0,12}") {
            let n = normalize(&s);
            let clean = n.chars().all(|c| !c.is_control() && c != '\u{200B}' && c != '\u{FEFF}');
            prop_assert!(clean, "{:?}", n);
            prop_assert_eq!(n.trim(), n.as_ref());
        }
    }
}
