//! In-process simulation harness (issue 3): the environments of [`crate::sim`] played
//! against the library's [`policy`](crate::policy) and [`learner`](crate::learner) directly,
//! without gRPC, plus the pieces the load generator shares with it.
//!
//! - [`model_for_env`] builds (or checks) the [`ModelConfig`] that fits an environment.
//! - [`run_inproc`] plays `rounds` rounds synchronously and deterministically: every round
//!   draws one Thompson sample from the latest snapshot, trains on the chosen candidate's
//!   reward right away (`updates_per_reward` steps), and republishes the snapshot every
//!   `publish_every_steps` steps, like the learner thread under steady load.
//! - [`Tally`], [`CurvePoint`], [`normalized_regret`] and [`mean_std`]: regret bookkeeping.
//! - [`NoopService`]: a gRPC server implementing the same proto that does no work, so the
//!   load generator can measure the transport ceiling on the same machine (examples and
//!   tests start it; the production server never does).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::{
    config::{Config, ModelConfig, ModelKind},
    error::Error,
    learner::{Example, Trainer},
    policy::{Inputs, decide},
    proto,
    sim::{Environment, Round},
};

/// Regret normalized to uniform random = 100: `100 * regret / uniform_regret` (NaN when the
/// uniform regret is 0, i.e. when no choice could have mattered).
pub fn normalized_regret(regret: f64, uniform_regret: f64) -> f64 {
    if uniform_regret > 0.0 {
        100.0 * regret / uniform_regret
    } else {
        f64::NAN
    }
}

/// The mean and the sample standard deviation (n − 1; 0 for fewer than two values).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Running totals of a simulation: decisions, regret, uniform random's regret on the same
/// rounds, and the rewards of the chosen candidates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Decisions counted.
    pub decisions: u64,
    /// Sum of the expected regret of the chosen candidates.
    pub regret: f64,
    /// Sum of the expected regret of a uniformly random choice on the same rounds.
    pub uniform_regret: f64,
    /// Sum of the sampled rewards of the chosen candidates.
    pub reward_sum: f64,
}

impl Tally {
    /// Counts the choice of candidate `index` in `round`; returns its regret.
    ///
    /// # Panics
    /// If `index` is not a candidate of `round` (like slice indexing).
    pub fn record(&mut self, round: &Round, index: usize) -> f64 {
        let regret = round.regret_of(index);
        self.decisions += 1;
        self.regret += regret;
        self.uniform_regret += round.uniform_regret();
        self.reward_sum += round.rewards[index];
        regret
    }

    /// [`normalized_regret`] of the totals.
    pub fn normalized_regret(&self) -> f64 {
        normalized_regret(self.regret, self.uniform_regret)
    }

    /// Mean reward per decision (NaN before the first).
    pub fn mean_reward(&self) -> f64 {
        if self.decisions == 0 {
            f64::NAN
        } else {
            self.reward_sum / self.decisions as f64
        }
    }

    /// The current totals as a point of a regret curve.
    pub fn point(&self) -> CurvePoint {
        CurvePoint {
            decisions: self.decisions,
            regret: self.regret,
            uniform_regret: self.uniform_regret,
        }
    }
}

/// One point of a regret-over-time curve: cumulative totals after `decisions` decisions.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CurvePoint {
    /// Decisions made so far.
    pub decisions: u64,
    /// Cumulative regret.
    pub regret: f64,
    /// Cumulative regret of uniform random on the same rounds.
    pub uniform_regret: f64,
}

/// The drop rates serving decisions after `decisions` decisions: with `concrete_dropout`,
/// how the learned rates move over a run.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RatePoint {
    /// Decisions made so far.
    pub decisions: u64,
    /// One rate per weight layer: the input units', then each hidden layer's.
    pub drop_rates: Vec<f64>,
}

/// The interval between curve points for a run of `rounds` rounds: about 200 points.
pub fn curve_every(rounds: u64) -> u64 {
    (rounds / 200).max(1)
}

/// Why an environment and a model do not fit together.
#[derive(Debug, thiserror::Error)]
#[error("model {model:?} does not fit environment {env}: {why}")]
pub struct MismatchError {
    /// The model's name.
    pub model: String,
    /// The environment's name.
    pub env: String,
    /// What differs.
    pub why: String,
}

