//! Checks of the properties of score functions, each returning a
//! [`Verdict`] with the worst case found.

use std::fmt;

use proptest::test_runner::TestCaseError;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::equivariance::{Axis, Boundary};
use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::locality::Patch;
use crate::real::Real;
use crate::score::{Prediction, ScoreFunction};
use crate::training::TrainingSet;

/// Where a check evaluates a score function: the noisy image `phi_t`, the
/// time `t` and an optional class.
#[derive(Clone, Copy, Debug)]
pub struct Query<'a, T> {
    /// The noisy image `phi_t`.
    pub image: &'a Image<T>,
    /// The time `t` in `[0, 1]`.
    pub t: f64,
    /// The class to condition on, if any.
    pub class: Option<usize>,
}

impl<'a, T: Real> Query<'a, T> {
    /// Unconditional evaluation of `image` at time `t`.
    pub fn new(image: &'a Image<T>, t: f64) -> Self {
        Query {
            image,
            t,
            class: None,
        }
    }

    /// The same query conditioned on `class`.
    pub fn with_class(self, class: usize) -> Self {
        Query {
            class: Some(class),
            ..self
        }
    }

    fn x0_hat<F: ScoreFunction<T> + ?Sized>(&self, score: &F) -> Result<Image<T>> {
        score.x0_hat(self.image, self.t, self.class)
    }

    fn x0_hat_of<F: ScoreFunction<T> + ?Sized>(
        &self,
        score: &F,
        image: &Image<T>,
    ) -> Result<Image<T>> {
        score.x0_hat(image, self.t, self.class)
    }
}

/// The property a [`Verdict`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// See [`check_locality`].
    Locality,
    /// See [`check_translation_equivariance`].
    TranslationEquivariance,
    /// See [`check_convexity`].
    Convexity,
    /// See [`check_consistency`].
    Consistency,
    /// See [`check_permutation_invariance`].
    PermutationInvariance,
    /// See [`check_class_conditioning`].
    ClassConditioning,
    /// See [`check_agreement`].
    Agreement,
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Property::Locality => "locality",
            Property::TranslationEquivariance => "translation equivariance",
            Property::Convexity => "convexity",
            Property::Consistency => "consistency of score, epshat and x0hat",
            Property::PermutationInvariance => "training-set permutation invariance",
            Property::ClassConditioning => "class conditioning",
            Property::Agreement => "agreement with the reference",
        })
    }
}

/// One value of an image: channel, row and column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pixel {
    /// The channel.
    pub channel: usize,
    /// The row.
    pub row: usize,
    /// The column.
    pub col: usize,
}

impl fmt::Display for Pixel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "(channel {}, row {}, col {})",
            self.channel, self.row, self.col
        )
    }
}

/// One of the identities between the three predictions of a score
/// function, with `a = a(t)`, `s = s(t)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// `epshat = (phi_t - a x0hat) / s`.
    NoiseFromCleanImage,
    /// `score = -epshat / s`.
    ScoreFromNoise,
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Identity::NoiseFromCleanImage => "epshat = (phi_t - a x0hat) / s",
            Identity::ScoreFromNoise => "score = -epshat / s",
        })
    }
}

