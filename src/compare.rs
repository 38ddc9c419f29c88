//! Comparing a machine with a reference (a trained network, say) on the
//! final images they generate from the same initial noise.
//!
//! For two images `u`, `v` of `P` values, flattened over channels and
//! pixels, with means `mean(u)`, `mean(v)`:
//!
//! ```text
//! pearson(u, v) = sum_i (u_i - mean(u)) (v_i - mean(v))
//!                 / sqrt( sum_i (u_i - mean(u))^2  sum_i (v_i - mean(v))^2 )
//! cosine(u, v)  = sum_i u_i v_i / sqrt( sum_i u_i^2  sum_i v_i^2 )
//! mse(u, v)     = sum_i (u_i - v_i)^2 / P
//! ```
//!
//! `pearson` is the correlation `r` that the published evaluation of the
//! equivariant local score machine prints per seed (and that its tables
//! call "r^2"); [`Agreement`] holds `r`, `r^2` and the MSE.
//! [`Comparison`] gathers them over seeds for a machine and a baseline
//! (usually the ideal score machine, IS), with medians and the fraction of
//! seeds on which the machine beats the baseline.
//!
//! # Example
//!
//! ```
//! use score_machines::compare::{Comparison, pearson};
//! use score_machines::{Image, Shape};
//!
//! let shape = Shape::new(1, 1, 4)?;
//! let image = |v: [f64; 4]| Image::from_vec(shape, v.to_vec());
//! let network = [image([0.0, 1.0, 2.0, 3.0])?, image([1.0, 0.0, 1.0, 0.0])?];
//! let machine = [image([0.0, 2.0, 4.0, 6.0])?, image([1.0, 0.0, 1.0, 0.5])?];
//! let ideal = [image([3.0, 2.0, 1.0, 0.0])?, image([1.0, 0.0, 1.0, 0.0])?];
//! assert_eq!(pearson(&network[0], &machine[0])?, 1.0);
//!
//! let comparison = Comparison::from_images(&[0, 1], &network, &machine, &ideal)?;
//! assert_eq!(comparison.beating_baseline(), 1);
//! assert_eq!(comparison.fraction_beating_baseline(), 0.5);
//! println!("{comparison}");
//! # Ok::<(), score_machines::Error>(())
//! ```

use std::fmt;

use crate::error::{Error, Result};
use crate::image::Image;
use crate::real::Real;
use crate::reference::RecordedTrajectories;
use crate::sampler::{Observer, Sampler};
use crate::score::ScoreFunction;

fn check_pair<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<()> {
    if u.shape() != v.shape() {
        return Err(Error::shape("compared image shapes", u.shape(), v.shape()));
    }
    u.check_finite("compared image")?;
    v.check_finite("compared image")
}

/// The largest absolute value of `values`, widened to `f64`; 0 for none.
fn largest_magnitude<T: Real>(values: &[T]) -> f64 {
    values.iter().fold(0.0, |m: f64, x| m.max(x.widen().abs()))
}

/// `values` widened to `f64` and divided by their largest absolute value,
/// so that every one lies in `[-1, 1]`; `None` if every value is zero.
fn scaled<T: Real>(values: &[T]) -> Option<Vec<f64>> {
    let largest = largest_magnitude(values);
    (largest > 0.0).then(|| values.iter().map(|x| x.widen() / largest).collect())
}

/// `(sum a_i b_i, sum a_i^2, sum b_i^2)`.
fn products(a: &[f64], b: &[f64]) -> (f64, f64, f64) {
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    (ab, aa, bb)
}

/// Which of two images makes a correlation undefined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Constant {
    First,
    Second,
}

