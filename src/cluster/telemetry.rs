//! Cluster metrics: names and one function per event (bounded labels: the model name only).

use std::time::Duration;

use metrics::{counter, gauge, histogram};

/// Lease acquired by this process (a takeover when another held it before).
pub(super) fn lease_acquired(model: &str) {
    counter!("banditd_cluster_lease_acquired_total", "model" => model.to_owned()).increment(1);
    gauge!("banditd_cluster_lease_held", "model" => model.to_owned()).set(1.0);
}

/// Lease lost or released by this process.
pub(super) fn lease_released(model: &str, lost: bool) {
    if lost {
        counter!("banditd_cluster_lease_lost_total", "model" => model.to_owned()).increment(1);
    }
    gauge!("banditd_cluster_lease_held", "model" => model.to_owned()).set(0.0);
}

/// Events the trainer's consumer has not read yet.
pub(super) fn consumer_lag(model: &str, pending: u64) {
    gauge!("banditd_cluster_consumer_pending", "model" => model.to_owned()).set(pending as f64);
}

/// A joined example went to the learner (`how`: reward, default).
pub(super) fn joined(model: &str, how: &'static str) {
    counter!("banditd_cluster_examples_joined_total", "model" => model.to_owned(), "how" => how)
        .increment(1);
}

/// An event the join did not turn into an example (`why`: duplicate, late, unknown).
pub(super) fn not_joined(model: &str, why: &'static str) {
    counter!("banditd_cluster_events_not_joined_total", "model" => model.to_owned(), "why" => why)
        .increment(1);
}

/// The trainer uploaded a snapshot of `bytes` bytes.
pub(super) fn snapshot_published(model: &str, version: u64, bytes: usize, took: Duration) {
    counter!("banditd_cluster_snapshots_published_total", "model" => model.to_owned()).increment(1);
    gauge!("banditd_cluster_snapshot_bytes", "model" => model.to_owned()).set(bytes as f64);
    gauge!("banditd_cluster_published_version", "model" => model.to_owned()).set(version as f64);
    histogram!("banditd_cluster_snapshot_upload_seconds", "model" => model.to_owned())
        .record(took.as_secs_f64());
}

/// This replica now serves `version`, `lag` after the trainer published it.
pub(super) fn snapshot_installed(model: &str, version: u64, lag: Duration) {
    gauge!("banditd_cluster_serving_version", "model" => model.to_owned()).set(version as f64);
    histogram!("banditd_cluster_snapshot_lag_seconds", "model" => model.to_owned())
        .record(lag.as_secs_f64());
}

/// A snapshot could not be loaded (kept serving the previous one).
pub(super) fn snapshot_failed(model: &str) {
    counter!("banditd_cluster_snapshot_load_failures_total", "model" => model.to_owned())
        .increment(1);
}

/// Whether NATS is reachable (1) or not (0).
pub(super) fn connected(up: bool) {
    gauge!("banditd_cluster_connected").set(if up { 1.0 } else { 0.0 });
}
