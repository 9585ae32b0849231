//! The serving forward pass in plain Rust, over contiguous `f32` copies of the weights.
//!
//! A decision is a batch of one row (or a few candidate rows), where candle's per-op dispatch
//! and per-op allocation cost several times the arithmetic (benches/README.md: 2.6-2.8× at
//! batch 1). [`Dense`] is copied out of the tensors once per publish, on the learner thread;
//! a pass allocates nothing (the caller lends a [`Scratch`]), reads the masks as per-unit
//! scales ([`HostMasks`]), and skips every input unit that is 0 (dropped by its mask or cut
//! by the ReLU: about half of each hidden layer), which changes no result: such a unit adds
//! `0 · w` to every output.
//!
//! The arithmetic is candle's up to the order of the additions (within 1e-5, tested against
//! candle in `model::tests`). AVX2 and FMA are used where the CPU has them (checked at run
//! time, as `linear.rs` does; the portable build targets SSE2 only).

use candle_core::{Device, Error, Result, Tensor};
use rand::Rng;

/// The weights of a ReLU MLP as row-major `f32` arrays, for the serving pass.
#[derive(Debug, Clone)]
pub struct Dense {
    layers: Vec<Layer>,
    /// Mean outputs: the last layer's first `means` columns (a heteroscedastic network has
    /// as many log variances after them, which serving never reads).
    means: usize,
}

/// One weight layer: `w` is `(fan_in, fan_out)` row-major (as the tensors store it), so
/// the pass adds input unit `i`'s row `w[i]`, scaled by the unit, to the outputs.
#[derive(Debug, Clone)]
struct Layer {
    fan_in: usize,
    fan_out: usize,
    w: Vec<f32>,
    b: Vec<f32>,
}

/// Buffers a pass works in, lent by the caller so that a pass allocates nothing once they
/// have grown to the network's widths.
#[derive(Debug, Default)]
pub struct Scratch {
    a: Vec<f32>,
    b: Vec<f32>,
    /// The nonzero inputs of the layer being computed: `(unit, scaled value)`.
    nonzero: Vec<(u32, f32)>,
}

/// Dropout masks drawn on the host for [`Dense`]: per weight layer, `rows` rows of the
/// scale of each unit feeding it (0 = dropped, `1/(1 − rate)` = kept), layer-major as
/// [`super::draw_masks`] draws them; empty where the rate is 0 (no mask). Reused between
/// draws.
#[derive(Debug, Default, Clone)]
pub struct HostMasks {
    layers: Vec<Vec<f32>>,
    rows: usize,
}

impl HostMasks {
    /// Draws `rows` mask rows per layer from `rng`, consuming exactly the random numbers
    /// [`super::draw_masks`] would for the same arguments, in the same order, and keeping
    /// the same units: unit kept when `random::<f64>() < 1 − rate`, i.e. when the top 53
    /// bits of the next `u64` are below `⌈(1 − rate)·2⁵³⌉` (exact: both sides are integers
    /// below 2⁵³, and `(1 − rate)·2⁵³` is an exact power-of-two scaling).
    pub fn draw<R: Rng>(&mut self, rng: &mut R, dims: &[usize], rates: &[f64], rows: usize) {
        self.draw_each(rng, dims.iter().copied(), rates, rows);
    }

    /// [`HostMasks::draw`] for the widths `dims` (no allocation for them).
    pub(super) fn draw_each<R: Rng>(
        &mut self,
        rng: &mut R,
        dims: impl Iterator<Item = usize>,
        rates: &[f64],
        rows: usize,
    ) {
        // One rate per layer (the shape's invariant); `zip` stops at the shorter anyway.
        self.layers.resize_with(rates.len(), Vec::new);
        self.rows = rows;
        for ((mask, dim), &rate) in self.layers.iter_mut().zip(dims).zip(rates) {
            mask.clear();
            if rate <= 0.0 {
                continue;
            }
            let keep = 1.0 - rate;
            let scale = (1.0 / keep) as f32;
            let threshold = (keep * (1u64 << 53) as f64).ceil() as u64;
            mask.extend((0..rows * dim).map(|_| {
                if (rng.next_u64() >> 11) < threshold {
                    scale
                } else {
                    0.0
                }
            }));
        }
    }

    /// Row `row` of layer `l`'s mask; `None` without a mask there.
    fn row(&self, l: usize, row: usize, dim: usize) -> Option<&[f32]> {
        let mask = self.layers.get(l)?;
        mask.get(row * dim..(row + 1) * dim)
    }