/// What produced the discrepancy of a [`Finding`].
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum Cause {
    /// Input pixel `(row, col)` moved by `deltas[c]` in channel `c`
    /// ([`check_locality`]).
    InputChanged {
        /// Row of the moved input pixel.
        row: usize,
        /// Column of the moved input pixel.
        col: usize,
        /// The change of each channel.
        deltas: Vec<f64>,
    },
    /// The input was shifted circularly by `(rows, cols)`; the output pixel
    /// was compared with pixel `source` of the unshifted output
    /// ([`check_translation_equivariance`]).
    Shift {
        /// Rows of the shift.
        rows: isize,
        /// Columns of the shift.
        cols: isize,
        /// `(row, col)` of the unshifted output the pixel should equal.
        source: (usize, usize),
    },
    /// The value lies outside the channel's training range `[low, high]`
    /// ([`check_convexity`]).
    OutsideRange {
        /// Smallest training value of the channel.
        low: f64,
        /// Largest training value of the channel.
        high: f64,
    },
    /// An identity between predictions fails ([`check_consistency`]).
    Identity(Identity),
    /// The training images were reordered: image `i` of the reordered set is
    /// image `permutation[i]` of the original ([`check_permutation_invariance`]).
    Permutation(Vec<usize>),
    /// Conditioning on this class ([`check_class_conditioning`]).
    Class(usize),
    /// The output differs from the reference's ([`check_agreement`]).
    Reference,
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::InputChanged { row, col, deltas } => {
                write!(f, "input pixel (row {row}, col {col}) moved by {deltas:?}")
            }
            Cause::Shift { rows, cols, source } => write!(
                f,
                "input shifted by ({rows}, {cols}), compared with unshifted output pixel \
                 (row {}, col {})",
                source.0, source.1
            ),
            Cause::OutsideRange { low, high } => {
                write!(f, "outside the training range [{low}, {high}]")
            }
            Cause::Identity(identity) => write!(f, "identity {identity}"),
            Cause::Permutation(p) => write!(f, "training set reordered as {p:?}"),
            Cause::Class(label) => write!(
                f,
                "class {label}: conditional call against the machine built on that class"
            ),
            Cause::Reference => f.write_str("compared with the reference"),
        }
    }
}

/// The worst discrepancy a check found.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    /// The output value that disagreed most.
    pub pixel: Pixel,
    /// What produced the discrepancy.
    pub cause: Cause,
    /// The value the property requires (for [`Property::Convexity`], the
    /// nearest bound of the range).
    pub expected: f64,
    /// The value found.
    pub found: f64,
    /// The size of the discrepancy, compared with the tolerance: the
    /// absolute difference `|found - expected|`, except for
    /// [`Property::Consistency`], where it is
    /// `|found - expected| / max(1, |expected|)`.
    pub magnitude: f64,
}

/// The outcome of a check: how many values it compared and the largest
/// discrepancy among them, whether or not it exceeds the tolerance.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// The property checked.
    pub property: Property,
    /// The largest magnitude allowed.
    pub tolerance: f64,
    /// Number of values compared.
    pub compared: usize,
    /// The largest discrepancy (`None` if nothing was compared).
    pub worst: Option<Finding>,
}

impl Verdict {
    fn new(property: Property, tolerance: f64) -> Self {
        Verdict {
            property,
            tolerance,
            compared: 0,
            worst: None,
        }
    }

    /// Counts one comparison and keeps `finding` if it is the worst so far
    /// (a NaN magnitude counts as worse than any number).
    fn record(&mut self, finding: impl FnOnce() -> Finding, magnitude: f64) {
        self.compared += 1;
        let worse = match &self.worst {
            None => true,
            Some(worst) => {
                (magnitude > worst.magnitude) || (magnitude.is_nan() && !worst.magnitude.is_nan())
            }
        };
        if worse {
            self.worst = Some(finding());
        }
    }

    /// Whether the worst magnitude is at most the tolerance (true if
    /// nothing was compared; false if a magnitude is NaN).
    pub fn passed(&self) -> bool {
        self.worst
            .as_ref()
            .is_none_or(|worst| worst.magnitude <= self.tolerance)
    }

    /// The worst magnitude found, 0 if nothing was compared.
    pub fn worst_magnitude(&self) -> f64 {
        self.worst.as_ref().map_or(0.0, |worst| worst.magnitude)
    }

    /// `Ok(self)` if the check passed, otherwise a failing
    /// [`TestCaseError`] whose message is this verdict, so that proptest
    /// shrinks the input.
    ///
    /// # Errors
    ///
    /// [`TestCaseError::Fail`] if the check failed.
    pub fn into_test_result(self) -> std::result::Result<Self, TestCaseError> {
        if self.passed() {
            Ok(self)
        } else {
            Err(TestCaseError::fail(self.to_string()))
        }
    }

