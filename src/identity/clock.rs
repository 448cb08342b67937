//! Wall-clock source for token times. Owns the `Clock` trait, the system clock and a manual clock
//! that tests and conformance vectors advance by hand (`wait: "4m"` without sleeping). Must not
//! be used for timeouts (those use tokio's monotonic time).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use time::OffsetDateTime;

/// Source of "now" for issuing and validating tokens.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Current UTC time.
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that only moves when told to. Clones share the same time.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<Mutex<OffsetDateTime>>,
}

impl ManualClock {
    /// A clock stopped at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self {
            now: Arc::new(Mutex::new(start)),
        }
    }

    /// A clock stopped at the current real time.
    pub fn starting_now() -> Self {
        Self::new(OffsetDateTime::now_utc())
    }

    /// Moves the clock forward.
    pub fn advance(&self, by: Duration) {
        let mut now = self.now.lock().unwrap_or_else(|p| p.into_inner());
        *now += by;
    }

    /// Sets the clock.
    pub fn set(&self, to: OffsetDateTime) {
        *self.now.lock().unwrap_or_else(|p| p.into_inner()) = to;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        *self.now.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_manual_clock_advances_shared() {
        let c = ManualClock::starting_now();
        let c2 = c.clone();
        let t0 = c.now();
        c2.advance(Duration::from_secs(240));
        assert_eq!(c.now() - t0, time::Duration::seconds(240));
    }
}
