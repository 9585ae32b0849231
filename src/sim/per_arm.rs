//! A per-arm environment: a catalogue of items with features and logistic rewards.

use rand::seq::index;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Candidate, Environment, Round, SimError};

/// The standard deviation of the logits contextᵀ W item, before the sigmoid: large
/// enough that the best candidate of a round is clearly better than the average one,
/// small enough that not every probability is 0 or 1.
const LOGIT_SCALE: f64 = 3.0;

/// The most `f32` values (catalogue plus W) the environment agrees to allocate, so that a
/// typo on a command line is an error rather than an out-of-memory abort.
const MAX_PARAMETERS: usize = 1 << 27;

/// A per-arm contextual bandit with logistic (Bernoulli) rewards.
///
/// A catalogue of `catalogue_size` items, with ids `"item-0"`, `"item-1"`, … and
/// feature vectors of length `arm_dim` with entries N(0, 1)/√`arm_dim`, is drawn once
/// from the seed, and so is a hidden matrix W (`context_dim` × `arm_dim`) with entries
/// N(0, 9/`context_dim`). Each round draws a context with N(0, 1) entries and offers
/// `candidates_per_round` distinct items chosen uniformly at random (in random order);
/// candidate z pays 1 with probability sigmoid(xᵀ W z) and 0 otherwise. With these scales
/// the logits have standard deviation about 3, so rounds have clear winners without every
/// probability being saturated. The expected reward is the probability itself.
#[derive(Debug, Clone)]
pub struct PerArmLogistic {
    context_dim: usize,
    arm_dim: usize,
    candidates_per_round: usize,
    catalogue: Vec<Vec<f32>>,
    /// W, row-major: `weights[i * arm_dim + j]`.
    weights: Vec<f32>,
    rng: Xoshiro256PlusPlus,
}

impl PerArmLogistic {
    /// A per-arm logistic environment, seeded with `seed`.
    ///
    /// # Errors
    ///
    /// [`SimError::InvalidArgument`] if a size is 0, if `candidates_per_round` exceeds
    /// `catalogue_size`, or if the catalogue and W together would exceed 2²⁷ values.
    pub fn new(
        context_dim: usize,
        arm_dim: usize,
        catalogue_size: usize,
        candidates_per_round: usize,
        seed: u64,
    ) -> Result<Self, SimError> {
        let invalid = |message: String| Err(SimError::InvalidArgument(message));
        if context_dim == 0 || arm_dim == 0 {
            return invalid(format!(
                "per-arm dimensions must be positive, got context {context_dim} and arm {arm_dim}"
            ));
        }
        if catalogue_size == 0 || candidates_per_round == 0 {
            return invalid(format!(
                "the per-arm catalogue ({catalogue_size}) and candidates per round \
                 ({candidates_per_round}) must be positive"
            ));
        }
        if candidates_per_round > catalogue_size {
            return invalid(format!(
                "{candidates_per_round} candidates per round cannot be drawn from a \
                 catalogue of {catalogue_size} items"
            ));
        }
        let parameters = catalogue_size
            .checked_mul(arm_dim)
            .zip(context_dim.checked_mul(arm_dim))
            .and_then(|(a, b)| a.checked_add(b));
        if parameters.is_none_or(|p| p > MAX_PARAMETERS) {
            return invalid(format!(
                "a catalogue of {catalogue_size} items of dimension {arm_dim} with context \
                 dimension {context_dim} is too large (at most {MAX_PARAMETERS} values)"
            ));
        }

        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let item_scale = 1.0 / (arm_dim as f64).sqrt();
        let catalogue = (0..catalogue_size)
            .map(|_| normal_vec(&mut rng, arm_dim, item_scale))
            .collect();
        let weight_scale = LOGIT_SCALE / (context_dim as f64).sqrt();
        let weights = normal_vec(&mut rng, context_dim * arm_dim, weight_scale);
        Ok(Self {
            context_dim,
            arm_dim,
            candidates_per_round,
            catalogue,
            weights,
            rng,
        })
    }

    /// The number of items in the catalogue.
    pub fn catalogue_size(&self) -> usize {
        self.catalogue.len()
    }

    /// The number of candidates offered per round.
    pub fn candidates_per_round(&self) -> usize {
        self.candidates_per_round
    }

    /// The features of catalogue item `item`, if it exists.
    pub fn item_features(&self, item: usize) -> Option<&[f32]> {
        self.catalogue.get(item).map(Vec::as_slice)
    }

    /// The probability that an item with features `item` pays 1 in `context`:
    /// sigmoid(contextᵀ W item). Missing entries count as 0 and extra ones are ignored.
    pub fn probability(&self, context: &[f32], item: &[f32]) -> f64 {
        let mut logit = 0.0;
        for (i, &x) in context.iter().take(self.context_dim).enumerate() {
            let row = &self.weights[i * self.arm_dim..(i + 1) * self.arm_dim];
            let projected: f64 = row
                .iter()
                .zip(item)
                .map(|(&w, &z)| f64::from(w) * f64::from(z))
                .sum();
            logit += f64::from(x) * projected;
        }
        sigmoid(logit)
    }
}

