//! DLP (AIP §1.5, v1alpha1 + v1alpha2): the validated `spec.dlp` section with its patterns
//! compiled once, and redaction of strings and JSON values.
//!
//! Algorithm (the one the conformance vectors pin down): patterns in scope are applied in the
//! order listed, each to the previous one's output, every non-overlapping match replaced by
//! `[REDACTED:<name>]`; one hit per pattern with its match count. With `detect_encoding`, base64
//! and hex tokens of the result are decoded and scanned; a token whose decoded text matches a
//! pattern is replaced whole by that pattern's marker (one hit). A `RegexSet` over the patterns
//! of each direction answers "could anything match?" first, so clean text costs one scan.
//!
//! JSON values are redacted in place: only string values (and object keys) that match are
//! rewritten; numbers, booleans, nulls and key order are untouched (`serde_json` keeps insertion
//! order). `max_scan_size` bounds the bytes scanned per value (all strings and keys together);
//! what lies beyond is reported as `truncated` and left as is — request handling treats that as
//! a match (see `Engine::scan_request`).
//!
//! Must not: log matched content, or change anything that did not match.

use std::borrow::Cow;

use regex::{Regex, RegexSet};
use serde_json::{Map, Value};

use super::check::{Checked, Checker};
use super::dlp_encoding::{candidates, decodings, has_candidate};
use super::raw::RawDlp;
use super::re2;
use super::stderr_filter::StderrFilter;
use super::units::parse_size;

pub const DEFAULT_MAX_SCAN_SIZE: usize = 1 << 20;
/// Upper bound on `max_scan_size` (a message is bounded far below this by the proxy).
pub const MAX_MAX_SCAN_SIZE: usize = 1 << 30;

/// Which way the scanned content travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Client → server (tool arguments, when `scan_requests`).
    Request,
    /// Server → client (results, errors, notifications, stderr).
    Response,
}

/// `patterns[].scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Request,
    Response,
    All,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Request => "request",
            Scope::Response => "response",
            Scope::All => "all",
        }
    }
    fn covers(self, d: Direction) -> bool {
        matches!(
            (self, d),
            (Scope::All, _)
                | (Scope::Request, Direction::Request)
                | (Scope::Response, Direction::Response)
        )
    }
}

/// `on_request_match`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRequestMatch {
    Block,
    Redact,
    Warn,
}

impl OnRequestMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRequestMatch::Block => "block",
            OnRequestMatch::Redact => "redact",
            OnRequestMatch::Warn => "warn",
        }
    }
}

/// `on_redaction_failure`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnRedactionFailure {
    Block,
    AllowOriginal,
    Reject,
}

impl OnRedactionFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            OnRedactionFailure::Block => "block",
            OnRedactionFailure::AllowOriginal => "allow_original",
            OnRedactionFailure::Reject => "reject",
        }
    }
}

/// One compiled pattern.
#[derive(Debug, Clone)]
pub struct DlpPattern {
    pub name: String,
    /// The regex as written.
    pub pattern: String,
    pub scope: Scope,
    pub regex: Regex,
    marker: String,
}

impl DlpPattern {
    /// `[REDACTED:<name>]`.
    pub fn marker(&self) -> &str {
        &self.marker
    }
}

/// One pattern's matches in a scanned value (`{rule, count}` in audit and vectors).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DlpHit {
    pub rule: String,
    pub count: usize,
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redaction {
    /// One entry per pattern that matched, in pattern order.
    pub hits: Vec<DlpHit>,
    /// Some content was beyond `max_scan_size` and was not scanned (log a warning).
    pub truncated: bool,
    /// Bytes of string content seen (scanned or not).
    pub total_bytes: usize,
}

