//! The wheel bandit of Riquelme, Tucker & Snoek (ICLR 2018).

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Candidate, Environment, Round, SimError};

/// The number of arms of the wheel bandit.
const NUM_ARMS: usize = 5;
/// Mean reward of each arm away from its high-reward region (arm 4 is best inside).
const BASE_MEANS: [f64; NUM_ARMS] = [1.0, 1.0, 1.0, 1.0, 1.2];
/// Standard deviation of the base rewards.
const BASE_STD: f64 = 0.05;
/// Mean of the large reward paid by the quadrant's arm outside the circle.
const LARGE_MEAN: f64 = 50.0;
/// Standard deviation of the large reward.
const LARGE_STD: f64 = 0.01;

/// The wheel bandit (Riquelme, Tucker & Snoek, "Deep Bayesian Bandits Showdown", ICLR
/// 2018), as in the paper's reference code.
///
/// The context x is uniform on the unit disc in R² (rejection sampling from the square
/// [-1, 1]²). The five arms `"0"`..`"4"` pay N(μ, 0.05²) with μ = [1.0, 1.0, 1.0, 1.0,
/// 1.2], so arm 4 is best inside the circle of radius δ. When ‖x‖ ≥ δ, the arm of x's
/// quadrant pays N(50, 0.01²) instead: arm 0 for x₀ > 0, x₁ > 0; arm 1 for x₀ > 0,
/// x₁ ≤ 0; arm 2 for x₀ ≤ 0, x₁ > 0; arm 3 for x₀ ≤ 0, x₁ ≤ 0. The fraction of contexts
/// with a large reward is 1 − δ².
///
/// The context is handed out as `f32`; regions are decided on exactly those `f32` values,
/// so the expected rewards are consistent with what a policy sees.
#[derive(Debug, Clone)]
pub struct WheelBandit {
    delta: f64,
    rng: Xoshiro256PlusPlus,
    base: [Normal<f64>; NUM_ARMS],
    large: Normal<f64>,
}

impl WheelBandit {
    /// A wheel bandit with radius `delta`, seeded with `seed`.
    ///
    /// # Errors
    ///
    /// [`SimError::InvalidArgument`] unless 0 < `delta` < 1.
    pub fn new(delta: f64, seed: u64) -> Result<Self, SimError> {
        if !(delta > 0.0 && delta < 1.0) {
            return Err(SimError::InvalidArgument(format!(
                "the wheel delta must be in (0, 1), got {delta}"
            )));
        }
        let normal = |mean: f64, std: f64| {
            Normal::new(mean, std)
                .map_err(|e| SimError::InvalidArgument(format!("normal({mean}, {std}): {e}")))
        };
        let mut base = [normal(0.0, 1.0)?; NUM_ARMS];
        for (slot, &mean) in base.iter_mut().zip(&BASE_MEANS) {
            *slot = normal(mean, BASE_STD)?;
        }
        Ok(Self {
            delta,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            base,
            large: normal(LARGE_MEAN, LARGE_STD)?,
        })
    }

    /// The radius δ of the low-reward circle.
    pub fn delta(&self) -> f64 {
        self.delta
    }

    /// The arm whose reward is large at `context`, if `context` lies outside the circle
    /// of radius δ (‖x‖ ≥ δ); `None` inside it.
    pub fn large_arm(&self, context: [f32; 2]) -> Option<usize> {
        let (x0, x1) = (f64::from(context[0]), f64::from(context[1]));
        if x0.hypot(x1) < self.delta {
            return None;
        }
        Some(match (x0 > 0.0, x1 > 0.0) {
            (true, true) => 0,
            (true, false) => 1,
            (false, true) => 2,
            (false, false) => 3,
        })
    }

    /// The expected reward of each arm at `context`.
    pub fn expected_for(&self, context: [f32; 2]) -> [f64; NUM_ARMS] {
        let mut expected = BASE_MEANS;
        if let Some(arm) = self.large_arm(context) {
            expected[arm] = LARGE_MEAN;
        }
        expected
    }

    /// Draws a context uniformly from the unit disc by rejection from [-1, 1]².
    fn sample_context(&mut self) -> [f32; 2] {
        loop {
            let x0 = self.rng.random_range(-1.0f64..=1.0) as f32;
            let x1 = self.rng.random_range(-1.0f64..=1.0) as f32;
            if f64::from(x0).hypot(f64::from(x1)) <= 1.0 {
                return [x0, x1];
            }
        }
    }
}

impl Environment for WheelBandit {
    fn name(&self) -> String {
        format!("wheel(delta={})", self.delta)
    }

    fn context_dim(&self) -> usize {
        2
    }

    fn arm_feature_dim(&self) -> usize {
        0
    }

    fn arm_ids(&self) -> Vec<String> {
        (0..NUM_ARMS).map(|arm| arm.to_string()).collect()
    }

