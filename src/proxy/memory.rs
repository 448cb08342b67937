//! Giving back start-up memory once a one-session proxy (`aip run`) is running.
//!
//! Start-up (argument parsing, YAML, regex compilation, the sandbox plan) touches code spread
//! over most of the executable and of libc, and the kernel maps file pages in 64 KiB blocks
//! around each fault, so a proxy that then only pumps lines would keep ~8 MiB of code mapped for
//! its whole life. Those pages are clean copies of files: dropping them from this process
//! (`MADV_DONTNEED`) loses nothing; the ones the session uses come back on first use from the
//! page cache. Freed heap memory goes back too (`malloc_trim`).
//!
//! Only file mappings (the executable and its shared libraries) that are read-only and hold no
//! private (written) page are touched; anything else (relocated data, heap, stacks, the vDSO) is
//! left alone.

#![allow(unsafe_code)]

/// One file mapping that may be dropped.
#[derive(Debug, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
}

/// The read-only, never-written file mappings in an smaps text.
fn droppable(smaps: &str) -> Vec<Span> {
    let mut out = Vec::new();
    let mut current: Option<Span> = None;
    let mut written = false;
    let finish = |span: Option<Span>, written: bool, out: &mut Vec<Span>| {
        if let Some(s) = span.filter(|_| !written) {
            out.push(s);
        }
    };
    for line in smaps.lines() {
        let mut parts = line.split_whitespace();
        let first = parts.next().unwrap_or_default();
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) =
                (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16))
        {
            finish(current.take(), written, &mut out);
            written = false;
            let perms = parts.next().unwrap_or_default();
            let path = parts.nth(3).unwrap_or_default();
            if path.starts_with('/') && !perms.contains('w') && end > start {
                current = Some(Span {
                    start,
                    len: end - start,
                });
            }
            continue;
        }
        // A written (copied-on-write) page is anonymous and holds data the file does not:
        // never drop those. (`Private_Dirty` is no guide: it also counts file pages not yet
        // written back, e.g. of a freshly built executable.)
        if matches!(first, "Anonymous:" | "Swap:") && parts.next().is_some_and(|kb| kb != "0") {
            written = true;
        }
    }
    finish(current, written, &mut out);
    out
}

/// Drops this process's clean start-up code pages and trims the heap. Best effort: any failure
/// just leaves the memory mapped.
pub(super) fn release_startup_pages() {
    let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
        return;
    };
    for span in droppable(&smaps) {
        // SAFETY: the range is a whole read-only file mapping with no written page (checked
        // above; being read-only, none can appear since): MADV_DONTNEED only unmaps its pages,
        // and the next access maps the same bytes back from the file.
        unsafe {
            libc::madvise(
                span.start as *mut libc::c_void,
                span.len,
                libc::MADV_DONTNEED,
            );
        }
    }
    // SAFETY: malloc_trim only returns free heap memory to the kernel; it has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0a0000000-55d0a0325000 r--p 00000000 fe:00 42 /usr/bin/aip
Rss:                1356 kB
Anonymous:             0 kB
Private_Dirty:         0 kB
55d0a0325000-55d0a0d50000 r-xp 00325000 fe:00 42 /usr/bin/aip
Anonymous:             0 kB
Private_Dirty:         0 kB
55d0a0d50000-55d0a0da8000 r--p 00d50000 fe:00 42 /usr/bin/aip
Anonymous:           352 kB
Private_Dirty:       352 kB
55d0a0da8000-55d0a0dab000 rw-p 00da8000 fe:00 42 /usr/bin/aip
Anonymous:            12 kB
7f0000000000-7f0000100000 r-xp 00000000 fe:00 7 /usr/lib/libc.so.6
Anonymous:             0 kB
7f0000100000-7f0000102000 rw-p 00100000 fe:00 7 /usr/lib/libc.so.6
Anonymous:             8 kB
7f0000200000-7f0000202000 r-xp 00000000 00:00 0 [vdso]
Anonymous:             0 kB
7f0000300000-7f0000321000 r--p 00000000 00:00 0
Anonymous:             0 kB
";

    #[test]
    fn only_clean_read_only_file_mappings() {
        let spans = droppable(SMAPS);
        assert_eq!(
            spans,
            [
                Span {
                    start: 0x55d0a0000000,
                    len: 0x325000
                },
                Span {
                    start: 0x55d0a0325000,
                    len: 0xa2b000
                },
                Span {
                    start: 0x7f0000000000,
                    len: 0x100000
                },
            ]
        );
    }

    #[test]
    fn releasing_keeps_the_process_working() {
        release_startup_pages();
        // Code and data of this very test binary still work after its pages were dropped.
        let v: Vec<u64> = (0..1000).collect();
        assert_eq!(v.iter().sum::<u64>(), 499_500);
        assert_eq!(format!("{:?}", Some(1)), "Some(1)");
    }
}
