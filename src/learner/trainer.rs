//! One model's training state without any thread: the network and its SGD (optimizer,
//! prior, Concrete Dropout's rates, periodic refits), the replay buffer and the reward
//! statistics; NeuralLinear's regressions are `linear.rs`'s. The learner thread drives it;
//! benchmarks and the in-process simulation harness drive it directly.

use std::time::Duration;

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{
    linear::LinearState,
    replay::{Example, Replay},
    reward_stats::RunningStats,
};
use crate::{
    config::{ModelConfig, OptimizerKind, RefitConfig},
    error::Error,
    model::{NetShape, TrainableNet, matrix},
    policy::{Policy, Snapshot},
    storage::checkpoint::{Checkpoint, CheckpointMeta},
};

#[derive(Debug)]
enum Opt {
    Adam(AdamW),
    Sgd(SGD),
}

/// A model's trainable state.
#[derive(Debug)]
pub struct Trainer {
    net: TrainableNet,
    opt: Opt,
    /// Concrete Dropout's optimizer of the drop rates' logits (`None`: fixed rates).
    rate_opt: Option<AdamW>,
    learning_rate: f64,
    prior_strength: f64,
    /// `reward_std_growth_limit`: how much one reward may grow the reward scale.
    std_growth_limit: f64,
    batch_size: usize,
    updates_per_reward: usize,
    /// `decay_half_life`: forgetting for non-stationary rewards (none = stationary).
    decay_half_life: Option<f64>,
    replay: Replay,
    rewards: RunningStats,
    rng: Xoshiro256PlusPlus,
    /// Sequence number of the last example added.
    last_seq: Option<u64>,
    /// Steps over the model's life (restored from checkpoints).
    steps: u64,
    policy: Policy,
    /// The `neural_linear` policy's regressions.
    linear: Option<LinearState>,
    /// Periodic refits (`refit`), if any, and where the current one stands.
    refit: Option<RefitConfig>,
    /// Rewards since the last refit began.
    since_refit: usize,
    /// Steps taken in the current refit (the step size falls with it).
    refit_step: usize,
    /// Steps the current refit still owes; the linear posterior is refitted when it ends.
    refit_left: usize,
    /// `drop_rates_shrink_after` as it applies ([`ModelConfig::effective_shrink_after`]).
    shrink_after: Option<f64>,
}

