//! Protected paths (AIP §2.7): does any tool argument refer to a protected file or directory?
//!
//! Entries (`spec.protected_paths`, the policy file itself, the audit file) are expanded once
//! when an engine is built: `~`, `~user`, `$HOME`/`${HOME}`, relative to the server's cwd, `.`,
//! `..` and `//` removed, and also resolved through symlinks (longest existing prefix).
//!
//! Every string in the arguments — values at any depth and object keys — is examined in several
//! views: as sent; percent-decoded (repeatedly, for `%252e`); with shell quoting removed
//! (`'`, `"`, `\`); `file://[host]` prefixes dropped; `$HOME`/`${HOME}` expanded anywhere. Each
//! view is split into shell-like tokens (whitespace, `; | & < > ( ) { } , = :`, backquote, control
//! characters incl. NUL), so paths inside commands (`cat ~/.ssh/id_rsa`, `--key=~/.ssh/k`,
//! `PATH=/a:/b`) are found. Because those characters are legal in file names and a server
//! collapses `..` across them (`/srv/a b/../secret` is `/srv/secret`), the whole view and each
//! word as a shell splits it (quotes and backslashes honoured) are candidates as well. Non-ASCII
//! strings are also examined in their composed (NFC) and decomposed (NFD) spellings, which
//! servers match to each other. A token is path-like when it contains `/` or starts with `~` or
//! `.`, or when it is the whole value; it is a URL, and skipped, only when it starts with
//! `scheme://`. Path-like tokens are expanded (`~`, `~user` via the
//! password database, relative → server cwd), cleaned, and compared component-wise: a hit is
//! the entry itself or anything below it. They are also resolved through symlinks as the kernel
//! would (`..` after a link applies to its target; a dangling link counts as its target; a
//! missing tail is kept), so `/tmp/link/id_rsa` with `link → ~/.ssh` is caught, and so is the
//! cleaned form, which is what a server that collapses `..` first opens
//! (`/tmp/missing/../link/id_rsa`). Strings with no
//! path character at all (`/ ~ . % $ \ ' " * ? [`) are not examined further unless the whole
//! value names an entry that sits in the cwd: a one-word value such as `Makefile` is therefore
//! not resolved through a symlink of that name (the sandbox covers that).
//! Tokens with shell glob characters (`*`, `?`, `[…]`) are matched component-wise as globs
//! (`~/.s*h/id_*` hits `~/.ssh`). Finally each view is searched for the entries' absolute and
//! as-written (`~/…`) forms as substrings, at path boundaries.
//!
//! What string matching cannot catch (the sandbox's Landlock/mount rules are the real guard):
//! paths built by the server from several arguments (`dir` + `name`) or from defaults; shell
//! indirection (`$(…)`, variables other than HOME, `eval`, brace ranges, `$'\x2e'` quoting);
//! encodings other than percent-encoding (base64, hex, Unicode look-alikes such as `／`); hard
//! links and bind mounts; symlinks created or swapped after the check (time of check vs time of
//! use) or living only in the server's mount namespace; ancestors (a call on `~` may recurse
//! into `~/.ssh`: only the entry and what is below it are matched); archives, URLs fetched by
//! the server, and case-insensitive file systems.
//!
//! Must not: do I/O other than symlink resolution and `~user` lookups; resolve more than
//! [`MAX_RESOLUTIONS`] paths per call (beyond that the call is refused: fail closed).

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use regex::Regex;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// Distinct path-like tokens resolved through symlinks per evaluated call (each costs a couple
/// of system calls). A call holding more (a large file body full of paths) is refused with
/// -32007 rather than checked partially.
pub const MAX_RESOLUTIONS: usize = 4096;

/// The entry reported when a call holds too many paths to verify.
pub const TOO_MANY_PATHS: &str = "<too many paths to verify>";

#[derive(Debug, Clone)]
struct Protected {
    /// As written (audit `failed_rule`).
    raw: String,
    /// Expanded, absolute, clean.
    abs: String,
    /// Symlinks resolved, when different from `abs`.
    canon: Option<String>,
    /// The as-written form to find verbatim (entries written with `~` or `$HOME`).
    literal: Option<String>,
}

