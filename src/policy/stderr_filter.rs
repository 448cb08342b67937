//! DLP for the server's stderr (`dlp.filter_stderr`): a streaming filter that redacts line by
//! line, whatever the chunking of the pipe reads, with a bounded buffer.
//!
//! Bytes are held until a newline completes the line. A line longer than the buffer limit is
//! flushed early: the filter emits the held text up to a cut point, redacted, and keeps the last
//! [`OVERLAP`] bytes so a secret that straddles the cut is still seen whole in the next round
//! (the cut is moved past any match that crosses it). Secrets longer than the overlap that
//! straddle a forced flush can escape; lines under the limit are always scanned whole.
//! Lines that are not UTF-8 are scanned lossily; when nothing matches the original bytes pass
//! unchanged.
//!
//! Must not: hold more than `max_line` + one chunk, or reorder output.

use std::borrow::Cow;

use super::dlp::{Direction, Dlp, DlpHit};

/// Default longest line held before a forced flush.
pub const DEFAULT_MAX_LINE: usize = 64 * 1024;
/// Bytes kept back at a forced flush.
pub const OVERLAP: usize = 4 * 1024;

/// Streaming stderr redactor; feed it chunks with [`push`](Self::push), then [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct StderrFilter {
    dlp: Dlp,
    buf: Vec<u8>,
    max_line: usize,
    hits: Vec<DlpHit>,
}

impl StderrFilter {
    pub(crate) fn new(dlp: Dlp) -> Self {
        StderrFilter {
            dlp,
            buf: Vec::new(),
            max_line: DEFAULT_MAX_LINE,
            hits: Vec::new(),
        }
    }

    /// Changes the forced-flush limit (at least twice [`OVERLAP`]).
    pub fn with_max_line(mut self, max_line: usize) -> Self {
        self.max_line = max_line.max(2 * OVERLAP);
        self
    }

    /// Total redactions made so far.
    pub fn redactions(&self) -> usize {
        self.hits.iter().map(|h| h.count).sum()
    }

    /// Redactions so far per pattern, in first-seen order (for a `DLP_TRIGGERED` audit event).
    pub fn hits(&self) -> &[DlpHit] {
        &self.hits
    }

    /// Bytes currently held back (an incomplete line).
    pub fn held(&self) -> usize {
        self.buf.len()
    }

    /// Accepts a chunk and returns what can be written now.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(chunk.len());
        let mut rest = chunk;
        while !rest.is_empty() {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    self.buf.extend_from_slice(&rest[..=i]);
                    rest = &rest[i + 1..];
                    let line = std::mem::take(&mut self.buf);
                    out.extend_from_slice(&self.redact(&line));
                }
                None => {
                    let room = self.max_line.saturating_sub(self.buf.len()).max(1);
                    let take = room.min(rest.len());
                    self.buf.extend_from_slice(&rest[..take]);
                    rest = &rest[take..];
                    if self.buf.len() >= self.max_line {
                        self.force_flush(&mut out);
                    }
                }
            }
        }
        out
    }

    /// Flushes whatever is held (call at EOF).
    pub fn finish(&mut self) -> Vec<u8> {
        let held = std::mem::take(&mut self.buf);
        self.redact(&held).into_owned()
    }

    fn force_flush(&mut self, out: &mut Vec<u8>) {
        let text = String::from_utf8_lossy(&self.buf);
        let is_lossless = matches!(text, Cow::Borrowed(_));
        let mut cut = self.buf.len() - OVERLAP;
        if is_lossless {
            // Move the cut past any match that crosses it so no secret is split.
            for p in self.dlp.patterns() {
                for m in p.regex.find_iter(&text) {
                    if m.start() < cut && m.end() > cut {
                        cut = m.end();
                    }
                }
            }
            while cut < text.len() && !text.is_char_boundary(cut) {
                cut += 1;
            }
        } else {
            // Cut at a UTF-8 boundary of the raw bytes (never inside a sequence).
            while cut > 0 && (self.buf[cut] & 0xC0) == 0x80 {
                cut -= 1;
            }
        }
        let held = self.buf.split_off(cut);
        let head = std::mem::replace(&mut self.buf, held);
        out.extend_from_slice(&self.redact(&head));
    }

    fn redact<'a>(&mut self, bytes: &'a [u8]) -> Cow<'a, [u8]> {
        let text = String::from_utf8_lossy(bytes);
        if !self.dlp.may_match(&text, Direction::Response) {
            return Cow::Borrowed(bytes);
        }
        let (red, report) = self.dlp.redact_str(&text, Direction::Response);
        if !report.matched() {
            return Cow::Borrowed(bytes);
        }
        for h in report.hits {
            match self.hits.iter_mut().find(|x| x.rule == h.rule) {
                Some(x) => x.count += h.count,
                None => self.hits.push(h),
            }
        }
        Cow::Owned(red.into_owned().into_bytes())
    }
}
