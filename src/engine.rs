//! The decision service without its transport: models by name, request validation, the
//! Thompson-sampling decision, the reward join, and the expiry sweep.
//!
//! Every request is validated here against its model's configuration, with messages that name
//! the field by its wire path (`candidates[2].features`), so any transport gets the same
//! errors. `grpc/` only converts messages and maps [`Error`]s to status codes.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::time::Instant;

use crate::{
    config::{Config, LimitsConfig, ModelConfig, ModelKind},
    decisions::{Decision, PendingStore, RewardOutcome},
    error::Error,
    learner::{Learner, LearnerHandle, Resume},
    metrics,
    policy::{self, Inputs},
    storage::{
        self, Closed, DecisionRow, Log, LogWriter, LoggedCandidate, OnLogFull, Storage, checkpoint,
    },
};

/// The pending-store view of a logged decision.
fn decision_from_row(row: DecisionRow) -> Decision {
    Decision {
        id: row.decision_id,
        arm_id: row.arm_id,
        scores: row
            .candidates
            .into_iter()
            .map(|c| c.id)
            .zip(row.scores)
            .collect(),
        model_version: row.model_version,
        input: row.input,
        head: row.head,
        propensity: row.propensity,
        explanation: None,
    }
}

/// A candidate arm in a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The arm id.
    pub id: String,
    /// Its features (per-arm models only).
    pub features: Vec<f32>,
}

/// A `ChooseArm` request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ChooseArm {
    /// Model name.
    pub model: String,
    /// The context.
    pub context: Vec<f32>,
    /// Candidates (empty = every configured arm of a fixed-arm model).
    pub candidates: Vec<Candidate>,
    /// Arm ids that must not be chosen.
    pub excluded_arm_ids: Vec<String>,
    /// Client-chosen id, or empty for a server-made one.
    pub decision_id: String,
    /// Posterior samples estimating the propensity (0 = the model's setting).
    pub propensity_samples: u32,
    /// Posterior samples explaining every candidate (0 = no explanation).
    pub explain_samples: u32,
}

/// A `ReportReward` request.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportReward {
    /// Model name.
    pub model: String,
    /// The decision the reward belongs to.
    pub decision_id: String,
    /// The reward.
    pub reward: f64,
    /// The decision's true regret, if the caller knows it.
    pub regret: Option<f64>,
}

/// A model's configuration and counters.
#[derive(Debug, Clone)]
pub struct ModelStatus {
    /// Its configuration.
    pub config: ModelConfig,
    /// Version of the weights now serving.
    pub model_version: u64,
    /// Decisions made.
    pub decisions: u64,
    /// Rewards accepted.
    pub rewards: u64,
    /// SGD steps taken.
    pub training_steps: u64,
    /// Decisions waiting for a reward.
    pub pending_decisions: u64,
}

/// One served model: its learner, its pending decisions, its counters.
#[derive(Debug)]
struct ModelRuntime {
    config: ModelConfig,
    /// Fixed-arm models: arm id -> output head.
    heads: HashMap<String, usize>,
    learner: LearnerHandle,
    pending: PendingStore,
    /// Numbers the decisions, and so seeds each decision's RNG; never reused in a process.
    decision_counter: AtomicU64,
    rewards: AtomicU64,
}

/// The running service: every configured model. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    models: HashMap<String, ModelRuntime>,
    /// Configured order, for `ListModels`.
    order: Vec<String>,
    limits: LimitsConfig,
    /// The decision/reward log; its writer hands committed examples to the learners.
    log: Log,
}

/// The engine's threads: the log writer and one learner per model. [`Background::shutdown`]
/// stops them in order: the writer commits and hands over what it has, then every learner
/// trains on its queue, publishes and writes its final checkpoint.
#[derive(Debug)]
pub struct Background {
    learners: Vec<Learner>,
    writer: LogWriter,
}

impl Background {
    /// Flushes the log, stops the writer, then stops every learner (final checkpoints).
    /// Call after serving has stopped.
    pub fn shutdown(mut self, engine: &Engine) {
        engine.log.shutdown();
        self.writer.shutdown();
        for learner in &mut self.learners {
            learner.shutdown();
        }
    }
}

/// Posterior samples a decision asks for beyond its own.
#[derive(Debug, Clone, Copy)]
struct Samples {
    propensity: usize,
    explain: usize,
}

