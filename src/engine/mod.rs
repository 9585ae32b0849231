//! The decision service without its transport: models by name, the Thompson-sampling
//! decision, the reward join, and the expiry sweep.
//!
//! Each call is validated first ([`validate`]: nothing moves before a request is known to
//! be good), then decided or joined, then logged. `start` recovers the models from the data
//! directory. `grpc/` only converts messages and maps [`Error`]s to status codes.

mod admin;
pub mod bus;
mod replica;
mod start;
mod validate;

use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::time::Instant;

pub use admin::{CheckpointInfo, ModelSpec};
pub use start::Background;

use crate::{
    config::{HoldoutControl, LimitsConfig, ModelConfig, ModelKind, OnLogFull},
    decisions::{Arms, Decision, PendingStore, RewardOutcome, UsedIds},
    domain::{id_hash, now_ms},
    error::Error,
    learner::LearnerHandle,
    metrics,
    policy::{
        self, Inputs,
        holdout::{self, GroupStats},
    },
    storage::{
        Candidate as LoggedCandidate, ClosedRecord, DecisionRecord, ExampleRecord, How, Log,
        RewardRecord,
    },
};
use validate::Candidates;

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
    /// The arm the client would show without banditd (a `default_arm` holdout's control).
    pub default_arm_id: String,
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
    /// Decisions in the retained log plus those made since start.
    pub decisions: u64,
    /// Rewards in the retained log plus those accepted since start.
    pub rewards: u64,
    /// SGD steps taken over the model's life.
    pub training_steps: u64,
    /// Decisions whose window is open, rewarded or not.
    pub pending_decisions: u64,
    /// Decisions whose window is open and that have no reward yet.
    pub awaiting_reward: u64,
    /// Rewards of the decisions the model served, in the retained log plus since start.
    pub treatment: GroupStats,
    /// Rewards of the holdout's control group, in the retained log plus since start.
    pub control: GroupStats,
}

/// One served model: its learner, its pending decisions, its counters. An UpdateModel or
/// RollbackModel replaces it with a new one that shares the pending store and the counters.
#[derive(Debug)]
struct ModelRuntime {
    config: ModelConfig,
    /// Fixed-arm models: arm id -> output head.
    heads: HashMap<String, usize>,
    learner: LearnerHandle,
    pending: Arc<PendingStore>,
    /// Ids of decisions in the retained log, which new decisions may not take.
    used_ids: Arc<UsedIds>,
    counters: Arc<Counters>,
    /// Its serving-path metric series, resolved once.
    metrics: metrics::ModelMetrics,
    /// Fixed-arm models: the arm ids by output head, shared by every pending decision.
    arms: Arc<[Arc<str>]>,
}

impl ModelRuntime {
    /// The arm ids of the candidate `heads`: the model's own list when they are every arm in
    /// order (the usual request), else a list of the shared ids.
    fn arms_of(&self, heads: &[usize]) -> Result<Arc<[Arc<str>]>, Error> {
        if heads.len() == self.arms.len() && heads.iter().enumerate().all(|(i, &h)| i == h) {
            return Ok(Arc::clone(&self.arms));
        }
        heads
            .iter()
            .map(|&h| {
                self.arms
                    .get(h)
                    .cloned()
                    .ok_or_else(|| Error::Internal(format!("no arm for head {h}")))
            })
            .collect()
    }
}

/// A model's counters, kept across the replacements of its [`ModelRuntime`].
#[derive(Debug, Default)]
struct Counters {
    /// Numbers the decisions, and so seeds each decision's RNG; never reused in a process.
    /// Counts decisions made since start (validated requests only).
    decision_counter: AtomicU64,
    /// Decisions in the log when the process started (its retained part).
    logged_decisions: u64,
    rewards: AtomicU64,
    /// Rewards in the log when the process started (its retained part).
    logged_rewards: u64,
    /// Rewards per holdout group, treatment and control: those in the log when the process
    /// started (its retained part), then those since start.
    groups: std::sync::Mutex<[GroupStats; 2]>,
}

impl Counters {
    /// Counts `reward` for its holdout group, here and in the model's metrics.
    fn group_reward(&self, metrics: &metrics::ModelMetrics, control: bool, reward: f64) {
        self.groups.lock().unwrap_or_else(|p| p.into_inner())[usize::from(control)].push(reward);
        metrics.group_reward(control, reward);
    }
}