/// A protected path found in the arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PathHit {
    /// Where in the arguments: `path`, `opts.files[2]`.
    pub arg: String,
    /// The entry as written.
    pub entry: String,
}

#[derive(Debug, Clone)]
pub(crate) struct ProtectedPaths {
    entries: Vec<Protected>,
    home: Option<String>,
    cwd: String,
    resolve: bool,
    /// Names of entries that sit directly in the cwd: the only thing a value without any path
    /// character (`/ ~ . % $` …) can refer to.
    bare: Vec<String>,
    /// Every needle of the substring check in one automaton: a cheap "could any entry occur
    /// here" before the precise per-entry search.
    needles: Option<Regex>,
}

impl ProtectedPaths {
    /// Expands `entries` (as written in the policy) and `files` (always protected).
    pub fn new(
        entries: &[String],
        files: &[PathBuf],
        home: Option<&Path>,
        cwd: &Path,
        resolve: bool,
    ) -> Self {
        let mut pp = ProtectedPaths {
            entries: Vec::new(),
            home: home.map(|h| clean(&h.to_string_lossy(), "/")),
            cwd: clean(&cwd.to_string_lossy(), "/"),
            resolve,
            bare: Vec::new(),
            needles: None,
        };
        let mut seen = HashSet::new();
        let written = entries.iter().map(|e| (e.clone(), true));
        let always = files
            .iter()
            .map(|f| (f.to_string_lossy().into_owned(), false));
        for (raw, from_policy) in written.chain(always) {
            let expanded = pp.expand_home_vars(&raw);
            let abs = pp.absolute(&expanded).into_owned();
            if !seen.insert(abs.clone()) {
                continue;
            }
            let canon = resolve_prefix(&abs)
                .filter(|c| *c != abs)
                .map(Cow::into_owned);
            let literal = (from_policy
                && (raw.starts_with('~') || raw.contains("$HOME") || raw.contains("${HOME}")))
            .then(|| raw.trim_end_matches('/').to_owned())
            .filter(|l| l.len() > 1);
            pp.entries.push(Protected {
                raw,
                abs,
                canon,
                literal,
            });
        }
        let mut needles: Vec<&str> = Vec::new();
        for e in &pp.entries {
            for p in std::iter::once(e.abs.as_str()).chain(e.canon.as_deref()) {
                if let Some(name) = p
                    .strip_prefix(pp.cwd.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    && !name.is_empty()
                    && !name.contains('/')
                {
                    pp.bare.push(name.to_owned());
                }
                needles.push(p);
            }
            needles.extend(e.literal.as_deref());
        }
        let alternation: Vec<String> = needles.iter().map(|n| regex::escape(n)).collect();
        pp.needles = Regex::new(&alternation.join("|")).ok();
        pp
    }

    /// The expanded absolute form of every entry (for `aip policy check`).
    pub fn expanded(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .map(|e| (e.raw.as_str(), e.abs.as_str()))
    }

    /// The first argument (value or key, at any depth) that refers to a protected path.
    pub fn scan(&self, args: &Value) -> Option<PathHit> {
        if self.entries.is_empty() {
            return None;
        }
        let mut scan = Scan {
            pp: self,
            resolutions: 0,
            seen: Vec::new(),
            seen_set: HashSet::new(),
        };
        let mut path = Vec::new();
        scan.value(args, &mut path)
    }

    fn expand_home_vars<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let Some(home) = &self.home else {
            return Cow::Borrowed(s);
        };
        if !s.contains("$HOME") && !s.contains("${HOME}") {
            return Cow::Borrowed(s);
        }
        let mut out = String::with_capacity(s.len() + home.len());
        let mut rest = s;
        while let Some(i) = rest.find('$') {
            out.push_str(&rest[..i]);
            let tail = &rest[i..];
            if let Some(after) = tail.strip_prefix("${HOME}") {
                out.push_str(home);
                rest = after;
            } else if let Some(after) = tail.strip_prefix("$HOME")
                && !after.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            {
                out.push_str(home);
                rest = after;
            } else {
                out.push('$');
                rest = &tail[1..];
            }
        }
        out.push_str(rest);
        Cow::Owned(out)
    }

