//! One model's training state without any thread: the network, its optimizer, the replay
//! buffer and the reward statistics. The learner thread drives it; benchmarks and the
//! in-process simulation harness drive it directly.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::replay::{Example, Replay};
use crate::{
    config::{ModelConfig, OptimizerKind, PolicyKind},
    error::Error,
    model::{
        NetShape, NeuralLinear, Policy, Snapshot, TrainableNet, Weights,
        linear::{LinearPosterior, LinearPrior, LinearStats},
        matrix, neural_linear_features,
    },
    storage::checkpoint::{Checkpoint, CheckpointMeta},
};

/// Online mean and variance (Welford), for standardising rewards so that reward scales of
/// 0/1 and 0..50 train with the same learning rate.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunningStats {
    n: u64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    /// Folds in one value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// The standard deviation, or 1 while it is undefined or degenerate (so a constant
    /// reward does not divide by zero).
    pub fn std(&self) -> f64 {
        if self.n < 2 {
            return 1.0;
        }
        let std = (self.m2 / (self.n - 1) as f64).sqrt();
        if std > 1e-6 { std } else { 1.0 }
    }

    /// The mean of the values folded in (0 before any).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// How many values were folded in.
    pub fn count(&self) -> u64 {
        self.n
    }
}

/// NeuralLinear's training half: the regressions' sufficient statistics on the features of
/// a frozen copy of the network, refreshed (features recomputed with the latest network,
/// statistics refitted on the whole replay buffer) every `refresh_every` examples.
#[derive(Debug)]
struct LinearState {
    prior: LinearPrior,
    refresh_every: usize,
    /// The frozen feature network.
    features: Weights,
    /// The reward standardisation frozen with it.
    reward_mean: f64,
    reward_std: f64,
    /// One regression per output head.
    stats: Vec<LinearStats>,
    /// Factorised posteriors of `stats`; `None` = changed since the last snapshot.
    posteriors: Vec<Option<Arc<LinearPosterior>>>,
    since_refresh: usize,
    /// Refreshes so far.
    refreshes: u64,
    /// With a throttle (the learner thread), a refresh waits until the time since the last
    /// one is at least `throttle` times what that one took, so refreshing costs at most
    /// about 1/(1+throttle) of the learner's time whatever the replay size. `None`
    /// (simulations) refreshes exactly on schedule, deterministically.
    throttle: Option<u32>,
    last_refresh: Instant,
    last_cost: Duration,
}

/// Examples per batched forward pass when the features are recomputed.
const REFRESH_CHUNK: usize = 1024;

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
    learning_rate: f64,
    prior_strength: f64,
    batch_size: usize,
    updates_per_reward: usize,
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
}

impl Trainer {
    /// The initial network of `config` (fixed by its seed) and an empty replay buffer.
    ///
    /// # Errors
    /// candle cannot build the network or the optimizer.
    pub fn new(config: &ModelConfig) -> Result<Self, Error> {
        let shape = NetShape {
            input_dim: config.input_dim(),
            hidden: config.hidden_layers.clone(),
            output_dim: config.output_dim(),
            drop_rates: config.effective_drop_rates(),
        };
        let net = TrainableNet::new(shape, config.seed)?;
        let opt = match config.optimizer {
            OptimizerKind::Adam => Opt::Adam(AdamW::new(
                net.vars(),
                ParamsAdamW {
                    lr: config.learning_rate,
                    weight_decay: 0.0,
                    ..ParamsAdamW::default()
                },
            )?),
            OptimizerKind::Sgd => Opt::Sgd(SGD::new(net.vars(), config.learning_rate)?),
        };
        Self {
            net,
            opt,
            learning_rate: config.learning_rate,
            prior_strength: config.prior_strength,
            batch_size: config.batch_size,
            updates_per_reward: config.updates_per_reward,
            replay: Replay::new(config.replay_capacity),
            rewards: RunningStats::default(),
            // The decision path seeds from `seed`; a different stream for training.
            rng: Xoshiro256PlusPlus::seed_from_u64(config.seed ^ 0x5eed_1ea7_0000_0001),
            last_seq: None,
            steps: 0,
            policy: Policy {
                kind: config.policy,
                epsilon: config.epsilon,
            },
            linear: None,
        }
        .with_linear(config)
    }

