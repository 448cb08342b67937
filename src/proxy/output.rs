//! The two shared write ends (to the client, to the server). Whole lines are written under one
//! lock so messages never interleave; a failed write closes the end for good (the peer is gone)
//! and the lifecycle is told, instead of the proxy crashing on EPIPE.

use std::io::Write;
use std::sync::Mutex;
use std::sync::mpsc::Sender;

use super::lifecycle::Event;

/// One shared write end.
pub struct Output {
    name: &'static str,
    inner: Mutex<Option<Box<dyn Write + Send>>>,
    events: Sender<Event>,
    gone_event: Event,
}

/// The peer can no longer be written to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gone;

impl Output {
    pub fn new(
        name: &'static str,
        w: Box<dyn Write + Send>,
        events: Sender<Event>,
        gone_event: Event,
    ) -> Self {
        Output {
            name,
            inner: Mutex::new(Some(w)),
            events,
            gone_event,
        }
    }

    /// Writes `bytes` (one or more whole lines) and flushes.
    pub fn write(&self, bytes: &[u8]) -> Result<(), Gone> {
        if bytes.is_empty() {
            return Ok(());
        }
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            return Err(Gone);
        };
        match w.write_all(bytes).and_then(|()| w.flush()) {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::debug!(peer = self.name, error = %e, "write failed; peer is gone");
                *guard = None;
                let _ = self.events.send(self.gone_event.clone());
                Err(Gone)
            }
        }
    }

    /// Closes the write end (the peer sees end of file).
    pub fn close(&self) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(mut w) = guard.take() {
            let _ = w.flush();
        }
    }

    pub fn is_open(&self) -> bool {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }
}
