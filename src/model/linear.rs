//! Bayesian linear regression with a normal-inverse-gamma prior: the exact posterior that
//! NeuralLinear (Riquelme, Tucker & Snoek 2018) samples on top of the network's last hidden
//! layer.
//!
//! Model: `y = φᵀβ + ε`, `ε ~ N(0, σ²)`, prior `σ² ~ IG(a₀, b₀)`, `β | σ² ~ N(0, σ²/λ · I)`.
//! After `n` examples with precision `Λ = λI + Σ φφᵀ`, the posterior is
//! `β | σ² ~ N(μ, σ² Λ⁻¹)` with `μ = Λ⁻¹ Σ φy`, and `σ² ~ IG(a₀ + n/2, b₀ + (Σy² − μᵀΛμ)/2)`.
//!
//! [`LinearStats`] keeps the sufficient statistics (updated per example in O(d²));
//! [`LinearPosterior`] is the factorised posterior serving samples from: one Cholesky
//! factorisation per publish (O(d³/3)) and the inverse factor (O(d³/6)), then O(d²) per
//! sample: one triangular solve for a whole β, or one product with `L⁻¹` for a scalar `φᵀβ`.
//! Linear algebra is nalgebra's (Cholesky, triangular solves, matrix products).

use nalgebra::{DMatrix, DVector};
use rand::Rng;
use rand_distr::{Distribution, Gamma, StandardNormal};

/// The prior of a [`LinearStats`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinearPrior {
    /// λ: precision of the prior on β (relative to σ²).
    pub precision: f64,
    /// a₀: inverse-gamma shape of σ².
    pub shape: f64,
    /// b₀: inverse-gamma scale of σ².
    pub scale: f64,
}

/// Sufficient statistics of one regression: `Λ = λI + Σφφᵀ`, `Σφy`, `Σy²`, `n`.
#[derive(Debug, Clone)]
pub struct LinearStats {
    prior: LinearPrior,
    precision: DMatrix<f64>,
    xty: DVector<f64>,
    yy: f64,
    n: u64,
}

impl LinearStats {
    /// No data yet: `Λ = λI`.
    pub fn new(dim: usize, prior: LinearPrior) -> Self {
        Self {
            prior,
            precision: DMatrix::identity(dim, dim) * prior.precision,
            xty: DVector::zeros(dim),
            yy: 0.0,
            n: 0,
        }
    }

    /// The feature dimension d.
    pub fn dim(&self) -> usize {
        self.xty.len()
    }

    /// Examples folded in.
    pub fn count(&self) -> u64 {
        self.n
    }

    /// Folds in one example (a rank-one update of `Λ`). `phi.len()` must be [`Self::dim`].
    /// An example with a non-finite value is ignored (it would make the posterior NaN).
    pub fn add(&mut self, phi: &[f32], y: f64) {
        let d = self.dim();
        debug_assert_eq!(phi.len(), d);
        if !y.is_finite() || phi.iter().any(|v| !v.is_finite()) {
            return;
        }
        let phi = DVector::from_iterator(d, phi.iter().map(|&v| f64::from(v)));
        self.precision.ger(1.0, &phi, &phi, 1.0);
        self.xty.axpy(y, &phi, 1.0);
        self.yy += y * y;
        self.n += 1;
    }

    /// Folds in a batch: `phi` is `(n, d)` row-major, `ys` its `n` targets. One matrix
    /// product instead of `n` rank-one updates. Rows with a non-finite value are ignored.
    pub fn add_batch(&mut self, phi: &[f32], ys: &[f64]) {
        let d = self.dim();
        debug_assert_eq!(phi.len(), ys.len() * d);
        if !(ys.iter().all(|y| y.is_finite()) && phi.iter().all(|v| v.is_finite())) {
            for (row, &y) in phi.chunks(d).zip(ys) {
                self.add(row, y);
            }
            return;
        }
        let n = ys.len();
        if n == 0 {
            return;
        }
        // Row-major (n, d) is column-major (d, n): Φᵀ directly.
        let phi_t = DMatrix::from_iterator(d, n, phi.iter().map(|&v| f64::from(v)));
        let y = DVector::from_column_slice(ys);
        self.precision.gemm(1.0, &phi_t, &phi_t.transpose(), 1.0);
        self.xty.gemv(1.0, &phi_t, &y, 1.0);
        self.yy += y.dot(&y);
        self.n += n as u64;
    }

