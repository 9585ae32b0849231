//! One trainer per model: a candidate takes the model's lease (a KV entry that lapses after
//! `lease_ttl_ms` unless renewed), then runs a session: bump the trainer epoch, load the last
//! snapshot, re-create the durable consumer at the snapshot's start sequence, train with the
//! ordinary learner on the join's examples, and upload a snapshot after every checkpoint the
//! learner writes. The session ends when the lease is lost (a standby then takes over) or at
//! shutdown (final snapshot, lease released so a standby takes over at once).

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    consumer::{AckPolicy, DeliverPolicy, pull},
    kv::{CreateErrorKind, Operation, UpdateErrorKind},
    object_store::GetErrorKind,
};
use tokio::{io::AsyncReadExt, sync::watch};

use super::{
    join::{self, JoinState, Progress, StreamSource},
    nats::{Nats, epoch_key, lease_key, version_key},
    snapshot::{self, Header},
    telemetry,
};
use crate::{
    config::ModelConfig,
    domain::now_ms,
    error::Error,
    learner::{Learner, Resume},
};

fn nats_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Unavailable(format!("NATS: {what}: {e}"))
}

/// The newest snapshot object of `model`, if one was uploaded.
pub(super) async fn fetch(nats: &Nats, model: &str) -> Result<Option<Vec<u8>>, Error> {
    match nats.snapshots().get(model).await {
        Ok(mut object) => {
            let mut bytes = Vec::new();
            object
                .read_to_end(&mut bytes)
                .await
                .map_err(|e| nats_err("read snapshot", e))?;
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == GetErrorKind::NotFound => Ok(None),
        Err(e) => Err(nats_err("get snapshot", e)),
    }
}

/// The version key's value.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct VersionValue {
    pub(super) version: u64,
    pub(super) published_ms: u64,
}

/// A held lease: renewed by compare-and-set on its KV revision.
#[derive(Debug)]
struct Lease {
    key: String,
    holder: String,
    revision: u64,
    renewed: Instant,
    ttl: Duration,
}

impl Lease {
    /// Renews; `false` once the lease is lost (another holder, or no renewal for a TTL).
    async fn renew(&mut self, nats: &Nats) -> bool {
        match nats
            .leases()
            .update(&self.key, self.holder.clone().into(), self.revision)
            .await
        {
            Ok(revision) => {
                self.revision = revision;
                self.renewed = Instant::now();
                true
            }
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => false,
            Err(e) => {
                tracing::warn!(key = %self.key, error = %e, "lease renewal failed");
                self.renewed.elapsed() < self.ttl
            }
        }
    }

    /// Whether this process may still act as the trainer: renewed within two thirds of the
    /// TTL, so the lease cannot have lapsed in KV (a standby could hold it then).
    fn valid(&self) -> bool {
        self.renewed.elapsed() < self.ttl * 2 / 3
    }
}

/// A trainer candidate for one model.
#[derive(Debug)]
pub(super) struct Candidate {
    nats: Arc<Nats>,
    model: ModelConfig,
    dir: PathBuf,
    holder: String,
}

impl Candidate {
    pub(super) fn new(nats: Arc<Nats>, model: ModelConfig, dir: PathBuf) -> Self {
        let holder = format!(
            "{}-{}-{:08x}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "banditd".into()),
            std::process::id(),
            rand::random::<u32>()
        );
        Self {
            nats,
            model,
            dir,
            holder,
        }
    }

