//! Decisions waiting for their reward.
//!
//! Each model has a [`PendingStore`]: its decisions by id, in insertion order. Every model's
//! window is fixed, so insertion order is expiry order and the oldest entry is always at the
//! front: expiry and eviction both pop from there. A rewarded decision stays until its window
//! closes so that a retried report is recognised. The store is bounded; past its capacity
//! the oldest decisions are evicted, so memory stays flat under any load.
//!
//! Laid out for hundreds of thousands of decisions per model ([`table`], [`record`]): one
//! table is both the map and the expiry queue (a ring of slots in insertion order, indexed by
//! a hash table of 4-byte positions), and a decision is held packed, its scores, input, id
//! and per-request arm ids in one allocation and a fixed-arm model's arm ids shared. Callers
//! get a [`Decision`] back when they need the whole of one (a retry, a duplicate insert),
//! and borrow what a reward needs ([`DecisionRef`]).
//!
//! A reward is recorded before its log write is durable; a retry of it that arrives in that
//! window is told to wait for the first report's commit ([`RewardOutcome::Duplicate`] carries
//! a [`Commit`] to await), so a `duplicate = true` answer is never given for a reward that a
//! crash could still lose. A first report whose commit fails is reverted, so its retry is
//! taken as a first report again.
//!
//! [`UsedIds`] remembers ids after their window, so that a closed decision's id is not reused.

mod record;
mod table;
mod used_ids;

use std::{
    hash::BuildHasher,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use tokio::{sync::watch, time::Instant};

use crate::{error::Error, policy::Spread};

pub use record::{DecisionRef, F32s};
pub use used_ids::UsedIds;

use record::{ArmSets, Packed};
use table::{Keyed, Table};

/// What was decided, kept until the reward arrives or the window closes.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The decision id.
    pub id: String,
    /// The scored candidates' arm ids, in input order.
    pub arms: Arms,
    /// Position of the chosen arm in `arms`.
    pub chosen: u32,
    /// Every scored candidate's score under the deciding sample, in the order of `arms`.
    pub scores: Box<[f64]>,
    /// The weights version that decided.
    pub model_version: u64,
    /// The network input that trains on this decision's reward.
    pub input: Box<[f32]>,
    /// The output head that trains (the chosen arm's index, or 0 for per-arm models).
    pub head: u32,
    /// The probability the policy had of choosing `arm_id`, if known (logged).
    pub propensity: Option<f64>,
    /// Posterior mean and spread per scored candidate, if asked for (not logged: a retry
    /// after a restart answers without it).
    pub explanation: Option<Box<[Spread]>>,
    /// Fingerprint of the request's context, candidates and exclusions: a retry with the same
    /// id must ask the same.
    pub request_hash: u64,
    /// Served by the model's holdout control policy (its rewards count for the control group).
    pub holdout: bool,
}

impl Decision {
    /// The chosen arm's id.
    pub fn arm_id(&self) -> &str {
        self.arms.get(self.chosen as usize).unwrap_or_default()
    }

    /// Every scored candidate's arm id with its score, in input order.
    pub fn scored(&self) -> impl Iterator<Item = (&str, f64)> {
        self.arms.iter().zip(self.scores.iter().copied())
    }
}

/// A decision's candidate arm ids. Equal when the ids are, however they are held.
#[derive(Debug, Clone)]
pub struct Arms(ArmsRepr);

#[derive(Debug, Clone)]
enum ArmsRepr {
    /// A fixed-arm model's ids (its whole list, or the candidates' ids pointing into it):
    /// no per-decision copy of any id. The pending store holds each list once.
    Shared(Arc<[Arc<str>]>),
    /// A per-arm model's candidate ids, which the client makes up per request: one string
    /// holding them all and where each ends (instead of a string, and its 24-byte header,
    /// per candidate).
    Packed { text: Box<str>, ends: Box<[u32]> },
}

impl PartialEq for Arms {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Arms {
    /// Ids shared with the model (see [`ArmsRepr::Shared`]).
    pub fn shared(ids: Arc<[Arc<str>]>) -> Self {
        Self(ArmsRepr::Shared(ids))
    }

