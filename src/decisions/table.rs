//! An insertion-ordered hash table: the pending store's map and its expiry queue in one.
//!
//! Values sit in a ring (`VecDeque`) in insertion order, which is the order they expire and
//! are evicted in; a [`hashbrown::HashTable`] of 4-byte ring positions finds a value by the
//! key the value itself carries. No key is copied and the table allocates nothing per value:
//! a value costs its ring slot plus about 5.7 bytes of index (a 4-byte position and a control
//! byte per bucket, buckets at most 7/8 full).
//!
//! Positions are sequence numbers: the front slot has `head`, the one behind it `head + 1`,
//! and so on, in wrapping `u32` arithmetic. Popping the front advances `head`, so the index
//! stays valid with nothing rewritten. A value removed from the middle (a refused decision)
//! leaves an empty slot: empty slots at either end are dropped at once, and once they are a
//! quarter of the ring it is compacted (positions renumbered), so they never take more than
//! a third as many slots as the live values plus a few.
//!
//! Why not the `slab` crate with links, or `IndexMap`: a slab entry carries a tag and two
//! links besides the value, and its vector grows by doubling (up to twice the slots held);
//! `IndexMap` keeps the 8-byte hash with every entry and removes from its front in O(n). The
//! ring here grows by doubling only up to the store's capacity, then exactly to it; empty
//! slots at capacity take it at most a third further.

use std::{collections::VecDeque, hash::BuildHasher};

use hashbrown::HashTable;

/// A value the table holds, found by a key it carries.
pub(super) trait Keyed {
    /// The value's key.
    fn key(&self) -> &[u8];
}

/// Most values a table holds: `u32` positions stay unambiguous while the ring (values plus
/// empty slots, at most 4/3 of them plus a few) is shorter than 2³². The configuration
/// refuses a larger `pending_capacity`.
pub(super) const MAX_LEN: usize = crate::config::MAX_PENDING_CAPACITY;

/// Empty slots tolerated before the quarter-of-the-ring rule compacts.
const COMPACT_MIN: usize = 64;

#[derive(Debug)]
pub(super) struct Slot<T> {
    /// `None` once removed from the middle.
    value: Option<T>,
    /// When it was inserted, in the caller's units (the store's nanoseconds).
    at: i64,
}

/// Values by key, in insertion order.
#[derive(Debug)]
pub(super) struct Table<T> {
    /// Positions of the live values, hashed by their keys.
    index: HashTable<u32>,
    /// Values oldest first. Its front and back are live (or it is empty).
    ring: VecDeque<Slot<T>>,
    /// Position of the front slot.
    head: u32,
    /// Values held (the ring's slots less the empty ones).
    live: usize,
    /// The ring grows up to this many slots at once (the store's capacity), not past it.
    limit: usize,
    hasher: std::hash::RandomState,
}

/// The key of the value at position `seq` (empty for no value: never in the index).
fn key_at<T: Keyed>(ring: &VecDeque<Slot<T>>, head: u32, seq: u32) -> &[u8] {
    ring.get(seq.wrapping_sub(head) as usize)
        .and_then(|slot| slot.value.as_ref())
        .map_or(&[], Keyed::key)
}

impl<T: Keyed> Table<T> {
    /// An empty table whose ring grows to `limit` slots before it grows past it, hashing
    /// keys with `hasher` (its clones hash alike, so a caller may hash outside a lock).
    pub(super) fn new(limit: usize, hasher: std::hash::RandomState) -> Self {
        Self {
            index: HashTable::new(),
            ring: VecDeque::new(),
            head: 0,
            live: 0,
            limit: limit.min(MAX_LEN),
            hasher,
        }
    }

    /// Values held.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// The hash a key is found by (for [`Table::push`], and to look a key up twice).
    pub(super) fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn position_of(&self, hash: u64, key: &[u8]) -> Option<usize> {
        let (ring, head) = (&self.ring, self.head);
        self.index
            .find(hash, |&seq| key_at(ring, head, seq) == key)
            .map(|&seq| seq.wrapping_sub(head) as usize)
    }

    /// The value with this key.
    #[cfg(test)]
    fn get(&self, key: &[u8]) -> Option<&T> {
        self.get_hashed(self.hash(key), key)
    }

    /// The value with this key, whose [`Table::hash`] is `hash`.
    pub(super) fn get_hashed(&self, hash: u64, key: &[u8]) -> Option<&T> {
        let at = self.position_of(hash, key)?;
        self.ring.get(at)?.value.as_ref()
    }

    /// The value with this key, to change (not its key).
    pub(super) fn get_mut(&mut self, key: &[u8]) -> Option<&mut T> {
        let at = self.position_of(self.hash(key), key)?;
        self.ring.get_mut(at)?.value.as_mut()
    }

