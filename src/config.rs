//! Configuration: the TOML file (`--config`) that names the models, and the built-in default.
//!
//! Every limit the service enforces lives here, never as a constant in the code. Each module
//! is handed its own part ([`ModelConfig`], [`ServerConfig`], [`LimitsConfig`]).

use std::{collections::HashSet, net::SocketAddr, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

use crate::error::{ConfigError, Error};

/// The whole configuration of one banditd process.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listening addresses.
    #[serde(default)]
    pub server: ServerConfig,
    /// Request limits shared by all models.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// The data directory and durability.
    #[serde(default)]
    pub storage: StorageConfig,
    /// Bearer-token authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// TLS for the gRPC port.
    #[serde(default)]
    pub tls: TlsConfig,
    /// The HTTP/JSON face (off unless `http.addr` is set).
    #[serde(default)]
    pub http: HttpConfig,
    /// The models this process serves, by name.
    #[serde(default, rename = "models")]
    pub models: Vec<ModelConfig>,
    /// Cluster mode over NATS JetStream (absent: the single-process default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

/// Cluster mode (`[cluster]`, or `--cluster nats://HOST:PORT`): every process serves the same
/// API and publishes its decisions and rewards to a JetStream stream; one trainer per model,
/// elected by a lease, trains from the stream and publishes snapshots that every replica loads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// NATS server URL(s), comma-separated (`nats://host:4222`).
    pub url: String,
    /// Whether this process may become a model's trainer (it always serves).
    pub trainer: bool,
    /// The JetStream stream holding the decision, reward and window-close events.
    pub stream: String,
    /// Subject prefix of those events (`<prefix>.<model>.d|r|c`).
    pub subject_prefix: String,
    /// Copies JetStream keeps of every event, lease and snapshot (1 or 3, at most the NATS
    /// cluster size). An acknowledgement means stored on this many servers.
    pub replicas: usize,
    /// How long the stream keeps events, in seconds: must exceed every model's reward window
    /// plus `snapshot_interval_secs`, since a new trainer re-reads from the oldest decision
    /// still open at the last snapshot.
    pub retention_secs: u64,
    /// JetStream's duplicate window, in seconds: a retried publish of the same decision or
    /// reward id within it is stored once.
    pub dedup_window_secs: u64,
    /// KV bucket of the trainer leases (its max age is the lease TTL).
    pub lease_bucket: String,
    /// The trainer lease's time to live, in milliseconds; renewed every third of it.
    pub lease_ttl_ms: u64,
    /// KV bucket of each model's snapshot version and trainer epoch.
    pub state_bucket: String,
    /// Object store bucket of the snapshots.
    pub snapshot_bucket: String,
    /// The trainer publishes a snapshot at least this often while it trains, in seconds.
    pub snapshot_interval_secs: u64,
    /// ... and after this many new examples.
    pub snapshot_every_examples: u64,
    /// How long a publish may wait for JetStream's acknowledgement, in milliseconds; past it
    /// the call answers UNAVAILABLE.
    pub publish_timeout_ms: u64,
    /// The idle heartbeat the trainer asks of its consumer while no events come, in
    /// milliseconds: a consumer silent for four heartbeats (a NATS node died with it) is
    /// re-created, and a reader that delivered nothing for four while the model's stream
    /// holds newer events is opened again.
    pub consumer_heartbeat_ms: u64,
    /// While NATS is unreachable: `false` (default) refuses decisions and rewards with
    /// UNAVAILABLE; `true` keeps deciding from the last snapshot without logging (counted in
    /// `banditd_cluster_unlogged_decisions_total`); rewards are refused either way.
    pub serve_when_disconnected: bool,
    /// Where the trainer keeps its local checkpoints (the snapshot files it uploads).
    /// Default: `<storage.data_dir>/trainer`.
    pub trainer_dir: Option<std::path::PathBuf>,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            trainer: true,
            stream: "BANDITD".into(),
            subject_prefix: "banditd".into(),
            replicas: 1,
            retention_secs: 7 * 24 * 3600,
            dedup_window_secs: 600,
            lease_bucket: "banditd_leases".into(),
            lease_ttl_ms: 3_000,
            state_bucket: "banditd_models".into(),
            snapshot_bucket: "banditd_snapshots".into(),
            snapshot_interval_secs: 5,
            snapshot_every_examples: 2_000,
            publish_timeout_ms: 2_000,
            consumer_heartbeat_ms: 2_000,
            serve_when_disconnected: false,
            trainer_dir: None,
        }
    }
}

impl ClusterConfig {
    /// Checks the section against the models it will carry.
    ///
    /// # Errors
    /// The first bad field, named.
    pub fn validate(&self, models: &[ModelConfig]) -> Result<(), ConfigError> {
        let bad = |field: &str, why: String| ConfigError::Invalid {
            model: String::new(),
            field: format!("cluster.{field}"),
            why,
        };
        if self.url.trim().is_empty() {
            return Err(bad(
                "url",
                "must name a NATS server (nats://host:4222)".into(),
            ));
        }
        // NATS subject tokens and stream/bucket names: no dots (except the prefix), spaces or
        // wildcards.
        let token = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        };
        for (field, value) in [
            ("stream", &self.stream),
            ("lease_bucket", &self.lease_bucket),
            ("state_bucket", &self.state_bucket),
            ("snapshot_bucket", &self.snapshot_bucket),
        ] {
            if !token(value) {
                return Err(bad(
                    field,
                    format!("{value:?}: use letters, digits, '_' and '-' only"),
                ));
            }
        }
        if !self.subject_prefix.split('.').all(token) {
            return Err(bad(
                "subject_prefix",
                format!(
                    "{:?}: dot-separated tokens of letters, digits, '_', '-'",
                    self.subject_prefix
                ),
            ));
        }
        for model in models {
            if !token(&model.name) {
                return Err(ConfigError::Invalid {
                    model: model.name.clone(),
                    field: "name".into(),
                    why: "in cluster mode a model name is a NATS subject token: letters, \
                          digits, '_' and '-' only"
                        .into(),
                });
            }
        }
        if !(1..=5).contains(&self.replicas) {
            return Err(bad(
                "replicas",
                format!("{} is not between 1 and 5", self.replicas),
            ));
        }
        for (field, value) in [
            ("lease_ttl_ms", self.lease_ttl_ms),
            ("dedup_window_secs", self.dedup_window_secs),
            ("snapshot_interval_secs", self.snapshot_interval_secs),
            ("snapshot_every_examples", self.snapshot_every_examples),
            ("publish_timeout_ms", self.publish_timeout_ms),
        ] {
            if value == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
        }
        if self.consumer_heartbeat_ms < 100 {
            return Err(bad(
                "consumer_heartbeat_ms",
                format!(
                    "{} is below 100 ms: the trainer's pull requests would expire faster than \
                     they can be answered",
                    self.consumer_heartbeat_ms
                ),
            ));
        }
        if self.consumer_heartbeat_ms > 60_000 {
            return Err(bad(
                "consumer_heartbeat_ms",
                format!(
                    "{} is above 60000 ms: a dead consumer would go unnoticed for four of them",
                    self.consumer_heartbeat_ms
                ),
            ));
        }
        if self.lease_ttl_ms < 300 {
            return Err(bad(
                "lease_ttl_ms",
                format!(
                    "{} is below 300 ms, shorter than JetStream's expiry precision",
                    self.lease_ttl_ms
                ),
            ));
        }
        let longest = models
            .iter()
            .map(|m| m.reward_window().as_secs_f64())
            .fold(0.0, f64::max);
        let needed = longest + self.snapshot_interval_secs as f64;
        if (self.retention_secs as f64) <= needed {
            return Err(bad(
                "retention_secs",
                format!(
                    "{} s does not exceed the longest reward window plus snapshot_interval_secs \
                     ({needed} s): a new trainer could not re-read the open decisions",
                    self.retention_secs
                ),
            ));
        }
        Ok(())
    }
}

/// Where the process listens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// gRPC listen address.
    pub grpc_addr: SocketAddr,
    /// Prometheus `/metrics` listen address.
    pub metrics_addr: SocketAddr,
    /// After a shutdown signal, how long in-flight calls (and open streams such as health
    /// watches) may take before they are cut, in milliseconds.
    pub drain_timeout_ms: u64,
    /// Most bandit calls in flight across all connections; past it calls fail at once with
    /// RESOURCE_EXHAUSTED (health and reflection are not counted, so probes keep working).
    pub max_in_flight: usize,
    /// Most concurrent calls on one connection; past it calls fail with RESOURCE_EXHAUSTED.
    pub max_in_flight_per_connection: usize,
    /// Server-side ceiling on any call's duration, in milliseconds (a client's shorter
    /// `grpc-timeout` is honoured too); past it the call is CANCELLED.
    pub request_timeout_ms: u64,
    /// Largest request message accepted, in bytes; larger ones get OUT_OF_RANGE.
    pub max_message_bytes: usize,
    /// HTTP/2 keepalive ping interval, in seconds (0 = off).
    pub keepalive_interval_secs: u64,
    /// How long to wait for a keepalive ping's answer before closing, in seconds.
    pub keepalive_timeout_secs: u64,
    /// Connections are closed gracefully after this many seconds so clients rebalance
    /// across replicas (0 = never).
    pub max_connection_age_secs: u64,
    /// Most gRPC connections open at once (including those still in their handshake); a
    /// connection past it is closed at once and counted. Lowered at start, with a warning, to
    /// what the open-file limit leaves after `reserved_fds`.
    pub max_connections: usize,
    /// File descriptors kept free of connections for the log, checkpoints, `/metrics` and
    /// the runtime.
    pub reserved_fds: usize,
    /// How long a new connection may take to finish TLS (when configured) and send the
    /// HTTP/2 preface, in milliseconds; past it the connection is closed and counted.
    pub handshake_timeout_ms: u64,
    /// Largest header block of one call, in bytes (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE):
    /// bounds what a stream holds before its token is checked.
    pub max_header_list_bytes: u32,
    /// HTTP/2 flow-control window of one connection, in bytes: the most request body a
    /// connection can have sent that the server has not yet read.
    pub connection_window_bytes: u32,
    /// HTTP/2 flow-control window of one stream, in bytes.
    pub stream_window_bytes: u32,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: SocketAddr::from(([127, 0, 0, 1], 9464)),
            drain_timeout_ms: 10_000,
            // Each call takes tens of microseconds of CPU; 4096 in flight is already
            // hundreds of milliseconds of queueing on two cores.
            max_in_flight: 4096,
            max_in_flight_per_connection: 1024,
            request_timeout_ms: 10_000,
            // 1024 candidates of 64 features is about 0.3 MB; 4 MiB leaves room.
            max_message_bytes: 4 * 1024 * 1024,
            keepalive_interval_secs: 30,
            keepalive_timeout_secs: 10,
            max_connection_age_secs: 1800,
            // Well above what clients behind a balancer open; each connection may hold up to
            // `connection_window_bytes` of unread body, so this also bounds that memory.
            max_connections: 4096,
            // The log and its compaction copy, checkpoint files being written, /metrics
            // scrapes, tokio's epoll and eventfds, stdio: a few dozen at most.
            reserved_fds: 64,
            // A client on a slow network finishes TLS and the preface in well under a second.
            handshake_timeout_ms: 10_000,
            // hyper's default (16 KiB); a call's headers are a few hundred bytes.
            max_header_list_bytes: 16 * 1024,
            // hyper's defaults (1 MiB each): a 4 MiB message needs a few window updates.
            connection_window_bytes: 1024 * 1024,
            stream_window_bytes: 1024 * 1024,
        }
    }
}

