//! Measurements of black-box score functions: the effective receptive
//! field and the circular-shift equivariance error.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::check::{check_amplitude, check_tolerance, in_window, reduce_shift, sign};
use crate::equivariance::Boundary;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::real::Real;
use crate::score::ScoreFunction;

/// The largest number of trials [`effective_receptive_field_with`]
/// accepts: every trial costs up to one evaluation per probed pixel and
/// side.
pub const MAX_TRIALS: usize = 1_000_000;

/// How [`effective_receptive_field_with`] probes a score function.
#[derive(Clone, Debug, PartialEq)]
pub struct ReceptiveFieldProbe {
    /// The size of every perturbation: each perturbed value moves by
    /// `+amplitude` or `-amplitude`.
    pub amplitude: f64,
    /// Number of independent sign patterns tried, from 1 to
    /// [`MAX_TRIALS`].
    pub trials: usize,
    /// Seed of the signs: trial `j` draws its signs from a ChaCha8
    /// generator seeded with `seed + j`, one per value of the image in
    /// channel-major order.
    pub seed: u64,
    /// The output pixel `(row, col)` probed, or `None` for every output
    /// pixel (the result is then the largest over them).
    pub pixel: Option<(usize, usize)>,
    /// Whether windows stop at the image edges ([`Boundary::Zero`]) or wrap
    /// around them ([`Boundary::Periodic`]).
    pub boundary: Boundary,
    /// The class passed to the score function.
    pub class: Option<usize>,
}

impl Default for ReceptiveFieldProbe {
    /// Amplitude 1, 4 trials, seed 0, every output pixel, windows stopping
    /// at the edges, no class.
    fn default() -> Self {
        ReceptiveFieldProbe {
            amplitude: 1.0,
            trials: 4,
            seed: 0,
            pixel: None,
            boundary: Boundary::Zero,
            class: None,
        }
    }
}

/// The effective receptive field of `score` at `phi_t = x`, time `t`,
/// probed as [`ReceptiveFieldProbe::default`] says: every output pixel,
/// 4 sign patterns of amplitude 1, windows stopping at the image edges.
///
/// # Errors
///
/// As [`effective_receptive_field_with`].
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
/// use score_machines::testing::effective_receptive_field;
///
/// let shape = Shape::new(1, 7, 7)?;
/// let pixels: Vec<f64> = (0..4 * 49).map(|i| ((i * 29) % 17) as f64 / 8.0 - 1.0).collect();
/// let training = TrainingSet::new(shape, pixels, None)?;
/// let local = Machine::local(training, LegacyCosine, SquarePatch::new(3)?)?;
/// let x = Image::from_vec(shape, (0..49).map(|i| ((i * 13) % 7) as f64 / 3.5 - 1.0).collect())?;
/// assert_eq!(effective_receptive_field(&local, &x, 0.5, 1e-9)?, 3);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub fn effective_receptive_field<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    x: &Image<T>,
    t: f64,
    tolerance: f64,
) -> Result<usize> {
    effective_receptive_field_with(score, x, t, tolerance, &ReceptiveFieldProbe::default())
}

