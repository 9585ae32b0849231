//! Many posterior samples for one request: the propensity of a decision (how likely the
//! policy was to choose that arm) and the posterior's mean and spread per candidate.
//!
//! MC dropout draws S mask sets (in chunks of at most [`MAX_ROWS_PER_PASS`] rows) and scores
//! each with the same pass as a single decision: the plain-Rust one sample by sample, or for
//! per-arm requests of many rows candle's, all samples of a chunk in one batch. NeuralLinear
//! computes the features once and draws S scores per head.

use candle_core::Tensor;
use rand::Rng;

use super::{
    CANDLE_MIN_ROWS, Inputs, argmax, initial_pull, linear_features, linear_of, network_scores,
    scores_under, scratch,
};
use crate::{
    config::PolicyKind,
    error::Error,
    model::{linear, matrix},
    policy::snapshot::{NeuralLinear, Policy, Snapshot},
};

/// Mask rows drawn at once at most (bounds the memory of a large request).
const MAX_ROWS_PER_PASS: usize = 4096;

/// The posterior predictive mean and standard deviation of one candidate's expected reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Mean over the samples.
    pub mean: f64,
    /// Sample standard deviation over the samples (0 for one sample).
    pub std: f64,
}

/// The probability that the snapshot's policy chooses candidate `chosen` for `inputs`.
///
/// Exact for the baselines: `greedy` 1 or 0, `epsilon_greedy` `(1−ε)·[chosen is the greedy
/// choice] + ε/n`, `uniform` `1/n`. Estimated for the Thompson policies from `samples` more
/// posterior samples, counting the decision's own sample as one more:
/// `(1 + #{samples whose best is chosen}) / (samples + 1)`, which is never 0 (so importance
/// weights stay finite) and overstates a probability `p` by at most `(1 − p)/(samples + 1)`.
///
/// # Errors
/// As [`super::decide`], or `samples == 0` for a Thompson policy.
pub fn propensity<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    chosen: usize,
    samples: usize,
    rng: &mut R,
) -> Result<f64, Error> {
    let n = inputs.len();
    if chosen >= n {
        return Err(Error::Internal(format!(
            "propensity: candidate {chosen} of {n}"
        )));
    }
    let kind = snapshot.policy.kind;
    if matches!(
        kind,
        PolicyKind::Greedy | PolicyKind::EpsilonGreedy | PolicyKind::Uniform
    ) {
        let greedy = if kind == PolicyKind::Uniform {
            0
        } else {
            argmax(&network_scores(snapshot, inputs)?)
        };
        return Ok(exact_propensity(snapshot.policy, n, chosen, greedy).unwrap_or(0.0));
    }
    if samples == 0 {
        return Err(Error::Internal("propensity: 0 samples".into()));
    }
    if let Some(forced) = initial_pull(snapshot, inputs) {
        return Ok(if forced == chosen { 1.0 } else { 0.0 });
    }
    let draws = posterior_draws(snapshot, inputs, samples, rng)?;
    let wins = draws.iter().filter(|d| argmax(d) == chosen).count();
    Ok((1 + wins) as f64 / (samples + 1) as f64)
}

/// How many of `samples` posterior draws each candidate wins (scores best in): what
/// [`propensity`] counts for one candidate, for every candidate from the same draws, at the
/// cost of one (offline evaluation needs every candidate's probability). Thompson policies
/// only: a baseline's probabilities are exact ([`exact_propensity`]).
///
/// # Errors
/// As [`super::decide`], or `samples == 0`.
pub fn wins<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<usize>, Error> {
    if samples == 0 {
        return Err(Error::Internal("wins: 0 samples".into()));
    }
    let mut wins = vec![0; inputs.len()];
    if let Some(forced) = initial_pull(snapshot, inputs) {
        wins[forced] = samples;
        return Ok(wins);
    }
    for draw in posterior_draws(snapshot, inputs, samples, rng)? {
        wins[argmax(&draw)] += 1;
    }
    Ok(wins)
}

/// The exact propensity of a baseline policy choosing candidate `chosen` of `n`, given the
/// mean network's best candidate `greedy` (what a baseline decision's scores give: see
/// [`super::decide`]); `None` for the Thompson policies, whose propensity is sampled.
pub fn exact_propensity(policy: Policy, n: usize, chosen: usize, greedy: usize) -> Option<f64> {
    let is_greedy = if chosen == greedy { 1.0 } else { 0.0 };
    match policy.kind {
        PolicyKind::Greedy => Some(is_greedy),
        PolicyKind::EpsilonGreedy => {
            Some((1.0 - policy.epsilon) * is_greedy + policy.epsilon / n as f64)
        }
        PolicyKind::Uniform => Some(1.0 / n as f64),
        PolicyKind::McDropout | PolicyKind::NeuralLinear => None,
    }
}

