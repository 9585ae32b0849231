//! Cluster metrics: one function per event (names in [`crate::metrics`]; bounded labels: the
//! model name, and a fixed `how`/`why`).

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::metrics::{
    CLUSTER_CONNECTED, CLUSTER_CONSUMER_PENDING, CLUSTER_CONSUMER_RESTARTS,
    CLUSTER_EVENTS_NOT_JOINED, CLUSTER_EXAMPLES_JOINED, CLUSTER_LEASE_ACQUIRED, CLUSTER_LEASE_HELD,
    CLUSTER_LEASE_LOST, CLUSTER_PUBLISHED_VERSION, CLUSTER_SERVING_VERSION, CLUSTER_SNAPSHOT_BYTES,
    CLUSTER_SNAPSHOT_LAG_SECONDS, CLUSTER_SNAPSHOT_LOAD_FAILURES, CLUSTER_SNAPSHOT_UPLOAD_FAILURES,
    CLUSTER_SNAPSHOT_UPLOAD_SECONDS, CLUSTER_SNAPSHOTS_PUBLISHED,
};

/// Lease acquired by this process (a takeover when another held it before).
pub(super) fn lease_acquired(model: &str) {
    counter!(CLUSTER_LEASE_ACQUIRED, "model" => model.to_owned()).increment(1);
    gauge!(CLUSTER_LEASE_HELD, "model" => model.to_owned()).set(1.0);
}

/// Lease lost or released by this process.
pub(super) fn lease_released(model: &str, lost: bool) {
    if lost {
        counter!(CLUSTER_LEASE_LOST, "model" => model.to_owned()).increment(1);
    }
    gauge!(CLUSTER_LEASE_HELD, "model" => model.to_owned()).set(0.0);
}

/// Events the trainer's consumer has not read yet.
pub(super) fn consumer_lag(model: &str, pending: u64) {
    gauge!(CLUSTER_CONSUMER_PENDING, "model" => model.to_owned()).set(pending as f64);
}

/// The trainer's reader was opened again after the last event applied (`why`: error,
/// stalled).
pub(super) fn consumer_restarted(model: &str, why: &'static str) {
    counter!(CLUSTER_CONSUMER_RESTARTS, "model" => model.to_owned(), "why" => why).increment(1);
}

/// A joined example went to the learner (`how`: reward, default).
pub(super) fn joined(model: &str, how: &'static str) {
    counter!(CLUSTER_EXAMPLES_JOINED, "model" => model.to_owned(), "how" => how).increment(1);
}

/// An event the join did not turn into an example (`why`: duplicate, late, unknown).
pub(super) fn not_joined(model: &str, why: &'static str) {
    counter!(CLUSTER_EVENTS_NOT_JOINED, "model" => model.to_owned(), "why" => why).increment(1);
}

/// The trainer uploaded a snapshot of `bytes` bytes.
pub(super) fn snapshot_published(model: &str, version: u64, bytes: usize, took: Duration) {
    counter!(CLUSTER_SNAPSHOTS_PUBLISHED, "model" => model.to_owned()).increment(1);
    gauge!(CLUSTER_SNAPSHOT_BYTES, "model" => model.to_owned()).set(bytes as f64);
    gauge!(CLUSTER_PUBLISHED_VERSION, "model" => model.to_owned()).set(version as f64);
    histogram!(CLUSTER_SNAPSHOT_UPLOAD_SECONDS, "model" => model.to_owned())
        .record(took.as_secs_f64());
}

/// A snapshot upload failed (retried at the next lease renewal).
pub(super) fn snapshot_upload_failed(model: &str) {
    counter!(CLUSTER_SNAPSHOT_UPLOAD_FAILURES, "model" => model.to_owned()).increment(1);
}

/// This replica now serves `version`, `lag` after the trainer published it.
pub(super) fn snapshot_installed(model: &str, version: u64, lag: Duration) {
    gauge!(CLUSTER_SERVING_VERSION, "model" => model.to_owned()).set(version as f64);
    histogram!(CLUSTER_SNAPSHOT_LAG_SECONDS, "model" => model.to_owned()).record(lag.as_secs_f64());
}

/// A snapshot could not be loaded (kept serving the previous one).
pub(super) fn snapshot_failed(model: &str) {
    counter!(CLUSTER_SNAPSHOT_LOAD_FAILURES, "model" => model.to_owned()).increment(1);
}

/// Whether NATS is reachable (1) or not (0).
pub(super) fn connected(up: bool) {
    gauge!(CLUSTER_CONNECTED).set(if up { 1.0 } else { 0.0 });
}