    /// Competes for the lease until `stop`; runs a session whenever it holds it.
    pub(super) async fn run(self, mut stop: watch::Receiver<bool>) {
        let ttl = Duration::from_millis(self.nats.config().lease_ttl_ms);
        let name = self.model.name.clone();
        loop {
            if *stop.borrow() {
                return;
            }
            let key = lease_key(&name);
            if let Ok(revision) = self
                .nats
                .leases()
                .create(&key, self.holder.clone().into())
                .await
            {
                telemetry::lease_acquired(&name);
                tracing::info!(model = %name, holder = %self.holder, "trainer lease acquired");
                let lease = Lease {
                    key,
                    holder: self.holder.clone(),
                    revision,
                    renewed: Instant::now(),
                    ttl,
                };
                let lost = match self.session(lease, &mut stop).await {
                    Ok(lost) => lost,
                    Err(e) => {
                        tracing::error!(model = %name, error = %e, "trainer session failed");
                        true
                    }
                };
                telemetry::lease_released(&name, lost);
                tracing::info!(model = %name, lost, "trainer lease given up");
            }
            tokio::select! {
                () = tokio::time::sleep(ttl / 3) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Bumps the model's trainer epoch; versions of this session start above `epoch × 2^32`.
    async fn bump_epoch(&self) -> Result<u64, Error> {
        let key = epoch_key(&self.model.name);
        let state = self.nats.state();
        loop {
            let entry = state.entry(&key).await.map_err(|e| nats_err("epoch", e))?;
            match entry {
                Some(e) if e.operation == Operation::Put => {
                    let n = std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0)
                        + 1;
                    match state.update(&key, n.to_string().into(), e.revision).await {
                        Ok(_) => return Ok(n),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {}
                        Err(e) => return Err(nats_err("epoch", e)),
                    }
                }
                _ => match state.create(&key, "1".into()).await {
                    Ok(_) => return Ok(1),
                    Err(e) if e.kind() == CreateErrorKind::AlreadyExists => {}
                    Err(e) => return Err(nats_err("epoch", e)),
                },
            }
        }
    }

    /// The version the cluster serves now (0 before any snapshot).
    async fn served_version(&self) -> Result<u64, Error> {
        let value = self
            .nats
            .state()
            .get(version_key(&self.model.name))
            .await
            .map_err(|e| nats_err("version", e))?;
        Ok(value
            .and_then(|v| serde_json::from_slice::<VersionValue>(&v).ok())
            .map_or(0, |v| v.version))
    }

    /// Trains while the lease holds. Returns whether the lease was lost (rather than given
    /// up at shutdown).
    async fn session(
        &self,
        mut lease: Lease,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<bool, Error> {
        let name = self.model.name.clone();
        let config = self.nats.config().clone();
        let epoch = self.bump_epoch().await?;
        let object = match fetch(&self.nats, &name).await? {
            Some(bytes) => Some(snapshot::decode(&bytes)?),
            None => None,
        };
        let checkpoint = match &object {
            Some(o) => Some(snapshot::checkpoint(&self.dir, &self.model, o)?),
            None => {
                let _ = std::fs::remove_dir_all(self.dir.join("checkpoints").join(&name));
                None
            }
        };
        let (covered, start, preloaded) = object.map_or((0, 1, Vec::new()), |o| {
            (o.header.last_seq, o.header.start_seq, o.examples)
        });
        let durable = format!("trainer_{name}");
        let stream = self.nats.stream();
        // The consumer restarts where the snapshot says: what the previous trainer read
        // after its last snapshot is read (and trained) again, once, here.
        let _ = stream.delete_consumer(&durable).await;
        let consumer = stream
            .create_consumer(pull::Config {
                durable_name: Some(durable),
                filter_subject: self.nats.model_filter(&name),
                deliver_policy: DeliverPolicy::ByStartSequence {
                    start_sequence: start.max(1),
                },
                ack_policy: AckPolicy::None,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("consumer", e))?;
        let pending = consumer.cached_info().num_pending;
        let last = stream
            .get_info()
            .await
            .map_err(|e| nats_err("stream info", e))?
            .state
            .last_sequence;
        let (tx, rx) = crossbeam_channel::unbounded();
        for example in &preloaded {
            let _ = tx.send(example.clone());
        }
        let state = Arc::new(Mutex::new(JoinState::new(&self.model, covered, &preloaded)));
        let progress = Progress::new(pending);
        let (uploads_tx, mut uploads) = tokio::sync::mpsc::unbounded_channel();
        let (join_stop, join_stop_rx) = watch::channel(false);
        let join = tokio::spawn(join::run(
            Arc::clone(&self.nats),
            self.model.clone(),
            consumer,
            Arc::clone(&state),
            tx,
            Arc::clone(&progress),
            join_stop_rx,
        ));
        let source = StreamSource {
            rx,
            progress,
            checkpoints: uploads_tx,
        };
        let resume = Resume {
            checkpoint,
            catch_up_to: last.saturating_add(1),
            max_served_version: self.served_version().await?,
            version_floor: epoch << 32,
            data_dir: Some(self.dir.clone()),
            checkpoint_interval_secs: config.snapshot_interval_secs,
            checkpoint_every_examples: config.snapshot_every_examples,
            // The trainer's local copies (only the newest is uploaded): the storage default.
            checkpoints_kept: crate::config::StorageConfig::default().checkpoints_kept,
        };
        tracing::info!(model = %name, epoch, from_seq = start, to_seq = last, "trainer resuming");
        let model = self.model.clone();
        let mut starting =
            tokio::task::spawn_blocking(move || Learner::resume(&model, Box::new(source), resume));
        let mut tick = tokio::time::interval(lease.ttl / 3);
        // Catching up may take a while: the lease is renewed meanwhile (the catch-up itself
        // cannot be interrupted; a lease lost during it ends the session right after).
        let mut lost_early = false;
        let started = loop {
            tokio::select! {
                started = &mut starting => break started,
                _ = tick.tick() => {
                    if !lost_early && !lease.renew(&self.nats).await {
                        tracing::warn!(model = %name, "lease lost while catching up");
                        lost_early = true;
                    }
                }
            }
        };
        let mut learner = match started {
            Ok(Ok(learner)) => learner,
            Ok(Err(e)) => {
                let _ = join_stop.send(true);
                let _ = join.await;
                return Err(e);
            }
            Err(e) => {
                let _ = join_stop.send(true);
                let _ = join.await;
                return Err(Error::Internal(format!("learner start panicked: {e}")));
            }
        };
        let lost = lost_early
            || loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if !lease.renew(&self.nats).await {
                            break true;
                        }
                    }
                    Some(_) = uploads.recv() => {
                        if let Err(e) = self.upload(&state, &lease).await {
                            tracing::warn!(model = %name, error = %e, "snapshot upload failed");
                        }
                    }
                    _ = stop.changed() => break false,
                }
            };
        // The join stops first, so that the learner's source ends and it can stop.
        let _ = join_stop.send(true);
        let _ = join.await;
        let _ = tokio::task::spawn_blocking(move || learner.shutdown()).await;
        if !lost {
            if uploads.try_recv().is_ok()
                && lease.renew(&self.nats).await
                && let Err(e) = self.upload(&state, &lease).await
            {
                tracing::warn!(model = %name, error = %e, "final snapshot upload failed");
            }
            // Given up on purpose: a standby need not wait for the TTL.
            let _ = self
                .nats
                .leases()
                .delete_expect_revision(&lease.key, Some(lease.revision))
                .await;
        }
        Ok(lost)
    }

    /// Uploads the learner's newest checkpoint with the replay window and the stream
    /// position a new trainer starts from, then sets the version key.
    async fn upload(&self, state: &Mutex<JoinState>, lease: &Lease) -> Result<(), Error> {
        let started = Instant::now();
        let name = &self.model.name;
        let (meta, meta_json, weights) = snapshot::newest_files(&self.dir, name)?;
        let (start_seq, examples) = {
            let s = state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (
                s.resume_point(meta.last_seq),
                s.replay_window(meta.last_seq),
            )
        };
        let header = Header {
            model: name.clone(),
            version: meta.version,
            published_ms: now_ms(),
            last_seq: meta.last_seq,
            start_seq,
            examples_trained: meta.reward_n,
            steps: meta.steps,
        };
        let bytes = snapshot::encode(&header, &meta_json, &weights, &examples)?;
        if !lease.valid() {
            return Err(Error::Unavailable(
                "the lease may have lapsed: not uploading".into(),
            ));
        }
        self.nats
            .snapshots()
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| nats_err("put snapshot", e))?;
        let value = serde_json::to_vec(&VersionValue {
            version: header.version,
            published_ms: header.published_ms,
        })
        .map_err(|e| Error::Internal(format!("version value: {e}")))?;
        self.nats
            .state()
            .put(version_key(name), value.into())
            .await
            .map_err(|e| nats_err("put version", e))?;
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .uploaded(meta.last_seq);
        telemetry::snapshot_published(name, header.version, bytes.len(), started.elapsed());
        tracing::debug!(model = %name, version = header.version, bytes = bytes.len(), "snapshot published");
        Ok(())
    }
}
