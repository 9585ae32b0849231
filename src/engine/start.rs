//! Startup: open the data directory, scan the log once, and bring every model back (newest
//! usable checkpoint, then its learner reads the log from there, then the open decisions go
//! back into the pending store); then start the log writer. And the matching shutdown.

use std::{
    collections::HashMap,
    sync::{Arc, atomic::AtomicU64},
    time::Duration,
};

use super::{Counters, Engine, ModelRuntime, Models, admin::Admin};
use crate::{
    config::{Config, ModelConfig, ModelKind},
    decisions::{Arms, Decision, PendingStore, UsedIds},
    domain::now_ms,
    error::Error,
    learner::{Learner, LearnerHandle, Resume},
    metrics,
    policy::holdout::GroupStats,
    registry::Registry,
    storage::{LogWriter, OpenDecision, Storage, VersionMark, checkpoint},
};

/// The engine's threads: the log writer (here) and one learner per model (held by the
/// engine, since the admin calls start and stop them). [`Background::shutdown`] stops them
/// in order: the writer commits what it has, then every learner reads the rest of the log,
/// trains, publishes and writes its final checkpoint.
#[derive(Debug)]
pub struct Background {
    pub(super) writer: LogWriter,
    /// Holds the data directory's lock until everything has stopped.
    pub(super) _storage: Storage,
}

impl Background {
    /// Flushes the log, stops the writer, then stops every learner (final checkpoints).
    /// Call after serving has stopped, from a thread that may block.
    pub fn shutdown(mut self, engine: &Engine) {
        engine.log.shutdown();
        self.writer.shutdown();
        if let Some(admin) = &engine.admin {
            admin.blocking_lock().stop_learners();
        }
    }
}

impl ModelRuntime {
    /// A served model around `learner`, with `pending`, `used_ids` and `counters` (new, or
    /// those of the runtime it replaces).
    pub(super) fn new(
        config: &ModelConfig,
        learner: LearnerHandle,
        pending: Arc<PendingStore>,
        used_ids: Arc<UsedIds>,
        counters: Arc<Counters>,
    ) -> Self {
        let heads = config
            .arms
            .iter()
            .enumerate()
            .map(|(i, a)| (a.clone(), i))
            .collect();
        Self {
            config: config.clone(),
            heads,
            learner,
            pending,
            used_ids,
            counters,
            metrics: metrics::ModelMetrics::new(
                &config.name,
                (config.kind == ModelKind::FixedArms).then_some(config.arms.as_slice()),
            ),
            arms: config.arms.iter().map(|a| Arc::from(a.as_str())).collect(),
        }
    }
}

/// Creates a model's metric series at zero (`server::run` does it for the configuration
/// file's models before recovery; models from the registry or the admin calls come here).
pub(super) fn init_metrics(model: &ModelConfig) {
    metrics::init_series(&[metrics::ModelSeries {
        name: &model.name,
        arms: (model.kind == ModelKind::FixedArms).then_some(model.arms.as_slice()),
        weight_layers: model.network.hidden_layers.len() + 1,
    }]);
}

/// The pending-store view of a logged decision.
pub(super) fn decision_from_record(open: OpenDecision) -> Decision {
    let d = open.record;
    let chosen = d.chosen as usize;
    let mut input = d.context;
    if let Some(c) = d.candidates.get(chosen) {
        input.extend_from_slice(&c.features);
    }
    Decision {
        arms: Arms::packed(d.candidates.iter().map(|c| c.id.as_str())),
        chosen: d.chosen,
        scores: d.scores.into(),
        id: d.decision_id,
        model_version: d.model_version,
        input: input.into(),
        head: d.head,
        propensity: d.propensity,
        explanation: None,
        request_hash: d.request_hash,
        holdout: d.holdout,
    }
}