    /// The factorised posterior.
    ///
    /// # Errors
    /// `Λ` is not numerically positive definite (only with non-finite inputs: `λI` keeps it
    /// positive definite otherwise).
    pub fn posterior(&self) -> Result<LinearPosterior, String> {
        let chol = self
            .precision
            .clone()
            .cholesky()
            .ok_or_else(|| "precision matrix is not positive definite".to_owned())?;
        let mean = chol.solve(&self.xty);
        // Σy² − μᵀΛμ = Σy² − μᵀ(Σφy) ≥ 0 in exact arithmetic; rounding can make it a hair
        // negative, so it is floored at 0.
        let residual = (self.yy - mean.dot(&self.xty)).max(0.0);
        let shape = self.prior.shape + self.n as f64 / 2.0;
        let scale = self.prior.scale + residual / 2.0;
        if !(mean.iter().all(|v| v.is_finite()) && scale.is_finite()) {
            return Err("posterior is not finite".to_owned());
        }
        let chol_l = chol.unpack();
        let l_inv_rows = packed_inverse_rows(&chol_l);
        Ok(LinearPosterior {
            mean,
            chol_l,
            l_inv_rows,
            shape,
            scale,
        })
    }
}

/// A factorised posterior: `μ`, the lower Cholesky factor `L` of `Λ = LLᵀ`, and the
/// inverse-gamma parameters of σ².
#[derive(Debug, Clone)]
pub struct LinearPosterior {
    mean: DVector<f64>,
    chol_l: DMatrix<f64>,
    /// `L⁻¹`'s lower triangle row by row (row i: its i + 1 entries, zero-padded to a multiple
    /// of 8), in f32, computed once per
    /// posterior on the learner thread. Serving then gets `‖L⁻¹φ‖²` from independent
    /// contiguous dot products that vectorise, instead of a triangular solve (a chain of
    /// dependent steps): the solve cost ~1.6 µs per head at d = 101 and was 20% of serving
    /// CPU under load (perf).
    l_inv_rows: Vec<f32>,
    shape: f64,
    scale: f64,
}

impl LinearPosterior {
    /// The feature dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The posterior mean of β.
    pub fn mean(&self) -> &DVector<f64> {
        &self.mean
    }

    /// One draw of β: `σ² ~ IG(a, b)`, then `β = μ + σ L⁻ᵀ z` with `z ~ N(0, I)`, whose
    /// covariance is `σ² (LLᵀ)⁻¹ = σ² Λ⁻¹`.
    pub fn sample<R: Rng>(&self, rng: &mut R) -> DVector<f64> {
        let sigma2 = self.sample_noise_variance(rng);
        let z = DVector::from_fn(self.dim(), |_, _| rng.sample::<f64, _>(StandardNormal));
        let v = self
            .chol_l
            .tr_solve_lower_triangular(&z)
            .unwrap_or_else(|| DVector::zeros(self.dim()));
        &self.mean + v * sigma2.sqrt()
    }

    /// The posterior of the scalar `φᵀβ` for one feature vector, for drawing it without
    /// drawing β: given σ², `φᵀβ ~ N(φᵀμ, σ² φᵀΛ⁻¹φ)`, and `φᵀΛ⁻¹φ = ‖L⁻¹φ‖²` costs one
    /// triangular solve. Each draw is then O(1) instead of O(d²).
    pub fn predictive(&self, phi: &[f32]) -> Predictive<'_> {
        let mean = dot(phi, &self.mean);
        let spread = self.spread(phi);
        Predictive {
            posterior: self,
            mean,
            spread,
        }
    }

    /// `φᵀΛ⁻¹φ = ‖L⁻¹φ‖²`, one dot product per row of `L⁻¹`.
    fn spread(&self, phi: &[f32]) -> f64 {
        let d = self.dim().min(phi.len());
        // φ zero-padded like the rows, so every dot product is whole chunks of 8.
        let mut padded = vec![0.0f32; pad8(d)];
        padded[..d].copy_from_slice(&phi[..d]);
        let mut start = 0;
        let mut total = 0.0f64;
        for i in 0..d {
            let len = pad8(i + 1);
            let wi = f64::from(dot8(&self.l_inv_rows[start..start + len], &padded[..len]));
            start += len;
            total += wi * wi;
        }
        if total.is_finite() { total } else { 0.0 }
    }

    /// One draw of σ² from its inverse-gamma posterior.
    fn sample_noise_variance<R: Rng>(&self, rng: &mut R) -> f64 {
        // σ² = 1/τ with τ ~ Gamma(shape a, scale 1/b). Both parameters are positive and
        // finite by construction ([`LinearStats::posterior`]).
        match Gamma::new(self.shape, 1.0 / self.scale) {
            Ok(gamma) => 1.0 / gamma.sample(rng).max(f64::MIN_POSITIVE),
            Err(_) => self.scale / (self.shape - 1.0).max(1.0),
        }
    }
}

