//! Memory of a pending decision: bytes the heap holds per decision in a full
//! [`PendingStore`], against the decision's payload (its id, its candidates' arm ids, the
//! context, the chosen candidate's features and the scores), counted by a global allocator
//! that tallies live bytes as requested (the allocator's own rounding comes on top).
//!
//! ```sh
//! cargo bench --bench pending_memory
//! ```
//!
//! Decisions are built the way `Engine::choose_arm` builds them: the default `wheel` model
//! (5 fixed arms "0".."4" shared by every decision, a 2-value context, a UUID id) and the
//! default `items` model (per-arm: 8 candidates with their own ids, an 8-value context and
//! 8 features per candidate, of which the decision keeps the chosen row).
//!
//! It then times the store's work per decision on the `wheel` shape, with the store full (so
//! every insert evicts the oldest): an insert, a reward accepted and settled for a decision
//! inserted 1,000 earlier, and a lookup of an id that is not pending (what a request with a
//! client-made id does first); then, apart, a lookup of a pending id (a retry, answered with
//! the stored decision) and the expiry of every held decision. Decisions are built before the
//! clock starts; each figure is the median of 5 rounds of 200,000, wall time on one thread
//! (the counting allocator's atomic add per allocation is included, as in every round).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::Duration,
};

use banditd::{
    decisions::{Arms, Decision, PendingStore},
    error::Error,
};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: the caller's contract is passed through.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        // SAFETY: as above.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: usize = 200_000;

/// A 36-byte id with no spare capacity, as the engine's (a UUID's `to_string`, or a
/// client id's copy) has.
fn uuid_like(i: usize) -> String {
    let mut id = format!("{:08x}-0000-4000-8000-{:012x}", i as u32, i);
    id.shrink_to_fit();
    id
}

/// Payload bytes of a decision: ids, context, the kept features, scores.
fn payload(d: &Decision, context_len: usize) -> usize {
    d.id.len()
        + d.arms.iter().map(str::len).sum::<usize>()
        + 4 * context_len
        + 4 * (d.input.len() - context_len)
        + 8 * d.scores.len()
}

fn measure(name: &str, context_len: usize, make: impl Fn(usize) -> Decision) {
    let store = PendingStore::new(Duration::from_secs(3600), N);
    let mut payload_bytes = 0;
    let before = LIVE.load(Ordering::Relaxed);
    for i in 0..N {
        let d = make(i);
        payload_bytes += payload(&d, context_len);
        store.insert(d);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    let per = held as f64 / N as f64;
    let pay = payload_bytes as f64 / N as f64;
    let own = store.heap_bytes() as f64 / N as f64;
    println!(
        "{name:<6} {N} pending: {per:.0} bytes each on the heap, payload {pay:.0} bytes: {:.2}x (the store's own count: {own:.0} bytes)",
        per / pay
    );
    drop(store);
}

/// Nanoseconds per decision of the store's operations (see the module's doc).
fn time_store(make: impl Fn(usize) -> Decision) {
    const ROUND: usize = 200_000;
    const LAG: usize = 1_000;
    let store = PendingStore::new(Duration::from_secs(3600), N);
    for i in 0..N {
        store.insert(make(i));
    }
    let (mut per_decision, mut per_hit, mut per_expired) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=5 {
        let first = round * ROUND + N;
        let fresh: Vec<Decision> = (first..first + ROUND).map(&make).collect();
        let ids: Vec<String> = fresh.iter().map(|d| d.id.clone()).collect();
        let absent: Vec<String> = (0..ROUND).map(|k| format!("absent-{k}")).collect();
        let started = std::time::Instant::now();
        for (k, d) in fresh.into_iter().enumerate() {
            std::hint::black_box(store.get(&absent[k]));
            std::hint::black_box(store.insert(d));
            if k >= LAG {
                let id = &ids[k - LAG];
                let outcome = store.record_reward(id, 1.0, |_| Ok::<(), Error>(()));
                assert!(
                    outcome.is_ok(),
                    "a reward for a pending decision is accepted"
                );
                store.settle(id, 1.0, true);
            }
        }
        per_decision.push(started.elapsed().as_nanos() as f64 / ROUND as f64);
        let started = std::time::Instant::now();
        for id in &ids {
            assert!(std::hint::black_box(store.get(id)).is_some());
        }
        per_hit.push(started.elapsed().as_nanos() as f64 / ROUND as f64);
        // Expiry of a full store: a zero window closes every decision at once.
        let closing = PendingStore::new(Duration::ZERO, N);
        for i in 0..N {
            closing.insert(make(i));
        }
        let started = std::time::Instant::now();
        let expired = closing.expire(tokio::time::Instant::now());
        per_expired.push(started.elapsed().as_nanos() as f64 / expired.len() as f64);
        drop(expired);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "wheel  store CPU: {:.0} ns per decision (insert evicting the oldest, reward + settle, lookup of an absent id), {:.0} ns per lookup of a pending id, {:.0} ns per expired decision",
        median(&mut per_decision),
        median(&mut per_hit),
        median(&mut per_expired)
    );
}

fn main() {
    let arms: Arc<[Arc<str>]> = (0..5).map(|a| Arc::from(a.to_string().as_str())).collect();
    let wheel = |i: usize| Decision {
        id: uuid_like(i),
        arms: Arms::shared(Arc::clone(&arms)),
        chosen: (i % 5) as u32,
        scores: vec![0.1, 0.2, 0.3, 0.4, 0.5].into(),
        model_version: 7,
        input: vec![0.5, -0.5].into(),
        head: (i % 5) as u32,
        propensity: None,
        explanation: None,
        request_hash: i as u64,
        holdout: false,
    };
    measure("wheel", 2, wheel);
    time_store(wheel);
    measure("items", 8, |i| Decision {
        id: uuid_like(i),
        arms: Arms::packed(
            (0..8)
                .map(|c| format!("item-{}", (i * 8 + c) % 5000))
                .collect::<Vec<_>>()
                .iter()
                .map(String::as_str),
        ),
        chosen: (i % 8) as u32,
        scores: vec![0.25; 8].into(),
        model_version: 7,
        input: vec![0.5; 16].into(),
        head: 0,
        propensity: None,
        explanation: None,
        request_hash: i as u64,
        holdout: false,
    });
}