/// Pearson's `r` of two finite vectors of the same length.
///
/// Both are divided by their largest absolute value before centring (the
/// correlation does not change under positive scaling), so that no sum can
/// overflow for finite input. An image is constant exactly when all its
/// values are equal: its scaled values are then all `1` or all `-1`, their
/// mean is exact and every centred value is zero.
fn pearson_of<T: Real>(u: &[T], v: &[T]) -> std::result::Result<f64, Constant> {
    let centred = |values: &[T], which: Constant| {
        let mut scaled = scaled(values).ok_or(which)?;
        let mean = scaled.iter().sum::<f64>() / scaled.len() as f64;
        for x in &mut scaled {
            *x -= mean;
        }
        if scaled.iter().all(|&x| x == 0.0) {
            return Err(which);
        }
        Ok(scaled)
    };
    let a = centred(u, Constant::First)?;
    let b = centred(v, Constant::Second)?;
    let (ab, aa, bb) = products(&a, &b);
    Ok((ab / (aa * bb).sqrt()).clamp(-1.0, 1.0))
}

/// The Pearson correlation `r` of two images, flattened and centred on
/// their means (see the [module documentation](self)), computed in `f64`.
///
/// `r` does not depend on the scale of either image, and the computation
/// divides each image by its largest absolute value first, so any finite
/// values give a finite `r`, however large or small they are.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the shapes differ, [`Error::NonFinite`] if
/// a value is not finite, [`Error::InvalidParameter`] if an image is
/// constant (all its values equal: its correlation is undefined).
pub fn pearson<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<f64> {
    check_pair(u, v)?;
    pearson_of(u.as_slice(), v.as_slice()).map_err(|which| {
        Error::InvalidParameter(format!(
            "the correlation of a constant image is undefined (the {} image is constant)",
            match which {
                Constant::First => "first",
                Constant::Second => "second",
            }
        ))
    })
}

/// The cosine similarity of two images, flattened, without centring (see
/// the [module documentation](self)), computed in `f64`.
///
/// Like [`pearson`], scale-free and computed on the images divided by their
/// largest absolute values, so any finite values give a finite result.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the shapes differ, [`Error::NonFinite`] if
/// a value is not finite, [`Error::InvalidParameter`] if an image is zero.
pub fn cosine_similarity<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<f64> {
    check_pair(u, v)?;
    cosine_of(u.as_slice(), v.as_slice()).ok_or_else(|| {
        Error::InvalidParameter("the cosine similarity of a zero image is undefined".into())
    })
}

/// `cos(u, v)` of two finite vectors of the same length, `None` if one is
/// zero. Each is divided by its largest absolute value first, so no sum
/// can overflow.
pub(crate) fn cosine_of<T: Real>(u: &[T], v: &[T]) -> Option<f64> {
    let (a, b) = (scaled(u)?, scaled(v)?);
    let (ab, aa, bb) = products(&a, &b);
    Some((ab / (aa * bb).sqrt()).clamp(-1.0, 1.0))
}

/// The Euclidean distance `sqrt(sum_i (u_i - v_i)^2)` of two finite
/// vectors of the same length, in `f64`: `+inf` only if the true distance
/// exceeds the `f64` range.
///
/// Summed directly when that stays finite (the common case); otherwise
/// from the halved differences divided by their largest absolute value,
/// which cannot overflow before the final multiplication.
pub(crate) fn distance_of<T: Real>(u: &[T], v: &[T]) -> f64 {
    let direct = crate::image::squared_distance(u, v);
    if direct.is_finite() {
        return direct.sqrt();
    }
    // Halving keeps every difference finite: |u_i / 2 - v_i / 2| <= f64::MAX.
    let halves: Vec<f64> = u
        .iter()
        .zip(v)
        .map(|(a, b)| a.widen() / 2.0 - b.widen() / 2.0)
        .collect();
    let largest = largest_magnitude(&halves);
    if largest == 0.0 {
        return 0.0;
    }
    let sum: f64 = halves.iter().map(|d| (d / largest) * (d / largest)).sum();
    2.0 * largest * sum.sqrt()
}