/// The model configuration for playing `env`.
///
/// With `base = None`, the embedded default's model of the environment's kind (`"wheel"`
/// for fixed-arm environments, `"items"` for per-arm ones) reshaped to the environment: its
/// context dimension, and its arm ids (fixed arms) or arm feature dimension (per-arm). With
/// a `base`, that model unchanged, after checking that it fits.
///
/// # Errors
/// The base model is of the other kind, or its dimensions or arms differ from the
/// environment's.
pub fn model_for_env(
    env: &dyn Environment,
    base: Option<&ModelConfig>,
) -> Result<ModelConfig, MismatchError> {
    let fixed = env.arm_feature_dim() == 0;
    let Some(base) = base else {
        let wanted = if fixed { "wheel" } else { "items" };
        let defaults = Config::embedded_default();
        let mut model = defaults
            .models
            .into_iter()
            .find(|m| m.name == wanted)
            .unwrap_or_else(|| {
                let kind = if fixed {
                    ModelKind::FixedArms
                } else {
                    ModelKind::PerArmFeatures
                };
                ModelConfig::new(wanted, kind, env.context_dim())
            });
        model.context_dim = env.context_dim();
        if fixed {
            model.arms = env.arm_ids();
            model.arm_feature_dim = 0;
        } else {
            model.arms = Vec::new();
            model.arm_feature_dim = env.arm_feature_dim();
        }
        return Ok(model);
    };
    let mismatch = |why: String| MismatchError {
        model: base.name.clone(),
        env: env.name(),
        why,
    };
    match (base.kind, fixed) {
        (ModelKind::FixedArms, false) => {
            return Err(mismatch(
                "a fixed-arm model cannot play a per-arm environment".into(),
            ));
        }
        (ModelKind::PerArmFeatures, true) => {
            return Err(mismatch(
                "a per-arm-features model cannot play a fixed-arm environment".into(),
            ));
        }
        _ => {}
    }
    if base.context_dim != env.context_dim() {
        return Err(mismatch(format!(
            "context_dim is {} but the environment's contexts have {} values",
            base.context_dim,
            env.context_dim()
        )));
    }
    if fixed {
        if let Some(missing) = env.arm_ids().iter().find(|id| !base.arms.contains(id)) {
            return Err(mismatch(format!(
                "the environment's arm {missing:?} is not among the model's arms {:?}",
                base.arms
            )));
        }
    } else if base.arm_feature_dim != env.arm_feature_dim() {
        return Err(mismatch(format!(
            "arm_feature_dim is {} but the environment's candidates have {} features",
            base.arm_feature_dim,
            env.arm_feature_dim()
        )));
    }
    Ok(base.clone())
}