    /// Tilde expansion and cwd for relative paths, then lexical cleaning.
    fn absolute<'t>(&self, token: &'t str) -> Cow<'t, str> {
        if token.starts_with('~') {
            Cow::Owned(clean(&self.absolute_raw(token), "/"))
        } else {
            clean_cow(token, &self.cwd)
        }
    }

    /// Tilde expansion and cwd for relative paths, NOT cleaned: the kernel resolves `..` after
    /// following symlinks (`link/../x` is the parent of the link's target), so symlink
    /// resolution must start from this form.
    fn absolute_raw<'t>(&self, token: &'t str) -> Cow<'t, str> {
        if let Some(rest) = token.strip_prefix('~') {
            let (user, tail) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let base = if user.is_empty() {
                self.home.clone()
            } else if user == "+" {
                Some(self.cwd.clone())
            } else if user
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
            {
                user_home(user)
            } else {
                None
            };
            if let Some(b) = base {
                return Cow::Owned(format!("{b}/{tail}"));
            }
        }
        if token.starts_with('/') {
            Cow::Borrowed(token)
        } else {
            Cow::Owned(format!("{}/{token}", self.cwd))
        }
    }

    /// Whether `s` can refer to a protected path at all: it has a path character, or (for a
    /// value, not a key) it is one word naming an entry that sits in the cwd. Most strings
    /// (identifiers, prose without paths, numbers as text) stop here.
    fn worth_scanning(&self, s: &str, whole_allowed: bool) -> bool {
        let special = |b: &u8| {
            matches!(
                b,
                b'/' | b'~' | b'.' | b'%' | b'$' | b'\\' | b'\'' | b'"' | b'*' | b'?' | b'['
            )
        };
        if s.as_bytes().iter().any(special) {
            return true;
        }
        if !whole_allowed || self.bare.is_empty() {
            return false;
        }
        let mut words = tokens(s);
        match (words.next(), words.next()) {
            (Some(w), None) => self.bare.iter().any(|b| b == w),
            _ => false,
        }
    }

    fn hit(&self, path: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| under(path, &e.abs) || e.canon.as_deref().is_some_and(|c| under(path, c)))
    }

    fn glob_hit(&self, pattern: &str) -> Option<usize> {
        let pat: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
        self.entries.iter().position(|e| {
            std::iter::once(e.abs.as_str())
                .chain(e.canon.as_deref())
                .any(|target| {
                    let t: Vec<&str> = target.split('/').filter(|c| !c.is_empty()).collect();
                    pat.len() >= t.len() && t.iter().zip(&pat).all(|(name, g)| glob_match(g, name))
                })
        })
    }

    fn substring_hit(&self, view: &str, expanded: &str) -> Option<usize> {
        if let Some(n) = &self.needles
            && !n.is_match(expanded)
            && (std::ptr::eq(expanded, view) || !n.is_match(view))
        {
            return None;
        }
        self.entries.iter().position(|e| {
            contains_path(expanded, &e.abs)
                || e.canon
                    .as_deref()
                    .is_some_and(|c| contains_path(expanded, c))
                || e.literal.as_deref().is_some_and(|l| contains_path(view, l))
        })
    }
}

struct Scan<'a> {
    pp: &'a ProtectedPaths,
    resolutions: usize,
    /// Paths already resolved in this call. A call usually holds a handful, so a list searched
    /// linearly beats hashing until it grows (then `seen_set` takes over).
    seen: Vec<String>,
    seen_set: HashSet<String>,
}

impl Scan<'_> {
    /// Records `raw` as resolved; false when it already was.
    fn first_time(&mut self, raw: &str) -> bool {
        const LINEAR: usize = 32;
        if self.seen.iter().any(|s| s == raw) || self.seen_set.contains(raw) {
            return false;
        }
        if self.seen.len() < LINEAR {
            self.seen.push(raw.to_owned());
        } else {
            self.seen_set.insert(raw.to_owned());
        }
        true
    }
}

enum Seg<'v> {
    Key(&'v str),
    Index(usize),
}

