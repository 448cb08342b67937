//! Rate limits (AIP §2.6): one token bucket per rule that has a `rate_limit`, i.e. per
//! normalized tool name, per engine. Capacity = count, refilled continuously at count/period.
//! The engine peeks first (so a call blocked for another reason takes nothing), takes a token
//! only for a call that goes on (allowed, monitor pass, or ask), and can return it when a human
//! says no or does not answer.
//!
//! Must not: read the wall clock (the engine's injected clock drives it).

use std::sync::Mutex;
use std::time::Duration;

use super::model::Policy;

/// Exact integer bucket: one token is `period` nanosecond-units; refill adds `count` units per
/// elapsed nanosecond, so `count` tokens come back per `period` with no rounding drift.
#[derive(Debug)]
struct Bucket {
    one: u128,
    capacity: u128,
    per_nano: u128,
    level: u128,
    last: Duration,
}

impl Bucket {
    fn refill(&mut self, now: Duration) {
        if now > self.last {
            let dt = (now - self.last).as_nanos();
            self.level = self
                .level
                .saturating_add(dt.saturating_mul(self.per_nano))
                .min(self.capacity);
            self.last = now;
        }
    }
}

/// Buckets indexed like `spec.tool_rules`.
#[derive(Debug)]
pub(crate) struct RateLimiter {
    buckets: Vec<Option<Mutex<Bucket>>>,
}

impl RateLimiter {
    pub fn new(policy: Option<&Policy>, now: Duration) -> Self {
        let buckets = policy
            .map(|p| {
                p.spec()
                    .tool_rules
                    .iter()
                    .map(|r| {
                        r.rate_limit.map(|rl| {
                            let one = rl.period.as_nanos().max(1);
                            let capacity = one * u128::from(rl.count);
                            Mutex::new(Bucket {
                                one,
                                capacity,
                                per_nano: u128::from(rl.count),
                                level: capacity,
                                last: now,
                            })
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        RateLimiter { buckets }
    }

    fn with<T>(&self, rule: usize, now: Duration, f: impl FnOnce(&mut Bucket) -> T) -> Option<T> {
        let m = self.buckets.get(rule)?.as_ref()?;
        let mut b = m.lock().unwrap_or_else(|e| e.into_inner());
        b.refill(now);
        Some(f(&mut b))
    }

    /// Whether rule `rule` is limited at all.
    pub fn limits(&self, rule: usize) -> bool {
        matches!(self.buckets.get(rule), Some(Some(_)))
    }

    /// Whether a call now would be within the limit (takes nothing).
    pub fn available(&self, rule: usize, now: Duration) -> bool {
        self.with(rule, now, |b| b.level >= b.one).unwrap_or(true)
    }

    /// Takes one token; false when none is left.
    pub fn take(&self, rule: usize, now: Duration) -> bool {
        self.with(rule, now, |b| {
            if b.level >= b.one {
                b.level -= b.one;
                true
            } else {
                false
            }
        })
        .unwrap_or(true)
    }

    /// Returns one token (never above capacity).
    pub fn refund(&self, rule: usize, now: Duration) {
        self.with(rule, now, |b| b.level = (b.level + b.one).min(b.capacity));
    }
}