impl Redaction {
    pub fn matched(&self) -> bool {
        !self.hits.is_empty()
    }
    pub fn match_count(&self) -> usize {
        self.hits.iter().map(|h| h.count).sum()
    }
    /// Rule names, comma-separated (for messages and audit).
    pub fn rules(&self) -> String {
        self.hits
            .iter()
            .map(|h| h.rule.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `spec.dlp`, validated and compiled.
#[derive(Debug, Clone)]
pub struct Dlp {
    pub enabled: bool,
    pub detect_encoding: bool,
    pub filter_stderr: bool,
    pub scan_requests: bool,
    pub scan_responses: bool,
    pub max_scan_size: usize,
    pub on_request_match: OnRequestMatch,
    pub on_redaction_failure: OnRedactionFailure,
    pub log_original_on_failure: bool,
    patterns: Vec<DlpPattern>,
    request_set: Option<RegexSet>,
    response_set: Option<RegexSet>,
}

impl Dlp {
    pub fn patterns(&self) -> &[DlpPattern] {
        &self.patterns
    }

    /// Whether content travelling in `dir` is scanned at all.
    pub fn scans(&self, dir: Direction) -> bool {
        self.enabled
            && match dir {
                Direction::Request => self.scan_requests && self.request_set.is_some(),
                Direction::Response => self.scan_responses && self.response_set.is_some(),
            }
    }

    /// Cheap check: can `text` need redaction in `dir`? False means it certainly does not.
    pub fn may_match(&self, text: &str, dir: Direction) -> bool {
        if !self.scans(dir) {
            return false;
        }
        let set = match dir {
            Direction::Request => &self.request_set,
            Direction::Response => &self.response_set,
        };
        set.as_ref().is_some_and(|s| s.is_match(text))
            || (self.detect_encoding && has_candidate(text))
    }

    /// Redacts one string (bounded by `max_scan_size`).
    pub fn redact_str<'a>(&self, text: &'a str, dir: Direction) -> (Cow<'a, str>, Redaction) {
        let mut counts = vec![0; self.patterns.len()];
        let mut budget = self.max_scan_size;
        let mut truncated = false;
        let out = self.redact_bounded(text, dir, &mut budget, &mut counts, &mut truncated);
        let r = self.report(&counts, truncated, text.len());
        match out {
            Some(s) => (Cow::Owned(s), r),
            None => (Cow::Borrowed(text), r),
        }
    }

    /// Redacts every string value and object key of `value` in place.
    pub fn redact_value(&self, value: &mut Value, dir: Direction) -> Redaction {
        let mut counts = vec![0; self.patterns.len()];
        let mut w = Walk {
            dlp: self,
            dir,
            budget: self.max_scan_size,
            counts: &mut counts,
            truncated: false,
            total: 0,
        };
        if self.scans(dir) {
            w.walk(value);
        }
        let (truncated, total) = (w.truncated, w.total);
        self.report(&counts, truncated, total)
    }

    /// What [`redact_value`](Self::redact_value) would find, without changing `value` (a copy
    /// is made only when some string may match or the value is over `max_scan_size`).
    pub fn scan_value(&self, value: &Value, dir: Direction) -> Redaction {
        if !self.scans(dir) {
            return Redaction::default();
        }
        let (may, total) = self.prescan(value, dir);
        if !may && total <= self.max_scan_size {
            return Redaction {
                total_bytes: total,
                ..Redaction::default()
            };
        }
        let mut copy = value.clone();
        self.redact_value(&mut copy, dir)
    }

    /// Redacts a whole server→client JSON-RPC message in place: everything under `result`,
    /// `error` (message and data) and `params` (notifications, server requests), keys
    /// included; `jsonrpc`, `id` and `method` are routing and left alone.
    pub fn redact_server_message(&self, message: &mut Value) -> Redaction {
        let mut counts = vec![0; self.patterns.len()];
        let mut w = Walk {
            dlp: self,
            dir: Direction::Response,
            budget: self.max_scan_size,
            counts: &mut counts,
            truncated: false,
            total: 0,
        };
        if self.scans(Direction::Response)
            && let Value::Object(map) = message
        {
            for (k, v) in map.iter_mut() {
                if !matches!(k.as_str(), "jsonrpc" | "id" | "method") {
                    w.walk(v);
                }
            }
        }
        let (truncated, total) = (w.truncated, w.total);
        self.report(&counts, truncated, total)
    }

    /// (some string or key may match, total string bytes).
    fn prescan(&self, v: &Value, dir: Direction) -> (bool, usize) {
        match v {
            Value::String(s) => (self.may_match(s, dir), s.len()),
            Value::Array(items) => items.iter().fold((false, 0), |(m, t), x| {
                let (m2, t2) = self.prescan(x, dir);
                (m || m2, t + t2)
            }),
            Value::Object(map) => map.iter().fold((false, 0), |(m, t), (k, x)| {
                let (m2, t2) = self.prescan(x, dir);
                (m || m2 || self.may_match(k, dir), t + t2 + k.len())
            }),
            Value::Null | Value::Bool(_) | Value::Number(_) => (false, 0),
        }
    }

    /// A filter for the server's stderr (`None` unless `enabled` and `filter_stderr`).
    pub fn stderr_filter(&self) -> Option<StderrFilter> {
        (self.enabled && self.filter_stderr).then(|| StderrFilter::new(self.clone()))
    }

    fn report(&self, counts: &[usize], truncated: bool, total_bytes: usize) -> Redaction {
        let hits = self
            .patterns
            .iter()
            .zip(counts)
            .filter(|(_, n)| **n > 0)
            .map(|(p, n)| DlpHit {
                rule: p.name.clone(),
                count: *n,
            })
            .collect();
        Redaction {
            hits,
            truncated,
            total_bytes,
        }
    }

    /// Redacts the first `budget` bytes of `text`; `None` when nothing changed.
    fn redact_bounded(
        &self,
        text: &str,
        dir: Direction,
        budget: &mut usize,
        counts: &mut [usize],
        truncated: &mut bool,
    ) -> Option<String> {
        let cut = if text.len() > *budget {
            *truncated = true;
            floor_char_boundary(text, *budget)
        } else {
            text.len()
        };
        *budget -= cut;
        let (head, tail) = text.split_at(cut);
        let red = self.redact_full(head, dir, counts)?;
        Some(red + tail)
    }

    fn redact_full(&self, text: &str, dir: Direction, counts: &mut [usize]) -> Option<String> {
        if text.is_empty() || !self.may_match(text, dir) {
            return None;
        }
        let mut cur: Cow<'_, str> = Cow::Borrowed(text);
        for (i, p) in self.patterns.iter().enumerate() {
            if !p.scope.covers(dir) {
                continue;
            }
            let mut n = 0usize;
            let replaced = p.regex.replace_all(&cur, |_: &regex::Captures<'_>| {
                n += 1;
                p.marker.as_str()
            });
            if n > 0 {
                counts[i] += n;
                cur = Cow::Owned(replaced.into_owned());
            }
        }
        if self.detect_encoding
            && let Some(s) = self.redact_encoded(&cur, dir, counts)
        {
            cur = Cow::Owned(s);
        }
        match cur {
            Cow::Owned(s) => Some(s),
            Cow::Borrowed(_) => None,
        }
    }

    fn redact_encoded(&self, text: &str, dir: Direction, counts: &mut [usize]) -> Option<String> {
        let mut out = String::new();
        let mut last = 0;
        for range in candidates(text) {
            let token = &text[range.clone()];
            let decoded = decodings(token);
            let hit =
                self.patterns.iter().enumerate().find(|(_, p)| {
                    p.scope.covers(dir) && decoded.iter().any(|d| p.regex.is_match(d))
                });
            if let Some((i, p)) = hit {
                counts[i] += 1;
                out.push_str(&text[last..range.start]);
                out.push_str(&p.marker);
                last = range.end;
            }
        }
        if last == 0 {
            return None;
        }
        out.push_str(&text[last..]);
        Some(out)
    }
}

struct Walk<'a> {
    dlp: &'a Dlp,
    dir: Direction,
    budget: usize,
    counts: &'a mut [usize],
    truncated: bool,
    total: usize,
}

