//! Adaptive polling for the pump threads' reads.
//!
//! A thread blocked in `read(2)` on a pipe pays a wake-up (scheduler, and on virtual machines an
//! idle-CPU exit) when the next message arrives; each message crosses two extra pipes through
//! the proxy, so those wake-ups are most of the latency it adds. Right after handling input, a
//! pump therefore polls its pipe for a short window (`poll(2)` with a zero timeout, yielding the
//! CPU between polls so the peers keep running on a small machine) before it blocks. Traffic
//! that keeps coming is read without sleeping; an idle session costs one window per message and
//! then sleeps. The file descriptor's flags are never changed (it may be shared with the client).

use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

/// A reader that polls for `window` before a blocking read.
pub struct SpinRead<R> {
    inner: R,
    window: Duration,
}

impl<R: Read + AsFd> SpinRead<R> {
    pub fn new(inner: R, window: Duration) -> Self {
        SpinRead { inner, window }
    }

    /// True once data (or end of file, or an error) is ready within the window.
    fn wait_briefly(&self) -> bool {
        let deadline = Instant::now() + self.window;
        loop {
            let mut fds = [PollFd::new(self.inner.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::ZERO) {
                Ok(n) if n > 0 => return true,
                Ok(_) => {}
                // Let the blocking read report it.
                Err(_) => return true,
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
    }
}

impl<R: Read + AsFd> Read for SpinRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if !self.window.is_zero() {
            self.wait_briefly();
        }
        self.inner.read(buf)
    }
}

impl<R: AsRawFd> AsRawFd for SpinRead<R> {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inner.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn reads_what_arrives_during_and_after_the_window() {
        let (r, mut w) = std::io::pipe().unwrap();
        let mut s = SpinRead::new(r, Duration::from_millis(5));
        w.write_all(b"now").unwrap();
        let mut buf = [0u8; 8];
        assert_eq!(s.read(&mut buf).unwrap(), 3);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            w.write_all(b"later").unwrap();
        });
        assert_eq!(s.read(&mut buf).unwrap(), 5);
        t.join().unwrap();
        assert_eq!(s.read(&mut buf).unwrap(), 0, "end of file");
    }
}
