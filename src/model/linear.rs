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
        let l_inv_blocks = inverse_blocks(&chol_l);
        Ok(LinearPosterior {
            mean,
            chol_l,
            l_inv_blocks,
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
    /// `L⁻¹`'s lower triangle in blocks of 8 rows, each block column by column (see
    /// [`inverse_blocks`]), in f32, computed once per posterior on the learner thread.
    /// Serving gets `w = L⁻¹φ` eight rows at a time as a sum of columns scaled by `φⱼ`: no
    /// dependent chain (a triangular solve is one, ~1.6 µs per head at d = 101) and no
    /// horizontal sum per row (a dot product per row of `L⁻¹` was one: still 21 % of
    /// serving CPU under load, perf).
    l_inv_blocks: Vec<f32>,
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
        let d = self.dim().min(phi.len());
        let (mean, spread) = moments(&self.l_inv_blocks, self.mean.as_slice(), &phi[..d]);
        Predictive {
            posterior: self,
            mean,
            spread: if spread.is_finite() { spread } else { 0.0 },
        }
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

/// Rows of `L⁻¹` per block: one AVX register of f32 (two SSE ones).
const BLOCK: usize = 8;

/// The lower triangle of `l⁻¹` (lower triangular too) in f32, in blocks of [`BLOCK`] rows:
/// block `b` holds rows `8b..8b+8` over columns `0..min(8b+8, d)`, column by column (the 8
/// rows' entries of column 0, then of column 1, ...), with zeros above the diagonal and past
/// row `d`. Block `b` is all of those rows' nonzeros, so `w = L⁻¹φ` for them is
/// `Σⱼ φⱼ · column j`: 8-wide multiply-adds, independent across columns.
fn inverse_blocks(l: &DMatrix<f64>) -> Vec<f32> {
    let d = l.nrows();
    let inv = l
        .solve_lower_triangular(&DMatrix::identity(d, d))
        .unwrap_or_else(|| DMatrix::zeros(d, d));
    let mut out = Vec::with_capacity(
        (0..d.div_ceil(BLOCK))
            .map(|b| block_cols(b, d) * BLOCK)
            .sum(),
    );
    for b in 0..d.div_ceil(BLOCK) {
        for j in 0..block_cols(b, d) {
            for k in 0..BLOCK {
                let i = b * BLOCK + k;
                out.push(if i < d && j <= i {
                    inv[(i, j)] as f32
                } else {
                    0.0
                });
            }
        }
    }
    out
}

/// Columns stored for block `b` of a `d`-dimensional factor.
fn block_cols(b: usize, d: usize) -> usize {
    ((b + 1) * BLOCK).min(d)
}

/// `(φᵀμ, ‖L⁻¹φ‖²)` from `μ` and the [`inverse_blocks`] of a `μ.len()`-dimensional factor
/// (`phi` may be shorter: the missing values count as 0). Uses AVX2 and FMA where the CPU has
/// them (checked once at run time; the portable build targets SSE2 only).
fn moments(blocks: &[f32], mean: &[f64], phi: &[f32]) -> (f64, f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `moments_avx2` is compiled for (checked
            // just above).
            return unsafe { moments_avx2(blocks, mean, phi) };
        }
    }
    moments_with::<false>(blocks, mean, phi)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn moments_avx2(blocks: &[f32], mean: &[f64], phi: &[f32]) -> (f64, f64) {
    moments_with::<true>(blocks, mean, phi)
}

/// The body of [`moments`], compiled once per instruction set (`FMA`: fused multiply-adds,
/// which Rust never forms by itself).
#[inline(always)]
fn moments_with<const FMA: bool>(blocks: &[f32], mean: &[f64], phi: &[f32]) -> (f64, f64) {
    // Eight partial sums: a single running sum would be a chain of dependent additions
    // (it was 13 % of a decision's CPU, perf).
    let mut acc = [0.0f64; 8];
    // A `phi` shorter than the mean counts the missing values as 0: pair the same prefixes.
    let used = phi.len().min(mean.len());
    let (phi8, phi_rest) = phi[..used].as_chunks::<8>();
    let (mean8, mean_rest) = mean[..used].as_chunks::<8>();
    for (p, m) in phi8.iter().zip(mean8) {
        for k in 0..8 {
            acc[k] = if FMA {
                f64::from(p[k]).mul_add(m[k], acc[k])
            } else {
                acc[k] + f64::from(p[k]) * m[k]
            };
        }
    }
    let mut dot = acc.iter().sum::<f64>();
    for (&p, &m) in phi_rest.iter().zip(mean_rest) {
        dot += f64::from(p) * m;
    }
    #[cfg(target_arch = "x86_64")]
    if FMA {
        // SAFETY: `FMA` is only true inside `moments_avx2`, compiled for AVX2 and FMA and
        // called only where the CPU has them.
        return (dot, unsafe { blocked_norm2_avx2(blocks, phi, mean.len()) });
    }
    (dot, blocked_norm2_with::<FMA>(blocks, phi, mean.len()))
}

/// [`blocked_norm2_with`] in AVX2 intrinsics, the same sums in the same order: the
/// compiler's own vectorisation of the portable body kept half of the accumulators in
/// memory (perf), and the lanes of one block are exactly one `__m256`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn blocked_norm2_avx2(blocks: &[f32], phi: &[f32], d: usize) -> f64 {
    use std::arch::x86_64::{
        _mm256_add_pd, _mm256_add_ps, _mm256_castps256_ps128, _mm256_cvtps_pd,
        _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_ps, _mm256_mul_ps, _mm256_set1_ps,
        _mm256_setzero_pd, _mm256_setzero_ps, _mm256_storeu_pd,
    };
    const _: () = assert!(BLOCK == 8);
    let mut squares_lo = _mm256_setzero_pd();
    let mut squares_hi = _mm256_setzero_pd();
    let mut start = 0;
    for b in 0..d.div_ceil(BLOCK) {
        let cols = block_cols(b, d);
        let block = &blocks[start..start + cols * BLOCK];
        start += cols * BLOCK;
        let used = cols.min(phi.len());
        let mut acc = [_mm256_setzero_ps(); 8];
        // Fixed-size chunks: no bounds check per column (with them this loop ran 1.5×
        // slower than the autovectorised one it replaces).
        let (groups, rest) = block[..used * BLOCK].as_chunks::<{ 8 * BLOCK }>();
        let (phi8, phi_rest) = phi[..used].as_chunks::<8>();
        for (columns, p) in groups.iter().zip(phi8) {
            for (u, a) in acc.iter_mut().enumerate() {
                let c = &columns[u * BLOCK..(u + 1) * BLOCK];
                // SAFETY: `c` is 8 f32 values; `loadu` needs no alignment.
                let c = unsafe { _mm256_loadu_ps(c.as_ptr()) };
                *a = _mm256_fmadd_ps(c, _mm256_set1_ps(p[u]), *a);
            }
        }
        let (columns, _) = rest.as_chunks::<BLOCK>();
        for (c, &p) in columns.iter().zip(phi_rest) {
            // SAFETY: `c` is 8 f32 values; `loadu` needs no alignment.
            let c = unsafe { _mm256_loadu_ps(c.as_ptr()) };
            acc[0] = _mm256_fmadd_ps(c, _mm256_set1_ps(p), acc[0]);
        }
        let w = _mm256_add_ps(
            _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3])),
            _mm256_add_ps(_mm256_add_ps(acc[4], acc[5]), _mm256_add_ps(acc[6], acc[7])),
        );
        let sq = _mm256_mul_ps(w, w);
        squares_lo = _mm256_add_pd(squares_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(sq)));
        squares_hi = _mm256_add_pd(squares_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(sq, 1)));
    }
    let mut squares = [0.0f64; 8];
    let (lo, hi) = squares.split_at_mut(4);
    // SAFETY: each half is 4 f64 values; `storeu` needs no alignment.
    unsafe {
        _mm256_storeu_pd(lo.as_mut_ptr(), squares_lo);
        _mm256_storeu_pd(hi.as_mut_ptr(), squares_hi);
    }
    let total = (squares[0] + squares[1]) + (squares[2] + squares[3]);
    total + ((squares[4] + squares[5]) + (squares[6] + squares[7]))
}

