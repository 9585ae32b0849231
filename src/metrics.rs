//! Every metric the service exports: one list of names, their help text and buckets, and one
//! small function per event. Labels are bounded: the model name (from config), the arm id for
//! fixed-arm models only (from config), the transport (grpc, http), gRPC method and status code
//! names.
//!
//! The library only records through the `metrics` facade; `banditd`'s `main` installs the
//! Prometheus exporter ([`install`]). Without a recorder every call here is a no-op.

use std::{net::SocketAddr, time::Duration};

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder};

/// Decisions made, by model (and arm, for fixed-arm models).
pub const DECISIONS: &str = "banditd_decisions_total";
/// Rewards accepted (first report of a decision), by model.
pub const REWARDS: &str = "banditd_rewards_total";
/// Sum of accepted rewards, by model (a gauge: rewards may be negative).
pub const REWARD_SUM: &str = "banditd_reward_sum";
/// Rewards of each holdout group (reported, and default rewards of expired decisions), by
/// model and `group` (`treatment`: served by the model; `control`: by the holdout's control
/// policy).
pub const GROUP_REWARDS: &str = "banditd_group_rewards_total";
/// Sum of those rewards, by model and group.
pub const GROUP_REWARD_SUM: &str = "banditd_group_reward_sum";
/// Sum of their squares, by model and group (for the lift's confidence interval).
pub const GROUP_REWARD_SQUARES: &str = "banditd_group_reward_squares_sum";
/// Sum of the `regret` field of accepted rewards, by model.
pub const REGRET_SUM: &str = "banditd_regret_sum";
/// Server time of `ChooseArm`, by model.
pub const CHOOSE_ARM_SECONDS: &str = "banditd_choose_arm_duration_seconds";
/// Server time of `ReportReward`, by model.
pub const REPORT_REWARD_SECONDS: &str = "banditd_report_reward_duration_seconds";
/// Failed calls by transport, method and status code.
pub const REQUEST_ERRORS: &str = "banditd_request_errors_total";
/// Rewards refused because they could not be stored (the log writer's queue full; in
/// cluster mode, NATS unreachable), by model.
pub const REWARDS_DROPPED: &str = "banditd_rewards_dropped_total";
/// SGD steps taken, by model.
pub const LEARNER_STEPS: &str = "banditd_learner_steps_total";
/// SGD steps skipped because the learner fell behind (backlog over `max_step_backlog`).
pub const LEARNER_STEPS_SKIPPED: &str = "banditd_learner_steps_skipped_total";
/// Loss of the latest minibatch (squared error on standardised rewards), by model.
pub const LEARNER_LOSS: &str = "banditd_learner_loss";
/// Log records the learner has not read yet (all models' records count), by model.
pub const LEARNER_LAG: &str = "banditd_learner_lag_records";
/// Examples in the replay buffer, by model.
pub const REPLAY_SIZE: &str = "banditd_replay_size";
/// Decisions waiting for a reward, by model.
pub const PENDING_DECISIONS: &str = "banditd_pending_decisions";
/// Gauge: heap bytes the pending store holds for its decisions.
pub const PENDING_BYTES: &str = "banditd_pending_bytes";
/// Decisions whose window closed with no reward, by model and outcome
/// (`defaulted`: trained on the default reward; `dropped`: no default configured, or the
/// log writer's queue was full).
pub const DECISIONS_EXPIRED: &str = "banditd_decisions_expired_total";
/// Decisions evicted before their window closed because the store was full, by model.
pub const DECISIONS_EVICTED: &str = "banditd_decisions_evicted_total";
/// Decision ids forgotten before the log's retention because `limits.max_remembered_ids`
/// was reached, by model (such an id could be taken by a new decision).
pub const DECISION_IDS_FORGOTTEN: &str = "banditd_decision_ids_forgotten_total";
/// Things recovery skipped at startup (torn or corrupt files, unreadable rows), by kind.
pub const RECOVERY_SKIPPED: &str = "banditd_recovery_skipped_total";
/// Decisions answered but not queued for the log (writer queue full), by model.
pub const DECISIONS_UNLOGGED: &str = "banditd_decisions_unlogged_total";
/// Decisions refused with RESOURCE_EXHAUSTED because the log writer queue was full, by model.
pub const DECISIONS_REFUSED: &str = "banditd_decisions_refused_total";
/// Version of the weights serving decisions, by model.
pub const MODEL_VERSION: &str = "banditd_model_version";
/// NeuralLinear refreshes (features recomputed, regressions refitted on replay), by model.
pub const LINEAR_REFRESHES: &str = "banditd_neural_linear_refreshes_total";
/// How long the latest NeuralLinear refresh took, by model.
pub const LINEAR_REFRESH_SECONDS: &str = "banditd_neural_linear_refresh_seconds";
/// Drop rate the serving weights draw their masks at, by model and layer (`0` = the input
/// units, then each hidden layer): the configured rate, or the learned one with
/// `concrete_dropout`.
pub const DROP_RATE: &str = "banditd_drop_rate";
/// gRPC connections open (including those still in their handshake).
pub const CONNECTIONS_OPEN: &str = "banditd_connections_open";
/// The connection cap in force (`server.max_connections`, lowered to what the open-file
/// limit allows).
pub const CONNECTIONS_MAX: &str = "banditd_connections_max";
/// Connections closed by the server before serving a call, by reason (`limit`: over the
/// connection cap; `handshake_timeout`: no TLS handshake or HTTP/2 preface in time;
/// `handshake_failed`: the TLS handshake failed or the peer closed first).
pub const CONNECTIONS_REFUSED: &str = "banditd_connections_refused_total";
/// Failed `accept` calls on the gRPC listener, by kind (`fd_limit`: EMFILE/ENFILE;
/// `no_memory`: ENOBUFS/ENOMEM; `aborted`: the peer went away first; `other`).
pub const ACCEPT_ERRORS: &str = "banditd_accept_errors_total";

