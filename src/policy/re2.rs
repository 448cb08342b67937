//! Compiles policy regexes (`allow_args` values, DLP patterns) with the `regex` crate (linear
//! time) and RE2 meaning. Every regex of a policy is compiled here, once, at load.
//!
//! RE2 and the `regex` crate agree on almost everything; the differences that change what a
//! pattern matches are rewritten before compiling:
//! - `\d \D \w \W \s \S` are ASCII in RE2 (`[0-9]`, `[0-9A-Za-z_]`, `[\t\n\f\r ]`) but Unicode
//!   in `regex`; they are replaced by the ASCII classes, inside and outside `[...]`.
//! - `\b \B` are ASCII word boundaries in RE2; they become `(?-u:\b)` / `(?-u:\B)`.
//! - Inside a class, `[` (other than `[:name:]`), `&&` and `~~` are literals in RE2 but nested
//!   classes / set operations in `regex`; they are escaped.
//! - `\Q...\E` (RE2 literal text) is expanded into escaped literals; `\C` (any byte) is rejected.
//!
//! Everything else keeps Unicode meaning, as in RE2 on UTF-8 input: `.` is one code point,
//! `[^a]` and `\pL` are Unicode, `(?i)` folds case with Unicode rules.
//!
//! What this means for non-ASCII input (a deliberate choice, the RE2 behaviour): `\d` does not
//! match `٣` (Arabic-Indic three) or fullwidth `３`, `\w` does not match `é`, and `\b` sees `é`
//! as a non-word character, so `\bcaf\b` matches inside `café`. For `allow_args` this is the
//! stricter reading (`^\d+$` refuses non-ASCII digits). For DLP it means a secret written with
//! non-ASCII digits is not found by `\d`; authors who want that must write `\p{Nd}`.
//!
//! Must not: use backtracking engines, or compile a pattern whose size exceeds the limits.

use regex::{Regex, RegexBuilder, RegexSet, RegexSetBuilder};

/// Longest pattern accepted, in bytes.
pub const MAX_PATTERN_LEN: usize = 4096;
/// Compiled program size limit per regex (the `regex` crate default is 10 MiB).
const SIZE_LIMIT: usize = 2 * 1024 * 1024;
const DFA_SIZE_LIMIT: usize = 2 * 1024 * 1024;
const NEST_LIMIT: u32 = 64;

const ASCII_DIGIT: &str = "0-9";
const ASCII_WORD: &str = "0-9A-Za-z_";
const ASCII_SPACE: &str = r"\t\n\x0C\r ";

/// Compiles `pattern` with RE2 meaning. The error is a one-line message for the user.
pub fn compile(pattern: &str) -> Result<Regex, String> {
    let translated = translate(pattern)?;
    RegexBuilder::new(&translated)
        .size_limit(SIZE_LIMIT)
        .dfa_size_limit(DFA_SIZE_LIMIT)
        .nest_limit(NEST_LIMIT)
        .build()
        .map_err(|e| describe(pattern, &e))
}

/// Compiles several patterns (already accepted by [`compile`]) into one set, for prefiltering.
pub fn compile_set(patterns: &[&str]) -> Result<RegexSet, String> {
    let translated = patterns
        .iter()
        .map(|p| translate(p))
        .collect::<Result<Vec<_>, _>>()?;
    RegexSetBuilder::new(&translated)
        .size_limit(SIZE_LIMIT * patterns.len().max(1))
        .dfa_size_limit(DFA_SIZE_LIMIT * patterns.len().max(1))
        .nest_limit(NEST_LIMIT)
        .build()
        .map_err(|e| {
            format!(
                "the patterns cannot be combined: {}",
                one_line(&e.to_string())
            )
        })
}

fn describe(pattern: &str, e: &regex::Error) -> String {
    match e {
        regex::Error::CompiledTooBig(_) => format!(
            "regex `{pattern}` compiles to more than {} MiB; simplify it (fewer repetitions or alternatives)",
            SIZE_LIMIT >> 20
        ),
        _ => format!(
            "regex `{pattern}` does not compile: {}",
            one_line(&e.to_string())
        ),
    }
}