fn render(path: &[Seg<'_>]) -> String {
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Seg::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

impl<'v> Scan<'_> {
    fn value(&mut self, v: &'v Value, path: &mut Vec<Seg<'v>>) -> Option<PathHit> {
        match v {
            Value::String(s) => self.string(s, true).map(|entry| PathHit {
                arg: render(path),
                entry,
            }),
            Value::Array(items) => {
                for (i, x) in items.iter().enumerate() {
                    path.push(Seg::Index(i));
                    let hit = self.value(x, path);
                    path.pop();
                    if hit.is_some() {
                        return hit;
                    }
                }
                None
            }
            Value::Object(map) => {
                for (k, x) in map {
                    path.push(Seg::Key(k));
                    // A key is examined only for path characters: a key that is one plain word
                    // names a parameter, not a file.
                    let hit = match self.string(k, false) {
                        Some(entry) => Some(PathHit {
                            arg: render(path),
                            entry,
                        }),
                        None => self.value(x, path),
                    };
                    path.pop();
                    if hit.is_some() {
                        return hit;
                    }
                }
                None
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => None,
        }
    }

    /// The entry (as written) that `s` refers to, if any. `whole_allowed`: a value that is one
    /// word is read as a relative path (not done for keys).
    fn string(&mut self, s: &str, whole_allowed: bool) -> Option<String> {
        if s.is_empty() || !self.pp.worth_scanning(s, whole_allowed) {
            return None;
        }
        let hit = if needs_views(s) || !s.is_ascii() {
            views(s).iter().find_map(|v| self.view(v, whole_allowed))
        } else {
            self.view(s, whole_allowed)
        };
        hit.map(|i| self.entry_name(i))
    }

    fn view(&mut self, view: &str, whole_allowed: bool) -> Option<usize> {
        let pp = self.pp;
        let expanded = pp.expand_home_vars(view);
        let whole = whole_allowed && {
            let mut words = tokens(&expanded);
            words.next().is_some() && words.next().is_none()
        };
        let mut count = 0;
        let mut last = "";
        for t in tokens(&expanded) {
            count += 1;
            last = t;
            if let Some(i) = self.token(t, whole) {
                return Some(i);
            }
        }
        // The tokens split at characters that are legal in file names (space, `=`, `:`, `,`,
        // parentheses…), and a server takes a path argument whole and collapses its `..`
        // lexically: `/srv/a b/../secret` is `/srv/secret` to it, and neither `/srv/a` nor
        // `b/../secret` is. So the whole view is one more candidate, and so is every word of
        // it as a shell splits words (quotes and backslashes honoured): `cat "/srv/a b/../x"`.
        let trimmed = expanded.trim();
        if !(count == 1 && last.len() == trimmed.len()) {
            if let Some(i) = self.token(trimmed, false) {
                return Some(i);
            }
            if trimmed.contains(char::is_whitespace)
                && let Ok(words) = shell_words::split(trimmed)
            {
                for w in &words {
                    if let Some(i) = self.token(w, false) {
                        return Some(i);
                    }
                }
            }
        }
        pp.substring_hit(view, &expanded)
    }

    fn entry_name(&self, i: usize) -> String {
        self.pp
            .entries
            .get(i)
            .map_or_else(|| TOO_MANY_PATHS.to_owned(), |e| e.raw.clone())
    }

    fn token(&mut self, t: &str, whole: bool) -> Option<usize> {
        let pp = self.pp;
        if starts_with_url_scheme(t) {
            // A URL (file:// URLs were unwrapped into another view): no local file. Only a
            // leading scheme makes one: `/srv/x://../secret` is a path to every file API.
            return None;
        }
        let pathish = t.contains('/') || t.starts_with('~') || t.starts_with('.');
        if !pathish && !whole {
            return None;
        }
        let abs = pp.absolute(t);
        if let Some(i) = pp.hit(&abs) {
            return Some(i);
        }
        if t.contains(['*', '?', '['])
            && let Some(i) = pp.glob_hit(&abs)
        {
            return Some(i);
        }
        if !pp.resolve {
            return None;
        }
        let raw = pp.absolute_raw(t);
        if let Some(i) = self.resolved_hit(&raw, &abs) {
            return Some(i);
        }
        // A server that collapses `..` before it opens the path (Node's `path.resolve`,
        // Python's `normpath`, Go's `filepath.Clean`) follows the symlinks of the cleaned form,
        // which the kernel's walk of the raw form may never reach: in `/srv/missing/../link/x`
        // the walk stops at `missing`, while `/srv/link/x` goes through `link`.
        if *raw == *abs {
            return None;
        }
        self.resolved_hit(&abs, &abs)
    }

    /// Resolves `path` through symlinks (once per call for each distinct path, at most
    /// [`MAX_RESOLUTIONS`] in all: past that `usize::MAX`, fail closed) and checks the real
    /// path when it differs from the already checked lexical form `abs`.
    fn resolved_hit(&mut self, path: &str, abs: &str) -> Option<usize> {
        if !self.first_time(path) {
            return None;
        }
        self.resolutions += 1;
        if self.resolutions > MAX_RESOLUTIONS {
            return Some(usize::MAX);
        }
        match resolve_prefix(path) {
            Some(real) if real != abs => self.pp.hit(&real),
            _ => None,
        }
    }
}

/// `scheme://` at the start (RFC 3986: a letter, then letters, digits, `+ - .`).
fn starts_with_url_scheme(t: &str) -> bool {
    let Some(colon) = t.find("://") else {
        return false;
    };
    let scheme = &t.as_bytes()[..colon];
    scheme.first().is_some_and(u8::is_ascii_alphabetic)
        && scheme
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
}

/// Whether `s` has anything that other views would decode (`%`, quotes, `\\`, `file:`).
fn needs_views(s: &str) -> bool {
    let b = s.as_bytes();
    b.iter().enumerate().any(|(i, c)| match c {
        b'%' | b'\'' | b'"' | b'\\' => true,
        b':' => i >= 4 && b[i - 4..i].eq_ignore_ascii_case(b"file"),
        _ => false,
    })
}

/// Shell-like words of `s`: split at delimiters, except that `scheme://` stays in one word.
fn tokens(s: &str) -> Tokens<'_> {
    Tokens { s, pos: 0 }
}

struct Tokens<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Iterator for Tokens<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.s;
        let start = find_from(s, self.pos, |i| !delimiter_at(s, i))?;
        let end = find_from(s, start, |i| delimiter_at(s, i)).unwrap_or(s.len());
        self.pos = end;
        Some(&s[start..end])
    }
}

