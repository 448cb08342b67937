//! Newline framing over a byte stream with a hard bound on line length.
//!
//! A line longer than the bound is never held in memory: once it passes the bound the reader
//! switches to discard mode, keeps only a small head and tail of the line (enough to recover a
//! JSON-RPC `id` for the error reply), and resumes at the next newline. A last line without a
//! newline before end of stream is still delivered, so nothing the peer wrote is lost.
//!
//! The reader owns one buffer that grows up to the bound and shrinks back after a large line, so
//! an idle session holds a few KiB.

use std::io::{self, Read};

/// Bytes kept from the start and from the end of an oversized line.
pub const OVERSIZE_KEEP: usize = 64 * 1024;

/// Buffer size an idle reader shrinks back to.
const IDLE_CAPACITY: usize = 64 * 1024;

/// One framed unit of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A complete line without its terminating `\n` (the last line of the stream may have had
    /// none).
    Line(&'a [u8]),
    /// A line longer than the bound; its bytes were discarded.
    Oversize(Oversize),
}

/// What remains of an oversized line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Oversize {
    /// Total length of the line in bytes (without the newline).
    pub len: u64,
    /// The first bytes of the line (at most [`OVERSIZE_KEEP`]).
    pub head: Vec<u8>,
    /// The last bytes of the line (at most [`OVERSIZE_KEEP`]).
    pub tail: Vec<u8>,
}

/// Reads newline-delimited frames from `R`, holding at most `max_line` bytes of any one line.
pub struct LineReader<R> {
    inner: R,
    max_line: usize,
    buf: Vec<u8>,
    /// Start of unconsumed data in `buf`.
    start: usize,
    /// End of valid data in `buf`.
    end: usize,
    /// Bytes of `buf[start..end]` already known to contain no newline.
    scanned: usize,
    eof: bool,
    discard: Option<Oversize>,
    /// The last frame was large: shrink the buffer before the next read.
    shrink: bool,
}

impl<R: Read> LineReader<R> {
    pub fn new(inner: R, max_line: usize) -> Self {
        let max_line = max_line.max(1);
        LineReader {
            inner,
            max_line,
            buf: vec![0; IDLE_CAPACITY.min(max_line + 1)],
            start: 0,
            end: 0,
            scanned: 0,
            eof: false,
            discard: None,
            shrink: false,
        }
    }

    /// True when a complete line is already buffered, so `next_frame` will not block. Pumps use
    /// this to batch writes while input is pipelined and flush before they would block.
    pub fn has_buffered_line(&self) -> bool {
        self.discard.is_none()
            && memchr::memchr(b'\n', &self.buf[self.start + self.scanned..self.end]).is_some()
    }

