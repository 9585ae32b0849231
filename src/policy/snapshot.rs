//! What the learner publishes and serving decides from: a snapshot of the weights with the
//! reward scale, the decision rule, and NeuralLinear's serving half. It lives with the
//! policies (not in `model`) because it carries the policy choice; the network code below it
//! knows nothing of policies.

use std::sync::Arc;

use crate::{
    config::PolicyKind,
    model::{NetShape, Weights, linear},
};

/// What the learner publishes and serving reads: weights plus how to turn the network's
/// standardised outputs back into rewards.
#[derive(Debug)]
pub struct Snapshot {
    /// Bumped by every publish; 0 is the untrained initial network.
    pub version: u64,
    /// The shape and drop rates the weights belong to.
    pub shape: NetShape,
    /// The weights, copied away from the learner's `Var`s.
    pub weights: Weights,
    /// Rewards are standardised online; a network output `y` means reward `y * std + mean`.
    pub reward_mean: f64,
    /// See `reward_mean`.
    pub reward_std: f64,
    /// How decisions are made from it.
    pub policy: Policy,
    /// The linear posteriors of the `neural_linear` policy (none for the other policies).
    pub linear: Option<Arc<NeuralLinear>>,
}

/// The decision rule a snapshot serves with (a model's `policy` and `epsilon` settings).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Which rule.
    pub kind: PolicyKind,
    /// Probability of a uniformly random choice (`epsilon_greedy`).
    pub epsilon: f64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            kind: PolicyKind::McDropout,
            epsilon: 0.0,
        }
    }
}

/// NeuralLinear's serving half: the network that computes the features (frozen at the last
/// refresh), the reward standardisation the regressions were fitted with, and one linear
/// posterior per output head over `[last hidden layer, 1]`.
#[derive(Debug)]
pub struct NeuralLinear {
    /// The feature network.
    pub features: Weights,
    /// A regression target `t` means reward `t * reward_std + reward_mean`.
    pub reward_mean: f64,
    /// See `reward_mean`.
    pub reward_std: f64,
    /// One posterior per output head (fixed arms), or one (per-arm features).
    pub heads: Vec<Arc<linear::LinearPosterior>>,
    /// Examples in each head's regression.
    pub pulls: Vec<u64>,
    /// `neural_linear.initial_pulls`: a fixed-arm candidate whose head has fewer examples is
    /// chosen outright.
    pub initial_pulls: u64,
}
