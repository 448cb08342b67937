//! Per-session uids: each root session's server runs as a uid (and gid of the same number) from
//! the configured range that no live session holds, never the caller's and never one that has
//! an entry in /etc/passwd or /etc/group. Handed out round-robin, so a uid is not reused right
//! after its session ended; returned when the [`SessionUid`] guard drops.
//!
//! Must not: create users or touch files owned by a uid.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use super::config::UidRange;

/// The pool of per-session uids.
pub struct UidPool {
    state: Mutex<State>,
}

struct State {
    range: UidRange,
    /// Offset (from `range.first`) to try next.
    next: u32,
    in_use: BTreeSet<u32>,
    /// Ids of the range that name an existing user or group.
    taken: BTreeSet<u32>,
}

/// A uid held for one session; released on drop.
pub struct SessionUid {
    pool: Arc<UidPool>,
    pub uid: u32,
}

impl Drop for SessionUid {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        st.in_use.remove(&self.uid);
    }
}

/// Numeric ids in the third field of passwd/group-format text that fall in `range`.
fn ids_in(text: &str, range: UidRange) -> impl Iterator<Item = u32> + '_ {
    text.lines()
        .filter_map(|l| l.split(':').nth(2)?.parse::<u32>().ok())
        .filter(move |id| range.contains(*id))
}

fn taken_ids(range: UidRange) -> BTreeSet<u32> {
    let mut taken = BTreeSet::new();
    for file in ["/etc/passwd", "/etc/group"] {
        if let Ok(text) = std::fs::read_to_string(file) {
            taken.extend(ids_in(&text, range));
        }
    }
    taken
}

impl UidPool {
    pub fn new(range: UidRange) -> Arc<Self> {
        Arc::new(UidPool {
            state: Mutex::new(State {
                range,
                next: 0,
                in_use: BTreeSet::new(),
                taken: taken_ids(range),
            }),
        })
    }

    /// Uses `range` for new sessions (reload); uids held by live sessions stay held.
    pub fn set_range(&self, range: UidRange) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.range != range {
            st.range = range;
            st.next = 0;
            st.taken = taken_ids(range);
        }
    }

    /// A free uid other than `caller`, or `None` when every uid of the range is in use.
    pub fn allocate(self: &Arc<Self>, caller: u32) -> Option<SessionUid> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let range = st.range;
        for i in 0..range.count {
            let offset = (st.next + i) % range.count;
            let uid = range.first + offset;
            if uid == caller || st.in_use.contains(&uid) || st.taken.contains(&uid) {
                continue;
            }
            st.in_use.insert(uid);
            st.next = (offset + 1) % range.count;
            return Some(SessionUid {
                pool: Arc::clone(self),
                uid,
            });
        }
        None
    }

    pub fn in_use(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .in_use
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_uids_round_robin_and_releases() {
        let pool = UidPool::new(UidRange {
            first: 1_900_000_000,
            count: 3,
        });
        let a = pool.allocate(0).unwrap();
        let b = pool.allocate(0).unwrap();
        let c = pool.allocate(0).unwrap();
        assert_eq!(
            [a.uid, b.uid, c.uid],
            [1_900_000_000, 1_900_000_001, 1_900_000_002]
        );
        assert!(pool.allocate(0).is_none());
        drop(b);
        assert_eq!(pool.in_use(), 2);
        assert_eq!(pool.allocate(0).unwrap().uid, 1_900_000_001);
    }

    #[test]
    fn never_the_callers_uid_nor_an_existing_one() {
        let range = UidRange {
            first: 5000,
            count: 4,
        };
        let text = "root:x:0:0::/root:/bin/sh\nu:x:5001:5001::/:/bin/sh\nbad line\n";
        assert_eq!(ids_in(text, range).collect::<Vec<_>>(), [5001]);
        let pool = Arc::new(UidPool {
            state: Mutex::new(State {
                range,
                next: 0,
                in_use: BTreeSet::new(),
                taken: BTreeSet::from([5001]),
            }),
        });
        let got: Vec<u32> = (0..2)
            .map(|_| pool.allocate(5000))
            .map(|g| {
                let g = g.unwrap();
                let uid = g.uid;
                std::mem::forget(g);
                uid
            })
            .collect();
        assert_eq!(got, [5002, 5003]);
        assert!(pool.allocate(5000).is_none());
    }

    #[test]
    fn a_new_range_applies_to_new_sessions() {
        let pool = UidPool::new(UidRange {
            first: 1_900_000_000,
            count: 1,
        });
        let held = pool.allocate(0).unwrap();
        pool.set_range(UidRange {
            first: 1_900_100_000,
            count: 1,
        });
        assert_eq!(pool.allocate(0).unwrap().uid, 1_900_100_000);
        drop(held);
    }
}
