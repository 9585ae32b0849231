//! The NATS connection and the JetStream objects cluster mode uses: one stream for every
//! model's events, a KV bucket of leases (its max age is the lease TTL), a KV bucket of
//! versions and trainer epochs, and an object store of snapshots. Subject and message-id
//! names live here.

use std::time::Duration;

use async_nats::{
    Client, ServerAddr,
    connection::State,
    jetstream::{self, kv, object_store, stream},
};

use crate::{config::ClusterConfig, error::Error};

/// How often setup is retried while NATS cannot be reached at start.
const SETUP_RETRY: Duration = Duration::from_secs(1);

/// A connected client with its JetStream handles.
pub struct Nats {
    config: ClusterConfig,
    client: Client,
    js: jetstream::Context,
    stream: stream::Stream,
    leases: kv::Store,
    state: kv::Store,
    snapshots: object_store::ObjectStore,
}

impl std::fmt::Debug for Nats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Nats")
            .field("url", &self.config.url)
            .field("stream", &self.config.stream)
            .finish_non_exhaustive()
    }
}

/// The servers of a comma-separated `cluster.url` (the client takes a list, not a string
/// with commas).
///
/// # Errors
/// A server address that does not parse, named.
pub(super) fn servers(url: &str) -> Result<Vec<ServerAddr>, Error> {
    url.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<ServerAddr>()
                .map_err(|e| Error::invalid("cluster.url", format!("{s:?}: {e}")))
        })
        .collect()
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NATS: {what}: {e}"))
}