/// A decision with the propensity and explanation asked for.
struct Explained {
    choice: policy::Choice,
    propensity: Option<f64>,
    explanation: Option<Vec<policy::Spread>>,
}

impl std::ops::Deref for Explained {
    type Target = policy::Choice;
    fn deref(&self) -> &policy::Choice {
        &self.choice
    }
}

/// Decides by the snapshot's policy, then (with the same RNG) estimates the propensity (exact
/// and always for the baselines; from `samples.propensity` more posterior samples for the
/// Thompson policies, if any) and the explanation (if asked).
fn decide(
    snapshot: &crate::model::Snapshot,
    inputs: Inputs<'_>,
    samples: Samples,
    rng: &mut Xoshiro256PlusPlus,
) -> Result<Explained, Error> {
    let choice = policy::decide(snapshot, inputs, rng)?;
    // A baseline decision's scores are the mean network's: its greedy choice is their argmax,
    // so the exact propensity needs no second forward pass.
    let exact = policy::exact_propensity(
        snapshot.policy,
        inputs.len(),
        choice.best,
        policy::argmax(&choice.scores),
    );
    let propensity = match exact {
        Some(p) => Some(p),
        None if samples.propensity > 0 => Some(policy::propensity(
            snapshot,
            inputs,
            choice.best,
            samples.propensity,
            rng,
        )?),
        None => None,
    };
    let explanation = if samples.explain > 0 {
        Some(policy::explain(snapshot, inputs, samples.explain, rng)?)
    } else {
        None
    };
    Ok(Explained {
        choice,
        propensity,
        explanation,
    })
}

/// A requested number of posterior samples, at most `limits.max_posterior_samples`.
fn check_samples(limits: &LimitsConfig, field: &str, value: u32) -> Result<usize, Error> {
    let value = usize::try_from(value).unwrap_or(usize::MAX);
    if value > limits.max_posterior_samples {
        return Err(Error::invalid(
            field,
            format!(
                "{value} samples is more than the limit of {}",
                limits.max_posterior_samples
            ),
        ));
    }
    Ok(value)
}

/// Odd 64-bit constant (2^64 / golden ratio) spreading decision numbers over seed space.
const SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

