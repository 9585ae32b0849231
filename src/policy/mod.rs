//! Decisions from a published model snapshot: the policies of README "The method" §3 and their
//! baselines, plus the two questions a client may ask about a decision (how likely was it,
//! and how sure is the model).
//!
//! - `mc_dropout`: ONE set of dropout masks (one posterior sample of the weights) scores
//!   every candidate; the best score wins.
//! - `neural_linear`: one draw from each candidate head's exact linear posterior on the
//!   network's last hidden layer (one draw shared by every row for per-arm models).
//! - `mc_dropout` with `bayesian_last_layer`: ONE set of dropout masks for the body, then
//!   one draw of the linear posterior on the masked last hidden layer.
//! - `greedy`, `epsilon_greedy`, `uniform`: the baselines, on the network without dropout.
//!
//! Everything here is synchronous and deterministic given the RNG, so it is tested without a
//! server.

use rand::Rng;

use crate::{
    config::PolicyKind,
    error::Error,
    model::{HostMasks, Scratch, matrix, neural_linear_features},
};

mod draws;
pub mod holdout;
mod scratch;
mod snapshot;

pub use draws::{Spread, exact_propensity, explain, propensity, wins};
pub use snapshot::{NeuralLinear, Policy, Snapshot};

/// What the network is asked to score.
#[derive(Debug, Clone, Copy)]
pub enum Inputs<'a> {
    /// A fixed-arm network: one context, and the output heads (arm indices) of the candidates.
    Heads {
        /// The context, `input_dim` values.
        context: &'a [f32],
        /// The candidate arms' output indices.
        heads: &'a [usize],
    },
    /// A per-arm network: one row `concat(context, features)` per candidate, row-major.
    Rows {
        /// `rows * input_dim` values.
        values: &'a [f32],
        /// Number of candidates.
        rows: usize,
    },
}

impl Inputs<'_> {
    /// Number of candidates.
    pub fn len(&self) -> usize {
        match self {
            Self::Heads { heads, .. } => heads.len(),
            Self::Rows { rows, .. } => *rows,
        }
    }

    /// True when there is no candidate.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Position of the chosen candidate in the inputs.
    pub best: usize,
    /// Expected reward of every candidate, in input order: under the one posterior sample
    /// (Thompson policies) or the network's mean prediction (the baselines).
    pub scores: Vec<f64>,
}

/// Decides by the snapshot's policy. Random draws come from `rng` only.
///
/// # Errors
/// No candidates, or a shape that does not fit the snapshot (the caller validates both, so
/// either is a bug and maps to INTERNAL).
pub fn decide<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    rng: &mut R,
) -> Result<Choice, Error> {
    let n = inputs.len();
    if n == 0 {
        return Err(Error::Internal("decide: no candidates".into()));
    }
    match snapshot.policy.kind {
        PolicyKind::McDropout if snapshot.linear.is_none() => thompson(snapshot, inputs, rng),
        PolicyKind::McDropout | PolicyKind::NeuralLinear => {
            if let Some(best) = initial_pull(snapshot, inputs) {
                let scores = network_scores(snapshot, inputs)?;
                return Ok(Choice { best, scores });
            }
            let scores = draws::linear_draw(linear_of(snapshot)?, snapshot, inputs, rng)?;
            Ok(Choice {
                best: argmax(&scores),
                scores,
            })
        }
        PolicyKind::Greedy => {
            let scores = network_scores(snapshot, inputs)?;
            Ok(Choice {
                best: argmax(&scores),
                scores,
            })
        }
        PolicyKind::EpsilonGreedy => {
            // Both draws always happen, so the RNG stream does not depend on the outcome.
            let explore = rng.random::<f64>() < snapshot.policy.epsilon;
            let random = rng.random_range(0..n);
            let scores = network_scores(snapshot, inputs)?;
            let best = if explore { random } else { argmax(&scores) };
            Ok(Choice { best, scores })
        }
        PolicyKind::Uniform => {
            let best = rng.random_range(0..n);
            let scores = network_scores(snapshot, inputs)?;
            Ok(Choice { best, scores })
        }
    }
}

