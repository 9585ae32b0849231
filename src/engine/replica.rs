//! Decide and report in cluster mode: the decision is made here as in single-process mode,
//! then stored through the [`EventBus`] (JetStream) instead of the local log; rewards are
//! checked against the stored decision (made by any replica) and stored with their example.
//! The join, window expiry and training happen in the model's trainer (`cluster/`).

use std::sync::{Arc, atomic::Ordering};

use super::{ModelRuntime, start::decision_from_record};
use crate::{
    config::ModelKind,
    decisions::{Decision, RewardOutcome},
    domain::now_ms,
    engine::bus::{EventBus, Stored},
    error::Error,
    metrics,
    storage::{Candidate as LoggedCandidate, DecisionRecord, ExampleRecord, RewardRecord},
};

/// The decision stored under `id` by any replica, if there is one: a retry gets it back (or
/// FAILED_PRECONDITION when its request differs, or when its reward window has passed: the
/// id is used, as in single-process mode). The stream is the cluster's used-id set: an id is
/// remembered as long as JetStream keeps its decision (`cluster.retention_secs`).
pub(super) async fn find(
    bus: &dyn EventBus,
    model: &ModelRuntime,
    id: &str,
    request_hash: u64,
) -> Result<Option<Arc<Decision>>, Error> {
    if !bus.connected() {
        return Ok(None);
    }
    let Some(record) = bus.find_decision(&model.config.name, id).await? else {
        return Ok(None);
    };
    let window = model.config.reward_window().as_millis() as u64;
    if now_ms() > record.decided_ms.saturating_add(window) {
        return Err(Error::DecisionIdUsed { id: id.to_owned() });
    }
    if record.request_hash != request_hash {
        return Err(Error::RetryMismatch { id: id.to_owned() });
    }
    Ok(Some(Arc::new(decision_from_record(open(record)))))
}

fn open(record: DecisionRecord) -> crate::storage::OpenDecision {
    crate::storage::OpenDecision {
        lsn: 0,
        record,
        reward: None,
    }
}

/// Stores `decision` and answers once JetStream has it. A concurrent retry of the same id on
/// another replica that stored first wins: its decision is returned.
pub(super) async fn publish_decision(
    bus: &dyn EventBus,
    model: &ModelRuntime,
    decision: Decision,
    context: Vec<f32>,
    candidates: Vec<LoggedCandidate>,
    chosen: usize,
    started: std::time::Instant,
) -> Result<Arc<Decision>, Error> {
    let name = &model.config.name;
    if !bus.connected() {
        if bus.serve_when_disconnected() {
            metrics::decision_unstored(name);
            return Ok(Arc::new(decision));
        }
        metrics::decision_refused_unstored(name);
        return Err(Error::Unavailable(
            "the cluster's event store (NATS) is unreachable; retry later".into(),
        ));
    }
    let record = DecisionRecord {
        model: name.clone(),
        decision_id: decision.id.clone(),
        decided_ms: now_ms(),
        context,
        candidates,
        chosen: u32::try_from(chosen).unwrap_or(u32::MAX),
        scores: decision.scores.to_vec(),
        model_version: decision.model_version,
        head: decision.head,
        propensity: decision.propensity,
        request_hash: decision.request_hash,
        holdout: decision.holdout,
    };
    let stored = bus.publish_decision(record).await;
    let decision = match stored {
        Ok(Stored::New) => Arc::new(decision),
        Ok(Stored::Duplicate) => {
            match find(bus, model, &decision.id, decision.request_hash).await? {
                Some(first) => first,
                None => {
                    return Err(Error::Unavailable(
                        "the decision was stored but cannot be read back yet; retry".into(),
                    ));
                }
            }
        }
        Err(e) => {
            metrics::decision_refused_unstored(name);
            return Err(e);
        }
    };
    let head = (model.config.kind == ModelKind::FixedArms).then_some(decision.head as usize);
    model.metrics.decision_made(head, started.elapsed());
    Ok(decision)
}

