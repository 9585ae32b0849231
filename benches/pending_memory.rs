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

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::{
        Arc,
        atomic::{AtomicIsize, Ordering},
    },
    time::Duration,
};

use banditd::decisions::{Arms, Decision, PendingStore};

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
    println!(
        "{name:<6} {N} pending: {per:.0} bytes each on the heap, payload {pay:.0} bytes: {:.2}x",
        per / pay
    );
    drop(store);
}

fn main() {
    let arms: Arc<[Arc<str>]> = (0..5).map(|a| Arc::from(a.to_string().as_str())).collect();
    measure("wheel", 2, |i| Decision {
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
    });
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