/// Latency buckets in seconds: the service answers in tens of microseconds, a slow one in
/// milliseconds; 25 µs to 1 s covers both with about two buckets per doubling at the low end.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_075, 0.000_1, 0.000_15, 0.000_2, 0.000_3, 0.000_5, 0.000_75, 0.001,
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// Installs the Prometheus exporter with its HTTP listener on `addr` (serving `/metrics`)
/// and describes every metric. Call once, from the binary, inside a tokio runtime.
///
/// # Errors
/// The listener cannot be set up or a recorder is already installed.
pub fn install(addr: SocketAddr) -> Result<(), BuildError> {
    PrometheusBuilder::new()
        .with_http_listener(addr)
        .set_buckets_for_metric(Matcher::Suffix("_duration_seconds".into()), LATENCY_BUCKETS)?
        .install()?;
    describe();
    crate::telemetry::describe();
    crate::telemetry::spawn();
    Ok(())
}

/// Registers help text and units for every metric.
pub fn describe() {
    describe_counter!(
        LINEAR_REFRESHES,
        Unit::Count,
        "NeuralLinear refreshes: features recomputed with the latest network, regressions refitted on the replay buffer."
    );
    describe_gauge!(
        LINEAR_REFRESH_SECONDS,
        Unit::Seconds,
        "Duration of the latest NeuralLinear refresh."
    );
    describe_counter!(
        DECISIONS,
        Unit::Count,
        "Decisions made, by model (and arm for fixed-arm models)."
    );
    describe_counter!(
        REWARDS,
        Unit::Count,
        "Rewards accepted (first report per decision)."
    );
    describe_gauge!(REWARD_SUM, "Sum of accepted rewards.");
    describe_counter!(
        GROUP_REWARDS,
        "Rewards per holdout group (treatment: the model; control: the control policy)."
    );
    describe_gauge!(GROUP_REWARD_SUM, "Sum of the rewards per holdout group.");
    describe_gauge!(
        GROUP_REWARD_SQUARES,
        "Sum of the squared rewards per holdout group."
    );
    describe_gauge!(
        REGRET_SUM,
        "Sum of the regret reported with accepted rewards (simulations and replays)."
    );
    describe_histogram!(
        CHOOSE_ARM_SECONDS,
        Unit::Seconds,
        "Server time of ChooseArm."
    );
    describe_histogram!(
        REPORT_REWARD_SECONDS,
        Unit::Seconds,
        "Server time of ReportReward."
    );
    describe_counter!(
        REQUEST_ERRORS,
        Unit::Count,
        "Failed calls by transport (grpc, http), method and gRPC status code."
    );
    describe_counter!(
        REWARDS_DROPPED,
        Unit::Count,
        "Rewards refused because they could not be stored (log writer queue full: RESOURCE_EXHAUSTED; cluster mode, NATS unreachable: UNAVAILABLE)."
    );
    describe_counter!(
        LEARNER_STEPS,
        Unit::Count,
        "SGD steps taken by the learner."
    );
    describe_counter!(
        LEARNER_STEPS_SKIPPED,
        Unit::Count,
        "SGD steps skipped because the learner fell behind the reward rate."
    );
    describe_gauge!(
        LEARNER_LOSS,
        "Squared error of the latest minibatch on standardised rewards."
    );
    describe_gauge!(
        LEARNER_LAG,
        Unit::Count,
        "Log records committed but not yet read by the model's learner."
    );
    describe_log();
    describe_gauge!(REPLAY_SIZE, Unit::Count, "Examples in the replay buffer.");
    describe_gauge!(
        PENDING_DECISIONS,
        Unit::Count,
        "Decisions waiting for their reward."
    );
    describe_gauge!(
        PENDING_BYTES,
        Unit::Bytes,
        "Heap bytes the pending store holds for its decisions (table, decisions, rewards)."
    );
    describe_counter!(
        DECISIONS_EXPIRED,
        Unit::Count,
        "Decisions whose reward window closed without a reward, by outcome."
    );
    describe_counter!(
        DECISIONS_EVICTED,
        Unit::Count,
        "Decisions evicted because the pending store was full."
    );
    describe_counter!(
        DECISION_IDS_FORGOTTEN,
        Unit::Count,
        "Decision ids forgotten before the log's retention because limits.max_remembered_ids was reached."
    );
    describe_counter!(
        RECOVERY_SKIPPED,
        Unit::Count,
        "Torn or corrupt files and unreadable log rows skipped at startup, by kind."
    );
    describe_counter!(
        DECISIONS_UNLOGGED,
        Unit::Count,
        "Decisions answered without being logged because the log writer queue was full."
    );
    describe_counter!(
        DECISIONS_REFUSED,
        Unit::Count,
        "Decisions refused with RESOURCE_EXHAUSTED because the log writer queue was full."
    );
    describe_gauge!(MODEL_VERSION, "Version of the weights serving decisions.");
    describe_gauge!(
        CONNECTIONS_OPEN,
        Unit::Count,
        "gRPC connections open, including those still in their handshake."
    );
    describe_gauge!(
        CONNECTIONS_MAX,
        Unit::Count,
        "The connection cap in force (server.max_connections, lowered to what the open-file limit allows)."
    );
    describe_counter!(
        CONNECTIONS_REFUSED,
        Unit::Count,
        "Connections closed before serving a call, by reason: limit, handshake_timeout, handshake_failed."
    );
    describe_counter!(
        ACCEPT_ERRORS,
        Unit::Count,
        "Failed accepts on the gRPC listener, by kind: fd_limit, no_memory, aborted, other."
    );
    describe_gauge!(
        DROP_RATE,
        "Drop rate of the units feeding each weight layer of the serving weights (layer 0 = input); learned with concrete_dropout."
    );
}

