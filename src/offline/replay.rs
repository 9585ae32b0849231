//! Replaying a policy over a log in order, learning as it goes: at each logged decision the
//! policy, as trained on everything logged before it, gives its probability of choosing each
//! candidate; then it trains on the logged example, as the server's learner would have.
//!
//! Probabilities come from the machinery that computes a served decision's `propensity`
//! ([`policy::propensity`], [`policy::exact_propensity`]): exact for `greedy`,
//! `epsilon_greedy` and `uniform`; for the Thompson policies each candidate's
//! `(1 + wins) / (samples + 1)` over one shared set of `samples` posterior draws, normalised
//! to sum to 1, which makes it `(1 + wins) / (samples + n)` for `n` candidates.
//!
//! What a replayed policy learns from is the logged traffic (every logged example, whoever
//! chose it): the estimate is the value of that configuration trained on this traffic, not
//! of a run that only saw the rewards of its own choices.

use rand::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::logs::{Log, LoggedDecision};
use crate::{
    config::{ModelConfig, ModelKind, PolicyKind},
    domain::Example,
    error::Error,
    learner::Trainer,
    policy::{self, Inputs, Policy, Snapshot},
};

/// A trainer and the snapshot serving from it, republished every `publish_every_steps`
/// steps: the in-process stand-in for a learner thread, deterministic given the model seed.
#[derive(Debug)]
pub struct Online {
    trainer: Trainer,
    snapshot: Snapshot,
    version: u64,
    publish_every: usize,
    since_publish: usize,
    /// Seeds the decisions and propensity draws.
    rng: Xoshiro256PlusPlus,
}

impl Online {
    /// A fresh model of `config`.
    ///
    /// # Errors
    /// The network cannot be built.
    pub fn new(config: &ModelConfig) -> Result<Self, Error> {
        Self::from_trainer(config, Trainer::new(config)?)
    }

    /// Serving from `trainer` (for example one restored from a warm-start checkpoint).
    ///
    /// # Errors
    /// The snapshot cannot be copied.
    pub fn from_trainer(config: &ModelConfig, mut trainer: Trainer) -> Result<Self, Error> {
        let snapshot = trainer.snapshot(0)?;
        Ok(Self {
            trainer,
            snapshot,
            version: 0,
            publish_every: config.learner.publish_every_steps.max(1),
            since_publish: 0,
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed),
        })
    }

    /// The snapshot that serves now.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// One decision by the snapshot's policy, from this replay's RNG.
    ///
    /// # Errors
    /// As [`policy::decide`].
    pub fn decide(&mut self, inputs: Inputs<'_>) -> Result<policy::Choice, Error> {
        policy::decide(&self.snapshot, inputs, &mut self.rng)
    }

    /// Trains on one example (the steps it buys), republishing on schedule.
    ///
    /// # Errors
    /// A numeric failure inside candle.
    pub fn learn(&mut self, example: Example) -> Result<(), Error> {
        let steps = self.trainer.add(example);
        self.trainer.train(steps)?;
        self.since_publish += steps;
        if self.since_publish >= self.publish_every {
            self.since_publish = 0;
            self.version += 1;
            self.snapshot = self.trainer.snapshot(self.version)?;
        }
        Ok(())
    }

    /// The mean network's expected reward of every candidate (no dropout, no posterior draw).
    ///
    /// # Errors
    /// As [`policy::decide`].
    pub fn mean_scores(&mut self, inputs: Inputs<'_>) -> Result<Vec<f64>, Error> {
        let saved = self.snapshot.policy;
        self.snapshot.policy = Policy {
            kind: PolicyKind::Greedy,
            epsilon: 0.0,
        };
        let scores = policy::decide(&self.snapshot, inputs, &mut self.rng).map(|c| c.scores);
        self.snapshot.policy = saved;
        scores
    }

    /// The probability of the snapshot's policy choosing each candidate (see the module
    /// documentation).
    ///
    /// # Errors
    /// As [`policy::propensity`].
    pub fn probabilities(&mut self, inputs: Inputs<'_>, samples: usize) -> Result<Vec<f64>, Error> {
        let n = inputs.len();
        let policy = self.snapshot.policy;
        let greedy = match policy.kind {
            PolicyKind::Uniform => Some(0),
            PolicyKind::Greedy | PolicyKind::EpsilonGreedy => {
                Some(policy::argmax(&self.mean_scores(inputs)?))
            }
            PolicyKind::McDropout | PolicyKind::NeuralLinear => None,
        };
        if let Some(greedy) = greedy {
            return Ok((0..n)
                .map(|i| policy::exact_propensity(policy, n, i, greedy).unwrap_or(0.0))
                .collect());
        }
        // Counted as `policy::propensity` counts one candidate's wins, with the decision's
        // own sample counted once per candidate, then normalised.
        let seed = self.rng.next_u64();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let wins = policy::wins(&self.snapshot, inputs, samples, &mut rng)?;
        let total = (samples + n) as f64;
        Ok(wins.into_iter().map(|w| (1 + w) as f64 / total).collect())
    }
}

