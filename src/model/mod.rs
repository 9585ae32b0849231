//! The reward network: a ReLU MLP whose input units and hidden units are masked by MC dropout.
//!
//! Two halves share one forward pass:
//! - [`TrainableNet`] owns the `Var`s the learner updates in place;
//! - [`Weights`] is an immutable copy of them that serving reads without any lock.
//!
//! Weight matrices are stored `(in, out)` so a forward pass is `x.matmul(w)` with no
//! transpose. Nothing here knows tokio, gRPC or the domain types.

pub mod dropout;
pub mod linear;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub use dropout::{Masks, draw_masks};

use crate::config::PolicyKind;

/// The network's shape and drop rates.
#[derive(Debug, Clone, PartialEq)]
pub struct NetShape {
    /// Width of the input.
    pub input_dim: usize,
    /// Hidden layer widths.
    pub hidden: Vec<usize>,
    /// Width of the output (one per fixed arm, or 1).
    pub output_dim: usize,
    /// Drop rate of the units feeding each weight layer: input first, then each hidden layer.
    pub drop_rates: Vec<f64>,
}

impl NetShape {
    /// `(fan_in, fan_out)` of each weight layer.
    pub fn layer_dims(&self) -> Vec<(usize, usize)> {
        let mut widths = vec![self.input_dim];
        widths.extend(&self.hidden);
        widths.push(self.output_dim);
        widths.windows(2).map(|w| (w[0], w[1])).collect()
    }

    /// Width of the units feeding each weight layer (what each mask covers).
    pub fn mask_dims(&self) -> Vec<usize> {
        self.layer_dims().iter().map(|&(i, _)| i).collect()
    }

    /// Draws one posterior sample's masks with `rows` rows (1 = shared by every row).
    ///
    /// # Errors
    /// Only if candle cannot build a tensor.
    pub fn draw_masks<R: Rng>(&self, rng: &mut R, rows: usize) -> Result<Masks> {
        draw_masks(rng, &self.mask_dims(), &self.drop_rates, rows, &Device::Cpu)
    }
}

/// The forward pass shared by serving and training: `masks[l]` (if any) multiplies the units
/// feeding layer `l`; ReLU after every layer but the last.
fn forward(layers: &[(Tensor, Tensor)], xs: &Tensor, masks: Option<&Masks>) -> Result<Tensor> {
    let last = layers.len() - 1;
    let mut h = xs.clone();
    for (l, (w, b)) in layers.iter().enumerate() {
        if let Some(Some(mask)) = masks.map(|m| &m[l]) {
            h = h.broadcast_mul(mask)?;
        }
        h = h.matmul(w)?.broadcast_add(b)?;
        if l < last {
            h = h.relu()?;
        }
    }
    Ok(h)
}

/// An immutable copy of the weights: what the serving path reads.
#[derive(Debug, Clone)]
pub struct Weights {
    layers: Vec<(Tensor, Tensor)>,
}

impl Weights {
    /// Outputs for a batch `xs` of shape `(rows, input_dim)`, masked by `masks` (`None` = the
    /// plain network with every unit kept).
    ///
    /// # Errors
    /// Shapes that do not fit the network.
    pub fn forward(&self, xs: &Tensor, masks: Option<&Masks>) -> Result<Tensor> {
        forward(&self.layers, xs, masks)
    }

    /// The last hidden layer's activations for a batch `xs` (no dropout): the features
    /// NeuralLinear regresses on, `(rows, hidden.last())`.
    ///
    /// # Errors
    /// Shapes that do not fit the network, or a network without hidden layers.
    pub fn last_hidden(&self, xs: &Tensor) -> Result<Tensor> {
        let n = self.layers.len();
        if n < 2 {
            return Err(candle_core::Error::Msg(
                "the network has no hidden layer".into(),
            ));
        }
        let mut h = xs.clone();
        for (w, b) in &self.layers[..n - 1] {
            h = h.matmul(w)?.broadcast_add(b)?.relu()?;
        }
        Ok(h)
    }

    /// The raw `(weight (in, out), bias (out))` tensors, for benchmarks and checks.
    pub fn layers(&self) -> &[(Tensor, Tensor)] {
        &self.layers
    }
}

/// The trainable weights, owned by the learner thread.
#[derive(Debug)]
pub struct TrainableNet {
    shape: NetShape,
    layers: Vec<(Var, Var)>,
}