/// A reward was refused because the log writer's queue was full.
pub fn reward_dropped(model: &str) {
    counter!(REWARDS_DROPPED, "model" => model.to_owned()).increment(1);
    tracing::warn!(
        model,
        "log writer queue full: reward refused with RESOURCE_EXHAUSTED"
    );
}

/// The transport a call came over: the `transport` label of [`REQUEST_ERRORS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// gRPC (`src/grpc`).
    Grpc,
    /// The HTTP/JSON face (`src/http`).
    Http,
}

impl Transport {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::Grpc => "grpc",
            Self::Http => "http",
        }
    }
}

/// A call over `transport` failed with `code`.
pub fn request_failed(transport: Transport, method: &'static str, code: &'static str) {
    counter!(REQUEST_ERRORS, "transport" => transport.label(), "method" => method, "code" => code)
        .increment(1);
}

/// The learner took `steps` steps; the last had minibatch loss `loss`.
pub fn learner_progress(model: &str, steps: u64, loss: f64, lag: u64, replay_size: usize) {
    counter!(LEARNER_STEPS, "model" => model.to_owned()).increment(steps);
    gauge!(LEARNER_LOSS, "model" => model.to_owned()).set(loss);
    gauge!(LEARNER_LAG, "model" => model.to_owned()).set(lag as f64);
    gauge!(REPLAY_SIZE, "model" => model.to_owned()).set(replay_size as f64);
}