/// A logged decision as the network sees it: the inputs of its candidates and the example
/// of its choice.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Fixed arms: the candidates' heads; per-arm: empty.
    pub heads: Vec<usize>,
    /// Fixed arms: the context; per-arm: one row per candidate.
    pub values: Vec<f32>,
    /// The logged choice's training example.
    pub example: Example,
    kind: ModelKind,
    rows: usize,
}

impl Prepared {
    /// Checks `d` against `model` and lays it out for the network; `seq` numbers the example.
    ///
    /// # Errors
    /// The context or a candidate's features have the wrong length, or a candidate is not
    /// one of a fixed-arm model's arms, naming the decision and the field.
    pub fn new(model: &ModelConfig, d: &LoggedDecision, seq: u64) -> Result<Self, Error> {
        let bad =
            |field: &str, detail: String| Error::invalid(format!("{}: {field}", d.at), detail);
        if d.chosen >= d.candidates.len() {
            return Err(bad(
                "chosen",
                format!("candidate {} of {}", d.chosen, d.candidates.len()),
            ));
        }
        if d.context.len() != model.context_dim {
            return Err(bad(
                "context",
                format!(
                    "{} values, model {:?} takes {}",
                    d.context.len(),
                    model.name,
                    model.context_dim
                ),
            ));
        }
        match model.kind {
            ModelKind::FixedArms => {
                let heads = d
                    .candidates
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        model.arms.iter().position(|a| *a == c.id).ok_or_else(|| {
                            bad(
                                &format!("candidates[{i}].id"),
                                format!("{:?} is not an arm of model {:?}", c.id, model.name),
                            )
                        })
                    })
                    .collect::<Result<Vec<usize>, Error>>()?;
                let head = heads[d.chosen];
                Ok(Self {
                    example: Example {
                        input: d.context.clone(),
                        head: head as u32,
                        reward: d.reward,
                        seq,
                    },
                    heads,
                    values: d.context.clone(),
                    kind: model.kind,
                    rows: d.candidates.len(),
                })
            }
            ModelKind::PerArmFeatures => {
                let mut values = Vec::with_capacity(d.candidates.len() * model.input_dim());
                for (i, c) in d.candidates.iter().enumerate() {
                    if c.features.len() != model.arm_feature_dim {
                        return Err(bad(
                            &format!("candidates[{i}].features"),
                            format!(
                                "{} values, model {:?} takes {}",
                                c.features.len(),
                                model.name,
                                model.arm_feature_dim
                            ),
                        ));
                    }
                    values.extend_from_slice(&d.context);
                    values.extend_from_slice(&c.features);
                }
                let width = model.input_dim();
                let input = values[d.chosen * width..(d.chosen + 1) * width].to_vec();
                Ok(Self {
                    heads: Vec::new(),
                    values,
                    example: Example {
                        input,
                        head: 0,
                        reward: d.reward,
                        seq,
                    },
                    kind: model.kind,
                    rows: d.candidates.len(),
                })
            }
        }
    }

    /// The network's view of the candidates.
    pub fn inputs(&self) -> Inputs<'_> {
        match self.kind {
            ModelKind::FixedArms => Inputs::Heads {
                context: &self.values,
                heads: &self.heads,
            },
            ModelKind::PerArmFeatures => Inputs::Rows {
                values: &self.values,
                rows: self.rows,
            },
        }
    }
}