/// Bearer-token authentication. With no tokens configured, calls need none (the plaintext
/// localhost default). Tokens come from files (one per line, `#` comments) or from the
/// environment (`BANDITD_TOKENS`, `BANDITD_ADMIN_TOKENS`: comma-separated) and are never logged.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// File of tokens that may call ChooseArm and ReportReward (and, without admin tokens,
    /// everything).
    pub tokens_file: Option<std::path::PathBuf>,
    /// File of tokens for the administrative calls (GetModel, ListModels); admin tokens may
    /// also make every other call. If none are configured, user tokens may call them.
    pub admin_tokens_file: Option<std::path::PathBuf>,
    /// Tokens given on the command line or environment (`BANDITD_TOKENS`), never in the file.
    #[serde(skip)]
    pub tokens: Vec<Secret>,
    /// Admin tokens from the environment (`BANDITD_ADMIN_TOKENS`).
    #[serde(skip)]
    pub admin_tokens: Vec<Secret>,
}

/// A string that is never printed (its `Debug` is `***`).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// TLS for the gRPC port (rustls). Without `cert_file`/`key_file`, the port is plaintext.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain of the server.
    pub cert_file: Option<std::path::PathBuf>,
    /// PEM private key of the server.
    pub key_file: Option<std::path::PathBuf>,
    /// PEM CA certificate(s): when set, clients must present a certificate it signed (mTLS).
    pub client_ca_file: Option<std::path::PathBuf>,
}

/// The HTTP/JSON face beside gRPC (`src/http`): the same engine, tokens, TLS (the `[tls]`
/// files), in-flight limit, message size limit and request timeout as gRPC, on its own port.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Listen address; unset (the default) = no HTTP face.
    pub addr: Option<SocketAddr>,
    /// Most HTTP connections open at once (including those in their TLS handshake); a
    /// connection past it is closed at once (logged at debug level). These descriptors come
    /// on top of gRPC's `server.max_connections`: the open-file check at start does not
    /// count them, so keep the two together under the limit.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            addr: None,
            // HTTP/1.1 clients pool a connection per concurrent call: a few hundred per
            // caller process is common, and 1024 stays well inside the open-file limit.
            max_connections: 1024,
        }
    }
}

/// How acknowledged data is made durable (see `storage` for what each mode promises).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DurabilityMode {
    /// Every group commit is fsynced before anything in it is acknowledged.
    Fsync,
    /// Commits are fsynced at least every `sync_interval_ms`; a crash may lose the rewards
    /// acknowledged in the last interval.
    Periodic,
}

/// What `ChooseArm` does when the log writer's queue is full (`storage.on_log_full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnLogFull {
    /// Refuse the decision with RESOURCE_EXHAUSTED (and retry info): every decision served is
    /// in the log, as the durability promises say.
    Reject,
    /// Serve the decision without logging it (counted in `banditd_decisions_unlogged_total`):
    /// its reward still trains, but the log lacks its context and candidates, and it is lost
    /// on a restart.
    Serve,
}

/// Switches that make the log writer misbehave on purpose, so that tests can reach states a
/// real disk reaches only by bad luck (a full disk, a writer that falls behind). Shared: a
/// test keeps a clone and flips them while the server runs. Off by default and never set from
/// a configuration file.
#[derive(Debug, Clone, Default)]
pub struct StorageFaults(std::sync::Arc<FaultSwitches>);

/// The switches behind [`StorageFaults`].
#[derive(Debug, Default)]
pub struct FaultSwitches {
    /// While set, the writer takes nothing off its queue (as if the disk had stalled).
    pub stall: std::sync::atomic::AtomicBool,
    /// While set, every write fails with "no space left on device".
    pub fail_writes: std::sync::atomic::AtomicBool,
    /// While set, zero-filling log space ahead of the records fails with "no space left on
    /// device" (the records themselves still fit).
    pub fail_preallocation: std::sync::atomic::AtomicBool,
}

impl std::ops::Deref for StorageFaults {
    type Target = FaultSwitches;
    fn deref(&self) -> &FaultSwitches {
        &self.0
    }
}

impl PartialEq for StorageFaults {
    /// Faults are not configuration: any two compare equal.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// The largest `storage.preallocate_bytes`: zeros held ahead of the log's records are disk
/// space taken before it is needed.
pub const MAX_PREALLOCATE_BYTES: u64 = 1 << 30;

/// The data directory: the decision/reward log and the model checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Where the log (`log/`, segment files) and `checkpoints/` live.
    pub data_dir: std::path::PathBuf,
    /// `fsync` or `periodic`.
    pub durability: DurabilityMode,
    /// `periodic`: the longest time between fsynced commits; `fsync`: how long the writer
    /// idles before checking for compaction.
    pub sync_interval_ms: u64,
    /// Make `ChooseArm` wait until its decision is committed (adds a commit's latency).
    pub sync_decisions: bool,
    /// Most log operations queued for the writer; past it rewards get RESOURCE_EXHAUSTED.
    pub writer_queue_capacity: usize,
    /// What `ChooseArm` does when that queue is full: `reject` (RESOURCE_EXHAUSTED) or `serve`
    /// (answer without logging the decision).
    pub on_log_full: OnLogFull,
    /// How long, in microseconds, the log writer lets records nobody waits for (decisions
    /// without `sync_decisions`, window closings) gather after a commit before it writes
    /// them; a reward or a synced decision is taken at once. Fewer, larger writes cost less
    /// CPU per decision; 0 writes each record as soon as the writer is free. At most
    /// `sync_interval_ms`.
    pub commit_delay_us: u64,
    /// How often each learner writes a checkpoint (when it has trained since the last one).
    pub checkpoint_interval_secs: u64,
    /// A learner also writes a checkpoint after this many new examples, so that a restart
    /// after a crash replays at most about this many (bounding recovery time).
    pub checkpoint_every_examples: u64,
    /// The newest checkpoints kept per model (at least 1): how far `RollbackModel` can go
    /// back.
    pub checkpoints_kept: usize,
    /// Log segments are kept this long (for export and offline evaluation) before retention
    /// deletes them, whole; a segment a learner still needs to resume is kept longer.
    pub retention_hours: u64,
    /// A log segment is closed and a new one started past this size, in bytes: the unit of
    /// retention.
    pub segment_bytes: u64,
    /// How far ahead of its records the log writer zero-fills the segment, in bytes, so that
    /// an fsync rarely has to commit a new file size (cheaper and quicker; the zeros are cut
    /// off when the segment is sealed). 0 appends instead. At most [`MAX_PREALLOCATE_BYTES`].
    pub preallocate_bytes: u64,
    /// Storage faults to inject (tests only: not read from or written to TOML).
    #[serde(skip)]
    pub faults: StorageFaults,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            data_dir: "data".into(),
            durability: DurabilityMode::Fsync,
            sync_interval_ms: 100,
            sync_decisions: false,
            writer_queue_capacity: 65_536,
            // Every decision served is logged, as README.md "Durability" promises, and a full
            // queue fails fast like every other bound; `serve` is the opt-in for availability.
            on_log_full: OnLogFull::Reject,
            // Under load, one write (and one wake-up of the writer and the learners) per
            // millisecond instead of per one or two decisions; see BENCHMARKS.md "Serving cost".
            commit_delay_us: 1_000,
            checkpoint_interval_secs: 30,
            checkpoint_every_examples: 20_000,
            checkpoints_kept: 3,
            retention_hours: 24,
            segment_bytes: 64 << 20,
            preallocate_bytes: 1 << 20,
            faults: StorageFaults::default(),
        }
    }
}

/// Bounds on what one request may carry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Most candidates one `ChooseArm` may carry.
    pub max_candidates: usize,
    /// Longest arm id or decision id, in bytes.
    pub max_id_bytes: usize,
    /// Most posterior samples one `ChooseArm` may ask for (`propensity_samples`,
    /// `explain_samples`): each costs about one more decision.
    pub max_posterior_samples: usize,
    /// Largest magnitude of a context or feature value. Values far beyond the network's
    /// working range overflow `f32` inside it (1e30 squared) and would turn the model's
    /// weights into NaN; standardise features before sending them.
    pub max_abs_value: f32,
    /// A `ChooseArm` whose work (posterior samples × scored rows: 1 + `propensity_samples` +
    /// `explain_samples`, times the candidates of a per-arm model) is above this runs on the
    /// blocking pool instead of inline on a tokio worker.
    pub max_inline_work: usize,
    /// Most such decisions running at once; past it they get RESOURCE_EXHAUSTED.
    pub max_blocking_decisions: usize,
    /// Largest magnitude of a reported reward.
    pub max_abs_reward: f64,
    /// Most decision ids remembered per model after their window closed, so that an id is
    /// not reused while its decision is in the retained log (`ALREADY_EXISTS`). Past it the
    /// oldest are forgotten early (counted in `banditd_decision_ids_forgotten_total`).
    /// About 40 bytes each.
    pub max_remembered_ids: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            // Ranking a page of items is the common case; a thousand per call is far above it
            // and still a sub-millisecond forward pass at the default network size.
            max_candidates: 1024,
            max_id_bytes: 256,
            // 1000 samples bound a propensity's standard error by 1.6 percentage points at
            // a few milliseconds per request for the default network.
            max_posterior_samples: 1000,
            max_abs_value: 1e6,
            max_abs_reward: 1e12,
            // About 64 forward passes, ~0.4 ms on the default network: more than that on a
            // tokio worker would delay every other call on it (health checks included).
            max_inline_work: 64,
            max_blocking_decisions: 4,
            // A day of decisions at ~12 per second per model, ~40 MB per model when full.
            max_remembered_ids: 1_000_000,
        }
    }
}

