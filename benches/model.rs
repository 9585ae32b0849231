//! The reward network's hot paths in candle, each beside a plain-Rust reference of the same
//! arithmetic over `f32` slices, so the framework overhead is the ratio of the two.
//!
//! Groups (each with a `candle` and a `plain_rust` function; the decision groups also with
//! `policy`, what serving runs: [`policy::thompson`] on the plain pass `model::Dense`):
//! - `decide_fixed_2-100-100-5`: one Thompson decision on the wheel-shaped fixed-arm net
//!   (context 2, hidden [100, 100], 5 heads, drop rates [0, 0.1, 0.1]): masks drawn on the
//!   host, batch-1 forward, scores, argmax.
//! - `decide_fixed_64-100-100-10`: the same with context 64 and 10 arms.
//! - `decide_per_arm_16x10`: a per-arm net (context 8 + arm features 8 = 16 inputs, hidden
//!   [100, 100], 1 output) scoring 10 candidate rows under one shared mask.
//! - `sgd_step_batch_32` / `sgd_step_batch_1`: one [`Trainer::step`] on the wheel-shaped net
//!   with 1000 examples in replay: minibatch sampling, per-example masks, forward, squared
//!   error on the chosen head, backward, update. `candle_adam` is the default optimizer (what
//!   the service runs), `candle_sgd` the same step with `optimizer = sgd`. The `plain_rust`
//!   reference is plain SGD (plus the prior's weight decay, as the trainer's SGD path does):
//!   it matches `candle_sgd` arithmetic for arithmetic; Adam's extra elementwise work per
//!   parameter (two moment updates, a square root and a division) is not in it.
//!
//! The reference keeps its buffers between calls (it allocates nothing per decision or step)
//! and is compiled for the default target CPU (no `-C target-cpu=native`), while candle's
//! `gemm` picks AVX2/FMA kernels at run time.
//!
//! Before measuring, each reference is checked against candle on the same weights and RNG
//! stream: the decision scores must agree (asserted), and one SGD step must give the same
//! loss and weights as `candle_sgd` (a warning if not, since that check also relies on the
//! trainer's private RNG seeding).
//!
//! The `mimalloc` feature (on by default) makes mimalloc the global allocator here as it is
//! in the binary; `--no-default-features` measures glibc malloc. See `benches/README.md`.

use std::{hint::black_box, time::Duration};

use banditd::{
    config::{ModelConfig, ModelKind, OptimizerKind, PolicyKind},
    learner::{Example, RunningStats, Trainer},
    model::{Weights, matrix},
    policy::Snapshot,
    policy::{self, Inputs},
};
use criterion::{Criterion, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc"
} else {
    "system (glibc malloc)"
};

/// Hidden widths and drop rates of every benchmarked net.
const HIDDEN: [usize; 2] = [100, 100];
const DROP_RATES: [f64; 3] = [0.0, 0.1, 0.1];
/// Examples put in replay before the SGD benchmarks.
const REPLAY_EXAMPLES: usize = 1000;

// ---------------------------------------------------------------------------------------
// The plain-Rust reference.
// ---------------------------------------------------------------------------------------

/// True when the reference's kernels may use AVX2 and FMA (detected at run time, as candle's
/// `gemm` does; the benches are not built with `-C target-cpu=native`).
fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `a * b + c`, fused when `FMA` (only ever true inside an `avx2,fma` function; elsewhere
/// `mul_add` would be a libm call).
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

/// `y += a * x`.
#[inline(always)]
fn axpy<const FMA: bool>(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y = madd::<FMA>(a, x, *y);
    }
}