    /// The next frame, or `None` at end of stream.
    pub fn next_frame(&mut self) -> io::Result<Option<Frame<'_>>> {
        if self.shrink {
            self.shrink = false;
            self.compact();
            if self.buf.len() > IDLE_CAPACITY && self.end - self.start <= IDLE_CAPACITY {
                self.buf.truncate(IDLE_CAPACITY.max(self.end));
                self.buf.shrink_to_fit();
            }
        }
        loop {
            let data = &self.buf[self.start + self.scanned..self.end];
            if let Some(pos) = memchr::memchr(b'\n', data) {
                let line_end = self.start + self.scanned + pos;
                if let Some(mut over) = self.discard.take() {
                    let piece = &self.buf[self.start..line_end];
                    over.len += piece.len() as u64;
                    push_tail(&mut over.tail, piece);
                    self.start = line_end + 1;
                    self.scanned = 0;
                    return Ok(Some(Frame::Oversize(over)));
                }
                let line_start = self.start;
                self.start = line_end + 1;
                self.scanned = 0;
                let len = line_end - line_start;
                if len > IDLE_CAPACITY {
                    self.shrink = true;
                }
                if len > self.max_line {
                    let line = &self.buf[line_start..line_end];
                    let mut tail = Vec::new();
                    push_tail(&mut tail, line);
                    return Ok(Some(Frame::Oversize(Oversize {
                        len: len as u64,
                        head: line[..OVERSIZE_KEEP.min(len)].to_vec(),
                        tail,
                    })));
                }
                return Ok(Some(Frame::Line(&self.buf[line_start..line_end])));
            }
            self.scanned = self.end - self.start;

            let pending = self.end - self.start;
            if self.discard.is_some() {
                // Everything buffered belongs to the oversized line: account for it and drop it.
                if let Some(over) = self.discard.as_mut() {
                    over.len += pending as u64;
                    push_tail(&mut over.tail, &self.buf[self.start..self.end]);
                }
                self.start = 0;
                self.end = 0;
                self.scanned = 0;
            } else if pending > self.max_line {
                let line = &self.buf[self.start..self.end];
                let head = line[..OVERSIZE_KEEP.min(line.len())].to_vec();
                let mut tail = Vec::new();
                push_tail(&mut tail, line);
                self.discard = Some(Oversize {
                    len: pending as u64,
                    head,
                    tail,
                });
                self.start = 0;
                self.end = 0;
                self.scanned = 0;
                // The rest of the line is only counted, which needs no room: give the grown
                // buffer back now, before the error reply and its audit record are built.
                self.buf = vec![0; IDLE_CAPACITY.min(self.max_line + 1)];
            }

            if self.eof {
                if let Some(over) = self.discard.take() {
                    return Ok(Some(Frame::Oversize(over)));
                }
                if self.start < self.end {
                    let (s, e) = (self.start, self.end);
                    self.start = e;
                    self.scanned = 0;
                    return Ok(Some(Frame::Line(&self.buf[s..e])));
                }
                return Ok(None);
            }
            self.fill()?;
        }
    }

    /// Reads more input, growing the buffer (up to the bound plus one byte, enough to notice an
    /// oversized line) when it is full.
    fn fill(&mut self) -> io::Result<()> {
        if self.end == self.buf.len() {
            self.compact();
        }
        if self.end == self.buf.len() {
            // Only reached while the pending partial line is within the bound (longer ones were
            // switched to discard mode), so the buffer is at most max_line bytes here.
            let len = self.buf.len();
            let want = (len * 2).min(self.max_line + 1).max(len + 1);
            self.buf.resize(want, 0);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(());
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

fn push_tail(tail: &mut Vec<u8>, more: &[u8]) {
    if more.len() >= OVERSIZE_KEEP {
        tail.clear();
        tail.extend_from_slice(&more[more.len() - OVERSIZE_KEEP..]);
        return;
    }
    let overflow = (tail.len() + more.len()).saturating_sub(OVERSIZE_KEEP);
    if overflow > 0 {
        tail.drain(..overflow);
    }
    tail.extend_from_slice(more);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out its data in fixed-size pieces, to exercise chunk boundaries.
    struct Chunked<'a> {
        data: &'a [u8],
        step: usize,
    }

    impl Read for Chunked<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len());
            out[..n].copy_from_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Ok(n)
        }
    }

    fn frames(data: &[u8], max: usize, step: usize) -> Vec<Result<Vec<u8>, u64>> {
        let mut r = LineReader::new(Chunked { data, step }, max);
        let mut out = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            out.push(match f {
                Frame::Line(l) => Ok(l.to_vec()),
                Frame::Oversize(o) => Err(o.len),
            });
        }
        out
    }

    #[test]
    fn splits_lines_across_any_chunk_size() {
        let data = b"{\"a\":1}\n{\"b\":2}\n\nlast-without-newline";
        for step in 1..data.len() + 2 {
            assert_eq!(
                frames(data, 1024, step),
                vec![
                    Ok(b"{\"a\":1}".to_vec()),
                    Ok(b"{\"b\":2}".to_vec()),
                    Ok(b"".to_vec()),
                    Ok(b"last-without-newline".to_vec()),
                ],
                "step {step}"
            );
        }
    }

    #[test]
    fn line_of_exactly_the_bound_passes_and_one_more_byte_is_oversize() {
        let mut data = vec![b'x'; 10];
        data.push(b'\n');
        data.extend(vec![b'y'; 11]);
        data.push(b'\n');
        data.extend(b"ok\n");
        for step in [1, 3, 7, 64] {
            assert_eq!(
                frames(&data, 10, step),
                vec![Ok(vec![b'x'; 10]), Err(11), Ok(b"ok".to_vec())],
                "step {step}"
            );
        }
    }

    #[test]
    fn oversize_keeps_head_and_tail_only() {
        let mut data = b"{\"id\":7,".to_vec();
        data.extend(vec![b' '; 3 * OVERSIZE_KEEP]);
        data.extend(b"\"jsonrpc\":\"2.0\"}\nnext\n");
        let mut r = LineReader::new(
            Chunked {
                data: &data,
                step: 8192,
            },
            100_000,
        );
        match r.next_frame().unwrap() {
            Some(Frame::Oversize(o)) => {
                assert_eq!(o.len as usize, data.len() - "next\n".len() - 1);
                assert!(o.head.starts_with(b"{\"id\":7,"));
                assert_eq!(o.head.len(), OVERSIZE_KEEP);
                assert!(o.tail.ends_with(b"\"jsonrpc\":\"2.0\"}"));
                assert_eq!(o.tail.len(), OVERSIZE_KEEP);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Line(b"next")));
        assert_eq!(r.next_frame().unwrap(), None);
    }

    #[test]
    fn memory_stays_bounded_for_a_huge_line() {
        struct Endless {
            left: usize,
        }
        impl Read for Endless {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                let n = out.len().min(self.left);
                out[..n].fill(b'a');
                self.left -= n;
                Ok(n)
            }
        }
        let mut r = LineReader::new(Endless { left: 50 << 20 }, 1 << 20);
        match r.next_frame().unwrap() {
            Some(Frame::Oversize(o)) => assert_eq!(o.len, 50 << 20),
            other => panic!("unexpected {other:?}"),
        }
        // The grown buffer is given back as soon as the line is known to be oversized.
        assert!(
            r.buf.len() <= IDLE_CAPACITY,
            "buffer still holds {} bytes",
            r.buf.len()
        );
    }

    #[test]
    fn has_buffered_line_reports_pipelined_input() {
        let data = b"a\nb\nc";
        let mut r = LineReader::new(Chunked { data, step: 64 }, 100);
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Line(b"a")));
        assert!(r.has_buffered_line());
        assert_eq!(r.next_frame().unwrap(), Some(Frame::Line(b"b")));
        assert!(!r.has_buffered_line());
    }
}