    /// Sets up NeuralLinear's regressions on the initial network when the policy needs them.
    fn with_linear(mut self, config: &ModelConfig) -> Result<Self, Error> {
        if config.policy != PolicyKind::NeuralLinear {
            return Ok(self);
        }
        let nl = config.neural_linear;
        let dim = config.hidden_layers.last().copied().unwrap_or(0) + 1;
        let prior = LinearPrior {
            precision: nl.prior_precision,
            shape: nl.prior_shape,
            scale: nl.prior_scale,
        };
        self.linear = Some(LinearState {
            prior,
            refresh_every: nl.refresh_every,
            features: self.net.snapshot()?,
            reward_mean: 0.0,
            reward_std: 1.0,
            stats: (0..config.output_dim())
                .map(|_| LinearStats::new(dim, prior))
                .collect(),
            posteriors: vec![None; config.output_dim()],
            since_refresh: 0,
            refreshes: 0,
            throttle: None,
            last_refresh: Instant::now(),
            last_cost: Duration::ZERO,
        });
        Ok(self)
    }

    /// Throttles NeuralLinear refreshes to at most about `1/(1+factor)` of the time (see
    /// `LinearState::throttle`): for the learner thread, where the replay buffer may be large
    /// and rewards fast. Without it refreshes run exactly every `refresh_every` examples.
    pub fn throttle_refreshes(&mut self, factor: u32) {
        if let Some(lin) = &mut self.linear {
            lin.throttle = Some(factor);
        }
    }

    /// NeuralLinear refreshes so far and how long the latest took (none for other policies).
    pub fn linear_refreshes(&self) -> Option<(u64, Duration)> {
        self.linear.as_ref().map(|l| (l.refreshes, l.last_cost))
    }

    /// Recomputes NeuralLinear's features with the current network and refits every head's
    /// regression on the whole replay buffer (rewards standardised with the current
    /// statistics). Nothing for other policies.
    ///
    /// # Errors
    /// candle cannot copy the weights or compute the features.
    pub fn refresh_linear(&mut self) -> Result<(), Error> {
        let Some(lin) = &mut self.linear else {
            return Ok(());
        };
        let started = Instant::now();
        let features = self.net.snapshot()?;
        let (mean, std) = (self.rewards.mean, self.rewards.std());
        let dim = lin.stats.first().map_or(1, LinearStats::dim);
        let mut stats: Vec<LinearStats> = (0..lin.stats.len())
            .map(|_| LinearStats::new(dim, lin.prior))
            .collect();
        let input_dim = self.net.shape().input_dim;
        let items: Vec<&Example> = self.replay.iter().collect();
        for chunk in items.chunks(REFRESH_CHUNK) {
            let mut inputs = Vec::with_capacity(chunk.len() * input_dim);
            for example in chunk {
                inputs.extend_from_slice(&example.input);
            }
            let xs = matrix(inputs, chunk.len(), input_dim)?;
            let (phi, width) = neural_linear_features(&features, &xs)?;
            // Group the rows by head, one batched update per head.
            let mut by_head: Vec<(Vec<f32>, Vec<f64>)> =
                vec![(Vec::new(), Vec::new()); stats.len()];
            for (example, row) in chunk.iter().zip(phi.chunks(width)) {
                if let Some((rows, ys)) = by_head.get_mut(example.head as usize) {
                    rows.extend_from_slice(row);
                    ys.push((example.reward - mean) / std);
                }
            }
            for (head, (rows, ys)) in by_head.iter().enumerate() {
                stats[head].add_batch(rows, ys);
            }
        }
        lin.features = features;
        lin.reward_mean = mean;
        lin.reward_std = std;
        lin.stats = stats;
        lin.posteriors.iter_mut().for_each(|p| *p = None);
        lin.since_refresh = 0;
        lin.refreshes += 1;
        lin.last_refresh = Instant::now();
        lin.last_cost = started.elapsed();
        Ok(())
    }

    /// NeuralLinear's share of [`Trainer::add`]: the example updates its head's regression
    /// on the frozen features, or triggers a refresh when one is due.
    fn add_linear(&mut self, example: &Example) -> Result<(), Error> {
        let Some(lin) = &mut self.linear else {
            return Ok(());
        };
        lin.since_refresh += 1;
        let due = lin.since_refresh >= lin.refresh_every
            && lin
                .throttle
                .is_none_or(|factor| lin.last_refresh.elapsed() >= lin.last_cost * factor);
        if due {
            // The example is already in replay, so the refit covers it.
            return self.refresh_linear();
        }
        let head = example.head as usize;
        if head >= lin.stats.len() {
            return Err(Error::Internal(format!("example for head {head}")));
        }
        let xs = matrix(example.input.clone(), 1, self.net.shape().input_dim)?;
        let (phi, _) = neural_linear_features(&lin.features, &xs)?;
        let y = (example.reward - lin.reward_mean) / lin.reward_std;
        lin.stats[head].add(&phi, y);
        lin.posteriors[head] = None;
        Ok(())
    }