/// The posterior of `φᵀβ` for one `φ` (see [`LinearPosterior::predictive`]).
#[derive(Debug, Clone, Copy)]
pub struct Predictive<'a> {
    posterior: &'a LinearPosterior,
    /// `φᵀμ`.
    mean: f64,
    /// `φᵀΛ⁻¹φ`.
    spread: f64,
}

impl Predictive<'_> {
    /// One draw of `φᵀβ`: `σ² ~ IG(a, b)`, then `φᵀμ + σ √(φᵀΛ⁻¹φ) z`, `z ~ N(0, 1)`: the
    /// same distribution as `φᵀ` of a [`LinearPosterior::sample`].
    pub fn sample<R: Rng>(&self, rng: &mut R) -> f64 {
        let sigma2 = self.posterior.sample_noise_variance(rng);
        let z: f64 = rng.sample(StandardNormal);
        self.mean + (sigma2 * self.spread).sqrt() * z
    }

    /// The posterior mean of `φᵀβ`.
    pub fn mean(&self) -> f64 {
        self.mean
    }
}

/// The lower triangle of `l⁻¹` (lower triangular too), row by row, in f32, each row
/// zero-padded to a multiple of 8 values.
fn packed_inverse_rows(l: &DMatrix<f64>) -> Vec<f32> {
    let d = l.nrows();
    let inv = l
        .solve_lower_triangular(&DMatrix::identity(d, d))
        .unwrap_or_else(|| DMatrix::zeros(d, d));
    let mut out = Vec::with_capacity((0..d).map(|i| pad8(i + 1)).sum());
    for i in 0..d {
        for j in 0..pad8(i + 1) {
            out.push(if j <= i { inv[(i, j)] as f32 } else { 0.0 });
        }
    }
    out
}

/// `n` rounded up to a multiple of 8 (a row's stored length).
fn pad8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

/// A dot product with eight independent sums, so that the compiler vectorises it (one
/// running sum is a dependency chain it may not reorder).
fn dot8(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    let tail: f32 = ra.iter().zip(rb).map(|(x, y)| x * y).sum();
    ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7])) + tail
}