fn normal_vec(rng: &mut Xoshiro256PlusPlus, len: usize, scale: f64) -> Vec<f32> {
    (0..len)
        .map(|_| {
            let z: f64 = StandardNormal.sample(rng);
            (z * scale) as f32
        })
        .collect()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

impl Environment for PerArmLogistic {
    fn name(&self) -> String {
        format!(
            "per-arm(context={}, arm={}, catalogue={}, candidates={})",
            self.context_dim,
            self.arm_dim,
            self.catalogue.len(),
            self.candidates_per_round
        )
    }

    fn context_dim(&self) -> usize {
        self.context_dim
    }

    fn arm_feature_dim(&self) -> usize {
        self.arm_dim
    }

    fn arm_ids(&self) -> Vec<String> {
        Vec::new()
    }

    fn next_round(&mut self) -> Round {
        let context = normal_vec(&mut self.rng, self.context_dim, 1.0);
        let chosen = index::sample(
            &mut self.rng,
            self.catalogue.len(),
            self.candidates_per_round,
        );
        let mut candidates = Vec::with_capacity(self.candidates_per_round);
        let mut expected = Vec::with_capacity(self.candidates_per_round);
        let mut rewards = Vec::with_capacity(self.candidates_per_round);
        for item in chosen.iter() {
            let features = self.catalogue[item].clone();
            let p = self.probability(&context, &features);
            let paid = self.rng.random::<f64>() < p;
            candidates.push(Candidate {
                id: format!("item-{item}"),
                features,
            });
            expected.push(p);
            rewards.push(if paid { 1.0 } else { 0.0 });
        }
        Round {
            context,
            candidates,
            expected,
            rewards,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn validates_arguments() {
        for (c, a, n, k) in [
            (0, 4, 10, 2),
            (4, 0, 10, 2),
            (4, 4, 0, 0),
            (4, 4, 10, 0),
            (4, 4, 10, 11),
            (4, 4, usize::MAX, 2),
            (usize::MAX, 4, 10, 2),
            (8, 8, 1 << 30, 10),
        ] {
            let err = PerArmLogistic::new(c, a, n, k, 0).unwrap_err();
            assert!(matches!(err, SimError::InvalidArgument(_)), "{err}");
        }
        assert!(PerArmLogistic::new(1, 1, 1, 1, 0).is_ok());
        assert!(PerArmLogistic::new(4, 4, 10, 10, 0).is_ok());
    }

    #[test]
    fn rounds_have_distinct_candidates_and_valid_probabilities() {
        let mut env = PerArmLogistic::new(6, 5, 40, 12, 3).unwrap();
        assert_eq!(env.arm_ids(), Vec::<String>::new());
        assert_eq!(
            env.name(),
            "per-arm(context=6, arm=5, catalogue=40, candidates=12)"
        );
        for _ in 0..300 {
            let r = env.next_round();
            assert_eq!(r.context.len(), 6);
            assert_eq!(r.candidates.len(), 12);
            assert_eq!(r.expected.len(), 12);
            let ids: HashSet<&str> = r.candidates.iter().map(|c| c.id.as_str()).collect();
            assert_eq!(ids.len(), 12, "duplicate candidates");
            for (c, (&p, &reward)) in r.candidates.iter().zip(r.expected.iter().zip(&r.rewards)) {
                assert!(p > 0.0 && p < 1.0, "{p}");
                assert!(reward == 0.0 || reward == 1.0);
                assert_eq!(c.features.len(), 5);
                let item: usize = c.id.strip_prefix("item-").unwrap().parse().unwrap();
                assert!(item < 40);
                assert_eq!(env.item_features(item), Some(c.features.as_slice()));
                assert_eq!(env.probability(&r.context, &c.features), p);
            }
        }
    }

    #[test]
    fn whole_catalogue_every_round() {
        let mut env = PerArmLogistic::new(2, 3, 7, 7, 1).unwrap();
        let r = env.next_round();
        let mut ids: Vec<String> = r.candidates.into_iter().map(|c| c.id).collect();
        ids.sort();
        assert_eq!(ids, (0..7).map(|i| format!("item-{i}")).collect::<Vec<_>>());
    }

    #[test]
    fn rewards_follow_the_probabilities_and_spread_is_useful() {
        let mut env = PerArmLogistic::new(8, 8, 100, 10, 5).unwrap();
        let (mut sum_p, mut sum_r, mut sum_logit_sq, mut count) = (0.0, 0.0, 0.0, 0.0);
        let mut regret = 0.0;
        for _ in 0..4_000 {
            let r = env.next_round();
            for (&p, &reward) in r.expected.iter().zip(&r.rewards) {
                sum_p += p;
                sum_r += reward;
                let logit = (p / (1.0 - p)).ln();
                sum_logit_sq += logit * logit;
                count += 1.0;
            }
            regret += r.uniform_regret();
        }
        // Sampled rewards match their expectations (40,000 Bernoulli draws).
        assert!(
            (sum_p - sum_r).abs() / count < 0.01,
            "{} vs {}",
            sum_p / count,
            sum_r / count
        );
        // Logits have a standard deviation near the target scale.
        let logit_std = (sum_logit_sq / count).sqrt();
        assert!((2.0..4.5).contains(&logit_std), "logit std {logit_std}");
        // Uniform random loses a good share of the achievable reward.
        assert!(
            regret / 4_000.0 > 0.2,
            "uniform regret {}",
            regret / 4_000.0
        );
    }

    #[test]
    fn same_seed_same_sequence() {
        let mut a = PerArmLogistic::new(3, 4, 20, 5, 8).unwrap();
        let mut b = PerArmLogistic::new(3, 4, 20, 5, 8).unwrap();
        let mut c = PerArmLogistic::new(3, 4, 20, 5, 9).unwrap();
        let mut differs = false;
        for _ in 0..50 {
            let (ra, rb, rc) = (a.next_round(), b.next_round(), c.next_round());
            assert_eq!(ra, rb);
            differs |= ra != rc;
        }
        assert!(differs);
    }
}
