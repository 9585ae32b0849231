//! The reward network: a ReLU MLP whose input units and hidden units are masked by MC dropout.
//!
//! Two halves share one forward pass:
//! - [`TrainableNet`] owns the `Var`s the learner updates in place;
//! - [`Weights`] is an immutable copy of them that serving reads without any lock.
//!
//! Weight matrices are stored `(in, out)` so a forward pass is `x.matmul(w)` with no
//! transpose. Nothing here knows tokio, gRPC or the domain types.

pub mod dense;
pub mod dropout;
pub mod linear;

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub use dense::{Dense, HostMasks, Scratch};
pub use dropout::{Masks, draw_masks};

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

    /// Draws `rows` rows of masks into `masks` for the plain-Rust pass: the same random
    /// numbers and the same kept units as [`NetShape::draw_masks`] with the same RNG.
    pub fn draw_host_masks<R: Rng>(&self, rng: &mut R, rows: usize, masks: &mut HostMasks) {
        let dims = std::iter::once(self.input_dim).chain(self.hidden.iter().copied());
        masks.draw_each(rng, dims, &self.drop_rates, rows);
    }
}

/// The forward pass shared by serving and training: `masks[l]` (if any) multiplies the units
/// feeding layer `l`; ReLU after every layer but the last. A heteroscedastic network's last
/// layer has `2 * output_dim` outputs: the means, then the log variances in the same order.
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
    /// The same weights as plain arrays, for the serving pass (copied once per snapshot).
    dense: Arc<Dense>,
    /// Mean outputs (`output_dim`); a heteroscedastic network has as many log variances
    /// after them, which [`Weights::forward`] leaves out.
    means: usize,
}

impl Weights {
    /// The mean outputs for a batch `xs` of shape `(rows, input_dim)`, masked by `masks`
    /// (`None` = the plain network with every unit kept): `(rows, output_dim)`. Every policy
    /// scores with these; a heteroscedastic network's log variances are never among them.
    ///
    /// # Errors
    /// Shapes that do not fit the network.
    pub fn forward(&self, xs: &Tensor, masks: Option<&Masks>) -> Result<Tensor> {
        let out = forward(&self.layers, xs, masks)?;
        if out.dim(1)? > self.means {
            out.narrow(1, 0, self.means)
        } else {
            Ok(out)
        }
    }

    /// A heteroscedastic network's log noise variances (standardised reward scale) for a
    /// batch `xs`, without dropout: `(rows, output_dim)`; `None` for a plain network.
    ///
    /// # Errors
    /// Shapes that do not fit the network.
    pub fn log_variance(&self, xs: &Tensor) -> Result<Option<Tensor>> {
        let out = forward(&self.layers, xs, None)?;
        if out.dim(1)? > self.means {
            out.narrow(1, self.means, self.means).map(Some)
        } else {
            Ok(None)
        }
    }

    /// The last hidden layer's activations for a batch `xs`: the features NeuralLinear
    /// regresses on, `(rows, hidden.last())`. `masks` (`None`: no dropout) mask the units
    /// feeding each hidden layer; a mask set's last entry (the units feeding the output
    /// layer, i.e. the features themselves) is not used: the last layer's uncertainty is the
    /// linear posterior's.
    ///
    /// # Errors
    /// Shapes that do not fit the network, or a network without hidden layers.
    pub fn last_hidden(&self, xs: &Tensor, masks: Option<&Masks>) -> Result<Tensor> {
        let n = self.layers.len();
        if n < 2 {
            return Err(candle_core::Error::Msg(
                "the network has no hidden layer".into(),
            ));
        }
        let mut h = xs.clone();
        for (l, (w, b)) in self.layers[..n - 1].iter().enumerate() {
            if let Some(Some(mask)) = masks.map(|m| &m[l]) {
                h = h.broadcast_mul(mask)?;
            }
            h = h.matmul(w)?.broadcast_add(b)?.relu()?;
        }
        Ok(h)
    }

    /// The same weights as plain arrays: the batch-1 serving pass ([`Dense`]).
    pub fn dense(&self) -> &Dense {
        &self.dense
    }

    /// The raw `(weight (in, out), bias (out))` tensors, for benchmarks and checks.
    pub fn layers(&self) -> &[(Tensor, Tensor)] {
        &self.layers
    }
}

