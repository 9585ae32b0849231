//! Holdout experiments: which decisions fall in the control group, what the control policy
//! serves them, and the lift of the model over the control with its confidence interval.
//!
//! The group is a function of the model's seed and the decision id alone, so a retried
//! request (same id) falls in the same group, and the control fraction is exact in
//! expectation whatever the traffic.

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// FNV-1a 64 of `bytes`, mixed with `seed`.
fn hash(seed: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325 ^ seed, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// An RNG for decision `id` of a model seeded `seed`: the same for every retry of the id.
fn rng(seed: u64, id: &str) -> Xoshiro256PlusPlus {
    // FNV alone is weak in its low bits; Xoshiro's seeding (SplitMix64) mixes it well.
    Xoshiro256PlusPlus::seed_from_u64(hash(seed, id.as_bytes()))
}

/// Whether decision `id` falls in the control group of a holdout of `fraction`.
pub fn in_control(seed: u64, id: &str, fraction: f64) -> bool {
    fraction > 0.0 && rng(seed, id).random::<f64>() < fraction
}

/// The candidate a uniform control serves decision `id` among `n` (`n` ≥ 1), and its
/// propensity.
pub fn uniform_choice(seed: u64, id: &str, n: usize) -> (usize, f64) {
    let mut rng = rng(seed, id);
    // The first draw decided the group; the second chooses.
    let _: f64 = rng.random();
    (rng.random_range(0..n.max(1)), 1.0 / n.max(1) as f64)
}

/// Rewards of one group: count, sum and the sum of squared deviations (Welford).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GroupStats {
    /// Rewards counted.
    pub n: u64,
    /// Their sum.
    pub sum: f64,
    /// Their mean.
    pub mean: f64,
    /// Sum of squared deviations from the mean.
    pub m2: f64,
}

impl GroupStats {
    /// The statistics of `n` rewards of sum `sum` and sum of squares `sum_sq` (as recovery
    /// sums them from the log); further rewards are pushed onto it.
    pub fn from_sums(n: u64, sum: f64, sum_sq: f64) -> Self {
        if n == 0 {
            return Self::default();
        }
        let mean = sum / n as f64;
        // Rounding can make the difference slightly negative when all rewards are equal.
        let m2 = (sum_sq - sum * mean).max(0.0);
        Self { n, sum, mean, m2 }
    }

    /// Counts one reward.
    pub fn push(&mut self, reward: f64) {
        self.n += 1;
        self.sum += reward;
        let delta = reward - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (reward - self.mean);
    }

    /// The sample variance (n - 1), if there are two rewards.
    fn variance(&self) -> Option<f64> {
        (self.n >= 2).then(|| self.m2 / (self.n - 1) as f64)
    }
}

/// The lift of the model over the control (difference of mean rewards) and its 95%
/// confidence interval, `(lift, low, high)`: the normal approximation with unequal variances
/// (Welch's standard error), fine at the hundreds of rewards per group a lift needs anyway.
/// `None` until each group has two rewards.
pub fn lift(treatment: &GroupStats, control: &GroupStats) -> Option<(f64, f64, f64)> {
    /// The 97.5% quantile of the standard normal.
    const Z95: f64 = 1.959_964;
    let se = (treatment.variance()? / treatment.n as f64 + control.variance()? / control.n as f64)
        .sqrt();
    let lift = treatment.mean - control.mean;
    Some((lift, lift - Z95 * se, lift + Z95 * se))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The control fraction over many ids is the configured one (binomial 5-sigma margin),
    /// and the same id always falls in the same group.
    #[test]
    fn groups_follow_the_fraction_and_the_id() {
        let n = 100_000u32;
        let control = (0..n)
            .filter(|i| in_control(42, &format!("d-{i}"), 0.1))
            .count() as f64;
        let sigma = (f64::from(n) * 0.1 * 0.9).sqrt();
        assert!(
            (control - f64::from(n) * 0.1).abs() < 5.0 * sigma,
            "{control}"
        );
        assert!(
            (0..100)
                .all(|i| in_control(42, &format!("{i}"), 0.5)
                    == in_control(42, &format!("{i}"), 0.5))
        );
        assert!(!(0..1000).any(|i| in_control(42, &format!("{i}"), 0.0)));
    }

    /// Welford's mean and variance, and the interval of a known difference.
    #[test]
    fn lift_and_interval() {
        let (mut t, mut c) = (GroupStats::default(), GroupStats::default());
        for r in [1.0, 2.0, 3.0, 4.0] {
            t.push(r);
        }
        for r in [0.0, 1.0] {
            c.push(r);
        }
        assert_eq!((t.n, t.sum, t.mean), (4, 10.0, 2.5));
        let (lift, low, high) = lift(&t, &c).unwrap();
        assert!((lift - 2.0).abs() < 1e-12);
        // var_t = 5/3, var_c = 1/2: se = sqrt(5/12 + 1/4).
        let half = 1.959_964 * (5.0f64 / 12.0 + 0.25).sqrt();
        assert!((high - lift - half).abs() < 1e-9 && (lift - low - half).abs() < 1e-9);
        assert_eq!(super::lift(&t, &GroupStats::default()), None);
    }

    /// Statistics built from sums equal those pushed one by one, and pushing onto them
    /// continues as if every reward had been pushed.
    #[test]
    fn from_sums_matches_push() {
        let rewards = [0.5, 1.5, -2.0, 3.25, 0.0, 1.0];
        let mut pushed = GroupStats::default();
        for r in rewards {
            pushed.push(r);
        }
        let (head, tail) = rewards.split_at(4);
        let mut built = GroupStats::from_sums(
            head.len() as u64,
            head.iter().sum(),
            head.iter().map(|r| r * r).sum(),
        );
        for &r in tail {
            built.push(r);
        }
        assert_eq!((built.n, built.sum), (pushed.n, pushed.sum));
        assert!((built.mean - pushed.mean).abs() < 1e-12);
        assert!((built.m2 - pushed.m2).abs() < 1e-9);
        assert_eq!(GroupStats::from_sums(0, 0.0, 0.0), GroupStats::default());
        // Seven rewards of 0.7 summed in f64: sum_sq - sum * mean rounds to -1.3e-15, which
        // would be a negative variance.
        let (sum, sum_sq) = (0..7).fold((0.0, 0.0), |(s, q), _| (s + 0.7, q + 0.7 * 0.7));
        assert_eq!(GroupStats::from_sums(7, sum, sum_sq).m2, 0.0);
    }
}