/// The two kinds of reward network.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ModelKind {
    /// The network maps a context to one output per configured arm.
    FixedArms,
    /// The network scores `concat(context, arm features)` per candidate.
    PerArmFeatures,
}

/// Which optimizer the learner uses.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay (the prior enters as decay of `lr * prior / N`).
    Adam,
    /// Plain SGD; the prior enters as the gradient of `prior / N * |W|^2`.
    Sgd,
}

/// How a model turns its reward network into a decision.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Thompson sampling with MC dropout: one dropout mask set (one posterior sample of the
    /// weights) scores every candidate. The default, with `bayesian_last_layer` (one mask
    /// set for the body, one draw of an exact linear posterior for the last layer): issue
    /// 14 measured it within about one seed-standard-deviation of NeuralLinear (wheel δ =
    /// 0.5 / 0.95, digits, 5 seeds: 3.98 / 24.7 / 12.08 against 3.71 / 22.4 / 11.41) where
    /// plain MC dropout at fixed rates was 9.2 / 67.9 / 16.0; BENCHMARKS.md has every row.
    #[default]
    McDropout,
    /// NeuralLinear (Riquelme et al. 2018): Thompson sampling from an exact Bayesian linear
    /// regression per output head on the network's last hidden layer; the network only
    /// learns the features and is re-read every `neural_linear.refresh_every` rewards.
    NeuralLinear,
    /// The network's mean prediction (no dropout), best score wins: no exploration.
    Greedy,
    /// Greedy, except that with probability `epsilon` a uniformly random candidate.
    EpsilonGreedy,
    /// A uniformly random candidate (an A/B control group); the network still learns.
    Uniform,
}

impl PolicyKind {
    /// The name used in configuration files and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::McDropout => "mc_dropout",
            Self::NeuralLinear => "neural_linear",
            Self::Greedy => "greedy",
            Self::EpsilonGreedy => "epsilon_greedy",
            Self::Uniform => "uniform",
        }
    }
}

/// What a reward outside a model's `reward_range` gets.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnRewardOutOfRange {
    /// Refused with INVALID_ARGUMENT naming `reward`: the client learns of its bug.
    #[default]
    Reject,
    /// Accepted as the nearest bound of the range (winsorised): for sources that are known to
    /// produce the odd wild value and cannot be fixed.
    Clip,
}

/// Settings of the NeuralLinear policy (Riquelme et al. 2018; their defaults). The linear
/// model is fitted to standardised rewards, so these do not depend on the reward scale.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NeuralLinearConfig {
    /// Precision of the Gaussian prior on the linear weights (λ; prior covariance σ²/λ).
    pub prior_precision: f64,
    /// Shape of the inverse-gamma prior on the noise variance σ².
    pub prior_shape: f64,
    /// Scale of the inverse-gamma prior on the noise variance σ².
    pub prior_scale: f64,
    /// Rewards between two refreshes: the features are recomputed with the latest network
    /// and the linear posterior refitted on the whole replay buffer.
    pub refresh_every: usize,
    /// `mc_dropout` with `bayesian_last_layer` only: fit the linear posterior on features
    /// computed under fresh dropout masks (one mask set per example, at the serving rates)
    /// instead of the unmasked features, so the regression sees the same feature noise the
    /// decisions sample. Off by default (issue 14: measured in BENCHMARKS.md).
    pub fit_masked: bool,
    /// Fixed-arm models with a linear posterior: a candidate arm whose regression has fewer
    /// than this many examples in the serving snapshot is chosen outright (the first such),
    /// as Riquelme et al. (2018) pull every arm a few times first. 0 (the default) = none.
    pub initial_pulls: u64,
}

impl Default for NeuralLinearConfig {
    fn default() -> Self {
        Self {
            prior_precision: 0.25,
            prior_shape: 6.0,
            prior_scale: 6.0,
            refresh_every: 50,
            fit_masked: false,
            initial_pulls: 0,
        }
    }
}

/// Periodic refits (Riquelme et al. 2018): instead of `updates_per_reward` steps after every
/// reward, `steps` minibatch steps after every `every` rewards, the step size restarting at
/// `learning_rate` and falling as `learning_rate / (1 + lr_decay * k)` at step `k` of the
/// refit. A model with a linear posterior refits it right after each refit (instead of every
/// `neural_linear.refresh_every` rewards).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RefitConfig {
    /// Rewards between refits.
    pub every: usize,
    /// Minibatch steps per refit.
    pub steps: usize,
    /// How fast the step size falls within a refit (0 = constant).
    #[serde(default)]
    pub lr_decay: f64,
}

/// What serves a holdout experiment's control group.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum HoldoutControl {
    /// A uniformly random candidate (seeded by the decision id).
    #[default]
    Uniform,
    /// The arm the client names in the request's `default_arm_id` (what it would show
    /// without banditd); every request must then name one.
    DefaultArm,
}

impl HoldoutControl {
    /// The name used in configuration files and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uniform => "uniform",
            Self::DefaultArm => "default_arm",
        }
    }
}

/// A holdout experiment: a fraction of decisions, chosen by decision id (so a retry falls in
/// the same group), is served by a control policy instead of the model, to measure the lift.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HoldoutConfig {
    /// Fraction of decisions in the control group, in `[0, 1)`.
    pub fraction: f64,
    /// What serves them.
    #[serde(default)]
    pub control: HoldoutControl,
}

/// One named model and its learner.
///
/// The model's table in the configuration file is flat (`learning_rate = 0.01` beside
/// `hidden_layers = [50]`), as it always was; in Rust the settings are grouped in sections
/// (`network`, `policy`, `optimizer`, `learner`, `rewards`, `pending`), each with its own
/// defaults, so that a new option touches one section. The sections are flattened into the
/// table, and a key that no section takes is refused by name.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ModelConfig {
    /// The name clients put in `model`.
    pub name: String,
    /// Fixed arms or per-arm features.
    pub kind: ModelKind,
    /// Length of every request's `context`.
    pub context_dim: usize,
    /// The arm ids of a fixed-arm model, in output order (must be empty for per-arm models).
    #[serde(default)]
    pub arms: Vec<String>,
    /// Length of each candidate's features (per-arm models; 0 for fixed-arm models).
    #[serde(default)]
    pub arm_feature_dim: usize,
    /// Seed of the model's initial weights, its dropout masks and its replay sampling.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// The network's shape and its dropout.
    #[serde(flatten, deserialize_with = "section")]
    pub network: NetworkConfig,
    /// How decisions are made from the network.
    #[serde(flatten, deserialize_with = "section")]
    pub policy: PolicyConfig,
    /// How the network is trained.
    #[serde(flatten, deserialize_with = "section")]
    pub optimizer: OptimizerConfig,
    /// The learner thread: its backlog, publishing and refits.
    #[serde(flatten, deserialize_with = "section")]
    pub learner: LearnerConfig,
    /// Which rewards are accepted.
    #[serde(flatten, deserialize_with = "section")]
    pub rewards: RewardsConfig,
    /// Decisions waiting for their reward.
    #[serde(flatten, deserialize_with = "section")]
    pub pending: PendingConfig,
    /// Keys no section took: refused while parsing (see [`UnknownKeys`]).
    #[serde(flatten)]
    pub(crate) unknown: UnknownKeys,
}

fn default_seed() -> u64 {
    42
}

/// The network: its hidden layers, heads and dropout.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Hidden layer widths (ReLU).
    pub hidden_layers: Vec<usize>,
    /// Drop rate of the input units followed by one per hidden layer
    /// (`hidden_layers.len() + 1` values in `[0, 1)`).
    pub drop_rates: Option<Vec<f64>>,
    /// Learn each layer's drop rate with Concrete Dropout (Gal, Hron & Kendall 2017),
    /// starting from `drop_rates`; decisions then draw masks at the learned rates. Every
    /// starting rate must be in `(0, 1)`.
    pub concrete_dropout: bool,
    /// Drop rates that fall with the evidence: after `N` examples, more than this many,
    /// every rate is `drop_rates · sqrt(drop_rates_shrink_after / N)` (training and
    /// decisions), so the masks' spread fades like a posterior's. 0 = fixed rates. None (the
    /// default) = 100 under `mc_dropout` with `bayesian_last_layer` (see
    /// [`LINEAR_HEAD_SHRINK_AFTER`]), fixed rates otherwise. Not with `concrete_dropout`
    /// (that learns its own).
    pub drop_rates_shrink_after: Option<f64>,
    /// Give every output head a second output, its log noise variance, and train the pair
    /// by the Gaussian negative log-likelihood instead of the squared error (README "The method" §2):
    /// noisy arms are then fitted as noisy, not kept uncertain. Decisions score the means
    /// only.
    pub heteroscedastic: bool,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            hidden_layers: vec![100, 100],
            drop_rates: None,
            concrete_dropout: false,
            drop_rates_shrink_after: None,
            heteroscedastic: false,
        }
    }
}

