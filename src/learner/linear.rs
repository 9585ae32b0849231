//! NeuralLinear's training half, apart from the SGD in `trainer.rs`: per-head Bayesian
//! linear regressions on the last hidden layer of a frozen copy of the network, updated per
//! example and refitted on the replay buffer; what it publishes is the serving half
//! (`policy::NeuralLinear`).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use rand_xoshiro::Xoshiro256PlusPlus;

use super::replay::Example;
use crate::{
    config::ModelConfig,
    error::Error,
    model::{
        NetShape, Weights,
        linear::{LinearPosterior, LinearPrior, LinearStats},
        matrix, neural_linear_features,
    },
    policy::NeuralLinear,
};

/// NeuralLinear's training half: the regressions' sufficient statistics on the features of
/// a frozen copy of the network, refreshed (features recomputed with the latest network,
/// statistics refitted on the whole replay buffer) every `refresh_every` examples.
#[derive(Debug)]
pub(super) struct LinearState {
    prior: LinearPrior,
    refresh_every: usize,
    /// `neural_linear.fit_masked`: features under fresh dropout masks.
    pub(super) fit_masked: bool,
    /// `neural_linear.initial_pulls`, passed to the snapshots.
    initial_pulls: u64,
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

impl LinearState {
    /// The regressions of `config`'s heads, empty, on the features of `features` (the
    /// initial network).
    pub(super) fn new(config: &ModelConfig, features: Weights) -> Self {
        let nl = config.policy.neural_linear;
        let dim = config.network.hidden_layers.last().copied().unwrap_or(0) + 1;
        let prior = LinearPrior {
            precision: nl.prior_precision,
            shape: nl.prior_shape,
            scale: nl.prior_scale,
        };
        Self {
            prior,
            refresh_every: nl.refresh_every,
            fit_masked: nl.fit_masked,
            initial_pulls: nl.initial_pulls,
            features,
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
        }
    }

    /// See the field `throttle`.
    pub(super) fn throttle(&mut self, factor: u32) {
        self.throttle = Some(factor);
    }

    /// Refreshes so far and how long the latest took.
    pub(super) fn refreshes(&self) -> (u64, Duration) {
        (self.refreshes, self.last_cost)
    }

    /// Refits every head's regression on `items` (examples with their decay weights) with
    /// the features of `features` (the current network), rewards standardised with
    /// `(mean, std)`; under `fit_masked`, one fresh mask set of `mask_shape` per example.
    ///
    /// # Errors
    /// candle cannot compute the features.
    pub(super) fn refit(
        &mut self,
        features: Weights,
        items: &[(&Example, f64)],
        (mean, std): (f64, f64),
        input_dim: usize,
        mask_shape: Option<&NetShape>,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<(), Error> {
        let started = Instant::now();
        let dim = self.stats.first().map_or(1, LinearStats::dim);
        let mut stats: Vec<LinearStats> = (0..self.stats.len())
            .map(|_| LinearStats::new(dim, self.prior))
            .collect();
        for chunk in items.chunks(REFRESH_CHUNK) {
            let mut inputs = Vec::with_capacity(chunk.len() * input_dim);
            for (example, _) in chunk {
                inputs.extend_from_slice(&example.input);
            }
            let xs = matrix(inputs, chunk.len(), input_dim)?;
            // `fit_masked`: one fresh mask set per example, as each decision draws one.
            let masks = mask_shape
                .map(|shape| shape.draw_masks(rng, chunk.len()))
                .transpose()?;
            let (phi, width) = neural_linear_features(&features, &xs, masks.as_ref())?;
            // Group the rows by head, one batched update per head.
            let mut by_head: Vec<(Vec<f32>, Vec<f64>)> =
                vec![(Vec::new(), Vec::new()); stats.len()];
            for ((example, w), row) in chunk.iter().zip(phi.chunks(width)) {
                if let Some((rows, ys)) = by_head.get_mut(example.head as usize) {
                    rows.extend(row.iter().map(|v| v * *w as f32));
                    ys.push(w * (example.reward - mean) / std);
                }
            }
            for (head, (rows, ys)) in by_head.iter().enumerate() {
                stats[head].add_batch(rows, ys);
            }
        }
        self.features = features;
        self.reward_mean = mean;
        self.reward_std = std;
        self.stats = stats;
        self.posteriors.iter_mut().for_each(|p| *p = None);
        self.since_refresh = 0;
        self.refreshes += 1;
        self.last_refresh = Instant::now();
        self.last_cost = started.elapsed();
        Ok(())
    }

    /// Updates `example`'s head's regression on the frozen features, or returns true when
    /// a refresh is due instead (never with periodic `refits`, after which the caller
    /// refits).
    ///
    /// # Errors
    /// The example names a head the model does not have, or candle fails.
    pub(super) fn add(
        &mut self,
        example: &Example,
        input_dim: usize,
        refits: bool,
        mask_shape: Option<&NetShape>,
        rng: &mut Xoshiro256PlusPlus,
    ) -> Result<bool, Error> {
        self.since_refresh += 1;
        // With periodic refits the posterior is refitted after each refit instead.
        let due = !refits
            && self.since_refresh >= self.refresh_every
            && self
                .throttle
                .is_none_or(|factor| self.last_refresh.elapsed() >= self.last_cost * factor);
        if due {
            // The caller refits once the example is in replay, so the refit covers it.
            return Ok(true);
        }
        let head = example.head as usize;
        if head >= self.stats.len() {
            return Err(Error::Internal(format!("example for head {head}")));
        }
        let xs = matrix(example.input.clone(), 1, input_dim)?;
        let masks = mask_shape
            .map(|shape| shape.draw_masks(rng, 1))
            .transpose()?;
        let (phi, _) = neural_linear_features(&self.features, &xs, masks.as_ref())?;
        let y = (example.reward - self.reward_mean) / self.reward_std;
        self.stats[head].add(&phi, y);
        self.posteriors[head] = None;
        Ok(false)
    }

    /// What serving needs: the frozen features and each head's posterior, factorised only
    /// for heads that changed since the last call.
    ///
    /// # Errors
    /// A head's statistics cannot be factorised.
    pub(super) fn published(&mut self) -> Result<Arc<NeuralLinear>, Error> {
        let mut heads = Vec::with_capacity(self.stats.len());
        for (stats, cached) in self.stats.iter().zip(self.posteriors.iter_mut()) {
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
        Ok(Arc::new(NeuralLinear {
            features: self.features.clone(),
            reward_mean: self.reward_mean,
            reward_std: self.reward_std,
            heads,
            pulls: self.stats.iter().map(LinearStats::count).collect(),
            initial_pulls: self.initial_pulls,
        }))
    }
}