    /// Asserts that the check passed.
    ///
    /// # Panics
    ///
    /// If it failed, with this verdict as the message.
    pub fn assert_passed(&self) {
        assert!(self.passed(), "{self}");
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = if self.passed() { "holds" } else { "violated" };
        write!(
            f,
            "{} {outcome} (tolerance {:e}, {} values compared)",
            self.property, self.tolerance, self.compared
        )?;
        if let Some(worst) = &self.worst {
            write!(
                f,
                "; worst at output pixel {}: expected {}, found {}, magnitude {:e}; {}",
                worst.pixel, worst.expected, worst.found, worst.magnitude, worst.cause
            )?;
        }
        Ok(())
    }
}

/// How [`check_locality`] moves an input pixel: each channel by
/// `+amplitude` or `-amplitude`, the signs drawn from a ChaCha8 generator
/// seeded with `seed`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Perturbation {
    /// The size of the change of every channel.
    pub amplitude: f64,
    /// Seed of the signs.
    pub seed: u64,
}

impl Default for Perturbation {
    /// Amplitude 1, seed 0.
    fn default() -> Self {
        Perturbation {
            amplitude: 1.0,
            seed: 0,
        }
    }
}

pub(crate) fn check_tolerance(tolerance: f64) -> Result<()> {
    if tolerance.is_finite() && tolerance >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter(format!(
            "tolerance must be finite and non-negative, got {tolerance}"
        )))
    }
}

pub(crate) fn check_amplitude(amplitude: f64) -> Result<()> {
    if amplitude.is_finite() && amplitude > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidParameter(format!(
            "perturbation amplitude must be finite and positive, got {amplitude}"
        )))
    }
}

/// The circular shift `d` along an axis of `len` pixels reduced to
/// `0 .. len`; exact for every `isize`, `isize::MIN` included.
pub(crate) fn reduce_shift(d: isize, len: usize) -> usize {
    (d as i128).rem_euclid(len as i128) as usize
}

/// A random sign, `+1` or `-1`.
pub(crate) fn sign(rng: &mut ChaCha8Rng) -> f64 {
    if rng.next_u64() & 1 == 0 { 1.0 } else { -1.0 }
}

/// Whether an input coordinate at signed offset `delta = z - x` from the
/// window centre `x` lies in the window reaching `before` and `after`
/// pixels along an axis of `len` pixels: `-before <= delta <= after`, or,
/// with periodic boundaries, the same for some `delta + m len`.
pub(crate) fn in_window(
    delta: isize,
    before: usize,
    after: usize,
    len: usize,
    periodic: bool,
) -> bool {
    if periodic {
        if before.saturating_add(after) >= len - 1 {
            return true;
        }
        let wrapped = delta.rem_euclid(len as isize) as usize;
        wrapped <= after || wrapped >= len - before
    } else {
        -(before as isize) <= delta && delta <= after as isize
    }
}