/// The holdout control's choice for decision `id` among `ids` when the decision falls in
/// the model's control group: (index, propensity). A `default_arm` holdout needs the
/// request's default arm among the candidates on every request, in either group, so that a
/// client's omission shows at once.
fn holdout_choice(
    config: &ModelConfig,
    id: &str,
    ids: &[&str],
    default_arm_id: &str,
) -> Result<Option<(usize, f64)>, Error> {
    let Some(h) = config.policy.holdout else {
        return Ok(None);
    };
    let default = match h.control {
        HoldoutControl::Uniform => None,
        HoldoutControl::DefaultArm => Some(
            ids.iter()
                .position(|a| *a == default_arm_id)
                .ok_or_else(|| {
                    Error::invalid(
                        "default_arm_id",
                        if default_arm_id.is_empty() {
                            format!(
                                "model {:?} holds out decisions for the client's default arm: \
                                 every request must name it",
                                config.name
                            )
                        } else {
                            format!("{default_arm_id:?} is not a candidate (after exclusions)")
                        },
                    )
                })?,
        ),
    };
    if !holdout::in_control(config.seed, id, h.fraction) {
        return Ok(None);
    }
    Ok(Some(match default {
        Some(index) => (index, 1.0),
        None => holdout::uniform_choice(config.seed, id, ids.len()),
    }))
}

/// The served models by name, and their order for `ListModels` (the registry's: seeded
/// from the configuration file, then creation order).
#[derive(Debug, Default, Clone)]
struct Models {
    map: HashMap<String, Arc<ModelRuntime>>,
    order: Vec<String>,
}

/// The running service: every registered model. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Engine {
    /// Read by every call without a lock (one atomic load); replaced whole by the admin calls
    /// (under `admin`), so creating or deleting a model never blocks another model's serving.
    models: arc_swap::ArcSwap<Models>,
    /// The registry, the learner threads and what starting one needs. An async mutex: one
    /// admin call at a time, held across the learner's stop and start on the blocking pool.
    /// `None` in cluster mode (see `admin.rs`).
    admin: Option<tokio::sync::Mutex<admin::Admin>>,
    limits: LimitsConfig,
    /// The decision/reward log; the learners read their examples from it.
    log: Log,
    /// Permits for decisions too heavy to run inline (`limits.max_blocking_decisions`).
    heavy: Arc<tokio::sync::Semaphore>,
    /// Cluster mode: events go to this shared store instead of `log` (see [`bus`]).
    bus: Option<Arc<dyn bus::EventBus>>,
}

/// A decision's inputs, owned, so that a heavy decision can move to the blocking pool.
enum OwnedInputs {
    Heads {
        context: Vec<f32>,
        heads: Vec<usize>,
    },
    Rows {
        values: Vec<f32>,
        rows: usize,
    },
}