/// `‖L⁻¹φ‖²` from [`inverse_blocks`] of a `d`-dimensional factor (`phi` may be shorter: the
/// missing values count as 0), on the portable instruction set: the reference the tests
/// check the AVX2 path against.
#[cfg(test)]
fn blocked_norm2(blocks: &[f32], phi: &[f32], d: usize) -> f64 {
    blocked_norm2_with::<false>(blocks, phi, d)
}

/// The body of `‖L⁻¹φ‖²`. Eight accumulators per block, so that consecutive columns do not
/// wait on each other's additions (four measured latency-bound).
#[inline(always)]
fn blocked_norm2_with<const FMA: bool>(blocks: &[f32], phi: &[f32], d: usize) -> f64 {
    const LANES: usize = 8;
    let madd = |acc: f32, a: f32, b: f32| if FMA { a.mul_add(b, acc) } else { acc + a * b };
    let mut squares = [0.0f64; BLOCK];
    let mut start = 0;
    for b in 0..d.div_ceil(BLOCK) {
        let cols = block_cols(b, d);
        let block = &blocks[start..start + cols * BLOCK];
        start += cols * BLOCK;
        let used = cols.min(phi.len());
        let mut acc = [[0.0f32; BLOCK]; LANES];
        let groups = block[..used * BLOCK].chunks_exact(LANES * BLOCK);
        let rest = groups.remainder();
        for (columns, p) in groups.zip(phi.chunks_exact(LANES)) {
            for (u, column) in columns.chunks_exact(BLOCK).enumerate() {
                for k in 0..BLOCK {
                    acc[u][k] = madd(acc[u][k], column[k], p[u]);
                }
            }
        }
        let done = used - rest.len() / BLOCK;
        // The last < 8 columns on one chain: a dynamic accumulator index would keep `acc`
        // in memory instead of registers.
        for (column, &p) in rest.chunks_exact(BLOCK).zip(&phi[done..used]) {
            for k in 0..BLOCK {
                acc[0][k] = madd(acc[0][k], column[k], p);
            }
        }
        // Lane by lane, so that the sums stay in vector registers; squares summed per lane
        // (a single running total was a chain of dependent additions).
        for k in 0..BLOCK {
            let w = ((acc[0][k] + acc[1][k]) + (acc[2][k] + acc[3][k]))
                + ((acc[4][k] + acc[5][k]) + (acc[6][k] + acc[7][k]));
            squares[k] += f64::from(w * w);
        }
    }
    let total = (squares[0] + squares[1]) + (squares[2] + squares[3]);
    total + ((squares[4] + squares[5]) + (squares[6] + squares[7]))
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

    /// A `φ` shorter than the posterior counts the missing values as 0, on every path: the
    /// same mean and spread as the zero-padded `φ` (dimensions and lengths across a block's
    /// edge).
    #[test]
    fn short_phi_is_zero_padded() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
        for (d, short) in [(12, 5), (16, 10), (101, 37), (9, 8)] {
            let mut stats = LinearStats::new(d, PRIOR);
            for _ in 0..3 * d {
                let row: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y = f64::from(row[0]) - 2.0 * f64::from(row[d - 1]) + 0.5;
                stats.add(&row, y);
            }
            let post = stats.posterior().unwrap();
            let phi: Vec<f32> = (0..short).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut padded = phi.clone();
            padded.resize(d, 0.0);
            let (a, b) = (post.predictive(&phi), post.predictive(&padded));
            assert!(
                (a.mean() - b.mean()).abs() < 1e-9,
                "d {d}: {} vs {}",
                a.mean(),
                b.mean()
            );
            // The spread sums f32 products, in a different order when the zeros are there.
            assert!(
                (a.spread - b.spread).abs() < 1e-6 * b.spread,
                "d {d}: {} vs {}",
                a.spread,
                b.spread
            );
            let portable = moments_with::<false>(&post.l_inv_blocks, post.mean.as_slice(), &phi);
            assert!((portable.0 - b.mean()).abs() < 1e-9, "d {d}: portable mean");
        }
    }

    /// The blocked `L⁻¹` gives nalgebra's `‖L⁻¹φ‖²` to f32 rounding, for dimensions around a
    /// block's edge, on the AVX2 path and the portable one.
    #[test]
    fn packed_spread_matches_the_triangular_solve() {
        for d in [1, 7, 8, 9, 16, 33, 101] {
            let mut stats = LinearStats::new(d, PRIOR);
            for i in 0..(50 + 2 * d) {
                let x = i as f32 / 50.0;
                let phi: Vec<f32> = (0..d).map(|k| ((k + 1) as f32 * x).sin()).collect();
                stats.add(&phi, f64::from(x));
            }
            let post = stats.posterior().unwrap();
            let phi: Vec<f32> = (0..d).map(|k| 0.3 - 0.1 * (k % 11) as f32).collect();
            let phi64 = DVector::from_iterator(d, phi.iter().map(|&v| f64::from(v)));
            let exact = post
                .chol_l
                .solve_lower_triangular(&phi64)
                .unwrap()
                .norm_squared();
            let fast = post.predictive(&phi).spread;
            let portable = blocked_norm2(&post.l_inv_blocks, &phi, d);
            for got in [fast, portable] {
                assert!(
                    (got - exact).abs() <= 1e-5 * exact,
                    "d {d}: {got} vs {exact}"
                );
            }
        }
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
