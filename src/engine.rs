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
    learner::{Example, Learner, LearnerHandle},
    metrics,
    policy::{self, Inputs},
};

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
}

/// Owns the learner threads; dropping it stops and joins them (after they train on what is
/// queued).
#[derive(Debug)]
pub struct Learners(Vec<Learner>);

impl Learners {
    /// Stops every learner after it has trained on its queue, and joins it.
    pub fn shutdown(mut self) {
        for learner in &mut self.0 {
            learner.shutdown();
        }
    }
}

/// Odd 64-bit constant (2^64 / golden ratio) spreading decision numbers over seed space.
const SEED_STRIDE: u64 = 0x9E37_79B9_7F4A_7C15;

impl Engine {
    /// Builds every model and starts its learner.
    ///
    /// # Errors
    /// A model's network cannot be built.
    pub fn start(config: &Config) -> Result<(Arc<Self>, Learners), Error> {
        let mut models = HashMap::new();
        let mut learners = Vec::new();
        for model in &config.models {
            let learner = Learner::start(model)?;
            let heads = model
                .arms
                .iter()
                .enumerate()
                .map(|(i, a)| (a.clone(), i))
                .collect();
            models.insert(
                model.name.clone(),
                ModelRuntime {
                    config: model.clone(),
                    heads,
                    learner: learner.handle(),
                    pending: PendingStore::new(model.reward_window(), model.pending_capacity),
                    decision_counter: AtomicU64::new(0),
                    rewards: AtomicU64::new(0),
                },
            );
            learners.push(learner);
        }
        let engine = Self {
            models,
            order: config.models.iter().map(|m| m.name.clone()).collect(),
            limits: config.limits.clone(),
        };
        Ok((Arc::new(engine), Learners(learners)))
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
    /// NOT_FOUND-class for an unknown model, INVALID_ARGUMENT-class for a malformed request.
    pub fn choose_arm(&self, req: ChooseArm) -> Result<Arc<Decision>, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        check_id(&self.limits, "decision_id", &req.decision_id, true)?;
        if !req.decision_id.is_empty()
            && let Some(existing) = model.pending.get(&req.decision_id)
        {
            return Ok(existing);
        }
        check_vector("context", &req.context, model.config.context_dim)?;
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
        let excluded: HashSet<&str> = req.excluded_arm_ids.iter().map(String::as_str).collect();
        let snapshot = model.learner.snapshot();
        let n = model.decision_counter.fetch_add(1, Ordering::Relaxed);
        let mut rng =
            Xoshiro256PlusPlus::seed_from_u64(model.config.seed ^ n.wrapping_mul(SEED_STRIDE));

        let (ids, choice, input, head) = match model.config.kind {
            ModelKind::FixedArms => {
                let ids = model.fixed_candidates(&req, &excluded)?;
                let heads: Vec<usize> = ids.iter().map(|id| model.heads[*id]).collect();
                let choice = policy::thompson(
                    &snapshot,
                    Inputs::Heads {
                        context: &req.context,
                        heads: &heads,
                    },
                    &mut rng,
                )?;
                let head = heads[choice.best];
                (ids, choice, req.context.clone(), head)
            }
            ModelKind::PerArmFeatures => {
                let kept = model.per_arm_candidates(&self.limits, &req, &excluded)?;
                let width = model.config.input_dim();
                let mut values = Vec::with_capacity(kept.len() * width);
                for c in &kept {
                    values.extend_from_slice(&req.context);
                    values.extend_from_slice(&c.features);
                }
                let choice = policy::thompson(
                    &snapshot,
                    Inputs::Rows {
                        values: &values,
                        rows: kept.len(),
                    },
                    &mut rng,
                )?;
                let input = values[choice.best * width..(choice.best + 1) * width].to_vec();
                (
                    kept.iter().map(|c| c.id.as_str()).collect(),
                    choice,
                    input,
                    0,
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
                .zip(choice.scores)
                .collect(),
            model_version: snapshot.version,
            input,
            head: u32::try_from(head).map_err(|_| Error::Internal("head index overflow".into()))?,
        };
        let (stored, evicted) = model.pending.insert(decision);
        if evicted > 0 {
            metrics::decisions_evicted(&model.config.name, evicted);
        }
        let arm_label =
            (model.config.kind == ModelKind::FixedArms).then_some(stored.arm_id.as_str());
        metrics::decision_made(&model.config.name, arm_label, started.elapsed());
        Ok(stored)
    }

    /// Joins a reward to its decision and queues the example for the learner.
    ///
    /// # Errors
    /// Unknown model or decision (NOT_FOUND-class), a non-finite reward or regret
    /// (INVALID_ARGUMENT-class), a conflicting reward, or a full learner queue.
    pub fn report_reward(&self, req: ReportReward) -> Result<RewardOutcome, Error> {
        let started = std::time::Instant::now();
        let model = self.model(&req.model)?;
        check_id(&self.limits, "decision_id", &req.decision_id, false)?;
        if !req.reward.is_finite() {
            return Err(Error::invalid(
                "reward",
                format!("{} is not finite", req.reward),
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
        let outcome = model
            .pending
            .record_reward(&req.decision_id, req.reward, |decision| {
                let example = Example {
                    input: decision.input.clone(),
                    head: decision.head,
                    reward: req.reward,
                };
                model.learner.submit(example).inspect_err(|e| {
                    if matches!(e, Error::Overloaded(_)) {
                        metrics::reward_dropped(&model.config.name);
                    }
                })
            })?;
        if outcome == RewardOutcome::Accepted {
            model.rewards.fetch_add(1, Ordering::Relaxed);
            metrics::reward_accepted(
                &model.config.name,
                req.reward,
                req.regret,
                started.elapsed(),
            );
        }
        Ok(outcome)
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
    /// configured, else drops the decision; both are counted.
    pub fn expire(&self, now: Instant) {
        for model in self.models.values() {
            for expired in model.pending.expire(now) {
                if expired.rewarded {
                    continue;
                }
                let defaulted = model.config.default_reward.is_some_and(|reward| {
                    let example = Example {
                        input: expired.decision.input.clone(),
                        head: expired.decision.head,
                        reward,
                    };
                    model.learner.submit(example).is_ok()
                });
                metrics::decision_expired(&model.config.name, defaulted);
            }
            metrics::pending_decisions(&model.config.name, model.pending.len());
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
fn check_vector(field: &str, values: &[f32], dim: usize) -> Result<(), Error> {
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
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector checks name the field and the index of the bad value.
    #[test]
    fn vector_messages() {
        assert_eq!(
            check_vector("context", &[1.0], 2).unwrap_err().to_string(),
            "context: expected 2 values, got 1"
        );
        assert_eq!(
            check_vector("context", &[1.0, f32::NAN], 2)
                .unwrap_err()
                .to_string(),
            "context[1]: NaN is not finite"
        );
        assert_eq!(
            check_vector("candidates[0].features", &[f32::INFINITY], 1)
                .unwrap_err()
                .to_string(),
            "candidates[0].features[0]: inf is not finite"
        );
    }
}