/// The learner fell behind and skipped `steps` steps.
pub fn learner_steps_skipped(model: &str, steps: u64) {
    counter!(LEARNER_STEPS_SKIPPED, "model" => model.to_owned()).increment(steps);
}

/// Recovery skipped `count` things of `kind` (`log`, `log_row`, `checkpoint`).
pub fn recovery_skipped(kind: &'static str, count: u64) {
    counter!(RECOVERY_SKIPPED, "kind" => kind).increment(count);
}

/// A decision was refused because the log writer queue was full (`on_log_full = "reject"`).
pub fn decision_refused(model: &str) {
    counter!(DECISIONS_REFUSED, "model" => model.to_owned()).increment(1);
    tracing::warn!(
        model,
        "log writer queue full: decision refused with RESOURCE_EXHAUSTED"
    );
}

/// A decision was answered but could not be queued for the log.
pub fn decision_unlogged(model: &str) {
    counter!(DECISIONS_UNLOGGED, "model" => model.to_owned()).increment(1);
    tracing::warn!(
        model,
        "log writer queue full: decision answered without being logged"
    );
}

/// Cluster mode: a decision was refused (UNAVAILABLE) because JetStream did not store it.
/// Logged at debug level: during an outage every call lands here, and health already says so.
pub fn decision_refused_unstored(model: &str) {
    counter!(DECISIONS_REFUSED, "model" => model.to_owned()).increment(1);
    tracing::debug!(model, "JetStream did not store the decision: refused");
}

/// Cluster mode: a reward was refused (UNAVAILABLE), NATS being unreachable. Debug level,
/// as above.
pub fn reward_refused_unstored(model: &str) {
    counter!(REWARDS_DROPPED, "model" => model.to_owned()).increment(1);
    tracing::debug!(model, "NATS unreachable: reward refused");
}

/// Cluster mode: a decision was answered without being stored, NATS being unreachable
/// (`cluster.serve_when_disconnected`). Debug level, as above.
pub fn decision_unstored(model: &str) {
    counter!(DECISIONS_UNLOGGED, "model" => model.to_owned()).increment(1);
    tracing::debug!(
        model,
        "NATS unreachable: decision answered without being stored"
    );
}

/// NeuralLinear refreshed `count` times since the last report; the latest took `last`.
pub fn linear_refreshed(model: &str, count: u64, last: Duration) {
    counter!(LINEAR_REFRESHES, "model" => model.to_owned()).increment(count);
    gauge!(LINEAR_REFRESH_SECONDS, "model" => model.to_owned()).set(last.as_secs_f64());
}

/// New weights were published, drawing their masks at `drop_rates` (one per weight layer,
/// input first: the layer label is bounded by the configured network depth).
pub fn model_published(model: &str, version: u64, drop_rates: &[f64]) {
    gauge!(MODEL_VERSION, "model" => model.to_owned()).set(version as f64);
    for (layer, rate) in drop_rates.iter().enumerate() {
        gauge!(DROP_RATE, "model" => model.to_owned(), "layer" => layer.to_string()).set(*rate);
    }
}

/// The pending store's size: `count` decisions in `bytes` of heap.
pub fn pending_decisions(model: &str, count: usize, bytes: usize) {
    gauge!(PENDING_DECISIONS, "model" => model.to_owned()).set(count as f64);
    gauge!(PENDING_BYTES, "model" => model.to_owned()).set(bytes as f64);
}