impl Engine {
    /// Opens the data directory, recovers every model (newest usable checkpoint, then the
    /// log after it, then the pending decisions) and starts the learners and the log writer.
    /// What recovery skips is logged and counted.
    ///
    /// # Errors
    /// The data directory cannot be opened, or a checkpoint's shape contradicts the
    /// configuration.
    pub fn start(config: &Config) -> Result<(Arc<Self>, Background), Error> {
        let storage = Storage::open(&config.storage)?;
        // Each start is a new epoch, recorded durably before anything is served: versions of
        // this run start above every version an earlier run could have published.
        let epoch = storage.begin_epoch()?;
        let mut models = HashMap::new();
        let mut learners = Vec::new();
        let mut handles = HashMap::new();
        let mut next_seq = HashMap::new();
        let now_ms = storage::now_ms();
        for model in &config.models {
            let (ck, skipped) =
                checkpoint::load_latest(storage.data_dir(), &model.name, &model.layer_widths())?;
            for reason in &skipped.reasons {
                tracing::warn!(model = %model.name, %reason, "skipped a checkpoint");
            }
            if !skipped.reasons.is_empty() {
                metrics::recovery_skipped("checkpoint", skipped.reasons.len() as u64);
            }
            let recovery = storage.recover(
                &model.name,
                ck.as_ref().map(|c| c.meta.last_seq),
                model.replay_capacity,
            )?;
            tracing::info!(
                model = %model.name,
                checkpoint = ck.as_ref().map(|c| c.meta.version),
                examples = recovery.examples.len(),
                pending = recovery.pending.len(),
                "recovered"
            );
            // Example sequence numbers start at 1 and never fall back to what the checkpoint
            // covers: a checkpoint taken before any example records `last_seq` 0, and a log
            // moved aside as corrupt restarts empty; an example numbered at or below the
            // checkpoint's `last_seq` would be taken for already trained by the next recovery.
            let first_seq = recovery
                .next_seq
                .max(ck.as_ref().map_or(1, |c| c.meta.last_seq.saturating_add(1)));
            let learner = Learner::resume(
                model,
                Resume {
                    checkpoint: ck,
                    examples: recovery.examples,
                    max_served_version: recovery.max_version,
                    version_floor: epoch << 32,
                    data_dir: Some(storage.data_dir().to_owned()),
                    checkpoint_interval_secs: config.storage.checkpoint_interval_secs,
                },
            )?;
            let pending = PendingStore::new(model.reward_window(), model.pending_capacity);
            for row in recovery.pending {
                let age = Duration::from_millis(now_ms.saturating_sub(row.decided_ms));
                let reward = row.reward;
                pending.restore(decision_from_row(row), age, reward);
            }
            let heads = model
                .arms
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), i))
                .collect();
            handles.insert(model.name.clone(), learner.handle());
            next_seq.insert(model.name.clone(), first_seq);
            models.insert(
                model.name.clone(),
                ModelRuntime {
                    config: model.clone(),
                    heads,
                    learner: learner.handle(),
                    pending,
                    decision_counter: AtomicU64::new(0),
                    rewards: AtomicU64::new(0),
                },
            );
            learners.push(learner);
        }
        let (log, writer) = storage.start_writer(handles, next_seq)?;
        let engine = Self {
            models,
            order: config.models.iter().map(|m| m.name.clone()).collect(),
            limits: config.limits.clone(),
            log,
        };
        Ok((Arc::new(engine), Background { learners, writer }))
    }

    /// Resolves once everything logged so far is committed and fsynced.
    ///
    /// # Errors
    /// The log writer has stopped or its commit failed.
    pub async fn flush(&self) -> Result<(), Error> {
        self.log
            .flush()?
            .await
            .map_err(|_| Error::Unavailable("log writer stopped".into()))?
    }

    fn model(&self, name: &str) -> Result<&ModelRuntime, Error> {
        if name.is_empty() {
            return Err(Error::invalid("model", "must not be empty"));
        }
        self.models
            .get(name)
            .ok_or_else(|| Error::ModelNotFound(name.to_owned()))
    }

    /// Chooses an arm by Thompson sampling: one posterior sample scores every candidate.
    ///
    /// # Errors
    /// NOT_FOUND-class for an unknown model, INVALID_ARGUMENT-class for a malformed request,
    /// RESOURCE_EXHAUSTED-class when the log writer's queue is full and `storage.on_log_full`
    /// is `reject` (or `sync_decisions` is set).
    pub async fn choose_arm(&self, req: ChooseArm) -> Result<Arc<Decision>, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        check_id(&self.limits, "decision_id", &req.decision_id, true)?;
        if !req.decision_id.is_empty()
            && let Some(existing) = model.pending.get(&req.decision_id)
        {
            return Ok(existing);
        }
        check_vector(
            "context",
            &req.context,
            model.config.context_dim,
            self.limits.max_abs_value,
        )?;
        if req.candidates.len() > self.limits.max_candidates {
            return Err(Error::invalid(
                "candidates",
                format!(
                    "{} candidates is more than the limit of {}",
                    req.candidates.len(),
                    self.limits.max_candidates
                ),
            ));
        }
        let samples = Samples {
            propensity: match check_samples(
                &self.limits,
                "propensity_samples",
                req.propensity_samples,
            )? {
                0 => model.config.propensity_samples,
                n => n,
            },
            explain: check_samples(&self.limits, "explain_samples", req.explain_samples)?,
        };
        let excluded: HashSet<&str> = req.excluded_arm_ids.iter().map(String::as_str).collect();
        let snapshot = model.learner.snapshot();
        let n = model.decision_counter.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(model.config.seed ^ n.wrapping_mul(SEED_STRIDE));

        let (ids, choice, input, head, logged_candidates) = match model.config.kind {
            ModelKind::FixedArms => {
                let ids = model.fixed_candidates(&req, &excluded)?;
                let heads: Vec<usize> = ids.iter().map(|id| model.heads[*id]).collect();
                let choice = decide(
                    &snapshot,
                    Inputs::Heads {
                        context: &req.context,
                        heads: &heads,
                    },
                    samples,
                    &mut rng,
                )?;
                let head = heads[choice.best];
                let logged = ids
                    .iter()
                    .map(|id| LoggedCandidate {
                        id: (*id).to_owned(),
                        features: Vec::new(),
                    })
                    .collect();
                (ids, choice, req.context.clone(), head, logged)
            }
            ModelKind::PerArmFeatures => {
                let kept = model.per_arm_candidates(&self.limits, &req, &excluded)?;
                let width = model.config.input_dim();
                let mut values = Vec::with_capacity(kept.len() * width);
                for c in &kept {
                    values.extend_from_slice(&req.context);
                    values.extend_from_slice(&c.features);
                }
                let choice = decide(
                    &snapshot,
                    Inputs::Rows {
                        values: &values,
                        rows: kept.len(),
                    },
                    samples,
                    &mut rng,
                )?;
                let input = values[choice.best * width..(choice.best + 1) * width].to_vec();
                let logged = kept
                    .iter()
                    .map(|c| LoggedCandidate {
                        id: c.id.clone(),
                        features: c.features.clone(),
                    })
                    .collect();
                (
                    kept.iter().map(|c| c.id.as_str()).collect(),
                    choice,
                    input,
                    0,
                    logged,
                )
            }
        };
        let id = if req.decision_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            req.decision_id.clone()
        };
        let arm_id = ids[choice.best].to_owned();
        let decision = Decision {
            id,
            arm_id,
            scores: ids
                .iter()
                .map(|s| (*s).to_owned())
                .zip(choice.choice.scores)
                .collect(),
            model_version: snapshot.version,
            propensity: choice.propensity,
            explanation: choice.explanation,
            input,
            head: u32::try_from(head).map_err(|_| Error::Internal("head index overflow".into()))?,
        };
        let name = &model.config.name;
        let refuse = self.log.sync_decisions() || self.log.on_full() == OnLogFull::Reject;
        if refuse && self.log.is_full() {
            // Refused before it is stored, so it evicts nothing.
            metrics::decision_refused(name);
            return Err(Error::Overloaded("log writer queue"));
        }
        let inserted = model.pending.insert(decision);
        if !inserted.evicted.is_empty() {
            metrics::decisions_evicted(name, inserted.evicted.len() as u64);
            for old in &inserted.evicted {
                // Queue full: the decision stays open in the log and expires after a restart.
                let _ = self.log.close(name, &old.id, Closed::Evicted, None);
            }
        }
        let stored = inserted.decision;
        if inserted.new {
            let row = DecisionRow {
                model: name.clone(),
                decision_id: stored.id.clone(),
                decided_ms: storage::now_ms(),
                context: req.context,
                candidates: logged_candidates,
                arm_id: stored.arm_id.clone(),
                scores: stored.scores.iter().map(|(_, s)| *s).collect(),
                model_version: stored.model_version,
                input: stored.input.clone(),
                head: stored.head,
                propensity: stored.propensity,
                reward: None,
                reward_ms: None,
                regret: None,
                closed: None,
            };
            match self.log.decision(row) {
                Ok(None) => {}
                Ok(Some(ack)) => ack
                    .await
                    .map_err(|_| Error::Unavailable("log writer stopped".into()))??,
                Err(e) if refuse => {
                    // The client is told there is no decision: a retry of its id or a reward
                    // must not find one.
                    model.pending.remove(&stored.id);
                    if matches!(e, Error::Overloaded(_)) {
                        metrics::decision_refused(name);
                    }
                    return Err(e);
                }
                Err(_) => metrics::decision_unlogged(name),
            }
        }
        let arm_label =
            (model.config.kind == ModelKind::FixedArms).then_some(stored.arm_id.as_str());
        metrics::decision_made(name, arm_label, started.elapsed());
        Ok(stored)
    }

    /// Joins a reward to its decision, logs it, and answers once the log commit is durable
    /// (under the configured durability); the log writer then hands the example to the
    /// model's learner. Returns whether this was a retry of an accepted reward.
    ///
    /// # Errors
    /// Unknown model or decision (NOT_FOUND-class), a non-finite reward or regret
    /// (INVALID_ARGUMENT-class), a conflicting reward, a full log queue (RESOURCE_EXHAUSTED;
    /// the decision stays open), or a failed commit.
    pub async fn report_reward(&self, req: ReportReward) -> Result<RewardOutcome, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        check_id(&self.limits, "decision_id", &req.decision_id, false)?;
        if !req.reward.is_finite() {
            return Err(Error::invalid(
                "reward",
                format!("{} is not finite", req.reward),
            ));
        }
        if req.reward.abs() > self.limits.max_abs_reward {
            return Err(Error::invalid(
                "reward",
                format!(
                    "{:e} is beyond limits.max_abs_reward ({:e})",
                    req.reward, self.limits.max_abs_reward
                ),
            ));
        }
        if let Some(regret) = req.regret
            && !(regret.is_finite() && regret >= 0.0)
        {
            return Err(Error::invalid(
                "regret",
                format!("{regret} is not a finite non-negative number"),
            ));
        }
        let name = &model.config.name;
        let outcome = model
            .pending
            .record_reward(&req.decision_id, req.reward, |decision| {
                self.log
                    .reward(name, decision, req.reward, req.regret)
                    .inspect_err(|e| {
                        if matches!(e, Error::Overloaded(_)) {
                            metrics::reward_dropped(name);
                        }
                    })
            })?;
        let RewardOutcome::Accepted(ack) = outcome else {
            return Ok(RewardOutcome::Duplicate);
        };
        let committed = match ack.await {
            Ok(result) => result,
            Err(_) => Err(Error::Unavailable("log writer stopped".into())),
        };
        if let Err(e) = committed {
            model.pending.revert_reward(&req.decision_id, req.reward);
            return Err(e);
        }
        model.rewards.fetch_add(1, Ordering::Relaxed);
        metrics::reward_accepted(name, req.reward, req.regret, started.elapsed());
        Ok(RewardOutcome::Accepted(()))
    }

    /// One model's configuration and counters.
    ///
    /// # Errors
    /// Unknown model.
    pub fn model_status(&self, name: &str) -> Result<ModelStatus, Error> {
        let model = self.model(name)?;
        Ok(ModelStatus {
            config: model.config.clone(),
            model_version: model.learner.snapshot().version,
            decisions: model.decision_counter.load(Ordering::Relaxed),
            rewards: model.rewards.load(Ordering::Relaxed),
            training_steps: model.learner.stats().steps.load(Ordering::Relaxed),
            pending_decisions: model.pending.len() as u64,
        })
    }

    /// Every model's status, in configured order.
    pub fn list_models(&self) -> Vec<ModelStatus> {
        self.order
            .iter()
            .filter_map(|name| self.model_status(name).ok())
            .collect()
    }

    /// Closes the windows that have passed: trains on the default reward where one is
    /// configured, else drops the decision; both are counted and logged.
    pub fn expire(&self, now: Instant) {
        for model in self.models.values() {
            let name = &model.config.name;
            for expired in model.pending.expire(now) {
                let id = &expired.decision.id;
                if expired.rewarded {
                    // Queue full: it is closed again after a restart; nothing is lost.
                    let _ = self.log.close(name, id, Closed::Rewarded, None);
                    continue;
                }
                let defaulted = match model.config.default_reward {
                    Some(reward) => self
                        .log
                        .close(name, id, Closed::Defaulted, Some(reward))
                        .is_ok(),
                    None => {
                        let _ = self.log.close(name, id, Closed::Dropped, None);
                        false
                    }
                };
                metrics::decision_expired(name, defaulted);
            }
            metrics::pending_decisions(name, model.pending.len());
        }
    }

    /// How often [`Engine::expire`] should run: a tenth of the shortest window, between
    /// 10 ms and 1 s, so a decision outlives its window by at most about 10 %.
    pub fn sweep_interval(&self) -> Duration {
        let shortest = self
            .models
            .values()
            .map(|m| m.pending.window())
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

impl ModelRuntime {
    /// The candidate arm ids of a fixed-arm request, minus the excluded ones.
    fn fixed_candidates<'a>(
        &'a self,
        req: &'a ChooseArm,
        excluded: &HashSet<&str>,
    ) -> Result<Vec<&'a str>, Error> {
        for (i, id) in req.excluded_arm_ids.iter().enumerate() {
            if !self.heads.contains_key(id) {
                return Err(Error::invalid(
                    format!("excluded_arm_ids[{i}]"),
                    format!("unknown arm {id:?} for model {:?}", self.config.name),
                ));
            }
        }
        let all: Vec<&str> = if req.candidates.is_empty() {
            self.config.arms.iter().map(String::as_str).collect()
        } else {
            let mut seen = HashSet::new();
            for (i, c) in req.candidates.iter().enumerate() {
                if !self.heads.contains_key(&c.id) {
                    return Err(Error::invalid(
                        format!("candidates[{i}].id"),
                        format!("unknown arm {:?} for model {:?}", c.id, self.config.name),
                    ));
                }
                if !c.features.is_empty() {
                    return Err(Error::invalid(
                        format!("candidates[{i}].features"),
                        format!(
                            "model {:?} has fixed arms and takes no arm features",
                            self.config.name
                        ),
                    ));
                }
                if !seen.insert(c.id.as_str()) {
                    return Err(Error::invalid(
                        format!("candidates[{i}].id"),
                        format!("duplicate arm id {:?}", c.id),
                    ));
                }
            }
            req.candidates.iter().map(|c| c.id.as_str()).collect()
        };
        let kept: Vec<&str> = all
            .into_iter()
            .filter(|id| !excluded.contains(id))
            .collect();
        if kept.is_empty() {
            return Err(Error::invalid(
                "excluded_arm_ids",
                "every candidate is excluded",
            ));
        }
        Ok(kept)
    }

    /// The candidates of a per-arm request, checked, minus the excluded ones.
    fn per_arm_candidates<'a>(
        &self,
        limits: &LimitsConfig,
        req: &'a ChooseArm,
        excluded: &HashSet<&str>,
    ) -> Result<Vec<&'a Candidate>, Error> {
        if req.candidates.is_empty() {
            return Err(Error::invalid(
                "candidates",
                format!(
                    "model {:?} scores per-arm features and needs at least one candidate",
                    self.config.name
                ),
            ));
        }
        let mut seen = HashSet::new();
        for (i, c) in req.candidates.iter().enumerate() {
            check_id(limits, &format!("candidates[{i}].id"), &c.id, false)?;
            if !seen.insert(c.id.as_str()) {
                return Err(Error::invalid(
                    format!("candidates[{i}].id"),
                    format!("duplicate arm id {:?}", c.id),
                ));
            }
            check_vector(
                &format!("candidates[{i}].features"),
                &c.features,
                self.config.arm_feature_dim,
                limits.max_abs_value,
            )?;
        }
        let kept: Vec<&Candidate> = req
            .candidates
            .iter()
            .filter(|c| !excluded.contains(c.id.as_str()))
            .collect();
        if kept.is_empty() {
            return Err(Error::invalid(
                "excluded_arm_ids",
                "every candidate is excluded",
            ));
        }
        Ok(kept)
    }
}

