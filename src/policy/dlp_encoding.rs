//! `dlp.detect_encoding`: finds base64 (standard or URL-safe, padded or not, wrapped across
//! lines or not) and hex tokens (with or without `0x`) in a string and decodes them, so DLP
//! patterns can be run on what a token hides. A token whose decoded content matches is redacted
//! whole.
//!
//! Limits (documented, by design): tokens shorter than [`MIN_TOKEN_LEN`] characters are not
//! decoded (too short to hide a credential and too common in ordinary text); one level of
//! encoding is decoded (base64 of base64 is not unwrapped); decoded bytes that are not UTF-8 are
//! scanned lossily; tokens longer than [`MAX_TOKEN_LEN`] are decoded only up to that length.
//!
//! Must not: decode anything other than the token found, or allocate for text with no candidate.

use std::ops::Range;
use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD_PAD_INDIFFERENT, URL_SAFE_PAD_INDIFFERENT};
use regex::Regex;

/// Shortest token considered (12 bytes of base64-encoded data, 8 bytes of hex).
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest prefix of a token that is decoded.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;

/// A token may go on across line breaks: `base64` and MIME wrap their output at 76 columns, so
/// a secret can straddle two lines.
static TOKEN: LazyLock<Option<Regex>> = LazyLock::new(|| {
    Regex::new(&format!(
        "[A-Za-z0-9+/_-]{{{MIN_TOKEN_LEN},}}(?:\\r?\\n[A-Za-z0-9+/_-]+)*={{0,2}}"
    ))
    .ok()
});

/// Byte ranges of candidate encoded tokens in `text`.
pub fn candidates(text: &str) -> Vec<Range<usize>> {
    match TOKEN.as_ref() {
        Some(re) => re.find_iter(text).map(|m| m.range()).collect(),
        None => Vec::new(),
    }
}

/// Whether `text` holds any candidate token (cheap check for the no-match path).
pub fn has_candidate(text: &str) -> bool {
    TOKEN.as_ref().is_some_and(|re| re.is_match(text))
}

/// The decoded forms of a token: hex (when it is all hex digits, even length) and base64
/// (standard or URL-safe alphabet). Each is returned as text (lossy UTF-8).
pub fn decodings(token: &str) -> Vec<String> {
    let token = &token[..floor_boundary(token, MAX_TOKEN_LEN)];
    let joined;
    let token = if token.contains(['\r', '\n']) {
        joined = token.replace(['\r', '\n'], "");
        joined.as_str()
    } else {
        token
    };
    let mut out = Vec::new();
    let hex_digits = token
        .strip_prefix("0x")
        .or_else(|| token.strip_prefix("0X"))
        .unwrap_or(token);
    if hex_digits.len().is_multiple_of(2)
        && hex_digits.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(bytes) = hex::decode(hex_digits)
    {
        out.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    let engine = if token.contains(['-', '_']) {
        &URL_SAFE_PAD_INDIFFERENT
    } else {
        &STANDARD_PAD_INDIFFERENT
    };
    // A token cut by MAX_TOKEN_LEN, or one that is not a whole number of quanta, still
    // decodes in its longest valid prefix.
    let body = token.trim_end_matches('=');
    let usable = body.len() - body.len() % 4;
    for candidate in [token, &body[..usable]] {
        if let Ok(bytes) = engine.decode(candidate) {
            out.push(String::from_utf8_lossy(&bytes).into_owned());
            break;
        }
    }
    out
}

fn floor_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    let mut i = max;
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_and_hex_tokens_are_found_and_decoded() {
        let b64 = base64::engine::general_purpose::STANDARD.encode("key AKIAIOSFODNN7EXAMPLE");
        let text = format!("payload={b64}; done");
        let c = candidates(&text);
        assert_eq!(c.len(), 1);
        assert!(
            decodings(&text[c[0].clone()])
                .iter()
                .any(|d| d.contains("AKIAIOSFODNN7EXAMPLE"))
        );

        let hexed = hex::encode("AKIAIOSFODNN7EXAMPLE");
        assert!(
            decodings(&hexed)
                .iter()
                .any(|d| d == "AKIAIOSFODNN7EXAMPLE")
        );

        let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("??>>secret-stuff<<??");
        assert!(decodings(&url).iter().any(|d| d.contains("secret-stuff")));
    }

    #[test]
    fn wrapped_base64_and_prefixed_hex_are_decoded() {
        // As `base64` and MIME write it: 76 columns, the key across the line break.
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(format!("id={}AKIAIOSFODNN7EXAMPLE\n", "x".repeat(45)));
        let wrapped = format!("{}\n{}\n", &b64[..76], &b64[76..]);
        let c = candidates(&wrapped);
        assert_eq!(c.len(), 1, "{c:?}");
        assert!(
            decodings(&wrapped[c[0].clone()])
                .iter()
                .any(|d| d.contains("AKIAIOSFODNN7EXAMPLE"))
        );
        let prefixed = format!("0x{}", hex::encode("AKIAIOSFODNN7EXAMPLE"));
        assert!(
            decodings(&prefixed)
                .iter()
                .any(|d| d == "AKIAIOSFODNN7EXAMPLE")
        );
    }

    #[test]
    fn short_words_are_not_candidates() {
        assert!(!has_candidate("hello world, this is text"));
        assert!(candidates("abc def").is_empty());
    }

    #[test]
    fn unpadded_odd_length_base64_decodes_its_prefix() {
        let b64 = base64::engine::general_purpose::STANDARD_NO_PAD.encode("AKIAIOSFODNN7EXAMPLE!");
        assert!(
            decodings(&b64)
                .iter()
                .any(|d| d.contains("AKIAIOSFODNN7EXAMPLE"))
        );
    }
}