/// How a decision is made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The policy (the table's `policy` key).
    #[serde(rename = "policy")]
    pub kind: PolicyKind,
    /// Probability of a uniformly random choice (`epsilon_greedy` only).
    pub epsilon: f64,
    /// Posterior samples estimating each decision's propensity when the request does not
    /// ask (`propensity_samples` = 0); 0 = not estimated (Thompson policies only; the
    /// baselines' propensity is exact and free).
    pub propensity_samples: usize,
    /// `mc_dropout` only (other policies ignore it): dropout on the body, an exact Bayesian
    /// last layer. A decision draws one dropout mask set for the input and hidden layers
    /// (shared by every candidate) and one sample of a Bayesian linear regression per head on
    /// the masked last hidden layer (NeuralLinear's posterior, with the `neural_linear`
    /// settings), so a decision is still one sample of the whole network. On by default:
    /// fixed-rate dropout's spread does not shrink with data, the linear posterior's does
    /// (wheel δ = 0.95, 5 seeds: regret 24.7 with it, 67.9 without).
    pub bayesian_last_layer: bool,
    /// Settings of the `neural_linear` policy (and of `bayesian_last_layer`).
    pub neural_linear: NeuralLinearConfig,
    /// A holdout experiment (none by default): `holdout = { fraction = 0.05, control =
    /// "uniform" }`. Both groups' rewards train the model.
    pub holdout: Option<HoldoutConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            kind: PolicyKind::default(),
            epsilon: 0.05,
            propensity_samples: 0,
            bayesian_last_layer: true,
            neural_linear: NeuralLinearConfig::default(),
            holdout: None,
        }
    }
}

/// The optimizer and what it trains on.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerConfig {
    /// The optimizer (the table's `optimizer` key).
    #[serde(rename = "optimizer")]
    pub kind: OptimizerKind,
    /// Optimizer step size.
    pub learning_rate: f64,
    /// Examples per minibatch, sampled from the replay buffer.
    pub batch_size: usize,
    /// SGD steps taken per reward received.
    pub updates_per_reward: usize,
    /// Examples kept for replay (oldest replaced first).
    pub replay_capacity: usize,
    /// Strength of the Gaussian prior on the weights; it weighs `1/N` per example.
    pub prior_strength: f64,
    /// Forgetting for non-stationary rewards, in rewards: minibatches draw an example `a`
    /// rewards old with weight 2^(-a / half-life), and the linear posterior (neural_linear,
    /// bayesian_last_layer) weighs it so at each refit. None (the default) = stationary.
    pub decay_half_life: Option<f64>,
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        Self {
            kind: OptimizerKind::Adam,
            // Adam's usual step; rewards are standardised, so one value fits 0/1 and 0..50
            // scales.
            learning_rate: 0.003,
            batch_size: 32,
            updates_per_reward: 2,
            replay_capacity: 20_000,
            prior_strength: 1.0,
            decay_half_life: None,
        }
    }
}

/// The learner thread: how much it may owe, when it publishes, how it standardises rewards.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LearnerConfig {
    /// Most SGD steps the learner may owe; when rewards arrive faster than it can train,
    /// the excess steps are skipped (counted) rather than rewards refused.
    pub max_step_backlog: usize,
    /// The learner publishes new weights after this many steps...
    pub publish_every_steps: usize,
    /// ...or this many milliseconds of training, whichever comes first (and whenever it
    /// runs out of work).
    pub publish_interval_ms: u64,
    /// Periodic refits instead of steps after every reward (none = steps after every
    /// reward, the default).
    pub refit: Option<RefitConfig>,
    /// Robust reward standardisation: one reward may multiply the standard deviation of the
    /// rewards seen (which scales every training target) by at most this factor; a reward
    /// further out is winsorised to the value that does exactly that, in the statistics and
    /// in replay. A wild value then costs at most one doubling of the scale (fading as
    /// rewards accumulate) instead of dominating it for thousands of rewards, while a
    /// genuinely new scale (the wheel's first rewards of 50 after rewards of about 1) is
    /// fully admitted after a few rewards. 0 = off; otherwise above 1.
    pub reward_std_growth_limit: f64,
    /// How many nice levels below the process the learner thread runs (Linux; as `nice -n`,
    /// capped at 19, the lowest priority), 0–19: above 0, serving threads get the CPU first
    /// when both want it, and the learner trains with what is left (skipping steps past
    /// `max_step_backlog`, its lag visible as `banditd_learner_lag_records`); an idle CPU
    /// still goes to the learner in full. 0 = the process's own priority.
    pub learner_nice: i32,
}

impl Default for LearnerConfig {
    fn default() -> Self {
        Self {
            // About a second of training at the default network size.
            max_step_backlog: 4096,
            publish_every_steps: 16,
            publish_interval_ms: 20,
            refit: None,
            reward_std_growth_limit: 2.0,
            // On 2 cores under saturating load, full rounds in periodic mode ran at 0.38× the
            // no-op server's throughput with the learner at 0, 0.55× at 10 and 0.60× at 19
            // (BENCHMARKS.md, one run each). At 10 a learner sharing a core with one busy
            // serving thread gets about a tenth of it (the scheduler's weights), more when
            // serving leaves gaps; at 19 it fell too far behind to learn under two busy loops.
            learner_nice: 10,
        }
    }
}

/// Which rewards the model accepts.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RewardsConfig {
    /// The rewards this model can receive, `[lo, hi]`; a reward outside is handled as
    /// `on_reward_out_of_range` says. None: any finite reward within
    /// `limits.max_abs_reward` (the trainer's robust standardisation,
    /// `reward_std_growth_limit`, still bounds what one wild value can do).
    pub reward_range: Option<[f64; 2]>,
    /// Refuse (`reject`) or clip (`clip`) a reward outside `reward_range`.
    pub on_reward_out_of_range: OnRewardOutOfRange,
}

/// Decisions waiting for their reward.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PendingConfig {
    /// How long a decision waits for its reward, in seconds (at most
    /// [`MAX_REWARD_WINDOW_SECONDS`]).
    pub reward_window_seconds: f64,
    /// Reward trained on when the window closes without one; none = the decision is dropped.
    pub default_reward: Option<f64>,
    /// Most decisions waiting for a reward; past it the oldest are evicted. At most
    /// [`MAX_PENDING_CAPACITY`].
    pub pending_capacity: usize,
}

impl Default for PendingConfig {
    fn default() -> Self {
        Self {
            reward_window_seconds: 3600.0,
            default_reward: None,
            // About 0.17 KB each for `wheel`'s shape, more with per-arm features (0.36 KB for
            // `items`, BENCHMARKS.md): 43-90 MB per model at most.
            pending_capacity: 250_000,
        }
    }
}

/// The longest reward window, in seconds (about 31 years): what a `Duration` and the
/// pending store's nanosecond clock hold with room to spare.
pub const MAX_REWARD_WINDOW_SECONDS: f64 = 1e9;

/// The largest `pending_capacity`: the pending store's table addresses its slots with 4-byte
/// positions (2³¹ decisions is far beyond any machine's memory anyway).
pub const MAX_PENDING_CAPACITY: usize = 1 << 31;

/// The largest `learner_nice`: from nice 0, Linux's lowest priority (19).
pub const MAX_LEARNER_NICE: i32 = 19;

/// One section of a model's flat table: takes the section's own keys (and only those) and
/// deserializes them through `toml`, so that a bad value's error names its key (serde's
/// flattening alone reports "invalid type" without saying where).
fn section<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    struct Keys<T>(std::marker::PhantomData<T>);
    impl<'de, T: serde::de::DeserializeOwned> serde::de::Visitor<'de> for Keys<T> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a model table")
        }
        fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<T, A::Error> {
            let mut table = toml::Table::new();
            while let Some((key, value)) = map.next_entry::<String, toml::Value>()? {
                table.insert(key, value);
            }
            toml::Value::Table(table)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    serde::de::Error::custom(e.to_string().trim_end().replace('\n', " "))
                })
        }
    }
    // The field list makes serde hand this section only its own keys and leave the rest to
    // the other sections and to `UnknownKeys`.
    let fields = serde_aux::serde_introspection::serde_introspect::<T>();
    deserializer.deserialize_struct("section", fields, Keys(std::marker::PhantomData))
}

/// What is left of a model's table once every field and section took its keys: nothing, or
/// the parse fails naming the first key left (what `deny_unknown_fields` does for a struct
/// without flattened sections). Serializes as nothing.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct UnknownKeys;

impl<'de> Deserialize<'de> for UnknownKeys {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Rest;
        impl<'de> serde::de::Visitor<'de> for Rest {
            type Value = UnknownKeys;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a model table")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<UnknownKeys, A::Error> {
                match map.next_key::<String>()? {
                    Some(key) => Err(serde::de::Error::unknown_field(&key, model_keys())),
                    None => Ok(UnknownKeys),
                }
            }
        }
        deserializer.deserialize_map(Rest)
    }
}

impl Serialize for UnknownKeys {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        serializer.serialize_map(Some(0))?.end()
    }
}

/// Every key a model's table may have, for the unknown-key error.
fn model_keys() -> &'static [&'static str] {
    use serde_aux::serde_introspection::serde_introspect;
    static KEYS: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        [
            "name",
            "kind",
            "context_dim",
            "arms",
            "arm_feature_dim",
            "seed",
        ]
        .into_iter()
        .chain(serde_introspect::<NetworkConfig>().iter().copied())
        .chain(serde_introspect::<PolicyConfig>().iter().copied())
        .chain(serde_introspect::<OptimizerConfig>().iter().copied())
        .chain(serde_introspect::<LearnerConfig>().iter().copied())
        .chain(serde_introspect::<RewardsConfig>().iter().copied())
        .chain(serde_introspect::<PendingConfig>().iter().copied())
        .collect()
    })
}