/// A decision's window closed without a reward; `defaulted` says whether the default reward
/// was queued for training.
pub fn decision_expired(model: &str, defaulted: bool) {
    let outcome = if defaulted { "defaulted" } else { "dropped" };
    counter!(DECISIONS_EXPIRED, "model" => model.to_owned(), "outcome" => outcome).increment(1);
}

/// `count` decisions were evicted from a full store. Logged at most once every 10 s (a full
/// store evicts on every decision: a line each was thousands a second, and their formatting
/// cost the serving threads more than the decisions did).
pub fn decisions_evicted(model: &str, count: u64) {
    counter!(DECISIONS_EVICTED, "model" => model.to_owned()).increment(count);
    warn_evicted(model, count);
}

/// The rate-limited WARN line of [`decisions_evicted`].
fn warn_evicted(model: &str, count: u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SUPPRESSED: AtomicU64 = AtomicU64::new(0);
    static LAST_LOG_MS: AtomicU64 = AtomicU64::new(0);
    let now = crate::domain::now_ms();
    let last = LAST_LOG_MS.load(Ordering::Relaxed);
    if now.saturating_sub(last) < 10_000
        || LAST_LOG_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
    {
        SUPPRESSED.fetch_add(count, Ordering::Relaxed);
        return;
    }
    let earlier = SUPPRESSED.swap(0, Ordering::Relaxed);
    tracing::warn!(
        model,
        count,
        evicted_since_last_line = earlier,
        "pending store full: oldest decisions evicted (see banditd_decisions_evicted_total)"
    );
}

/// `count` used decision ids were forgotten early (`limits.max_remembered_ids` reached).
pub fn decision_ids_forgotten(model: &str, count: usize) {
    if count > 0 {
        counter!(DECISION_IDS_FORGOTTEN, "model" => model.to_owned()).increment(count as u64);
    }
}

/// Records appended to the log.
pub const LOG_RECORDS: &str = "banditd_log_records_total";
/// Bytes appended to the log.
pub const LOG_BYTES: &str = "banditd_log_bytes_total";
/// Failed log writes (a full disk, an I/O error).
pub const LOG_WRITE_ERRORS: &str = "banditd_log_write_errors_total";
/// 1 while the log cannot be written (events are refused), else 0.
pub const LOG_FAILING: &str = "banditd_log_failing";
/// Log segments deleted by retention.
pub const LOG_SEGMENTS_REMOVED: &str = "banditd_log_segments_removed_total";

fn describe_log() {
    describe_counter!(
        LOG_RECORDS,
        Unit::Count,
        "Records appended to the decision/reward log."
    );
    describe_counter!(
        LOG_BYTES,
        Unit::Bytes,
        "Bytes appended to the decision/reward log."
    );
    describe_counter!(
        LOG_WRITE_ERRORS,
        Unit::Count,
        "Failed log writes (full disk, I/O error); events are refused until a write succeeds."
    );
    describe_gauge!(
        LOG_FAILING,
        "1 while the log cannot be written and new decisions and rewards are refused."
    );
    describe_counter!(
        LOG_SEGMENTS_REMOVED,
        Unit::Count,
        "Log segments deleted by retention."
    );
}

/// A group of `records` records (`bytes` bytes) was appended to the log.
pub fn log_appended(records: u64, bytes: u64) {
    counter!(LOG_RECORDS).increment(records);
    counter!(LOG_BYTES).increment(bytes);
}

/// A log write failed; the log refuses events until one succeeds.
pub fn log_write_failed() {
    counter!(LOG_WRITE_ERRORS).increment(1);
    gauge!(LOG_FAILING).set(1.0);
}

/// A log write succeeded after failures.
pub fn log_writable() {
    gauge!(LOG_FAILING).set(0.0);
}

/// Retention deleted `n` log segments.
pub fn log_segments_removed(n: u64) {
    counter!(LOG_SEGMENTS_REMOVED).increment(n);
}

/// A reward (reported, or a default reward) counted for a holdout group.
pub fn group_reward(model: &str, control: bool, reward: f64) {
    let group = if control { "control" } else { "treatment" };
    counter!(GROUP_REWARDS, "model" => model.to_owned(), "group" => group).increment(1);
    gauge!(GROUP_REWARD_SUM, "model" => model.to_owned(), "group" => group).increment(reward);
    gauge!(GROUP_REWARD_SQUARES, "model" => model.to_owned(), "group" => group)
        .increment(reward * reward);
}