    /// Mask rows drawn.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row `row` of every layer's mask as candle masks (one row each), for the batched
    /// candle pass that scores many candidate rows under one mask set.
    ///
    /// # Errors
    /// No such row, or candle cannot build a tensor.
    pub fn to_candle(&self, row: usize) -> Result<super::Masks> {
        self.layers
            .iter()
            .map(|mask| {
                if mask.is_empty() {
                    return Ok(None);
                }
                let dim = mask.len() / self.rows.max(1);
                let values = mask
                    .get(row * dim..(row + 1) * dim)
                    .ok_or_else(|| Error::Msg(format!("no mask row {row}")))?;
                Tensor::from_slice(values, (1, dim), &Device::Cpu).map(Some)
            })
            .collect()
    }

    /// Every row of every layer's mask as candle masks (`(rows, dim)` each), for batched
    /// candle passes over many samples.
    ///
    /// # Errors
    /// candle cannot build a tensor.
    pub fn to_candle_all(&self) -> Result<super::Masks> {
        self.layers
            .iter()
            .map(|mask| {
                if mask.is_empty() {
                    return Ok(None);
                }
                let rows = self.rows.max(1);
                Tensor::from_slice(mask, (rows, mask.len() / rows), &Device::Cpu).map(Some)
            })
            .collect()
    }

    /// Layer `l`'s values, `rows × dim` (empty: no mask), for checks against candle.
    pub fn layer(&self, l: usize) -> &[f32] {
        self.layers.get(l).map_or(&[], Vec::as_slice)
    }
}

/// Which output a pass stops at.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Until {
    /// The mean outputs.
    Means,
    /// The last hidden layer's activations (NeuralLinear's features).
    LastHidden,
}

impl Dense {
    /// The arrays of `layers`, `(w (fan_in, fan_out) row-major, b (fan_out))` each, whose
    /// last layer's first `means` columns are the mean outputs.
    ///
    /// # Errors
    /// Arrays whose lengths do not chain into a network.
    pub fn new(layers: Vec<(Vec<f32>, Vec<f32>)>, means: usize) -> Result<Self> {
        let mut out = Vec::with_capacity(layers.len());
        for (l, (w, b)) in layers.into_iter().enumerate() {
            let fan_out = b.len();
            if fan_out == 0 || w.len() % fan_out != 0 {
                return Err(Error::Msg(format!(
                    "layer {l}: {} weights for {fan_out} outputs",
                    w.len()
                )));
            }
            let fan_in = w.len() / fan_out;
            if let Some(prev) = out.last().map(|p: &Layer| p.fan_out)
                && prev != fan_in
            {
                return Err(Error::Msg(format!(
                    "layer {l}: {fan_in} inputs after {prev} outputs"
                )));
            }
            out.push(Layer {
                fan_in,
                fan_out,
                w,
                b,
            });
        }
        match out.last() {
            Some(last) if means <= last.fan_out => Ok(Self { layers: out, means }),
            _ => Err(Error::Msg(format!(
                "no output layer with {means} mean outputs"
            ))),
        }
    }

    /// Width of the input.
    pub fn input_dim(&self) -> usize {
        self.layers.first().map_or(0, |l| l.fan_in)
    }

    /// Width of the mean outputs.
    pub fn means(&self) -> usize {
        self.means
    }

    /// Width of the last hidden layer (0 without hidden layers).
    pub fn last_hidden_dim(&self) -> usize {
        match self.layers.len() {
            0 | 1 => 0,
            n => self.layers[n - 2].fan_out,
        }
    }