/// Checks that `x0hat(x)` does not depend on input pixels outside the
/// window of output pixel `x`.
///
/// For every input position `z = (row, col)` the check moves every channel
/// of `phi_t(z)` by `+-amplitude` (signs from `perturbation`), evaluates
/// `x0hat` again and compares, for every output pixel `x` whose window does
/// not contain `z`, all channels of `x0hat(x)` with their unperturbed
/// values. The window of `x` is `window` placed on `x`: offsets
/// `-up ..= down` by `-left ..= right`; with `boundary` [`Boundary::Zero`]
/// it stops at the image edges, with [`Boundary::Periodic`] it wraps around
/// them (the query window of the periodic machines). The magnitude is the
/// absolute change. This costs `H W + 1` evaluations.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance or
/// amplitude; any error of the score function.
pub fn check_locality<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    query: Query<'_, T>,
    window: &Patch,
    boundary: Boundary,
    perturbation: &Perturbation,
    tolerance: f64,
) -> Result<Verdict> {
    check_tolerance(tolerance)?;
    check_amplitude(perturbation.amplitude)?;
    let shape = query.image.shape();
    let periodic = boundary == Boundary::Periodic;
    let base = query.x0_hat(score)?;
    let mut rng = ChaCha8Rng::seed_from_u64(perturbation.seed);
    let mut verdict = Verdict::new(Property::Locality, tolerance);

    for zr in 0..shape.height {
        for zc in 0..shape.width {
            let mut moved = query.image.clone();
            let mut deltas = Vec::with_capacity(shape.channels);
            for c in 0..shape.channels {
                let delta = sign(&mut rng) * perturbation.amplitude;
                let value = query.image.get(c, zr, zc).widen() + delta;
                moved.set(c, zr, zc, T::narrow(value));
                deltas.push(moved.get(c, zr, zc).widen() - query.image.get(c, zr, zc).widen());
            }
            let out = query.x0_hat_of(score, &moved)?;

            for xr in 0..shape.height {
                let inside_rows = in_window(
                    zr as isize - xr as isize,
                    window.up(),
                    window.down(),
                    shape.height,
                    periodic,
                );
                for xc in 0..shape.width {
                    let inside_cols = in_window(
                        zc as isize - xc as isize,
                        window.left(),
                        window.right(),
                        shape.width,
                        periodic,
                    );
                    if inside_rows && inside_cols {
                        continue;
                    }
                    for c in 0..shape.channels {
                        let (expected, found) =
                            (base.get(c, xr, xc).widen(), out.get(c, xr, xc).widen());
                        let magnitude = (found - expected).abs();
                        verdict.record(
                            || Finding {
                                pixel: Pixel {
                                    channel: c,
                                    row: xr,
                                    col: xc,
                                },
                                cause: Cause::InputChanged {
                                    row: zr,
                                    col: zc,
                                    deltas: deltas.clone(),
                                },
                                expected,
                                found,
                                magnitude,
                            },
                            magnitude,
                        );
                    }
                }
            }
        }
    }
    Ok(verdict)
}

/// Which output pixels [`check_translation_equivariance`] compares, and
/// with what.
///
/// For a circular shift `d = (dr, dc)` of the input,
/// `phi'(i, j) = phi_t(i - dr mod H, j - dc mod W)`, output pixel `p` of
/// `f(phi')` is compared with output pixel `q = p - d mod (H, W)` of
/// `f(phi_t)`.
#[derive(Clone, Debug, PartialEq)]
pub enum ShiftRule {
    /// Every output pixel: exact for machines whose windows wrap and whose
    /// candidate set is the same for every output pixel (the periodic ELS,
    /// the reference ELS, ES).
    Periodic,
    /// The output pixels whose zero-padded window and candidate rule the
    /// shift leaves alone, for the zero-padding machine (bbELS) with this
    /// patch. On each axis, with the patch reaching `before` and `after`
    /// pixels from its centre along an axis of `len` pixels, the
    /// coordinates `p` and `q` of that axis must satisfy one of:
    ///
    /// - the shift along the axis is a multiple of `len`, so `q = p`; or
    /// - both `p` and `q` are interior: `before <= p, q < len - after`.
    ///
    /// In the second case neither window reaches the zero padding or
    /// wraps, so the two windows hold the same input values, and both
    /// pixels draw from the same candidate centres (all interior ones); in
    /// the first the windows and candidates are identical along the axis.
    /// Under the bbELS definition the outputs are then equal exactly (up to
    /// rounding). Pixels within `before`/`after` of an edge on a shifted
    /// axis are skipped: their candidates are tied to their own depth
    /// from the edge.
    ZeroPadded(Patch),
}

