//! The reward standardisation's running statistics: one model's rewards' mean and standard
//! deviation, robust to a single wild value.

/// Online mean and variance (Welford), for standardising rewards so that reward scales of
/// 0/1 and 0..50 train with the same learning rate.
#[derive(Debug, Default, Clone, Copy)]
pub struct RunningStats {
    pub(super) n: u64,
    pub(super) mean: f64,
    pub(super) m2: f64,
}

impl RunningStats {
    /// Folds in one value.
    pub fn push(&mut self, x: f64) {
        self.n += 1;
        let delta = x - self.mean;
        self.mean += delta / self.n as f64;
        self.m2 += delta * (x - self.mean);
    }

    /// Folds in `x`, winsorised so that this one value multiplies the standard deviation by
    /// at most `growth` (`growth` = 0, or fewer than two values so far: `x` itself); returns
    /// the value folded in. A value at distance `d` from the mean turns the variance `v` of
    /// `n` values into `(v (n-1) + d² n/(n+1)) / n`; the bound is the `d` that makes that
    /// `growth² v`. A wild report (−1e6 among rewards of about 1) then at most doubles the
    /// scale once (default `growth` 2) instead of dominating the statistics for thousands of
    /// rewards, while a genuinely new reward scale (the wheel's first rewards of 50 after
    /// rewards of about 1) is fully admitted after a few values, each doubling the scale.
    pub fn push_bounded(&mut self, x: f64, growth: f64) -> f64 {
        let admitted = self.bounded(x, growth);
        self.push(admitted);
        admitted
    }

    /// What [`RunningStats::push_bounded`] would fold in for `x`, without folding it in.
    pub fn bounded(&self, x: f64, growth: f64) -> f64 {
        if growth <= 0.0 || self.n < 2 {
            return x;
        }
        let n = self.n as f64;
        let v = self.std().powi(2);
        let reach = (v * (growth * growth * n - n + 1.0) * (n + 1.0) / n).sqrt();
        x.clamp(self.mean - reach, self.mean + reach)
    }

    /// The standard deviation, or 1 while it is undefined or degenerate (so a constant
    /// reward does not divide by zero).
    pub fn std(&self) -> f64 {
        if self.n < 2 {
            return 1.0;
        }
        let std = (self.m2 / (self.n - 1) as f64).sqrt();
        if std > 1e-6 { std } else { 1.0 }
    }

    /// The mean of the values folded in (0 before any).
    pub fn mean(&self) -> f64 {
        self.mean
    }

    /// How many values were folded in.
    pub fn count(&self) -> u64 {
        self.n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Welford's running statistics match the textbook formulas.
    #[test]
    fn running_stats() {
        let mut s = RunningStats::default();
        assert_eq!(s.std(), 1.0);
        for x in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            s.push(x);
        }
        assert!((s.mean - 5.0).abs() < 1e-12);
        assert!((s.std() - (32.0f64 / 7.0).sqrt()).abs() < 1e-12);
    }

    /// Robust standardisation: a wild value grows the standard deviation by exactly the
    /// limit (2) and is admitted as the bound; an ordinary value passes unchanged; a new
    /// scale (50 after rewards of about 1) is admitted in full after a few values; with the
    /// limit off (0) the wild value is folded in as it is.
    #[test]
    fn one_value_at_most_doubles_the_reward_scale() {
        let base = |growth| {
            let mut s = RunningStats::default();
            for i in 0..1000 {
                s.push_bounded(1.0 + 0.1 * f64::from(i % 3), growth);
            }
            s
        };
        let mut s = base(2.0);
        let std = s.std();
        let admitted = s.push_bounded(-1e6, 2.0);
        assert!(admitted > -1e6 && admitted < s.mean, "{admitted}");
        assert!((s.std() / std - 2.0).abs() < 1e-9, "{} vs {std}", s.std());
        let mut s = base(2.0);
        assert_eq!(s.push_bounded(1.15, 2.0), 1.15);
        let mut admitted = 0.0;
        for _ in 0..12 {
            admitted = s.push_bounded(50.0, 2.0);
        }
        assert_eq!(admitted, 50.0);
        let mut off = base(0.0);
        assert_eq!(off.push_bounded(-1e6, 0.0), -1e6);
        assert!(off.std() > 1e4);
    }
}