    /// The mean outputs of input row `x` under row `mask_row` of `masks` (`None`: every unit
    /// kept), as candle's `Weights::forward` computes them; `means()` values.
    ///
    /// # Errors
    /// `x` or a mask does not fit the network.
    pub fn forward<'s>(
        &self,
        x: &[f32],
        masks: Option<(&HostMasks, usize)>,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        self.pass(x, masks, Until::Means, scratch)
    }

    /// The last hidden layer's activations for input row `x` under row `mask_row` of `masks`
    /// (the last layer's mask, on the features themselves, is not used), as candle's
    /// `Weights::last_hidden` computes them.
    ///
    /// # Errors
    /// `x` or a mask does not fit the network, or the network has no hidden layer.
    pub fn last_hidden<'s>(
        &self,
        x: &[f32],
        masks: Option<(&HostMasks, usize)>,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        if self.layers.len() < 2 {
            return Err(Error::Msg("the network has no hidden layer".into()));
        }
        self.pass(x, masks, Until::LastHidden, scratch)
    }

    fn pass<'s>(
        &self,
        x: &[f32],
        masks: Option<(&HostMasks, usize)>,
        until: Until,
        scratch: &'s mut Scratch,
    ) -> Result<&'s [f32]> {
        if x.len() != self.input_dim() {
            return Err(Error::Msg(format!(
                "input of {} values for a network of {}",
                x.len(),
                self.input_dim()
            )));
        }
        let count = match until {
            Until::Means => self.layers.len(),
            Until::LastHidden => self.layers.len() - 1,
        };
        let last = self.layers.len() - 1;
        let Scratch { a, b, nonzero } = scratch;
        a.clear();
        a.extend_from_slice(x);
        for (l, layer) in self.layers[..count].iter().enumerate() {
            let mask = match masks {
                Some((m, row)) if !m.layer(l).is_empty() => {
                    Some(m.row(l, row, layer.fan_in).ok_or_else(|| {
                        Error::Msg(format!("no mask row {row} of width {}", layer.fan_in))
                    })?)
                }
                _ => None,
            };
            let cols = if l == last { self.means } else { layer.fan_out };
            nonzero.clear();
            match mask {
                Some(mask) => nonzero.extend(
                    a.iter()
                        .zip(mask)
                        .enumerate()
                        .map(|(i, (&v, &m))| (i as u32, v * m))
                        .filter(|&(_, v)| v != 0.0),
                ),
                None => nonzero.extend(
                    a.iter()
                        .enumerate()
                        .map(|(i, &v)| (i as u32, v))
                        .filter(|&(_, v)| v != 0.0),
                ),
            }
            b.clear();
            b.extend_from_slice(&layer.b[..cols]);
            layer_sum(&layer.w, layer.fan_out, nonzero, b);
            if l < last {
                for v in b.iter_mut() {
                    *v = v.max(0.0);
                }
            }
            std::mem::swap(a, b);
        }
        Ok(a.as_slice())
    }
}

