//! `ask` for daemon sessions: each ask waits in a bounded queue until an administrator answers
//! it with `aip approve` over the control socket, the proxy cancels it (client cancelled, session
//! ending), or it times out.
//!
//! Must not: decide policy or reveal arguments beyond the DLP-redacted, truncated preview the
//! proxy built.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use crate::approval::{Answer, ApprovalRequest, Approver, Cancel};

/// How often a waiting ask checks its cancellation flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// The daemon-wide queue of asks waiting for an administrator.
pub struct ApprovalQueue {
    state: Mutex<QueueState>,
    answered: Condvar,
    max_pending: AtomicUsize,
}

#[derive(Default)]
struct QueueState {
    next_id: u64,
    pending: BTreeMap<u64, Pending>,
}

struct Pending {
    req: ApprovalRequest,
    uid: u32,
    user: Option<String>,
    since: SystemTime,
    started: Instant,
    deadline: Instant,
    answer: Option<Answer>,
}

/// One waiting ask, as `aip approve` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingView {
    pub id: u64,
    pub server: String,
    pub session_id: String,
    pub request_id: String,
    pub tool: String,
    pub args_preview: String,
    pub uid: u32,
    pub user: Option<String>,
    /// RFC 3339 time the ask arrived.
    pub since: String,
    pub waiting_secs: u64,
    pub expires_in_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnswerError {
    #[error("no pending approval with id {0} (answered, cancelled or timed out)")]
    NotFound(u64),
}

impl ApprovalQueue {
    pub fn new(max_pending: usize) -> Arc<Self> {
        Arc::new(ApprovalQueue {
            state: Mutex::new(QueueState::default()),
            answered: Condvar::new(),
            max_pending: AtomicUsize::new(max_pending),
        })
    }

    pub fn set_max_pending(&self, n: usize) {
        self.max_pending.store(n, Ordering::Relaxed);
    }

    fn view(id: u64, p: &Pending, now: Instant) -> PendingView {
        PendingView {
            id,
            server: p.req.server.clone(),
            session_id: p.req.session_id.clone(),
            request_id: p.req.request_id.clone(),
            tool: p.req.tool.clone(),
            args_preview: p.req.args_preview.clone(),
            uid: p.uid,
            user: p.user.clone(),
            since: super::rfc3339(p.since),
            waiting_secs: now.duration_since(p.started).as_secs(),
            expires_in_secs: p.deadline.saturating_duration_since(now).as_secs(),
        }
    }

    /// The asks still waiting, oldest first.
    pub fn list(&self) -> Vec<PendingView> {
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        st.pending
            .iter()
            .filter(|(_, p)| p.answer.is_none())
            .map(|(id, p)| Self::view(*id, p, now))
            .collect()
    }

    /// Answers ask `id`; returns what was answered.
    pub fn answer(&self, id: u64, answer: Answer) -> Result<PendingView, AnswerError> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let p = st
            .pending
            .get_mut(&id)
            .filter(|p| p.answer.is_none())
            .ok_or(AnswerError::NotFound(id))?;
        p.answer = Some(answer);
        let view = Self::view(id, p, now);
        drop(st);
        self.answered.notify_all();
        Ok(view)
    }

    /// Queues `req` and waits for an answer, a cancellation or the timeout.
    fn wait(
        &self,
        req: &ApprovalRequest,
        uid: u32,
        user: Option<String>,
        cancel: &Cancel,
        timeout: Duration,
    ) -> Answer {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.pending.len() >= self.max_pending.load(Ordering::Relaxed) {
            return Answer::Unavailable(format!(
                "too many approvals are waiting ({}); try again later",
                st.pending.len()
            ));
        }
        st.next_id += 1;
        let id = st.next_id;
        let started = Instant::now();
        let deadline = started + timeout;
        st.pending.insert(
            id,
            Pending {
                req: req.clone(),
                uid,
                user,
                since: SystemTime::now(),
                started,
                deadline,
                answer: None,
            },
        );
        tracing::info!(id, server = %req.server, tool = %req.tool, uid, "approval waiting (aip approve)");
        let outcome = loop {
            if let Some(a) = st.pending.get(&id).and_then(|p| p.answer.clone()) {
                break a;
            }
            if cancel.is_cancelled() {
                break Answer::Cancelled;
            }
            let now = Instant::now();
            if now >= deadline {
                break Answer::TimedOut;
            }
            st = self
                .answered
                .wait_timeout(st, CANCEL_POLL.min(deadline - now))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        st.pending.remove(&id);
        outcome
    }
}

/// The approver of one session: asks go to the daemon's queue, tagged with the caller.
pub struct QueueApprover {
    pub queue: Arc<ApprovalQueue>,
    pub uid: u32,
    pub user: Option<String>,
}

impl Approver for QueueApprover {
    fn name(&self) -> String {
        "aip-approve".into()
    }

    fn ask(&self, req: &ApprovalRequest, cancel: &Cancel, timeout: Duration) -> Answer {
        self.queue
            .wait(req, self.uid, self.user.clone(), cancel, timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tool: &str) -> ApprovalRequest {
        ApprovalRequest {
            server: "fs".into(),
            session_id: "s1".into(),
            request_id: "7".into(),
            tool: tool.into(),
            args_preview: "{}".into(),
        }
    }

    fn asker(
        q: &Arc<ApprovalQueue>,
        tool: &str,
        timeout: Duration,
    ) -> std::thread::JoinHandle<Answer> {
        let a = QueueApprover {
            queue: Arc::clone(q),
            uid: 1001,
            user: Some("alice".into()),
        };
        let r = req(tool);
        std::thread::spawn(move || a.ask(&r, &Cancel::new(), timeout))
    }

    fn wait_listed(q: &ApprovalQueue, n: usize) -> Vec<PendingView> {
        for _ in 0..200 {
            let l = q.list();
            if l.len() == n {
                return l;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("never {n} pending");
    }

    #[test]
    fn answered_by_an_administrator() {
        let q = ApprovalQueue::new(8);
        let t = asker(&q, "write_file", Duration::from_secs(30));
        let listed = wait_listed(&q, 1);
        assert_eq!(listed[0].tool, "write_file");
        assert_eq!(listed[0].user.as_deref(), Some("alice"));
        let id = listed[0].id;
        q.answer(id, Answer::Approved).unwrap();
        assert_eq!(t.join().unwrap(), Answer::Approved);
        assert_eq!(
            q.answer(id, Answer::Approved),
            Err(AnswerError::NotFound(id))
        );
        assert!(q.list().is_empty());
    }

    #[test]
    fn times_out_is_cancelled_and_is_bounded() {
        let q = ApprovalQueue::new(1);
        let t = asker(&q, "a", Duration::from_millis(50));
        assert_eq!(t.join().unwrap(), Answer::TimedOut);

        let cancel = Cancel::new();
        let a = QueueApprover {
            queue: Arc::clone(&q),
            uid: 1,
            user: None,
        };
        let c2 = cancel.clone();
        let t = std::thread::spawn(move || a.ask(&req("b"), &c2, Duration::from_secs(30)));
        wait_listed(&q, 1);
        // The queue is full: a second ask is unavailable at once.
        let full = QueueApprover {
            queue: Arc::clone(&q),
            uid: 1,
            user: None,
        }
        .ask(&req("c"), &Cancel::new(), Duration::from_secs(30));
        assert!(matches!(full, Answer::Unavailable(_)));
        cancel.cancel();
        assert_eq!(t.join().unwrap(), Answer::Cancelled);
    }
}