/// Temperature of Concrete Dropout's relaxed Bernoulli masks: the value of Gal, Hron &
/// Kendall (2017) and their reference code. Lower is closer to binary masks but gives the
/// rates noisier gradients; 0.1 already makes nearly every relaxed mask element 0 or
/// `1/(1-p)`, like the Bernoulli masks serving draws.
pub const CONCRETE_TEMPERATURE: f64 = 0.1;

/// Relaxed masks draw `u` from `[ε, 1-ε]` so that `ln u - ln(1-u)` stays finite in f32.
const CONCRETE_EPS: f64 = 1e-7;

/// Bound on a learned rate's logit after every step: `p` stays in about `[4.5e-5, 0.99995]`,
/// where `ln p`, `ln(1-p)` and `1/(1-p)` are finite in f32. The objective itself keeps `p`
/// well inside (the weight term grows as `1/(1-p)`); the bound only guards the arithmetic.
const MAX_DROP_LOGIT: f64 = 10.0;

/// The trainable weights, owned by the learner thread.
#[derive(Debug)]
pub struct TrainableNet {
    shape: NetShape,
    layers: Vec<(Var, Var)>,
    /// The last layer also outputs one log variance per head (after the means).
    variance_heads: bool,
    /// Concrete Dropout: per weight layer, the logit `ln(p/(1-p))` of the drop rate of the
    /// units feeding it, shape `(1,)`. `None` = the fixed rates of `shape`.
    drop_logits: Option<Vec<Var>>,
}

impl TrainableNet {
    /// A network initialised from `seed`: weights and biases uniform in `±1/sqrt(fan_in)`
    /// (PyTorch's `Linear` default), drawn from our own RNG so that a seed fixes them.
    ///
    /// # Errors
    /// Only if candle cannot build a tensor.
    pub fn new(shape: NetShape, seed: u64) -> Result<Self> {
        Self::build(shape, seed, false)
    }

    /// A heteroscedastic network: as [`TrainableNet::new`], but the last layer has
    /// `2 * output_dim` outputs, the means and then one log noise variance per head, so that
    /// head indices (and NeuralLinear's regressions, which use the last hidden layer) are
    /// the same as without.
    ///
    /// # Errors
    /// Only if candle cannot build a tensor.
    pub fn new_heteroscedastic(shape: NetShape, seed: u64) -> Result<Self> {
        Self::build(shape, seed, true)
    }

    fn build(shape: NetShape, seed: u64, variance_heads: bool) -> Result<Self> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut layers = Vec::new();
        let mut dims = shape.layer_dims();
        if variance_heads && let Some(last) = dims.last_mut() {
            last.1 *= 2;
        }
        for (fan_in, fan_out) in dims {
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
        Ok(Self {
            shape,
            layers,
            variance_heads,
            drop_logits: None,
        })
    }

    /// The same network with Concrete Dropout (Gal, Hron & Kendall 2017): every layer's drop
    /// rate becomes a trainable variable, starting from the shape's rates.
    ///
    /// # Errors
    /// A starting rate outside `(0, 1)` (it would have no finite logit).
    pub fn with_concrete_dropout(mut self) -> Result<Self> {
        let logits = self
            .shape
            .drop_rates
            .iter()
            .map(|&p| {
                if !(p > 0.0 && p < 1.0) {
                    return Err(candle_core::Error::Msg(format!(
                        "concrete dropout needs starting rates in (0, 1), got {p}"
                    )));
                }
                let logit = (p / (1.0 - p)).ln() as f32;
                Var::from_tensor(&Tensor::new(&[logit], &Device::Cpu)?)
            })
            .collect::<Result<Vec<_>>>()?;
        self.drop_logits = Some(logits);
        Ok(self)
    }

    /// Whether the last layer also outputs log variances (after the means).
    pub fn has_variance_heads(&self) -> bool {
        self.variance_heads
    }

    /// Whether the drop rates are learned (Concrete Dropout).
    pub fn learns_drop_rates(&self) -> bool {
        self.drop_logits.is_some()
    }

    /// The learned rates' logits (empty with fixed rates): trained by their own optimizer,
    /// never decayed.
    pub fn drop_logit_vars(&self) -> Vec<Var> {
        self.drop_logits.clone().unwrap_or_default()
    }

    /// The current drop rate of each layer: the learned ones, or the shape's fixed ones.
    ///
    /// # Errors
    /// candle cannot read a logit.
    pub fn drop_rates(&self) -> Result<Vec<f64>> {
        let Some(logits) = &self.drop_logits else {
            return Ok(self.shape.drop_rates.clone());
        };
        logits
            .iter()
            .map(|l| {
                let logit = f64::from(l.as_tensor().to_vec1::<f32>()?[0]);
                Ok(1.0 / (1.0 + (-logit).exp()))
            })
            .collect()
    }