/// MC-dropout Thompson sampling: scores every candidate under ONE posterior sample (one set of
/// dropout masks) drawn from `rng` and picks the best (the first on ties), whatever the
/// snapshot's policy.
///
/// # Errors
/// As [`decide`].
pub fn thompson<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    rng: &mut R,
) -> Result<Choice, Error> {
    if inputs.is_empty() {
        return Err(Error::Internal("thompson: no candidates".into()));
    }
    let scores = scratch::with(|s| {
        snapshot.shape.draw_host_masks(rng, 1, &mut s.masks);
        scores_under(snapshot, inputs, Some((&s.masks, 0)), &mut s.pass)
    })?;
    let best = argmax(&scores);
    Ok(Choice { best, scores })
}

/// The mean network's expected reward of every candidate (no dropout).
fn network_scores(snapshot: &Snapshot, inputs: Inputs<'_>) -> Result<Vec<f64>, Error> {
    scratch::with(|s| scores_under(snapshot, inputs, None, &mut s.pass))
}

/// The network's expected reward of every candidate under row `row` of `masks` (one mask row
/// shared by every candidate; `None` = the mean network), mapped back from the standardised
/// scale: the plain-Rust pass ([`crate::model::Dense`]), one row at a time.
fn scores_under(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    masks: Option<(&HostMasks, usize)>,
    pass: &mut Scratch,
) -> Result<Vec<f64>, Error> {
    let dense = snapshot.weights.dense();
    let to_reward = |y: f32| f64::from(y) * snapshot.reward_std + snapshot.reward_mean;
    match inputs {
        Inputs::Heads { context, heads } => {
            let out = dense.forward(context, masks, pass)?;
            heads
                .iter()
                .map(|&h| {
                    out.get(h)
                        .copied()
                        .map(to_reward)
                        .ok_or_else(|| Error::Internal(format!("no head {h}")))
                })
                .collect()
        }
        Inputs::Rows { values, rows } if rows >= CANDLE_MIN_ROWS => {
            let xs = matrix(values.to_vec(), rows, dense.input_dim())?;
            let masks = masks.map(|(m, row)| m.to_candle(row)).transpose()?;
            let out: Vec<f32> = snapshot
                .weights
                .forward(&xs, masks.as_ref())?
                .flatten_all()?
                .to_vec1()?;
            Ok(out.into_iter().map(to_reward).collect())
        }
        Inputs::Rows { values, rows } => {
            let mut scores = Vec::with_capacity(rows * dense.means());
            for row in input_rows(values, rows, dense.input_dim())? {
                scores.extend(
                    dense
                        .forward(row, masks, pass)?
                        .iter()
                        .copied()
                        .map(to_reward),
                );
            }
            Ok(scores)
        }
    }
}

/// Candidate rows from which a per-arm decision runs candle's batched pass instead of the
/// plain one, row by row: at 10 rows of 16 inputs candle's `gemm` measured 1.6-2× faster than
/// the plain pass (`decide_per_arm_16x10`), at one row 3-4× slower (`decide_fixed_*`).
pub(super) const CANDLE_MIN_ROWS: usize = 4;

/// The `rows` rows of `values`, `width` values each.
fn input_rows(
    values: &[f32],
    rows: usize,
    width: usize,
) -> Result<std::slice::ChunksExact<'_, f32>, Error> {
    if width == 0 || values.len() != rows * width {
        return Err(Error::Internal(format!(
            "{} input values for {rows} rows of {width}",
            values.len()
        )));
    }
    Ok(values.chunks_exact(width))
}