/// The `regex` crate renders syntax errors over several lines with a caret; keep the message.
fn one_line(s: &str) -> String {
    s.lines()
        .filter(|l| l.trim_start().starts_with("error:"))
        .map(|l| {
            l.trim_start()
                .trim_start_matches("error:")
                .trim()
                .to_string()
        })
        .next()
        .unwrap_or_else(|| s.lines().last().unwrap_or("").trim().to_string())
}

/// Rewrites RE2 syntax into `regex` syntax with the same meaning (see the module docs).
pub fn translate(pattern: &str) -> Result<String, String> {
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(format!(
            "regex is {} bytes long, more than the {MAX_PATTERN_LEN} byte limit",
            pattern.len()
        ));
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut i = 0;
    // Depth of `[...]`; RE2 has no nested classes, so this is 0 or 1.
    let mut in_class = false;
    // Position right after the class opener (`[` or `[^`): a `]` there is a literal.
    let mut class_start = false;
    while i < chars.len() {
        let c = chars[i];
        let at_class_start = std::mem::take(&mut class_start);
        match c {
            '\\' => {
                let Some(&n) = chars.get(i + 1) else {
                    return Err(format!(
                        "regex `{pattern}` does not compile: trailing backslash"
                    ));
                };
                i += 2;
                match (n, in_class) {
                    ('d', false) => push_class(&mut out, false, ASCII_DIGIT),
                    ('D', false) => push_class(&mut out, true, ASCII_DIGIT),
                    ('w', false) => push_class(&mut out, false, ASCII_WORD),
                    ('W', false) => push_class(&mut out, true, ASCII_WORD),
                    ('s', false) => push_class(&mut out, false, ASCII_SPACE),
                    ('S', false) => push_class(&mut out, true, ASCII_SPACE),
                    ('d', true) => out.push_str(ASCII_DIGIT),
                    ('w', true) => out.push_str(ASCII_WORD),
                    ('s', true) => out.push_str(ASCII_SPACE),
                    // A negated class inside a class: a nested class in `regex` syntax.
                    ('D', true) => push_class(&mut out, true, ASCII_DIGIT),
                    ('W', true) => push_class(&mut out, true, ASCII_WORD),
                    ('S', true) => push_class(&mut out, true, ASCII_SPACE),
                    ('b', false) => out.push_str(r"(?-u:\b)"),
                    ('B', false) => out.push_str(r"(?-u:\B)"),
                    ('C', _) => {
                        return Err(format!(
                            "regex `{pattern}` uses `\\C` (any byte), which cannot be matched on text"
                        ));
                    }
                    ('Q', _) => {
                        let mut lit = String::new();
                        while i < chars.len()
                            && !(chars[i] == '\\' && chars.get(i + 1) == Some(&'E'))
                        {
                            lit.push(chars[i]);
                            i += 1;
                        }
                        if i < chars.len() {
                            i += 2;
                        }
                        if in_class {
                            for ch in lit.chars() {
                                out.push_str(&escape_in_class(ch));
                            }
                        } else {
                            out.push_str(&regex::escape(&lit));
                        }
                    }
                    ('p' | 'P' | 'x', _) if chars.get(i) == Some(&'{') => {
                        out.push('\\');
                        out.push(n);
                        while i < chars.len() {
                            out.push(chars[i]);
                            i += 1;
                            if chars[i - 1] == '}' {
                                break;
                            }
                        }
                    }
                    _ => {
                        out.push('\\');
                        out.push(n);
                    }
                }
                continue;
            }
            '[' if !in_class => {
                in_class = true;
                class_start = true;
                out.push('[');
                if chars.get(i + 1) == Some(&'^') {
                    out.push('^');
                    i += 1;
                }
            }
            '[' => {
                // `[:alpha:]` is a POSIX class in both syntaxes; any other `[` is a literal in RE2.
                if chars.get(i + 1) == Some(&':') {
                    let rest: String = chars[i..].iter().collect();
                    if let Some(end) = rest.find(":]") {
                        out.push_str(&rest[..end + 2]);
                        i += rest[..end + 2].chars().count();
                        continue;
                    }
                }
                out.push_str(r"\[");
            }
            ']' if in_class && !at_class_start => {
                in_class = false;
                out.push(']');
            }
            '&' | '~' if in_class => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
        i += 1;
    }
    Ok(out)
}

fn push_class(out: &mut String, negated: bool, body: &str) {
    out.push('[');
    if negated {
        out.push('^');
    }
    out.push_str(body);
    out.push(']');
}

fn escape_in_class(c: char) -> String {
    if matches!(c, '\\' | ']' | '[' | '^' | '-' | '&' | '~') {
        format!("\\{c}")
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(p: &str, s: &str) -> bool {
        compile(p).unwrap().is_match(s)
    }

    #[test]
    fn perl_classes_are_ascii_as_in_re2() {
        assert!(m(r"^\d+$", "8080"));
        assert!(!m(r"^\d+$", "٣"));
        assert!(!m(r"^\d+$", "３"));
        assert!(!m(r"^\w+$", "café"));
        assert!(m(r"^\W$", "é"));
        assert!(!m(r"^\s$", "\u{2003}"));
        assert!(!m(r"^\s$", "\u{0B}"));
        assert!(m(r"^\s$", "\u{0C}"));
        assert!(m(r"^[\d_]+$", "1_2"));
        assert!(m(r"^[\D]+$", "ab٣"));
        assert!(!m(r"^[^\d]+$", "a1"));
    }

    #[test]
    fn word_boundaries_are_ascii() {
        assert!(m(r"\bcaf\b", "café"));
        assert!(m(r"\b\d{3}-\d{2}-\d{4}\b", "SSN: 123-45-6789"));
        assert!(!m(r"\Bfoo", "foo"));
    }

    #[test]
    fn class_literals_keep_re2_meaning() {
        assert!(m(r"^[[]$", "["));
        assert!(m(r"^[a&&b]+$", "a&b"));
        assert!(m(r"^[~~]$", "~"));
        assert!(m(r"^[]a]+$", "]a"));
        assert!(m(r"^[[:alpha:]]+$", "abc"));
        assert!(!m(r"^[[:alpha:]]+$", "ab1"));
    }

    #[test]
    fn escapes_that_are_not_classes_pass_through() {
        assert!(m(r"\\d", r"\d"));
        assert!(!m(r"\\d", "5"));
        assert!(m(r"^\x41\x{42}\pL\p{Greek}$", "ABcα"));
        assert!(m(r"^\Qa.b*\E$", "a.b*"));
        assert!(!m(r"^\Qa.b\E$", "axb"));
        assert!(m(r"^https://github\.com/.*", "https://github.com/u/r"));
    }

    #[test]
    fn unsupported_and_oversized_patterns_are_rejected() {
        assert!(compile(r"(a)\1").is_err());
        assert!(compile(r"(?=a)").is_err());
        assert!(compile(r"\C").is_err());
        assert!(compile("a\\").is_err());
        assert!(compile(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
        assert!(compile(r"(\pL{100}){100}").is_err());
        let e = compile("(").unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn catastrophic_patterns_stay_linear() {
        let re = compile(r"(a+)+$").unwrap();
        let s = format!("{}b", "a".repeat(100_000));
        assert!(!re.is_match(&s));
    }

    proptest! {
        /// On ASCII input the translation matches exactly what a Unicode-mode compile of the
        /// original pattern matches (the rewrite only differs on non-ASCII text).
        #[test]
        fn translation_agrees_with_unicode_regex_on_ascii(s in "[ -~\t\n]{0,24}") {
            for p in [r"\d+", r"^\w+$", r"\s", r"\bfo\w*\b", r"[\d\s]+", r"[^\w]", r"\D\W\S", r"^[a-z_]\w*$"] {
                let ours = compile(p).unwrap();
                let theirs = Regex::new(p).unwrap();
                prop_assert_eq!(ours.is_match(&s), theirs.is_match(&s), "pattern {}", p);
                prop_assert_eq!(
                    ours.find_iter(&s).map(|m| m.range()).collect::<Vec<_>>(),
                    theirs.find_iter(&s).map(|m| m.range()).collect::<Vec<_>>()
                );
            }
        }
    }
}
