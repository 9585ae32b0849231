//! The engine's hook for cluster mode: where a replica sends its decision and reward events
//! instead of the local log. `cluster/` implements it over NATS JetStream; the engine knows
//! only this trait, so single-process mode (no bus) is untouched.

use std::{future::Future, pin::Pin};

use crate::{
    error::Error,
    storage::{DecisionRecord, RewardRecord},
};

/// A boxed future of a bus call.
pub type BusFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// What the event store did with a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// Stored (at the configured replication) for the first time.
    New,
    /// An event with the same id was stored before (a retry): nothing new was stored.
    Duplicate,
}

/// The shared event store of a cluster.
pub trait EventBus: Send + Sync + std::fmt::Debug {
    /// Stores a decision, deduplicated by its model and decision id.
    ///
    /// # Errors
    /// UNAVAILABLE-class when the store cannot be reached or does not acknowledge in time.
    fn publish_decision(&self, record: DecisionRecord) -> BusFuture<'_, Stored>;

    /// The stored decision `id` of `model`, if any (made by any replica).
    ///
    /// # Errors
    /// UNAVAILABLE-class when the store cannot be reached.
    fn find_decision<'a>(
        &'a self,
        model: &'a str,
        id: &'a str,
    ) -> BusFuture<'a, Option<DecisionRecord>>;

    /// Stores a reward (with its training example), deduplicated by model and decision id.
    ///
    /// # Errors
    /// UNAVAILABLE-class when the store cannot be reached or does not acknowledge in time.
    fn publish_reward(&self, record: RewardRecord) -> BusFuture<'_, Stored>;

    /// Whether the store is reachable now (health follows it).
    fn connected(&self) -> bool;

    /// Whether to keep deciding, unlogged, while the store is unreachable.
    fn serve_when_disconnected(&self) -> bool;
}