/// The mean squared difference of two images (see the
/// [module documentation](self)), computed in `f64`.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the shapes differ, [`Error::NonFinite`] if
/// a value is not finite, [`Error::InvalidParameter`] if the mean squared
/// difference, though of finite values, exceeds the `f64` range.
pub fn mse<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<f64> {
    check_pair(u, v)?;
    let count = u.as_slice().len() as f64;
    let direct = crate::image::squared_distance(u.as_slice(), v.as_slice());
    if direct.is_finite() {
        return Ok(direct / count);
    }
    let root_mean = distance_of(u.as_slice(), v.as_slice()) / count.sqrt();
    let mse = root_mean * root_mean;
    if mse.is_finite() {
        Ok(mse)
    } else {
        Err(Error::InvalidParameter(format!(
            "the mean squared difference of the two images (root mean square difference \
             {root_mean:e}) exceeds the f64 range"
        )))
    }
}

/// How closely one image matches a reference image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Agreement {
    /// The Pearson correlation `r` of the mean-centred flattened images.
    pub r: f64,
    /// `r^2`.
    pub r_squared: f64,
    /// The mean squared pixel difference.
    pub mse: f64,
}

impl Agreement {
    /// The agreement of `image` with `reference`.
    ///
    /// # Errors
    ///
    /// As [`pearson`] and [`mse`].
    pub fn between<T: Real>(reference: &Image<T>, image: &Image<T>) -> Result<Self> {
        let r = pearson(reference, image)?;
        Ok(Agreement {
            r,
            r_squared: r * r,
            mse: mse(reference, image)?,
        })
    }
}

/// A machine's and a baseline's agreement with the reference on one seed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SeedComparison {
    /// The seed (identifier of the initial noise).
    pub seed: usize,
    /// The machine's final image against the reference's.
    pub machine: Agreement,
    /// The baseline's final image against the reference's.
    pub baseline: Agreement,
}

impl SeedComparison {
    /// Whether the machine beats the baseline: a strictly higher
    /// correlation `r` with the reference (a tie does not count).
    pub fn machine_wins(&self) -> bool {
        self.machine.r > self.baseline.r
    }
}

/// Per-seed agreements of a machine and a baseline with a reference, and
/// their summaries.
///
/// Medians are over seeds; for an even number of seeds the median is the
/// mean of the two middle values. The median of `r^2` is taken over the
/// per-seed `r^2` values, which differs from the square of the median `r`
/// when some `r` are negative.
#[derive(Clone, Debug, PartialEq)]
pub struct Comparison {
    seeds: Vec<SeedComparison>,
}

