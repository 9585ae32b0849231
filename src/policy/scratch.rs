//! Per-thread buffers of the serving pass, so that a decision allocates nothing but its
//! result. Decisions run on tokio workers and on the blocking pool; each thread keeps its
//! own buffers, grown once to the largest network it has served.

use std::cell::RefCell;

use crate::model::{HostMasks, Scratch};

/// What one decision works in.
#[derive(Debug, Default)]
pub(super) struct Buffers {
    /// The forward pass's layers.
    pub pass: Scratch,
    /// The dropout masks of the current posterior sample(s).
    pub masks: HostMasks,
    /// NeuralLinear's features `[last hidden, 1]`, one row per scored row.
    pub phi: Vec<f32>,
}

thread_local! {
    static BUFFERS: RefCell<Buffers> = RefCell::default();
}

/// Runs `f` with this thread's buffers.
pub(super) fn with<T>(f: impl FnOnce(&mut Buffers) -> T) -> T {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buffers) => f(&mut buffers),
        // Only if a decision ever ran inside another on one thread (none does): fresh
        // buffers for the inner one rather than a panic.
        Err(_) => f(&mut Buffers::default()),
    })
}
