//! The bounded replay buffer: the learner's training data. Past its capacity the oldest
//! example is overwritten, so memory stays flat however long the service runs.

use rand::Rng;

pub use crate::domain::Example;

/// A ring buffer of examples.
#[derive(Debug)]
pub struct Replay {
    items: Vec<Example>,
    capacity: usize,
    next: usize,
}

impl Replay {
    /// An empty buffer holding at most `capacity` examples (at least 1).
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Vec::new(),
            capacity: capacity.max(1),
            next: 0,
        }
    }

    /// Adds an example, overwriting the oldest when full.
    pub fn push(&mut self, example: Example) {
        if self.items.len() < self.capacity {
            self.items.push(example);
        } else {
            self.items[self.next] = example;
        }
        self.next = (self.next + 1) % self.capacity;
    }

    /// Every example held, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Example> {
        self.items.iter()
    }

    /// Number of examples held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing has been pushed.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// How many examples were pushed after each held one, in [`Replay::iter`]'s order (0 for
    /// the newest).
    pub fn ages(&self) -> impl Iterator<Item = usize> + '_ {
        let len = self.items.len();
        let newest = (self.next + len).saturating_sub(1) % len.max(1);
        (0..len).map(move |i| (newest + len - i) % len)
    }

    /// `m` examples drawn with replacement, an example `a` pushes old weighing `2^(-a /
    /// half_life)` (forgetting for non-stationary rewards: a minibatch sees mostly recent
    /// examples). Inverse-CDF draws of the exponential truncated to the buffer's length.
    pub fn sample_recent<'a, R: Rng>(
        &'a self,
        rng: &mut R,
        m: usize,
        half_life: f64,
    ) -> Vec<&'a Example> {
        let len = self.items.len();
        if len == 0 {
            return Vec::new();
        }
        let newest = (self.next + len - 1) % len;
        let rate = std::f64::consts::LN_2 / half_life;
        // The untruncated exponential's mass beyond the oldest example.
        let beyond = (-rate * len as f64).exp();
        (0..m)
            .map(|_| {
                let u: f64 = rng.random();
                let age = (-(1.0 - u * (1.0 - beyond)).ln() / rate) as usize;
                &self.items[(newest + len - age.min(len - 1)) % len]
            })
            .collect()
    }

    /// `m` examples drawn uniformly with replacement (the minibatch estimator of README "The method"
    /// §4 is unbiased for uniform draws). Empty when the buffer is.
    pub fn sample<'a, R: Rng>(&'a self, rng: &mut R, m: usize) -> Vec<&'a Example> {
        if self.items.is_empty() {
            return Vec::new();
        }
        (0..m)
            .map(|_| &self.items[rng.random_range(0..self.items.len())])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;

    fn ex(r: f64) -> Example {
        Example {
            input: vec![r as f32],
            head: 0,
            reward: r,
            seq: 0,
        }
    }

    /// Past capacity the oldest examples are replaced and the size stays at capacity.
    #[test]
    fn bounded_ring() {
        let mut replay = Replay::new(3);
        for r in 0..5 {
            replay.push(ex(f64::from(r)));
        }
        assert_eq!(replay.len(), 3);
        let mut rewards: Vec<f64> = replay.items.iter().map(|e| e.reward).collect();
        rewards.sort_by(f64::total_cmp);
        assert_eq!(rewards, vec![2.0, 3.0, 4.0]);
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(0);
        assert_eq!(replay.sample(&mut rng, 10).len(), 10);
        assert!(Replay::new(3).sample(&mut rng, 10).is_empty());
    }

    /// Recency-weighted draws: with a half-life of 10 over 100 examples (the newest pushed
    /// last, wrapped around the ring), about half the draws are the 10 newest and about 1 in
    /// 1000 older than 100; ages count from the newest.
    #[test]
    fn recent_draws_follow_the_half_life() {
        let mut replay = Replay::new(100);
        for r in 0..150 {
            replay.push(ex(f64::from(r)));
        }
        let ages: Vec<usize> = replay.ages().collect();
        let newest = replay.items.iter().position(|e| e.reward == 149.0).unwrap();
        assert_eq!(ages[newest], 0);
        assert_eq!(
            replay.items[ages.iter().position(|a| *a == 99).unwrap()].reward,
            50.0
        );
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let draws = replay.sample_recent(&mut rng, 20_000, 10.0);
        let recent = draws.iter().filter(|e| e.reward >= 140.0).count() as f64 / 20_000.0;
        // P(age < 10) = (1 - 2^-1) / (1 - 2^-10) = 0.5005; 20 000 draws: sigma 0.0035.
        assert!((recent - 0.5005).abs() < 0.02, "{recent}");
        assert!(draws.iter().all(|e| e.reward >= 50.0));
    }
}