/// Checks `f(shift(phi_t)) = shift(f(phi_t))` for the circular shift
/// `shift = (rows, cols)` (see [`Image::shifted`]) on the output pixels
/// that `rule` names; the magnitude is the absolute difference of `x0hat`
/// values. Shifts are periodic: any `isize` is accepted and taken modulo
/// the image height and width.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance; any
/// error of the score function.
pub fn check_translation_equivariance<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    query: Query<'_, T>,
    shift: (isize, isize),
    rule: &ShiftRule,
    tolerance: f64,
) -> Result<Verdict> {
    check_tolerance(tolerance)?;
    let shape = query.image.shape();
    let (rows, cols) = shift;
    let base = query.x0_hat(score)?;
    let moved = query.x0_hat_of(score, &query.image.shifted(rows, cols))?;
    let mut verdict = Verdict::new(Property::TranslationEquivariance, tolerance);

    // The shifts reduced to `0 .. H` and `0 .. W`, so that nothing below
    // can overflow.
    let (dr, dc) = (
        reduce_shift(rows, shape.height),
        reduce_shift(cols, shape.width),
    );
    let axis_ok = |p: usize, q: usize, d: usize, len: usize, before: usize, after: usize| {
        if d == 0 {
            return true;
        }
        let axis = Axis { len, before, after };
        !axis.near_edge(p) && !axis.near_edge(q)
    };
    for pr in 0..shape.height {
        let qr = (pr + shape.height - dr) % shape.height;
        for pc in 0..shape.width {
            let qc = (pc + shape.width - dc) % shape.width;
            let compared = match rule {
                ShiftRule::Periodic => true,
                ShiftRule::ZeroPadded(patch) => {
                    axis_ok(pr, qr, dr, shape.height, patch.up(), patch.down())
                        && axis_ok(pc, qc, dc, shape.width, patch.left(), patch.right())
                }
            };
            if !compared {
                continue;
            }
            for c in 0..shape.channels {
                let (expected, found) = (base.get(c, qr, qc).widen(), moved.get(c, pr, pc).widen());
                let magnitude = (found - expected).abs();
                verdict.record(
                    || Finding {
                        pixel: Pixel {
                            channel: c,
                            row: pr,
                            col: pc,
                        },
                        cause: Cause::Shift {
                            rows,
                            cols,
                            source: (qr, qc),
                        },
                        expected,
                        found,
                        magnitude,
                    },
                    magnitude,
                );
            }
        }
    }
    Ok(verdict)
}

/// Checks that every value of `x0hat` lies within the range of the training
/// values of its channel, `[min_mu phi^mu(c, .), max_mu phi^mu(c, .)]`
/// (over the images of `query.class` if set): a convex combination of
/// training pixels cannot leave it. The magnitude is the distance outside
/// the range (0 inside).
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance;
/// [`Error::ShapeMismatch`] if the query and the training images differ in
/// shape; [`Error::UnknownClass`] if the class has no image; any error of
/// the score function.
pub fn check_convexity<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    query: Query<'_, T>,
    training: &TrainingSet<T>,
    tolerance: f64,
) -> Result<Verdict> {
    check_tolerance(tolerance)?;
    let shape = query.image.shape();
    if shape != training.shape() {
        return Err(Error::shape("query image shape", training.shape(), shape));
    }
    let subset;
    let training = match query.class {
        Some(label) => {
            subset = training.class(label)?;
            &subset
        }
        None => training,
    };
    let out = query.x0_hat(score)?;
    let mut verdict = Verdict::new(Property::Convexity, tolerance);
    for c in 0..shape.channels {
        let (low, high) = training.channel_range(c);
        let (low, high) = (low.widen(), high.widen());
        for row in 0..shape.height {
            for col in 0..shape.width {
                let found = out.get(c, row, col).widen();
                let expected = found.clamp(low, high);
                let magnitude = if found.is_nan() {
                    f64::NAN
                } else {
                    (found - expected).abs()
                };
                verdict.record(
                    || Finding {
                        pixel: Pixel {
                            channel: c,
                            row,
                            col,
                        },
                        cause: Cause::OutsideRange { low, high },
                        expected,
                        found,
                        magnitude,
                    },
                    magnitude,
                );
            }
        }
    }
    Ok(verdict)
}