/// Dot product with sixteen partial sums, so that it vectorises without fast-math.
#[inline(always)]
fn dot<const FMA: bool>(a: &[f32], b: &[f32]) -> f32 {
    let (a16, a_rest) = a.as_chunks::<16>();
    let (b16, b_rest) = b.as_chunks::<16>();
    let mut acc = [0.0f32; 16];
    for (x, y) in a16.iter().zip(b16) {
        for ((acc, &x), &y) in acc.iter_mut().zip(x).zip(y) {
            *acc = madd::<FMA>(x, y, *acc);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for (&x, &y) in a_rest.iter().zip(b_rest) {
        sum = madd::<FMA>(x, y, sum);
    }
    sum
}

/// Index of the largest value, the first on ties; NaN never wins (as in `policy`).
fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

/// Multiplies every row of `h` (rows of `width`) by `mask`: one shared row, one row per row
/// of `h`, or nothing when `mask` is empty (drop rate 0).
#[inline(always)]
fn apply_mask(h: &mut [f32], mask: &[f32], width: usize) {
    if mask.is_empty() {
        return;
    }
    if mask.len() == width {
        for row in h.chunks_exact_mut(width) {
            for (v, m) in row.iter_mut().zip(mask) {
                *v *= m;
            }
        }
    } else {
        for (v, m) in h.iter_mut().zip(mask) {
            *v *= m;
        }
    }
}

/// One weight layer: `w` is `(fan_in, fan_out)` row-major, as candle stores it.
#[derive(Debug, Clone)]
struct Layer {
    fan_in: usize,
    fan_out: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

/// Reusable buffers of a forward (and backward) pass.
#[derive(Debug, Default)]
struct Buffers {
    /// Per layer: the mask of the units feeding it (`rows * fan_in` or `fan_in` values),
    /// empty when its drop rate is 0.
    masks: Vec<Vec<f32>>,
    /// Per layer: its masked input, `rows * fan_in`.
    h: Vec<Vec<f32>>,
    /// Per layer: its output before the ReLU, `rows * fan_out`.
    z: Vec<Vec<f32>>,
}

/// The reward network in plain Rust.
#[derive(Debug, Clone)]
struct PlainNet {
    layers: Vec<Layer>,
    rates: Vec<f64>,
}

impl PlainNet {
    /// A copy of candle's weights.
    fn from_weights(weights: &Weights, rates: &[f64]) -> Self {
        let layers = weights
            .layers()
            .iter()
            .map(|(w, b)| {
                let w: Vec<Vec<f32>> = w.to_vec2().expect("weight matrix");
                Layer {
                    fan_in: w.len(),
                    fan_out: w[0].len(),
                    w: w.concat(),
                    b: b.to_vec1().expect("bias vector"),
                }
            })
            .collect();
        Self {
            layers,
            rates: rates.to_vec(),
        }
    }

    fn buffers(&self) -> Buffers {
        let n = self.layers.len();
        Buffers {
            masks: vec![Vec::new(); n],
            h: vec![Vec::new(); n],
            z: vec![Vec::new(); n],
        }
    }

    /// Draws the masks exactly as `model::draw_masks` does: layer by layer (skipping rate 0),
    /// `rows * fan_in` Bernoulli keeps, kept units scaled by `1 / (1 - rate)`.
    fn draw_masks<R: Rng>(&self, rng: &mut R, rows: usize, masks: &mut [Vec<f32>]) {
        for ((mask, layer), &rate) in masks.iter_mut().zip(&self.layers).zip(&self.rates) {
            mask.clear();
            if rate <= 0.0 {
                continue;
            }
            let keep = 1.0 - rate;
            let scale = (1.0 / keep) as f32;
            mask.extend((0..rows * layer.fan_in).map(|_| {
                if rng.random::<f64>() < keep {
                    scale
                } else {
                    0.0
                }
            }));
        }
    }

    /// Forward pass of `rows` inputs under `buf.masks`; the outputs end up in the last
    /// `buf.z`.
    #[inline(always)]
    fn forward<const FMA: bool>(&self, xs: &[f32], rows: usize, buf: &mut Buffers) {
        for (l, layer) in self.layers.iter().enumerate() {
            let h = &mut buf.h[l];
            h.clear();
            if l == 0 {
                h.extend_from_slice(&xs[..rows * layer.fan_in]);
            } else {
                h.extend(buf.z[l - 1].iter().map(|&v| v.max(0.0)));
            }
            apply_mask(h, &buf.masks[l], layer.fan_in);
            let z = &mut buf.z[l];
            z.resize(rows * layer.fan_out, 0.0);
            for (zr, hr) in z
                .chunks_exact_mut(layer.fan_out)
                .zip(h.chunks_exact(layer.fan_in))
            {
                zr.copy_from_slice(&layer.b);
                for (&hi, wi) in hr.iter().zip(layer.w.chunks_exact(layer.fan_out)) {
                    axpy::<FMA>(zr, hi, wi);
                }
            }
        }
    }
}

/// A Thompson decision in plain Rust, with its buffers.
#[derive(Debug)]
struct PlainPolicy {
    net: PlainNet,
    reward_mean: f64,
    reward_std: f64,
    buf: Buffers,
    scores: Vec<f64>,
    fma: bool,
}

impl PlainPolicy {
    fn new(snapshot: &Snapshot) -> Self {
        let net = PlainNet::from_weights(&snapshot.weights, &snapshot.shape.drop_rates);
        let buf = net.buffers();
        Self {
            net,
            reward_mean: snapshot.reward_mean,
            reward_std: snapshot.reward_std,
            buf,
            scores: Vec::new(),
            fma: fma_available(),
        }
    }

    /// The `policy::thompson` of a fixed-arm net: one mask, batch-1 forward, the heads'
    /// scores, argmax. Returns the winner; the scores stay in `self.scores`.
    fn decide_heads<R: Rng>(&mut self, context: &[f32], heads: &[usize], rng: &mut R) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `self.fma` is set only when the CPU has AVX2 and FMA.
            return unsafe { self.decide_heads_fma(context, heads, rng) };
        }
        self.decide_heads_impl::<false, R>(context, heads, rng)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn decide_heads_fma<R: Rng>(&mut self, context: &[f32], heads: &[usize], rng: &mut R) -> usize {
        self.decide_heads_impl::<true, R>(context, heads, rng)
    }

    #[inline(always)]
    fn decide_heads_impl<const FMA: bool, R: Rng>(
        &mut self,
        context: &[f32],
        heads: &[usize],
        rng: &mut R,
    ) -> usize {
        self.net.draw_masks(rng, 1, &mut self.buf.masks);
        self.net.forward::<FMA>(context, 1, &mut self.buf);
        let out = self.buf.z.last().expect("at least one layer");
        self.scores.clear();
        self.scores.extend(
            heads
                .iter()
                .map(|&h| f64::from(out[h]) * self.reward_std + self.reward_mean),
        );
        argmax(&self.scores)
    }

    /// The `policy::thompson` of a per-arm net: one shared mask over every row.
    fn decide_rows<R: Rng>(&mut self, values: &[f32], rows: usize, rng: &mut R) -> usize {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `self.fma` is set only when the CPU has AVX2 and FMA.
            return unsafe { self.decide_rows_fma(values, rows, rng) };
        }
        self.decide_rows_impl::<false, R>(values, rows, rng)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn decide_rows_fma<R: Rng>(&mut self, values: &[f32], rows: usize, rng: &mut R) -> usize {
        self.decide_rows_impl::<true, R>(values, rows, rng)
    }

    #[inline(always)]
    fn decide_rows_impl<const FMA: bool, R: Rng>(
        &mut self,
        values: &[f32],
        rows: usize,
        rng: &mut R,
    ) -> usize {
        self.net.draw_masks(rng, 1, &mut self.buf.masks);
        self.net.forward::<FMA>(values, rows, &mut self.buf);
        let out = self.buf.z.last().expect("at least one layer");
        self.scores.clear();
        self.scores.extend(
            out.iter()
                .map(|&y| f64::from(y) * self.reward_std + self.reward_mean),
        );
        argmax(&self.scores)
    }
}

/// `Trainer::step` with plain SGD in plain Rust.
#[derive(Debug)]
struct PlainTrainer {
    net: PlainNet,
    learning_rate: f64,
    prior_strength: f64,
    batch_size: usize,
    replay: Vec<Example>,
    rewards: RunningStats,
    rng: Xoshiro256PlusPlus,
    buf: Buffers,
    /// Per layer: gradients of `w` and `b`.
    grads: Vec<(Vec<f32>, Vec<f32>)>,
    /// The gradient w.r.t. the current layer's output, and the previous layer's.
    dz: Vec<f32>,
    dz_prev: Vec<f32>,
    inputs: Vec<f32>,
    heads: Vec<usize>,
    targets: Vec<f32>,
    fma: bool,
}

impl PlainTrainer {
    /// A reference starting from `weights` with the config's learning settings; `rng_seed`
    /// seeds minibatch sampling and masks.
    fn new(config: &ModelConfig, weights: &Weights, rng_seed: u64) -> Self {
        let net = PlainNet::from_weights(weights, &config.effective_drop_rates());
        let buf = net.buffers();
        let grads = net
            .layers
            .iter()
            .map(|l| (vec![0.0; l.w.len()], vec![0.0; l.b.len()]))
            .collect();
        Self {
            net,
            learning_rate: config.optimizer.learning_rate,
            prior_strength: config.optimizer.prior_strength,
            batch_size: config.optimizer.batch_size,
            replay: Vec::new(),
            rewards: RunningStats::default(),
            rng: Xoshiro256PlusPlus::seed_from_u64(rng_seed),
            buf,
            grads,
            dz: Vec::new(),
            dz_prev: Vec::new(),
            inputs: Vec::new(),
            heads: Vec::new(),
            targets: Vec::new(),
            fma: fma_available(),
        }
    }

    /// Adds an example (the replay never fills in these benchmarks).
    fn add(&mut self, example: Example) {
        self.rewards.push(example.reward);
        self.replay.push(example);
    }

    /// One minibatch step; returns the minibatch loss.
    fn step(&mut self) -> f64 {
        #[cfg(target_arch = "x86_64")]
        if self.fma {
            // SAFETY: `self.fma` is set only when the CPU has AVX2 and FMA.
            return unsafe { self.step_fma() };
        }
        self.step_impl::<false>()
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    fn step_fma(&mut self) -> f64 {
        self.step_impl::<true>()
    }

    #[inline(always)]
    fn step_impl<const FMA: bool>(&mut self) -> f64 {
        let m = self.batch_size;
        let (mean, std) = (self.rewards.mean(), self.rewards.std());
        // Minibatch: uniform with replacement, drawn before the masks (as Replay::sample).
        self.inputs.clear();
        self.heads.clear();
        self.targets.clear();
        for _ in 0..m {
            let example = &self.replay[self.rng.random_range(0..self.replay.len())];
            self.inputs.extend_from_slice(&example.input);
            self.heads.push(example.head as usize);
            self.targets.push(((example.reward - mean) / std) as f32);
        }
        self.net.draw_masks(&mut self.rng, m, &mut self.buf.masks);
        self.net.forward::<FMA>(&self.inputs, m, &mut self.buf);

        // Loss: mean squared error on the chosen head; d loss / d out = 2 (pred - y) / m there.
        let last = self.net.layers.len() - 1;
        let n_out = self.net.layers[last].fan_out;
        let out = &self.buf.z[last];
        self.dz.clear();
        self.dz.resize(m * n_out, 0.0);
        let mut loss = 0.0f32;
        for (r, (&head, &y)) in self.heads.iter().zip(&self.targets).enumerate() {
            let err = out[r * n_out + head] - y;
            loss += err * err;
            self.dz[r * n_out + head] = 2.0 * err / m as f32;
        }
        loss /= m as f32;

        // Backward through the masked ReLU MLP.
        for (gw, gb) in &mut self.grads {
            gw.fill(0.0);
            gb.fill(0.0);
        }
        for l in (0..=last).rev() {
            let layer = &self.net.layers[l];
            let (n_in, n_out) = (layer.fan_in, layer.fan_out);
            let (gw, gb) = &mut self.grads[l];
            // dW = h^T dz, db = column sums of dz.
            for (hr, dzr) in self.buf.h[l]
                .chunks_exact(n_in)
                .zip(self.dz.chunks_exact(n_out))
            {
                for (&hi, gwi) in hr.iter().zip(gw.chunks_exact_mut(n_out)) {
                    axpy::<FMA>(gwi, hi, dzr);
                }
                axpy::<FMA>(gb, 1.0, dzr);
            }
            if l == 0 {
                break;
            }
            // d h = dz W^T; the units feeding layer l are relu(z[l-1]) * mask[l].
            let mask = &self.buf.masks[l];
            self.dz_prev.resize(m * n_in, 0.0);
            for (r, ((dpr, dzr), zr)) in self
                .dz_prev
                .chunks_exact_mut(n_in)
                .zip(self.dz.chunks_exact(n_out))
                .zip(self.buf.z[l - 1].chunks_exact(n_in))
                .enumerate()
            {
                let mask_row = match mask.len() {
                    0 => None,
                    len if len == n_in => Some(&mask[..]),
                    _ => Some(&mask[r * n_in..(r + 1) * n_in]),
                };
                for (i, ((dp, wi), &z)) in dpr
                    .iter_mut()
                    .zip(layer.w.chunks_exact(n_out))
                    .zip(zr)
                    .enumerate()
                {
                    let keep = mask_row.map_or(1.0, |mr| mr[i]);
                    *dp = if z > 0.0 {
                        dot::<FMA>(wi, dzr) * keep
                    } else {
                        0.0
                    };
                }
            }
            std::mem::swap(&mut self.dz, &mut self.dz_prev);
        }

        // Plain SGD, then the prior as decay of the weight matrices (the trainer's SGD path).
        let lr = self.learning_rate as f32;
        let decay = 2.0 * self.prior_strength / self.rewards.count().max(1) as f64;
        let keep = (1.0 - self.learning_rate * decay) as f32;
        for (layer, (gw, gb)) in self.net.layers.iter_mut().zip(&self.grads) {
            for (w, g) in layer.w.iter_mut().zip(gw) {
                *w = (*w - lr * g) * keep;
            }
            for (b, g) in layer.b.iter_mut().zip(gb) {
                *b -= lr * g;
            }
        }
        f64::from(loss)
    }
}

// ---------------------------------------------------------------------------------------
// Setup.
// ---------------------------------------------------------------------------------------

fn uniform(rng: &mut Xoshiro256PlusPlus, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn fixed_config(context_dim: usize, arms: usize) -> ModelConfig {
    let mut config = ModelConfig::new("bench", ModelKind::FixedArms, context_dim);
    config.arms = (0..arms).map(|a| format!("arm{a}")).collect();
    config.network.hidden_layers = HIDDEN.to_vec();
    config.network.drop_rates = Some(DROP_RATES.to_vec());
    config
}

fn per_arm_config(context_dim: usize, arm_feature_dim: usize) -> ModelConfig {
    let mut config = ModelConfig::new("bench", ModelKind::PerArmFeatures, context_dim);
    config.arm_feature_dim = arm_feature_dim;
    config.network.hidden_layers = HIDDEN.to_vec();
    config.network.drop_rates = Some(DROP_RATES.to_vec());
    config
}

/// Seeded examples with a random input, head and reward.
fn examples(config: &ModelConfig, n: usize, seed: u64) -> Vec<Example> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let heads = config.output_dim() as u32;
    (0..n)
        .map(|i| Example {
            input: uniform(&mut rng, config.input_dim()),
            head: rng.random_range(0..heads),
            reward: rng.random::<f64>(),
            seq: i as u64,
        })
        .collect()
}

/// A snapshot of the config's initial network, with the reward scale of 100 examples.
fn snapshot_of(config: &ModelConfig) -> Snapshot {
    let mut trainer = Trainer::new(config).expect("trainer");
    for example in examples(config, 100, 1) {
        trainer.add(example);
    }
    trainer.snapshot(0).expect("snapshot")
}

/// The scores of candle and the reference agree when both draw from the same seed.
fn check_scores(candle: &[f64], plain: &[f64], what: &str) {
    assert_eq!(candle.len(), plain.len(), "{what}: score count");
    for (c, p) in candle.iter().zip(plain) {
        assert!(
            (c - p).abs() <= 1e-4 * (1.0 + c.abs()),
            "{what}: the plain-Rust reference disagrees with candle: {candle:?} vs {plain:?}"
        );
    }
}

fn criterion_config() -> Criterion {
    Criterion::default()
        .sample_size(30)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

// ---------------------------------------------------------------------------------------
// Benchmarks.
// ---------------------------------------------------------------------------------------

/// The decision as `policy::thompson` made it before issue 11 moved serving to the plain
/// pass (`model::Dense`): masks as candle tensors, a candle forward pass, the scores mapped
/// back, the argmax. Kept so that the framework's cost stays measured beside the others.
fn candle_thompson(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    rng: &mut Xoshiro256PlusPlus,
) -> policy::Choice {
    let masks = snapshot.shape.draw_masks(rng, 1).expect("masks");
    let dim = snapshot.shape.input_dim;
    let xs = match inputs {
        Inputs::Heads { context, .. } => matrix(context.to_vec(), 1, dim),
        Inputs::Rows { values, rows } => matrix(values.to_vec(), rows, dim),
    }
    .expect("inputs");
    let out: Vec<f32> = snapshot
        .weights
        .forward(&xs, Some(&masks))
        .and_then(|t| t.flatten_all()?.to_vec1())
        .expect("forward");
    let to_reward = |y: f32| f64::from(y) * snapshot.reward_std + snapshot.reward_mean;
    let scores: Vec<f64> = match inputs {
        Inputs::Heads { heads, .. } => heads.iter().map(|&h| to_reward(out[h])).collect(),
        Inputs::Rows { .. } => out.iter().copied().map(to_reward).collect(),
    };
    policy::Choice {
        best: argmax(&scores),
        scores,
    }
}

fn bench_decide_fixed(c: &mut Criterion, context_dim: usize, arms: usize) {
    let config = fixed_config(context_dim, arms);
    let snapshot = snapshot_of(&config);
    let context = uniform(&mut Xoshiro256PlusPlus::seed_from_u64(2), context_dim);
    let heads: Vec<usize> = (0..arms).collect();
    let inputs = Inputs::Heads {
        context: &context,
        heads: &heads,
    };
    let mut plain = PlainPolicy::new(&snapshot);

    for seed in 0..5 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let choice = policy::thompson(&snapshot, inputs, &mut rng).expect("thompson");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let best = plain.decide_heads(&context, &heads, &mut rng);
        check_scores(&choice.scores, &plain.scores, "decide_fixed");
        assert_eq!(choice.best, best);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let candle = candle_thompson(&snapshot, inputs, &mut rng);
        check_scores(&choice.scores, &candle.scores, "decide_fixed (candle)");
    }

    let mut group = c.benchmark_group(format!("decide_fixed_{context_dim}-100-100-{arms}"));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("candle", |b| {
        b.iter(|| candle_thompson(&snapshot, black_box(inputs), &mut rng));
    });
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("policy", |b| {
        b.iter(|| policy::thompson(&snapshot, black_box(inputs), &mut rng).expect("thompson"));
    });
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("plain_rust", |b| {
        b.iter(|| plain.decide_heads(black_box(&context), black_box(&heads), &mut rng));
    });
    group.finish();
}

fn bench_decide_fixed_small(c: &mut Criterion) {
    bench_decide_fixed(c, 2, 5);
}

fn bench_decide_fixed_large(c: &mut Criterion) {
    bench_decide_fixed(c, 64, 10);
}

fn bench_decide_per_arm(c: &mut Criterion) {
    const CONTEXT: usize = 8;
    const FEATURES: usize = 8;
    const CANDIDATES: usize = 10;
    let config = per_arm_config(CONTEXT, FEATURES);
    let snapshot = snapshot_of(&config);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
    let context = uniform(&mut rng, CONTEXT);
    let mut values = Vec::with_capacity(CANDIDATES * (CONTEXT + FEATURES));
    for _ in 0..CANDIDATES {
        values.extend_from_slice(&context);
        values.extend(uniform(&mut rng, FEATURES));
    }
    let inputs = Inputs::Rows {
        values: &values,
        rows: CANDIDATES,
    };
    let mut plain = PlainPolicy::new(&snapshot);

    for seed in 0..5 {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let choice = policy::thompson(&snapshot, inputs, &mut rng).expect("thompson");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let best = plain.decide_rows(&values, CANDIDATES, &mut rng);
        check_scores(&choice.scores, &plain.scores, "decide_per_arm");
        assert_eq!(choice.best, best);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let candle = candle_thompson(&snapshot, inputs, &mut rng);
        check_scores(&choice.scores, &candle.scores, "decide_per_arm (candle)");
    }

    let mut group = c.benchmark_group(format!(
        "decide_per_arm_{}x{CANDIDATES}",
        CONTEXT + FEATURES
    ));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("candle", |b| {
        b.iter(|| candle_thompson(&snapshot, black_box(inputs), &mut rng));
    });
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("policy", |b| {
        b.iter(|| policy::thompson(&snapshot, black_box(inputs), &mut rng).expect("thompson"));
    });
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    group.bench_function("plain_rust", |b| {
        b.iter(|| plain.decide_rows(black_box(&values), CANDIDATES, &mut rng));
    });
    group.finish();
}

/// `Trainer`'s training RNG seed (private to the trainer; only the SGD check relies on it).
fn trainer_rng_seed(config: &ModelConfig) -> u64 {
    config.seed ^ 0x5eed_1ea7_0000_0001
}

/// A trainer of `config` and a reference starting from the same weights and examples.
fn trainers(config: &ModelConfig) -> (Trainer, PlainTrainer) {
    let mut trainer = Trainer::new(config).expect("trainer");
    let weights = trainer.snapshot(0).expect("snapshot").weights;
    let mut plain = PlainTrainer::new(config, &weights, trainer_rng_seed(config));
    for example in examples(config, REPLAY_EXAMPLES, 1) {
        trainer.add(example.clone());
        plain.add(example);
    }
    (trainer, plain)
}

/// One SGD step of candle and of the reference from the same state should agree. A warning
/// only: a mismatch may also mean the trainer's private RNG seeding changed.
fn check_sgd_step(config: &ModelConfig) {
    let (mut trainer, mut plain) = trainers(config);
    let candle_loss = trainer.step().expect("step");
    let plain_loss = plain.step();
    let weights = trainer.snapshot(1).expect("snapshot").weights;
    let after = PlainNet::from_weights(&weights, &[]);
    let max_diff = after
        .layers
        .iter()
        .zip(&plain.net.layers)
        .flat_map(|(c, p)| c.w.iter().zip(&p.w).chain(c.b.iter().zip(&p.b)))
        .map(|(c, p)| (c - p).abs())
        .fold(0.0f32, f32::max);
    if (candle_loss - plain_loss).abs() > 1e-4 * (1.0 + candle_loss.abs()) || max_diff > 1e-5 {
        eprintln!(
            "WARNING sgd_step_batch_{}: the plain-Rust step differs from candle's SGD step \
             (loss {candle_loss} vs {plain_loss}, max weight difference {max_diff})",
            config.optimizer.batch_size
        );
    }
}

fn bench_sgd_step(c: &mut Criterion, batch_size: usize) {
    let mut config = fixed_config(2, 5);
    config.optimizer.batch_size = batch_size;
    let mut sgd_config = config.clone();
    sgd_config.optimizer.kind = OptimizerKind::Sgd;
    check_sgd_step(&sgd_config);

    let (mut adam, _) = trainers(&config);
    let (mut sgd, mut plain) = trainers(&sgd_config);
    let mut group = c.benchmark_group(format!("sgd_step_batch_{batch_size}"));
    group.bench_function("candle_adam", |b| {
        b.iter(|| adam.step().expect("step"));
    });
    group.bench_function("candle_sgd", |b| {
        b.iter(|| sgd.step().expect("step"));
    });
    group.bench_function("plain_rust", |b| {
        b.iter(|| plain.step());
    });
    group.finish();
}

fn bench_sgd_step_32(c: &mut Criterion) {
    bench_sgd_step(c, 32);
}

fn bench_sgd_step_1(c: &mut Criterion) {
    bench_sgd_step(c, 1);
}

fn announce(_: &mut Criterion) {
    eprintln!(
        "allocator: {ALLOCATOR}; RAYON_NUM_THREADS={}; plain-Rust kernels: {}",
        std::env::var("RAYON_NUM_THREADS").unwrap_or_else(|_| "(unset)".into()),
        if fma_available() {
            "avx2+fma"
        } else {
            "baseline"
        }
    );
}

/// Every policy's decision on the wheel-shaped fixed-arm net (2-100-100-5), then what a
/// propensity estimate and an explanation cost per number of posterior samples S.
fn bench_policies(c: &mut Criterion) {
    let context = uniform(&mut Xoshiro256PlusPlus::seed_from_u64(2), 2);
    let heads: Vec<usize> = (0..5).collect();
    let inputs = Inputs::Heads {
        context: &context,
        heads: &heads,
    };
    let snapshot_for = |policy: PolicyKind| {
        let mut config = fixed_config(2, 5);
        config.policy.kind = policy;
        snapshot_of(&config)
    };
    let mut group = c.benchmark_group("policy_decide_2-100-100-5");
    for policy in [
        PolicyKind::McDropout,
        PolicyKind::NeuralLinear,
        PolicyKind::Greedy,
        PolicyKind::EpsilonGreedy,
        PolicyKind::Uniform,
    ] {
        let snapshot = snapshot_for(policy);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        group.bench_function(policy.as_str(), |b| {
            b.iter(|| policy::decide(&snapshot, black_box(inputs), &mut rng).expect("decide"));
        });
    }
    group.finish();

    for policy in [PolicyKind::McDropout, PolicyKind::NeuralLinear] {
        let snapshot = snapshot_for(policy);
        let mut group = c.benchmark_group(format!("propensity_{}_2-100-100-5", policy.as_str()));
        for samples in [10, 100, 1000] {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
            group.bench_function(format!("S={samples}"), |b| {
                b.iter(|| {
                    policy::propensity(&snapshot, black_box(inputs), 0, samples, &mut rng)
                        .expect("propensity")
                });
            });
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        group.bench_function("explain_S=100", |b| {
            b.iter(|| {
                policy::explain(&snapshot, black_box(inputs), 100, &mut rng).expect("explain")
            });
        });
        group.finish();
    }
}

/// NeuralLinear's learner-side costs on the wheel-shaped net: refitting every head on a full
/// replay buffer (features recomputed), and factorising the posteriors for a publish.
fn bench_neural_linear_learner(c: &mut Criterion) {
    let mut config = fixed_config(2, 5);
    config.policy.kind = PolicyKind::NeuralLinear;
    config.policy.neural_linear.refresh_every = usize::MAX;
    let mut group = c.benchmark_group("neural_linear_learner_2-100-100-5");
    for replay in [1_000usize, 20_000] {
        let mut trainer = Trainer::new(&config).expect("trainer");
        for example in examples(&config, replay, 1) {
            trainer.add(example);
        }
        group.bench_function(format!("refresh_replay_{replay}"), |b| {
            b.iter(|| trainer.refresh_linear().expect("refresh"));
        });
    }
    let mut trainer = Trainer::new(&config).expect("trainer");
    let mut more = examples(&config, 100_000, 2).into_iter().cycle();
    let mut version = 0;
    group.bench_function("add_one_then_publish", |b| {
        b.iter(|| {
            // One example dirties one head's posterior: a publish factorises that one again.
            trainer.add(more.next().expect("cycle"));
            version += 1;
            trainer.snapshot(version).expect("snapshot")
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = criterion_config();
    targets = announce,
        bench_decide_fixed_small,
        bench_decide_fixed_large,
        bench_decide_per_arm,
        bench_sgd_step_32,
        bench_sgd_step_1,
        bench_policies,
        bench_neural_linear_learner
}
criterion_main!(benches);