    /// Ids of this decision alone, packed.
    pub fn packed<'a>(ids: impl IntoIterator<Item = &'a str>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::new();
        for id in ids {
            text.push_str(id);
            // Ids are bounded by `limits.max_id_bytes` and candidates by `max_candidates`;
            // a request's ids together stay far below 4 GiB.
            ends.push(u32::try_from(text.len()).unwrap_or(u32::MAX));
        }
        Self(ArmsRepr::Packed {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        })
    }

    /// The model's list these ids are, if they are shared.
    fn shared_ids(&self) -> Option<&Arc<[Arc<str>]>> {
        match &self.0 {
            ArmsRepr::Shared(ids) => Some(ids),
            ArmsRepr::Packed { .. } => None,
        }
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        match &self.0 {
            ArmsRepr::Shared(ids) => ids.len(),
            ArmsRepr::Packed { ends, .. } => ends.len(),
        }
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The `i`th id.
    pub fn get(&self, i: usize) -> Option<&str> {
        match &self.0 {
            ArmsRepr::Shared(ids) => ids.get(i).map(|a| &**a),
            ArmsRepr::Packed { text, ends } => {
                let end = *ends.get(i)? as usize;
                let start = i.checked_sub(1).map_or(0, |p| ends[p] as usize);
                text.get(start..end)
            }
        }
    }

    /// The ids in order.
    pub fn iter(&self) -> impl Iterator<Item = &str> {
        (0..self.len()).filter_map(|i| self.get(i))
    }
}

/// Where a recorded reward's log write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommitState {
    /// Written, not yet acknowledged by the log.
    InFlight,
    /// Durable under the configured mode.
    Durable,
    /// The write failed; the reward was reverted.
    Failed,
}

/// A handle on a reward's log write, for a retry to wait on.
#[derive(Debug, Clone)]
pub struct Commit(watch::Receiver<CommitState>);

impl Commit {
    /// Waits until the write is durable (`true`) or has failed (`false`).
    pub async fn settled(mut self) -> bool {
        match self
            .0
            .wait_for(|s| *s != CommitState::InFlight)
            .await
            .map(|s| *s)
        {
            Ok(CommitState::Durable) => true,
            // A dropped sender without a verdict: the first report's handler is gone, and
            // its finaliser reverted or confirmed; treat as not durable so the retry is
            // taken as a first report if the reward was reverted.
            Ok(_) | Err(_) => false,
        }
    }
}

/// What happened to a reward report.
#[derive(Debug, Clone)]
pub enum RewardOutcome<T = ()> {
    /// First reward for the decision: accepted, with what `accept` returned. Report its
    /// log write's outcome with [`PendingStore::settle`].
    Accepted(T),
    /// The same reward again (a client retry): nothing to do once the first report's write
    /// is durable (`Some`: await it first; `None`: already durable).
    Duplicate(Option<Commit>),
}

/// The result of [`PendingStore::insert`].
#[derive(Debug)]
pub struct Inserted {
    /// The stored decision (the earlier one, for a retried id).
    pub decision: Arc<Decision>,
    /// False when a decision with this id was already pending.
    pub new: bool,
    /// Old decisions evicted to make room.
    pub evicted: Vec<Closed>,
}

/// A decision whose window closed.
#[derive(Debug)]
pub struct Expired {
    /// The decision.
    pub decision: Closed,
    /// Whether a reward had arrived for it.
    pub rewarded: bool,
}

/// A decision that has left the store (evicted or expired), as it was held: what closing
/// it in the log needs is read from it without a copy.
#[derive(Debug)]
pub struct Closed(Packed);

impl Closed {
    /// The decision id.
    pub fn id(&self) -> &str {
        self.0.id()
    }

    /// Its id and training example's input and head, and its group.
    pub fn view(&self) -> DecisionRef<'_> {
        self.0.view()
    }
}

/// A held decision and its reward, if one arrived.
#[derive(Debug)]
struct Entry {
    decision: Packed,
    /// Boxed: most pending decisions have none, and `None` then costs 8 bytes, not 24.
    reward: Option<Box<Recorded>>,
}

impl Keyed for Entry {
    fn key(&self) -> &[u8] {
        self.decision.id_bytes()
    }
}

