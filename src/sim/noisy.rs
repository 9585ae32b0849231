//! A wrapper that makes one arm's rewards much noisier without changing any expected reward.

use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Environment, Round, SimError};

/// Wraps an environment and adds `N(0, sigma²)` to the sampled reward of the candidate whose
/// id is `arm`, whenever it is offered. Expected rewards (and so regret) are unchanged: the
/// arm is exactly as good as before, only noisier, which is what a model that confuses
/// noise with uncertainty gets wrong (README "The method" §2).
///
/// The noise comes from its own generator (seeded from the environment's seed), one draw per
/// round whether or not the arm is offered, so the wrapped environment's rounds are the
/// same as without the wrapper.
pub struct Noisy {
    inner: Box<dyn Environment>,
    arm: String,
    sigma: f64,
    noise: Normal<f64>,
    rng: Xoshiro256PlusPlus,
}

impl Noisy {
    /// Wraps `inner`, adding noise of standard deviation `sigma` to arm `arm`'s rewards.
    ///
    /// # Errors
    /// `sigma` is negative or not finite.
    pub fn new(
        inner: Box<dyn Environment>,
        arm: &str,
        sigma: f64,
        seed: u64,
    ) -> Result<Self, SimError> {
        if !(sigma.is_finite() && sigma >= 0.0) {
            return Err(SimError::InvalidArgument(format!(
                "noise sigma must be a non-negative number, got {sigma}"
            )));
        }
        let noise = Normal::new(0.0, sigma)
            .map_err(|e| SimError::InvalidArgument(format!("noise sigma {sigma}: {e}")))?;
        Ok(Self {
            inner,
            arm: arm.to_owned(),
            sigma,
            noise,
            // A stream apart from the wrapped environment's.
            rng: Xoshiro256PlusPlus::seed_from_u64(seed ^ 0x6e01_5e00_0000_0001),
        })
    }
}

impl std::fmt::Debug for Noisy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Noisy")
            .field("inner", &self.inner.name())
            .field("arm", &self.arm)
            .field("sigma", &self.sigma)
            .finish()
    }
}

impl Environment for Noisy {
    fn name(&self) -> String {
        format!("noise({}@{}={})", self.inner.name(), self.arm, self.sigma)
    }

    fn context_dim(&self) -> usize {
        self.inner.context_dim()
    }

    fn arm_feature_dim(&self) -> usize {
        self.inner.arm_feature_dim()
    }

    fn arm_ids(&self) -> Vec<String> {
        self.inner.arm_ids()
    }

    fn next_round(&mut self) -> Round {
        let mut round = self.inner.next_round();
        let extra = self.noise.sample(&mut self.rng);
        if let Some(i) = round.candidates.iter().position(|c| c.id == self.arm) {
            round.rewards[i] += extra;
        }
        round
    }
}

#[cfg(test)]
mod tests {
    use super::super::WheelBandit;
    use super::*;

    /// Only the named arm's sampled rewards change, by noise of about the given spread;
    /// expected rewards, contexts and the other arms' rewards are the wrapped ones.
    #[test]
    fn only_the_named_arm_gets_noisier() {
        let mut plain = WheelBandit::new(0.5, 4).unwrap();
        let inner = Box::new(WheelBandit::new(0.5, 4).unwrap());
        let mut noisy = Noisy::new(inner, "2", 3.0, 4).unwrap();
        assert_eq!(noisy.name(), "noise(wheel(delta=0.5)@2=3)");
        let mut diffs = Vec::new();
        for _ in 0..2000 {
            let (p, n) = (plain.next_round(), noisy.next_round());
            assert_eq!(p.context, n.context);
            assert_eq!(p.expected, n.expected);
            for i in [0, 1, 3, 4] {
                assert_eq!(p.rewards[i], n.rewards[i]);
            }
            diffs.push(n.rewards[2] - p.rewards[2]);
        }
        let mean = diffs.iter().sum::<f64>() / 2000.0;
        let sd = (diffs.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / 1999.0).sqrt();
        // Mean: sd 3/sqrt(2000) = 0.067, margin 0.3; sd within 10%.
        assert!(mean.abs() < 0.3 && (sd - 3.0).abs() < 0.3, "{mean} {sd}");
        assert!(Noisy::new(Box::new(WheelBandit::new(0.5, 4).unwrap()), "2", -1.0, 4).is_err());
    }
}