    fn next_round(&mut self) -> Round {
        let context = self.sample_context();
        // As in the reference code: draw every base reward, then the large one if any.
        let mut rewards: Vec<f64> = self
            .base
            .iter()
            .map(|normal| normal.sample(&mut self.rng))
            .collect();
        if let Some(arm) = self.large_arm(context) {
            rewards[arm] = self.large.sample(&mut self.rng);
        }
        Round {
            context: context.to_vec(),
            candidates: self
                .arm_ids()
                .into_iter()
                .map(|id| Candidate {
                    id,
                    features: Vec::new(),
                })
                .collect(),
            expected: self.expected_for(context).to_vec(),
            rewards,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_delta() {
        for delta in [0.0, 1.0, -0.5, 1.5, f64::NAN, f64::INFINITY] {
            let err = WheelBandit::new(delta, 0).unwrap_err();
            assert!(err.to_string().contains("delta"), "{err}");
        }
        assert!(WheelBandit::new(0.01, 0).is_ok());
        assert!(WheelBandit::new(0.99, 0).is_ok());
    }

    #[test]
    fn name_ids_and_dims() {
        let env = WheelBandit::new(0.95, 0).unwrap();
        assert_eq!(env.name(), "wheel(delta=0.95)");
        assert_eq!(env.arm_ids(), ["0", "1", "2", "3", "4"]);
        assert_eq!(env.context_dim(), 2);
        assert_eq!(env.arm_feature_dim(), 0);
        assert_eq!(env.delta(), 0.95);
    }

    #[test]
    fn region_and_arm_mapping() {
        let env = WheelBandit::new(0.5, 0).unwrap();
        // Outside the circle: the quadrant's arm pays 50, the others their base means.
        for (point, arm) in [
            ([0.6, 0.6], 0),
            ([0.6, -0.6], 1),
            ([0.9, 0.0], 1), // x1 <= 0 counts as the lower half
            ([-0.6, 0.6], 2),
            ([0.0, 0.9], 2), // x0 <= 0 counts as the left half
            ([-0.6, -0.6], 3),
            ([0.0, -0.5], 3), // exactly on the circle counts as outside
        ] {
            let expected = env.expected_for(point);
            assert_eq!(env.large_arm(point), Some(arm), "{point:?}");
            for (a, &e) in expected.iter().enumerate() {
                let want = if a == arm { 50.0 } else { BASE_MEANS[a] };
                assert_eq!(e, want, "{point:?} arm {a}");
            }
        }
        // Inside: arm 4 is best, with 1.2.
        for point in [[0.0, 0.0], [0.3, 0.3], [-0.49, 0.0], [0.1, -0.4]] {
            assert_eq!(env.large_arm(point), None, "{point:?}");
            assert_eq!(env.expected_for(point), [1.0, 1.0, 1.0, 1.0, 1.2]);
        }
    }

    #[test]
    fn rounds_are_consistent_with_the_regions() {
        let delta = 0.5;
        let mut env = WheelBandit::new(delta, 7).unwrap();
        let n = 20_000;
        let mut outside = 0;
        for _ in 0..n {
            let r = env.next_round();
            let x = [r.context[0], r.context[1]];
            let norm = f64::from(x[0]).hypot(f64::from(x[1]));
            assert!(norm <= 1.0, "context {x:?} is outside the unit disc");
            assert_eq!(r.candidates.len(), NUM_ARMS);
            assert!(r.candidates.iter().all(|c| c.features.is_empty()));
            let best = r.best_index();
            if norm >= delta {
                outside += 1;
                assert_eq!(r.expected[best], 50.0);
                assert_eq!(Some(best), env.large_arm(x));
                let quadrant = match (x[0] > 0.0, x[1] > 0.0) {
                    (true, true) => 0,
                    (true, false) => 1,
                    (false, true) => 2,
                    (false, false) => 3,
                };
                assert_eq!(best, quadrant);
            } else {
                assert_eq!(best, 4);
                assert_eq!(r.expected[4], 1.2);
            }
            // Sampled rewards stay within 8 standard deviations of their means.
            for (a, (&e, &s)) in r.expected.iter().zip(&r.rewards).enumerate() {
                let std = if e == 50.0 { LARGE_STD } else { BASE_STD };
                assert!((s - e).abs() < 8.0 * std, "arm {a}: {s} vs {e}");
            }
            assert!(r.regret_of(best).abs() < 1e-12);
        }
        // A fraction 1 - delta^2 = 0.75 of the disc lies outside the circle.
        let fraction = f64::from(outside) / f64::from(n);
        assert!(
            (fraction - 0.75).abs() < 0.02,
            "fraction outside {fraction}"
        );
    }

    #[test]
    fn contexts_cover_the_disc_uniformly() {
        let mut env = WheelBandit::new(0.5, 11).unwrap();
        let mut quadrants = [0u32; 4];
        let n = 20_000;
        for _ in 0..n {
            let r = env.next_round();
            let q = usize::from(r.context[0] <= 0.0) * 2 + usize::from(r.context[1] <= 0.0);
            quadrants[q] += 1;
        }
        for count in quadrants {
            let share = f64::from(count) / f64::from(n);
            assert!((share - 0.25).abs() < 0.02, "{quadrants:?}");
        }
    }

    #[test]
    fn rewards_have_the_reference_means() {
        let mut env = WheelBandit::new(0.99, 3).unwrap();
        let mut sums = [0.0; NUM_ARMS];
        let mut count = 0.0;
        for _ in 0..5_000 {
            let r = env.next_round();
            if r.best_index() == 4 {
                for (sum, reward) in sums.iter_mut().zip(&r.rewards) {
                    *sum += reward;
                }
                count += 1.0;
            }
        }
        for (arm, sum) in sums.iter().enumerate() {
            assert!((sum / count - BASE_MEANS[arm]).abs() < 0.005, "arm {arm}");
        }
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = WheelBandit::new(0.8, 42).unwrap();
        let mut b = WheelBandit::new(0.8, 42).unwrap();
        let mut c = WheelBandit::new(0.8, 43).unwrap();
        let mut differs = false;
        for _ in 0..200 {
            let (ra, rb, rc) = (a.next_round(), b.next_round(), c.next_round());
            assert_eq!(ra, rb);
            differs |= ra != rc;
        }
        assert!(differs, "different seeds should give different sequences");
    }
}