impl Walk<'_> {
    fn text(&mut self, s: &str) -> Option<String> {
        self.total += s.len();
        self.dlp.redact_bounded(
            s,
            self.dir,
            &mut self.budget,
            self.counts,
            &mut self.truncated,
        )
    }

    fn walk(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => {
                if let Some(new) = self.text(s) {
                    *s = new;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|x| self.walk(x)),
            Value::Object(map) => {
                if map.keys().any(|k| self.dlp.may_match(k, self.dir)) {
                    self.rekey(map);
                } else {
                    self.total += map.keys().map(String::len).sum::<usize>();
                }
                map.values_mut().for_each(|x| self.walk(x));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Rebuilds `map` with redacted keys, in the same order. Two keys that redact to the same
    /// text keep both entries: the later one gets a `#<n>` suffix.
    fn rekey(&mut self, map: &mut Map<String, Value>) {
        let old = std::mem::take(map);
        for (k, v) in old {
            let mut key = self.text(&k).unwrap_or(k);
            if map.contains_key(&key) {
                let base = key.clone();
                let mut n = 2;
                while map.contains_key(&key) {
                    key = format!("{base}#{n}");
                    n += 1;
                }
            }
            map.insert(key, v);
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    if i >= s.len() {
        return s.len();
    }
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

const P: &str = "spec.dlp";

pub(crate) fn validate(c: &mut Checker<'_>, raw: &RawDlp) -> Checked<Dlp> {
    let v2 = [
        ("scan_requests", raw.scan_requests.is_some()),
        ("scan_responses", raw.scan_responses.is_some()),
        ("max_scan_size", raw.max_scan_size.is_some()),
        ("on_request_match", raw.on_request_match.is_some()),
        ("on_redaction_failure", raw.on_redaction_failure.is_some()),
        (
            "log_original_on_failure",
            raw.log_original_on_failure.is_some(),
        ),
    ];
    for (field, present) in v2 {
        c.require_v1alpha2(&format!("{P}.{field}"), present)?;
    }
    let Some(raw_patterns) = &raw.patterns else {
        return Err(c.err(
            &format!("{P}.patterns"),
            "missing required field `patterns`",
            Some("list at least one `{name: …, regex: …}`, or remove the `dlp` section".into()),
        ));
    };
    if raw_patterns.is_empty() {
        return Err(c.err(
            &format!("{P}.patterns"),
            "`patterns` is empty",
            Some("list at least one `{name: …, regex: …}`, or remove the `dlp` section".into()),
        ));
    }
    let mut patterns = Vec::with_capacity(raw_patterns.len());
    for (i, rp) in raw_patterns.iter().enumerate() {
        let p = format!("{P}.patterns[{i}]");
        c.require_v1alpha2(&format!("{p}.scope"), rp.scope.is_some())?;
        let name = match &rp.name {
            Some(n) => n.clone(),
            None => {
                return Err(c.err(
                    &format!("{p}.name"),
                    "missing required field `name`",
                    Some("the name appears in the redaction marker `[REDACTED:<name>]`".into()),
                ));
            }
        };
        let len = name.chars().count();
        if name.trim().is_empty() || len > 64 {
            return Err(c.err(
                &format!("{p}.name"),
                format!("a pattern name must be 1 to 64 characters (this one has {len})"),
                None,
            ));
        }
        if name.chars().any(|ch| ch.is_control() || ch == ']') {
            return Err(c.err(
                &format!("{p}.name"),
                "a pattern name must not contain control characters or `]`",
                Some("it is written into `[REDACTED:<name>]`".into()),
            ));
        }
        let pattern = match &rp.regex {
            Some(r) if !r.is_empty() => r.clone(),
            Some(_) => return Err(c.err(&format!("{p}.regex"), "must not be empty", None)),
            None => {
                return Err(c.err(
                    &format!("{p}.regex"),
                    "missing required field `regex`",
                    None,
                ));
            }
        };
        let regex = re2::compile(&pattern).map_err(|m| {
            c.err(
                &format!("{p}.regex"),
                m,
                Some("patterns use RE2 syntax: no backreferences or lookaround".into()),
            )
        })?;
        if regex.is_match("") {
            return Err(c.err(
                &format!("{p}.regex"),
                format!(
                    "`{pattern}` matches the empty string, so it would insert markers everywhere"
                ),
                Some("require at least one character, e.g. `+` instead of `*`".into()),
            ));
        }
        let scope = match &rp.scope {
            Some(s) => c.one_of(
                &format!("{p}.scope"),
                s,
                &[
                    ("request", Scope::Request),
                    ("response", Scope::Response),
                    ("all", Scope::All),
                ],
            )?,
            None => Scope::All,
        };
        patterns.push(DlpPattern {
            marker: format!("[REDACTED:{name}]"),
            name,
            pattern,
            scope,
            regex,
        });
    }
    let set_for = |d: Direction| -> Checked<Option<RegexSet>> {
        let ps: Vec<&str> = patterns
            .iter()
            .filter(|p| p.scope.covers(d))
            .map(|p| p.pattern.as_str())
            .collect();
        if ps.is_empty() {
            return Ok(None);
        }
        re2::compile_set(&ps).map(Some).map_err(|m| {
            c.err(
                &format!("{P}.patterns"),
                m,
                Some("use fewer or simpler patterns".into()),
            )
        })
    };
    let request_set = set_for(Direction::Request)?;
    let response_set = set_for(Direction::Response)?;
    let max_scan_size = match &raw.max_scan_size {
        Some(s) => {
            let path = format!("{P}.max_scan_size");
            let n = parse_size(s).map_err(|m| c.err(&path, m, None))?;
            if n == 0 || n > MAX_MAX_SCAN_SIZE as u64 {
                return Err(c.err(&path, format!("must be between 1B and 1GB (got {s})"), None));
            }
            n as usize
        }
        None => DEFAULT_MAX_SCAN_SIZE,
    };
    let on_request_match = match &raw.on_request_match {
        Some(s) => c.one_of(
            &format!("{P}.on_request_match"),
            s,
            &[
                ("block", OnRequestMatch::Block),
                ("redact", OnRequestMatch::Redact),
                ("warn", OnRequestMatch::Warn),
            ],
        )?,
        None => OnRequestMatch::Block,
    };
    let on_redaction_failure = match &raw.on_redaction_failure {
        Some(s) => c.one_of(
            &format!("{P}.on_redaction_failure"),
            s,
            &[
                ("block", OnRedactionFailure::Block),
                ("allow_original", OnRedactionFailure::AllowOriginal),
                ("reject", OnRedactionFailure::Reject),
            ],
        )?,
        None => OnRedactionFailure::Block,
    };
    if on_redaction_failure == OnRedactionFailure::AllowOriginal {
        c.warn(&format!("{P}.on_redaction_failure"), "allow_original forwards unredacted data when redaction breaks a request (meant for debugging)");
    }
    let scan_requests = raw.scan_requests.unwrap_or(false);
    if scan_requests && request_set.is_none() {
        c.warn(
            &format!("{P}.scan_requests"),
            "no pattern has scope request or all, so requests are not scanned",
        );
    }
    Ok(Dlp {
        enabled: raw.enabled.unwrap_or(true),
        detect_encoding: raw.detect_encoding.unwrap_or(false),
        filter_stderr: raw.filter_stderr.unwrap_or(false),
        scan_requests,
        scan_responses: raw.scan_responses.unwrap_or(true),
        max_scan_size,
        on_request_match,
        on_redaction_failure,
        log_original_on_failure: raw.log_original_on_failure.unwrap_or(false),
        patterns,
        request_set,
        response_set,
    })
}

#[cfg(test)]
#[path = "dlp_tests.rs"]
mod tests;