/// `out[j] += Σ (i, v) ∈ nonzero: v · w[i][j]` for `j < out.len()`, `w` row-major with rows
/// of `fan_out`.
fn layer_sum(w: &[f32], fan_out: usize, nonzero: &[(u32, f32)], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports the features `layer_sum_avx2` is compiled for
            // (checked just above).
            return unsafe { layer_sum_avx2(w, fan_out, nonzero, out) };
        }
    }
    layer_sum_with::<false>(w, fan_out, nonzero, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn layer_sum_avx2(w: &[f32], fan_out: usize, nonzero: &[(u32, f32)], out: &mut [f32]) {
    layer_sum_with::<true>(w, fan_out, nonzero, out);
}

/// Output columns per register block: four AVX registers of accumulators, which stay in
/// registers across the whole sum over the inputs.
const COLS: usize = 32;

/// The body of [`layer_sum`], compiled once per instruction set (`FMA`: fused multiply-adds,
/// which Rust never forms by itself).
#[inline(always)]
fn layer_sum_with<const FMA: bool>(
    w: &[f32],
    fan_out: usize,
    nonzero: &[(u32, f32)],
    out: &mut [f32],
) {
    let madd = |acc: f32, a: f32, b: f32| if FMA { a.mul_add(b, acc) } else { acc + a * b };
    let mut start = 0;
    let (blocks, rest) = out.as_chunks_mut::<COLS>();
    for block in blocks {
        let mut acc = *block;
        for &(i, v) in nonzero {
            let row = i as usize * fan_out + start;
            // A fixed-size array: no bounds check per column, and `acc` stays in registers.
            let Some(ws) = w
                .get(row..row + COLS)
                .and_then(|ws| <&[f32; COLS]>::try_from(ws).ok())
            else {
                continue;
            };
            for k in 0..COLS {
                acc[k] = madd(acc[k], v, ws[k]);
            }
        }
        *block = acc;
        start += COLS;
    }
    let width = rest.len();
    for &(i, v) in nonzero {
        let row = i as usize * fan_out + start;
        let Some(ws) = w.get(row..row + width) else {
            continue;
        };
        for (o, &x) in rest.iter_mut().zip(ws) {
            *o = madd(*o, v, x);
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;
    use crate::model::{NetShape, TrainableNet, matrix};

    fn close(plain: &[f32], candle: &[f32], what: &str) {
        assert_eq!(plain.len(), candle.len(), "{what}");
        for (p, c) in plain.iter().zip(candle) {
            assert!(
                (p - c).abs() <= 1e-5 * (1.0 + c.abs()),
                "{what}: plain {plain:?} vs candle {candle:?}"
            );
        }
    }

    /// The host masks keep the same units, with the same scales, as candle's masks drawn
    /// from the same RNG stream, and leave the stream in the same place.
    #[test]
    fn host_masks_are_the_candle_masks() {
        let dims = [3, 40, 17];
        for (seed, rates, rows) in [
            (1, [0.0, 0.1, 0.1], 1),
            (2, [0.5, 0.0, 0.3], 3),
            (3, [0.25, 0.75, 0.999], 2),
        ] {
            let mut a = Xoshiro256PlusPlus::seed_from_u64(seed);
            let mut b = Xoshiro256PlusPlus::seed_from_u64(seed);
            let candle =
                crate::model::draw_masks(&mut a, &dims, &rates, rows, &candle_core::Device::Cpu)
                    .unwrap();
            let mut host = HostMasks::default();
            host.draw(&mut b, &dims, &rates, rows);
            for (l, mask) in candle.iter().enumerate() {
                let want: Vec<f32> = mask
                    .as_ref()
                    .map_or(Vec::new(), |m| m.flatten_all().unwrap().to_vec1().unwrap());
                assert_eq!(host.layer(l), want.as_slice(), "seed {seed} layer {l}");
            }
            assert_eq!(
                a.random::<u64>(),
                b.random::<u64>(),
                "seed {seed}: streams diverged"
            );
        }
    }

    /// The plain pass gives candle's mean outputs and last hidden layer within 1e-5, for
    /// fixed-arm and per-arm shapes, a heteroscedastic network (means only), with and
    /// without masks, over several seeds.
    #[test]
    fn plain_pass_matches_candle() {
        let shapes = [
            (4, vec![16, 16], 5, 0.3),
            (7, vec![32, 24], 1, 0.5),
            (2, vec![100, 100], 5, 0.1),
            (3, vec![9], 2, 0.2),
        ];
        for seed in 1..=4u64 {
            for (input_dim, hidden, output_dim, rate) in &shapes {
                for heteroscedastic in [false, true] {
                    let shape = NetShape {
                        input_dim: *input_dim,
                        hidden: hidden.clone(),
                        output_dim: *output_dim,
                        drop_rates: vec![*rate; hidden.len() + 1],
                    };
                    let net = if heteroscedastic {
                        TrainableNet::new_heteroscedastic(shape.clone(), seed).unwrap()
                    } else {
                        TrainableNet::new(shape.clone(), seed).unwrap()
                    };
                    let weights = net.snapshot().unwrap();
                    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed + 100);
                    let rows = 3;
                    let xs: Vec<f32> = (0..rows * input_dim)
                        .map(|_| rng.random_range(-2.0..2.0))
                        .collect();
                    let what = format!("seed {seed} {shape:?} heteroscedastic {heteroscedastic}");
                    let mut scratch = Scratch::default();
                    for masked in [false, true] {
                        let mut a = Xoshiro256PlusPlus::seed_from_u64(seed);
                        let mut b = a.clone();
                        let candle_masks = shape.draw_masks(&mut a, 1).unwrap();
                        let mut host = HostMasks::default();
                        shape.draw_host_masks(&mut b, 1, &mut host);
                        let (cm, hm) = if masked {
                            (Some(&candle_masks), Some((&host, 0)))
                        } else {
                            (None, None)
                        };
                        let x = matrix(xs.clone(), rows, *input_dim).unwrap();
                        let want: Vec<Vec<f32>> =
                            weights.forward(&x, cm).unwrap().to_vec2().unwrap();
                        let hidden_want: Vec<Vec<f32>> =
                            weights.last_hidden(&x, cm).unwrap().to_vec2().unwrap();
                        let dense = weights.dense();
                        for (r, row) in xs.chunks(*input_dim).enumerate() {
                            let got = dense.forward(row, hm, &mut scratch).unwrap().to_vec();
                            close(&got, &want[r], &format!("{what} masked {masked} row {r}"));
                            let got = dense.last_hidden(row, hm, &mut scratch).unwrap().to_vec();
                            close(&got, &hidden_want[r], &format!("{what} hidden row {r}"));
                        }
                    }
                }
            }
        }
    }

    /// Inputs and masks that do not fit are errors, not panics.
    #[test]
    fn misfits_are_errors() {
        let shape = NetShape {
            input_dim: 3,
            hidden: vec![4],
            output_dim: 2,
            drop_rates: vec![0.5, 0.5],
        };
        let weights = TrainableNet::new(shape, 1).unwrap().snapshot().unwrap();
        let mut scratch = Scratch::default();
        assert!(
            weights
                .dense()
                .forward(&[1.0, 2.0], None, &mut scratch)
                .is_err()
        );
        let mut masks = HostMasks::default();
        masks.draw(
            &mut Xoshiro256PlusPlus::seed_from_u64(1),
            &[3, 4],
            &[0.5, 0.5],
            1,
        );
        assert!(
            weights
                .dense()
                .forward(&[1.0, 2.0, 3.0], Some((&masks, 1)), &mut scratch)
                .is_err()
        );
        assert!(Dense::new(vec![(vec![0.0; 6], vec![0.0; 4])], 1).is_err());
        assert!(
            Dense::new(
                vec![(vec![0.0; 6], vec![0.0; 2]), (vec![0.0; 6], vec![0.0; 2])],
                1
            )
            .is_err()
        );
    }
}