    /// The shape with the current drop rates: what a snapshot serves with.
    ///
    /// # Errors
    /// candle cannot read a logit.
    pub fn current_shape(&self) -> Result<NetShape> {
        Ok(NetShape {
            drop_rates: self.drop_rates()?,
            ..self.shape.clone()
        })
    }

    /// Concrete Dropout's relaxed masks for a training batch of `rows` rows (`None` with
    /// fixed rates): per layer, `u ~ U(0,1)` drawn on the host from `rng` (so a seed fixes
    /// them), `drop = sigmoid((logit p + ln u - ln(1-u)) / t)` with `t` =
    /// [`CONCRETE_TEMPERATURE`], and `mask = (1 - drop) / (1 - p)`. The masks are functions
    /// of the rates' logits, so the loss's gradient reaches the rates.
    ///
    /// # Errors
    /// Only if candle cannot build a tensor.
    pub fn concrete_masks<R: Rng>(&self, rng: &mut R, rows: usize) -> Result<Option<Masks>> {
        let Some(logits) = &self.drop_logits else {
            return Ok(None);
        };
        let inv_t = 1.0 / CONCRETE_TEMPERATURE;
        let masks = self
            .shape
            .mask_dims()
            .iter()
            .zip(logits)
            .map(|(&dim, logit)| {
                let noise: Vec<f32> = (0..rows * dim)
                    .map(|_| {
                        let u = rng.random::<f64>().clamp(CONCRETE_EPS, 1.0 - CONCRETE_EPS);
                        (u.ln() - (1.0 - u).ln()) as f32
                    })
                    .collect();
                let noise = Tensor::from_vec(noise, (rows, dim), &Device::Cpu)?;
                let logit = logit.as_tensor();
                let drop = candle_nn::ops::sigmoid(&(noise.broadcast_add(logit)? * inv_t)?)?;
                let keep_p = candle_nn::ops::sigmoid(&logit.neg()?)?;
                drop.affine(-1.0, 1.0)?.broadcast_div(&keep_p).map(Some)
            })
            .collect::<Result<Masks>>()?;
        Ok(Some(masks))
    }

    /// Concrete Dropout's regulariser on the rates (`None` with fixed rates), for a loss that
    /// is the minibatch mean of squared errors on standardised rewards, after `n` examples.
    /// Per layer `l` with weights `W` (fan-in `K`) and rate `p`, as in the paper's reference
    /// code (`weight_regularizer = l²/N`, `dropout_regularizer = 2/N` for a squared-error
    /// loss):
    ///
    /// `prior · |W|² / (n (1-p))  +  (2K / n) · (p ln p + (1-p) ln(1-p))`
    ///
    /// with `prior` = `prior_strength` in the role of the length-scale term `l²`: at a fixed
    /// `p` the first term is the existing prior `prior/n · |W|²` scaled by `1/(1-p)` (the
    /// inverted scaling of the masks makes the effective weights `W/(1-p)`). `|W|²` enters
    /// detached: this term only gives the rates their gradient. The weights get theirs as
    /// decoupled decay of `2 prior / (n (1-p))` from the trainer, the same way the fixed-rate
    /// prior is applied, so that Adam does not rescale it. The second term is minus the
    /// masks' entropy: it pulls every rate towards 0.5 with a strength that fades as `1/n`,
    /// so the data (which prefers little noise) wins as it grows.
    ///
    /// # Errors
    /// Only if candle fails.
    pub fn concrete_regulariser(&self, n: f64, prior: f64) -> Result<Option<Tensor>> {
        let Some(logits) = &self.drop_logits else {
            return Ok(None);
        };
        let n = n.max(1.0);
        let mut total: Option<Tensor> = None;
        for (((w, _), logit), &fan_in) in
            self.layers.iter().zip(logits).zip(&self.shape.mask_dims())
        {
            let logit = logit.as_tensor();
            let p = candle_nn::ops::sigmoid(logit)?;
            let keep = candle_nn::ops::sigmoid(&logit.neg()?)?;
            let w_sq = w.as_tensor().detach().sqr()?.sum_all()?.reshape(1)?;
            let weight = ((w_sq * (prior / n))? / &keep)?;
            let neg_entropy = ((&p * p.log()?)? + (&keep * keep.log()?)?)?;
            let term = (weight + (neg_entropy * (2.0 * fan_in as f64 / n))?)?;
            total = Some(match total {
                Some(t) => (t + term)?,
                None => term,
            });
        }
        total.map(|t| t.sum_all()).transpose()
    }