impl Nats {
    /// Connects (retrying until the server answers) and creates the stream and buckets if
    /// they do not exist.
    ///
    /// # Errors
    /// NATS refuses the stream or a bucket (a configuration it cannot satisfy).
    pub async fn connect(config: &ClusterConfig) -> Result<Self, Error> {
        let client = async_nats::ConnectOptions::new()
            .name("banditd")
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_millis(config.publish_timeout_ms))
            .connect(servers(&config.url)?)
            .await
            .map_err(|e| unavailable("connect", e))?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(Duration::from_millis(config.publish_timeout_ms));
        let mut attempt = 0u32;
        loop {
            match Self::setup(config, &client, &js).await {
                Ok(nats) => return Ok(nats),
                // Unreachable: keep trying (NOT_SERVING meanwhile); refused: give up.
                Err(e) if client.connection_state() != State::Connected || attempt < 3 => {
                    attempt += 1;
                    tracing::warn!(error = %e, url = %config.url, "cluster setup failed; retrying");
                    tokio::time::sleep(SETUP_RETRY).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn setup(
        config: &ClusterConfig,
        client: &Client,
        js: &jetstream::Context,
    ) -> Result<Self, Error> {
        let storage = stream::StorageType::File;
        let stream = js
            .get_or_create_stream(stream::Config {
                name: config.stream.clone(),
                subjects: vec![format!("{}.>", config.subject_prefix)],
                max_age: Duration::from_secs(config.retention_secs),
                duplicate_window: Duration::from_secs(config.dedup_window_secs),
                num_replicas: config.replicas,
                storage,
                ..Default::default()
            })
            .await
            .map_err(|e| unavailable("stream", e))?;
        let leases = match js.get_key_value(&config.lease_bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: config.lease_bucket.clone(),
                    history: 1,
                    max_age: Duration::from_millis(config.lease_ttl_ms),
                    num_replicas: config.replicas,
                    storage,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("lease bucket", e))?,
        };
        let state = match js.get_key_value(&config.state_bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: config.state_bucket.clone(),
                    history: 1,
                    num_replicas: config.replicas,
                    storage,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("state bucket", e))?,
        };
        let snapshots = match js.get_object_store(&config.snapshot_bucket).await {
            Ok(store) => store,
            Err(_) => js
                .create_object_store(object_store::Config {
                    bucket: config.snapshot_bucket.clone(),
                    num_replicas: config.replicas,
                    storage,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable("snapshot bucket", e))?,
        };
        Ok(Self {
            config: config.clone(),
            client: client.clone(),
            js: js.clone(),
            stream,
            leases,
            state,
            snapshots,
        })
    }

    /// The `[cluster]` settings.
    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }

    /// Whether the connection is up now.
    pub fn connected(&self) -> bool {
        let up = self.client.connection_state() == State::Connected;
        super::telemetry::connected(up);
        up
    }

    pub(super) fn js(&self) -> &jetstream::Context {
        &self.js
    }

    pub(super) fn stream(&self) -> &stream::Stream {
        &self.stream
    }

    pub(super) fn leases(&self) -> &kv::Store {
        &self.leases
    }

    pub(super) fn state(&self) -> &kv::Store {
        &self.state
    }

    pub(super) fn snapshots(&self) -> &object_store::ObjectStore {
        &self.snapshots
    }

    /// The subject of decision `id` of `model`: one per decision, so that any replica can
    /// read it back by subject. The id is hex-encoded (ids may hold any character).
    pub(super) fn decision_subject(&self, model: &str, id: &str) -> String {
        use std::fmt::Write;
        let mut s = format!("{}.{model}.d.", self.config.subject_prefix);
        for b in id.as_bytes() {
            let _ = write!(s, "{b:02x}");
        }
        s
    }

    /// The subject of `model`'s rewards.
    pub(super) fn reward_subject(&self, model: &str) -> String {
        format!("{}.{model}.r", self.config.subject_prefix)
    }

    /// The subject of `model`'s window closings (published by its trainer).
    pub(super) fn closed_subject(&self, model: &str) -> String {
        format!("{}.{model}.c", self.config.subject_prefix)
    }

    /// Every event subject of `model` (the trainer's consumer filter).
    pub(super) fn model_filter(&self, model: &str) -> String {
        format!("{}.{model}.>", self.config.subject_prefix)
    }

    /// Which kind of event a subject of `model` carries.
    pub(super) fn kind_of(&self, subject: &str, model: &str) -> Option<EventKind> {
        let rest = subject
            .strip_prefix(self.config.subject_prefix.as_str())?
            .strip_prefix('.')?
            .strip_prefix(model)?
            .strip_prefix('.')?;
        match rest.split('.').next()? {
            "d" => Some(EventKind::Decision),
            "r" => Some(EventKind::Reward),
            "c" => Some(EventKind::Closed),
            _ => None,
        }
    }
}

/// The kinds of event in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EventKind {
    Decision,
    Reward,
    Closed,
}

/// Message ids JetStream deduplicates on (within `dedup_window_secs`).
pub(super) fn msg_id(kind: EventKind, model: &str, id: &str) -> String {
    let k = match kind {
        EventKind::Decision => 'd',
        EventKind::Reward => 'r',
        EventKind::Closed => 'c',
    };
    format!("{k}:{model}:{id}")
}

/// The KV key of `model`'s trainer lease.
pub(super) fn lease_key(model: &str) -> String {
    format!("{model}.trainer")
}

/// The KV key of `model`'s published version.
pub(super) fn version_key(model: &str) -> String {
    format!("{model}.version")
}

/// The KV key of `model`'s trainer epoch (bumped by every takeover).
pub(super) fn epoch_key(model: &str) -> String {
    format!("{model}.epoch")
}

#[cfg(test)]
mod tests {
    use super::servers;

    /// `cluster.url` is a comma-separated list; a bad address is named with the field.
    #[test]
    fn url_lists_split_and_bad_addresses_are_named() {
        assert_eq!(servers("nats://a:1, nats://b:2,").unwrap().len(), 2);
        let err = servers("nats://a:1,nats://b:port").unwrap_err().to_string();
        assert!(
            err.contains("cluster.url") && err.contains("nats://b:port"),
            "{err}"
        );
    }
}