/// The effective receptive field of `score` at `phi_t = x`, time `t`: the
/// smallest odd side `k` such that, for `k` and every larger odd side,
/// perturbing every input value outside the `k x k` window centred on an
/// output pixel moves no channel of that output pixel's `x0hat` by more
/// than `tolerance`.
///
/// Precisely, for an odd side `k` (half side `r = k / 2`), an output pixel
/// `p` and a trial `j`, the perturbed input is
/// `x'(c, z) = x(c, z) + amplitude * sign_j(c, z)` for every position `z`
/// outside the window (`|z_row - p_row| > r` or `|z_col - p_col| > r`, or
/// the circular distances with [`Boundary::Periodic`]) and `x'(c, z) =
/// x(c, z)` inside it, where `sign_j` is a fixed pattern of random signs
/// (see [`ReceptiveFieldProbe::seed`]). Side `k` passes if
/// `max_c |x0hat(x')(c, p) - x0hat(x)(c, p)| <= tolerance` for every
/// probed `p` and every trial. Sides are tried from the largest
/// non-covering one downwards, and the answer is the smallest side at
/// which every larger side also passes.
///
/// The answer is at most the smallest side whose window covers the whole
/// image from every pixel: `2 max(H, W) - 1` with windows stopping at the
/// edges, the smallest odd side `>= max(H, W)` with wrapping windows. A
/// score function that reads the whole image returns that bound. A side
/// that passes is evidence, not proof: a dependence the chosen sign
/// patterns do not excite goes unseen. The cost is up to
/// `(number of sides) * (probed pixels) * trials` evaluations.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance, an
/// amplitude that is not finite and positive, zero trials or more than
/// [`MAX_TRIALS`], or a probed pixel outside the image; any error of the
/// score function.
pub fn effective_receptive_field_with<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    x: &Image<T>,
    t: f64,
    tolerance: f64,
    probe: &ReceptiveFieldProbe,
) -> Result<usize> {
    check_tolerance(tolerance)?;
    check_amplitude(probe.amplitude)?;
    if probe.trials == 0 {
        return Err(Error::InvalidParameter(
            "the receptive field needs at least one trial".into(),
        ));
    }
    if probe.trials > MAX_TRIALS {
        return Err(Error::InvalidParameter(format!(
            "{} trials for the receptive field; at most {MAX_TRIALS} are allowed",
            probe.trials
        )));
    }
    let shape = x.shape();
    let pixels: Vec<(usize, usize)> = match probe.pixel {
        Some((row, col)) if row < shape.height && col < shape.width => vec![(row, col)],
        Some((row, col)) => {
            return Err(Error::InvalidParameter(format!(
                "probed pixel ({row}, {col}) outside a {shape} image"
            )));
        }
        None => (0..shape.height)
            .flat_map(|row| (0..shape.width).map(move |col| (row, col)))
            .collect(),
    };
    let periodic = probe.boundary == Boundary::Periodic;
    let longest = shape.height.max(shape.width);
    let covering = if periodic {
        longest | 1
    } else {
        2 * longest - 1
    };

    let base = score.x0_hat(x, t, probe.class)?;
    // Each sign pattern is drawn again where it is used, so that memory does
    // not grow with the number of trials.
    let pattern = |j: usize| -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(probe.seed.wrapping_add(j as u64));
        (0..shape.len()).map(|_| sign(&mut rng)).collect()
    };

    let passes = |side: usize| -> Result<bool> {
        let half = side / 2;
        for &(pr, pc) in &pixels {
            for j in 0..probe.trials {
                let pattern = pattern(j);
                let mut moved = x.clone();
                for c in 0..shape.channels {
                    for zr in 0..shape.height {
                        let row_in = in_window(
                            zr as isize - pr as isize,
                            half,
                            half,
                            shape.height,
                            periodic,
                        );
                        for zc in 0..shape.width {
                            let col_in = in_window(
                                zc as isize - pc as isize,
                                half,
                                half,
                                shape.width,
                                periodic,
                            );
                            if row_in && col_in {
                                continue;
                            }
                            let delta = probe.amplitude * pattern[shape.index(c, zr, zc)];
                            moved.set(c, zr, zc, T::narrow(x.get(c, zr, zc).widen() + delta));
                        }
                    }
                }
                let out = score.x0_hat(&moved, t, probe.class)?;
                for c in 0..shape.channels {
                    let change = (out.get(c, pr, pc).widen() - base.get(c, pr, pc).widen()).abs();
                    if change.is_nan() || change > tolerance {
                        return Ok(false);
                    }
                }
            }
        }
        Ok(true)
    };

    let mut answer = covering;
    let mut side = covering;
    while side >= 3 {
        side -= 2;
        if !passes(side)? {
            break;
        }
        answer = side;
    }
    Ok(answer)
}