    /// Appends `value`, whose key's [`Table::hash`] is `hash`, inserted at `at` (no earlier
    /// than the values held, for expiry to stay in order). Its key must not be held already
    /// (look it up first).
    pub(super) fn push(&mut self, hash: u64, value: T, at: i64) {
        if self.ring.len() == self.ring.capacity() {
            let len = self.ring.len();
            let doubled = len.saturating_mul(2).max(16);
            // Past the limit only empty slots (removed values) can fill the ring, and
            // compaction keeps them under a third of the live values plus a few: grow to room
            // for that much at most, not by doubling (which would hold up to twice the limit).
            let most = self.limit + self.limit / 3 + COMPACT_MIN;
            let target = if len < self.limit {
                doubled.min(self.limit)
            } else {
                doubled.min(most).max(len + 1)
            };
            self.ring.reserve_exact(target - len);
        }
        let seq = self.head.wrapping_add(self.ring.len() as u32);
        self.ring.push_back(Slot {
            value: Some(value),
            at,
        });
        let Self {
            index,
            ring,
            head,
            hasher,
            ..
        } = self;
        index.insert_unique(hash, seq, |&s| hasher.hash_one(key_at(ring, *head, s)));
        self.live += 1;
    }

    /// When the oldest value was inserted.
    pub(super) fn oldest_at(&self) -> Option<i64> {
        self.ring.front().map(|slot| slot.at)
    }

    /// Removes and returns the oldest value.
    pub(super) fn pop_oldest(&mut self) -> Option<T> {
        let slot = self.ring.pop_front()?;
        let seq = self.head;
        self.head = self.head.wrapping_add(1);
        // The front is always live; a `None` here would be a broken invariant, and the
        // ring is still consistent without it.
        let value = slot.value?;
        self.unindex(value.key(), seq);
        self.live -= 1;
        self.trim();
        Some(value)
    }

    /// Removes and returns the value with this key, wherever it is in the order.
    pub(super) fn remove(&mut self, key: &[u8]) -> Option<T> {
        let hash = self.hasher.hash_one(key);
        let (ring, head) = (&self.ring, self.head);
        let entry = self
            .index
            .find_entry(hash, |&seq| key_at(ring, head, seq) == key)
            .ok()?;
        let (seq, _) = entry.remove();
        let value = self
            .ring
            .get_mut(seq.wrapping_sub(self.head) as usize)?
            .value
            .take();
        self.live -= 1;
        self.trim();
        let empty = self.ring.len() - self.live;
        if empty >= COMPACT_MIN && empty * 4 >= self.ring.len() {
            self.compact();
        }
        value
    }

    fn unindex(&mut self, key: &[u8], seq: u32) {
        let hash = self.hasher.hash_one(key);
        if let Ok(entry) = self.index.find_entry(hash, |&s| s == seq) {
            entry.remove();
        }
    }

    /// Drops empty slots from both ends, so that the front is the oldest live value.
    fn trim(&mut self) {
        while self.ring.front().is_some_and(|slot| slot.value.is_none()) {
            self.ring.pop_front();
            self.head = self.head.wrapping_add(1);
        }
        while self.ring.back().is_some_and(|slot| slot.value.is_none()) {
            self.ring.pop_back();
        }
    }

    /// Drops every empty slot, renumbering the live values' positions in the index.
    fn compact(&mut self) {
        let Self {
            index,
            ring,
            head,
            hasher,
            ..
        } = self;
        // Walking in order, each live value's new position is at most its old one and
        // above every new position given before it, so no two index entries ever hold
        // the same position and each is found by its old one.
        let mut next = *head;
        for (i, slot) in ring.iter().enumerate() {
            let Some(value) = &slot.value else {
                continue;
            };
            let old = head.wrapping_add(i as u32);
            if old != next {
                let hash = hasher.hash_one(value.key());
                if let Some(seq) = index.find_mut(hash, |&s| s == old) {
                    *seq = next;
                }
            }
            next = next.wrapping_add(1);
        }
        ring.retain(|slot| slot.value.is_some());
    }

    /// Heap bytes the table itself holds (ring slots and index, as allocated; the values'
    /// own heap data is the caller's to count).
    pub(super) fn heap_bytes(&self) -> usize {
        self.ring.capacity() * std::mem::size_of::<Slot<T>>() + self.index.allocation_size()
    }