/// Default drop rate of hidden units, chosen by measurement (in-process harness, T = 5000,
/// seeds 1-13): 0.3 halved the wheel(0.5) regret of 0.1 and got stuck on the safe arm of
/// wheel(0.95) in 4 of 13 seeds instead of 7, at equal per-arm regret and equal cost.
const DEFAULT_HIDDEN_DROP: f64 = 0.3;
/// Hidden drop rate under `mc_dropout` with `bayesian_last_layer` (input units not dropped):
/// the linear posterior carries most of the exploration, the masks add the body's share.
/// Measured (issue 14, 5 seeds): 0.05 / 0.1 / 0.3 gave wheel δ = 0.5 regret 3.98 / 4.32 /
/// 9.37; 0.05 and 0.3 gave wheel δ = 0.95 24.7 and 28.3.
const LINEAR_HEAD_HIDDEN_DROP: f64 = 0.05;
/// `drop_rates_shrink_after` under `mc_dropout` with `bayesian_last_layer` when the model
/// does not set it: about the regression's width at the default size (100 hidden units + 1),
/// the evidence at which the linear posterior stops being mostly prior. Measured (issue 14,
/// 5 seeds, paired with fixed rates on the same rounds): lower regret on every row of
/// BENCHMARKS.md's table (wheel δ = 0.5 3.98 → 3.70, mnist_5k 28.5 → 26.9); 20 and 500
/// gave 3.72 / 3.86 on wheel δ = 0.5.
pub const LINEAR_HEAD_SHRINK_AFTER: f64 = 100.0;
/// Input units are dropped rarely: with a context of two coordinates, losing one is a very
/// different function, not a nearby posterior sample; 0.1 and more hurt the per-arm model.
const DEFAULT_INPUT_DROP: f64 = 0.02;

impl ModelConfig {
    /// A model config with every optional setting at its default.
    pub fn new(name: &str, kind: ModelKind, context_dim: usize) -> Self {
        Self {
            name: name.to_owned(),
            kind,
            context_dim,
            arms: Vec::new(),
            arm_feature_dim: 0,
            seed: default_seed(),
            network: NetworkConfig::default(),
            policy: PolicyConfig::default(),
            optimizer: OptimizerConfig::default(),
            learner: LearnerConfig::default(),
            rewards: RewardsConfig::default(),
            pending: PendingConfig::default(),
            unknown: UnknownKeys,
        }
    }

    /// The drop rate of the input units and of each hidden layer: `drop_rates` if set, else
    /// 0 everywhere for `neural_linear` (its posterior is the linear one; the network only
    /// learns features, and dropout there measured worse: wheel δ = 0.9 regret 9.5 without
    /// vs 11.6 with 0.02/0.3/0.3, seeds 1-3), 0 / 0.05 / … for `mc_dropout` with
    /// `bayesian_last_layer` (see [`LINEAR_HEAD_HIDDEN_DROP`]) and 0.02 / 0.3 / … for the
    /// other policies (MC dropout's posterior; a regulariser and the explanation's spread for
    /// the baselines).
    pub fn effective_drop_rates(&self) -> Vec<f64> {
        self.network.drop_rates.clone().unwrap_or_else(|| {
            if self.policy.kind == PolicyKind::NeuralLinear {
                return vec![0.0; self.network.hidden_layers.len() + 1];
            }
            if self.uses_linear_posterior() {
                return std::iter::once(0.0)
                    .chain(
                        self.network
                            .hidden_layers
                            .iter()
                            .map(|_| LINEAR_HEAD_HIDDEN_DROP),
                    )
                    .collect();
            }
            std::iter::once(DEFAULT_INPUT_DROP)
                .chain(
                    self.network
                        .hidden_layers
                        .iter()
                        .map(|_| DEFAULT_HIDDEN_DROP),
                )
                .collect()
        })
    }

    /// The `N₀` of falling drop rates (`drop_rates_shrink_after`): the model's own (0 = none),
    /// else [`LINEAR_HEAD_SHRINK_AFTER`] under `mc_dropout` with `bayesian_last_layer`; none
    /// with `concrete_dropout`, which learns its rates.
    pub fn effective_shrink_after(&self) -> Option<f64> {
        if self.network.concrete_dropout {
            return None;
        }
        match self.network.drop_rates_shrink_after {
            Some(n) => (n > 0.0).then_some(n),
            None => (self.policy.kind == PolicyKind::McDropout && self.policy.bayesian_last_layer)
                .then_some(LINEAR_HEAD_SHRINK_AFTER),
        }
    }

    /// The reward to train on for a reported `reward`, per `reward_range` and
    /// `on_reward_out_of_range`: the reward itself when there is no range or it is inside;
    /// outside, the nearest bound (`clip`) or an INVALID_ARGUMENT naming `reward` (`reject`).
    /// Request validation calls it after checking that the reward is finite.
    ///
    /// # Errors
    /// The reward is outside the range and the setting is `reject`, or it is not finite.
    pub fn check_reward(&self, reward: f64) -> Result<f64, Error> {
        if !reward.is_finite() {
            return Err(Error::invalid("reward", format!("{reward} is not finite")));
        }
        let Some([lo, hi]) = self.rewards.reward_range else {
            return Ok(reward);
        };
        if (lo..=hi).contains(&reward) {
            return Ok(reward);
        }
        match self.rewards.on_reward_out_of_range {
            OnRewardOutOfRange::Clip => Ok(reward.clamp(lo, hi)),
            OnRewardOutOfRange::Reject => Err(Error::invalid(
                "reward",
                format!(
                    "{reward} is outside model {:?}'s reward_range [{lo}, {hi}]",
                    self.name
                ),
            )),
        }
    }

    /// Whether the trainer keeps NeuralLinear's linear posteriors on the last hidden layer:
    /// for `neural_linear`, and for `mc_dropout` with `bayesian_last_layer`.
    pub fn uses_linear_posterior(&self) -> bool {
        match self.policy.kind {
            PolicyKind::NeuralLinear => true,
            PolicyKind::McDropout => self.policy.bayesian_last_layer,
            PolicyKind::Greedy | PolicyKind::EpsilonGreedy | PolicyKind::Uniform => false,
        }
    }

    /// Width of the network's input.
    pub fn input_dim(&self) -> usize {
        match self.kind {
            ModelKind::FixedArms => self.context_dim,
            ModelKind::PerArmFeatures => self.context_dim + self.arm_feature_dim,
        }
    }

    /// Width of the network's output: one head per arm, or one score.
    pub fn output_dim(&self) -> usize {
        match self.kind {
            ModelKind::FixedArms => self.arms.len(),
            ModelKind::PerArmFeatures => 1,
        }
    }

    /// Layer widths of the network, input first, output last.
    pub fn layer_widths(&self) -> Vec<usize> {
        std::iter::once(self.input_dim())
            .chain(self.network.hidden_layers.iter().copied())
            .chain([self.output_dim()])
            .collect()
    }

    /// This model with `key=value` settings applied, as they would be written in its
    /// `[[models]]` table: values are TOML (`0.1`, `"greedy"`, `[50, 50]`; a bare word is
    /// taken as a string) and dotted keys reach sub-tables (`neural_linear.refresh_every=100`).
    /// The result is validated.
    ///
    /// # Errors
    /// A setting that is not `key=value`, names no setting, or gives an invalid value.
    pub fn with_settings(&self, settings: &[String]) -> Result<Self, ConfigError> {
        let parse = |e: &dyn std::fmt::Display| ConfigError::Parse(e.to_string());
        let value = toml::Value::try_from(self).map_err(|e| parse(&e))?;
        Self::from_table(value, settings)
    }

    /// The model a `[[models]]` table (`table`) describes once `key=value` `settings` are
    /// applied to it (as [`ModelConfig::with_settings`] applies them), with every absent
    /// setting at its default, validated as the configuration file is: the same messages,
    /// naming the same fields. The admin API builds models this way.
    ///
    /// # Errors
    /// A setting that is not `key=value`, names no setting, or gives an invalid value; a
    /// missing required field (`name`, `kind`, `context_dim`).
    pub fn from_table(mut value: toml::Value, settings: &[String]) -> Result<Self, ConfigError> {
        let parse = |e: &dyn std::fmt::Display| ConfigError::Parse(e.to_string());
        for setting in settings {
            let (key, raw) = setting.split_once('=').ok_or_else(|| {
                ConfigError::Parse(format!("setting {setting:?} is not key=value"))
            })?;
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
                .ok()
                .and_then(|mut t| t.remove("v"))
                .unwrap_or_else(|| toml::Value::String(raw.to_owned()));
            let mut target = &mut value;
            let parts: Vec<&str> = key.trim().split('.').collect();
            for (i, part) in parts.iter().enumerate() {
                let table = target.as_table_mut().ok_or_else(|| {
                    ConfigError::Parse(format!("setting {key:?}: {part:?} is not a table"))
                })?;
                if i + 1 == parts.len() {
                    table.insert((*part).to_owned(), parsed.clone());
                    break;
                }
                target = table
                    .entry((*part).to_owned())
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            }
        }
        let model: Self = value.try_into().map_err(|e| parse(&e))?;
        model.validate()?;
        Ok(model)
    }

    /// [`ModelConfig::validate`] plus the checks the whole file makes of each model against
    /// `limits`: what a model created at runtime must pass.
    ///
    /// # Errors
    /// The first problem found, naming the field.
    pub fn validate_with(&self, limits: &LimitsConfig) -> Result<(), ConfigError> {
        self.validate()?;
        if self.policy.propensity_samples > limits.max_posterior_samples {
            return Err(ConfigError::Invalid {
                model: self.name.clone(),
                field: "propensity_samples".into(),
                why: format!(
                    "{} is more than limits.max_posterior_samples ({})",
                    self.policy.propensity_samples, limits.max_posterior_samples
                ),
            });
        }
        Ok(())
    }