impl Comparison {
    /// Compares, seed by seed, the machine's and the baseline's final
    /// images with the reference's; `seeds[i]` names the initial noise of
    /// entry `i` of the three lists.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidParameter`] if there is no seed, if the four lists
    ///   differ in length, if an image is constant (see [`pearson`]; the
    ///   message names the seed and whether the reference's, the
    ///   machine's or the baseline's image is constant), or if an MSE
    ///   exceeds the `f64` range (see [`mse`]; the message names the seed);
    /// - [`Error::ShapeMismatch`], [`Error::NonFinite`] as [`pearson`].
    pub fn from_images<T: Real>(
        seeds: &[usize],
        reference: &[Image<T>],
        machine: &[Image<T>],
        baseline: &[Image<T>],
    ) -> Result<Self> {
        if seeds.is_empty() {
            return Err(Error::InvalidParameter("no seed to compare".into()));
        }
        if [reference.len(), machine.len(), baseline.len()] != [seeds.len(); 3] {
            return Err(Error::InvalidParameter(format!(
                "{} seeds but {} reference, {} machine and {} baseline images",
                seeds.len(),
                reference.len(),
                machine.len(),
                baseline.len()
            )));
        }
        let seeds = seeds
            .iter()
            .zip(reference)
            .zip(machine.iter().zip(baseline))
            .map(|((&seed, reference), (machine, baseline))| {
                Ok(SeedComparison {
                    seed,
                    machine: agreement_of_seed(seed, reference, machine, "machine")?,
                    baseline: agreement_of_seed(seed, reference, baseline, "baseline")?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Comparison { seeds })
    }

    /// The per-seed results, in seed order as given.
    pub fn seeds(&self) -> &[SeedComparison] {
        &self.seeds
    }

    /// Number of seeds (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Median over seeds of the machine's `r`.
    pub fn median_r(&self) -> f64 {
        self.median(|s| s.machine.r)
    }

    /// Median over seeds of the machine's `r^2`.
    pub fn median_r_squared(&self) -> f64 {
        self.median(|s| s.machine.r_squared)
    }

    /// Median over seeds of the machine's MSE.
    pub fn median_mse(&self) -> f64 {
        self.median(|s| s.machine.mse)
    }

    /// Median over seeds of the baseline's `r`.
    pub fn baseline_median_r(&self) -> f64 {
        self.median(|s| s.baseline.r)
    }

    /// Median over seeds of the baseline's `r^2`.
    pub fn baseline_median_r_squared(&self) -> f64 {
        self.median(|s| s.baseline.r_squared)
    }

    /// Median over seeds of the baseline's MSE.
    pub fn baseline_median_mse(&self) -> f64 {
        self.median(|s| s.baseline.mse)
    }

    /// Number of seeds on which the machine beats the baseline (see
    /// [`SeedComparison::machine_wins`]).
    pub fn beating_baseline(&self) -> usize {
        self.seeds.iter().filter(|s| s.machine_wins()).count()
    }

    /// The fraction of seeds on which the machine beats the baseline.
    pub fn fraction_beating_baseline(&self) -> f64 {
        self.beating_baseline() as f64 / self.seeds.len() as f64
    }

    fn median(&self, value: impl Fn(&SeedComparison) -> f64) -> f64 {
        let values: Vec<f64> = self.seeds.iter().map(value).collect();
        median(&values)
    }
}

/// [`Agreement::between`] for one seed of a [`Comparison`], with errors
/// that name the seed and the image at fault.
fn agreement_of_seed<T: Real>(
    seed: usize,
    reference: &Image<T>,
    image: &Image<T>,
    role: &str,
) -> Result<Agreement> {
    check_pair(reference, image)?;
    let r = pearson_of(reference.as_slice(), image.as_slice()).map_err(|which| {
        let (whose, values) = match which {
            Constant::First => ("reference's", reference),
            Constant::Second => (
                if role == "machine" {
                    "machine's"
                } else {
                    "baseline's"
                },
                image,
            ),
        };
        Error::InvalidParameter(format!(
            "seed {seed}: the {whose} final image is constant (every value is {}), so its \
             correlation is undefined",
            values.as_slice()[0]
        ))
    })?;
    let mse = mse(reference, image).map_err(|error| match error {
        Error::InvalidParameter(reason) => Error::InvalidParameter(format!(
            "seed {seed}, {role} against the reference: {reason}"
        )),
        other => other,
    })?;
    Ok(Agreement {
        r,
        r_squared: r * r,
        mse,
    })
}

/// The median of finite values; the mean of the two middle ones for an
/// even count. `NaN` for an empty slice.
pub(crate) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => sorted[n / 2],
        _ => 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]),
    }
}

impl fmt::Display for Comparison {
    /// A table of medians for the machine and the baseline, then the
    /// number of seeds on which the machine wins.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<10} {:>9} {:>11} {:>11}",
            "", "median r", "median r^2", "median MSE"
        )?;
        writeln!(
            f,
            "{:<10} {:>9.4} {:>11.4} {:>11.4}",
            "machine",
            self.median_r(),
            self.median_r_squared(),
            self.median_mse()
        )?;
        writeln!(
            f,
            "{:<10} {:>9.4} {:>11.4} {:>11.4}",
            "baseline",
            self.baseline_median_r(),
            self.baseline_median_r_squared(),
            self.baseline_median_mse()
        )?;
        write!(
            f,
            "machine beats baseline (higher r) on {} of {} seeds ({:.2})",
            self.beating_baseline(),
            self.len(),
            self.fraction_beating_baseline()
        )
    }
}