    /// Keeps every learned logit within `±MAX_DROP_LOGIT` (see there); nothing with fixed
    /// rates.
    ///
    /// # Errors
    /// Only if candle fails.
    pub fn clamp_drop_logits(&self) -> Result<()> {
        for logit in self.drop_logits.iter().flatten() {
            logit.set(&logit.as_tensor().clamp(-MAX_DROP_LOGIT, MAX_DROP_LOGIT)?)?;
        }
        Ok(())
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

    /// Outputs of the trainable network (gradients flow to its `Var`s): `(rows, output_dim)`,
    /// or `(rows, 2 * output_dim)` with the log variances after the means.
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

    /// Copies of the variables by name (`l{i}.weight`, `l{i}.bias`, and with Concrete
    /// Dropout `l{i}.drop_logit`), for checkpoints.
    ///
    /// # Errors
    /// candle cannot copy a tensor.
    pub fn named_tensors(&self) -> Result<std::collections::HashMap<String, Tensor>> {
        let mut out = std::collections::HashMap::new();
        for (l, (w, b)) in self.layers.iter().enumerate() {
            out.insert(format!("l{l}.weight"), w.as_tensor().copy()?);
            out.insert(format!("l{l}.bias"), b.as_tensor().copy()?);
        }
        for (l, logit) in self.drop_logits.iter().flatten().enumerate() {
            out.insert(format!("l{l}.drop_logit"), logit.as_tensor().copy()?);
        }
        Ok(out)
    }

    /// Overwrites the variables from `tensors` (as made by [`TrainableNet::named_tensors`]).
    /// Learned drop rates are restored when the checkpoint has them; a checkpoint written
    /// without them (fixed rates, or before Concrete Dropout existed) leaves the starting
    /// rates, and a network with fixed rates ignores them.
    ///
    /// # Errors
    /// A weight or bias is missing, or any tensor has another shape; nothing is changed then.
    pub fn load_named(&self, tensors: &std::collections::HashMap<String, Tensor>) -> Result<()> {
        let mut pairs = Vec::new();
        let fits = |name: &str, t: &Tensor, var: &Var| {
            if t.dims() == var.dims() {
                Ok(())
            } else {
                Err(candle_core::Error::Msg(format!(
                    "{name}: checkpoint shape {:?}, network {:?}",
                    t.dims(),
                    var.dims()
                )))
            }
        };
        for (l, (w, b)) in self.layers.iter().enumerate() {
            for (name, var) in [(format!("l{l}.weight"), w), (format!("l{l}.bias"), b)] {
                let t = tensors
                    .get(&name)
                    .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {name}")))?;
                fits(&name, t, var)?;
                pairs.push((var, t.to_dtype(DTYPE)?));
            }
        }
        for (l, logit) in self.drop_logits.iter().flatten().enumerate() {
            let name = format!("l{l}.drop_logit");
            if let Some(t) = tensors.get(&name) {
                fits(&name, t, logit)?;
                pairs.push((logit, t.to_dtype(DTYPE)?));
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
        let layers: Vec<(Tensor, Tensor)> = self
            .layers
            .iter()
            .map(|(w, b)| Ok((w.as_tensor().copy()?, b.as_tensor().copy()?)))
            .collect::<Result<_>>()?;
        let arrays = layers
            .iter()
            .map(|(w, b)| Ok((w.flatten_all()?.to_vec1()?, b.to_vec1()?)))
            .collect::<Result<_>>()?;
        Ok(Weights {
            dense: Arc::new(Dense::new(arrays, self.shape.output_dim)?),
            layers,
            means: self.shape.output_dim,
        })
    }
}

/// `[last hidden layer, 1]` of every row of `xs`, row-major, and its width: what NeuralLinear
/// regresses on (the trailing 1 is the intercept); under `masks` as in [`Weights::last_hidden`].
///
/// # Errors
/// Shapes that do not fit the network.
pub fn neural_linear_features(
    weights: &Weights,
    xs: &Tensor,
    masks: Option<&Masks>,
) -> Result<(Vec<f32>, usize)> {
    let h = weights.last_hidden(xs, masks)?;
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

    /// Concrete Dropout: the relaxed masks are nearly binary at t = 0.1 (0 or 1/(1-p)),
    /// drop about a fraction p of the units, and the gradient of a loss through them and of
    /// the regulariser reaches every rate's logit.
    #[test]
    fn concrete_masks_and_rate_gradients() {
        let net = TrainableNet::new(shape(0.3), 5)
            .unwrap()
            .with_concrete_dropout()
            .unwrap();
        assert!(net.learns_drop_rates());
        for p in net.drop_rates().unwrap() {
            assert!((p - 0.3).abs() < 1e-6, "{p}");
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let masks = net.concrete_masks(&mut rng, 500).unwrap().unwrap();
        let hidden: Vec<f32> = masks[1]
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let full = (1.0 / 0.7) as f32;
        assert!(hidden.iter().all(|&m| (-1e-6..=full + 1e-4).contains(&m)));
        let near_binary = hidden
            .iter()
            .filter(|&&m| m < 0.05 * full || m > 0.95 * full)
            .count();
        // A relaxed draw lands in between when |logit + logistic noise| < 0.1 ln 19 = 0.29:
        // probability about 0.59 · p(1-p) = 0.12 at p = 0.3.
        let between = 1.0 - near_binary as f64 / hidden.len() as f64;
        assert!((0.08..0.16).contains(&between), "{between}");
        let dropped = hidden.iter().filter(|&&m| m < 0.5 * full).count() as f64;
        // 8000 draws at p = 0.3: sd of the fraction 0.005; margin 0.03.
        assert!(
            (dropped / hidden.len() as f64 - 0.3).abs() < 0.03,
            "{dropped}"
        );

        let xs = matrix((0..20).map(|i| i as f32 / 10.0 - 1.0).collect(), 5, 4).unwrap();
        let masks = net.concrete_masks(&mut rng, 5).unwrap().unwrap();
        let loss = net
            .forward(&xs, Some(&masks))
            .unwrap()
            .affine(1.0, -1.0)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for (l, logit) in net.drop_logit_vars().iter().enumerate() {
            let g: f32 = grads.get(logit).unwrap().to_vec1().unwrap()[0];
            assert!(g.is_finite() && g != 0.0, "layer {l}: loss gradient {g}");
        }
        let reg = net.concrete_regulariser(10.0, 1.0).unwrap().unwrap();
        let grads = reg.backward().unwrap();
        for (l, logit) in net.drop_logit_vars().iter().enumerate() {
            let g: f32 = grads.get(logit).unwrap().to_vec1().unwrap()[0];
            assert!(
                g.is_finite() && g != 0.0,
                "layer {l}: regulariser gradient {g}"
            );
        }
        // The regulariser does not train the weights (they are decayed by the trainer).
        assert!(grads.get(&net.weight_vars()[0]).is_none());
    }

    /// Learned rates survive `named_tensors`/`load_named`; a checkpoint without them leaves
    /// the starting rates; a fixed-rate network has no rate tensors and ignores them.
    #[test]
    fn drop_logits_round_trip() {
        let a = TrainableNet::new(shape(0.3), 5)
            .unwrap()
            .with_concrete_dropout()
            .unwrap();
        for logit in a.drop_logit_vars() {
            logit
                .set(&Tensor::new(&[-2.0f32], &Device::Cpu).unwrap())
                .unwrap();
        }
        let tensors = a.named_tensors().unwrap();
        assert!(tensors.contains_key("l2.drop_logit"));
        let b = TrainableNet::new(shape(0.3), 6)
            .unwrap()
            .with_concrete_dropout()
            .unwrap();
        b.load_named(&tensors).unwrap();
        assert_eq!(b.drop_rates().unwrap(), a.drop_rates().unwrap());
        assert!((b.drop_rates().unwrap()[0] - 1.0 / (1.0 + 2f64.exp())).abs() < 1e-6);

        let mut old = tensors.clone();
        old.retain(|name, _| !name.ends_with("drop_logit"));
        let c = TrainableNet::new(shape(0.3), 6)
            .unwrap()
            .with_concrete_dropout()
            .unwrap();
        c.load_named(&old).unwrap();
        assert!(
            c.drop_rates()
                .unwrap()
                .iter()
                .all(|p| (p - 0.3).abs() < 1e-6)
        );

        let fixed = TrainableNet::new(shape(0.3), 6).unwrap();
        fixed.load_named(&tensors).unwrap();
        assert_eq!(fixed.drop_rates().unwrap(), vec![0.3; 3]);
        assert!(!fixed.named_tensors().unwrap().contains_key("l0.drop_logit"));
        assert!(
            TrainableNet::new(shape(0.0), 6)
                .unwrap()
                .with_concrete_dropout()
                .is_err()
        );
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
