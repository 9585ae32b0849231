//! Off-policy estimators of a policy's mean reward from logged decisions: inverse propensity
//! scoring (IPS), self-normalised IPS (SNIPS) and doubly robust (DR), each with a 95 %
//! normal-approximation confidence interval, plus the effective sample size of the
//! importance weights. Pure arithmetic on per-round numbers: no log format, no model.
//!
//! Per logged round `t` (context `x`, chosen action `a`, reward `r`, logging propensity `μ`),
//! the evaluated policy's probabilities `π(·|x)` and a reward model's predictions `r̂(x, ·)`:
//! - weight `w = π(a|x) / μ`;
//! - IPS `mean(w r)`: unbiased when `μ` is the true logging probability and `μ > 0` wherever
//!   `π > 0`; its variance grows with the weights;
//! - SNIPS `Σ w r / Σ w`: biased by O(1/n), much lower variance when weights are large;
//! - DR `mean(Σ_a π(a|x) r̂(x, a) + w (r − r̂(x, a)))`: unbiased when either `μ` or `r̂` is
//!   right, lower variance than IPS when `r̂` is good (Dudík, Langford & Li 2011).
//!
//! Intervals are `estimate ± z · se` with `se` the sample standard deviation of the per-round
//! terms over `√n` (SNIPS: of its delta-method influence terms). They assume independent
//! rounds and enough of them for the mean to be normal: with a low effective sample size
//! (a few large weights carry the estimate) they are too narrow, and they are not to be
//! trusted.

use serde::Serialize;

/// The two-sided 95 % quantile of the standard normal distribution.
pub const Z95: f64 = 1.959_963_984_540_054;

/// What the estimators need of one logged round.
#[derive(Debug, Clone, PartialEq)]
pub struct Round {
    /// The observed reward of the logged action.
    pub reward: f64,
    /// The logging policy's probability of the logged action (in (0, 1]).
    pub logging: f64,
    /// The evaluated policy's probability of every candidate, in candidate order.
    pub target: Vec<f64>,
    /// The reward model's prediction for every candidate, in candidate order.
    pub predicted: Vec<f64>,
    /// The logged action's position among the candidates.
    pub chosen: usize,
}

/// An estimate with its standard error and 95 % interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimate {
    /// The point estimate of the mean reward.
    pub value: f64,
    /// Its standard error.
    pub se: f64,
    /// Lower end of the 95 % interval.
    pub low: f64,
    /// Upper end of the 95 % interval.
    pub high: f64,
}

impl Estimate {
    fn new(value: f64, se: f64) -> Self {
        Self {
            value,
            se,
            low: value - Z95 * se,
            high: value + Z95 * se,
        }
    }

    /// The mean of `terms` with the standard error of that mean (NaN for no terms; 0 for one).
    pub fn mean_of(terms: &[f64]) -> Self {
        let n = terms.len() as f64;
        if terms.is_empty() {
            return Self::new(f64::NAN, f64::NAN);
        }
        let mean = terms.iter().sum::<f64>() / n;
        let se = if terms.len() < 2 {
            0.0
        } else {
            (terms.iter().map(|t| (t - mean).powi(2)).sum::<f64>() / (n - 1.0) / n).sqrt()
        };
        Self::new(mean, se)
    }

    /// True when `truth` lies in the interval.
    pub fn covers(&self, truth: f64) -> bool {
        self.low <= truth && truth <= self.high
    }
}

/// All estimates of one policy on one log.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Estimates {
    /// Rounds used.
    pub rounds: usize,
    /// Inverse propensity scoring.
    pub ips: Estimate,
    /// Self-normalised IPS.
    pub snips: Estimate,
    /// Doubly robust.
    pub dr: Estimate,
    /// The reward model alone (direct method): `mean(Σ_a π(a|x) r̂(x, a))`; biased by the
    /// model's errors, shown for comparison with DR.
    pub dm: Estimate,
    /// Effective sample size of the weights, `(Σ w)² / Σ w²` (n when every weight is equal).
    pub effective_sample_size: f64,
    /// The mean importance weight (near 1 when the logging propensities are right).
    pub mean_weight: f64,
    /// The largest importance weight.
    pub max_weight: f64,
}

/// The estimates of the policy whose probabilities are in `rounds`.
pub fn estimate(rounds: &[Round]) -> Estimates {
    let n = rounds.len();
    let weights: Vec<f64> = rounds
        .iter()
        .map(|r| r.target.get(r.chosen).copied().unwrap_or(0.0) / r.logging)
        .collect();
    let ips_terms: Vec<f64> = rounds
        .iter()
        .zip(&weights)
        .map(|(r, w)| w * r.reward)
        .collect();
    let dm_terms: Vec<f64> = rounds.iter().map(direct).collect();
    let dr_terms: Vec<f64> = rounds
        .iter()
        .zip(&weights)
        .zip(&dm_terms)
        .map(|((r, w), dm)| {
            let factual = r.predicted.get(r.chosen).copied().unwrap_or(0.0);
            dm + w * (r.reward - factual)
        })
        .collect();
    let sum_w: f64 = weights.iter().sum();
    let sum_w2: f64 = weights.iter().map(|w| w * w).sum();
    let snips = if sum_w > 0.0 {
        let value = ips_terms.iter().sum::<f64>() / sum_w;
        let mean_w = sum_w / n as f64;
        // Delta method: the ratio's influence terms w (r − V̂) / w̄ have mean 0.
        let influence: Vec<f64> = rounds
            .iter()
            .zip(&weights)
            .map(|(r, w)| w * (r.reward - value) / mean_w)
            .collect();
        Estimate::new(value, Estimate::mean_of(&influence).se)
    } else {
        // The policy never takes a logged action: nothing to normalise by.
        Estimate::new(f64::NAN, f64::NAN)
    };
    Estimates {
        rounds: n,
        ips: Estimate::mean_of(&ips_terms),
        snips,
        dr: Estimate::mean_of(&dr_terms),
        dm: Estimate::mean_of(&dm_terms),
        effective_sample_size: if sum_w2 > 0.0 {
            sum_w * sum_w / sum_w2
        } else {
            0.0
        },
        mean_weight: if n > 0 { sum_w / n as f64 } else { f64::NAN },
        max_weight: weights.iter().copied().fold(0.0, f64::max),
    }
}