/// Checks that the three predictions agree: with `a = a(t)`, `s = s(t)`
/// from the function's schedule, every value satisfies
/// `epshat = (phi_t - a x0hat) / s` and `score = -epshat / s`, where each
/// side is what the function returns for that prediction (the third
/// identity, `x0hat = (phi_t - s epshat) / a`, follows from the first).
/// The magnitude is the relative difference
/// `|found - expected| / max(1, |expected|)`.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance;
/// [`Error::InvalidTime`] where `s(t) = 0` (the noise and the score are
/// undefined there); any error of the score function.
pub fn check_consistency<T: Real, F: ScoreFunction<T> + ?Sized>(
    score: &F,
    query: Query<'_, T>,
    tolerance: f64,
) -> Result<Verdict> {
    check_tolerance(tolerance)?;
    let (x, t) = (query.image, query.t);
    let shape = x.shape();
    let predict = |target| {
        let mut out = Image::zeros(shape);
        score
            .predict_into(x, t, query.class, target, &mut out)
            .map(|()| out)
    };
    let clean = predict(Prediction::CleanImage)?;
    let noise = predict(Prediction::Noise)?;
    let grad = predict(Prediction::Score)?;
    let (a, s) = (score.schedule().signal(t), score.schedule().noise(t));

    let mut verdict = Verdict::new(Property::Consistency, tolerance);
    for c in 0..shape.channels {
        for row in 0..shape.height {
            for col in 0..shape.width {
                let pixel = Pixel {
                    channel: c,
                    row,
                    col,
                };
                let xv = x.get(c, row, col).widen();
                let eps = noise.get(c, row, col).widen();
                let pairs = [
                    (
                        Identity::NoiseFromCleanImage,
                        (xv - a * clean.get(c, row, col).widen()) / s,
                        eps,
                    ),
                    (
                        Identity::ScoreFromNoise,
                        -eps / s,
                        grad.get(c, row, col).widen(),
                    ),
                ];
                for (identity, expected, found) in pairs {
                    let magnitude = (found - expected).abs() / expected.abs().max(1.0);
                    verdict.record(
                        || Finding {
                            pixel,
                            cause: Cause::Identity(identity),
                            expected,
                            found,
                            magnitude,
                        },
                        magnitude,
                    );
                }
            }
        }
    }
    Ok(verdict)
}

fn compare_images<T: Real>(
    verdict: &mut Verdict,
    expected: &Image<T>,
    found: &Image<T>,
    cause: &Cause,
) -> Result<()> {
    if expected.shape() != found.shape() {
        return Err(Error::shape(
            "compared outputs",
            expected.shape(),
            found.shape(),
        ));
    }
    let Shape {
        channels,
        height,
        width,
    } = expected.shape();
    for c in 0..channels {
        for row in 0..height {
            for col in 0..width {
                let (e, f) = (
                    expected.get(c, row, col).widen(),
                    found.get(c, row, col).widen(),
                );
                let magnitude = (f - e).abs();
                verdict.record(
                    || Finding {
                        pixel: Pixel {
                            channel: c,
                            row,
                            col,
                        },
                        cause: cause.clone(),
                        expected: e,
                        found: f,
                        magnitude,
                    },
                    magnitude,
                );
            }
        }
    }
    Ok(())
}

/// Checks that reordering the training set leaves `x0hat` unchanged: the
/// function built by `build` on `training` and the one built on
/// `training.select(permutation)` give the same `x0hat` at `query`, up to
/// `tolerance` (absolute). The reordered set keeps each image's label.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance or if
/// `permutation` is not a permutation of `0 .. N`; any error of `build` or
/// of the score functions.
pub fn check_permutation_invariance<T, F, B>(
    build: B,
    training: &TrainingSet<T>,
    query: Query<'_, T>,
    permutation: &[usize],
    tolerance: f64,
) -> Result<Verdict>
where
    T: Real,
    F: ScoreFunction<T>,
    B: Fn(TrainingSet<T>) -> Result<F>,
{
    check_tolerance(tolerance)?;
    let mut seen = vec![false; training.len()];
    for &row in permutation {
        if row >= seen.len() || std::mem::replace(&mut seen[row], true) {
            return Err(Error::InvalidParameter(format!(
                "{permutation:?} is not a permutation of 0..{}",
                training.len()
            )));
        }
    }
    if permutation.len() != training.len() {
        return Err(Error::InvalidParameter(format!(
            "{permutation:?} is not a permutation of 0..{}",
            training.len()
        )));
    }
    let original = query.x0_hat(&build(training.clone())?)?;
    let reordered = query.x0_hat(&build(training.select(permutation)?)?)?;
    let mut verdict = Verdict::new(Property::PermutationInvariance, tolerance);
    compare_images(
        &mut verdict,
        &original,
        &reordered,
        &Cause::Permutation(permutation.to_vec()),
    )?;
    Ok(verdict)
}