impl OwnedInputs {
    fn inputs(&self) -> Inputs<'_> {
        match self {
            Self::Heads { context, heads } => Inputs::Heads { context, heads },
            Self::Rows { values, rows } => Inputs::Rows {
                values,
                rows: *rows,
            },
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
    snapshot: &crate::policy::Snapshot,
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

/// Odd 64-bit constant (2^64 / golden ratio) spreading decision numbers over seed space.
const SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

impl Engine {
    /// Whether the log can take new events (false after a failed write, until a retry
    /// succeeds): health reports NOT_SERVING meanwhile.
    pub fn log_writable(&self) -> bool {
        match &self.bus {
            None => !self.log.is_failing(),
            Some(bus) => bus.connected(),
        }
    }

    /// The serving side of `model`'s weights (cluster mode: the snapshot watcher installs
    /// the trainer's snapshots through it).
    pub fn weights(&self, model: &str) -> Option<LearnerHandle> {
        self.models.load().map.get(model).map(|m| m.learner.clone())
    }

    fn model(&self, name: &str) -> Result<Arc<ModelRuntime>, Error> {
        if name.is_empty() {
            return Err(Error::invalid("model", "must not be empty"));
        }
        self.models
            .load()
            .map
            .get(name)
            .cloned()
            .ok_or_else(|| Error::ModelNotFound(name.to_owned()))
    }

    /// Chooses an arm by Thompson sampling: one posterior sample scores every candidate.
    ///
    /// # Errors
    /// NOT_FOUND-class for an unknown model, INVALID_ARGUMENT-class for a malformed request,
    /// FAILED_PRECONDITION-class for a retried id with a different request,
    /// RESOURCE_EXHAUSTED-class when the log writer's queue is full and `storage.on_log_full`
    /// is `reject` (or `sync_decisions` is set), UNAVAILABLE-class while the log cannot be
    /// written.
    pub async fn choose_arm(&self, req: ChooseArm) -> Result<Arc<Decision>, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        validate::check_id(&self.limits, "decision_id", &req.decision_id, true)?;
        let request_hash = validate::request_hash(&req);
        if let Some(bus) = &self.bus
            && !req.decision_id.is_empty()
            && let Some(found) =
                replica::find(bus.as_ref(), &model, &req.decision_id, request_hash).await?
        {
            return Ok(found);
        }
        if !req.decision_id.is_empty()
            && let Some(existing) = model.pending.get(&req.decision_id)
        {
            if existing.request_hash != request_hash {
                return Err(Error::RetryMismatch {
                    id: req.decision_id.clone(),
                });
            }
            return Ok(existing);
        }
        // A client-made id whose decision has closed but is still logged is refused rather
        // than decided twice; server-made ids are fresh UUIDs.
        let client_hash = (!req.decision_id.is_empty()).then(|| id_hash(&req.decision_id));
        if client_hash.is_some_and(|hash| model.used_ids.contains(hash)) {
            return Err(Error::DecisionIdUsed {
                id: req.decision_id.clone(),
            });
        }
        let valid = validate::choose(&model.config, &model.heads, &self.limits, &req)?;
        let name = &model.config.name;
        let refuse = self.log.sync_decisions() || self.log.on_full() == OnLogFull::Reject;
        if refuse && self.log.is_failing() {
            metrics::decision_refused(name);
            return Err(Error::Unavailable(
                "the log cannot be written now (see the server log); retry later".into(),
            ));
        }
        let samples = Samples {
            propensity: valid.propensity_samples,
            explain: valid.explain_samples,
        };
        let snapshot = model.learner.snapshot();
        let n = model
            .counters
            .decision_counter
            .fetch_add(1, Ordering::Relaxed);
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(model.config.seed ^ n.wrapping_mul(SEED_STRIDE));

        // The scored rows: for a fixed-arm model the context and the candidates' heads, for
        // a per-arm model one row of context + features per candidate.
        let (ids, owned, width): (Vec<&str>, OwnedInputs, usize) = match &valid.candidates {
            Candidates::Heads { ids, heads } => (
                ids.clone(),
                OwnedInputs::Heads {
                    context: req.context.clone(),
                    heads: heads.clone(),
                },
                0,
            ),
            Candidates::Rows { kept } => {
                let width = model.config.input_dim();
                let mut values = Vec::with_capacity(kept.len() * width);
                for c in kept {
                    values.extend_from_slice(&req.context);
                    values.extend_from_slice(&c.features);
                }
                (
                    kept.iter().map(|c| c.id.as_str()).collect(),
                    OwnedInputs::Rows {
                        values,
                        rows: kept.len(),
                    },
                    width,
                )
            }
        };
        let id = if req.decision_id.is_empty() {
            // Encoded straight into the string (`to_string` goes through the formatter).
            let mut buf = uuid::Uuid::encode_buffer();
            String::from(&*uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf))
        } else {
            req.decision_id.clone()
        };
        let control = holdout_choice(&model.config, &id, &ids, &req.default_arm_id)?;
        let rows = match &owned {
            OwnedInputs::Heads { .. } => 1,
            OwnedInputs::Rows { rows, .. } => *rows,
        };
        let work = (1 + samples.propensity + samples.explain).saturating_mul(rows);
        let (mut choice, owned) = if work <= self.limits.max_inline_work {
            // Measured cheaper inline than a hand-off to another thread.
            let choice = decide(&snapshot, owned.inputs(), samples, &mut rng)?;
            (choice, owned)
        } else {
            // Thousands of samples would hold a tokio worker (and the health checks queued
            // on it) for up to a second: bounded, on the blocking pool.
            let Ok(permit) = Arc::clone(&self.heavy).try_acquire_owned() else {
                return Err(Error::Overloaded("heavy decision pool"));
            };
            let snapshot = Arc::clone(&snapshot);
            tokio::task::spawn_blocking(move || {
                let _permit = permit;
                decide(&snapshot, owned.inputs(), samples, &mut rng).map(|c| (c, owned))
            })
            .await
            .map_err(|e| Error::Internal(format!("decision task: {e}")))??
        };
        // The control group is served by the control policy; the model's scores are still
        // logged (and its learner trains on the control's rewards too).
        if let Some((index, propensity)) = control {
            choice.choice.best = index;
            choice.propensity = Some(propensity);
        }
        let (input, head, logged): (Vec<f32>, usize, Vec<LoggedCandidate>) =
            match (&valid.candidates, owned) {
                // The decision keeps the inputs' own copy of the context: no second clone.
                (Candidates::Heads { ids, .. }, OwnedInputs::Heads { context, heads }) => (
                    context,
                    heads[choice.best],
                    ids.iter()
                        .map(|id| LoggedCandidate {
                            id: (*id).to_owned(),
                            features: Vec::new(),
                        })
                        .collect(),
                ),
                (Candidates::Rows { kept }, OwnedInputs::Rows { values, .. }) => (
                    values[choice.best * width..(choice.best + 1) * width].to_vec(),
                    0,
                    kept.iter()
                        .map(|c| LoggedCandidate {
                            id: c.id.clone(),
                            features: c.features.clone(),
                        })
                        .collect(),
                ),
                _ => {
                    return Err(Error::Internal(
                        "candidates and inputs of different kinds".into(),
                    ));
                }
            };
        let chosen = choice.best;
        let arms = match &valid.candidates {
            Candidates::Heads { heads, .. } => Arms::shared(model.arms_of(heads)?),
            Candidates::Rows { kept } => Arms::packed(kept.iter().map(|c| c.id.as_str())),
        };
        let decision = Decision {
            id,
            arms,
            chosen: u32::try_from(chosen)
                .map_err(|_| Error::Internal("candidate index overflow".into()))?,
            scores: choice.choice.scores.into(),
            model_version: snapshot.version,
            propensity: choice.propensity,
            explanation: choice.explanation.map(Vec::into_boxed_slice),
            input: input.into(),
            head: u32::try_from(head).map_err(|_| Error::Internal("head index overflow".into()))?,
            request_hash,
            holdout: control.is_some(),
        };
        if let Some(bus) = &self.bus {
            return replica::publish_decision(
                bus.as_ref(),
                &model,
                decision,
                req.context,
                logged,
                chosen,
                started,
            )
            .await;
        }
        if refuse && self.log.is_full() {
            // Refused before it is stored, so it evicts nothing.
            metrics::decision_refused(name);
            return Err(Error::Overloaded("log writer queue"));
        }
        // A decision refused after this (the log filled or failed in between, or its synced
        // write failed) is forgotten again, but an older decision it evicted stays evicted:
        // that decision's reward then answers NOT_FOUND, as for any eviction.
        let inserted = model.pending.insert(decision);
        if !inserted.evicted.is_empty() {
            model
                .metrics
                .decisions_evicted(inserted.evicted.len() as u64);
            for old in &inserted.evicted {
                // Queue full: the decision stays open in the log and expires after a restart.
                let _ = self
                    .log
                    .closed(closed_record(name, old.id(), How::Evicted, None));
            }
        }
        let stored = inserted.decision;
        if inserted.new {
            // A client-made id was hashed for the check above; a server-made one is new.
            let hash = client_hash.unwrap_or_else(|| id_hash(&stored.id));
            let decided_ms = now_ms();
            let forgotten = model.used_ids.insert(hash, decided_ms);
            metrics::decision_ids_forgotten(name, forgotten);
            let record = DecisionRecord {
                model: name.clone(),
                decision_id: stored.id.clone(),
                decided_ms,
                context: req.context,
                candidates: logged,
                chosen: u32::try_from(chosen).unwrap_or(u32::MAX),
                scores: stored.scores.to_vec(),
                model_version: stored.model_version,
                head: stored.head,
                propensity: stored.propensity,
                request_hash,
                holdout: stored.holdout,
            };
            match self.log.decision(record) {
                Ok(None) => {}
                Ok(Some(ack)) => {
                    let committed = ack
                        .await
                        .unwrap_or_else(|_| Err(Error::Unavailable("log writer stopped".into())));
                    if let Err(e) = committed {
                        model.pending.remove(&stored.id);
                        model.used_ids.remove(hash);
                        return Err(e);
                    }
                }
                Err(e) if refuse => {
                    // The client is told there is no decision: a retry of its id or a reward
                    // must not find one.
                    model.pending.remove(&stored.id);
                    model.used_ids.remove(hash);
                    metrics::decision_refused(name);
                    return Err(e);
                }
                Err(_) => metrics::decision_unlogged(name),
            }
        } else if stored.request_hash != request_hash {
            // A concurrent retry with the same id stored its decision first.
            return Err(Error::RetryMismatch {
                id: stored.id.clone(),
            });
        }
        let head = (model.config.kind == ModelKind::FixedArms).then_some(stored.head as usize);
        model.metrics.decision_made(head, started.elapsed());
        Ok(stored)
    }