impl TrainableNet {
    /// A network initialised from `seed`: weights and biases uniform in `±1/sqrt(fan_in)`
    /// (PyTorch's `Linear` default), drawn from our own RNG so that a seed fixes them.
    ///
    /// # Errors
    /// Only if candle cannot build a tensor.
    pub fn new(shape: NetShape, seed: u64) -> Result<Self> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut layers = Vec::new();
        for (fan_in, fan_out) in shape.layer_dims() {
            let bound = 1.0 / (fan_in as f32).sqrt();
            let mut uniform = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let w = Var::from_tensor(&Tensor::from_vec(
                uniform(fan_in * fan_out),
                (fan_in, fan_out),
                &Device::Cpu,
            )?)?;
            let b = Var::from_tensor(&Tensor::from_vec(uniform(fan_out), fan_out, &Device::Cpu)?)?;
            layers.push((w, b));
        }
        Ok(Self { shape, layers })
    }

    /// The network's shape.
    pub fn shape(&self) -> &NetShape {
        &self.shape
    }

    /// Every trainable variable (for the optimizer).
    pub fn vars(&self) -> Vec<Var> {
        self.layers
            .iter()
            .flat_map(|(w, b)| [w.clone(), b.clone()])
            .collect()
    }

    /// The weight matrices only (biases excluded), e.g. for a prior on the weights.
    pub fn weight_vars(&self) -> Vec<Var> {
        self.layers.iter().map(|(w, _)| w.clone()).collect()
    }

    /// Outputs of the trainable network (gradients flow to its `Var`s).
    ///
    /// # Errors
    /// Shapes that do not fit the network.
    pub fn forward(&self, xs: &Tensor, masks: Option<&Masks>) -> Result<Tensor> {
        let layers: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .map(|(w, b)| (w.as_tensor().clone(), b.as_tensor().clone()))
            .collect();
        forward(&layers, xs, masks)
    }

    /// Copies of the variables by name (`l{i}.weight`, `l{i}.bias`), for checkpoints.
    ///
    /// # Errors
    /// candle cannot copy a tensor.
    pub fn named_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            out.insert(format!("l{l}.weight"), w.as_tensor().copy()?);
            out.insert(format!("l{l}.bias"), b.as_tensor().copy()?);
        }
        Ok(out)
    }

    /// Overwrites the variables from `tensors` (as made by [`TrainableNet::named_tensors`]).
    ///
    /// # Errors
    /// A tensor is missing or has another shape; nothing is changed then.
    pub fn load_named(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let mut pairs = Vec::new();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            for (name, var) in [(format!("l{l}.weight"), w), (format!("l{l}.bias"), b)] {
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
                if t.dims() != var.dims() {
                    return Err(candle_core::Error::Msg(format!(
                        "{name}: checkpoint shape {:?}, network {:?}",
                        t.dims(),
                        var.dims()
                    )));
                }
                pairs.push((var, t.to_dtype(DTYPE)?));
            }
        }
        for (var, t) in pairs {
            var.set(&t)?;
        }
        Ok(())
    }

    /// A deep copy of the current weights. `Tensor::clone` would share storage with the
    /// `Var`s, which the optimizer overwrites in place; `copy` gives the reader its own.
    ///
    /// # Errors
    /// Only if candle cannot copy a tensor.
    pub fn snapshot(&self) -> Result<Weights> {
        let layers = self
            .layers
            .iter()
            .map(|(w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        Ok(Weights { layers })
    }
}

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
}

impl NeuralLinear {
    /// Features `[last hidden, 1]` of each row of `xs`, row-major, and their width.
    ///
    /// # Errors
    /// Shapes that do not fit the network.
    pub fn features_of(&self, xs: &Tensor) -> Result<(Vec<f32>, usize)> {
        neural_linear_features(&self.features, xs)
    }
}

/// `[last hidden layer, 1]` of every row of `xs`, row-major, and its width: what NeuralLinear
/// regresses on (the trailing 1 is the intercept).
///
/// # Errors
/// Shapes that do not fit the network.
pub fn neural_linear_features(weights: &Weights, xs: &Tensor) -> Result<(Vec<f32>, usize)> {
    let h = weights.last_hidden(xs)?;
    let (rows, width) = h.dims2()?;
    let h: Vec<f32> = h.flatten_all()?.to_vec1()?;
    let mut out = Vec::with_capacity(rows * (width + 1));
    for row in h.chunks(width.max(1)) {
        out.extend_from_slice(row);
        out.push(1.0);
    }
    Ok((out, width + 1))
}

/// A `(rows, cols)` f32 tensor on the CPU from row-major values.
///
/// # Errors
/// `values.len() != rows * cols`.
pub fn matrix(values: Vec<f32>, rows: usize, cols: usize) -> Result<Tensor> {
    Tensor::from_vec(values, (rows, cols), &Device::Cpu)
}

/// The dtype every tensor here uses.
pub const DTYPE: DType = DType::F32;

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rate: f64) -> NetShape {
        NetShape {
            input_dim: 4,
            hidden: vec![16, 16],
            output_dim: 3,
            drop_rates: vec![rate, rate, rate],
        }
    }

    /// The same seed gives the same initial network; the trainable and snapshot forward agree.
    #[test]
    fn seeded_init_and_snapshot_agree() {
        let a = TrainableNet::new(shape(0.0), 5).unwrap();
        let b = TrainableNet::new(shape(0.0), 5).unwrap();
        let xs = matrix(vec![0.1, -0.2, 0.3, 0.4], 1, 4).unwrap();
        let ya: Vec<f32> = a
            .forward(&xs, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let yb: Vec<f32> = b
            .snapshot()
            .unwrap()
            .forward(&xs, None)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(ya, yb);
        assert_eq!(ya.len(), 3);
    }

    /// A snapshot keeps its values when the trainable `Var`s are overwritten in place.
    #[test]
    fn snapshot_is_a_copy() {
        let net = TrainableNet::new(shape(0.0), 5).unwrap();
        let snap = net.snapshot().unwrap();
        let before = snap.layers()[0].0.to_vec2::<f32>().unwrap();
        let w = &net.weight_vars()[0];
        w.set(&w.as_tensor().zeros_like().unwrap()).unwrap();
        assert_eq!(snap.layers()[0].0.to_vec2::<f32>().unwrap(), before);
        assert!(
            w.as_tensor()
                .to_vec2::<f32>()
                .unwrap()
                .iter()
                .flatten()
                .all(|&v| v == 0.0)
        );
    }
}
