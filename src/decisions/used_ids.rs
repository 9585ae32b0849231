//! Decision ids already used, remembered after their window closes.
//!
//! A client may choose its own decision ids. Once a decision has left the pending store its
//! id must still not be taken by a new decision while the old one is in the retained log:
//! the log, an export and offline evaluation would hold two decisions under one id, and a
//! late reward would join the wrong one. Ids are kept as 64-bit hashes with the time they
//! were decided, forgotten after the log's retention or, past a configured count, oldest
//! first.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Mutex, MutexGuard},
};

/// One model's used decision ids.
#[derive(Debug)]
pub struct UsedIds {
    state: Mutex<State>,
    /// Milliseconds an id is kept after its decision (the log's retention).
    keep_ms: u64,
    /// Most ids kept; 0 keeps none.
    capacity: usize,
}

#[derive(Debug, Default)]
struct State {
    /// Hash -> decided time of its newest use.
    by_hash: HashMap<u64, u64>,
    /// (decided time, hash), in insertion order. An entry whose time no longer matches
    /// `by_hash` is stale (the id was forgotten or used again) and is skipped.
    order: VecDeque<(u64, u64)>,
}

impl UsedIds {
    /// Keeps ids for `keep_ms` after their decision, at most `capacity` of them.
    pub fn new(keep_ms: u64, capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            keep_ms,
            capacity,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Each hold is one map operation; a poisoned lock still holds a usable set.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether a decision with this id hash was made within the kept span.
    pub fn contains(&self, hash: u64) -> bool {
        self.capacity > 0 && self.lock().by_hash.contains_key(&hash)
    }

    /// Remembers an id decided at `decided_ms`. Returns how many ids the capacity pushed out.
    pub fn insert(&self, hash: u64, decided_ms: u64) -> usize {
        if self.capacity == 0 {
            return 0;
        }
        let mut state = self.lock();
        state.by_hash.insert(hash, decided_ms);
        state.order.push_back((decided_ms, hash));
        let mut forgotten = 0;
        while state.by_hash.len() > self.capacity {
            let Some((at, old)) = state.order.pop_front() else {
                break;
            };
            if state.by_hash.get(&old) == Some(&at) {
                state.by_hash.remove(&old);
                forgotten += 1;
            }
        }
        forgotten
    }

    /// Forgets an id whose decision was refused after it was remembered (its log write
    /// failed): it was never logged, so it may be used again.
    pub fn remove(&self, hash: u64) {
        self.lock().by_hash.remove(&hash);
    }

    /// Drops the ids decided more than the kept span before `now_ms`, and stale queue
    /// entries at the front.
    pub fn prune(&self, now_ms: u64) -> usize {
        let mut state = self.lock();
        let horizon = now_ms.saturating_sub(self.keep_ms);
        let mut expired = 0;
        while let Some(&(at, hash)) = state.order.front() {
            let current = state.by_hash.get(&hash) == Some(&at);
            if current && at >= horizon {
                break;
            }
            state.order.pop_front();
            if current {
                state.by_hash.remove(&hash);
                expired += 1;
            }
        }
        expired
    }

    /// Ids remembered.
    pub fn len(&self) -> usize {
        self.lock().by_hash.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_the_retention_passes() {
        let used = UsedIds::new(1_000, 10);
        used.insert(1, 100);
        used.insert(2, 600);
        assert!(used.contains(1) && used.contains(2));
        assert_eq!(used.prune(1_099), 0);
        assert_eq!(used.prune(1_101), 1);
        assert!(!used.contains(1));
        assert!(used.contains(2));
        assert_eq!(used.prune(1_601), 1);
        assert!(used.is_empty());
    }

    #[test]
    fn capacity_forgets_the_oldest_first() {
        let used = UsedIds::new(u64::MAX, 2);
        assert_eq!(used.insert(1, 1), 0);
        assert_eq!(used.insert(2, 2), 0);
        assert_eq!(used.insert(3, 3), 1);
        assert!(!used.contains(1));
        assert!(used.contains(2) && used.contains(3));
        assert_eq!(used.len(), 2);
    }

    #[test]
    fn a_removed_id_is_free_and_its_stale_entry_does_not_drop_a_reuse() {
        let used = UsedIds::new(1_000, 10);
        used.insert(7, 100);
        used.remove(7);
        assert!(!used.contains(7));
        used.insert(7, 900);
        // The first entry (time 100) is stale: pruning it must not forget the reuse.
        assert_eq!(used.prune(1_500), 0);
        assert!(used.contains(7));
    }

    #[test]
    fn zero_capacity_remembers_nothing() {
        let used = UsedIds::new(1_000, 0);
        used.insert(1, 1);
        assert!(!used.contains(1));
        assert!(used.is_empty());
    }
}