/// The gRPC methods, for the series [`init_series`] creates.
const METHODS: [&str; 4] = ["ChooseArm", "ReportReward", "GetModel", "ListModels"];
/// The codes a bandit call commonly fails with (README.md "Errors"), spelled as
/// `grpc::code_name` spells them for [`request_failed`]; other codes appear on their first
/// occurrence.
const COMMON_CODES: [&str; 8] = [
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "RESOURCE_EXHAUSTED",
    "UNAVAILABLE",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "OUT_OF_RANGE",
];

/// What [`init_series`] needs to know of one model.
#[derive(Debug, Clone, Copy)]
pub struct ModelSeries<'a> {
    /// The model's name.
    pub name: &'a str,
    /// Its arm ids if it is a fixed-arm model (the `arm` label of [`DECISIONS`]).
    pub arms: Option<&'a [String]>,
    /// Its weight layers (hidden layers + 1): the `layer` label of [`DROP_RATE`].
    pub weight_layers: usize,
}

/// Creates every series at its zero (counters and gauges, without changing a value already
/// set; histograms registered empty, which the exporter renders as zero counts), so that
/// dashboards and `absent()` alerts see a quiet server as quiet, not as missing.
pub fn init_series(models: &[ModelSeries<'_>]) {
    for model in models {
        let m = || model.name.to_owned();
        match model.arms {
            Some(arms) => {
                for arm in arms {
                    counter!(DECISIONS, "model" => m(), "arm" => arm.clone()).increment(0);
                }
            }
            None => counter!(DECISIONS, "model" => m()).increment(0),
        }
        for name in [
            REWARDS,
            REWARDS_DROPPED,
            LEARNER_STEPS,
            LEARNER_STEPS_SKIPPED,
            DECISIONS_EVICTED,
            DECISION_IDS_FORGOTTEN,
            DECISIONS_UNLOGGED,
            DECISIONS_REFUSED,
            LINEAR_REFRESHES,
        ] {
            counter!(name, "model" => m()).increment(0);
        }
        for group in ["treatment", "control"] {
            counter!(GROUP_REWARDS, "model" => m(), "group" => group).increment(0);
            gauge!(GROUP_REWARD_SUM, "model" => m(), "group" => group).increment(0.0);
            gauge!(GROUP_REWARD_SQUARES, "model" => m(), "group" => group).increment(0.0);
        }
        for outcome in ["defaulted", "dropped"] {
            counter!(DECISIONS_EXPIRED, "model" => m(), "outcome" => outcome).increment(0);
        }
        for name in [
            REWARD_SUM,
            REGRET_SUM,
            LEARNER_LOSS,
            LEARNER_LAG,
            REPLAY_SIZE,
            PENDING_DECISIONS,
            PENDING_BYTES,
            MODEL_VERSION,
            LINEAR_REFRESH_SECONDS,
        ] {
            gauge!(name, "model" => m()).increment(0.0);
        }
        // Registering a histogram without recording creates its (empty) series.
        let _ = histogram!(CHOOSE_ARM_SECONDS, "model" => m());
        let _ = histogram!(REPORT_REWARD_SECONDS, "model" => m());
        for layer in 0..model.weight_layers {
            gauge!(DROP_RATE, "model" => m(), "layer" => layer.to_string()).increment(0.0);
        }
    }
    for transport in [Transport::Grpc.label(), Transport::Http.label()] {
        for method in METHODS {
            for code in COMMON_CODES {
                counter!(REQUEST_ERRORS, "transport" => transport, "method" => method, "code" => code)
                    .increment(0);
            }
        }
    }
    for kind in ["checkpoint", "log_segment", "log_frame"] {
        counter!(RECOVERY_SKIPPED, "kind" => kind).increment(0);
    }
    for name in [
        LOG_RECORDS,
        LOG_BYTES,
        LOG_WRITE_ERRORS,
        LOG_SEGMENTS_REMOVED,
    ] {
        counter!(name).increment(0);
    }
    gauge!(LOG_FAILING).increment(0.0);
    for reason in ["limit", "handshake_timeout", "handshake_failed"] {
        counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(0);
    }
    for kind in ["fd_limit", "no_memory", "aborted", "other"] {
        counter!(ACCEPT_ERRORS, "kind" => kind).increment(0);
    }
    gauge!(CONNECTIONS_OPEN).increment(0.0);
}

/// The connection cap in force.
pub fn connections_max(max: usize) {
    gauge!(CONNECTIONS_MAX).set(max as f64);
}

/// A connection was accepted (`open` = true) or has closed.
pub fn connection_open(open: bool) {
    gauge!(CONNECTIONS_OPEN).increment(if open { 1.0 } else { -1.0 });
}

/// A connection was closed before serving a call, for `reason` (see [`CONNECTIONS_REFUSED`]).
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED, "reason" => reason).increment(1);
}