/// A reward recorded for a pending decision.
#[derive(Debug)]
struct Recorded {
    value: f64,
    /// `None` once durable (or when restored from the log, which is durable).
    commit: Option<watch::Sender<CommitState>>,
}

#[derive(Debug)]
struct State {
    /// Decisions by id, oldest first, with their insertion times (nanoseconds from `base`:
    /// 8 bytes where an `Instant` takes 16).
    table: Table<Entry>,
    /// The arm lists of the fixed-arm decisions held.
    arm_sets: ArmSets,
    /// The time the store's insertion times count from.
    base: Instant,
    /// Entries that have a reward (so counting the others needs no scan).
    rewarded: usize,
    /// Bytes of the held decisions' buffers.
    buffers: usize,
}

impl State {
    /// `at` in nanoseconds from `base` (negative before it: a restored decision's).
    fn offset(&self, at: Instant) -> i64 {
        match at.checked_duration_since(self.base) {
            Some(after) => saturating_i64(nanos(after)),
            None => -saturating_i64(nanos(self.base.duration_since(at))),
        }
    }

    /// Takes an entry that has left the table out of the counts.
    fn forget(&mut self, entry: &Entry) {
        if entry.reward.is_some() {
            self.rewarded -= 1;
        }
        if let Some(set) = entry.decision.arm_set() {
            self.arm_sets.release(set);
        }
        self.buffers -= entry.decision.heap_bytes();
    }

    /// Removes the oldest entry.
    fn pop_oldest(&mut self) -> Option<Entry> {
        let entry = self.table.pop_oldest()?;
        self.forget(&entry);
        Some(entry)
    }
}

/// The bounded store of one model's pending decisions.
#[derive(Debug)]
pub struct PendingStore {
    /// A plain mutex: nothing is awaited while it is held, and each hold is a map operation.
    state: Mutex<State>,
    /// The reward window in nanoseconds; UpdateModel may change it while the model serves.
    /// One window for every decision held, so insertion order stays expiry order.
    window_nanos: std::sync::atomic::AtomicU64,
    capacity: usize,
    /// The table's hasher (keyed per store, as std's maps are: ids are the client's), to
    /// hash an id before the lock is taken.
    hasher: std::hash::RandomState,
}

