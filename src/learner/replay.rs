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
}