impl Trainer {
    /// The initial network of `config` (fixed by its seed) and an empty replay buffer.
    ///
    /// # Errors
    /// candle cannot build the network or the optimizer.
    pub fn new(config: &ModelConfig) -> Result<Self, Error> {
        let shape = NetShape {
            input_dim: config.input_dim(),
            hidden: config.network.hidden_layers.clone(),
            output_dim: config.output_dim(),
            drop_rates: config.effective_drop_rates(),
        };
        let mut net = if config.network.heteroscedastic {
            TrainableNet::new_heteroscedastic(shape, config.seed)?
        } else {
            TrainableNet::new(shape, config.seed)?
        };
        if config.network.concrete_dropout {
            net = net.with_concrete_dropout()?;
        }
        // The rates' logits get an Adam of their own: the same step size, and no weight
        // decay (decay would pull every rate towards 0.5, which is the entropy term's job).
        let rate_opt = match net.drop_logit_vars() {
            logits if logits.is_empty() => None,
            logits => Some(AdamW::new(
                logits,
                ParamsAdamW {
                    lr: config.optimizer.learning_rate,
                    weight_decay: 0.0,
                    ..ParamsAdamW::default()
                },
            )?),
        };
        let opt = match config.optimizer.kind {
            OptimizerKind::Adam => Opt::Adam(AdamW::new(
                net.vars(),
                ParamsAdamW {
                    lr: config.optimizer.learning_rate,
                    weight_decay: 0.0,
                    ..ParamsAdamW::default()
                },
            )?),
            OptimizerKind::Sgd => Opt::Sgd(SGD::new(net.vars(), config.optimizer.learning_rate)?),
        };
        Self {
            net,
            opt,
            rate_opt,
            learning_rate: config.optimizer.learning_rate,
            prior_strength: config.optimizer.prior_strength,
            std_growth_limit: config.learner.reward_std_growth_limit,
            batch_size: config.optimizer.batch_size,
            updates_per_reward: config.optimizer.updates_per_reward,
            decay_half_life: config.optimizer.decay_half_life,
            replay: Replay::new(config.optimizer.replay_capacity),
            rewards: RunningStats::default(),
            // The decision path seeds from `seed`; a different stream for training.
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0x5eed_1ea7_0000_0001),
            last_seq: None,
            steps: 0,
            policy: Policy {
                kind: config.policy.kind,
                epsilon: config.policy.epsilon,
            },
            linear: None,
            refit: config.learner.refit,
            since_refit: 0,
            refit_step: 0,
            refit_left: 0,
            shrink_after: config.effective_shrink_after(),
        }
        .with_linear(config)
    }

    /// Sets up NeuralLinear's regressions on the initial network when the policy needs them.
    fn with_linear(mut self, config: &ModelConfig) -> Result<Self, Error> {
        if config.uses_linear_posterior() {
            self.linear = Some(LinearState::new(config, self.net.snapshot()?));
        }
        Ok(self)
    }

    /// The network's shape at the rates that serve now: the learned or fixed rates, times
    /// `sqrt(shrink_after / N)` once `N` (examples seen) exceeds `drop_rates_shrink_after`,
    /// the rate at which a posterior's spread narrows.
    ///
    /// # Errors
    /// candle cannot read a learned rate.
    fn shape_now(&self) -> Result<NetShape, Error> {
        let mut shape = self.net.current_shape()?;
        if let Some(n0) = self.shrink_after {
            let n = self.rewards.n as f64;
            if n > n0 {
                let factor = (n0 / n).sqrt();
                shape.drop_rates.iter_mut().for_each(|p| *p *= factor);
            }
        }
        Ok(shape)
    }

    /// Throttles NeuralLinear refreshes to at most about `1/(1+factor)` of the time (see
    /// `LinearState::throttle`): for the learner thread, where the replay buffer may be large
    /// and rewards fast. Without it refreshes run exactly every `refresh_every` examples.
    pub fn throttle_refreshes(&mut self, factor: u32) {
        if let Some(lin) = &mut self.linear {
            lin.throttle(factor);
        }
    }

    /// NeuralLinear refreshes so far and how long the latest took (none for other policies).
    pub fn linear_refreshes(&self) -> Option<(u64, Duration)> {
        self.linear.as_ref().map(LinearState::refreshes)
    }

    /// Recomputes NeuralLinear's features with the current network and refits every head's
    /// regression on the whole replay buffer (rewards standardised with the current
    /// statistics). Nothing for other policies.
    ///
    /// # Errors
    /// candle cannot copy the weights or compute the features.
    pub fn refresh_linear(&mut self) -> Result<(), Error> {
        let mask_shape = match &self.linear {
            Some(lin) if lin.fit_masked => Some(self.shape_now()?),
            _ => None,
        };
        let Some(lin) = &mut self.linear else {
            return Ok(());
        };
        let features = self.net.snapshot()?;
        // With `decay_half_life`, the forgetting factor: an example `a` rewards old weighs
        // 2^(-a / half_life) in the regression (its row and target scaled by the root).
        let weight = |age: usize| {
            self.decay_half_life.map_or(1.0, |h| {
                (-(age as f64) * std::f64::consts::LN_2 / (2.0 * h)).exp()
            })
        };
        let items: Vec<(&Example, f64)> = self
            .replay
            .iter()
            .zip(self.replay.ages())
            .map(|(e, age)| (e, weight(age)))
            .collect();
        lin.refit(
            features,
            &items,
            (self.rewards.mean, self.rewards.std()),
            self.net.shape().input_dim,
            mask_shape.as_ref(),
            &mut self.rng,
        )
    }

    /// NeuralLinear's share of [`Trainer::add`], before the example enters replay: it
    /// updates its head's regression on the frozen features, or returns true when a refresh
    /// is due instead.
    fn add_linear(&mut self, example: &Example) -> Result<bool, Error> {
        let mask_shape = match &self.linear {
            Some(lin) if lin.fit_masked => Some(self.shape_now()?),
            _ => None,
        };
        let refits = self.refit.is_some();
        let input_dim = self.net.shape().input_dim;
        let Some(lin) = &mut self.linear else {
            return Ok(false);
        };
        lin.add(
            example,
            input_dim,
            refits,
            mask_shape.as_ref(),
            &mut self.rng,
        )
    }

    /// Layer widths, input first: what a checkpoint must match (a heteroscedastic network's
    /// output counts its log variances too, so a checkpoint of the other kind is refused).
    pub fn widths(&self) -> Vec<usize> {
        let shape = self.net.shape();
        let outputs = if self.net.has_variance_heads() { 2 } else { 1 } * shape.output_dim;
        std::iter::once(shape.input_dim)
            .chain(shape.hidden.iter().copied())
            .chain([outputs])
            .collect()
    }

    /// Restores weights, reward statistics, step count and log position from a checkpoint.
    ///
    /// # Errors
    /// The checkpoint's tensors do not fit the network.
    pub fn restore(&mut self, checkpoint: &Checkpoint) -> Result<(), Error> {
        self.net.load_named(&checkpoint.tensors)?;
        let meta = &checkpoint.meta;
        self.rewards = RunningStats {
            n: meta.reward_n,
            mean: meta.reward_mean,
            m2: meta.reward_m2,
        };
        self.steps = meta.steps;
        self.last_seq = Some(meta.last_seq);
        Ok(())
    }

    /// Puts an already-counted example (one a checkpoint covers) back into replay only.
    pub fn push_replay(&mut self, mut example: Example) {
        // As `add` would have admitted it (the log keeps the raw report).
        example.reward = self.rewards.bounded(example.reward, self.std_growth_limit);
        self.replay.push(example);
    }

    /// The log position of the oldest example in the replay buffer: a restart that resumes
    /// from a checkpoint taken now needs the log from there on.
    pub fn replay_oldest_seq(&self) -> Option<u64> {
        self.replay.iter().map(|e| e.seq).min()
    }

    /// SGD steps taken over the model's life (restored from checkpoints).
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The sequence number of the last example added, if any.
    pub fn last_seq(&self) -> Option<u64> {
        self.last_seq
    }

    /// The weights by name and the metadata of a checkpoint at `version`.
    ///
    /// # Errors
    /// candle cannot copy a tensor.
    pub fn checkpoint(
        &self,
        version: u64,
    ) -> Result<(std::collections::HashMap<String, Tensor>, CheckpointMeta), Error> {
        let meta = CheckpointMeta {
            version,
            widths: self.widths(),
            last_seq: self.last_seq.unwrap_or(0),
            reward_n: self.rewards.n,
            reward_mean: self.rewards.mean,
            reward_m2: self.rewards.m2,
            steps: self.steps,
            replay_from: self.replay_oldest_seq().unwrap_or(0),
            created_ms: crate::domain::now_ms(),
            weights_checksum: 0,
        };
        Ok((self.net.named_tensors()?, meta))
    }

    /// Folds one example into the replay buffer and the reward statistics; returns the
    /// number of steps it buys (`updates_per_reward`).
    pub fn add(&mut self, mut example: Example) -> usize {
        // Replay keeps the reward as admitted to the statistics, so that a wild value cannot
        // come back as a huge training target either.
        example.reward = self
            .rewards
            .push_bounded(example.reward, self.std_growth_limit);
        self.last_seq = Some(self.last_seq.map_or(example.seq, |s| s.max(example.seq)));
        let refresh = self.add_linear(&example).unwrap_or_else(|e| {
            tracing::error!(error = %e, "neural_linear update failed");
            false
        });
        self.replay.push(example);
        if refresh && let Err(e) = self.refresh_linear() {
            tracing::error!(error = %e, "neural_linear refresh failed");
        }
        let Some(refit) = self.refit else {
            return self.updates_per_reward;
        };
        self.since_refit += 1;
        if self.since_refit < refit.every {
            return 0;
        }
        // A refit whose steps were skipped (a learner's backlog cap) still refreshes.
        if self.refit_left > 0 {
            self.end_refit();
        }
        self.since_refit = 0;
        self.refit_step = 0;
        self.refit_left = refit.steps;
        refit.steps
    }

    /// The end of a periodic refit: the linear posterior (if any) is refitted on the new
    /// network's features.
    fn end_refit(&mut self) {
        self.refit_left = 0;
        if let Err(e) = self.refresh_linear() {
            tracing::error!(error = %e, "neural_linear refresh failed");
        }
    }

    /// Takes `steps` minibatch steps; returns the last minibatch loss (NaN for 0 steps).
    ///
    /// # Errors
    /// A numeric failure inside candle.
    pub fn train(&mut self, steps: usize) -> Result<f64, Error> {
        let mut loss = f64::NAN;
        for _ in 0..steps {
            loss = self.step()?;
        }
        Ok(loss)
    }

    /// One SGD step on a minibatch drawn from replay, with fresh dropout masks per example
    /// and squared error on the chosen head only. The prior enters as weight decay weighing
    /// `prior_strength / N` (README "The method" §1), N = examples seen, so the data dominates as N
    /// grows. With Concrete Dropout the masks are relaxed ones that depend on the learned
    /// rates, the loss adds the rates' regulariser (see
    /// [`TrainableNet::concrete_regulariser`]) and layer `l`'s weights decay by
    /// `2 prior / (N (1-p_l))` instead. Returns the minibatch squared error (without the
    /// regulariser); does nothing (NaN) while replay is empty.
    ///
    /// # Errors
    /// A numeric failure inside candle.
    pub fn step(&mut self) -> Result<f64, Error> {
        if self.replay.is_empty() {
            return Ok(f64::NAN);
        }
        let input_dim = self.net.shape().input_dim;
        let (mean, std) = (self.rewards.mean, self.rewards.std());
        let batch = match self.decay_half_life {
            Some(half_life) => self
                .replay
                .sample_recent(&mut self.rng, self.batch_size, half_life),
            None => self.replay.sample(&mut self.rng, self.batch_size),
        };
        let m = batch.len();
        let mut inputs = Vec::with_capacity(m * input_dim);
        let mut heads = Vec::with_capacity(m);
        let mut targets = Vec::with_capacity(m);
        for example in &batch {
            inputs.extend_from_slice(&example.input);
            heads.push(example.head);
            targets.push(((example.reward - mean) / std) as f32);
        }
        let xs = matrix(inputs, m, input_dim)?;
        // A heteroscedastic network's log variance of head h is output output_dim + h.
        let output_dim = self.net.shape().output_dim as u32;
        let variance_heads: Option<Vec<u32>> = self
            .net
            .has_variance_heads()
            .then(|| heads.iter().map(|h| h + output_dim).collect());
        let heads = Tensor::from_vec(heads, (m, 1), &Device::Cpu)?;
        let ys = Tensor::from_vec(targets, (m, 1), &Device::Cpu)?;
        let masks = match self.net.concrete_masks(&mut self.rng, m)? {
            Some(relaxed) => relaxed,
            None => self.shape_now()?.draw_masks(&mut self.rng, m)?,
        };
        // Periodic refits restart the step size and let it fall within each refit.
        let lr = match self.refit {
            Some(refit) if self.refit_left > 0 => {
                self.learning_rate / (1.0 + refit.lr_decay * self.refit_step as f64)
            }
            _ => self.learning_rate,
        };
        // The rates the masks were drawn at, for the weights' decay below.
        let rates = self.net.drop_rates()?;
        let out = self.net.forward(&xs, Some(&masks))?;
        let pred = out.gather(&heads, 1)?;
        let squared = (pred - ys)?.sqr()?;
        let loss = squared.mean_all()?;
        let data = match variance_heads {
            Some(variance_heads) => {
                let variance_heads = Tensor::from_vec(variance_heads, (m, 1), &Device::Cpu)?;
                heteroscedastic_loss(&squared, &out.gather(&variance_heads, 1)?)?
            }
            None => loss.clone(),
        };
        // d/dW of (prior/N)|W|^2 is 2 prior/N W: applied as (decoupled) decay.
        let decay = 2.0 * self.prior_strength / self.rewards.n.max(1) as f64;
        let objective = match self
            .net
            .concrete_regulariser(self.rewards.n as f64, self.prior_strength)?
        {
            Some(reg) => (data + reg)?,
            None => data,
        };
        // A non-finite objective (an overflow on extreme inputs) would write NaN into every
        // weight it reaches and poison the model for good: skip such a step.
        let value = objective.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !value.is_finite() {
            tracing::warn!(objective = %value, "skipped a training step with a non-finite loss");
            return Ok(f64::NAN);
        }
        let grads = objective.backward()?;
        let concrete = self.net.learns_drop_rates();
        match &mut self.opt {
            Opt::Adam(adam) => {
                let params = ParamsAdamW {
                    weight_decay: decay,
                    lr,
                    ..adam.params().clone()
                };
                adam.set_params(params);
                adam.step(&grads)?;
                if concrete {
                    // Adam decayed every variable by lr·decay; layer l's weights owe
                    // lr·decay·(1/(1-p) - 1) = lr·decay·p/(1-p) more.
                    for (w, p) in self.net.weight_vars().iter().zip(&rates) {
                        let keep = 1.0 - lr * decay * p / (1.0 - p);
                        w.set(&(w.as_tensor() * keep)?)?;
                    }
                }
            }
            Opt::Sgd(sgd) => {
                sgd.set_learning_rate(lr);
                sgd.step(&grads)?;
                for (w, p) in self.net.weight_vars().iter().zip(&rates) {
                    let scale = if concrete { 1.0 / (1.0 - p) } else { 1.0 };
                    let keep = 1.0 - lr * decay * scale;
                    w.set(&(w.as_tensor() * keep)?)?;
                }
            }
        }
        if let Some(rate_opt) = &mut self.rate_opt {
            rate_opt.step(&grads)?;
            self.net.clamp_drop_logits()?;
        }
        self.steps += 1;
        if self.refit_left > 0 {
            self.refit_step += 1;
            self.refit_left -= 1;
            if self.refit_left == 0 {
                self.end_refit();
            }
        }
        Ok(f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?))
    }

    /// A copy of the current weights and reward scale, stamped `version`.
    ///
    /// # Errors
    /// candle cannot copy a tensor.
    pub fn snapshot(&mut self, version: u64) -> Result<Snapshot, Error> {
        let linear = self
            .linear
            .as_mut()
            .map(LinearState::published)
            .transpose()?;
        Ok(Snapshot {
            version,
            shape: self.shape_now()?,
            weights: self.net.snapshot()?,
            reward_mean: self.rewards.mean,
            reward_std: self.rewards.std(),
            policy: self.policy,
            linear,
        })
    }

    /// Examples in the replay buffer.
    pub fn replay_len(&self) -> usize {
        self.replay.len()
    }

    /// Examples seen (N of the prior's 1/N).
    pub fn examples_seen(&self) -> u64 {
        self.rewards.n
    }
}

