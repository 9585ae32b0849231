//! One model's training state without any thread: the network, its optimizer, the replay
//! buffer and the reward statistics. The learner thread drives it; benchmarks and the
//! in-process simulation harness drive it directly.

use candle_core::{DType, Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW, SGD};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::replay::{Example, Replay};
use crate::{
    config::{ModelConfig, OptimizerKind},
    error::Error,
    model::{NetShape, Snapshot, TrainableNet, matrix},
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
        Ok(Self {
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
        })
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
        self.replay.push(example);
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
    pub fn snapshot(&self, version: u64) -> Result<Snapshot, Error> {
        Ok(Snapshot {
            version,
            shape: self.net.shape().clone(),
            weights: self.net.snapshot()?,
            reward_mean: self.rewards.mean,
            reward_std: self.rewards.std(),
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
