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
//! `PATH=/a:/b`) are found. A token is path-like when it contains `/` or starts with `~` or
//! `.`, or when it is the whole value. Path-like tokens are expanded (`~`, `~user` via the
//! password database, relative → server cwd), cleaned, and compared component-wise: a hit is
//! the entry itself or anything below it. Tokens with `/`, `~` or `.` are also resolved through
//! symlinks (longest existing prefix), so `/tmp/link/id_rsa` with `link → ~/.ssh` is caught.
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

use serde_json::Value;

/// Symlink resolutions allowed per evaluated call.
pub const MAX_RESOLUTIONS: usize = 1024;

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
        };
        let mut seen = HashSet::new();
        let written = entries.iter().map(|e| (e.clone(), true));
        let always = files
            .iter()
            .map(|f| (f.to_string_lossy().into_owned(), false));
        for (raw, from_policy) in written.chain(always) {
            let expanded = pp.expand_home_vars(&raw);
            let abs = pp.absolute(&expanded);
            if !seen.insert(abs.clone()) {
                continue;
            }
            let canon = resolve_prefix(&abs).filter(|c| *c != abs);
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
            seen: HashSet::new(),
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
    fn absolute(&self, token: &str) -> String {
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
                return clean(&format!("{b}/{tail}"), "/");
            }
        }
        clean(token, &self.cwd)
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
    seen: HashSet<String>,
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
            Value::String(s) => self.string(s).map(|entry| PathHit {
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
                    let hit = match self.string(k) {
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

    /// The entry (as written) that `s` refers to, if any.
    fn string(&mut self, s: &str) -> Option<String> {
        if s.is_empty() {
            return None;
        }
        let pp = self.pp;
        for view in views(s) {
            let expanded = pp.expand_home_vars(&view);
            let tokens: Vec<&str> = expanded
                .split(is_delimiter)
                .filter(|t| !t.is_empty())
                .collect();
            let whole = tokens.len() == 1;
            for t in tokens {
                if let Some(i) = self.token(t, whole) {
                    return Some(self.entry_name(i));
                }
            }
            if let Some(i) = pp.substring_hit(&view, &expanded) {
                return Some(self.entry_name(i));
            }
        }
        None
    }

    fn entry_name(&self, i: usize) -> String {
        self.pp
            .entries
            .get(i)
            .map_or_else(|| TOO_MANY_PATHS.to_owned(), |e| e.raw.clone())
    }

    fn token(&mut self, t: &str, whole: bool) -> Option<usize> {
        let pp = self.pp;
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
        if pp.resolve && pathish && self.seen.insert(abs.clone()) {
            self.resolutions += 1;
            if self.resolutions > MAX_RESOLUTIONS {
                return Some(usize::MAX);
            }
            if let Some(canon) = resolve_prefix(&abs)
                && let Some(i) = pp.hit(&canon)
            {
                return Some(i);
            }
        }
        None
    }
}

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

/// Lexically cleans `path` (absolute, or relative to `base`): no `.`, `..`, empty components.
pub(crate) fn clean(path: &str, base: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    let joined;
    let full = if path.starts_with('/') {
        path
    } else {
        joined = format!("{base}/{path}");
        &joined
    };
    for c in full.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    let mut out = String::with_capacity(full.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() {
        out.push('/');
    }
    out
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

/// Resolves symlinks in the longest existing prefix of `abs`, keeping the rest as is.
fn resolve_prefix(abs: &str) -> Option<String> {
    let mut head = PathBuf::from(abs);
    let mut tail: Vec<std::ffi::OsString> = Vec::new();
    loop {
        match std::fs::canonicalize(&head) {
            Ok(mut real) => {
                for t in tail.iter().rev() {
                    real.push(t);
                }
                return Some(clean(&real.to_string_lossy(), "/"));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                let name = head.file_name()?.to_os_string();
                tail.push(name);
                if !head.pop() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
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