    /// Joins a reward to its decision, logs it (with its training example, which the
    /// model's learner reads from the log), and answers once the write is durable under the
    /// configured mode. A retry of an accepted reward answers `Duplicate` once the first
    /// report's write is durable.
    ///
    /// # Errors
    /// Unknown model or decision (NOT_FOUND-class), a non-finite reward or regret
    /// (INVALID_ARGUMENT-class), a conflicting reward, a full log queue (RESOURCE_EXHAUSTED;
    /// the decision stays open), or a failed write (UNAVAILABLE; the decision stays open).
    pub async fn report_reward(&self, req: ReportReward) -> Result<RewardOutcome, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        validate::reward(&self.limits, &req)?;
        // The model's `reward_range`: refused, or clipped into it (per its setting).
        let reward = model.config.check_reward(req.reward)?;
        if let Some(bus) = &self.bus {
            return replica::report_reward(
                bus.as_ref(),
                &model,
                &req.decision_id,
                reward,
                req.regret,
                started,
            )
            .await;
        }
        let name = &model.config.name;
        // At most twice: a retry that waited on a first report whose write then failed is
        // taken as the first report.
        for _ in 0..2 {
            let mut control = false;
            let outcome = model
                .pending
                .record_reward(&req.decision_id, reward, |decision| {
                    control = decision.holdout;
                    self.log
                        .reward(RewardRecord {
                            model: name.clone(),
                            decision_id: decision.id.to_owned(),
                            at_ms: now_ms(),
                            regret: req.regret,
                            example: Some(ExampleRecord {
                                input: decision.input.to_vec(),
                                head: decision.head,
                                reward,
                            }),
                        })
                        .inspect_err(|e| {
                            if matches!(e, Error::Overloaded(_)) {
                                metrics::reward_dropped(name);
                            }
                        })
                })?;
            let ack = match outcome {
                RewardOutcome::Accepted(ack) => ack,
                RewardOutcome::Duplicate(None) => return Ok(RewardOutcome::Duplicate(None)),
                RewardOutcome::Duplicate(Some(commit)) => {
                    if commit.settled().await {
                        return Ok(RewardOutcome::Duplicate(None));
                    }
                    continue;
                }
            };
            // Settled even if this call is cancelled while it waits: a guard finishes the
            // job (revert on failure) from a task of its own.
            let mut guard = Settle {
                pending: Arc::clone(&model.pending),
                id: req.decision_id.clone(),
                reward,
                ack: Some(ack),
            };
            guard.wait().await?;
            model.counters.rewards.fetch_add(1, Ordering::Relaxed);
            model.counters.group_reward(&model.metrics, control, reward);
            model
                .metrics
                .reward_accepted(reward, req.regret, started.elapsed());
            return Ok(RewardOutcome::Accepted(()));
        }
        Err(Error::Unavailable(
            "the log cannot be written now (see the server log); retry later".into(),
        ))
    }

    /// One model's configuration and counters.
    ///
    /// # Errors
    /// Unknown model.
    pub fn model_status(&self, name: &str) -> Result<ModelStatus, Error> {
        let model = self.model(name)?;
        let groups = *model
            .counters
            .groups
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        Ok(ModelStatus {
            config: model.config.clone(),
            model_version: model.learner.snapshot().version,
            decisions: model.counters.logged_decisions
                + model.counters.decision_counter.load(Ordering::Relaxed),
            rewards: model.counters.logged_rewards + model.counters.rewards.load(Ordering::Relaxed),
            training_steps: model.learner.stats().steps.load(Ordering::Relaxed),
            pending_decisions: model.pending.len() as u64,
            awaiting_reward: model.pending.awaiting_reward() as u64,
            treatment: groups[0],
            control: groups[1],
        })
    }

    /// Every model's status, in the registry's order.
    pub fn list_models(&self) -> Vec<ModelStatus> {
        self.models
            .load()
            .order
            .iter()
            .filter_map(|name| self.model_status(name).ok())
            .collect()
    }

    /// Closes the windows that have passed: trains on the default reward where one is
    /// configured, else drops the decision; both are counted and logged.
    pub fn expire(&self, now: Instant) {
        let wall_ms = now_ms();
        for model in self.models.load().map.values() {
            let name = &model.config.name;
            model.used_ids.prune(wall_ms);
            for expired in model.pending.expire(now) {
                let d = expired.decision.view();
                if expired.rewarded {
                    // Queue full: it is closed again after a restart; nothing is lost.
                    let _ = self
                        .log
                        .closed(closed_record(name, d.id, How::Rewarded, None));
                    continue;
                }
                let defaulted = match model.config.pending.default_reward {
                    Some(reward) => {
                        let example = ExampleRecord {
                            input: d.input.to_vec(),
                            head: d.head,
                            reward,
                        };
                        let logged = self
                            .log
                            .closed(closed_record(name, d.id, How::Defaulted, Some(example)))
                            .is_ok();
                        if logged {
                            model
                                .counters
                                .group_reward(&model.metrics, d.holdout, reward);
                        }
                        logged
                    }
                    None => {
                        let _ = self
                            .log
                            .closed(closed_record(name, d.id, How::Dropped, None));
                        false
                    }
                };
                metrics::decision_expired(name, defaulted);
            }
            metrics::pending_decisions(name, model.pending.len(), model.pending.heap_bytes());
        }
    }

    /// How often [`Engine::expire`] should run: a tenth of the shortest window, between
    /// 10 ms and 1 s, so a decision outlives its window by at most about 10 %.
    pub fn sweep_interval(&self) -> Duration {
        let shortest = self
            .models
            .load()
            .map
            .values()
            .map(|m| m.pending.window())
            .min()
            .unwrap_or(Duration::from_secs(1));
        (shortest / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
    }
}