/// An `accept` on the gRPC listener failed (see [`ACCEPT_ERRORS`] for the kinds). The caller
/// logs, rate-limited: at the fd limit this happens thousands of times a second.
pub fn accept_failed(kind: &'static str) {
    counter!(ACCEPT_ERRORS, "kind" => kind).increment(1);
}

// --- Cluster mode (recorded by `cluster/telemetry.rs`; README.md "Cluster mode") ---------------

/// Whether NATS is reachable (1) or not (0).
pub const CLUSTER_CONNECTED: &str = "banditd_cluster_connected";
/// Whether this process holds the model's trainer lease.
pub const CLUSTER_LEASE_HELD: &str = "banditd_cluster_lease_held";
/// Trainer leases acquired by this process.
pub const CLUSTER_LEASE_ACQUIRED: &str = "banditd_cluster_lease_acquired_total";
/// Trainer leases this process lost (not given up at shutdown).
pub const CLUSTER_LEASE_LOST: &str = "banditd_cluster_lease_lost_total";
/// Events the trainer's consumer has not read yet.
pub const CLUSTER_CONSUMER_PENDING: &str = "banditd_cluster_consumer_pending";
/// Examples the trainer's join produced, by `how` (reward, default).
pub const CLUSTER_EXAMPLES_JOINED: &str = "banditd_cluster_examples_joined_total";
/// Events the join did not train, by `why` (duplicate, late, undecodable).
pub const CLUSTER_EVENTS_NOT_JOINED: &str = "banditd_cluster_events_not_joined_total";
/// Snapshots this process uploaded as the trainer.
pub const CLUSTER_SNAPSHOTS_PUBLISHED: &str = "banditd_cluster_snapshots_published_total";
/// Size of the last uploaded snapshot object, in bytes.
pub const CLUSTER_SNAPSHOT_BYTES: &str = "banditd_cluster_snapshot_bytes";
/// Version of the last uploaded snapshot.
pub const CLUSTER_PUBLISHED_VERSION: &str = "banditd_cluster_published_version";
/// Time to upload a snapshot and set its version, in seconds.
pub const CLUSTER_SNAPSHOT_UPLOAD_SECONDS: &str = "banditd_cluster_snapshot_upload_seconds";
/// Version this replica serves.
pub const CLUSTER_SERVING_VERSION: &str = "banditd_cluster_serving_version";
/// Time from a snapshot's upload to this replica serving it, in seconds (summary).
pub const CLUSTER_SNAPSHOT_LAG_SECONDS: &str = "banditd_cluster_snapshot_lag_seconds";
/// Snapshots this replica could not load (it kept serving the previous one).
pub const CLUSTER_SNAPSHOT_LOAD_FAILURES: &str = "banditd_cluster_snapshot_load_failures_total";
/// Times the trainer's reader of the stream was opened again after the last event it applied,
/// by `why` (error: the consumer failed; stalled: nothing arrived while the model's stream
/// held newer events).
pub const CLUSTER_CONSUMER_RESTARTS: &str = "banditd_cluster_consumer_restarts_total";
/// Snapshot uploads that failed (the trainer retries at its next lease renewal).
pub const CLUSTER_SNAPSHOT_UPLOAD_FAILURES: &str = "banditd_cluster_snapshot_upload_failures_total";