/// The first fixed-arm candidate whose head has fewer examples than
/// `neural_linear.initial_pulls` in the snapshot's regressions: chosen outright (Riquelme et
/// al. 2018's initial pulls), with probability 1. None for per-arm models and without a
/// linear posterior.
fn initial_pull(snapshot: &Snapshot, inputs: Inputs<'_>) -> Option<usize> {
    let lin = snapshot.linear.as_deref()?;
    let Inputs::Heads { heads, .. } = inputs else {
        return None;
    };
    heads
        .iter()
        .position(|&h| lin.pulls.get(h).is_some_and(|&n| n < lin.initial_pulls))
}

fn linear_of(snapshot: &Snapshot) -> Result<&NeuralLinear, Error> {
    snapshot
        .linear
        .as_deref()
        .ok_or_else(|| Error::Internal("neural_linear snapshot without posteriors".into()))
}

/// The features `[last hidden, 1]` of the candidates' inputs into `phi`, and their width:
/// one row for a fixed-arm network (every head reads the same context), one per candidate
/// for a per-arm network; `masks` (one row, shared by every candidate) mask the body, `None`
/// = no dropout.
fn linear_features(
    lin: &NeuralLinear,
    inputs: Inputs<'_>,
    masks: Option<&HostMasks>,
    pass: &mut Scratch,
    phi: &mut Vec<f32>,
) -> Result<usize, Error> {
    let dense = lin.features.dense();
    let masks = masks.map(|m| (m, 0));
    phi.clear();
    let mut push = |x: &[f32], phi: &mut Vec<f32>| -> Result<(), Error> {
        phi.extend_from_slice(dense.last_hidden(x, masks, pass)?);
        phi.push(1.0);
        Ok(())
    };
    match inputs {
        Inputs::Heads { context, .. } => push(context, phi)?,
        Inputs::Rows { values, rows } if rows >= CANDLE_MIN_ROWS => {
            let xs = matrix(values.to_vec(), rows, dense.input_dim())?;
            let masks = masks.map(|(m, row)| m.to_candle(row)).transpose()?;
            let (features, _) = neural_linear_features(&lin.features, &xs, masks.as_ref())?;
            phi.extend_from_slice(&features);
        }
        Inputs::Rows { values, rows } => {
            for row in input_rows(values, rows, dense.input_dim())? {
                push(row, phi)?;
            }
        }
    }
    Ok(dense.last_hidden_dim() + 1)
}