impl PendingStore {
    /// An empty store whose decisions wait `window` for a reward, holding at most `capacity`
    /// (and at most 2³¹, far beyond any memory: the table's positions are 4 bytes; the
    /// configuration refuses more).
    pub fn new(window: Duration, capacity: usize) -> Self {
        let capacity = capacity.clamp(1, table::MAX_LEN);
        let hasher = std::hash::RandomState::new();
        Self {
            state: Mutex::new(State {
                table: Table::new(capacity, hasher.clone()),
                arm_sets: ArmSets::default(),
                base: Instant::now(),
                rewarded: 0,
                buffers: 0,
            }),
            window_nanos: std::sync::atomic::AtomicU64::new(nanos(window)),
            capacity,
            hasher,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the table out of step worse than a
        // lost entry, so a poisoned lock is still usable.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The pending decision with this id, if any.
    pub fn get(&self, id: &str) -> Option<Arc<Decision>> {
        let hash = self.hasher.hash_one(id.as_bytes());
        let state = self.lock();
        let entry = state.table.get_hashed(hash, id.as_bytes())?;
        Some(Arc::new(entry.decision.unpack(&state.arm_sets)))
    }

    /// Stores a new decision. If one with the same id is already pending (a concurrent
    /// retry), that one is kept and returned instead.
    pub fn insert(&self, decision: Decision) -> Inserted {
        self.insert_at(decision, Instant::now(), None)
    }

    /// Stores a decision recovered from the log, made `age` ago, with its reward if one had
    /// arrived. Recovered decisions must be restored oldest first, before new ones.
    pub fn restore(&self, decision: Decision, age: Duration, reward: Option<f64>) -> Inserted {
        let now = Instant::now();
        self.insert_at(decision, now.checked_sub(age).unwrap_or(now), reward)
    }

    fn insert_at(&self, decision: Decision, created: Instant, reward: Option<f64>) -> Inserted {
        // Packed before the lock is taken, assuming a shared arm list finds an entry.
        let shared = decision.arms.shared_ids();
        let mut packed = Packed::new(&decision, shared.is_some());
        let hash = self.hasher.hash_one(decision.id.as_bytes());
        let mut state = self.lock();
        if let Some(existing) = state.table.get_hashed(hash, decision.id.as_bytes()) {
            return Inserted {
                decision: Arc::new(existing.decision.unpack(&state.arm_sets)),
                new: false,
                evicted: Vec::new(),
            };
        }
        let mut evicted = Vec::new();
        while state.table.len() >= self.capacity {
            let Some(old) = state.pop_oldest() else {
                break;
            };
            evicted.push(Closed(old.decision));
        }
        if let Some(ids) = shared {
            match state.arm_sets.acquire(ids) {
                Some(set) => packed.share_arms(set),
                // Every entry holds another list (requests with exclusions): this
                // decision keeps its ids itself.
                None => packed = Packed::new(&decision, false),
            }
        }
        state.rewarded += usize::from(reward.is_some());
        state.buffers += packed.heap_bytes();
        let created = state.offset(created);
        state.table.push(
            hash,
            Entry {
                decision: packed,
                reward: reward.map(|value| {
                    Box::new(Recorded {
                        value,
                        commit: None,
                    })
                }),
            },
            created,
        );
        drop(state);
        Inserted {
            decision: Arc::new(decision),
            new: true,
            evicted,
        }
    }

    /// Forgets a pending decision that was refused after it was stored (its log write
    /// failed), so neither a retry with its id nor a reward finds it. Returns whether it was
    /// pending.
    pub fn remove(&self, id: &str) -> bool {
        let mut state = self.lock();
        let Some(entry) = state.table.remove(id.as_bytes()) else {
            return false;
        };
        state.forget(&entry);
        true
    }

    /// Reports the outcome of a first reward's log write: durable, or failed (the reward is
    /// forgotten so that a retry is accepted as a first report). Retries waiting on it wake.
    pub fn settle(&self, id: &str, reward: f64, durable: bool) {
        let mut state = self.lock();
        let Some(entry) = state.table.get_mut(id.as_bytes()) else {
            return;
        };
        let Some(recorded) = entry.reward.as_mut() else {
            return;
        };
        if recorded.value != reward {
            return;
        }
        let commit = recorded.commit.take();
        if !durable {
            entry.reward = None;
            state.rewarded -= 1;
        }
        if let Some(commit) = commit {
            let _ = commit.send(if durable {
                CommitState::Durable
            } else {
                CommitState::Failed
            });
        }
    }

    /// Records a reward for a pending decision. `accept` runs under the store's lock with
    /// what the reward needs of the decision (it queues the log write without blocking); the
    /// reward is recorded only if it succeeds, so a refused reward can be retried. The
    /// caller reports the write's outcome with [`PendingStore::settle`].
    ///
    /// # Errors
    /// [`Error::DecisionNotFound`] for an unknown, expired or evicted id;
    /// [`Error::RewardConflict`] for a different reward than the one accepted; whatever
    /// `accept` returns.
    pub fn record_reward<T>(
        &self,
        id: &str,
        reward: f64,
        accept: impl FnOnce(&DecisionRef<'_>) -> Result<T, Error>,
    ) -> Result<RewardOutcome<T>, Error> {
        let mut state = self.lock();
        let entry = state
            .table
            .get_mut(id.as_bytes())
            .ok_or_else(|| Error::DecisionNotFound(id.to_owned()))?;
        match &entry.reward {
            Some(existing) if existing.value == reward => Ok(RewardOutcome::Duplicate(
                existing.commit.as_ref().map(|c| Commit(c.subscribe())),
            )),
            Some(existing) => Err(Error::RewardConflict {
                id: id.to_owned(),
                existing: existing.value,
                offered: reward,
            }),
            None => {
                let accepted = accept(&entry.decision.view())?;
                entry.reward = Some(Box::new(Recorded {
                    value: reward,
                    commit: Some(watch::Sender::new(CommitState::InFlight)),
                }));
                state.rewarded += 1;
                Ok(RewardOutcome::Accepted(accepted))
            }
        }
    }

    /// Removes and returns every decision whose window has closed by `now`.
    pub fn expire(&self, now: Instant) -> Vec<Expired> {
        let mut state = self.lock();
        let (now, window) = (state.offset(now), saturating_i64(nanos(self.window())));
        let mut closed = Vec::new();
        while let Some(created) = state.table.oldest_at() {
            if now.saturating_sub(created) < window {
                break;
            }
            let Some(entry) = state.pop_oldest() else {
                break;
            };
            closed.push(Expired {
                rewarded: entry.reward.is_some(),
                decision: Closed(entry.decision),
            });
        }
        drop(state);
        closed
    }

    /// Decisions held (rewarded or not).
    pub fn len(&self) -> usize {
        self.lock().table.len()
    }

    /// Decisions held that have no reward yet.
    pub fn awaiting_reward(&self) -> usize {
        let state = self.lock();
        state.table.len() - state.rewarded
    }

    /// True when nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes the store holds for its decisions, as requested from the allocator (its
    /// rounding comes on top): the table's ring and index, the decisions' buffers, and the
    /// recorded rewards (not the watch channel of a reward whose write is in flight, nor the
    /// model's shared arm lists).
    pub fn heap_bytes(&self) -> usize {
        let state = self.lock();
        state.table.heap_bytes() + state.buffers + state.rewarded * std::mem::size_of::<Recorded>()
    }

    /// The reward window.
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.window_nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Changes the reward window of every decision held and to come (UpdateModel).
    pub fn set_window(&self, window: Duration) {
        self.window_nanos
            .store(nanos(window), std::sync::atomic::Ordering::Relaxed);
    }
}

/// `window` in nanoseconds, saturating (u64 nanoseconds reach 584 years).
fn nanos(window: Duration) -> u64 {
    u64::try_from(window.as_nanos()).unwrap_or(u64::MAX)
}

/// `n` as an i64, saturating (292 years of nanoseconds).
fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decision(id: &str) -> Decision {
        Decision {
            id: id.into(),
            arms: Arms::packed(["a", "b"]),
            chosen: 0,
            scores: vec![1.0, 0.5].into(),
            model_version: 0,
            input: vec![1.0].into(),
            head: 0,
            propensity: None,
            explanation: None,
            request_hash: 0,
            holdout: false,
        }
    }

    /// A removed decision is gone from the map and the queue: its id can be stored again,
    /// and it neither counts against the capacity nor expires or evicts its successor early.
    #[tokio::test(start_paused = true)]
    async fn remove_keeps_map_and_queue_in_step() {
        let store = PendingStore::new(Duration::from_secs(60), 2);
        store.insert(decision("old"));
        store.insert(decision("x"));
        assert!(store.remove("x"));
        assert!(!store.remove("x"));
        assert!(store.get("x").is_none());
        assert_eq!(store.len(), 1);
        // Room for one more without evicting "old".
        assert!(store.insert(decision("y")).evicted.is_empty());
        tokio::time::advance(Duration::from_secs(30)).await;
        // "x" again, later: a stale queue entry for it would expire it with "old".
        assert!(store.remove("y"));
        assert!(store.insert(decision("x")).evicted.is_empty());
        tokio::time::advance(Duration::from_secs(31)).await;
        let expired: Vec<String> = store
            .expire(Instant::now())
            .into_iter()
            .map(|e| e.decision.id().to_owned())
            .collect();
        assert_eq!(expired, ["old"]);
        assert!(store.get("x").is_some());
    }

    /// First reward accepted, same again is a duplicate, a different one conflicts, an
    /// unknown id is not found, and a refused `accept` leaves the decision open.
    #[test]
    fn reward_outcomes() {
        let store = PendingStore::new(Duration::from_secs(60), 10);
        store.insert(decision("d"));
        let refused = store.record_reward("d", 1.0, |_| Err::<(), _>(Error::Overloaded("q")));
        assert!(matches!(refused, Err(Error::Overloaded(_))));
        assert!(matches!(
            store.record_reward("d", 1.0, |_| Ok(())).unwrap(),
            RewardOutcome::Accepted(())
        ));
        assert!(matches!(
            store
                .record_reward("d", 1.0, |_| -> Result<(), Error> { panic!("not again") })
                .unwrap(),
            RewardOutcome::Duplicate(Some(_))
        ));
        store.settle("d", 1.0, true);
        assert!(matches!(
            store
                .record_reward("d", 1.0, |_| -> Result<(), Error> { panic!("not again") })
                .unwrap(),
            RewardOutcome::Duplicate(None)
        ));
        assert!(matches!(
            store.record_reward("d", 2.0, |_| Ok::<(), Error>(())),
            Err(Error::RewardConflict { .. })
        ));
        assert!(matches!(
            store.record_reward("x", 1.0, |_| Ok::<(), Error>(())),
            Err(Error::DecisionNotFound(_))
        ));
    }

    /// A retry that arrives before the first report's write settles waits for it: it learns
    /// of durability, or of failure (and then the reward is open again for the retry).
    #[tokio::test]
    async fn duplicate_waits_for_the_first_commit() {
        let store = PendingStore::new(Duration::from_secs(60), 10);
        store.insert(decision("d"));
        store
            .record_reward("d", 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        let RewardOutcome::Duplicate(Some(commit)) = store
            .record_reward("d", 1.0, |_| Ok::<(), Error>(()))
            .unwrap()
        else {
            panic!("a retry before the commit must get a commit to wait on");
        };
        let waiter = tokio::spawn(commit.settled());
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "answered before the first write settled"
        );
        store.settle("d", 1.0, false);
        assert!(
            !waiter.await.unwrap(),
            "a failed write must not count as durable"
        );
        // Reverted: the retry is now a first report.
        assert!(matches!(
            store
                .record_reward("d", 1.0, |_| Ok::<(), Error>(()))
                .unwrap(),
            RewardOutcome::Accepted(())
        ));
    }

    /// `awaiting_reward` follows rewards, reverted rewards, removal, eviction and expiry
    /// without a scan.
    #[tokio::test(start_paused = true)]
    async fn awaiting_reward_counts_in_step() {
        let store = PendingStore::new(Duration::from_secs(10), 3);
        for id in ["a", "b", "c"] {
            store.insert(decision(id));
        }
        assert_eq!(store.awaiting_reward(), 3);
        store
            .record_reward("a", 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        store
            .record_reward("b", 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(store.awaiting_reward(), 1);
        store.settle("b", 1.0, false);
        assert_eq!(store.awaiting_reward(), 2);
        // "a" (rewarded) is evicted by "d".
        assert_eq!(store.insert(decision("d")).evicted.len(), 1);
        assert_eq!((store.len(), store.awaiting_reward()), (3, 3));
        store
            .record_reward("c", 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        assert!(store.remove("c"));
        assert_eq!((store.len(), store.awaiting_reward()), (2, 2));
        store.restore(decision("e"), Duration::ZERO, Some(0.5));
        assert_eq!((store.len(), store.awaiting_reward()), (3, 2));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(store.expire(Instant::now()).len(), 3);
        assert_eq!((store.len(), store.awaiting_reward()), (0, 0));
    }

    /// A wheel-shaped decision as the engine makes it (`benches/pending_memory.rs` builds the
    /// same): a 36-byte id, the model's 5 arms, a 2-value context, 5 scores.
    fn wheel(i: usize, arms: &Arc<[Arc<str>]>) -> Decision {
        Decision {
            id: format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i),
            arms: Arms::shared(Arc::clone(arms)),
            chosen: (i % 5) as u32,
            scores: vec![0.1, 0.2, 0.3, 0.4, 0.5].into(),
            model_version: 7,
            input: vec![0.5, -0.5].into(),
            head: (i % 5) as u32,
            propensity: None,
            explanation: None,
            request_hash: i as u64,
            holdout: false,
        }
    }

    /// The store's own count of its heap bytes for a full store of wheel decisions is at
    /// most twice their payload (the bench's definition: id, arm ids, context, features,
    /// scores), and it is made of what the layout says: a ring slot, the buffer and the
    /// index's share per decision. (The bench checks the count against an allocator.)
    #[test]
    fn heap_bytes_within_twice_the_payload() {
        const N: usize = 20_000;
        let arms: Arc<[Arc<str>]> = (0..5).map(|a| Arc::from(a.to_string().as_str())).collect();
        let store = PendingStore::new(Duration::from_secs(60), N);
        let mut payload = 0;
        for i in 0..N {
            let d = wheel(i, &arms);
            payload += d.id.len()
                + d.arms.iter().map(str::len).sum::<usize>()
                + 4 * d.input.len()
                + 8 * d.scores.len();
            store.insert(d);
        }
        let held = store.heap_bytes();
        assert!(
            held <= 2 * payload,
            "{} bytes per decision for a payload of {}",
            held / N,
            payload / N
        );
        // 80-byte slots (the ring grown to the capacity exactly), 84-byte buffers (5 scores,
        // 2 inputs, the id; no arm ids), and 32768 buckets of a 4-byte position and a control
        // byte (plus hashbrown's trailing group of control bytes, 16 on x86-64).
        assert_eq!(std::mem::size_of::<table::Slot<Entry>>(), 80);
        let index = held - N * 80 - N * 84;
        assert!(
            (32768 * 5..=32768 * 5 + 64).contains(&index),
            "index {index} bytes"
        );
        // Rewards are counted while held.
        store
            .record_reward(&wheel(7, &arms).id, 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        assert_eq!(store.heap_bytes(), held + std::mem::size_of::<Recorded>());
    }

    /// Decisions over more arm lists than the store holds at once keep their ids
    /// themselves; every one reads back with its own ids, and a list's entry is reused once
    /// its decisions have left.
    #[test]
    fn arm_lists_shared_or_inline_read_back() {
        let store = PendingStore::new(Duration::from_secs(60), 12);
        let lists: Vec<Arc<[Arc<str>]>> = (0..12)
            .map(|i| {
                (0..=i)
                    .map(|a| Arc::from(format!("arm-{a}").as_str()))
                    .collect()
            })
            .collect();
        let made: Vec<Decision> = (0..24).map(|i| wheel(i, &lists[i % 12])).collect();
        for d in &made[..12] {
            store.insert(d.clone());
        }
        for d in &made[..12] {
            assert_eq!(*store.get(&d.id).unwrap(), *d);
        }
        // Each insert now evicts the oldest, freeing its list's entry for the next one.
        for (i, d) in made[12..].iter().enumerate() {
            let inserted = store.insert(d.clone());
            assert_eq!(inserted.evicted.len(), 1);
            assert_eq!(inserted.evicted[0].id(), made[i].id);
            assert_eq!(*store.get(&d.id).unwrap(), *d);
        }
        for d in &made[12..] {
            assert_eq!(*store.get(&d.id).unwrap(), *d);
        }
    }

    /// Inserting an id that is pending keeps the first decision.
    #[test]
    fn insert_is_idempotent() {
        let store = PendingStore::new(Duration::from_secs(60), 10);
        store.insert(decision("d"));
        let mut other = decision("d");
        other.chosen = 1;
        let kept = store.insert(other);
        assert!(!kept.new);
        assert_eq!(kept.decision.arm_id(), "a");
        assert_eq!(store.len(), 1);
    }

    /// Past capacity the oldest decisions are evicted and counted.
    #[test]
    fn bounded_eviction() {
        let store = PendingStore::new(Duration::from_secs(60), 3);
        let evicted: usize = (0..5)
            .map(|i| store.insert(decision(&i.to_string())).evicted.len())
            .sum();
        assert_eq!(evicted, 2);
        assert_eq!(store.len(), 3);
        assert!(store.get("0").is_none() && store.get("1").is_none() && store.get("4").is_some());
    }

    /// Decisions expire when their window has passed, oldest first, with their reward state.
    #[tokio::test(start_paused = true)]
    async fn window_expiry() {
        let store = PendingStore::new(Duration::from_secs(10), 10);
        store.insert(decision("old"));
        tokio::time::advance(Duration::from_secs(6)).await;
        store.insert(decision("new"));
        store
            .record_reward("new", 1.0, |_| Ok::<(), Error>(()))
            .unwrap();
        tokio::time::advance(Duration::from_secs(5)).await;
        let expired = store.expire(Instant::now());
        assert_eq!(expired.len(), 1);
        assert_eq!(expired[0].decision.id(), "old");
        assert!(!expired[0].rewarded);
        tokio::time::advance(Duration::from_secs(5)).await;
        let expired = store.expire(Instant::now());
        assert_eq!(
            (expired[0].decision.id(), expired[0].rewarded),
            ("new", true)
        );
        assert!(store.is_empty());
    }
}