/// `φᵀβ` for f32 features and f64 weights.
pub fn dot(phi: &[f32], beta: &DVector<f64>) -> f64 {
    phi.iter()
        .zip(beta.iter())
        .map(|(&p, &b)| f64::from(p) * b)
        .sum()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;

    const PRIOR: LinearPrior = LinearPrior {
        precision: 0.25,
        shape: 6.0,
        scale: 6.0,
    };

    /// With plenty of data the posterior mean recovers the true weights, and draws scatter
    /// around it by roughly σ √(diag Λ⁻¹).
    #[test]
    fn recovers_weights_and_samples_around_them() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
        let beta = [1.5, -2.0, 0.5];
        let mut stats = LinearStats::new(3, PRIOR);
        for _ in 0..2000 {
            let phi: Vec<f32> = vec![
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                1.0,
            ];
            let noise: f64 = rng.sample::<f64, _>(StandardNormal) * 0.1;
            let y = dot(&phi, &DVector::from_column_slice(&beta)) + noise;
            stats.add(&phi, y);
        }
        let post = stats.posterior().unwrap();
        for (m, b) in post.mean().iter().zip(beta) {
            assert!((m - b).abs() < 0.02, "{m} vs {b}");
        }
        // Draws: mean near μ, spread small but non-zero (σ ≈ 0.1, n = 2000: sd ≈ 0.004).
        let draws: Vec<DVector<f64>> = (0..500).map(|_| post.sample(&mut rng)).collect();
        let first: Vec<f64> = draws.iter().map(|d| d[0]).collect();
        let mean = first.iter().sum::<f64>() / 500.0;
        let sd = (first.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 499.0).sqrt();
        assert!((mean - post.mean()[0]).abs() < 0.01, "{mean}");
        assert!(sd > 0.0005 && sd < 0.05, "{sd}");
    }

    /// Batch and one-by-one updates give the same posterior.
    #[test]
    fn batch_equals_sequential() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
        let rows: Vec<f32> = (0..40).map(|_| rng.random_range(-2.0..2.0)).collect();
        let ys: Vec<f64> = (0..10).map(|i| i as f64 * 0.3 - 1.0).collect();
        let mut one = LinearStats::new(4, PRIOR);
        for (row, &y) in rows.chunks(4).zip(&ys) {
            one.add(row, y);
        }
        let mut batch = LinearStats::new(4, PRIOR);
        batch.add_batch(&rows, &ys);
        let (a, b) = (one.posterior().unwrap(), batch.posterior().unwrap());
        assert!((a.mean() - b.mean()).amax() < 1e-9);
        assert!((a.scale - b.scale).abs() < 1e-9 && a.shape == b.shape);
    }

    /// The scalar shortcut draws `φᵀβ` with the same mean and spread as `φᵀ` of full draws
    /// (4000 each; the sd's standard error is about 1.1%, the margins 6 to 10 of them).
    #[test]
    fn predictive_matches_full_draws() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(9);
        let mut stats = LinearStats::new(3, PRIOR);
        for i in 0..40 {
            let x = i as f32 / 40.0;
            stats.add(
                &[x, 1.0 - x, 1.0],
                f64::from(x) * 2.0 + 0.3 * ((i % 3) as f64 - 1.0),
            );
        }
        let post = stats.posterior().unwrap();
        let phi = [0.9f32, -0.5, 1.0];
        let moments = |v: &[f64]| {
            let m = v.iter().sum::<f64>() / v.len() as f64;
            let sd = (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
            (m, sd)
        };
        let full: Vec<f64> = (0..4000)
            .map(|_| dot(&phi, &post.sample(&mut rng)))
            .collect();
        let pred = post.predictive(&phi);
        let fast: Vec<f64> = (0..4000).map(|_| pred.sample(&mut rng)).collect();
        let ((m1, s1), (m2, s2)) = (moments(&full), moments(&fast));
        assert!(
            (m1 - pred.mean()).abs() < 0.1 * s1,
            "{m1} vs {}",
            pred.mean()
        );
        assert!(
            (m2 - pred.mean()).abs() < 0.1 * s1,
            "{m2} vs {}",
            pred.mean()
        );
        assert!((s1 / s2 - 1.0).abs() < 0.07, "sd {s1} vs {s2}");
    }

    /// The packed `L⁻¹` rows give nalgebra's `‖L⁻¹φ‖²` to f32 rounding.
    #[test]
    fn packed_spread_matches_the_triangular_solve() {
        let mut stats = LinearStats::new(7, PRIOR);
        for i in 0..50 {
            let x = i as f32 / 50.0;
            let phi: Vec<f32> = (0..7).map(|k| ((k + 1) as f32 * x).sin()).collect();
            stats.add(&phi, f64::from(x));
        }
        let post = stats.posterior().unwrap();
        let phi: Vec<f32> = (0..7).map(|k| 0.3 - 0.1 * k as f32).collect();
        let phi64 = DVector::from_iterator(7, phi.iter().map(|&v| f64::from(v)));
        let exact = post
            .chol_l
            .solve_lower_triangular(&phi64)
            .unwrap()
            .norm_squared();
        let fast = post.predictive(&phi).spread;
        assert!((fast - exact).abs() <= 1e-5 * exact, "{fast} vs {exact}");
    }

    /// Without data, draws follow the prior: wide (σ²/λ with E σ² = 1.2 gives sd ≈ 2.2),
    /// and an unseen direction stays wide while a well-observed one narrows.
    #[test]
    fn uncertainty_shrinks_only_where_data_is() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(8);
        let mut stats = LinearStats::new(2, PRIOR);
        for _ in 0..500 {
            stats.add(&[1.0, 0.0], 0.0);
        }
        let post = stats.posterior().unwrap();
        let draws: Vec<DVector<f64>> = (0..400).map(|_| post.sample(&mut rng)).collect();
        let sd = |i: usize| {
            let v: Vec<f64> = draws.iter().map(|d| d[i]).collect();
            let m = v.iter().sum::<f64>() / v.len() as f64;
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt()
        };
        assert!(sd(0) < 0.1, "observed direction sd {}", sd(0));
        assert!(sd(1) > 10.0 * sd(0), "unseen {} vs seen {}", sd(1), sd(0));
    }
}
