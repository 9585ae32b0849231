//! Cluster mode over NATS JetStream: many serving replicas, one trainer per model.
//!
//! Every process serves the same gRPC API. A replica decides from the newest snapshot it has
//! loaded and stores each decision and reward as an event in one JetStream stream (the log's
//! own protobuf records, `proto/banditd/log/v1/log.proto`, one subject per model and kind);
//! JetStream deduplicates retries by message id. One process per model holds that model's
//! trainer lease (a KV entry with a TTL, renewed); it reads the model's events through a
//! consumer, joins rewards to decisions within the reward window (closing windows by
//! publishing a `Closed` event, so the stream alone decides every join), trains with the
//! ordinary learner, and uploads snapshots (checkpoint bytes plus the replay window) to the
//! object store, with the version in KV. Every replica watches the version key and swaps in
//! a fully built snapshot. See README.md "Cluster mode" for what an acknowledgement means.
//!
//! - [`nats`]: the connection, the stream and buckets, subject names.
//! - [`bus`]: the engine's [`EventBus`](crate::engine::bus::EventBus) over JetStream.
//! - [`snapshot`]: the snapshot object's format, and turning one into a serving snapshot.
//! - [`join`]: the trainer's join of the stream into training examples (an `ExampleSource`).
//! - [`reader`]: the join's reader of a model's events (an ordered consumer, opened again
//!   where the join stopped when it fails or stalls).
//! - [`trainer`]: the lease, one trainer session, the snapshot upload.
//! - [`watcher`]: the replica's version watch and hot swap.
//! - [`export`]: `banditd export --cluster`, the stream's decisions as JSON lines.
//! - [`telemetry`]: the cluster metrics.

mod bus;
mod export;
mod join;
mod nats;
mod reader;
pub mod snapshot;
mod telemetry;
mod trainer;
mod watcher;

use std::sync::Arc;

use tokio::{sync::watch, task::JoinHandle};

pub use export::export;
pub use nats::Nats;

use crate::{
    config::{ClusterConfig, Config},
    engine::{Engine, bus::EventBus},
    error::Error,
};

/// A connected cluster member, before its engine exists.
#[derive(Debug)]
pub struct Cluster {
    nats: Arc<Nats>,
    config: Config,
}

impl Cluster {
    /// Connects to NATS and makes sure the stream and buckets exist (retrying until NATS can
    /// be reached: the process stays NOT_SERVING meanwhile).
    ///
    /// # Errors
    /// A setting NATS refuses (e.g. more replicas than NATS servers).
    pub async fn connect(config: &Config, cluster: &ClusterConfig) -> Result<Self, Error> {
        let nats = Nats::connect(cluster).await?;
        Ok(Self {
            nats: Arc::new(nats),
            config: config.clone(),
        })
    }

    /// The event bus the engine stores events through.
    pub fn bus(&self) -> Arc<dyn EventBus> {
        Arc::new(bus::JetStreamBus::new(Arc::clone(&self.nats)))
    }

    /// Loads each model's newest snapshot into `engine` (so a replica never serves older
    /// weights than the cluster has), then starts the version watchers and, if this process
    /// is a trainer candidate, one lease candidate per model.
    pub async fn start(self, engine: &Arc<Engine>) -> Running {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        for model in &self.config.models {
            let Some(weights) = engine.weights(&model.name) else {
                continue;
            };
            let watcher = watcher::Watcher::new(
                Arc::clone(&self.nats),
                model.clone(),
                weights,
                self.config.storage.data_dir.join("cluster-load"),
            );
            watcher.load_latest().await;
            tasks.push(tokio::spawn(watcher.run(stop_rx.clone())));
        }
        if self.nats.config().trainer {
            let dir = self
                .nats
                .config()
                .trainer_dir
                .clone()
                .unwrap_or_else(|| self.config.storage.data_dir.join("trainer"));
            for model in &self.config.models {
                let candidate =
                    trainer::Candidate::new(Arc::clone(&self.nats), model.clone(), dir.clone());
                tasks.push(tokio::spawn(candidate.run(stop_rx.clone())));
            }
        }
        Running {
            stop: stop_tx,
            tasks,
        }
    }
}

/// The cluster's background tasks; [`Running::shutdown`] stops them in order (a trainer
/// trains on what it has read, uploads a final snapshot and releases its lease).
#[derive(Debug)]
pub struct Running {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Running {
    /// Stops the watchers and trainers and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    /// The embedded default with `line` in a `[cluster]` section.
    fn with_cluster(line: &str) -> Result<Config, String> {
        let mut text = toml::to_string(&Config::embedded_default()).unwrap();
        text.push_str("\n[cluster]\n");
        text.push_str(line);
        text.push('\n');
        Config::from_toml(&text).map_err(|e| e.to_string())
    }

    /// A bad `[cluster]` setting is refused with a message naming the field.
    #[test]
    fn bad_settings_name_the_field() {
        assert!(with_cluster("url = \"nats://127.0.0.1:4222\"").is_ok());
        for (line, field) in [
            ("url = \" \"", "cluster.url"),
            ("replicas = 0", "cluster.replicas"),
            ("stream = \"a.b\"", "cluster.stream"),
            ("subject_prefix = \"a.*\"", "cluster.subject_prefix"),
            ("lease_ttl_ms = 10", "cluster.lease_ttl_ms"),
            (
                "consumer_heartbeat_ms = 50",
                "cluster.consumer_heartbeat_ms",
            ),
            (
                "snapshot_interval_secs = 0",
                "cluster.snapshot_interval_secs",
            ),
            ("retention_secs = 60", "cluster.retention_secs"),
            ("bogus = 1", "bogus"),
        ] {
            let err = with_cluster(line).expect_err(line);
            assert!(err.contains(field), "{line}: {err}");
        }
    }

    /// In cluster mode a model name must be a NATS subject token.
    #[test]
    fn model_names_must_be_subject_tokens() {
        let mut config = Config::embedded_default();
        config.models[0].name = "wheel.v2".into();
        config.cluster = Some(crate::config::ClusterConfig::default());
        let err = config.validate().unwrap_err().to_string();
        assert!(
            err.contains("wheel.v2") && err.contains("subject token"),
            "{err}"
        );
    }
}