/// Stores a reward for a decision any replica made. NOT_FOUND for an id no replica stored, or
/// one whose window has closed; a retry (any replica) is a duplicate.
pub(super) async fn report_reward(
    bus: &dyn EventBus,
    model: &ModelRuntime,
    decision_id: &str,
    reward: f64,
    regret: Option<f64>,
    started: std::time::Instant,
) -> Result<RewardOutcome, Error> {
    let name = &model.config.name;
    if !bus.connected() {
        metrics::reward_refused_unstored(name);
        return Err(Error::Unavailable(
            "the cluster's event store (NATS) is unreachable; retry later".into(),
        ));
    }
    let Some(decision) = bus.find_decision(name, decision_id).await? else {
        return Err(Error::DecisionNotFound(decision_id.to_owned()));
    };
    let window = model.config.reward_window().as_millis() as u64;
    if now_ms() > decision.decided_ms.saturating_add(window) {
        return Err(Error::DecisionNotFound(decision_id.to_owned()));
    }
    let chosen = decision.chosen as usize;
    let mut input = decision.context;
    if let Some(c) = decision.candidates.get(chosen) {
        input.extend_from_slice(&c.features);
    }
    let record = RewardRecord {
        model: name.clone(),
        decision_id: decision_id.to_owned(),
        at_ms: now_ms(),
        regret,
        example: Some(ExampleRecord {
            input,
            head: decision.head,
            reward,
        }),
    };
    match bus.publish_reward(record).await? {
        Stored::New => {
            model.counters.rewards.fetch_add(1, Ordering::Relaxed);
            model
                .metrics
                .reward_accepted(reward, regret, started.elapsed());
            Ok(RewardOutcome::Accepted(()))
        }
        Stored::Duplicate => Ok(RewardOutcome::Duplicate(None)),
    }
}

impl super::Engine {
    /// Starts a cluster replica: every model serves the seeded initial network (version 0)
    /// until the snapshot watcher installs the trainer's, and its events go to `bus`. The
    /// data directory is opened only for its lock (its log stays empty: JetStream is the log).
    ///
    /// # Errors
    /// The data directory cannot be opened, or a model's network cannot be built.
    pub fn start_replica(
        config: &crate::config::Config,
        bus: Arc<dyn EventBus>,
    ) -> Result<(Arc<Self>, super::Background), Error> {
        let storage = crate::storage::Storage::open(&config.storage)?;
        let next = storage.recover()?.summary.next_lsn;
        let (log, writer) = storage.start_writer(next)?;
        // Replicas number their decisions from 0 each: a per-process salt keeps two replicas
        // from drawing the same posterior samples in the same order.
        let salt: u64 = rand::random();
        let mut models = std::collections::HashMap::new();
        for model in &config.models {
            let initial = crate::learner::Trainer::new(model)?.snapshot(0)?;
            let mut serving = model.clone();
            serving.seed ^= salt;
            models.insert(
                model.name.clone(),
                Arc::new(ModelRuntime::new(
                    &serving,
                    crate::learner::LearnerHandle::detached(initial),
                    Arc::new(crate::decisions::PendingStore::new(
                        model.reward_window(),
                        model.pending.pending_capacity,
                    )),
                    // Off: a replica sees only its own ids; a retried id on any replica finds
                    // its decision in JetStream instead (see README "Cluster mode").
                    Arc::new(crate::decisions::UsedIds::new(0, 0)),
                    Arc::new(super::Counters::default()),
                )),
            );
        }
        let engine = Self {
            models: arc_swap::ArcSwap::from_pointee(super::Models {
                map: models,
                order: config.models.iter().map(|m| m.name.clone()).collect(),
            }),
            admin: None,
            limits: config.limits.clone(),
            log,
            heavy: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_blocking_decisions,
            )),
            bus: Some(bus),
        };
        Ok((
            Arc::new(engine),
            super::Background {
                writer,
                _storage: storage,
            },
        ))
    }
}