    /// Whether this model can become `new` while it serves: `Err((field, why))` names the
    /// first setting that cannot change live. What can: the learning rate, the policy and its
    /// settings (`epsilon`, `neural_linear`, `drop_rates`, `bayesian_last_layer`), the reward
    /// window, the default reward, `propensity_samples`, `holdout` and `decay_half_life` (the learner restarts from a
    /// checkpoint of the current weights when it must). The network's shape, its seed and
    /// the training set-up cannot: a new model (delete, create) takes those.
    pub fn live_change(&self, new: &ModelConfig) -> Result<(), (&'static str, &'static str)> {
        const SHAPE: &str = "changes the network's shape; create a new model instead";
        const SETUP: &str = "cannot change while the model serves; create a new model instead";
        // Destructured without `..`: a new setting must be classed here.
        let Self {
            name,
            kind,
            context_dim,
            arms,
            arm_feature_dim,
            seed,
            network,
            policy: _,
            optimizer,
            learner,
            rewards,
            pending,
            unknown: _,
        } = self;
        let NetworkConfig {
            hidden_layers,
            drop_rates: _,
            concrete_dropout,
            drop_rates_shrink_after,
            heteroscedastic,
        } = network;
        let OptimizerConfig {
            kind: optimizer_kind,
            learning_rate: _,
            batch_size,
            updates_per_reward,
            replay_capacity,
            prior_strength,
            decay_half_life: _,
        } = optimizer;
        let LearnerConfig {
            max_step_backlog,
            publish_every_steps,
            publish_interval_ms,
            refit,
            reward_std_growth_limit,
            learner_nice,
        } = learner;
        let RewardsConfig {
            reward_range,
            on_reward_out_of_range,
        } = rewards;
        let PendingConfig {
            reward_window_seconds: _,
            default_reward: _,
            pending_capacity,
        } = pending;
        let (n, o, l, r) = (&new.network, &new.optimizer, &new.learner, &new.rewards);
        let checks: [(&'static str, bool, &'static str); 24] = [
            ("name", *name != new.name, SETUP),
            ("kind", *kind != new.kind, SHAPE),
            ("context_dim", *context_dim != new.context_dim, SHAPE),
            ("arms", *arms != new.arms, SHAPE),
            (
                "arm_feature_dim",
                *arm_feature_dim != new.arm_feature_dim,
                SHAPE,
            ),
            ("hidden_layers", *hidden_layers != n.hidden_layers, SHAPE),
            (
                "heteroscedastic",
                *heteroscedastic != n.heteroscedastic,
                SHAPE,
            ),
            (
                "concrete_dropout",
                *concrete_dropout != n.concrete_dropout,
                SETUP,
            ),
            ("reward_range", *reward_range != r.reward_range, SETUP),
            (
                "on_reward_out_of_range",
                *on_reward_out_of_range != r.on_reward_out_of_range,
                SETUP,
            ),
            (
                "reward_std_growth_limit",
                reward_std_growth_limit.to_bits() != l.reward_std_growth_limit.to_bits(),
                SETUP,
            ),
            ("optimizer", *optimizer_kind != o.kind, SETUP),
            ("batch_size", *batch_size != o.batch_size, SETUP),
            (
                "updates_per_reward",
                *updates_per_reward != o.updates_per_reward,
                SETUP,
            ),
            (
                "replay_capacity",
                *replay_capacity != o.replay_capacity,
                SETUP,
            ),
            (
                "prior_strength",
                prior_strength.to_bits() != o.prior_strength.to_bits(),
                SETUP,
            ),
            ("seed", *seed != new.seed, SETUP),
            (
                "pending_capacity",
                *pending_capacity != new.pending.pending_capacity,
                SETUP,
            ),
            (
                "max_step_backlog",
                *max_step_backlog != l.max_step_backlog,
                SETUP,
            ),
            (
                "publish_every_steps",
                *publish_every_steps != l.publish_every_steps,
                SETUP,
            ),
            (
                "publish_interval_ms",
                *publish_interval_ms != l.publish_interval_ms,
                SETUP,
            ),
            ("refit", *refit != l.refit, SETUP),
            ("learner_nice", *learner_nice != l.learner_nice, SETUP),
            (
                "drop_rates_shrink_after",
                *drop_rates_shrink_after != n.drop_rates_shrink_after,
                SETUP,
            ),
        ];
        match checks.into_iter().find(|(_, changed, _)| *changed) {
            Some((field, _, why)) => Err((field, why)),
            None => Ok(()),
        }
    }

    /// The reward window.
    pub fn reward_window(&self) -> Duration {
        Duration::from_secs_f64(self.pending.reward_window_seconds)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, why: String| ConfigError::Invalid {
            model: self.name.clone(),
            field: field.to_owned(),
            why,
        };
        if self.name.is_empty() {
            return Err(bad("name", "must not be empty".into()));
        }
        // The name is a file name in the data directory (checkpoints, version mark): it must
        // not reach outside it.
        if self.name == "." || self.name == ".." || self.name.contains(['/', '\\', '\0']) {
            return Err(bad(
                "name",
                format!(
                    "{:?}: must not be \".\" or \"..\" or contain '/', '\\' or NUL",
                    self.name
                ),
            ));
        }
        if self.context_dim == 0 {
            return Err(bad("context_dim", "must be at least 1".into()));
        }
        match self.kind {
            ModelKind::FixedArms => {
                if self.arms.len() < 2 {
                    return Err(bad(
                        "arms",
                        "a fixed-arm model needs at least 2 arms".into(),
                    ));
                }
                let mut seen = HashSet::new();
                for arm in &self.arms {
                    if arm.is_empty() {
                        return Err(bad("arms", "arm ids must not be empty".into()));
                    }
                    if !seen.insert(arm) {
                        return Err(bad("arms", format!("duplicate arm id {arm:?}")));
                    }
                }
                if self.arm_feature_dim != 0 {
                    return Err(bad(
                        "arm_feature_dim",
                        "must be 0 (or absent) for a fixed-arm model".into(),
                    ));
                }
            }
            ModelKind::PerArmFeatures => {
                if !self.arms.is_empty() {
                    return Err(bad(
                        "arms",
                        "a per-arm-features model takes its arms from each request".into(),
                    ));
                }
                if self.arm_feature_dim == 0 {
                    return Err(bad("arm_feature_dim", "must be at least 1".into()));
                }
            }
        }
        if self.network.hidden_layers.contains(&0) {
            return Err(bad("hidden_layers", "widths must be at least 1".into()));
        }
        let rates = self.effective_drop_rates();
        if rates.len() != self.network.hidden_layers.len() + 1 {
            return Err(bad(
                "drop_rates",
                format!(
                    "expected {} values (input, then one per hidden layer), got {}",
                    self.network.hidden_layers.len() + 1,
                    rates.len()
                ),
            ));
        }
        if let Some(r) = rates.iter().find(|r| !(0.0..1.0).contains(*r)) {
            return Err(bad("drop_rates", format!("{r} is not in [0, 1)")));
        }
        if self.network.concrete_dropout
            && let Some(r) = rates.iter().find(|r| **r <= 0.0)
        {
            return Err(bad(
                "drop_rates",
                format!(
                    "{r} cannot be learned: concrete_dropout learns every rate from its starting \
                     value, so each must be in (0, 1)"
                ),
            ));
        }
        if !(0.0..=1.0).contains(&self.policy.epsilon) {
            return Err(bad(
                "epsilon",
                format!("{} is not in [0, 1]", self.policy.epsilon),
            ));
        }
        let nl = &self.policy.neural_linear;
        for (field, value) in [
            ("neural_linear.prior_precision", nl.prior_precision),
            ("neural_linear.prior_shape", nl.prior_shape),
            ("neural_linear.prior_scale", nl.prior_scale),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(field, "must be a positive number".into()));
            }
        }
        if nl.refresh_every == 0 {
            return Err(bad(
                "neural_linear.refresh_every",
                "must be at least 1".into(),
            ));
        }
        if let Some(refit) = &self.learner.refit {
            if refit.every == 0 || refit.steps == 0 {
                return Err(bad("refit", "every and steps must be at least 1".into()));
            }
            if !(refit.lr_decay.is_finite() && refit.lr_decay >= 0.0) {
                return Err(bad(
                    "refit.lr_decay",
                    "must be a non-negative number".into(),
                ));
            }
        }
        if let Some(n) = self.network.drop_rates_shrink_after {
            if !(n == 0.0 || (n.is_finite() && n >= 1.0)) {
                return Err(bad(
                    "drop_rates_shrink_after",
                    format!("{n} is neither 0 (fixed rates) nor a number of examples (at least 1)"),
                ));
            }
            if self.network.concrete_dropout && n > 0.0 {
                return Err(bad(
                    "drop_rates_shrink_after",
                    "concrete_dropout learns its own rates; use one or the other".into(),
                ));
            }
        }
        if self.uses_linear_posterior() && self.network.hidden_layers.is_empty() {
            return Err(bad(
                "hidden_layers",
                "a linear posterior on the last hidden layer (neural_linear, or mc_dropout with \
                 bayesian_last_layer) needs at least one hidden layer"
                    .into(),
            ));
        }
        if !(self.optimizer.learning_rate.is_finite() && self.optimizer.learning_rate > 0.0) {
            return Err(bad("learning_rate", "must be a positive number".into()));
        }
        if !(self.optimizer.prior_strength.is_finite() && self.optimizer.prior_strength >= 0.0) {
            return Err(bad(
                "prior_strength",
                "must be a non-negative number".into(),
            ));
        }
        if !(self.pending.reward_window_seconds.is_finite()
            && self.pending.reward_window_seconds > 0.0)
        {
            return Err(bad(
                "reward_window_seconds",
                "must be a positive number".into(),
            ));
        }
        if self.pending.reward_window_seconds > MAX_REWARD_WINDOW_SECONDS {
            return Err(bad(
                "reward_window_seconds",
                format!("must be at most {MAX_REWARD_WINDOW_SECONDS:e} (about 31 years)"),
            ));
        }
        if self.pending.default_reward.is_some_and(|r| !r.is_finite()) {
            return Err(bad("default_reward", "must be finite".into()));
        }
        if let Some([lo, hi]) = self.rewards.reward_range {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err(bad(
                    "reward_range",
                    format!("[{lo}, {hi}] is not [lo, hi] with finite lo < hi"),
                ));
            }
            if let Some(r) = self.pending.default_reward
                && !(lo..=hi).contains(&r)
            {
                return Err(bad(
                    "default_reward",
                    format!("{r} is outside reward_range [{lo}, {hi}]"),
                ));
            }
        }
        let growth = self.learner.reward_std_growth_limit;
        if !(growth == 0.0 || (growth.is_finite() && growth > 1.0)) {
            return Err(bad(
                "reward_std_growth_limit",
                format!("{growth} is neither 0 (off) nor a finite number above 1"),
            ));
        }
        for (field, value) in [
            ("batch_size", self.optimizer.batch_size),
            ("replay_capacity", self.optimizer.replay_capacity),
            ("pending_capacity", self.pending.pending_capacity),
            ("publish_every_steps", self.learner.publish_every_steps),
            ("max_step_backlog", self.learner.max_step_backlog),
        ] {
            if value == 0 {
                return Err(bad(field, "must be at least 1".into()));
            }
        }
        if self.pending.pending_capacity > MAX_PENDING_CAPACITY {
            return Err(bad(
                "pending_capacity",
                format!("must be at most {MAX_PENDING_CAPACITY}"),
            ));
        }
        if !(0..=MAX_LEARNER_NICE).contains(&self.learner.learner_nice) {
            return Err(bad(
                "learner_nice",
                format!(
                    "{} is outside 0..={MAX_LEARNER_NICE} (nice levels below the process's \
                     priority; never above it)",
                    self.learner.learner_nice
                ),
            ));
        }
        if self.learner.publish_interval_ms == 0 {
            return Err(bad("publish_interval_ms", "must be at least 1".into()));
        }
        if let Some(h) = self.optimizer.decay_half_life
            && !(h.is_finite() && h >= 1.0)
        {
            return Err(bad(
                "decay_half_life",
                format!("{h} is not a number of rewards of at least 1"),
            ));
        }
        if let Some(h) = self.policy.holdout
            && !(0.0..1.0).contains(&h.fraction)
        {
            return Err(bad(
                "holdout.fraction",
                format!("{} is not in [0, 1)", h.fraction),
            ));
        }
        Ok(())
    }
}