/// The largest violation of circular-shift equivariance over `shifts`:
///
/// ```text
/// max over (dr, dc) in shifts, channels c and pixels p of
///     | x0hat(shift(x))(c, p) - x0hat(x)(c, p - (dr, dc) mod (H, W)) |
/// ```
///
/// where `shift(x)(c, i, j) = x(c, i - dr mod H, j - dc mod W)` (see
/// [`Image::shifted`]). Shifts are periodic: any `isize` is accepted and
/// taken modulo `H` and `W`. Every pixel is compared, edges included, so a
/// zero-padding machine shows its boundary effects here; 0 for an empty
/// `shifts`.
///
/// # Errors
///
/// Any error of the score function.
pub fn equivariance_error<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    x: &Image<T>,
    t: f64,
    shifts: &[(isize, isize)],
) -> Result<f64> {
    if shifts.is_empty() {
        return Ok(0.0);
    }
    let shape = x.shape();
    let base = score.x0_hat(x, t, None)?;
    let mut worst: f64 = 0.0;
    for &(rows, cols) in shifts {
        // Reduced to `0 .. H` and `0 .. W` (both fit in `isize`, as the
        // image length does), so that the shift back cannot overflow.
        let rows = reduce_shift(rows, shape.height) as isize;
        let cols = reduce_shift(cols, shape.width) as isize;
        let moved = score.x0_hat(&x.shifted(rows, cols), t, None)?;
        let unshifted_back = moved.shifted(-rows, -cols);
        for (a, b) in unshifted_back.as_slice().iter().zip(base.as_slice()) {
            let difference = (a.widen() - b.widen()).abs();
            if difference > worst || difference.is_nan() {
                worst = difference;
            }
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::Shape;
    use crate::schedule::LegacyCosine;
    use crate::score::{ClosureScore, Prediction};

    /// Output pixel `p` is the mean of the input over the `(2 reach + 1)`
    /// square around it, stopping at the edges.
    fn box_blur(reach: usize) -> impl ScoreFunction<f64> {
        ClosureScore::new(
            LegacyCosine,
            Prediction::CleanImage,
            None,
            move |x: &Image<f64>, _t: f64, _class: Option<usize>| {
                let s = x.shape();
                let mut out = Image::zeros(s);
                for r in 0..s.height {
                    for c in 0..s.width {
                        let mut sum = 0.0;
                        for zr in r.saturating_sub(reach)..(r + reach + 1).min(s.height) {
                            for zc in c.saturating_sub(reach)..(c + reach + 1).min(s.width) {
                                sum += x.get(0, zr, zc);
                            }
                        }
                        out.set(0, r, c, sum / 9.0);
                    }
                }
                Ok(out)
            },
        )
    }

    #[test]
    fn receptive_field_of_a_blur_is_its_window() {
        let shape = Shape::new(1, 6, 7).unwrap();
        let x = Image::from_vec(shape, (0..42).map(|i| i as f64 / 42.0).collect()).unwrap();
        for reach in 0..3 {
            let field = effective_receptive_field(&box_blur(reach), &x, 0.5, 1e-12).unwrap();
            assert_eq!(field, 2 * reach + 1);
        }
        let corner = ReceptiveFieldProbe {
            pixel: Some((0, 0)),
            ..ReceptiveFieldProbe::default()
        };
        let field = effective_receptive_field_with(&box_blur(2), &x, 0.5, 1e-12, &corner).unwrap();
        assert_eq!(field, 5);
    }

    #[test]
    fn a_global_function_has_the_covering_field() {
        let shape = Shape::new(1, 3, 4).unwrap();
        let mean = ClosureScore::new(
            LegacyCosine,
            Prediction::CleanImage,
            None,
            |x: &Image<f64>, _t: f64, _class: Option<usize>| {
                let m = x.as_slice().iter().sum::<f64>();
                Ok(Image::from_vec(x.shape(), vec![m; x.shape().len()]).unwrap())
            },
        );
        let x = Image::zeros(shape);
        assert_eq!(effective_receptive_field(&mean, &x, 0.5, 1e-12).unwrap(), 7);
        let periodic = ReceptiveFieldProbe {
            boundary: Boundary::Periodic,
            ..ReceptiveFieldProbe::default()
        };
        assert_eq!(
            effective_receptive_field_with(&mean, &x, 0.5, 1e-12, &periodic).unwrap(),
            5
        );
    }

    #[test]
    fn equivariance_error_of_a_blur_shows_only_at_edges() {
        let shape = Shape::new(1, 5, 5).unwrap();
        let x = Image::from_vec(shape, (0..25).map(|i| (i % 4) as f64).collect()).unwrap();
        let identity = box_blur(0);
        assert_eq!(
            equivariance_error(&identity, &x, 0.5, &[(1, 2), (-3, 0)]).unwrap(),
            0.0
        );
        assert!(equivariance_error(&box_blur(1), &x, 0.5, &[(1, 0)]).unwrap() > 0.1);
    }
}