/// The first char boundary at or after `from` where `pred` holds. Steps a byte at a time
/// through ASCII (every delimiter but Unicode spaces and controls is ASCII).
fn find_from(s: &str, from: usize, pred: impl Fn(usize) -> bool) -> Option<usize> {
    let b = s.as_bytes();
    let mut i = from;
    while i < b.len() {
        if pred(i) {
            return Some(i);
        }
        i += utf8_len(b[i]);
    }
    None
}

fn utf8_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

/// Whether the character starting at byte `i` of `s` splits words.
fn delimiter_at(s: &str, i: usize) -> bool {
    let b = s.as_bytes()[i];
    match b {
        b':' => !s.as_bytes()[i + 1..].starts_with(b"//"),
        0..=0x7f => ASCII_DELIMITERS[usize::from(b)],
        _ => s[i..].chars().next().is_some_and(is_delimiter),
    }
}

/// [`is_delimiter`] for ASCII (without `:`, which depends on what follows).
static ASCII_DELIMITERS: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        // Mirrors `is_delimiter`: every ASCII whitespace is also a control character or space.
        t[i] = i < 0x20 || i == 0x7f;
        i += 1;
    }
    let extra = b" ;|&<>(){},=`'\"";
    let mut j = 0;
    while j < extra.len() {
        t[extra[j] as usize] = true;
        j += 1;
    }
    t
};