/// Every decision of `log` prepared for `model`.
///
/// # Errors
/// As [`Prepared::new`].
pub fn prepare(model: &ModelConfig, log: &Log) -> Result<Vec<Prepared>, Error> {
    log.decisions
        .iter()
        .enumerate()
        .map(|(t, d)| Prepared::new(model, d, t as u64 + 1))
        .collect()
}

/// `model`'s probabilities of every candidate of every logged decision, replayed in order
/// and learning from each logged example after deciding on it. A `uniform` model's choice
/// does not depend on its network, so it is not trained.
///
/// # Errors
/// As [`Online::probabilities`] and [`Online::learn`].
pub fn replay(
    model: &ModelConfig,
    prepared: &[Prepared],
    samples: usize,
) -> Result<Vec<Vec<f64>>, Error> {
    let mut online = Online::new(model)?;
    let learns = model.policy.kind != PolicyKind::Uniform;
    let mut out = Vec::with_capacity(prepared.len());
    for p in prepared {
        out.push(online.probabilities(p.inputs(), samples)?);
        if learns {
            online.learn(p.example.clone())?;
        }
    }
    Ok(out)
}

/// The reward model of the doubly robust estimator.
#[derive(Debug, Clone, PartialEq)]
pub enum RewardModel {
    /// The model's network trained on the log in order, each prediction made before it
    /// learns that decision's example (so it never predicts a reward it has seen).
    Network,
    /// Each arm's mean logged reward so far (0 before its first), by candidate id.
    ArmMean,
    /// Predictions given by the caller, one row per decision, one value per candidate.
    Given(Vec<Vec<f64>>),
}

/// The reward model's predictions for every candidate of every decision.
///
/// # Errors
/// The network fails, or given predictions do not match the log's shape.
pub fn predictions(
    model: &ModelConfig,
    log: &Log,
    prepared: &[Prepared],
    kind: &RewardModel,
) -> Result<Vec<Vec<f64>>, Error> {
    match kind {
        RewardModel::Network => {
            let mut net = model.clone();
            net.policy.kind = PolicyKind::Greedy;
            let mut online = Online::new(&net)?;
            let mut out = Vec::with_capacity(prepared.len());
            for p in prepared {
                out.push(online.mean_scores(p.inputs())?);
                online.learn(p.example.clone())?;
            }
            Ok(out)
        }
        RewardModel::ArmMean => {
            let mut sums: std::collections::HashMap<&str, (f64, f64)> = Default::default();
            Ok(log
                .decisions
                .iter()
                .map(|d| {
                    let row = d
                        .candidates
                        .iter()
                        .map(|c| match sums.get(c.id.as_str()) {
                            Some((s, n)) if *n > 0.0 => s / n,
                            _ => 0.0,
                        })
                        .collect();
                    let e = sums.entry(d.candidates[d.chosen].id.as_str()).or_default();
                    e.0 += d.reward;
                    e.1 += 1.0;
                    row
                })
                .collect())
        }
        RewardModel::Given(rows) => {
            if rows.len() != log.decisions.len() {
                return Err(Error::invalid(
                    "reward_model",
                    format!(
                        "{} rows of predictions for {} decisions",
                        rows.len(),
                        log.decisions.len()
                    ),
                ));
            }
            for (row, d) in rows.iter().zip(&log.decisions) {
                if let Some(bad) = row.iter().find(|v| !v.is_finite()) {
                    return Err(Error::invalid(
                        format!("reward_model: {}", d.at),
                        format!("{bad} is not a finite prediction"),
                    ));
                }
                if row.len() != d.candidates.len() {
                    return Err(Error::invalid(
                        format!("reward_model: {}", d.at),
                        format!(
                            "{} predictions for {} candidates",
                            row.len(),
                            d.candidates.len()
                        ),
                    ));
                }
            }
            Ok(rows.clone())
        }
    }
}
