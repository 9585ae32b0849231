//! One trainer per model: a candidate takes the model's lease (a KV entry that lapses after
//! `lease_ttl_ms` unless renewed), then runs a session: bump the trainer epoch, load the last
//! snapshot, open a reader of the model's events at the snapshot's start sequence, train with the
//! ordinary learner on the join's examples, and upload a snapshot after every checkpoint the
//! learner writes. The session ends when the lease is lost (a standby then takes over) or at
//! shutdown (final snapshot, lease released so a standby takes over at once).

use std::{
    collections::VecDeque,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use async_nats::jetstream::{
    kv::{CreateErrorKind, Operation, UpdateErrorKind},
    object_store::GetErrorKind,
};
use tokio::{io::AsyncReadExt, sync::watch};

use super::{
    join::{self, JoinState, Progress, StreamSource},
    nats::{Nats, epoch_key, lease_key, version_key},
    reader::Reader,
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

/// A snapshot object by name, if it is stored.
async fn get_object(nats: &Nats, name: &str) -> Result<Option<Vec<u8>>, Error> {
    match nats.snapshots().get(name).await {
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

/// The version key of `model` and its KV revision, if set.
pub(super) async fn read_version(
    nats: &Nats,
    model: &str,
) -> Result<Option<(VersionValue, u64)>, Error> {
    let entry = nats
        .state()
        .entry(version_key(model))
        .await
        .map_err(|e| nats_err("version", e))?;
    match entry {
        Some(e) if e.operation == Operation::Put => {
            let value = serde_json::from_slice::<VersionValue>(&e.value).map_err(|err| {
                Error::Internal(format!(
                    "the version key of {model} is not a version: {err}"
                ))
            })?;
            Ok(Some((value, e.revision)))
        }
        _ => Ok(None),
    }
}

/// How often a reader re-reads the version key when the object it names is gone (a trainer
/// deletes an object two uploads after it, so a reader can lose that race only if it is
/// that slow).
const FETCH_ATTEMPTS: usize = 3;

/// The newest snapshot object of `model` (the one its version key names), if one was
/// uploaded.
pub(super) async fn fetch(nats: &Nats, model: &str) -> Result<Option<Vec<u8>>, Error> {
    for _ in 0..FETCH_ATTEMPTS {
        let Some((value, _)) = read_version(nats, model).await? else {
            return Ok(None);
        };
        let Some(object) = value.object else {
            return Ok(None);
        };
        if let Some(bytes) = get_object(nats, &object).await? {
            return Ok(Some(bytes));
        }
    }
    Err(Error::Unavailable(format!(
        "the snapshot object of {model} was replaced {FETCH_ATTEMPTS} times while reading it"
    )))
}

/// The version key's value: the version the cluster serves, the snapshot object holding it,
/// and the epoch of the trainer that wrote it (the fencing token: a trainer writes only by
/// compare-and-set on the revision it last wrote, and a new trainer's first write claims the
/// key, so a trainer that lost its lease cannot overwrite a newer one's version).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub(super) struct VersionValue {
    pub(super) version: u64,
    pub(super) published_ms: u64,
    /// The trainer epoch that wrote it.
    #[serde(default)]
    pub(super) epoch: u64,
    /// The object-store name of the snapshot (none before the first upload).
    #[serde(default)]
    pub(super) object: Option<String>,
}

/// A session's right to write the version key: the revision it wrote last, and the snapshot
/// objects it still keeps (the current one and the one before, for slow readers).
#[derive(Debug)]
struct Fence {
    epoch: u64,
    revision: u64,
    objects: VecDeque<String>,
}

/// What an upload did.
#[derive(Debug, PartialEq, Eq)]
enum Published {
    /// The version key names the new snapshot.
    Yes,
    /// A trainer of a newer epoch wrote the version key: this session must end.
    Fenced,
}

/// Snapshot objects a trainer keeps: the one the version key names and the one before.
const OBJECTS_KEPT: usize = 2;

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

    /// Claims the version key for this session's `epoch` (rewrites it with the epoch, by
    /// compare-and-set), so that a trainer of an older epoch that still believes it holds
    /// the lease fails its next write. `None` if a newer epoch claimed it first.
    async fn claim(&self, epoch: u64) -> Result<Option<(VersionValue, Fence)>, Error> {
        let key = version_key(&self.model.name);
        let state = self.nats.state();
        loop {
            let written = match read_version(&self.nats, &self.model.name).await? {
                Some((value, _)) if value.epoch > epoch => return Ok(None),
                Some((mut value, revision)) => {
                    value.epoch = epoch;
                    let bytes = version_bytes(&value)?;
                    match state.update(&key, bytes.into(), revision).await {
                        Ok(revision) => Some((value, revision)),
                        Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => None,
                        Err(e) => return Err(nats_err("claim version", e)),
                    }
                }
                None => {
                    let value = VersionValue {
                        version: 0,
                        published_ms: 0,
                        epoch,
                        object: None,
                    };
                    match state.create(&key, version_bytes(&value)?.into()).await {
                        Ok(revision) => Some((value, revision)),
                        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => None,
                        Err(e) => return Err(nats_err("claim version", e)),
                    }
                }
            };
            if let Some((value, revision)) = written {
                let fence = Fence {
                    epoch,
                    revision,
                    objects: value.object.iter().cloned().collect(),
                };
                return Ok(Some((value, fence)));
            }
        }
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
        let Some((served, mut fence)) = self.claim(epoch).await? else {
            tracing::warn!(model = %name, epoch, "a newer trainer claimed the model; standing by");
            return Ok(true);
        };
        let object = match &served.object {
            Some(object) => match get_object(&self.nats, object).await? {
                Some(bytes) => Some(snapshot::decode(&bytes)?),
                // Claimed, so no other trainer deletes it: this is a store that lost it.
                None => {
                    return Err(Error::Internal(format!(
                        "the snapshot object {object} of {name} is missing"
                    )));
                }
            },
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
        let stream = self.nats.stream();
        // The durable consumer of earlier versions: unused now, and a leftover would keep
        // its (replicated) state forever.
        let _ = stream.delete_consumer(&format!("trainer_{name}")).await;
        // The reader starts where the snapshot says: what the previous trainer read after its
        // last snapshot is read (and trained) again, once, here.
        let (reader, pending) = Reader::open(Arc::clone(&self.nats), &name, epoch, start).await?;
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
        let progress = Progress::new(start, pending);
        let (uploads_tx, mut uploads) = tokio::sync::mpsc::unbounded_channel();
        let (join_stop, join_stop_rx) = watch::channel(false);
        let join = tokio::spawn(join::run(
            Arc::clone(&self.nats),
            self.model.clone(),
            reader,
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
            max_served_version: served.version,
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
        // A checkpoint whose upload failed is uploaded again at every renewal until one
        // succeeds: the learner writes no new checkpoint while no new events come, so without
        // the retry the cluster would serve (and a new trainer resume from) an older snapshot
        // for as long as the model is idle.
        let mut owed = false;
        let lost = lost_early
            || loop {
                let attempt = tokio::select! {
                    _ = tick.tick() => {
                        if !lease.renew(&self.nats).await {
                            break true;
                        }
                        owed
                    }
                    Some(_) = uploads.recv() => {
                        owed = true;
                        true
                    }
                    _ = stop.changed() => break false,
                };
                if attempt {
                    match self.upload(&state, &lease, &mut fence).await {
                        Ok(Published::Yes) => owed = false,
                        Ok(Published::Fenced) => break true,
                        Err(e) => {
                            telemetry::snapshot_upload_failed(&name);
                            tracing::warn!(model = %name, error = %e, "snapshot upload failed; retrying");
                        }
                    }
                }
            };
        // The join stops first, so that the learner's source ends and it can stop.
        let _ = join_stop.send(true);
        let _ = join.await;
        let _ = tokio::task::spawn_blocking(move || learner.shutdown()).await;
        if !lost {
            if (uploads.try_recv().is_ok() || owed) && lease.renew(&self.nats).await {
                match self.upload(&state, &lease, &mut fence).await {
                    Ok(Published::Yes | Published::Fenced) => {}
                    Err(e) => {
                        tracing::warn!(model = %name, error = %e, "final snapshot upload failed");
                    }
                }
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
    /// position a new trainer starts from, as a new object, then points the version key at
    /// it by compare-and-set on the revision this session wrote last (the fence).
    async fn upload(
        &self,
        state: &Mutex<JoinState>,
        lease: &Lease,
        fence: &mut Fence,
    ) -> Result<Published, Error> {
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
        // A new name per version: an upload never replaces the object the key names, so a
        // fenced trainer's upload harms nothing (it deletes it again).
        let object = format!("{name}.v{}", header.version);
        self.nats
            .snapshots()
            .put(object.as_str(), &mut bytes.as_slice())
            .await
            .map_err(|e| nats_err("put snapshot", e))?;
        let value = VersionValue {
            version: header.version,
            published_ms: header.published_ms,
            epoch: fence.epoch,
            object: Some(object.clone()),
        };
        if !self.point_version(&value, fence).await? {
            tracing::warn!(
                model = %name,
                epoch = fence.epoch,
                "a newer trainer wrote the version: this one was fenced off and stops"
            );
            if fence.objects.back() != Some(&object) {
                let _ = self.nats.snapshots().delete(object.as_str()).await;
            }
            return Ok(Published::Fenced);
        }
        if fence.objects.back() != Some(&object) {
            fence.objects.push_back(object);
        }
        while fence.objects.len() > OBJECTS_KEPT {
            if let Some(old) = fence.objects.pop_front()
                && let Err(e) = self.nats.snapshots().delete(old.as_str()).await
            {
                tracing::warn!(model = %name, object = %old, error = %e, "cannot delete an old snapshot");
            }
        }
        state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .uploaded(meta.last_seq);
        telemetry::snapshot_published(name, header.version, bytes.len(), started.elapsed());
        tracing::debug!(model = %name, version = header.version, bytes = bytes.len(), "snapshot published");
        Ok(Published::Yes)
    }

    /// Writes `value` to the version key if this session wrote it last; `false` if a trainer
    /// of another epoch wrote it since (this session is fenced off).
    async fn point_version(&self, value: &VersionValue, fence: &mut Fence) -> Result<bool, Error> {
        let key = version_key(&self.model.name);
        let bytes = version_bytes(value)?;
        loop {
            match self
                .nats
                .state()
                .update(&key, bytes.clone().into(), fence.revision)
                .await
            {
                Ok(revision) => {
                    fence.revision = revision;
                    return Ok(true);
                }
                Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => {
                    // Our own earlier write whose answer was lost (a timeout) moved the
                    // revision too: same epoch, so adopt it and write again.
                    match read_version(&self.nats, &self.model.name).await? {
                        Some((current, revision))
                            if current.epoch == fence.epoch && revision != fence.revision =>
                        {
                            fence.revision = revision;
                        }
                        _ => return Ok(false),
                    }
                }
                Err(e) => return Err(nats_err("put version", e)),
            }
        }
    }
}

fn version_bytes(value: &VersionValue) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(format!("version value: {e}")))
}