/// Mixes a run's seed into a model's seed, so that every seed of a multi-seed run gets its
/// own initial weights, dropout masks and replay sampling (SplitMix64 finaliser).
pub fn mix_seed(model_seed: u64, run_seed: u64) -> u64 {
    let mut z = model_seed ^ run_seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The outcome of one in-process run.
#[derive(Debug, Clone, PartialEq)]
pub struct InprocRun {
    /// The environment's name.
    pub env: String,
    /// Rounds played.
    pub rounds: u64,
    /// Totals.
    pub tally: Tally,
    /// Cumulative totals every [`curve_every`] rounds, and after the last.
    pub curve: Vec<CurvePoint>,
    /// With `concrete_dropout`, the serving snapshot's learned drop rates at the same points
    /// as `curve` (empty with fixed rates).
    pub drop_rates: Vec<RatePoint>,
    /// SGD steps taken.
    pub steps: u64,
    /// Snapshots published (the serving weights' version at the end).
    pub version: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Plays `rounds` rounds of `env` against a fresh [`Trainer`] for `model`, synchronously.
///
/// Each round: one [`thompson`] sample on the latest snapshot, seeded by `model.seed`
/// (one RNG for the whole run); the chosen candidate's sampled reward is added to the
/// trainer, which takes the steps it owes at once; every `publish_every_steps` steps a new
/// snapshot serves. Deterministic given the environment's seed and `model.seed`.
/// `progress` is called with the number of rounds played, every 64 rounds and at the end.
///
/// # Errors
/// The model does not fit the environment (see [`model_for_env`]) or candle fails.
pub fn run_inproc(
    env: &mut dyn Environment,
    model: &ModelConfig,
    rounds: u64,
    progress: impl FnMut(u64),
) -> Result<InprocRun, Error> {
    run_inproc_reporting(env, model, rounds, |_, reward| reward, progress)
}

/// [`run_inproc`], with the reward the learner is told in round `t` replaced by
/// `report(t, sampled reward)`: a client's wrong or extreme report (issue 12: one outlier
/// must not ruin a model). Regret is still measured on the environment's expected rewards.
///
/// # Errors
/// As [`run_inproc`].
pub fn run_inproc_reporting(
    env: &mut dyn Environment,
    model: &ModelConfig,
    rounds: u64,
    mut report: impl FnMut(u64, f64) -> f64,
    mut progress: impl FnMut(u64),
) -> Result<InprocRun, Error> {
    let model =
        model_for_env(env, Some(model)).map_err(|e| Error::invalid("model", e.to_string()))?;
    let fixed = model.kind == ModelKind::FixedArms;
    let mut trainer = Trainer::new(&model)?;
    let mut version = 0u64;
    let mut snapshot = trainer.snapshot(version)?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(model.seed);
    let publish_every = model.learner.publish_every_steps.max(1);
    let every = curve_every(rounds);
    let start = Instant::now();

    let mut tally = Tally::default();
    let mut curve = Vec::new();
    let mut drop_rates = Vec::new();
    let mut steps = 0u64;
    let mut since_publish = 0usize;
    let mut heads = Vec::new();
    let mut rows = Vec::new();
    for t in 0..rounds {
        let round = env.next_round();
        if round.candidates.is_empty() {
            return Err(Error::Internal(format!(
                "environment {} offered no candidates in round {t}",
                env.name()
            )));
        }
        let (best, example) = if fixed {
            heads.clear();
            for c in &round.candidates {
                let head = model.arms.iter().position(|a| *a == c.id).ok_or_else(|| {
                    Error::invalid("candidates", format!("arm {:?} is not a model arm", c.id))
                })?;
                heads.push(head);
            }
            let choice = decide(
                &snapshot,
                Inputs::Heads {
                    context: &round.context,
                    heads: &heads,
                },
                &mut rng,
            )?;
            let head = u32::try_from(heads[choice.best])
                .map_err(|_| Error::Internal("more than 2^32 arms".into()))?;
            let example = Example {
                input: round.context.clone(),
                head,
                reward: round.rewards[choice.best],
                seq: t,
            };
            (choice.best, example)
        } else {
            let width = round.context.len() + model.arm_feature_dim;
            rows.clear();
            for c in &round.candidates {
                rows.extend_from_slice(&round.context);
                rows.extend_from_slice(&c.features);
            }
            let choice = decide(
                &snapshot,
                Inputs::Rows {
                    values: &rows,
                    rows: round.candidates.len(),
                },
                &mut rng,
            )?;
            let start = choice.best * width;
            let example = Example {
                input: rows[start..start + width].to_vec(),
                head: 0,
                reward: round.rewards[choice.best],
                seq: t,
            };
            (choice.best, example)
        };
        tally.record(&round, best);
        let example = Example {
            reward: report(t, example.reward),
            ..example
        };
        let owed = trainer.add(example);
        trainer.train(owed)?;
        steps += owed as u64;
        since_publish += owed;
        if since_publish >= publish_every {
            version += 1;
            snapshot = trainer.snapshot(version)?;
            since_publish = 0;
        }
        let played = t + 1;
        if played.is_multiple_of(every) || played == rounds {
            curve.push(tally.point());
            if model.network.concrete_dropout {
                drop_rates.push(RatePoint {
                    decisions: played,
                    drop_rates: snapshot.shape.drop_rates.clone(),
                });
            }
        }
        if played.is_multiple_of(64) || played == rounds {
            progress(played);
        }
    }
    Ok(InprocRun {
        env: env.name(),
        rounds,
        tally,
        curve,
        drop_rates,
        steps,
        version,
        elapsed: start.elapsed(),
    })
}

/// The `ModelInfo` a server would report for `config` with no traffic yet.
pub fn model_info(config: &ModelConfig) -> proto::ModelInfo {
    let u32_of = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
    proto::ModelInfo {
        name: config.name.clone(),
        kind: match config.kind {
            ModelKind::FixedArms => proto::ModelKind::FixedArms,
            ModelKind::PerArmFeatures => proto::ModelKind::PerArmFeatures,
        } as i32,
        context_dim: u32_of(config.context_dim),
        arm_feature_dim: u32_of(config.arm_feature_dim),
        arm_ids: config.arms.clone(),
        hidden_layers: config
            .network
            .hidden_layers
            .iter()
            .copied()
            .map(u32_of)
            .collect(),
        drop_rates: config.effective_drop_rates(),
        learning_rate: config.optimizer.learning_rate,
        batch_size: u32_of(config.optimizer.batch_size),
        updates_per_reward: u32_of(config.optimizer.updates_per_reward),
        replay_capacity: u32_of(config.optimizer.replay_capacity),
        prior_strength: config.optimizer.prior_strength,
        reward_window_seconds: config.pending.reward_window_seconds,
        default_reward: config.pending.default_reward,
        seed: config.seed,
        policy: config.policy.kind.as_str().to_owned(),
        epsilon: config.policy.epsilon,
        propensity_samples: u32_of(config.policy.propensity_samples),
        ..Default::default()
    }
}

/// A gRPC `BanditService` that does no work: `ChooseArm` returns the first candidate that
/// is not excluded (the first configured arm when a fixed-arm request names none, `"0"` for
/// an unknown model) with a zero score per candidate and a fresh decision id from a counter;
/// `ReportReward` returns OK; `GetModel` and `ListModels` describe the configured models, so
/// a client's start-up checks pass. What it costs to serve is the transport's ceiling.
#[derive(Debug)]
pub struct NoopService {
    models: Vec<proto::ModelInfo>,
    next_id: AtomicU64,
}

impl NoopService {
    /// A no-op service describing the models of `config`.
    pub fn new(config: &Config) -> Self {
        Self::from_models(config.models.iter().map(model_info).collect())
    }

    /// A no-op service describing `models` (for instance as another server reported them).
    pub fn from_models(models: Vec<proto::ModelInfo>) -> Self {
        Self {
            models,
            next_id: AtomicU64::new(0),
        }
    }

    /// The service wrapped for `tonic::transport::Server::add_service`.
    pub fn into_server(self) -> proto::bandit_service_server::BanditServiceServer<Self> {
        proto::bandit_service_server::BanditServiceServer::new(self)
    }
}

#[tonic::async_trait]
impl proto::bandit_service_server::BanditService for NoopService {
    async fn choose_arm(
        &self,
        request: tonic::Request<proto::ChooseArmRequest>,
    ) -> Result<tonic::Response<proto::ChooseArmResponse>, tonic::Status> {
        let req = request.into_inner();
        let excluded = |id: &str| req.excluded_arm_ids.iter().any(|e| e == id);
        let ids: Vec<&str> = if req.candidates.is_empty() {
            match self.models.iter().find(|m| m.name == req.model) {
                Some(m) => m.arm_ids.iter().map(String::as_str).collect(),
                None => vec!["0"],
            }
        } else {
            req.candidates.iter().map(|c| c.id.as_str()).collect()
        };
        let ids: Vec<&str> = ids.into_iter().filter(|id| !excluded(id)).collect();
        let arm_id = ids.first().copied().unwrap_or("0").to_owned();
        let decision_id = if req.decision_id.is_empty() {
            self.next_id.fetch_add(1, Ordering::Relaxed).to_string()
        } else {
            req.decision_id
        };
        Ok(tonic::Response::new(proto::ChooseArmResponse {
            decision_id,
            arm_id,
            scores: ids
                .iter()
                .map(|id| proto::ArmScore {
                    arm_id: (*id).to_owned(),
                    score: 0.0,
                    ..Default::default()
                })
                .collect(),
            model_version: 0,
            propensity: None,
            holdout: false,
        }))
    }

    async fn report_reward(
        &self,
        _request: tonic::Request<proto::ReportRewardRequest>,
    ) -> Result<tonic::Response<proto::ReportRewardResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::ReportRewardResponse {
            duplicate: false,
        }))
    }

    async fn get_model(
        &self,
        request: tonic::Request<proto::GetModelRequest>,
    ) -> Result<tonic::Response<proto::ModelInfo>, tonic::Status> {
        let name = request.into_inner().model;
        self.models
            .iter()
            .find(|m| m.name == name)
            .cloned()
            .map(tonic::Response::new)
            .ok_or_else(|| tonic::Status::not_found(format!("model: no model named {name:?}")))
    }

    async fn list_models(
        &self,
        _request: tonic::Request<proto::ListModelsRequest>,
    ) -> Result<tonic::Response<proto::ListModelsResponse>, tonic::Status> {
        Ok(tonic::Response::new(proto::ListModelsResponse {
            models: self.models.clone(),
        }))
    }

    // The no-op server measures the client and the transport on the decision path; it has
    // no models to administer.
    async fn create_model(
        &self,
        _request: tonic::Request<proto::CreateModelRequest>,
    ) -> Result<tonic::Response<proto::ModelInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no admin calls",
        ))
    }

    async fn update_model(
        &self,
        _request: tonic::Request<proto::UpdateModelRequest>,
    ) -> Result<tonic::Response<proto::ModelInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no admin calls",
        ))
    }

    async fn delete_model(
        &self,
        _request: tonic::Request<proto::DeleteModelRequest>,
    ) -> Result<tonic::Response<proto::DeleteModelResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no admin calls",
        ))
    }

    async fn list_checkpoints(
        &self,
        _request: tonic::Request<proto::ListCheckpointsRequest>,
    ) -> Result<tonic::Response<proto::ListCheckpointsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no admin calls",
        ))
    }

    async fn rollback_model(
        &self,
        _request: tonic::Request<proto::RollbackModelRequest>,
    ) -> Result<tonic::Response<proto::ModelInfo>, tonic::Status> {
        Err(tonic::Status::unimplemented(
            "the no-op server has no admin calls",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::from_spec;

    #[test]
    fn mean_std_and_normalization() {
        let (m, s) = mean_std(&[2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]);
        assert!((m - 5.0).abs() < 1e-12);
        assert!((s - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
        assert_eq!(mean_std(&[3.0]), (3.0, 0.0));
        assert_eq!(normalized_regret(5.0, 10.0), 50.0);
        assert!(normalized_regret(1.0, 0.0).is_nan());
    }

    #[test]
    fn default_models_fit_their_environments() {
        let wheel = from_spec("wheel", 1).unwrap();
        let model = model_for_env(&*wheel, None).unwrap();
        assert_eq!(model.kind, ModelKind::FixedArms);
        assert_eq!(model.arms, ["0", "1", "2", "3", "4"]);
        assert_eq!(model.context_dim, 2);

        let items = from_spec("per-arm:3,5,20,4", 1).unwrap();
        let model = model_for_env(&*items, None).unwrap();
        assert_eq!(model.kind, ModelKind::PerArmFeatures);
        assert_eq!((model.context_dim, model.arm_feature_dim), (3, 5));

        // A given model is checked, not reshaped.
        let err = model_for_env(&*items, Some(&model_for_env(&*wheel, None).unwrap()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("fixed-arm model"), "{err}");
        let mut narrow = model_for_env(&*wheel, None).unwrap();
        narrow.arms.pop();
        let err = model_for_env(&*wheel, Some(&narrow))
            .unwrap_err()
            .to_string();
        assert!(err.contains("\"4\""), "{err}");
    }

    /// The in-process run is deterministic given the seeds, and its totals add up.
    #[test]
    fn inproc_is_deterministic() {
        let play = || {
            let mut env = from_spec("per-arm:3,3,20,4", 5).unwrap();
            let mut model = model_for_env(&*env, None).unwrap();
            model.network.hidden_layers = vec![16];
            model.network.drop_rates = Some(vec![0.0, 0.2]);
            run_inproc(&mut *env, &model, 100, |_| {}).unwrap()
        };
        let (a, b) = (play(), play());
        assert_eq!(a.tally, b.tally);
        assert_eq!(a.curve, b.curve);
        assert_eq!(a.tally.decisions, 100);
        assert_eq!(a.curve.last().unwrap().decisions, 100);
        assert!(a.tally.regret >= 0.0 && a.tally.uniform_regret > 0.0);
        assert_eq!(a.steps, 200);
    }
}