    /// Layer widths, input first: what a checkpoint must match.
    pub fn widths(&self) -> Vec<usize> {
        let shape = self.net.shape();
        std::iter::once(shape.input_dim)
            .chain(shape.hidden.iter().copied())
            .chain([shape.output_dim])
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
    pub fn push_replay(&mut self, example: Example) {
        self.replay.push(example);
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
            created_ms: crate::storage::now_ms(),
            weights_checksum: 0,
        };
        Ok((self.net.named_tensors()?, meta))
    }

    /// Folds one example into the replay buffer and the reward statistics; returns the
    /// number of steps it buys (`updates_per_reward`).
    pub fn add(&mut self, example: Example) -> usize {
        self.rewards.push(example.reward);
        self.last_seq = Some(self.last_seq.map_or(example.seq, |s| s.max(example.seq)));
        let linear = self.linear.is_some().then(|| example.clone());
        self.replay.push(example);
        if let Some(example) = linear
            && let Err(e) = self.add_linear(&example)
        {
            tracing::error!(error = %e, "neural_linear update failed");
        }
        self.updates_per_reward
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
    /// `prior_strength / N` (THEORY.md §1), N = examples seen, so the data dominates as N
    /// grows. Returns the minibatch loss; does nothing (NaN) while replay is empty.
    ///
    /// # Errors
    /// A numeric failure inside candle.
    pub fn step(&mut self) -> Result<f64, Error> {
        if self.replay.is_empty() {
            return Ok(f64::NAN);
        }
        let input_dim = self.net.shape().input_dim;
        let (mean, std) = (self.rewards.mean, self.rewards.std());
        let batch = self.replay.sample(&mut self.rng, self.batch_size);
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
        let heads = Tensor::from_vec(heads, (m, 1), &Device::Cpu)?;
        let ys = Tensor::from_vec(targets, (m, 1), &Device::Cpu)?;
        let masks = self.net.shape().draw_masks(&mut self.rng, m)?;
        let out = self.net.forward(&xs, Some(&masks))?;
        let pred = out.gather(&heads, 1)?;
        let loss = (pred - ys)?.sqr()?.mean_all()?;
        // d/dW of (prior/N)|W|^2 is 2 prior/N W: applied as (decoupled) decay.
        let decay = 2.0 * self.prior_strength / self.rewards.n.max(1) as f64;
        let grads = loss.backward()?;
        match &mut self.opt {
            Opt::Adam(adam) => {
                let params = ParamsAdamW {
                    weight_decay: decay,
                    ..adam.params().clone()
                };
                adam.set_params(params);
                adam.step(&grads)?;
            }
            Opt::Sgd(sgd) => {
                sgd.step(&grads)?;
                let keep = 1.0 - self.learning_rate * decay;
                for w in self.net.weight_vars() {
                    w.set(&(w.as_tensor() * keep)?)?;
                }
            }
        }
        self.steps += 1;
        Ok(f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?))
    }

    /// A copy of the current weights and reward scale, stamped `version`.
    ///
    /// # Errors
    /// candle cannot copy a tensor.
    pub fn snapshot(&mut self, version: u64) -> Result<Snapshot, Error> {
        let linear = match &mut self.linear {
            None => None,
            Some(lin) => {
                let mut heads = Vec::with_capacity(lin.stats.len());
                for (stats, cached) in lin.stats.iter().zip(lin.posteriors.iter_mut()) {
                    let posterior = match cached {
                        Some(p) => Arc::clone(p),
                        None => {
                            let p = Arc::new(stats.posterior().map_err(Error::Internal)?);
                            *cached = Some(Arc::clone(&p));
                            p
                        }
                    };
                    heads.push(posterior);
                }
                Some(Arc::new(NeuralLinear {
                    features: lin.features.clone(),
                    reward_mean: lin.reward_mean,
                    reward_std: lin.reward_std,
                    heads,
                }))
            }
        };
        Ok(Snapshot {
            version,
            shape: self.net.shape().clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Welford's running statistics match the textbook formulas.
    #[test]
    fn running_stats() {
        let mut s = RunningStats::default();
        assert_eq!(s.std(), 1.0);
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            s.push(x);
        }
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.std() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }
}