/// The posterior mean and standard deviation of every candidate's expected reward over
/// `samples` posterior samples: NeuralLinear's linear posterior for that policy, masks and
/// the linear posterior for MC dropout with a Bayesian last layer, MC dropout (the
/// network's own drop rates) for every other.
///
/// # Errors
/// As [`super::decide`], or `samples == 0`.
pub fn explain<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<Spread>, Error> {
    if samples == 0 {
        return Err(Error::Internal("explain: 0 samples".into()));
    }
    let draws = posterior_draws(snapshot, inputs, samples, rng)?;
    let n = inputs.len();
    let s = draws.len() as f64;
    Ok((0..n)
        .map(|i| {
            let mean = draws.iter().map(|d| d[i]).sum::<f64>() / s;
            let std = if draws.len() > 1 {
                (draws.iter().map(|d| (d[i] - mean).powi(2)).sum::<f64>() / (s - 1.0)).sqrt()
            } else {
                0.0
            };
            Spread { mean, std }
        })
        .collect())
}

/// `samples` posterior samples of every candidate's expected reward (sample-major).
fn posterior_draws<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<Vec<f64>>, Error> {
    if inputs.is_empty() {
        return Err(Error::Internal("no candidates".into()));
    }
    match (&snapshot.linear, snapshot.policy.kind) {
        (_, PolicyKind::NeuralLinear) | (Some(_), PolicyKind::McDropout) => {
            neural_linear_draws(linear_of(snapshot)?, snapshot, inputs, samples, rng)
        }
        _ => dropout_draws(snapshot, inputs, samples, rng),
    }
}

/// One draw of every candidate's expected reward from the linear posterior on the last
/// hidden layer: NeuralLinear on the plain features, MC dropout with a Bayesian last layer
/// (an `mc_dropout` snapshot with posteriors) on the features under one fresh dropout mask
/// set for the body, shared by every candidate.
pub(super) fn linear_draw<R: Rng>(
    lin: &NeuralLinear,
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    rng: &mut R,
) -> Result<Vec<f64>, Error> {
    scratch::with(|s| {
        let masks = if snapshot.policy.kind == PolicyKind::McDropout {
            snapshot.shape.draw_host_masks(rng, 1, &mut s.masks);
            Some(&s.masks)
        } else {
            None
        };
        let width = linear_features(lin, inputs, masks, &mut s.pass, &mut s.phi)?;
        let mut scores = Vec::with_capacity(inputs.len());
        draw_once(lin, &s.phi, width, inputs, rng, &mut scores)?;
        Ok(scores)
    })
}