// --- A model's serving-path series, resolved once ----------------------------------------------

/// The series a model's ChooseArm and ReportReward record on every call, registered once per
/// model (when its runtime is built) instead of looked up by name and labels per call: the
/// lookup (label strings built, hashed, compared) cost the serving path more than the
/// increments. The only recorder of `banditd_decisions_total`, `banditd_rewards_total`, the
/// reward and regret sums and the two duration histograms; eviction and group series as
/// [`decisions_evicted`] and [`group_reward`] record them.
#[derive(Debug, Clone)]
pub struct ModelMetrics {
    model: String,
    /// `banditd_decisions_total{model}` (per-arm models only: a fixed-arm model's decisions
    /// carry their arm, and an unlabelled series beside them would show as one more arm).
    decisions: Option<metrics::Counter>,
    /// `banditd_decisions_total{model, arm}` by output head (fixed-arm models).
    decisions_by_arm: Vec<metrics::Counter>,
    choose_seconds: metrics::Histogram,
    evicted: metrics::Counter,
    rewards: metrics::Counter,
    reward_sum: metrics::Gauge,
    regret_sum: metrics::Gauge,
    report_seconds: metrics::Histogram,
    /// Treatment, then control: (rewards, sum, squares).
    groups: [(metrics::Counter, metrics::Gauge, metrics::Gauge); 2],
}

impl ModelMetrics {
    /// The handles of `model`'s series; `arms` are a fixed-arm model's arm ids in head order
    /// (`None` for a per-arm model, whose decisions carry no arm label).
    pub fn new(model: &str, arms: Option<&[String]>) -> Self {
        let m = || model.to_owned();
        let group = |g: &'static str| {
            (
                counter!(GROUP_REWARDS, "model" => m(), "group" => g),
                gauge!(GROUP_REWARD_SUM, "model" => m(), "group" => g),
                gauge!(GROUP_REWARD_SQUARES, "model" => m(), "group" => g),
            )
        };
        Self {
            model: m(),
            decisions: arms.is_none().then(|| counter!(DECISIONS, "model" => m())),
            decisions_by_arm: arms
                .unwrap_or_default()
                .iter()
                .map(|arm| counter!(DECISIONS, "model" => m(), "arm" => arm.clone()))
                .collect(),
            choose_seconds: histogram!(CHOOSE_ARM_SECONDS, "model" => m()),
            evicted: counter!(DECISIONS_EVICTED, "model" => m()),
            rewards: counter!(REWARDS, "model" => m()),
            reward_sum: gauge!(REWARD_SUM, "model" => m()),
            regret_sum: gauge!(REGRET_SUM, "model" => m()),
            report_seconds: histogram!(REPORT_REWARD_SECONDS, "model" => m()),
            groups: [group("treatment"), group("control")],
        }
    }

    /// A decision was made (`head`: the chosen arm's output head, for a fixed-arm model).
    pub fn decision_made(&self, head: Option<usize>, elapsed: Duration) {
        match (
            head.and_then(|h| self.decisions_by_arm.get(h)),
            &self.decisions,
        ) {
            (Some(arm), _) | (None, Some(arm)) => arm.increment(1),
            // A head without a series (not among the arms it was built with): by name.
            (None, None) => counter!(DECISIONS, "model" => self.model.clone()).increment(1),
        }
        self.choose_seconds.record(elapsed);
    }

    /// As [`decisions_evicted`].
    pub fn decisions_evicted(&self, count: u64) {
        self.evicted.increment(count);
        warn_evicted(&self.model, count);
    }

    /// A reward was accepted for the first time.
    pub fn reward_accepted(&self, reward: f64, regret: Option<f64>, elapsed: Duration) {
        self.rewards.increment(1);
        self.reward_sum.increment(reward);
        if let Some(regret) = regret {
            self.regret_sum.increment(regret);
        }
        self.report_seconds.record(elapsed);
    }

    /// As [`group_reward`].
    pub fn group_reward(&self, control: bool, reward: f64) {
        let (count, sum, squares) = &self.groups[usize::from(control)];
        count.increment(1);
        sum.increment(reward);
        squares.increment(reward * reward);
    }
}
