//! MC-dropout masks, drawn on the host from an RNG the caller owns.
//!
//! One draw of every layer's mask is one posterior sample of the weights (README "The method" §1):
//! masking the units that feed a layer is masking that layer's weight columns. Masks are drawn
//! here rather than with `candle_nn::ops::dropout` for three reasons: candle's CPU RNG cannot
//! be seeded, its dropout draws an independent mask per row (a decision must share one mask
//! across all its arms), and drawing on the host measured about half the cost.

use candle_core::{Device, Result, Tensor};
use rand::Rng;

/// A set of masks, one per weight layer (`None` where that layer's drop rate is 0).
pub type Masks = Vec<Option<Tensor>>;

/// Draws one mask per weight layer with `rows` rows.
///
/// `dims[l]` is the width of the units feeding layer `l` (the input, then each hidden layer)
/// and `rates[l]` their drop rate. Kept units are scaled by `1 / (1 - rate)` (inverted
/// dropout), so the expected activation equals the unmasked one. With `rows == 1` the mask
/// broadcasts over every row of the input: the same posterior sample scores every arm.
///
/// # Errors
/// Only if candle cannot build the tensor.
pub fn draw_masks<R: Rng>(
    rng: &mut R,
    dims: &[usize],
    rates: &[f64],
    rows: usize,
    device: &Device,
) -> Result<Masks> {
    dims.iter()
        .zip(rates)
        .map(|(&dim, &rate)| {
            if rate <= 0.0 {
                return Ok(None);
            }
            let keep = 1.0 - rate;
            let scale = (1.0 / keep) as f32;
            let values: Vec<f32> = (0..rows * dim)
                .map(|_| {
                    if rng.random::<f64>() < keep {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            Tensor::from_vec(values, (rows, dim), device).map(Some)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    use super::*;

    /// Kept units are scaled by 1/(1-rate), dropped ones are 0, rate 0 gives no mask.
    #[test]
    fn inverted_scaling_and_rate_zero() {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
        let masks = draw_masks(&mut rng, &[3, 1000], &[0.0, 0.2], 1, &Device::Cpu).unwrap();
        assert!(masks[0].is_none());
        let m: Vec<f32> = masks[1]
            .as_ref()
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(m.iter().all(|&v| v == 0.0 || (v - 1.25).abs() < 1e-6));
        let dropped = m.iter().filter(|&&v| v == 0.0).count();
        // Binomial(1000, 0.2): mean 200, sd 12.6; the bound is over 7 sd wide.
        assert!((110..290).contains(&dropped), "{dropped}");
    }

    /// The same seed gives the same masks.
    #[test]
    fn seeded() {
        let draw = |seed| {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
            let masks = draw_masks(&mut rng, &[50], &[0.5], 2, &Device::Cpu).unwrap();
            masks[0].as_ref().unwrap().to_vec2::<f32>().unwrap()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
