//! Approval-fatigue limiter: at most `max_prompts` prompts per `window`; further asks in the
//! window are denied without bothering the human, and say why.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Answer, ApprovalRequest, Approver, Cancel};

pub struct FatigueLimited<A> {
    inner: A,
    max_prompts: usize,
    window: Duration,
    recent: Mutex<VecDeque<Instant>>,
}

impl<A: Approver> FatigueLimited<A> {
    pub fn new(inner: A, max_prompts: usize, window: Duration) -> Self {
        FatigueLimited {
            inner,
            max_prompts,
            window,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    /// Records a prompt if the window has room.
    fn admit(&self, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            recent.pop_front();
        }
        if recent.len() >= self.max_prompts {
            return false;
        }
        recent.push_back(now);
        true
    }
}

impl<A: Approver> Approver for FatigueLimited<A> {
    fn name(&self) -> String {
        self.inner.name()
    }

    fn ask(&self, req: &ApprovalRequest, cancel: &Cancel, timeout: Duration) -> Answer {
        if !self.admit(Instant::now()) {
            return Answer::Denied(format!(
                "approval fatigue limit: more than {} prompts in {} s, denied without asking",
                self.max_prompts,
                self.window.as_secs()
            ));
        }
        self.inner.ask(req, cancel, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::approval::HeadlessApprover;

    #[test]
    fn denies_past_the_limit_then_recovers() {
        let a = FatigueLimited::new(HeadlessApprover::approve(), 2, Duration::from_millis(80));
        let req = ApprovalRequest {
            server: "s".into(),
            session_id: "x".into(),
            request_id: "1".into(),
            tool: "t".into(),
            args_preview: "{}".into(),
        };
        let c = Cancel::new();
        assert_eq!(a.ask(&req, &c, Duration::from_secs(1)), Answer::Approved);
        assert_eq!(a.ask(&req, &c, Duration::from_secs(1)), Answer::Approved);
        match a.ask(&req, &c, Duration::from_secs(1)) {
            Answer::Denied(why) => assert!(why.contains("fatigue"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(a.ask(&req, &c, Duration::from_secs(1)), Answer::Approved);
    }
}
