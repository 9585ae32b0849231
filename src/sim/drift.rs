//! A wrapper that changes the best arm after a given number of rounds.

use super::{Environment, Round};

/// Wraps an environment and, from round `at_round` on (counting from 0), rotates the
/// rewards across the candidates: candidate i gets the expected and sampled reward that
/// candidate (i + 1) mod n would have got. The context and the candidates themselves are
/// unchanged, so a policy that learned the old mapping keeps choosing the wrong arm until
/// it adapts.
///
/// For a fixed-arm environment this moves every arm's reward to the arm before it (the
/// best arm changes whenever the arms' expected rewards differ); for a per-arm
/// environment the rewards rotate over the round's candidate list, so an item no longer
/// pays what its features predict. The drift draws no randomness: the wrapped
/// environment yields the same sequence as it would alone.
pub struct Drifting {
    inner: Box<dyn Environment>,
    at_round: u64,
    rounds: u64,
}

impl Drifting {
    /// Wraps `inner`, drifting after `at_round` rounds (`0`: drifted from the start).
    pub fn new(inner: Box<dyn Environment>, at_round: u64) -> Self {
        Self {
            inner,
            at_round,
            rounds: 0,
        }
    }

    /// The number of rounds after which the rewards rotate.
    pub fn at_round(&self) -> u64 {
        self.at_round
    }

    /// The number of rounds yielded so far.
    pub fn rounds(&self) -> u64 {
        self.rounds
    }

    /// Whether the next round will be drifted.
    pub fn has_drifted(&self) -> bool {
        self.rounds >= self.at_round
    }

    /// Applies the drift to `round`: candidate i gets the expected and sampled rewards of
    /// candidate (i + 1) mod n.
    pub fn rotate(mut round: Round) -> Round {
        if !round.expected.is_empty() {
            round.expected.rotate_left(1);
        }
        if !round.rewards.is_empty() {
            round.rewards.rotate_left(1);
        }
        round
    }
}

impl std::fmt::Debug for Drifting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drifting")
            .field("inner", &self.inner.name())
            .field("at_round", &self.at_round)
            .field("rounds", &self.rounds)
            .finish()
    }
}

impl Environment for Drifting {
    fn name(&self) -> String {
        format!("drift({}@{})", self.inner.name(), self.at_round)
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
        let drifted = self.has_drifted();
        self.rounds = self.rounds.saturating_add(1);
        let round = self.inner.next_round();
        if drifted { Self::rotate(round) } else { round }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{PerArmLogistic, WheelBandit};
    use super::*;

    #[test]
    fn name_and_passthrough() {
        let env = Drifting::new(Box::new(WheelBandit::new(0.5, 0).unwrap()), 2500);
        assert_eq!(env.name(), "drift(wheel(delta=0.5)@2500)");
        assert_eq!(env.arm_ids(), ["0", "1", "2", "3", "4"]);
        assert_eq!(env.context_dim(), 2);
        assert_eq!(env.arm_feature_dim(), 0);
        assert!(format!("{env:?}").contains("wheel(delta=0.5)"));
    }

    #[test]
    fn rotation_moves_rewards_to_the_previous_candidate() {
        let mut plain = WheelBandit::new(0.5, 1).unwrap();
        let r = plain.next_round();
        let rotated = Drifting::rotate(r.clone());
        let n = r.expected.len();
        for i in 0..n {
            assert_eq!(rotated.expected[i], r.expected[(i + 1) % n]);
            assert_eq!(rotated.rewards[i], r.rewards[(i + 1) % n]);
        }
        assert_eq!(rotated.context, r.context);
        assert_eq!(rotated.candidates, r.candidates);
    }

    /// Runs a plain environment and a drifting copy with the same seed side by side: the
    /// rounds are built from the same draws, identical before `at_round` and with the
    /// best arm moved by one candidate from then on.
    fn check_drift(mut plain: Box<dyn Environment>, drifting: Box<dyn Environment>, at: u64) {
        let mut drifting = Drifting::new(drifting, at);
        for t in 0..(2 * at) {
            assert_eq!(drifting.has_drifted(), t >= at);
            let (p, d) = (plain.next_round(), drifting.next_round());
            assert_eq!(p.context, d.context);
            assert_eq!(p.candidates, d.candidates);
            if t < at {
                assert_eq!(p, d, "round {t} should be untouched");
            } else {
                let n = p.candidates.len();
                assert_ne!(
                    p.best_index(),
                    d.best_index(),
                    "round {t}: best arm unchanged"
                );
                assert_eq!(d.best_index(), (p.best_index() + n - 1) % n);
                assert_eq!(d.max_expected(), p.max_expected());
                // The arm that used to be best now loses something.
                assert!(d.regret_of(p.best_index()) > 0.0);
            }
        }
        assert_eq!(drifting.rounds(), 2 * at);
    }

    #[test]
    fn best_arm_changes_at_the_drift_round_wheel() {
        let wheel = || Box::new(WheelBandit::new(0.5, 77).unwrap());
        check_drift(wheel(), wheel(), 50);
    }

    #[test]
    fn best_arm_changes_at_the_drift_round_per_arm() {
        let per_arm = || Box::new(PerArmLogistic::new(4, 4, 30, 6, 5).unwrap());
        check_drift(per_arm(), per_arm(), 40);
    }

    #[test]
    fn drift_from_the_start() {
        let mut env = Drifting::new(Box::new(WheelBandit::new(0.5, 3).unwrap()), 0);
        assert!(env.has_drifted());
        let r = env.next_round();
        // Inside the circle arm 4's 1.2 moved to arm 3; outside the quadrant arm moved back one.
        assert_ne!(
            r.best_index(),
            WheelBandit::new(0.5, 3).unwrap().next_round().best_index()
        );
    }
}