/// The log record closing decision `id`'s window.
fn closed_record(model: &str, id: &str, how: How, example: Option<ExampleRecord>) -> ClosedRecord {
    ClosedRecord {
        model: model.to_owned(),
        decision_id: id.to_owned(),
        at_ms: now_ms(),
        how: how as i32,
        example,
    }
}

/// Waits for a first reward's log write and reports it to the pending store. Dropped before
/// the write settled (the call was cancelled), it hands the wait to a task of its own, so a
/// failed write is still reverted and a retry is not told "duplicate" for a lost reward.
struct Settle {
    pending: Arc<PendingStore>,
    id: String,
    reward: f64,
    ack: Option<crate::storage::Ack>,
}

impl Settle {
    async fn wait(&mut self) -> Result<(), Error> {
        let Some(ack) = self.ack.as_mut() else {
            return Ok(());
        };
        let result = ack
            .await
            .unwrap_or_else(|_| Err(Error::Unavailable("log writer stopped".into())));
        self.ack = None;
        self.pending.settle(&self.id, self.reward, result.is_ok());
        result
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        let Some(ack) = self.ack.take() else {
            return;
        };
        let (pending, id, reward) = (Arc::clone(&self.pending), self.id.clone(), self.reward);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let durable = matches!(ack.await, Ok(Ok(())));
                pending.settle(&id, reward, durable);
            });
        } else {
            // No runtime (a test driving the engine by hand): the write's outcome is unknown,
            // so the reward is not taken as durable.
            pending.settle(&id, reward, false);
        }
    }
}