impl Engine {
    /// Opens the data directory, recovers every model and starts the learners and the log
    /// writer. What recovery skips is logged and counted.
    ///
    /// # Errors
    /// The data directory cannot be opened or read, or a checkpoint's shape contradicts the
    /// configuration.
    pub fn start(config: &Config) -> Result<(Arc<Self>, Background), Error> {
        let storage = Storage::open(&config.storage)?;
        // Versions are kept per model by durable marks (`storage::VersionMark`); a data
        // directory of the earlier start-counter scheme is migrated first.
        if let Some(epoch) = storage.migrate_epoch()? {
            tracing::info!(
                epoch,
                "model versions migrated from the start counter to per-model marks"
            );
        }
        let (registry, seeded) =
            Registry::open(storage.data_dir(), &config.models, &config.limits)?;
        let entries = registry.entries().to_vec();
        if !seeded && entries.iter().map(|e| &e.config).ne(config.models.iter()) {
            tracing::warn!(
                registry = %storage.data_dir().join(crate::registry::FILE_NAME).display(),
                "the model registry differs from the configuration file's models: the registry \
                 wins (delete it while stopped to go back to the file)"
            );
        }
        let scan_started = std::time::Instant::now();
        // A model's counts and holdout groups start at its creation (records before it
        // belong to a deleted model of the same name).
        let mut recovered = storage.recover_models(
            &entries
                .iter()
                .map(|e| (e.config.name.clone(), e.created_lsn))
                .collect(),
        )?;
        let summary = recovered.summary;
        tracing::info!(
            segments = summary.segments,
            bytes = summary.bytes,
            records = summary.records,
            corrupt_segments = summary.corrupt_segments,
            torn_bytes = summary.torn_bytes,
            elapsed_ms = scan_started.elapsed().as_millis() as u64,
            "log scanned"
        );
        let mut checkpoints = HashMap::new();
        // Examples after the log's end that a checkpoint claims (a crash lost the log's
        // newest records after the learner had read them): new LSNs must start above them,
        // or the next recovery would take new examples for already trained.
        let mut first_lsn = summary.next_lsn;
        for model in entries.iter().map(|e| &e.config) {
            let (ck, skipped) =
                checkpoint::load_latest(storage.data_dir(), &model.name, &model.layer_widths())?;
            for reason in &skipped.reasons {
                tracing::warn!(model = %model.name, %reason, "skipped a checkpoint");
            }
            if !skipped.reasons.is_empty() {
                metrics::recovery_skipped("checkpoint", skipped.reasons.len() as u64);
            }
            if let Some(ck) = &ck {
                first_lsn = first_lsn.max(ck.meta.last_seq.saturating_add(1));
            }
            checkpoints.insert(model.name.clone(), ck);
        }
        let (log, writer) = storage.start_writer(first_lsn)?;
        let mut models = HashMap::new();
        let mut learners = HashMap::new();
        let now = now_ms();
        for entry in &entries {
            let model = &entry.config;
            if !config.models.iter().any(|m| m.name == model.name) {
                init_metrics(model);
            }
            let ck = checkpoints.remove(&model.name).flatten();
            let logged = recovered.models.remove(&model.name).unwrap_or_default();
            // Records older than the model belong to a deleted model of the same name.
            let from = ck
                .as_ref()
                .map_or(0, |c| c.meta.replay_from)
                .max(entry.created_lsn);
            let checkpoint_version = ck.as_ref().map(|c| c.meta.version);
            let learner = Learner::resume_marked(
                model,
                Box::new(log.tail(&model.name, from)),
                Resume {
                    checkpoint: ck,
                    catch_up_to: summary.next_lsn,
                    max_served_version: logged.max_version,
                    version_floor: 0,
                    data_dir: Some(storage.data_dir().to_owned()),
                    checkpoint_interval_secs: config.storage.checkpoint_interval_secs,
                    checkpoint_every_examples: config.storage.checkpoint_every_examples,
                    checkpoints_kept: config.storage.checkpoints_kept,
                },
                Some(VersionMark::open(storage.data_dir(), &model.name)?),
            )?;
            tracing::info!(
                model = %model.name,
                checkpoint = checkpoint_version,
                from_lsn = from,
                to_lsn = summary.next_lsn,
                examples = learner.handle().stats().examples.load(std::sync::atomic::Ordering::Relaxed),
                pending = logged.open.len(),
                "recovered"
            );
            let pending = PendingStore::new(model.reward_window(), model.pending.pending_capacity);
            for open in logged.open {
                if open.lsn < entry.created_lsn {
                    continue;
                }
                let age = Duration::from_millis(now.saturating_sub(open.record.decided_ms));
                let reward = open.reward;
                pending.restore(decision_from_record(open), age, reward);
            }
            let used_ids = UsedIds::new(
                config.storage.retention_hours.saturating_mul(3_600_000),
                config.limits.max_remembered_ids,
            );
            let mut forgotten = 0;
            for (decided_ms, hash) in logged.used_ids {
                forgotten += used_ids.insert(hash, decided_ms);
            }
            used_ids.prune(now);
            metrics::decision_ids_forgotten(&model.name, forgotten);
            let counters = Counters {
                decision_counter: AtomicU64::new(0),
                logged_decisions: logged.decisions,
                rewards: AtomicU64::new(0),
                logged_rewards: logged.rewards,
                groups: std::sync::Mutex::new(
                    logged
                        .groups
                        .map(|g| GroupStats::from_sums(g.n, g.sum, g.sum_sq)),
                ),
            };
            models.insert(
                model.name.clone(),
                Arc::new(ModelRuntime::new(
                    model,
                    learner.handle(),
                    Arc::new(pending),
                    Arc::new(used_ids),
                    Arc::new(counters),
                )),
            );
            learners.insert(model.name.clone(), learner);
        }
        let admin = Admin {
            registry,
            learners,
            data_dir: storage.data_dir().to_owned(),
            checkpoint_interval_secs: config.storage.checkpoint_interval_secs,
            checkpoint_every_examples: config.storage.checkpoint_every_examples,
            checkpoints_kept: config.storage.checkpoints_kept,
            retention_ms: config.storage.retention_hours.saturating_mul(3_600_000),
        };
        let engine = Self {
            models: arc_swap::ArcSwap::from_pointee(Models {
                map: models,
                order: entries.iter().map(|e| e.config.name.clone()).collect(),
            }),
            admin: Some(tokio::sync::Mutex::new(admin)),
            limits: config.limits.clone(),
            log,
            heavy: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_blocking_decisions,
            )),
            bus: None,
        };
        Ok((
            Arc::new(engine),
            Background {
                writer,
                _storage: storage,
            },
        ))
    }
}