/// `Σ_a π(a|x) r̂(x, a)`.
fn direct(r: &Round) -> f64 {
    r.target.iter().zip(&r.predicted).map(|(p, q)| p * q).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(reward: f64, logging: f64, target: &[f64], predicted: &[f64], chosen: usize) -> Round {
        Round {
            reward,
            logging,
            target: target.to_vec(),
            predicted: predicted.to_vec(),
            chosen,
        }
    }

    /// Three hand-made rounds, every estimate computed by hand.
    ///
    /// Weights: 0.5/0.5 = 1, 0.25/0.5 = 0.5, 1/0.25 = 4; rewards 1, 0, 2.
    /// IPS terms 1, 0, 8: mean 3, sample variance ((−2)² + (−3)² + 5²)/2 = 19, se √(19/3).
    /// SNIPS (1 + 0 + 8)/(1 + 0.5 + 4) = 9/5.5. DM terms 0.5·1 + 0.5·0 = 0.5,
    /// 0.75·0 + 0.25·1 = 0.25, 1·1 = 1. DR: 0.5 + 1·(1 − 1) = 0.5, 0.25 + 0.5·(0 − 1) = −0.25,
    /// 1 + 4·(2 − 1) = 5: mean 5.25/3 = 1.75. ESS 5.5²/(1 + 0.25 + 16) = 30.25/17.25.
    #[test]
    fn closed_forms_on_a_hand_made_log() {
        let rounds = [
            round(1.0, 0.5, &[0.5, 0.5], &[1.0, 0.0], 0),
            round(0.0, 0.5, &[0.75, 0.25], &[0.0, 1.0], 1),
            round(2.0, 0.25, &[0.0, 1.0], &[3.0, 1.0], 1),
        ];
        let e = estimate(&rounds);
        assert_eq!(e.rounds, 3);
        assert_eq!(e.ips.value, 3.0);
        assert!((e.ips.se - (19.0f64 / 3.0).sqrt()).abs() < 1e-12);
        assert!((e.ips.low - (3.0 - Z95 * (19.0f64 / 3.0).sqrt())).abs() < 1e-12);
        assert!((e.snips.value - 9.0 / 5.5).abs() < 1e-15);
        assert!((e.dm.value - 1.75 / 3.0).abs() < 1e-15);
        assert!((e.dr.value - 1.75).abs() < 1e-15);
        assert!((e.effective_sample_size - 30.25 / 17.25).abs() < 1e-12);
        assert_eq!(e.max_weight, 4.0);
        assert!((e.mean_weight - 5.5 / 3.0).abs() < 1e-15);
    }

    /// SNIPS's standard error by hand: V̂ = 9/5.5, w̄ = 5.5/3, influence w (r − V̂)/w̄.
    #[test]
    fn snips_standard_error_is_the_delta_method() {
        let rounds = [
            round(1.0, 0.5, &[0.5, 0.5], &[0.0, 0.0], 0),
            round(0.0, 0.5, &[0.75, 0.25], &[0.0, 0.0], 1),
            round(2.0, 0.25, &[0.0, 1.0], &[0.0, 0.0], 1),
        ];
        let v = 9.0 / 5.5;
        let wbar = 5.5 / 3.0;
        let psi = [
            1.0 * (1.0 - v) / wbar,
            0.5 * (0.0 - v) / wbar,
            4.0 * (2.0 - v) / wbar,
        ];
        let m = psi.iter().sum::<f64>() / 3.0;
        let var = psi.iter().map(|p| (p - m).powi(2)).sum::<f64>() / 2.0;
        let e = estimate(&rounds);
        assert!((e.snips.se - (var / 3.0).sqrt()).abs() < 1e-12);
        // With r̂ = 0, DR is IPS.
        assert_eq!(e.dr.value, e.ips.value);
    }

    /// On-policy (target = logging) every weight is 1: IPS and SNIPS are the mean reward and
    /// the effective sample size is n.
    #[test]
    fn on_policy_weights_are_one() {
        let rounds: Vec<Round> = (0..4)
            .map(|i| round(f64::from(i), 0.25, &[0.25; 4], &[0.0; 4], i as usize))
            .collect();
        let e = estimate(&rounds);
        assert_eq!(e.ips.value, 1.5);
        assert_eq!(e.snips.value, 1.5);
        assert_eq!(e.effective_sample_size, 4.0);
    }

    /// A policy that never takes a logged action has IPS 0 and no SNIPS (NaN, not a panic).
    #[test]
    fn disjoint_policy_has_no_snips() {
        let e = estimate(&[round(1.0, 1.0, &[0.0, 1.0], &[0.0, 0.5], 0)]);
        assert_eq!(e.ips.value, 0.0);
        assert!(e.snips.value.is_nan());
        assert_eq!(e.dr.value, 0.5);
        assert_eq!(e.effective_sample_size, 0.0);
    }
}