/// Samples `score` with `sampler` from the initial noise of every
/// trajectory of `reference`, in order, showing every step to `observer`.
///
/// # Errors
///
/// Any error of [`Sampler::sample`].
pub fn sample_from<T, F, O>(
    reference: &RecordedTrajectories<T>,
    score: &F,
    sampler: &Sampler,
    observer: &mut O,
) -> Result<Vec<Image<T>>>
where
    T: Real,
    F: ScoreFunction<T> + ?Sized,
    O: Observer<T> + ?Sized,
{
    (0..reference.len())
        .map(|index| sampler.sample(score, reference.initial_noise(index)?, None, observer))
        .collect()
}

/// The final images of a comparison run, with the comparison itself.
#[derive(Clone, Debug, PartialEq)]
pub struct ComparisonRun<T> {
    /// The per-seed agreements and their summaries.
    pub comparison: Comparison,
    /// The machine's final image for each trajectory of the reference.
    pub machine: Vec<Image<T>>,
    /// The baseline's final image for each trajectory of the reference.
    pub baseline: Vec<Image<T>>,
}

/// Runs `machine` and `baseline` with `sampler` from the initial noise of
/// every trajectory of `reference` and compares their final images with
/// the reference's (see [`Comparison::from_images`]).
///
/// The sampler need not be the one that made the recording: only the
/// initial noise and the final images are used. To reproduce a network's
/// own sampling, give the recording's sampler (for the shared CNN
/// recordings, 20-step DDIM). The observer sees every step of every run,
/// the machine's runs first.
///
/// # Errors
///
/// Any error of [`Sampler::sample`] or [`Comparison::from_images`].
///
/// # Example
///
/// ```
/// use score_machines::compare::compare;
/// use score_machines::prelude::*;
/// use score_machines::reference::RecordedTrajectories;
///
/// let shape = Shape::new(1, 5, 5)?;
/// let pixels: Vec<f64> = (0..6 * 25).map(|i| ((i * 13) % 7) as f64 / 3.0 - 1.0).collect();
/// let training = TrainingSet::new(shape, pixels, None)?;
/// let sampler = Sampler::new(Method::Ddim, 10)?;
/// let ls = Machine::local(training.clone(), LegacyCosine, SquarePatch::new(3)?)?;
/// let is = Machine::ideal(training, LegacyCosine)?;
/// let noises: Vec<_> = (0..3).map(|seed| initial_noise(shape, seed)).collect();
/// let reference = RecordedTrajectories::record(&ls, &sampler, &noises, None)?;
///
/// // The machine that made the recording matches it exactly.
/// let run = compare(&reference, &ls, &is, &sampler, &mut ())?;
/// assert_eq!(run.comparison.median_r(), 1.0);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub fn compare<T, M, B, O>(
    reference: &RecordedTrajectories<T>,
    machine: &M,
    baseline: &B,
    sampler: &Sampler,
    observer: &mut O,
) -> Result<ComparisonRun<T>>
where
    T: Real,
    M: ScoreFunction<T> + ?Sized,
    B: ScoreFunction<T> + ?Sized,
    O: Observer<T> + ?Sized,
{
    let machine_images = sample_from(reference, machine, sampler, observer)?;
    let baseline_images = sample_from(reference, baseline, sampler, observer)?;
    let comparison = Comparison::from_images(
        reference.seeds(),
        &reference.final_images(),
        &machine_images,
        &baseline_images,
    )?;
    Ok(ComparisonRun {
        comparison,
        machine: machine_images,
        baseline: baseline_images,
    })
}