/// Index of the largest value, the first on ties; NaN never wins.
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] || values[best].is_nan() {
            best = i;
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::model::{NetShape, TrainableNet};

    fn snapshot(input_dim: usize, output_dim: usize, rate: f64) -> Snapshot {
        let shape = NetShape {
            input_dim,
            hidden: vec![32, 32],
            output_dim,
            drop_rates: vec![rate; 3],
        };
        let net = TrainableNet::new(shape.clone(), 3).unwrap();
        Snapshot {
            version: 0,
            shape,
            weights: net.snapshot().unwrap(),
            reward_mean: 0.5,
            reward_std: 2.0,
            policy: Policy::default(),
            linear: None,
        }
    }

    fn with_policy(mut snap: Snapshot, kind: PolicyKind, epsilon: f64) -> Snapshot {
        snap.policy = Policy { kind, epsilon };
        snap
    }

    fn heads<'a>(context: &'a [f32], heads: &'a [usize]) -> Inputs<'a> {
        Inputs::Heads { context, heads }
    }

    /// How often `decide` picks each of `n` candidates over `trials` seeded calls.
    fn frequencies(snap: &Snapshot, inputs: Inputs<'_>, trials: usize) -> Vec<f64> {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(42);
        let mut counts = vec![0usize; inputs.len()];
        for _ in 0..trials {
            counts[decide(snap, inputs, &mut rng).unwrap().best] += 1;
        }
        counts.iter().map(|&c| c as f64 / trials as f64).collect()
    }

    /// Greedy always picks the mean network's best; its propensity is exactly 1 there and 0
    /// elsewhere; it never varies.
    #[test]
    fn greedy_is_the_mean_argmax() {
        let snap = with_policy(snapshot(3, 5, 0.3), PolicyKind::Greedy, 0.0);
        let context = [0.2f32, 0.4, -0.1];
        let all = [0, 1, 2, 3, 4];
        let mean = network_scores(&snap, heads(&context, &all)).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        for _ in 0..20 {
            let c = decide(&snap, heads(&context, &all), &mut rng).unwrap();
            assert_eq!(c.best, argmax(&mean));
            assert_eq!(c.scores, mean);
        }
        let best = argmax(&mean);
        let mut p = |i| propensity(&snap, heads(&context, &all), i, 0, &mut rng).unwrap();
        assert_eq!(p(best), 1.0);
        assert_eq!(p((best + 1) % 5), 0.0);
    }

    /// Epsilon-greedy and uniform choose with the frequencies their exact propensities give
    /// (4000 seeded trials: binomial sd <= 0.008; margin 0.04).
    #[test]
    fn baseline_propensities_match_frequencies() {
        let context = [0.2f32, 0.4, -0.1];
        let all = [0, 1, 2, 3, 4];
        for (kind, eps) in [(PolicyKind::EpsilonGreedy, 0.3), (PolicyKind::Uniform, 0.0)] {
            let snap = with_policy(snapshot(3, 5, 0.3), kind, eps);
            let freq = frequencies(&snap, heads(&context, &all), 4000);
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
            let mut total = 0.0;
            for (i, f) in freq.iter().enumerate() {
                let p = propensity(&snap, heads(&context, &all), i, 0, &mut rng).unwrap();
                assert!(
                    (p - f).abs() < 0.04,
                    "{kind:?} arm {i}: propensity {p}, seen {f}"
                );
                total += p;
            }
            assert!(
                (total - 1.0).abs() < 1e-9,
                "{kind:?}: propensities sum to {total}"
            );
        }
    }

    /// MC dropout: the sampled propensity of each arm matches how often `decide` picks it
    /// (4000 trials and 4000 samples: sd <= 0.008 each; margin 0.05), and the estimates sum
    /// to about 1.
    #[test]
    fn dropout_propensity_matches_frequencies() {
        let snap = snapshot(3, 4, 0.5);
        let context = [0.2f32, 0.4, -0.1];
        let all = [0, 1, 2, 3];
        let freq = frequencies(&snap, heads(&context, &all), 4000);
        assert!(
            freq.iter().filter(|&&f| f > 0.05).count() >= 2,
            "the test needs a spread of choices: {freq:?}"
        );
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let ps: Vec<f64> = (0..4)
            .map(|i| propensity(&snap, heads(&context, &all), i, 4000, &mut rng).unwrap())
            .collect();
        for (p, f) in ps.iter().zip(&freq) {
            assert!(
                (p - f).abs() < 0.05,
                "propensities {ps:?}, frequencies {freq:?}"
            );
        }
    }

    /// The explanation's mean is the mean of single decisions' scores; with rate 0 it is the
    /// score itself with spread 0; with rate > 0 the spread is positive.
    #[test]
    fn explanation_mean_and_spread() {
        let context = [0.2f32, 0.4, -0.1];
        let all = [0, 1, 2];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(4);
        let fixed = snapshot(3, 3, 0.0);
        let score = decide(&fixed, heads(&context, &all), &mut rng)
            .unwrap()
            .scores;
        let spread = explain(&fixed, heads(&context, &all), 10, &mut rng).unwrap();
        for (s, sc) in spread.iter().zip(&score) {
            assert!(
                (s.mean - sc).abs() < 1e-6 && s.std == 0.0,
                "{spread:?} vs {score:?}"
            );
        }
        let noisy = snapshot(3, 3, 0.3);
        let spread = explain(&noisy, heads(&context, &all), 3000, &mut rng).unwrap();
        let singles: Vec<Vec<f64>> = (0..3000)
            .map(|_| {
                decide(&noisy, heads(&context, &all), &mut rng)
                    .unwrap()
                    .scores
            })
            .collect();
        for (i, s) in spread.iter().enumerate() {
            let m = singles.iter().map(|v| v[i]).sum::<f64>() / 3000.0;
            // Standard error of each mean is std/sqrt(3000) < 0.02 std; margin 0.15 std.
            assert!(s.std > 0.0);
            assert!(
                (s.mean - m).abs() < 0.15 * s.std,
                "arm {i}: {} vs {m}",
                s.mean
            );
        }
    }

    /// Per-arm rows: each sample's mask is shared by every row of that sample (identical rows
    /// give identical draws), in batched passes too.
    #[test]
    fn batched_row_draws_share_each_mask() {
        let snap = snapshot(6, 1, 0.5);
        let row = [0.3f32, -1.0, 0.5, 2.0, 0.1, -0.4];
        let values: Vec<f32> = row.iter().copied().cycle().take(6 * 5).collect();
        let inputs = Inputs::Rows {
            values: &values,
            rows: 5,
        };
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let spread = explain(&snap, inputs, 50, &mut rng).unwrap();
        assert!(spread.iter().all(|s| s == &spread[0]), "{spread:?}");
        assert!(spread[0].std > 0.0);
        // Candidate 0 wins every tie, so its propensity is exactly 1.
        assert_eq!(propensity(&snap, inputs, 0, 50, &mut rng).unwrap(), 1.0);
    }

    /// All arms of one decision are scored with the same mask: scoring N identical candidate
    /// rows gives N identical scores, though the scores move from one decision to the next.
    /// (With one mask per arm, identical rows would get different scores.)
    #[test]
    fn one_mask_shared_by_all_arms() {
        let snap = snapshot(6, 1, 0.5);
        let row = [0.3f32, -1.0, 0.5, 2.0, 0.1, -0.4];
        let values: Vec<f32> = row.iter().copied().cycle().take(6 * 8).collect();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        let mut firsts = Vec::new();
        for _ in 0..20 {
            let choice = thompson(
                &snap,
                Inputs::Rows {
                    values: &values,
                    rows: 8,
                },
                &mut rng,
            )
            .unwrap();
            assert!(
                choice.scores.iter().all(|&s| s == choice.scores[0]),
                "{:?}",
                choice.scores
            );
            firsts.push(choice.scores[0]);
        }
        firsts.dedup();
        assert!(
            firsts.len() > 5,
            "scores did not vary across decisions: {firsts:?}"
        );
    }

    /// The same holds for a fixed-arm network: one forward pass, one mask, every head.
    /// The head scores of one decision equal the full output row of that same sample.
    #[test]
    fn heads_follow_one_sample() {
        let snap = snapshot(3, 5, 0.3);
        let context = [0.2f32, 0.4, -0.1];
        let all = [0, 1, 2, 3, 4];
        let subset = [4, 1];
        let a = thompson(
            &snap,
            Inputs::Heads {
                context: &context,
                heads: &all,
            },
            &mut Xoshiro256PlusPlus::seed_from_u64(9),
        )
        .unwrap();
        let b = thompson(
            &snap,
            Inputs::Heads {
                context: &context,
                heads: &subset,
            },
            &mut Xoshiro256PlusPlus::seed_from_u64(9),
        )
        .unwrap();
        assert_eq!(b.scores, vec![a.scores[4], a.scores[1]]);
    }

    /// With every drop rate 0 the choice and scores are the same on every call.
    #[test]
    fn rate_zero_is_deterministic() {
        let snap = snapshot(3, 5, 0.0);
        let context = [0.2f32, 0.4, -0.1];
        let heads = [0, 1, 2, 3, 4];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let first = thompson(
            &snap,
            Inputs::Heads {
                context: &context,
                heads: &heads,
            },
            &mut rng,
        )
        .unwrap();
        for _ in 0..50 {
            assert_eq!(
                thompson(
                    &snap,
                    Inputs::Heads {
                        context: &context,
                        heads: &heads
                    },
                    &mut rng
                )
                .unwrap(),
                first
            );
        }
    }

    /// With a drop rate above 0 the sampled scores vary between calls, and the scores are
    /// mapped back from the standardised scale (mean 0.5, std 2 here).
    #[test]
    fn positive_rate_varies() {
        let snap = snapshot(3, 5, 0.3);
        let context = [0.2f32, 0.4, -0.1];
        let heads = [0, 1, 2, 3, 4];
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let draws: Vec<Vec<f64>> = (0..30)
            .map(|_| {
                thompson(
                    &snap,
                    Inputs::Heads {
                        context: &context,
                        heads: &heads,
                    },
                    &mut rng,
                )
                .unwrap()
                .scores
            })
            .collect();
        let distinct = draws.iter().filter(|d| **d != draws[0]).count();
        assert!(distinct > 20, "only {distinct} of 30 draws differed");
    }

    /// MC dropout with a Bayesian last layer: identical candidate rows get identical scores
    /// (one mask set and one weight draw per decision, shared by every candidate), the
    /// scores vary between decisions, and with every drop rate 0 a decision is exactly
    /// NeuralLinear's with the same RNG (the masks then draw nothing).
    #[test]
    fn bayesian_last_layer_shares_one_mask_and_one_draw() {
        use std::sync::Arc;

        use crate::model::linear::{LinearPrior, LinearStats};
        let with_linear = |rate: f64, kind: PolicyKind| {
            let mut snap = with_policy(snapshot(6, 1, rate), kind, 0.0);
            let prior = LinearPrior {
                precision: 0.25,
                shape: 6.0,
                scale: 6.0,
            };
            snap.linear = Some(Arc::new(NeuralLinear {
                features: snap.weights.clone(),
                reward_mean: 0.5,
                reward_std: 2.0,
                heads: vec![Arc::new(LinearStats::new(33, prior).posterior().unwrap())],
                pulls: vec![0],
                initial_pulls: 0,
            }));
            snap
        };
        let row = [0.3f32, -1.0, 0.5, 2.0, 0.1, -0.4];
        let values: Vec<f32> = row.iter().copied().cycle().take(6 * 5).collect();
        let inputs = Inputs::Rows {
            values: &values,
            rows: 5,
        };
        let snap = with_linear(0.5, PolicyKind::McDropout);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
        let mut firsts = Vec::new();
        for _ in 0..20 {
            let choice = decide(&snap, inputs, &mut rng).unwrap();
            assert!(
                choice.scores.iter().all(|&s| s == choice.scores[0]),
                "{:?}",
                choice.scores
            );
            firsts.push(choice.scores[0]);
        }
        firsts.dedup();
        assert!(firsts.len() > 15, "{firsts:?}");

        let other = [1.0f32, 0.2, -0.3, 0.0, 0.7, 1.5];
        let values: Vec<f32> = row.iter().chain(&other).copied().collect();
        let inputs = Inputs::Rows {
            values: &values,
            rows: 2,
        };
        let masked = with_linear(0.0, PolicyKind::McDropout);
        let linear = with_linear(0.0, PolicyKind::NeuralLinear);
        let mut a = Xoshiro256PlusPlus::seed_from_u64(13);
        let mut b = Xoshiro256PlusPlus::seed_from_u64(13);
        for _ in 0..10 {
            assert_eq!(
                decide(&masked, inputs, &mut a).unwrap(),
                decide(&linear, inputs, &mut b).unwrap()
            );
        }
    }

    /// argmax picks the first maximum and never a NaN.
    #[test]
    fn argmax_ties_and_nan() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0]), 1);
        assert_eq!(argmax(&[f64::NAN, 0.0, -1.0]), 1);
    }
}