/// `samples` draws of a linear posterior on the last hidden layer. NeuralLinear: the
/// features once, then `samples` draws of the candidates' weights. MC dropout with a
/// Bayesian last layer: `samples` times [`linear_draw`] (masks, masked features, one draw).
fn neural_linear_draws<R: Rng>(
    lin: &NeuralLinear,
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<Vec<f64>>, Error> {
    if snapshot.policy.kind == PolicyKind::McDropout {
        return (0..samples)
            .map(|_| linear_draw(lin, snapshot, inputs, rng))
            .collect();
    }
    scratch::with(|s| {
        let width = linear_features(lin, inputs, None, &mut s.pass, &mut s.phi)?;
        linear_draws(lin, &s.phi, width, inputs, samples, rng)
    })
}

fn head(lin: &NeuralLinear, h: usize) -> Result<&linear::LinearPosterior, Error> {
    lin.heads
        .get(h)
        .map(|p| &**p)
        .ok_or_else(|| Error::Internal(format!("no linear head {h}")))
}

/// One draw of the candidates' linear weights on the features `phi` (rows of `width`: one
/// row for fixed arms, one per candidate for per-arm models), the rewards appended to
/// `scores`: the same draws, from the same random numbers, as one sample of
/// [`linear_draws`].
fn draw_once<R: Rng>(
    lin: &NeuralLinear,
    phi: &[f32],
    width: usize,
    inputs: Inputs<'_>,
    rng: &mut R,
    scores: &mut Vec<f64>,
) -> Result<(), Error> {
    let to_reward = |t: f64| t * lin.reward_std + lin.reward_mean;
    match inputs {
        Inputs::Heads { heads, .. } => {
            for &h in heads {
                scores.push(to_reward(head(lin, h)?.predictive(phi).sample(rng)));
            }
        }
        Inputs::Rows { .. } => {
            let beta = head(lin, 0)?.sample(rng);
            scores.extend(
                phi.chunks(width)
                    .map(|row| to_reward(linear::dot(row, &beta))),
            );
        }
    }
    Ok(())
}

/// `samples` draws of the candidates' linear weights on the features `phi` (rows of
/// `width`: one row for fixed arms, one per candidate for per-arm models).
fn linear_draws<R: Rng>(
    lin: &NeuralLinear,
    phi: &[f32],
    width: usize,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<Vec<f64>>, Error> {
    let to_reward = |t: f64| t * lin.reward_std + lin.reward_mean;
    match inputs {
        // Independent posteriors per head and one context: only each head's scalar φᵀβ
        // matters, drawn in O(1) after one product with L⁻¹ per head.
        Inputs::Heads { heads, .. } => {
            let predictive = heads
                .iter()
                .map(|&h| Ok(head(lin, h)?.predictive(phi)))
                .collect::<Result<Vec<_>, Error>>()?;
            Ok((0..samples)
                .map(|_| {
                    predictive
                        .iter()
                        .map(|p| to_reward(p.sample(rng)))
                        .collect()
                })
                .collect())
        }
        // One β shared by every row: the rows' scores are correlated, so β is drawn whole.
        Inputs::Rows { .. } => (0..samples)
            .map(|_| {
                let mut scores = Vec::with_capacity(inputs.len());
                draw_once(lin, phi, width, inputs, rng, &mut scores)?;
                Ok(scores)
            })
            .collect(),
    }
}

/// MC dropout: `samples` mask sets, each shared by every candidate of its sample, drawn in
/// chunks of at most [`MAX_ROWS_PER_PASS`] rows of inputs (which bounds a batched pass's
/// memory), each sample then scored by the pass a single decision uses.
fn dropout_draws<R: Rng>(
    snapshot: &Snapshot,
    inputs: Inputs<'_>,
    samples: usize,
    rng: &mut R,
) -> Result<Vec<Vec<f64>>, Error> {
    let rows_per_sample = match inputs {
        Inputs::Heads { .. } => 1,
        Inputs::Rows { rows, .. } => rows,
    };
    let per_pass = (MAX_ROWS_PER_PASS / rows_per_sample).max(1);
    let mut draws = Vec::with_capacity(samples);
    let mut left = samples;
    scratch::with(|s| {
        while left > 0 {
            let k = left.min(per_pass);
            left -= k;
            // One mask row per sample, shared by that sample's rows.
            snapshot.shape.draw_host_masks(rng, k, &mut s.masks);
            if let Inputs::Rows { values, rows } = inputs
                && rows >= CANDLE_MIN_ROWS
            {
                // Many candidate rows: the k samples in one batched candle pass, as a
                // single decision over them runs candle's pass too.
                let xs = matrix(values.repeat(k), k * rows, snapshot.shape.input_dim)?;
                let masks = s
                    .masks
                    .to_candle_all()?
                    .into_iter()
                    .map(|m| m.map(|m| repeat_rows(&m, rows)).transpose())
                    .collect::<Result<Vec<Option<Tensor>>, candle_core::Error>>()?;
                let out: Vec<f32> = snapshot
                    .weights
                    .forward(&xs, Some(&masks))?
                    .flatten_all()?
                    .to_vec1()?;
                let to_reward = |y: f32| f64::from(y) * snapshot.reward_std + snapshot.reward_mean;
                draws.extend(
                    out.chunks(inputs.len())
                        .map(|c| c.iter().copied().map(to_reward).collect()),
                );
                continue;
            }
            for row in 0..k {
                draws.push(scores_under(
                    snapshot,
                    inputs,
                    Some((&s.masks, row)),
                    &mut s.pass,
                )?);
            }
        }
        Ok(draws)
    })
}

/// `(s, d)` -> `(s * rows, d)`, each row repeated `rows` times in place.
fn repeat_rows(m: &Tensor, rows: usize) -> Result<Tensor, candle_core::Error> {
    let (s, d) = m.dims2()?;
    m.unsqueeze(1)?
        .broadcast_as((s, rows, d))?
        .contiguous()?
        .reshape((s * rows, d))
}