/// Bounds on a heteroscedastic head's log variance `s` (standardised rewards) in the loss:
/// the variance stays within `e^±7` (about 0.001 to 1100) of the reward variance, so one
/// example's weight `e^-s` is at most `e^14` times another's and a head that has seen only
/// constant rewards cannot drive `e^-s` (and its gradients) to overflow.
const LOG_VARIANCE_BOUND: f64 = 7.0;

/// The heteroscedastic data term for `squared` errors `(y - μ)²` and log variances `s` of the
/// same examples: the minibatch mean of `e^-s (y - μ)² + s`, twice the Gaussian negative
/// log-likelihood `0.5 (e^-s (y - μ)² + s)` up to a constant. Twice, so that at `s = 0` it is
/// the squared error the fixed-noise loss uses: the prior's decay `2 prior / N` and Concrete
/// Dropout's `2/N` terms are scaled for that loss and keep their meaning. `s` is clamped to
/// `±LOG_VARIANCE_BOUND` (no gradient beyond).
fn heteroscedastic_loss(squared: &Tensor, log_variance: &Tensor) -> candle_core::Result<Tensor> {
    let s = log_variance.clamp(-LOG_VARIANCE_BOUND, LOG_VARIANCE_BOUND)?;
    ((s.neg()?.exp()? * squared)? + s)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ModelKind, PolicyKind};

    /// Two arms on a 2-d context, rewards `x0` and `-x0` (no noise), starting rates 0.2
    /// and 0.3, learned.
    fn concrete_config() -> ModelConfig {
        let mut config = ModelConfig::new("c", ModelKind::FixedArms, 2);
        config.arms = vec!["a".into(), "b".into()];
        config.network.hidden_layers = vec![32];
        config.network.drop_rates = Some(vec![0.2, 0.3]);
        config.network.concrete_dropout = true;
        config
    }

    /// `examples` examples of the noiseless two-arm problem, then `steps` steps.
    fn trained(config: &ModelConfig, examples: u64, steps: usize) -> Trainer {
        let mut trainer = Trainer::new(config).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        for seq in 0..examples {
            let x: [f32; 2] = [
                rand::Rng::random_range(&mut rng, -1.0..1.0),
                rand::Rng::random_range(&mut rng, -1.0..1.0),
            ];
            let head = (seq % 2) as u32;
            let reward = if head == 0 { x[0] } else { -x[0] };
            trainer.add(Example {
                input: x.to_vec(),
                head,
                reward: f64::from(reward),
                seq,
            });
        }
        trainer.train(steps).unwrap();
        trainer
    }

    /// Concrete Dropout on a seeded noiseless problem: with abundant data (4000 examples)
    /// every learned rate falls below its start, as the data term (which prefers less
    /// noise) outweighs the regulariser fading as 1/N; with 10 examples the entropy term
    /// dominates and the rates end higher than with 4000. The snapshot serves the learned
    /// rates.
    #[test]
    fn concrete_rates_shrink_with_abundant_data() {
        let config = concrete_config();
        let mut abundant = trained(&config, 4000, 1500);
        let mut scarce = trained(&config, 10, 1500);
        let many = abundant.net.drop_rates().unwrap();
        let few = scarce.net.drop_rates().unwrap();
        for (l, ((p, q), start)) in many.iter().zip(&few).zip([0.2, 0.3]).enumerate() {
            assert!(
                *p < start - 0.05,
                "layer {l}: {p} after 4000 examples, start {start}"
            );
            assert!(q > p, "layer {l}: {q} after 10 examples, {p} after 4000");
        }
        assert_eq!(abundant.snapshot(1).unwrap().shape.drop_rates, many);
        assert_eq!(scarce.snapshot(1).unwrap().shape.drop_rates, few);
        // Fixed rates stay fixed.
        let mut fixed = config.clone();
        fixed.network.concrete_dropout = false;
        let mut fixed = trained(&fixed, 100, 50);
        assert_eq!(fixed.snapshot(1).unwrap().shape.drop_rates, vec![0.2, 0.3]);
    }

    /// Two arms on a 2-d context: arm 0 pays `x0 + N(0, 0.1²)`, arm 1 pays `-x0 + N(0, 1)`.
    fn noisy_examples(trainer: &mut Trainer, examples: u64) {
        use rand_distr::{Distribution, Normal};
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(17);
        let noise = Normal::new(0.0, 1.0).unwrap();
        for seq in 0..examples {
            let x: [f32; 2] = [
                rand::Rng::random_range(&mut rng, -1.0..1.0),
                rand::Rng::random_range(&mut rng, -1.0..1.0),
            ];
            let head = (seq % 2) as u32;
            let e: f64 = noise.sample(&mut rng);
            let reward = if head == 0 {
                f64::from(x[0]) + 0.1 * e
            } else {
                -f64::from(x[0]) + e
            };
            trainer.add(Example {
                input: x.to_vec(),
                head,
                reward,
                seq,
            });
        }
    }

    fn heteroscedastic_config() -> ModelConfig {
        let mut config = ModelConfig::new("h", ModelKind::FixedArms, 2);
        config.arms = vec!["quiet".into(), "noisy".into()];
        config.network.hidden_layers = vec![32];
        config.network.drop_rates = Some(vec![0.05, 0.1]);
        config.network.heteroscedastic = true;
        config
    }

    /// The loss is the minibatch mean of `e^-s (y-μ)² + s` with `s` clamped; a
    /// heteroscedastic network trains on `2 * output_dim` outputs and serves `output_dim`
    /// means, with the log variances readable apart; its checkpoint widths count both.
    #[test]
    fn heteroscedastic_shapes_and_loss() {
        let squared = Tensor::new(&[[4.0f32], [1.0]], &Device::Cpu).unwrap();
        let s = Tensor::new(&[[4f32.ln()], [0.0]], &Device::Cpu).unwrap();
        let loss: f32 = heteroscedastic_loss(&squared, &s)
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(
            (loss - (1.0 + 4f32.ln() + 1.0) / 2.0).abs() < 1e-5,
            "{loss}"
        );
        let s = Tensor::new(&[[100.0f32], [-100.0]], &Device::Cpu).unwrap();
        let loss: f32 = heteroscedastic_loss(&squared, &s)
            .unwrap()
            .to_scalar()
            .unwrap();
        let want = (4.0 * (-7f32).exp() + 7.0 + 7f32.exp() - 7.0) / 2.0;
        assert!((loss - want).abs() < 1e-2 * want, "{loss} vs {want}");

        let mut trainer = Trainer::new(&heteroscedastic_config()).unwrap();
        assert_eq!(trainer.widths(), vec![2, 32, 4]);
        noisy_examples(&mut trainer, 50);
        let loss = trainer.train(5).unwrap();
        assert!(loss.is_finite());
        let xs = matrix(vec![0.1, 0.2, -0.3, 0.4, 0.5, -0.6], 3, 2).unwrap();
        assert_eq!(trainer.net.forward(&xs, None).unwrap().dims(), [3, 4]);
        let snap = trainer.snapshot(1).unwrap();
        assert_eq!(snap.weights.forward(&xs, None).unwrap().dims(), [3, 2]);
        let log_var = snap.weights.log_variance(&xs).unwrap().unwrap();
        assert_eq!(log_var.dims(), [3, 2]);
        let plain = Trainer::new(&concrete_config())
            .unwrap()
            .snapshot(0)
            .unwrap();
        assert!(plain.weights.log_variance(&xs).unwrap().is_none());

        // A per-arm network: one mean per candidate row, for single and batched draws.
        let mut per_arm = ModelConfig::new("p", ModelKind::PerArmFeatures, 1);
        per_arm.arm_feature_dim = 1;
        per_arm.network.hidden_layers = vec![8];
        per_arm.network.drop_rates = Some(vec![0.1, 0.2]);
        per_arm.network.heteroscedastic = true;
        let snap = Trainer::new(&per_arm).unwrap().snapshot(0).unwrap();
        let values = [0.1f32, 0.2, -0.3, 0.4, 0.5, -0.6];
        let inputs = crate::policy::Inputs::Rows {
            values: &values,
            rows: 3,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let choice = crate::policy::decide(&snap, inputs, &mut rng).unwrap();
        assert_eq!(choice.scores.len(), 3);
        let spread = crate::policy::explain(&snap, inputs, 20, &mut rng).unwrap();
        assert_eq!(spread.len(), 3);
    }

    /// Decisions of every policy read only the mean outputs: replacing the variance
    /// outputs' weights changes the log variances but no choice and no score.
    #[test]
    fn decisions_ignore_the_variance_outputs() {
        use crate::policy::{Inputs, decide};
        let mut trainer = Trainer::new(&heteroscedastic_config()).unwrap();
        noisy_examples(&mut trainer, 200);
        trainer.train(100).unwrap();
        let before = trainer.snapshot(1).unwrap();
        let (w, b) = (&trainer.net.weight_vars()[1], &trainer.net.vars()[3]);
        let w_new = Tensor::cat(
            &[
                w.as_tensor().narrow(1, 0, 2).unwrap(),
                (w.as_tensor().narrow(1, 2, 2).unwrap() * 50.0).unwrap(),
            ],
            1,
        )
        .unwrap();
        let b_new = Tensor::cat(
            &[
                b.as_tensor().narrow(0, 0, 2).unwrap(),
                Tensor::new(&[5.0f32, -5.0], &Device::Cpu).unwrap(),
            ],
            0,
        )
        .unwrap();
        w.set(&w_new).unwrap();
        b.set(&b_new).unwrap();
        let after = trainer.snapshot(2).unwrap();
        let xs = matrix(vec![0.3, -0.2], 1, 2).unwrap();
        let lv = |s: &Snapshot| -> Vec<f32> {
            s.weights
                .log_variance(&xs)
                .unwrap()
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        assert_ne!(lv(&before), lv(&after));
        for kind in [
            PolicyKind::McDropout,
            PolicyKind::Greedy,
            PolicyKind::EpsilonGreedy,
            PolicyKind::Uniform,
        ] {
            let (mut a, mut b) = (before.policy, after.policy);
            a.kind = kind;
            b.kind = kind;
            a.epsilon = 0.3;
            b.epsilon = 0.3;
            let with = |snap: &Snapshot, policy: Policy| Snapshot {
                version: snap.version,
                shape: snap.shape.clone(),
                weights: snap.weights.clone(),
                reward_mean: snap.reward_mean,
                reward_std: snap.reward_std,
                policy,
                linear: None,
            };
            let (sa, sb) = (with(&before, a), with(&after, b));
            let (mut ra, mut rb) = (
                Xoshiro256PlusPlus::seed_from_u64(5),
                Xoshiro256PlusPlus::seed_from_u64(5),
            );
            for _ in 0..20 {
                let inputs = Inputs::Heads {
                    context: &[0.3, -0.2],
                    heads: &[0, 1],
                };
                let (ca, cb) = (
                    decide(&sa, inputs, &mut ra).unwrap(),
                    decide(&sb, inputs, &mut rb).unwrap(),
                );
                assert_eq!(ca, cb, "{kind:?}");
                assert_eq!(ca.scores.len(), 2);
            }
        }
    }

    /// A seeded run on two arms with noise sd 0.1 and 1 learns a log variance about
    /// ln(100) ≈ 4.6 larger for the noisy arm (asserted: more than 2 larger at every
    /// context of a grid), and a mean that still tracks each arm's expected reward.
    #[test]
    fn noisy_arm_learns_larger_variance() {
        let mut trainer = Trainer::new(&heteroscedastic_config()).unwrap();
        noisy_examples(&mut trainer, 3000);
        trainer.train(2000).unwrap();
        let snap = trainer.snapshot(1).unwrap();
        let grid: Vec<f32> = (0..5)
            .flat_map(|i| {
                let x = -0.8 + 0.4 * i as f32;
                [x, 0.0]
            })
            .collect();
        let xs = matrix(grid.clone(), 5, 2).unwrap();
        let lv: Vec<Vec<f32>> = snap
            .weights
            .log_variance(&xs)
            .unwrap()
            .unwrap()
            .to_vec2()
            .unwrap();
        for (row, x) in lv.iter().zip(grid.chunks(2)) {
            assert!(
                row[1] - row[0] > 2.0,
                "x0 = {}: log variances {row:?}",
                x[0]
            );
        }
        let means: Vec<Vec<f32>> = snap.weights.forward(&xs, None).unwrap().to_vec2().unwrap();
        for (row, x) in means.iter().zip(grid.chunks(2)) {
            let quiet = f64::from(row[0]) * snap.reward_std + snap.reward_mean;
            assert!(
                (quiet - f64::from(x[0])).abs() < 0.25,
                "x0 = {}: {quiet}",
                x[0]
            );
        }
    }

    /// A checkpoint carries the learned rates through the checkpoint files into a fresh
    /// trainer; one without them (written by a fixed-rate model) restores the starting rates.
    #[test]
    fn concrete_rates_checkpoint_round_trip() {
        let config = concrete_config();
        let mut trainer = trained(&config, 500, 300);
        let learned = trainer.snapshot(1).unwrap().shape.drop_rates;
        assert!(
            learned
                .iter()
                .zip([0.2, 0.3])
                .all(|(p, s)| (p - s).abs() > 1e-3)
        );
        let dir = tempfile::tempdir().unwrap();
        let (tensors, meta) = trainer.checkpoint(7).unwrap();
        crate::storage::checkpoint::save(dir.path(), "c", &tensors, meta, 3).unwrap();
        let (ck, _) =
            crate::storage::checkpoint::load_latest(dir.path(), "c", &trainer.widths()).unwrap();
        let mut ck = ck.unwrap();
        let mut restored = Trainer::new(&config).unwrap();
        restored.restore(&ck).unwrap();
        let back = restored.snapshot(8).unwrap().shape.drop_rates;
        for (a, b) in learned.iter().zip(&back) {
            assert!((a - b).abs() < 1e-6, "{learned:?} vs {back:?}");
        }
        ck.tensors.retain(|name, _| !name.ends_with("drop_logit"));
        let mut old = Trainer::new(&config).unwrap();
        old.restore(&ck).unwrap();
        let start = old.snapshot(8).unwrap().shape.drop_rates;
        assert!((start[0] - 0.2).abs() < 1e-6 && (start[1] - 0.3).abs() < 1e-6);
    }

    /// The default model (mc_dropout, Bayesian last layer) on the two-arm problem.
    fn linear_config() -> ModelConfig {
        let mut config = concrete_config();
        config.network.concrete_dropout = false;
        config.network.hidden_layers = vec![16, 16];
        config.network.drop_rates = Some(vec![0.0, 0.3, 0.3]);
        config
    }

    /// `refit = { every = 5, steps = 7 }`: rewards owe no steps except every fifth, which
    /// owes 7; the linear posterior is refitted when the seventh step ends (not on
    /// `refresh_every`), and not before.
    #[test]
    fn periodic_refits_owe_steps_every_few_rewards_and_refresh_after() {
        let mut config = linear_config();
        config.policy.neural_linear.refresh_every = 2;
        config.learner.refit = Some(RefitConfig {
            every: 5,
            steps: 7,
            lr_decay: 0.5,
        });
        let mut trainer = Trainer::new(&config).unwrap();
        let example = |seq| Example {
            input: vec![0.5, -0.5],
            head: (seq % 2) as u32,
            reward: seq as f64,
            seq,
        };
        let owed: Vec<usize> = (0..10).map(|seq| trainer.add(example(seq))).collect();
        assert_eq!(owed, [0, 0, 0, 0, 7, 0, 0, 0, 0, 7]);
        assert_eq!(
            trainer.linear_refreshes().unwrap().0,
            1,
            "the skipped refit"
        );
        trainer.train(6).unwrap();
        assert_eq!(trainer.linear_refreshes().unwrap().0, 1);
        trainer.train(1).unwrap();
        assert_eq!(trainer.linear_refreshes().unwrap().0, 2);
        trainer.train(3).unwrap();
        assert_eq!(trainer.linear_refreshes().unwrap().0, 2);
    }

    /// `drop_rates_shrink_after = 100`: the rates serve (and train) unchanged up to 100
    /// examples, then fall as `sqrt(100 / N)`: a quarter at N = 1600.
    #[test]
    fn drop_rates_shrink_as_the_square_root_of_the_evidence() {
        let mut config = linear_config();
        config.network.drop_rates_shrink_after = Some(100.0);
        let mut trainer = trained(&config, 100, 0);
        assert_eq!(
            trainer.snapshot(1).unwrap().shape.drop_rates,
            [0.0, 0.3, 0.3]
        );
        let mut trainer = trained(&config, 1600, 0);
        let rates = trainer.snapshot(1).unwrap().shape.drop_rates;
        for (p, want) in rates.iter().zip([0.0, 0.075, 0.075]) {
            assert!((p - want).abs() < 1e-12, "{rates:?}");
        }
    }

    /// `neural_linear.fit_masked`: with drop rates above 0, refitting the same network on
    /// the same replay gives another posterior with masked features than without; with every
    /// rate 0 there is nothing to mask and the two fits are identical.
    #[test]
    fn masked_fit_changes_the_posterior_only_with_masks() {
        let means = |rates: Vec<f64>| {
            let mut config = linear_config();
            config.network.drop_rates = Some(rates);
            config.policy.neural_linear.fit_masked = true;
            let mut trainer = trained(&config, 300, 50);
            let mut mean = |masked: bool, version| {
                trainer.linear.as_mut().unwrap().fit_masked = masked;
                trainer.refresh_linear().unwrap();
                let snap = trainer.snapshot(version).unwrap();
                snap.linear.unwrap().heads[0].mean().clone()
            };
            (mean(false, 1), mean(true, 2))
        };
        let (plain, masked) = means(vec![0.0, 0.3, 0.3]);
        assert!((&plain - &masked).amax() > 1e-3, "{plain} vs {masked}");
        let (plain, masked) = means(vec![0.0; 3]);
        assert_eq!(plain, masked);
    }

    /// `neural_linear.initial_pulls = 2`: while arm 0's regression has fewer than 2
    /// examples, every decision offered arm 0 chooses it, with propensity exactly 1 (the
    /// other arm's 0), and once it has 2 the posterior decides again.
    #[test]
    fn initial_pulls_choose_an_unpulled_arm_outright() {
        use crate::policy::{Inputs, decide, propensity};
        let mut config = linear_config();
        config.policy.neural_linear.initial_pulls = 2;
        let mut trainer = Trainer::new(&config).unwrap();
        let example = |seq, head| Example {
            input: vec![0.5, -0.5],
            head,
            reward: 1.0,
            seq,
        };
        for seq in 0..5 {
            trainer.add(example(seq, 1));
        }
        trainer.add(example(5, 0));
        let snap = trainer.snapshot(1).unwrap();
        let inputs = Inputs::Heads {
            context: &[0.5, -0.5],
            heads: &[1, 0],
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        for _ in 0..20 {
            assert_eq!(decide(&snap, inputs, &mut rng).unwrap().best, 1);
        }
        assert_eq!(propensity(&snap, inputs, 1, 10, &mut rng).unwrap(), 1.0);
        assert_eq!(propensity(&snap, inputs, 0, 10, &mut rng).unwrap(), 0.0);
        trainer.add(example(6, 0));
        let snap = trainer.snapshot(2).unwrap();
        let p = propensity(&snap, inputs, 1, 200, &mut rng).unwrap();
        assert!(p < 1.0, "{p}");
    }
}
