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

/// The Pearson correlation `r` of two images, flattened and centred on
/// their means (see the [module documentation](self)), computed in `f64`.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the shapes differ, [`Error::NonFinite`] if
/// a value is not finite, [`Error::InvalidParameter`] if an image is
/// constant (its correlation is undefined).
pub fn pearson<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<f64> {
    check_pair(u, v)?;
    let count = u.as_slice().len() as f64;
    let mean = |image: &Image<T>| image.as_slice().iter().map(|x| x.widen()).sum::<f64>() / count;
    let (mu, mv) = (mean(u), mean(v));
    let (mut uv, mut uu, mut vv) = (0.0, 0.0, 0.0);
    for (a, b) in u.as_slice().iter().zip(v.as_slice()) {
        let (a, b) = (a.widen() - mu, b.widen() - mv);
        uv += a * b;
        uu += a * a;
        vv += b * b;
    }
    if uu == 0.0 || vv == 0.0 {
        return Err(Error::InvalidParameter(
            "the correlation of a constant image is undefined".into(),
        ));
    }
    Ok((uv / (uu * vv).sqrt()).clamp(-1.0, 1.0))
}

/// The cosine similarity of two images, flattened, without centring (see
/// the [module documentation](self)), computed in `f64`.
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

/// `cos(u, v)`, `None` if a vector is zero.
pub(crate) fn cosine_of<T: Real>(u: &[T], v: &[T]) -> Option<f64> {
    let (mut uv, mut uu, mut vv) = (0.0, 0.0, 0.0);
    for (a, b) in u.iter().zip(v) {
        let (a, b) = (a.widen(), b.widen());
        uv += a * b;
        uu += a * a;
        vv += b * b;
    }
    (uu > 0.0 && vv > 0.0).then(|| (uv / (uu * vv).sqrt()).clamp(-1.0, 1.0))
}

/// The mean squared difference of two images (see the
/// [module documentation](self)), computed in `f64`.
///
/// # Errors
///
/// [`Error::ShapeMismatch`] if the shapes differ, [`Error::NonFinite`] if
/// a value is not finite.
pub fn mse<T: Real>(u: &Image<T>, v: &Image<T>) -> Result<f64> {
    check_pair(u, v)?;
    Ok(u.squared_distance(v)? / u.as_slice().len() as f64)
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
    ///   differ in length, or if an image is constant (see [`pearson`]);
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
                    machine: Agreement::between(reference, machine)?,
                    baseline: Agreement::between(reference, baseline)?,
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