    /// Slots in the ring, empty ones included.
    #[cfg(test)]
    fn slots(&self) -> usize {
        self.ring.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Keyed for String {
        fn key(&self) -> &[u8] {
            self.as_bytes()
        }
    }

    fn table(ids: impl IntoIterator<Item = u32>) -> Table<String> {
        let mut t = Table::new(1000, std::hash::RandomState::new());
        for i in ids {
            t.push(
                t.hash(i.to_string().as_bytes()),
                i.to_string(),
                i64::from(i),
            );
        }
        t
    }

    fn drain(t: &mut Table<String>) -> Vec<String> {
        std::iter::from_fn(|| t.pop_oldest()).collect()
    }

    /// Values come out oldest first, with their insertion times, and every one is found by
    /// its key until it leaves.
    #[test]
    fn pops_in_insertion_order() {
        let mut t = table(0..100);
        assert_eq!(t.len(), 100);
        assert!((0..100).all(|i| t.get(i.to_string().as_bytes()).is_some()));
        assert_eq!(t.oldest_at(), Some(0));
        assert_eq!(t.pop_oldest().as_deref(), Some("0"));
        assert!(t.get(b"0").is_none());
        assert_eq!(t.oldest_at(), Some(1));
        let rest = drain(&mut t);
        assert_eq!(rest.len(), 99);
        assert_eq!(rest.first().map(String::as_str), Some("1"));
        assert_eq!(rest.last().map(String::as_str), Some("99"));
        assert_eq!((t.len(), t.oldest_at()), (0, None));
    }

    /// Removing from the middle keeps the order of the rest, frees the key, and an empty
    /// slot at either end is dropped at once.
    #[test]
    fn remove_from_anywhere() {
        let mut t = table(0..5);
        assert_eq!(t.remove(b"2").as_deref(), Some("2"));
        assert!(t.remove(b"2").is_none());
        assert!(t.get(b"2").is_none());
        assert_eq!(t.len(), 4);
        assert_eq!(t.remove(b"0").as_deref(), Some("0"));
        assert_eq!(t.oldest_at(), Some(1));
        assert_eq!(t.remove(b"4").as_deref(), Some("4"));
        // Ends trimmed: "1", an empty slot, "3".
        assert_eq!(t.slots(), 3);
        t.push(t.hash(b"2"), "2".into(), 10);
        assert_eq!(drain(&mut t), ["1", "3", "2"]);
        assert_eq!(t.slots(), 0);
    }

    /// Removals in the middle are compacted away once they are a quarter of the ring, and
    /// every value is still found, in order, afterwards.
    #[test]
    fn compaction_bounds_empty_slots() {
        let mut t = table(0..1000);
        for i in (1..999).filter(|i| i % 3 != 0) {
            assert!(t.remove(i.to_string().as_bytes()).is_some());
            let empty = t.slots() - t.len();
            assert!(
                empty < COMPACT_MIN || empty * 4 < t.slots(),
                "{empty} empty slots of {}",
                t.slots()
            );
        }
        let kept: Vec<String> = (0..1000)
            .filter(|i| i % 3 == 0 || *i == 999)
            .map(|i: u32| i.to_string())
            .collect();
        assert_eq!(t.len(), kept.len());
        assert!(kept.iter().all(|k| t.get(k.as_bytes()) == Some(k)));
        assert_eq!(drain(&mut t), kept);
    }

    /// Positions wrap around `u32` without losing a value.
    #[test]
    fn positions_wrap() {
        let mut t = Table::new(4, std::hash::RandomState::new());
        t.head = u32::MAX - 2;
        for i in 0..8u32 {
            t.push(
                t.hash(i.to_string().as_bytes()),
                i.to_string(),
                i64::from(i),
            );
            if i >= 4 {
                let _ = t.pop_oldest();
            }
        }
        assert!(t.head < 10, "head wrapped to {}", t.head);
        assert_eq!(t.remove(b"5").as_deref(), Some("5"));
        assert!(t.get(b"6").is_some() && t.get(b"7").is_some());
        assert_eq!(drain(&mut t), ["4", "6", "7"]);
    }

    /// The ring grows by doubling up to the limit, then to it exactly.
    #[test]
    fn ring_grows_to_the_limit_exactly() {
        let t = table(0..1000);
        assert_eq!(t.ring.capacity(), 1000);
        let t = table(0..10);
        assert_eq!(t.ring.capacity(), 16);
    }

    /// A full ring at the limit with empty slots (values removed from the middle) grows by
    /// at most the third compaction allows, not by doubling.
    #[test]
    fn empty_slots_at_the_limit_do_not_double_the_ring() {
        let mut t = table(0..1000);
        assert_eq!(t.ring.capacity(), 1000);
        // Remove from the middle, then keep the store full: evict the oldest, push a new one.
        for i in 0..50 {
            t.remove((500 + 2 * i).to_string().as_bytes());
        }
        for i in 1000u32..3000 {
            t.pop_oldest();
            let key = i.to_string();
            t.push(t.hash(key.as_bytes()), key, i64::from(i));
        }
        assert!(
            t.ring.capacity() <= 1000 + 1000 / 3 + COMPACT_MIN,
            "{}",
            t.ring.capacity()
        );
        assert_eq!(t.live, 950);
    }
}