/// Checks class conditioning: for class `l`, the function built by `build`
/// on the whole labelled `training` set and called with class `l` gives the
/// same `x0hat` as the function built on `training.class(l)` (the images of
/// class `l` alone) and called without a class. Checks `query.class` if set,
/// otherwise every label present; the magnitude is the absolute difference.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance or a
/// training set without labels; [`Error::UnknownClass`] if `query.class`
/// labels no image; any error of `build` or of the score functions.
pub fn check_class_conditioning<T, F, B>(
    build: B,
    training: &TrainingSet<T>,
    query: Query<'_, T>,
    tolerance: f64,
) -> Result<Verdict>
where
    T: Real,
    F: ScoreFunction<T>,
    B: Fn(TrainingSet<T>) -> Result<F>,
{
    check_tolerance(tolerance)?;
    let Some(labels) = training.labels() else {
        return Err(Error::InvalidParameter(
            "class conditioning needs a labelled training set".into(),
        ));
    };
    let classes: Vec<usize> = match query.class {
        Some(label) => vec![label],
        None => {
            let mut all = labels.to_vec();
            all.sort_unstable();
            all.dedup();
            all
        }
    };
    let whole = build(training.clone())?;
    let mut verdict = Verdict::new(Property::ClassConditioning, tolerance);
    for label in classes {
        let conditional = whole.x0_hat(query.image, query.t, Some(label))?;
        let alone = build(training.class(label)?)?.x0_hat(query.image, query.t, None)?;
        compare_images(&mut verdict, &alone, &conditional, &Cause::Class(label))?;
    }
    Ok(verdict)
}