impl Config {
    /// Reads and validates a TOML file.
    ///
    /// # Errors
    /// The file cannot be read, is not valid TOML of this shape, or fails [`Config::validate`].
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text)
    }

    /// Parses and validates TOML text.
    ///
    /// # Errors
    /// Not valid TOML of this shape, or fails [`Config::validate`].
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        config.validate()?;
        Ok(config)
    }

    /// The built-in configuration `banditd` runs with when given no `--config`: a fixed-arm
    /// model shaped for the wheel bandit (2-d context, arms "0".."4") and a per-arm-feature
    /// model with 8-d contexts and 8-d item features.
    pub fn embedded_default() -> Self {
        let mut wheel = ModelConfig::new("wheel", ModelKind::FixedArms, 2);
        wheel.arms = (0..5).map(|i| i.to_string()).collect();
        let mut items = ModelConfig::new("items", ModelKind::PerArmFeatures, 8);
        items.arm_feature_dim = 8;
        items.seed = 43;
        Self {
            server: ServerConfig::default(),
            limits: LimitsConfig::default(),
            storage: StorageConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            http: HttpConfig::default(),
            models: vec![wheel, items],
            cluster: None,
        }
    }

    /// Checks every model and the whole (unique names, at least one model).
    ///
    /// # Errors
    /// The first problem found, naming the model and the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.models.is_empty() {
            return Err(ConfigError::NoModels);
        }
        if let Some(cluster) = &self.cluster {
            cluster.validate(&self.models)?;
        }
        let mut names = HashSet::new();
        for model in &self.models {
            model.validate()?;
            if !names.insert(&model.name) {
                return Err(ConfigError::Invalid {
                    model: model.name.clone(),
                    field: "name".into(),
                    why: "two models have this name".into(),
                });
            }
        }
        if self.storage.writer_queue_capacity == 0
            || self.storage.sync_interval_ms == 0
            || self.storage.checkpoint_interval_secs == 0
            || self.storage.checkpoint_every_examples == 0
            || self.storage.segment_bytes == 0
        {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "storage".into(),
                why: "writer_queue_capacity, sync_interval_ms, checkpoint_interval_secs, checkpoint_every_examples and segment_bytes must be at least 1".into(),
            });
        }
        if self.storage.commit_delay_us > self.storage.sync_interval_ms.saturating_mul(1000) {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "storage.commit_delay_us".into(),
                why: format!(
                    "{} µs is longer than sync_interval_ms ({} ms): a decision would wait for its \
                     write longer than the periodic sync promises",
                    self.storage.commit_delay_us, self.storage.sync_interval_ms
                ),
            });
        }
        if self.storage.preallocate_bytes > MAX_PREALLOCATE_BYTES {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "storage.preallocate_bytes".into(),
                why: format!(
                    "{} is more than {MAX_PREALLOCATE_BYTES} (1 GiB)",
                    self.storage.preallocate_bytes
                ),
            });
        }
        if self.storage.checkpoints_kept == 0 {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "storage.checkpoints_kept".into(),
                why: "must be at least 1 (the newest checkpoint is what a restart resumes from)"
                    .into(),
            });
        }
        let server = &self.server;
        if server.max_in_flight == 0
            || server.max_in_flight_per_connection == 0
            || server.request_timeout_ms == 0
            || server.max_message_bytes == 0
        {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "server".into(),
                why: "max_in_flight, max_in_flight_per_connection, request_timeout_ms and max_message_bytes must be at least 1".into(),
            });
        }
        for (field, value) in [
            ("server.max_connections", server.max_connections as u64),
            ("server.handshake_timeout_ms", server.handshake_timeout_ms),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "server.max_header_list_bytes",
                u64::from(server.max_header_list_bytes),
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    model: String::new(),
                    field: field.into(),
                    why: "must be at least 1".into(),
                });
            }
        }
        // HTTP/2 (RFC 9113 §6.9.1): a window is at least the initial 65,535 bytes and at most
        // 2^31 - 1.
        for (field, value) in [
            (
                "server.connection_window_bytes",
                server.connection_window_bytes,
            ),
            ("server.stream_window_bytes", server.stream_window_bytes),
        ] {
            if !(65_535..=0x7fff_ffff).contains(&value) {
                return Err(ConfigError::Invalid {
                    model: String::new(),
                    field: field.into(),
                    why: format!("{value} is not in [65535, 2147483647] (HTTP/2 window sizes)"),
                });
            }
        }
        if self.tls.cert_file.is_some() != self.tls.key_file.is_some() {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "tls".into(),
                why: "cert_file and key_file go together".into(),
            });
        }
        if self.tls.client_ca_file.is_some() && self.tls.cert_file.is_none() {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "tls.client_ca_file".into(),
                why: "mutual TLS needs cert_file and key_file too".into(),
            });
        }
        if self.limits.max_candidates == 0
            || self.limits.max_id_bytes == 0
            || self.limits.max_blocking_decisions == 0
        {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "limits".into(),
                why: "max_candidates, max_id_bytes and max_blocking_decisions must be at least 1"
                    .into(),
            });
        }
        let positive = |v: f64| v.is_finite() && v > 0.0;
        if !(positive(f64::from(self.limits.max_abs_value)) && positive(self.limits.max_abs_reward))
        {
            return Err(ConfigError::Invalid {
                model: String::new(),
                field: "limits".into(),
                why: "max_abs_value and max_abs_reward must be positive numbers".into(),
            });
        }
        for model in &self.models {
            model.validate_with(&self.limits)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded default is valid and survives a TOML round trip.
    #[test]
    fn embedded_default_round_trips() {
        let config = Config::embedded_default();
        config.validate().unwrap();
        let text = toml::to_string(&config).unwrap();
        assert_eq!(Config::from_toml(&text).unwrap(), config);
    }

    /// A minimal file gets every default, and errors name the model and field.
    #[test]
    fn minimal_file_and_errors() {
        let ok = r#"
            [[models]]
            name = "m"
            kind = "fixed_arms"
            context_dim = 3
            arms = ["a", "b"]
        "#;
        let config = Config::from_toml(ok).unwrap();
        assert_eq!(config.models[0].network.hidden_layers, vec![100, 100]);
        assert_eq!(config.models[0].policy.kind, PolicyKind::McDropout);
        assert!(config.models[0].policy.bayesian_last_layer);
        assert_eq!(
            config.models[0].effective_drop_rates(),
            vec![0.0, 0.05, 0.05]
        );
        let mut mc = config.models[0].clone();
        mc.policy.bayesian_last_layer = false;
        assert_eq!(mc.effective_drop_rates(), vec![0.02, 0.3, 0.3]);
        mc.policy.kind = PolicyKind::NeuralLinear;
        assert_eq!(mc.effective_drop_rates(), vec![0.0; 3]);

        let dup = ok.replace(r#"["a", "b"]"#, r#"["a", "a"]"#);
        let err = Config::from_toml(&dup).unwrap_err().to_string();
        assert!(err.contains("model \"m\"") && err.contains("arms"), "{err}");

        let rates = format!("{ok}\ndrop_rates = [0.1]");
        let err = Config::from_toml(&rates).unwrap_err().to_string();
        assert!(
            err.contains("drop_rates") && err.contains("expected 3"),
            "{err}"
        );

        let unknown = format!("{ok}\nlearnig_rate = 0.1");
        let err = Config::from_toml(&unknown).unwrap_err().to_string();
        assert!(err.contains("learnig_rate"), "{err}");
    }

    /// The model's table stays flat while ModelConfig is grouped in sections: a flat file
    /// parses into the sections and serializes back to the same flat keys; a bad value names
    /// its key, an unknown key is refused by name, and no two sections claim one key.
    #[test]
    fn flat_table_fills_the_sections() {
        let ok = r#"
            [[models]]
            name = "m"
            kind = "fixed_arms"
            context_dim = 3
            arms = ["a", "b"]
            policy = "neural_linear"
            optimizer = "sgd"
            learning_rate = 0.01
            pending_capacity = 7
            reward_range = [0.0, 1.0]
            publish_every_steps = 3
            neural_linear = { refresh_every = 9 }
        "#;
        let model = Config::from_toml(ok).unwrap().models.remove(0);
        assert_eq!(model.policy.kind, PolicyKind::NeuralLinear);
        assert_eq!(model.optimizer.kind, OptimizerKind::Sgd);
        assert_eq!(model.optimizer.learning_rate, 0.01);
        assert_eq!(model.pending.pending_capacity, 7);
        assert_eq!(model.rewards.reward_range, Some([0.0, 1.0]));
        assert_eq!(model.learner.publish_every_steps, 3);
        assert_eq!(model.policy.neural_linear.refresh_every, 9);
        assert_eq!(
            model.optimizer.batch_size, 32,
            "an absent key keeps its default"
        );

        let table = toml::Table::try_from(&model).unwrap();
        for section in ["network", "learner", "rewards", "pending", "unknown"] {
            assert!(
                !table.contains_key(section),
                "{section} serialized as a key"
            );
        }
        assert_eq!(table["policy"].as_str(), Some("neural_linear"));
        assert_eq!(table["learning_rate"].as_float(), Some(0.01));

        let wrong_type = ok.replace("learning_rate = 0.01", "learning_rate = \"fast\"");
        let err = Config::from_toml(&wrong_type).unwrap_err().to_string();
        assert!(err.contains("learning_rate"), "{err}");
        let nested = ok.replace("refresh_every = 9", "refresh_evry = 9");
        let err = Config::from_toml(&nested).unwrap_err().to_string();
        assert!(err.contains("refresh_evry"), "{err}");
        let unknown = format!("{ok}\nnetwork = 1");
        let err = Config::from_toml(&unknown).unwrap_err().to_string();
        assert!(err.contains("unknown field `network`"), "{err}");
        assert!(
            err.contains("learning_rate"),
            "the error lists the keys: {err}"
        );

        let huge = ok.replace("pending_capacity = 7", "pending_capacity = 4294967296");
        let err = Config::from_toml(&huge).unwrap_err().to_string();
        assert!(
            err.contains("pending_capacity") && err.contains("at most"),
            "{err}"
        );
        for nice in ["-1", "20"] {
            let bad = format!("{ok}\nlearner_nice = {nice}");
            let err = Config::from_toml(&bad).unwrap_err().to_string();
            assert!(
                err.contains("learner_nice") && err.contains("0..=19"),
                "{err}"
            );
        }
        // A window Duration cannot hold would panic when the store is built.
        let forever = format!("{ok}\nreward_window_seconds = 1e20");
        let err = Config::from_toml(&forever).unwrap_err().to_string();
        assert!(
            err.contains("reward_window_seconds") && err.contains("at most"),
            "{err}"
        );

        let keys = model_keys();
        let unique: HashSet<_> = keys.iter().collect();
        assert_eq!(unique.len(), keys.len(), "a key claimed twice: {keys:?}");
        assert_eq!(keys.len(), 35, "{keys:?}");
    }

    /// Issue 14's options: falling drop rates default to N₀ = 100 under `mc_dropout` with
    /// `bayesian_last_layer` only, 0 turns them off, and Concrete Dropout turns them off;
    /// bad values of the new settings are refused naming the field.
    #[test]
    fn issue_14_options_defaults_and_errors() {
        let base = r#"
            [[models]]
            name = "m"
            kind = "fixed_arms"
            context_dim = 3
            arms = ["a", "b"]
        "#;
        let model = |extra: &str| Config::from_toml(&format!("{base}\n{extra}"));
        let m = model("").unwrap().models.remove(0);
        assert_eq!(m.effective_shrink_after(), Some(LINEAR_HEAD_SHRINK_AFTER));
        assert_eq!(
            (m.learner.refit, m.policy.neural_linear.initial_pulls),
            (None, 0)
        );
        assert!(!m.policy.neural_linear.fit_masked);
        let off = model("drop_rates_shrink_after = 0")
            .unwrap()
            .models
            .remove(0);
        assert_eq!(off.effective_shrink_after(), None);
        for other in ["policy = \"neural_linear\"", "bayesian_last_layer = false"] {
            let m = model(other).unwrap().models.remove(0);
            assert_eq!(m.effective_shrink_after(), None, "{other}");
        }
        let concrete = model("concrete_dropout = true\ndrop_rates = [0.02, 0.05, 0.05]")
            .unwrap()
            .models
            .remove(0);
        assert_eq!(concrete.effective_shrink_after(), None);
        let refit = model("refit = { every = 50, steps = 100, lr_decay = 0.5 }")
            .unwrap()
            .models
            .remove(0);
        assert_eq!(refit.learner.refit.unwrap().steps, 100);
        for (extra, field) in [
            ("drop_rates_shrink_after = 0.5", "drop_rates_shrink_after"),
            (
                "concrete_dropout = true\ndrop_rates = [0.02, 0.05, 0.05]\ndrop_rates_shrink_after = 10",
                "drop_rates_shrink_after",
            ),
            ("refit = { every = 0, steps = 100 }", "refit"),
            (
                "refit = { every = 50, steps = 100, lr_decay = -1 }",
                "refit.lr_decay",
            ),
            ("refit = { every = 50 }", "steps"),
        ] {
            let err = model(extra).unwrap_err().to_string();
            assert!(err.contains(field), "{extra}: {err}");
        }
    }

    /// `storage.checkpoints_kept` defaults to 3, takes a larger value, and 0 is refused
    /// naming the field.
    #[test]
    fn checkpoints_kept_is_validated() {
        let model = "[[models]]\nname = \"m\"\nkind = \"fixed_arms\"\ncontext_dim = 1\narms = [\"a\", \"b\"]\n";
        assert_eq!(
            Config::from_toml(model).unwrap().storage.checkpoints_kept,
            3
        );
        let kept = |n: usize| format!("[storage]\ncheckpoints_kept = {n}\n{model}");
        assert_eq!(
            Config::from_toml(&kept(10))
                .unwrap()
                .storage
                .checkpoints_kept,
            10
        );
        let err = Config::from_toml(&kept(0)).unwrap_err().to_string();
        assert!(err.contains("storage.checkpoints_kept"), "{err}");
    }

    /// `check_reward`: no range passes every finite reward; inside the range passes; outside
    /// is refused naming `reward` (the default) or clipped to the nearest bound; a bad range
    /// or a default reward outside it is refused at load, naming the field.
    #[test]
    fn reward_range_rejects_or_clips() {
        let base = Config::embedded_default().models[0].clone();
        let set =
            |s: &[&str]| base.with_settings(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        assert_eq!(base.check_reward(-1e9).unwrap(), -1e9);
        assert!(base.check_reward(f64::NAN).is_err());
        let reject = set(&["reward_range=[0.0, 50.5]"]).unwrap();
        assert_eq!(
            reject.rewards.on_reward_out_of_range,
            OnRewardOutOfRange::Reject
        );
        assert_eq!(reject.check_reward(50.5).unwrap(), 50.5);
        assert_eq!(reject.check_reward(0.0).unwrap(), 0.0);
        let err = reject.check_reward(-1e6).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidArgument { field, detail }
                if field == "reward" && detail.contains("reward_range [0, 50.5]")),
            "{err}"
        );
        let clip = set(&["reward_range=[0.0, 50.5]", "on_reward_out_of_range=clip"]).unwrap();
        assert_eq!(clip.check_reward(-1e6).unwrap(), 0.0);
        assert_eq!(clip.check_reward(1e9).unwrap(), 50.5);
        assert_eq!(clip.check_reward(7.0).unwrap(), 7.0);
        for bad in [
            "reward_range=[1.0, 1.0]",
            "reward_range=[2.0, 1.0]",
            "reward_range=[0.0, inf]",
        ] {
            let err = set(&[bad]).unwrap_err().to_string();
            assert!(err.contains("reward_range"), "{bad}: {err}");
        }
        let err = set(&["reward_range=[0.0, 1.0]", "default_reward=2.0"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("default_reward"), "{err}");
        for bad in [
            "reward_std_growth_limit=-1.0",
            "reward_std_growth_limit=1.0",
        ] {
            let err = set(&[bad]).unwrap_err().to_string();
            assert!(err.contains("reward_std_growth_limit"), "{err}");
        }
    }

    /// `key=value` settings reach nested tables, parse TOML values, and are validated.
    #[test]
    fn settings_override_a_model() {
        let base = Config::embedded_default().models[0].clone();
        let set =
            |s: &[&str]| base.with_settings(&s.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>());
        let m = set(&[
            "policy=neural_linear",
            "neural_linear.refresh_every=7",
            "hidden_layers=[20, 10]",
            "learning_rate=0.01",
        ])
        .unwrap();
        assert_eq!(m.policy.kind, PolicyKind::NeuralLinear);
        assert_eq!(m.policy.neural_linear.refresh_every, 7);
        assert_eq!(m.policy.neural_linear.prior_shape, 6.0);
        assert_eq!(m.network.hidden_layers, vec![20, 10]);
        assert_eq!(m.optimizer.learning_rate, 0.01);
        assert_eq!(
            set(&["policy=\"greedy\""]).unwrap().policy.kind,
            PolicyKind::Greedy
        );
        let concrete = set(&[
            "policy=mc_dropout",
            "bayesian_last_layer=false",
            "concrete_dropout=true",
        ])
        .unwrap();
        assert!(concrete.network.concrete_dropout);
        // The default rates (mc_dropout with a Bayesian last layer, and neural_linear) start
        // with 0 for the input units, which cannot be learned from.
        assert!(set(&["concrete_dropout=true"]).is_err());
        assert!(set(&["policy=neural_linear", "concrete_dropout=true"]).is_err());
        let err = set(&["concrete_dropout=true", "drop_rates=[0.0, 0.3, 0.3]"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("drop_rates") && err.contains("concrete_dropout"),
            "{err}"
        );
        for bad in [
            "policy=sometimes",
            "epsilon=2",
            "no_such_setting=1",
            "learning_rate",
        ] {
            assert!(set(&[bad]).is_err(), "{bad} was accepted");
        }
    }

    /// The trainer's consumer heartbeat is bounded both ways, naming the field.
    #[test]
    fn consumer_heartbeat_is_bounded() {
        let models = Config::embedded_default().models;
        let mut cluster = ClusterConfig::default();
        cluster.validate(&models).unwrap();
        for bad in [50, 60_001] {
            cluster.consumer_heartbeat_ms = bad;
            let err = cluster.validate(&models).unwrap_err().to_string();
            assert!(err.contains("consumer_heartbeat_ms"), "{bad}: {err}");
        }
    }

    /// A model name is a file name in the data directory: one that would reach outside it
    /// is refused, naming the field.
    #[test]
    fn model_name_cannot_leave_the_data_dir() {
        for name in ["..", ".", "a/b", "../x", "a\\b", "a\0b"] {
            let mut model = ModelConfig::new(name, ModelKind::FixedArms, 2);
            model.arms = vec!["a".into(), "b".into()];
            let err = model.validate().unwrap_err().to_string();
            assert!(err.contains("name"), "{name:?}: {err}");
        }
        let mut model = ModelConfig::new("ads.v2-a_b", ModelKind::FixedArms, 2);
        model.arms = vec!["a".into(), "b".into()];
        model.validate().unwrap();
    }
}