/// An id must be at most `max_id_bytes` long, and non-empty unless `may_be_empty`.
fn check_id(limits: &LimitsConfig, field: &str, id: &str, may_be_empty: bool) -> Result<(), Error> {
    if id.is_empty() && !may_be_empty {
        return Err(Error::invalid(field, "must not be empty"));
    }
    if id.len() > limits.max_id_bytes {
        return Err(Error::invalid(
            field,
            format!(
                "{} bytes is longer than the limit of {}",
                id.len(),
                limits.max_id_bytes
            ),
        ));
    }
    Ok(())
}

/// A vector must have exactly `dim` finite values.
/// `values` must have `dim` finite values of magnitude at most `max_abs`.
fn check_vector(field: &str, values: &[f32], dim: usize, max_abs: f32) -> Result<(), Error> {
    if values.len() != dim {
        return Err(Error::invalid(
            field,
            format!("expected {dim} values, got {}", values.len()),
        ));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("{v} is not finite"),
        ));
    }
    if let Some((i, v)) = values.iter().enumerate().find(|(_, v)| v.abs() > max_abs) {
        return Err(Error::invalid(
            format!("{field}[{i}]"),
            format!("{v:e} is beyond limits.max_abs_value ({max_abs:e})"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector checks name the field and the index of the bad value.
    #[test]
    fn vector_messages() {
        assert_eq!(
            check_vector("context", &[1.0], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context: expected 2 values, got 1"
        );
        assert_eq!(
            check_vector("context", &[1.0, f32::NAN], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context[1]: NaN is not finite"
        );
        assert_eq!(
            check_vector("candidates[0].features", &[f32::INFINITY], 1, 1e6)
                .unwrap_err()
                .to_string(),
            "candidates[0].features[0]: inf is not finite"
        );
        assert_eq!(
            check_vector("context", &[1.0, -1e30], 2, 1e6)
                .unwrap_err()
                .to_string(),
            "context[1]: -1e30 is beyond limits.max_abs_value (1e6)"
        );
        assert!(check_vector("context", &[1e6, -1e6], 2, 1e6).is_ok());
    }
}