/// Checks that `score` and `reference` give the same `x0hat` at `query`, up
/// to `tolerance` (absolute): for example a fast machine against a naive
/// implementation, or two machines the theory says coincide.
///
/// # Errors
///
/// [`Error::InvalidParameter`] for a negative or non-finite tolerance; any
/// error of either function.
pub fn check_agreement<T, F, G>(
    score: &F,
    reference: &G,
    query: Query<'_, T>,
    tolerance: f64,
) -> Result<Verdict>
where
    T: Real,
    F: ScoreFunction<T> + ?Sized,
    G: ScoreFunction<T> + ?Sized,
{
    check_tolerance(tolerance)?;
    let expected = query.x0_hat(reference)?;
    let found = query.x0_hat(score)?;
    let mut verdict = Verdict::new(Property::Agreement, tolerance);
    compare_images(&mut verdict, &expected, &found, &Cause::Reference)?;
    Ok(verdict)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schedule::LegacyCosine;
    use crate::score::ClosureScore;

    fn ramp(shape: Shape) -> Image<f64> {
        Image::from_vec(shape, (0..shape.len()).map(|i| i as f64 / 10.0).collect()).unwrap()
    }

    #[test]
    fn window_membership_with_and_without_wrapping() {
        assert!(in_window(-1, 1, 1, 8, false));
        assert!(!in_window(2, 1, 1, 8, false));
        assert!(!in_window(7, 1, 1, 8, false));
        assert!(in_window(7, 1, 1, 8, true));
        assert!(in_window(-7, 1, 1, 8, true));
        assert!(!in_window(4, 1, 1, 8, true));
        assert!(in_window(2, 1, 1, 3, true));
    }

    #[test]
    fn locality_finds_the_peeked_pixel() {
        // Output pixel (r, c) adds 0.5 times input pixel (r, c + 2).
        let shape = Shape::new(1, 2, 4).unwrap();
        let peek = ClosureScore::new(
            LegacyCosine,
            Prediction::CleanImage,
            None,
            |x: &Image<f64>, _t: f64, _class: Option<usize>| {
                let mut out = x.clone();
                let s = x.shape();
                for r in 0..s.height {
                    for c in 0..s.width.saturating_sub(2) {
                        out.set(0, r, c, x.get(0, r, c) + 0.5 * x.get(0, r, c + 2));
                    }
                }
                Ok(out)
            },
        );
        let x = ramp(shape);
        let patch = Patch::square(3).unwrap();
        let verdict = check_locality(
            &peek,
            Query::new(&x, 0.5),
            &patch,
            Boundary::Zero,
            &Perturbation::default(),
            1e-9,
        )
        .unwrap();
        assert!(!verdict.passed());
        let worst = verdict.worst.unwrap();
        assert!((worst.magnitude - 0.5).abs() < 1e-12);
        let Cause::InputChanged { col, .. } = worst.cause else {
            panic!("{:?}", worst.cause)
        };
        assert_eq!(col, worst.pixel.col + 2);
        // With a 5x5 window the peek is inside.
        let wide = check_locality(
            &peek,
            Query::new(&x, 0.5),
            &Patch::square(5).unwrap(),
            Boundary::Zero,
            &Perturbation::default(),
            1e-9,
        )
        .unwrap();
        assert!(wide.passed(), "{wide}");
    }

    #[test]
    fn equivariance_rule_for_zero_padding_skips_edge_pixels() {
        // An identity function is equivariant everywhere; the rule only
        // chooses which pixels are compared.
        let identity = ClosureScore::new(
            LegacyCosine,
            Prediction::CleanImage,
            None,
            |x: &Image<f64>, _t: f64, _class: Option<usize>| Ok(x.clone()),
        );
        let x = ramp(Shape::new(1, 6, 5).unwrap());
        let rule = ShiftRule::ZeroPadded(Patch::square(3).unwrap());
        let verdict =
            check_translation_equivariance(&identity, Query::new(&x, 0.5), (1, 0), &rule, 0.0)
                .unwrap();
        // Rows: p and p - 1 both in 1..=4, so p in 2..=4; columns: no shift.
        assert_eq!(verdict.compared, 3 * 5);
        assert!(verdict.passed());
        let wrapped =
            check_translation_equivariance(&identity, Query::new(&x, 0.5), (-4, 2), &rule, 0.0)
                .unwrap();
        // Rows: p, p + 4 mod 6 in 1..=4 gives p = 3, 4; columns: p, p - 2 mod 5 in 1..=3 gives p = 3.
        assert_eq!(wrapped.compared, 2);
    }

    #[test]
    fn bad_tolerances_and_permutations_are_errors() {
        let shape = Shape::new(1, 2, 2).unwrap();
        let set = TrainingSet::new(
            shape,
            vec![0.0_f64, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
            None,
        )
        .unwrap();
        let build = |s: TrainingSet<f64>| crate::Machine::ideal(s, LegacyCosine);
        let x = Image::zeros(shape);
        let query = Query::new(&x, 0.5);
        assert!(check_permutation_invariance(build, &set, query, &[0, 0], 1e-9).is_err());
        assert!(check_permutation_invariance(build, &set, query, &[1], 1e-9).is_err());
        assert!(check_permutation_invariance(build, &set, query, &[1, 0], -1.0).is_err());
        assert!(check_class_conditioning(build, &set, query, 1e-9).is_err());
        let verdict = check_permutation_invariance(build, &set, query, &[1, 0], 1e-12).unwrap();
        assert_eq!(verdict.compared, 4);
        assert!(verdict.passed(), "{verdict}");
    }

    #[test]
    fn nan_is_the_worst_finding() {
        let mut verdict = Verdict::new(Property::Agreement, 1.0);
        let finding = |m: f64| Finding {
            pixel: Pixel {
                channel: 0,
                row: 0,
                col: 0,
            },
            cause: Cause::Reference,
            expected: 0.0,
            found: m,
            magnitude: m,
        };
        verdict.record(|| finding(0.5), 0.5);
        assert!(verdict.passed());
        verdict.record(|| finding(f64::NAN), f64::NAN);
        verdict.record(|| finding(0.7), 0.7);
        assert!(!verdict.passed());
        assert!(verdict.worst_magnitude().is_nan());
    }
}