/// The views of a string to examine (see the module docs).
fn views(s: &str) -> Vec<Cow<'_, str>> {
    let mut out: Vec<Cow<'_, str>> = vec![Cow::Borrowed(s)];
    if s.contains('%') {
        let mut cur = s.to_owned();
        for _ in 0..3 {
            let next = percent_decode(&cur);
            if next == cur {
                break;
            }
            cur = next;
        }
        if cur != s {
            out.push(Cow::Owned(cur));
        }
    }
    let n = out.len();
    for i in 0..n {
        if out[i].contains(['\'', '"', '\\']) {
            let unq: String = out[i]
                .chars()
                .filter(|c| !matches!(c, '\'' | '"' | '\\'))
                .collect();
            out.push(Cow::Owned(unq));
        }
    }
    let n = out.len();
    for i in 0..n {
        if let Some(stripped) = strip_file_urls(&out[i]) {
            out.push(Cow::Owned(stripped));
        }
    }
    // Composed and decomposed spellings (`é` and `e` + U+0301) are different names to the
    // kernel, but servers match them to each other (the npm filesystem server retries a
    // missing path by NFC-comparing directory entries): both forms are candidates.
    if !s.is_ascii() {
        let n = out.len();
        for i in 0..n {
            for form in [out[i].nfc().collect::<String>(), out[i].nfd().collect()] {
                if form != out[i] && !out.iter().any(|v| *v == form) {
                    out.push(Cow::Owned(form));
                }
            }
        }
    }
    out
}

/// Replaces every `file://[host]` (any case) by nothing, keeping the path that follows.
fn strip_file_urls(s: &str) -> Option<String> {
    let lower = s.to_ascii_lowercase();
    if !lower.contains("file:") {
        return None;
    }
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while let Some(off) = lower[i..].find("file:") {
        let start = i + off;
        out.push_str(&s[i..start]);
        let mut j = start + "file:".len();
        if lower[j..].starts_with("//") {
            j += 2;
            // Drop the authority (host), up to the next slash.
            j += lower[j..].find('/').unwrap_or(lower.len() - j);
        }
        i = j;
    }
    out.push_str(&s[i..]);
    Some(out)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex_val(b[i + 1]), hex_val(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn is_delimiter(c: char) -> bool {
    c.is_whitespace()
        || c.is_control()
        || matches!(
            c,
            ';' | '|'
                | '&'
                | '<'
                | '>'
                | '('
                | ')'
                | '{'
                | '}'
                | ','
                | '='
                | ':'
                | '`'
                | '\''
                | '"'
        )
}

/// Lexically cleans `path` (absolute, or relative to the clean absolute `base`): no `.`,
/// `..` or empty components; `..` never goes above `/`.
pub(crate) fn clean(path: &str, base: &str) -> String {
    clean_cow(path, base).into_owned()
}

/// [`clean`], borrowing `path` when it already is clean and absolute (the common case on the
/// hot path: no allocation).
fn clean_cow<'a>(path: &'a str, base: &str) -> Cow<'a, str> {
    let b = path.as_bytes();
    let already_clean = b.first() == Some(&b'/')
        && (b.len() == 1
            || b[1..]
                .split(|c| *c == b'/')
                .all(|c| !matches!(c, b"" | b"." | b"..")));
    if already_clean {
        return Cow::Borrowed(path);
    }
    let mut out = String::with_capacity(base.len() + path.len() + 1);
    let base = if path.starts_with('/') { "" } else { base };
    for c in base.split('/').chain(path.split('/')) {
        match c {
            "" | "." => {}
            ".." => {
                if let Some(i) = out.rfind('/') {
                    out.truncate(i);
                }
            }
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Cow::Owned(out)
}

/// `path` is `base` or below it.
fn under(path: &str, base: &str) -> bool {
    base == "/"
        || path == base
        || (path.len() > base.len()
            && path.starts_with(base)
            && path.as_bytes()[base.len()] == b'/')
}

/// `needle` occurs in `hay` as a whole path (not inside a longer name).
fn contains_path(hay: &str, needle: &str) -> bool {
    let name_char = |c: char| c.is_alphanumeric() || matches!(c, '.' | '_' | '-' | '~');
    let mut from = 0;
    while let Some(off) = hay[from..].find(needle) {
        let start = from + off;
        let end = start + needle.len();
        let before_ok = hay[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !name_char(c) && c != '/');
        let after = &hay[end..];
        let after_ok = match after.chars().next() {
            None | Some('/') => true,
            Some('.') => after[1..].chars().next().is_none_or(|c| !name_char(c)),
            Some(c) => !name_char(c),
        };
        if before_ok && after_ok {
            return true;
        }
        from = start + needle.chars().next().map_or(1, char::len_utf8);
    }
    false
}

/// The real location of the absolute path `raw` (not cleaned): symlinks followed as the
/// kernel would, `..` applied after them, a non-existent tail kept as written; `None` when it
/// cannot be resolved (a loop, no permission), in which case the lexical checks stand alone.
///
/// Fast path: one `openat2(O_PATH, RESOLVE_NO_SYMLINKS)` proves there is no symlink on the way
/// (it succeeds, or stops at a missing component), so the lexical form is the real one. Otherwise `realpath`, and for paths that do not exist
/// yet (a file about to be written) a walk that follows dangling symlinks too.
fn resolve_prefix(raw: &str) -> Option<Cow<'_, str>> {
    use nix::fcntl::{AT_FDCWD, OFlag, OpenHow, ResolveFlag, openat2};
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_NO_SYMLINKS);
    match openat2(AT_FDCWD, raw, how) {
        Ok(_) => return Some(clean_cow(raw, "/")),
        // The walk stopped at a missing component (or a file used as a directory) without
        // meeting a symlink: the existing prefix is real and the rest cannot be a link yet, so
        // the lexical form is the real one. Only ELOOP (a symlink on the way) needs more work.
        Err(nix::errno::Errno::ENOENT | nix::errno::Errno::ENOTDIR) => {
            return Some(clean_cow(raw, "/"));
        }
        Err(_) => {}
    }
    if let Ok(real) = std::fs::canonicalize(raw) {
        return Some(Cow::Owned(clean(&real.to_string_lossy(), "/")));
    }
    resolve_walk(raw).map(Cow::Owned)
}

/// `realpath` that tolerates a missing tail and follows dangling symlinks (writing through
/// `/tmp/link` with `link -> ~/.ssh/new` creates `~/.ssh/new`).
fn resolve_walk(raw: &str) -> Option<String> {
    let mut todo: std::collections::VecDeque<String> = raw
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::to_owned)
        .collect();
    let mut cur = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(c) = todo.pop_front() {
        match c.as_str() {
            "." => continue,
            ".." => {
                cur.pop();
                continue;
            }
            _ => {}
        }
        let next = cur.join(&c);
        if missing {
            cur = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return None;
                }
                let target = std::fs::read_link(&next).ok()?;
                let target = target.to_string_lossy();
                if target.starts_with('/') {
                    cur = PathBuf::from("/");
                }
                for t in target.split('/').filter(|t| !t.is_empty()).rev() {
                    todo.push_front(t.to_owned());
                }
            }
            Ok(_) => cur = next,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                missing = true;
                cur = next;
            }
            Err(_) => return None,
        }
    }
    Some(clean(&cur.to_string_lossy(), "/"))
}

fn user_home(name: &str) -> Option<String> {
    nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .map(|u| clean(&u.dir.to_string_lossy(), "/"))
}

/// Shell glob match of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!…]`/`[^…]`.
fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() {
            match p[pi] {
                '*' => {
                    star = Some((pi, ni));
                    pi += 1;
                    continue;
                }
                '?' => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                '[' => {
                    if let Some((matched, len)) = class_match(&p[pi..], n[ni]) {
                        if matched {
                            pi += len;
                            ni += 1;
                            continue;
                        }
                    } else if n[ni] == '[' {
                        pi += 1;
                        ni += 1;
                        continue;
                    }
                }
                c if c == n[ni] => {
                    pi += 1;
                    ni += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some((sp, sn)) => {
                pi = sp + 1;
                ni = sn + 1;
                star = Some((sp, sn + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Matches `c` against the bracket expression at the start of `p`; returns (matched, length
/// of the expression), or `None` when the bracket is not closed (a literal `[`).
fn class_match(p: &[char], c: char) -> Option<(bool, usize)> {
    let mut i = 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == ']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p.get(i + 1) == Some(&'-') && p.get(i + 2).is_some_and(|e| *e != ']') {
            if (p[i]..=p[i + 2]).contains(&c) {
                matched = true;
            }
            i += 3;
        } else {
            if p[i] == c {
                matched = true;
            }
            i += 1;
        }
    }
    None
}

#[cfg(test)]
#[path = "paths_tests.rs"]
mod tests;
