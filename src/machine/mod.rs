//! The score machine: a softmax-weighted average of training patches,
//! built from a noise schedule, a locality and an equivariance constraint.

mod batch_dft;
mod distinct;
mod fast;
mod fourier;
mod kernel;
mod mosaic;
mod neighbours;
mod plan;
mod posterior;
mod simd;
mod spectra;
mod spectral;
mod torus;
mod whole;

use std::collections::BTreeMap;

pub use mosaic::{Mosaic, Tile};
pub use posterior::PartialPosterior;

use crate::equivariance::{Equivariance, PeriodicFull, PeriodicInterior, SameLocation, ZeroPadded};
use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::locality::{Locality, WholeImage};
use crate::real::Real;
use crate::schedule::{NoiseSchedule, check_time};
use crate::score::{Prediction, ScoreFunction};
use crate::training::TrainingSet;
use plan::Plan;

/// Number of training images one worker takes at a time.
const CHUNK: usize = 32;

/// An analytic score machine over a training set.
///
/// For a noisy image `phi_t` at time `t`, with `a = a(t)`, `s = s(t)` from
/// the schedule, the machine's window `Omega` at `t` from the locality and
/// the candidate centres `Y(x)` of output pixel `x` from the equivariance
/// constraint:
///
/// ```text
/// d(x; mu, y) = sum_{o in Omega} w_o (phi_t(x + o) - a phi^mu(y + o))^2
/// w(x; mu, y) = exp(-d(x; mu, y) / (2 s^2)) / sum over (mu', y' in Y(x)) of the same
/// x0hat(x)    = sum_{mu, y in Y(x)} w(x; mu, y) phi^mu(y)
/// ```
///
/// Distances sum over all channels; positions outside the image read as
/// the constraint's [`Boundary`](crate::equivariance::Boundary) says. The
/// named constructors give the machines of the theory:
///
/// | constructor | machine | window | candidates |
/// |---|---|---|---|
/// | [`Machine::ideal`] | IS | whole image | same location |
/// | [`Machine::equivariant`] | ES | whole image, periodic | every circular shift |
/// | [`Machine::local`] | LS | patch, zero-padded | same location |
/// | [`Machine::equivariant_local`] | ELS | patch, query wraps | interior patches |
/// | [`Machine::equivariant_local_periodic`] | periodic ELS | patch, periodic | every patch |
/// | [`Machine::equivariant_local_zero_padded`] | bbELS | patch, zero-padded | per-axis rule |
///
/// Evaluation streams over training images, keeps a running softmax
/// ([`PartialPosterior`]) and never holds more than a few images' worth of
/// distances; with the `parallel` feature it uses every core. Its vector
/// kernels run on AVX-512 or on AVX2 and FMA where the CPU has them,
/// chosen once per process; the environment variable `SCORE_MACHINES_SIMD`
/// (`portable`, `avx2` or `avx512`; other values are ignored) caps the
/// choice, for instance to compare speeds, and
/// [`Machine::instruction_set`] tells which one runs. AVX2 and AVX-512
/// give the same bits; the portable code rounds without fused
/// multiply-adds and agrees to the precision of `f32`.
///
/// Two things are computed on the first evaluation that needs them and
/// kept by the machine (and shared by its clones): the distinct small
/// windows of an `f32` training set, where they repeat often enough (at
/// most 64 MiB), and, for `f32` machines that take their cross terms
/// from Fourier transforms of whole images (ELS with windows a few lines
/// short of the image: sides 25 and 27 on 28x28 digits), the Fourier
/// transforms of the training images, `C H (W / 2 + 1)` complex `f64`
/// values per image (6,720 bytes per 28x28 digit; not kept past
/// 128 MiB). Both make that first evaluation slower than the next ones.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 8, 8)?;
/// let pixels: Vec<f32> = (0..3 * 64).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
/// let training = TrainingSet::new(shape, pixels, None)?;
/// let els = Machine::equivariant_local(training, LegacyCosine, SquarePatch::new(3)?)?;
/// let noisy = Image::from_vec(shape, vec![0.1_f32; 64])?;
/// let x0 = els.x0_hat(&noisy, 0.5, None)?;
/// assert!(x0.as_slice().iter().all(|v| (-1.0..=1.0).contains(v)));
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Machine<T, S, L, E> {
    training: TrainingSet<T>,
    classes: BTreeMap<usize, Vec<usize>>,
    /// Per channel, the smallest and largest training value, over the
    /// whole set (`None`) and per class.
    ranges: BTreeMap<Option<usize>, Vec<(f64, f64)>>,
    schedule: S,
    locality: L,
    equivariance: E,
    /// Distinct small candidate windows, collected on first use.
    distinct: distinct::DistinctCache,
    /// The Fourier transforms of the training images, computed on first
    /// use by the whole-torus route.
    spectra: spectra::SpectraCache,
    /// The instruction set of the kernels, [`simd::Isa::detected`].
    isa: simd::Isa,
}

/// The ideal score machine (IS).
pub type IdealScore<T, S> = Machine<T, S, WholeImage, SameLocation>;
/// The equivariant score machine (ES).
pub type EquivariantScore<T, S> = Machine<T, S, WholeImage, PeriodicFull>;
/// The local score machine (LS).
pub type LocalScore<T, S, L> = Machine<T, S, L, SameLocation>;
/// The equivariant local score machine (ELS) with the reference periodic
/// semantics.
pub type EquivariantLocalScore<T, S, L> = Machine<T, S, L, PeriodicInterior>;
/// The equivariant local score machine with zero-padding boundaries (bbELS).
pub type ZeroPaddedEquivariantLocalScore<T, S, L> = Machine<T, S, L, ZeroPadded>;

impl<T: Real, S: NoiseSchedule> Machine<T, S, WholeImage, SameLocation> {
    /// The ideal score (IS): one softmax over whole training images,
    /// `d_mu = ||phi_t - a phi^mu||^2`, `x0hat = sum_mu w_mu phi^mu`. It
    /// memorises: as `t -> 0` it returns the nearest training image.
    ///
    /// # Errors
    ///
    /// None at present; the signature leaves room for validation.
    pub fn ideal(training: TrainingSet<T>, schedule: S) -> Result<Self> {
        Machine::new(training, schedule, WholeImage, SameLocation)
    }
}

impl<T: Real, S: NoiseSchedule> Machine<T, S, WholeImage, PeriodicFull> {
    /// The equivariant score (ES): the ideal score over every circular
    /// shift of every training image.
    ///
    /// # Errors
    ///
    /// None at present; the signature leaves room for validation.
    pub fn equivariant(training: TrainingSet<T>, schedule: S) -> Result<Self> {
        Machine::new(training, schedule, WholeImage, PeriodicFull)
    }
}

impl<T: Real, S: NoiseSchedule, L: Locality> Machine<T, S, L, SameLocation> {
    /// The local score (LS): per output pixel, a softmax over the patch at
    /// the same location of every training image, zero-padded.
    ///
    /// # Errors
    ///
    /// None at present; the signature leaves room for validation.
    pub fn local(training: TrainingSet<T>, schedule: S, locality: L) -> Result<Self> {
        Machine::new(training, schedule, locality, SameLocation)
    }
}

impl<T: Real, S: NoiseSchedule, L: Locality> Machine<T, S, L, PeriodicInterior> {
    /// The equivariant local score (ELS), reference semantics: the output
    /// pixel's patch wraps around the edges, candidates are every patch
    /// lying wholly inside any training image.
    ///
    /// # Errors
    ///
    /// None at construction; evaluation fails with
    /// [`Error::NoCandidates`] when the patch is larger than the image.
    pub fn equivariant_local(training: TrainingSet<T>, schedule: S, locality: L) -> Result<Self> {
        Machine::new(training, schedule, locality, PeriodicInterior)
    }
}

impl<T: Real, S: NoiseSchedule, L: Locality> Machine<T, S, L, PeriodicFull> {
    /// The fully periodic equivariant local score: every patch wraps, and
    /// every centre of every training image is a candidate.
    ///
    /// # Errors
    ///
    /// None at present; the signature leaves room for validation.
    pub fn equivariant_local_periodic(
        training: TrainingSet<T>,
        schedule: S,
        locality: L,
    ) -> Result<Self> {
        Machine::new(training, schedule, locality, PeriodicFull)
    }
}

impl<T: Real, S: NoiseSchedule, L: Locality> Machine<T, S, L, ZeroPadded> {
    /// The equivariant local score with zero-padding boundaries (bbELS),
    /// what zero-padded convolutional networks compute: interior pixels see
    /// every interior patch, pixels near one edge see patches sliding along
    /// that edge at the same depth, corner pixels only the same-location
    /// patch.
    ///
    /// # Errors
    ///
    /// None at present; the signature leaves room for validation.
    pub fn equivariant_local_zero_padded(
        training: TrainingSet<T>,
        schedule: S,
        locality: L,
    ) -> Result<Self> {
        Machine::new(training, schedule, locality, ZeroPadded)
    }
}

impl<T: Real, S: NoiseSchedule, L: Locality, E: Equivariance> Machine<T, S, L, E> {
    /// A machine from its three parts.
    ///
    /// # Errors
    ///
    /// None at present (a [`TrainingSet`] is never empty); the signature
    /// leaves room for validation.
    pub fn new(
        training: TrainingSet<T>,
        schedule: S,
        locality: L,
        equivariance: E,
    ) -> Result<Self> {
        let mut classes: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        if let Some(labels) = training.labels() {
            for (row, &label) in labels.iter().enumerate() {
                classes.entry(label).or_default().push(row);
            }
        }
        let all: Vec<usize> = (0..training.len()).collect();
        let mut ranges = BTreeMap::new();
        ranges.insert(None, channel_ranges(&training, &all));
        for (&label, rows) in &classes {
            ranges.insert(Some(label), channel_ranges(&training, rows));
        }
        Ok(Machine {
            training,
            classes,
            ranges,
            schedule,
            locality,
            equivariance,
            distinct: distinct::DistinctCache::default(),
            spectra: spectra::SpectraCache::default(),
            isa: simd::Isa::detected(),
        })
    }

    /// The instruction set of the machine's vector kernels: `"avx512"`,
    /// `"avx2"` or `"portable"`, the widest the CPU supports unless the
    /// environment variable `SCORE_MACHINES_SIMD` names a lower one (read
    /// once per process; unset, empty or unknown values leave the
    /// widest). The ideal score's loops go no further than AVX2, and the
    /// Fourier transforms of large periodic windows are `rustfft`'s,
    /// which chooses its own instructions.
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 4, 4)?;
    /// let training = TrainingSet::new(shape, vec![0.5_f32; 16], None)?;
    /// let machine = Machine::local(training, LegacyCosine, SquarePatch::new(3)?)?;
    /// assert!(["avx512", "avx2", "portable"].contains(&machine.instruction_set()));
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn instruction_set(&self) -> &'static str {
        self.isa.name()
    }

    /// The training set.
    pub fn training(&self) -> &TrainingSet<T> {
        &self.training
    }

    /// The noise schedule.
    pub fn noise_schedule(&self) -> &S {
        &self.schedule
    }

    /// The locality.
    pub fn locality(&self) -> &L {
        &self.locality
    }

    /// The equivariance constraint.
    pub fn equivariance(&self) -> &E {
        &self.equivariance
    }

    /// The class labels present in the training set, ascending.
    pub fn classes(&self) -> impl Iterator<Item = usize> + '_ {
        self.classes.keys().copied()
    }

    /// Number of (output pixel, candidate patch) comparisons one evaluation
    /// at time `t` makes, over the whole training set.
    ///
    /// # Errors
    ///
    /// As [`Machine::posterior`] for the window at `t`.
    pub fn comparisons(&self, t: f64) -> Result<usize> {
        let plan = Plan::new(
            self.training.shape(),
            &self.locality.window(t),
            &self.equivariance,
        )?;
        Ok(plan.comparisons_per_image() * self.training.len())
    }

    /// The softmax state over this machine's training set for `phi_t = x`,
    /// before normalisation. States of machines over disjoint shards of a
    /// training set (same schedule, locality and equivariance) merge with
    /// [`PartialPosterior::merge`] into the state over their union.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 6, 6)?;
    /// let pixels: Vec<f64> = (0..10 * 36).map(|i| ((i * 7919) % 17) as f64 / 8.0 - 1.0).collect();
    /// let all = TrainingSet::new(shape, pixels, None)?;
    /// let x = Image::from_vec(shape, vec![0.2; 36])?;
    /// let patch = SquarePatch::new(3)?;
    ///
    /// // Two shards (say, on two machines), merged...
    /// let shard = |rows: &[usize]| -> Result<PartialPosterior, Error> {
    ///     Machine::equivariant_local(all.select(rows)?, LegacyCosine, patch.clone())?.posterior(&x, 0.4, None)
    /// };
    /// let mut merged = shard(&[0, 1, 2, 3])?;
    /// merged.merge(&shard(&[4, 5, 6, 7, 8, 9])?)?;
    /// // ...equal the whole set in one pass.
    /// let whole = Machine::equivariant_local(all, LegacyCosine, patch)?.x0_hat(&x, 0.4, None)?;
    /// assert!(merged.to_image::<f64>()?.squared_distance(&whole)? < 1e-24);
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// - [`Error::ShapeMismatch`] if `x` has another shape than the
    ///   training images;
    /// - [`Error::InvalidTime`] if `t` is outside `[0, 1]` or the schedule
    ///   gives a non-finite `a` or `s` there;
    /// - [`Error::NonFinite`] if `x` holds NaN or infinity;
    /// - [`Error::UnknownClass`] if `class` is not a label of the set;
    /// - [`Error::NoCandidates`], [`Error::InvalidWindow`] if the window at
    ///   `t` leaves some output pixel without candidates or is malformed.
    pub fn posterior(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
    ) -> Result<PartialPosterior> {
        let Setup {
            signal,
            beta,
            rows,
            plan,
            ranges,
            query_ranges,
            largest_training,
            largest_query,
            direct_only,
        } = self.setup(x, t, class)?;
        let (height, width) = (plan.patch.height() as f64, plan.patch.width() as f64);
        // The f32 lanes may instead expand `d = Q + A - 2 C` (query and
        // window norms, window sums of cross terms). Each part is a sum of
        // terms below `M = sum_c (max |phi_t| + |a| max |phi^mu|)^2` in size.
        // A row sum slides over at most `pw` columns (`h w pw` rounding
        // steps for the `h` row sums of a window). Down the columns the
        // window norms `A` slide over at most `ph` rows (`h w ph`), and a
        // window of cross terms is three running sums over at most `h` rows,
        // added (`h w 3h`). The final sum rounds once more: at most
        // `eps M h w (pw + max(ph, 3 h) + 1)`.
        let largest_queries: Vec<f64> = query_ranges
            .iter()
            .map(|&(lo, hi)| lo.abs().max(hi.abs()))
            .collect();
        let largest_scaled: Vec<f64> = ranges
            .iter()
            .map(|&(lo, hi)| signal.abs() * lo.abs().max(hi.abs()))
            .collect();
        let largest_cross: f64 = largest_queries
            .iter()
            .zip(&largest_scaled)
            .map(|(q, p)| (q + p).powi(2))
            .sum();
        let down = (plan.padded_height as f64).max(3.0 * height);
        let cross_steps = height * width * (plan.padded_width as f64 + down + 1.0);
        let cross = beta * largest_cross * cross_steps * f64::EPSILON <= T::SLIDING_EXPONENT_ERROR;
        // Or compute the cross terms by Fourier transforms (query windows
        // that wrap): their rounding is bounded by `cross_term_error`, and
        // the norms and the final sum round at most `eps M (n C + 3)`, with
        // `n` the window's `h w` values or, where the window norms are the
        // image's less its left-out lines, `H W + H + W`.
        let shape = plan.shape;
        let whole_terms = (shape.positions() + shape.height + shape.width) as f64;
        let norm_steps = (height * width).max(whole_terms) * query_ranges.len() as f64 + 3.0;
        let spectral_error = 2.0
            * spectral::cross_term_error(&plan, &largest_queries, &largest_scaled)
            + largest_cross * norm_steps * f64::EPSILON;
        let spectral = beta * spectral_error <= T::SLIDING_EXPONENT_ERROR;
        // Or take the running sums of `neighbours` (windows one line short
        // of the image with zero padding), whose steps it counts.
        let neighbour_error = largest_cross * neighbours::rounding_steps(&plan) * f64::EPSILON;
        let neighbours = beta * neighbour_error <= T::SLIDING_EXPONENT_ERROR;

        if plan.global {
            let query = x.as_slice();
            return Ok(self.reduce(&rows, 256, beta, |rows| {
                whole::whole_image(&self.training, rows, query, signal, beta)
            }));
        }
        // The f32 lanes hold sums of up to 1,024 weights of at most e^8
        // times training values: with values up to 1e20 they stay far
        // from the f32 range for any image size. Keep beta where its f32
        // form and the skipping bound of the lane kernel hold.
        let fast = T::as_f32(self.training.as_slice()).filter(|_| {
            !direct_only
                && plan.patch.is_uniform()
                && (1e-30..=1e30).contains(&beta)
                && largest_training <= 1e20
                && largest_query <= 1e30
        });
        if let (Some(images), Some(query)) = (fast, T::as_f32(x.as_slice())) {
            let kernel = LaneKernel {
                signal,
                beta,
                cross,
                spectral,
                neighbours,
            };
            return Ok(self.stream_f32(&plan, images, query, kernel, &rows, class));
        }
        let query = plan.padded(x.as_slice());
        Ok(self.stream(&plan, &query, signal, beta, direct_only, &rows))
    }

    /// Explains `x` at time `t` as a mosaic of training patches: for every
    /// output pixel, its nearest candidate patch `(mu, y)` (the one of
    /// largest softmax weight), the squared distance and that weight.
    ///
    /// Distances are computed in `f64` whatever `T` is, over every
    /// candidate, so this costs about as much as one evaluation of an
    /// `f64` machine (several times an `f32` evaluation). Nearest
    /// candidates at equal distances go to the lowest image index, then the
    /// lowest centre. Where the schedule's noise is 0 (at `t = 0` for every
    /// schedule but `VarianceExploding`) the weights are `1 / m` for `m`
    /// tied candidates, and without ties [`Mosaic::to_image`] is the
    /// machine's prediction; to explain a generated image, pass it with
    /// `t = 0` (or the last time its sampler evaluated). The result is the
    /// same, to the last bit, for any number of threads.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 8, 8)?;
    /// let pixels: Vec<f32> = (0..5 * 64).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
    /// let training = TrainingSet::new(shape, pixels, None)?;
    /// let bbels = Machine::equivariant_local_zero_padded(training, LegacyCosine, SquarePatch::new(3)?)?;
    /// let noisy = Image::from_vec(shape, vec![0.1_f32; 64])?;
    /// let mosaic = bbels.mosaic(&noisy, 0.3, None)?;
    /// for tile in mosaic.tiles() {
    ///     assert!(tile.image < 5 && tile.weight > 0.0 && tile.weight <= 1.0);
    /// }
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Machine::posterior`].
    pub fn mosaic(&self, x: &Image<T>, t: f64, class: Option<usize>) -> Result<Mosaic> {
        let Setup {
            signal,
            beta,
            rows,
            plan,
            direct_only,
            ..
        } = self.setup(x, t, class)?;
        let query = plan.padded(x.as_slice());
        Ok(mosaic::mosaic(
            &self.training,
            &rows,
            &plan,
            &query,
            signal,
            beta,
            direct_only,
        ))
    }

    /// Validates one evaluation at `t` and works out what it needs.
    fn setup(&self, x: &Image<T>, t: f64, class: Option<usize>) -> Result<Setup<'_>> {
        let shape = self.training.shape();
        if x.shape() != shape {
            return Err(Error::shape("query image shape", shape, x.shape()));
        }
        check_time(t)?;
        x.check_finite("query image")?;
        let (signal, noise) = (self.schedule.signal(t), self.schedule.noise(t));
        if !(signal.is_finite() && noise.is_finite()) {
            return Err(Error::InvalidTime {
                t,
                reason: "the schedule gives a non-finite signal or noise scale here",
            });
        }
        if noise < 0.0 {
            return Err(Error::InvalidTime {
                t,
                reason: "the schedule gives a negative noise scale here",
            });
        }
        let beta = 1.0 / (2.0 * noise * noise);
        let ranges = &self.ranges[&class.filter(|label| self.classes.contains_key(label))];
        let rows: Vec<usize> = match class {
            None => (0..self.training.len()).collect(),
            Some(label) => self
                .classes
                .get(&label)
                .cloned()
                .ok_or(Error::UnknownClass(label))?,
        };
        let plan = Plan::new(shape, &self.locality.window(t), &self.equivariance)?;

        // Every squared patch distance is at most
        // (sum of window weights) (max |phi_t| + |a| max |phi^mu|)^2.
        let largest_training = ranges
            .iter()
            .fold(0.0_f64, |m, &(lo, hi)| m.max(lo.abs()).max(hi.abs()));
        let query_ranges = image_ranges(x);
        let largest_query = query_ranges
            .iter()
            .fold(0.0_f64, |m, &(lo, hi)| m.max(lo.abs()).max(hi.abs()));
        let bound = plan.weight_sum() * (largest_query + signal.abs() * largest_training).powi(2);
        if !bound.is_finite() {
            return Err(Error::InvalidParameter(format!(
                "pixel magnitudes up to {largest_query:e} (query) and {largest_training:e} \
                 (training) make squared patch distances overflow"
            )));
        }

        // A sliding sum adds each residual once and subtracts it again, so
        // it carries a rounding error of up to `eps` times the largest
        // residual it has seen into every later sum of its row (at most
        // `pw` steps of sums below `w` residuals) and, through each of the
        // `h` row sums of a window, into the window distances (at most `ph`
        // more steps of sums below `h w` residuals): at most
        // `eps R h w (pw + ph)` per distance, `R` the largest residual.
        // Where beta times that could pass the storage type's
        // `SLIDING_EXPONENT_ERROR` (pixels spanning many orders of
        // magnitude, or tiny noise), every distance is summed directly.
        let (height, width) = (plan.patch.height() as f64, plan.patch.width() as f64);
        let steps = height * width * (plan.padded_width + plan.padded_height) as f64;
        let direct_only =
            beta * largest_residual(&query_ranges, ranges, signal) * steps * f64::EPSILON
                > T::SLIDING_EXPONENT_ERROR;
        Ok(Setup {
            signal,
            beta,
            rows,
            plan,
            ranges,
            query_ranges,
            largest_training,
            largest_query,
            direct_only,
        })
    }

    /// The `f32` path. Output pixels that share a candidate set of small,
    /// often repeated windows compare each distinct window once (see
    /// [`distinct`]); large windows whose query wraps take their cross
    /// terms from Fourier transforms where that costs less (see
    /// [`spectral`]); the others take eight candidates at a time (see
    /// [`fast`]).
    fn stream_f32(
        &self,
        plan: &Plan,
        images: &[f32],
        query: &[f32],
        kernel: LaneKernel,
        rows: &[usize],
        class: Option<usize>,
    ) -> PartialPosterior {
        let LaneKernel { signal, beta, .. } = kernel;
        let shape = self.training.shape();
        let len = shape.len();
        let patch = &plan.patch;
        let set = distinct::small_enough(patch.height() * patch.width() * shape.channels)
            .then(|| distinct::SharedSet::of(plan))
            .flatten();
        if let Some(set) = set {
            let key = distinct::CacheKey {
                class,
                extent: [patch.up(), patch.down(), patch.left(), patch.right()],
                set: set.clone(),
            };
            // A set whose windows repeat too little is not kept: the cache
            // remembers that it is not worth collecting.
            let patches = self.distinct.get_or_collect(key, || {
                distinct::DistinctPatches::collect(
                    plan,
                    &set,
                    rows.iter().map(|&row| &images[row * len..(row + 1) * len]),
                )
                .filter(distinct::worthwhile)
            });
            if let Some(patches) = patches {
                let positions = set.positions();
                let mut padded =
                    vec![0.0f32; plan.padded_height * plan.padded_width * shape.channels];
                plan.pad(query, &mut padded);
                let windows = distinct::DistinctJob::query_windows(plan, &padded, &positions);
                let job = distinct::DistinctJob {
                    patches: &patches,
                    positions: &positions,
                    queries: &windows,
                    signal,
                    beta,
                    isa: self.isa,
                };
                let blocks: Vec<usize> = (0..job.blocks()).collect();
                let mut posterior =
                    self.reduce(&blocks, distinct::chunk_len(blocks.len()), beta, |part| {
                        let mut posterior = PartialPosterior::new(shape, beta);
                        job.run(part[0]..part[part.len() - 1] + 1, &mut posterior);
                        posterior
                    });
                // The output pixels outside the shared set: the rows outside
                // it in full, and the columns outside it on its rows.
                let outside_rows: Vec<bool> = set.rows.iter().map(|&r| !r).collect();
                let outside_cols: Vec<bool> = set.cols.iter().map(|&c| !c).collect();
                let all_cols = vec![true; set.cols.len()];
                for rest in [
                    plan.restricted(&outside_rows, &all_cols),
                    plan.restricted(&set.rows, &outside_cols),
                ]
                .into_iter()
                .flatten()
                {
                    let part = self.stream_lanes(&rest, images, query, kernel, rows);
                    posterior
                        .merge(&part)
                        .expect("parts of one evaluation agree");
                }
                return posterior;
            }
        }
        if kernel.spectral
            && let Some(route) = spectral::choose(plan)
        {
            return self.stream_transforms(plan, &route, images, query, kernel, rows);
        }
        if kernel.neighbours
            && let Some(route) = neighbours::choose(plan)
        {
            return self.stream_neighbours(plan, &route, images, query, kernel, rows);
        }
        self.stream_lanes(plan, images, query, kernel, rows)
    }

    /// Windows one line short of the image with zero padding, in one pass
    /// over each training image (see [`neighbours`]).
    fn stream_neighbours(
        &self,
        plan: &Plan,
        route: &neighbours::NeighbourPlan,
        images: &[f32],
        query: &[f32],
        kernel: LaneKernel,
        rows: &[usize],
    ) -> PartialPosterior {
        let shape = self.training.shape();
        let job = neighbours::NeighbourJob {
            plan,
            route,
            signal: kernel.signal,
            beta: kernel.beta,
            isa: self.isa,
        };
        let len = shape.len();
        let query = job.query(query);
        let chunk = |rows: &[usize]| {
            let mut posterior = PartialPosterior::new(shape, kernel.beta);
            let mut scratch = job.scratch(&query);
            job.run(
                rows.iter().map(|&row| &images[row * len..(row + 1) * len]),
                &mut scratch,
                &mut posterior,
            );
            posterior
        };
        self.reduce(rows, neighbours::chunk_len(rows.len()), kernel.beta, chunk)
    }

    /// Cross terms by Fourier transforms, per candidate centre (see
    /// [`spectral`]) or per image with line corrections (see [`torus`]).
    fn stream_transforms(
        &self,
        plan: &Plan,
        route: &spectral::Route,
        images: &[f32],
        query: &[f32],
        kernel: LaneKernel,
        rows: &[usize],
    ) -> PartialPosterior {
        let shape = self.training.shape();
        let (signal, beta) = (kernel.signal, kernel.beta);
        let len = shape.len();
        let spectra = match route {
            spectral::Route::Torus(_) => {
                self.spectra
                    .get_or_compute(images, shape, self.training.len(), spectra::MAX_BYTES)
            }
            spectral::Route::PerCentre(_) => None,
        };
        let chunk = |rows: &[usize]| {
            let mut posterior = PartialPosterior::new(shape, beta);
            let images = rows
                .iter()
                .map(|&row| (row, &images[row * len..(row + 1) * len]));
            match route {
                spectral::Route::PerCentre(spectral) => {
                    let job = spectral::SpectralJob {
                        plan,
                        spectral,
                        signal,
                        beta,
                        isa: self.isa,
                    };
                    job.run(images, &mut job.scratch(query), &mut posterior);
                }
                spectral::Route::Torus(torus) => {
                    let job = torus::TorusJob {
                        plan,
                        torus,
                        signal,
                        beta,
                        isa: self.isa,
                        spectra: spectra.as_deref(),
                    };
                    job.run(images, &mut job.scratch(query), &mut posterior);
                }
            }
            posterior
        };
        let chunk_len = fast::chunk_len(rows.len(), fast::TRANSFORM_CHUNKS_PER_CORE);
        self.reduce(rows, chunk_len, beta, chunk)
    }

    /// Eight candidates at a time, see [`fast`].
    fn stream_lanes(
        &self,
        plan: &Plan,
        images: &[f32],
        query: &[f32],
        kernel: LaneKernel,
        rows: &[usize],
    ) -> PartialPosterior {
        let shape = self.training.shape();
        let lanes = fast::LanePlan::new(plan, rows.len());
        let LaneKernel {
            signal,
            beta,
            cross,
            ..
        } = kernel;
        let job = fast::LaneJob {
            plan,
            lanes: &lanes,
            signal,
            beta,
            cross,
            isa: self.isa,
        };
        let len = shape.len();
        let query = job.query(query);
        let chunk = |rows: &[usize]| {
            let mut posterior = PartialPosterior::new(shape, beta);
            let mut scratch = job.scratch(&query);
            job.run(
                rows.iter().map(|&row| &images[row * len..(row + 1) * len]),
                &mut scratch,
                &mut posterior,
            );
            posterior
        };
        let chunk_len = fast::chunk_len(rows.len(), fast::LANE_CHUNKS_PER_CORE);
        self.reduce(rows, chunk_len, beta, chunk)
    }

    /// Splits `rows` into chunks, evaluates each (on every core with the
    /// `parallel` feature) and merges the parts.
    fn reduce(
        &self,
        rows: &[usize],
        chunk_len: usize,
        beta: f64,
        chunk: impl Fn(&[usize]) -> PartialPosterior + Sync + Send,
    ) -> PartialPosterior {
        let shape = self.training.shape();
        let merge = |mut a: PartialPosterior, b: PartialPosterior| {
            a.merge(&b).expect("parts of one evaluation agree");
            a
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            rows.par_chunks(chunk_len)
                .map(chunk)
                .reduce(|| PartialPosterior::new(shape, beta), merge)
        }
        #[cfg(not(feature = "parallel"))]
        {
            rows.chunks(chunk_len)
                .map(chunk)
                .fold(PartialPosterior::new(shape, beta), merge)
        }
    }

    fn stream(
        &self,
        plan: &Plan,
        query: &[f64],
        signal: f64,
        beta: f64,
        direct_only: bool,
        rows: &[usize],
    ) -> PartialPosterior {
        let shape = self.training.shape();
        let chunk = |rows: &[usize]| {
            let mut posterior = PartialPosterior::new(shape, beta);
            kernel::accumulate_images(
                &self.training,
                rows,
                plan,
                query,
                signal,
                direct_only,
                &mut posterior,
                |_, _| {},
            );
            posterior
        };
        self.reduce(rows, CHUNK, beta, chunk)
    }
    /// Writes `x0hat(phi_t = x, t)` into `out`, optionally conditioned on a
    /// class (the machine built on that class's images alone).
    ///
    /// # Errors
    ///
    /// As [`Machine::posterior`], and [`Error::ShapeMismatch`] if `out`
    /// has another shape than `x`.
    pub fn x0_hat_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        out: &mut Image<T>,
    ) -> Result<()> {
        if out.shape() != x.shape() {
            return Err(Error::shape("output image shape", x.shape(), out.shape()));
        }
        self.posterior(x, t, class)?.write_into(out)?;

        // A convex combination lies within the range of the values combined;
        // rounding can step a few units in the last place outside it.
        let ranges = &self.ranges[&class];
        let plane = x.shape().positions();
        for (channel, values) in out.as_mut_slice().chunks_mut(plane).enumerate() {
            let (lo, hi) = ranges[channel];
            for v in values {
                *v = T::narrow(v.widen().clamp(lo, hi));
            }
        }
        Ok(())
    }
}

/// One validated evaluation: its scalars, training rows and plan, and the
/// bounds that choose its kernel.
struct Setup<'a> {
    signal: f64,
    beta: f64,
    rows: Vec<usize>,
    plan: Plan,
    /// Per channel, the range of the training values the evaluation uses.
    ranges: &'a [(f64, f64)],
    /// Per channel, the range of the query.
    query_ranges: Vec<(f64, f64)>,
    largest_training: f64,
    largest_query: f64,
    /// Whether sliding sums could round past the exponent bound.
    direct_only: bool,
}

/// The scalars of one evaluation that the `f32` lane kernel needs.
#[derive(Clone, Copy)]
struct LaneKernel {
    signal: f64,
    beta: f64,
    /// Whether distances may be expanded into norms and cross terms.
    cross: bool,
    /// Whether the cross terms may be computed by Fourier transforms.
    spectral: bool,
    /// Whether the running sums of [`neighbours`] may be used.
    neighbours: bool,
}

/// Per channel, the smallest and largest value of `x`.
fn image_ranges<T: Real>(x: &Image<T>) -> Vec<(f64, f64)> {
    x.as_slice()
        .chunks(x.shape().positions())
        .map(|values| {
            values
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                    (lo.min(v.widen()), hi.max(v.widen()))
                })
        })
        .collect()
}

/// The largest residual `sum_c (phi_t(c, z) - a phi^mu(c, z'))^2` any
/// window sum can meet: per channel, from the ranges of the query and of
/// the training images, both widened to include the zeros of padding.
fn largest_residual(
    query_ranges: &[(f64, f64)],
    training_ranges: &[(f64, f64)],
    signal: f64,
) -> f64 {
    query_ranges
        .iter()
        .zip(training_ranges)
        .map(|(&(q_lo, q_hi), &(p_lo, p_hi))| {
            let (q_lo, q_hi) = (q_lo.min(0.0), q_hi.max(0.0));
            let (p_lo, p_hi) = (p_lo.min(0.0), p_hi.max(0.0));
            let (s_lo, s_hi) = if signal >= 0.0 {
                (signal * p_lo, signal * p_hi)
            } else {
                (signal * p_hi, signal * p_lo)
            };
            (q_lo - s_hi).powi(2).max((q_hi - s_lo).powi(2))
        })
        .sum()
}

/// Per channel, the smallest and largest value of the training images
/// `rows`.
fn channel_ranges<T: Real>(training: &TrainingSet<T>, rows: &[usize]) -> Vec<(f64, f64)> {
    let shape = training.shape();
    let plane = shape.positions();
    // Eight running extremes per channel, so that the comparisons
    // vectorise (the values are finite: `TrainingSet::new` checks).
    const WAYS: usize = 8;
    let mut lows = vec![[f64::INFINITY; WAYS]; shape.channels];
    let mut highs = vec![[f64::NEG_INFINITY; WAYS]; shape.channels];
    for &row in rows {
        for ((values, low), high) in training
            .image(row)
            .chunks(plane)
            .zip(&mut lows)
            .zip(&mut highs)
        {
            let mut chunks = values.chunks_exact(WAYS);
            for chunk in &mut chunks {
                for ((v, lo), hi) in chunk.iter().zip(low.iter_mut()).zip(high.iter_mut()) {
                    let v = v.widen();
                    *lo = if v < *lo { v } else { *lo };
                    *hi = if v > *hi { v } else { *hi };
                }
            }
            for (v, (lo, hi)) in chunks.remainder().iter().zip(low.iter_mut().zip(high)) {
                *lo = lo.min(v.widen());
                *hi = hi.max(v.widen());
            }
        }
    }
    lows.iter()
        .zip(&highs)
        .map(|(low, high)| {
            let lo = low.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = high.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            (lo, hi)
        })
        .collect()
}

impl<T: Real, S: NoiseSchedule, L: Locality, E: Equivariance> ScoreFunction<T>
    for Machine<T, S, L, E>
{
    fn schedule(&self) -> &dyn NoiseSchedule {
        &self.schedule
    }

    fn shape(&self) -> Option<Shape> {
        Some(self.training.shape())
    }

    fn native(&self) -> Prediction {
        Prediction::CleanImage
    }

    fn predict_native_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        out: &mut Image<T>,
    ) -> Result<()> {
        self.x0_hat_into(x, t, class, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::locality::SquarePatch;
    use crate::schedule::LegacyCosine;

    fn training() -> TrainingSet<f64> {
        let shape = Shape::new(1, 5, 6).unwrap();
        let data = (0..4 * 30)
            .map(|i| ((i * 7919 % 17) as f64) / 8.0 - 1.0)
            .collect();
        TrainingSet::new(shape, data, Some(vec![0, 1, 0, 2])).unwrap()
    }

    #[test]
    fn single_image_is_returned_exactly() {
        let set = training().select(&[1]).unwrap();
        let machine =
            Machine::local(set.clone(), LegacyCosine, SquarePatch::new(3).unwrap()).unwrap();
        let x = Image::zeros(set.shape());
        let out = machine.x0_hat(&x, 0.7, None).unwrap();
        assert_eq!(out.as_slice(), set.image(0));
    }

    #[test]
    fn reference_els_rejects_patch_larger_than_image() {
        let set = training();
        let machine =
            Machine::equivariant_local(set.clone(), LegacyCosine, SquarePatch::new(7).unwrap())
                .unwrap();
        let err = machine
            .x0_hat(&Image::zeros(set.shape()), 0.5, None)
            .unwrap_err();
        assert!(matches!(err, Error::NoCandidates(_)), "{err}");
    }

    #[test]
    fn time_zero_picks_the_nearest_image() {
        let set = training();
        let machine = Machine::ideal(set.clone(), LegacyCosine).unwrap();
        let x = set.to_image(2);
        let out = machine.x0_hat(&x, 0.0, None).unwrap();
        assert_eq!(out.as_slice(), set.image(2));
    }

    type Pair = (Result<Image<f32>>, Result<Image<f64>>);

    /// `images` deterministic `f32` training images of `shape` and a query,
    /// and the same values widened to `f64`.
    fn same_values(
        images: usize,
        shape: Shape,
    ) -> (TrainingSet<f32>, TrainingSet<f64>, Image<f32>, Image<f64>) {
        let pixels: Vec<f32> = (0..images * shape.len())
            .map(|i| ((i * 7919 + 13) % 97) as f32 / 48.0 - 1.0)
            .collect();
        let wide: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
        let query: Vec<f32> = (0..shape.len())
            .map(|i| ((i * 31) % 23) as f32 / 11.0 - 1.0)
            .collect();
        let narrow_query = Image::from_vec(shape, query).unwrap();
        let wide_query = narrow_query.cast();
        (
            TrainingSet::new(shape, pixels, None).unwrap(),
            TrainingSet::new(shape, wide, None).unwrap(),
            narrow_query,
            wide_query,
        )
    }

    /// The `f32` lane kernel against the `f64` kernel on the same values.
    #[test]
    fn lane_kernel_matches_f64_kernel() {
        let shape = Shape::new(2, 9, 13).unwrap();
        let (narrow_set, wide_set, narrow_query, wide_query) = same_values(7, shape);
        f32_matches_f64(
            &narrow_set,
            &wide_set,
            &narrow_query,
            &wide_query,
            &[1, 3, 5, 9, 15],
        );
    }

    /// `images` sparse `f32` images of `shape` (background -1, a few
    /// pixels at three levels), whose small windows repeat often, and the
    /// same values widened to `f64`.
    fn sparse_values(images: usize, shape: Shape) -> (TrainingSet<f32>, TrainingSet<f64>) {
        let pixels: Vec<f32> = (0..images * shape.len())
            .map(|i| {
                let hash = (i * 7919 + 13) % 97;
                if hash % 4 == 0 {
                    [0.0, 0.5, 1.0][hash % 3]
                } else {
                    -1.0
                }
            })
            .collect();
        let wide: Vec<f64> = pixels.iter().map(|&v| v as f64).collect();
        let labels: Vec<usize> = (0..images).map(|i| i % 3).collect();
        (
            TrainingSet::new(shape, pixels, Some(labels.clone())).unwrap(),
            TrainingSet::new(shape, wide, Some(labels)).unwrap(),
        )
    }

    /// Every instruction set the CPU has gives the same estimate on every
    /// route (distinct windows, image lanes with and without cross terms,
    /// column lanes, whole-image transforms): AVX2 and AVX-512 to the bit,
    /// the portable lanes, which round without fused multiply-adds, to
    /// the rounding of `f32`.
    #[test]
    fn instruction_sets_give_the_same_estimates() {
        fn check<S, L, E>(machine: &Machine<f32, S, L, E>, query: &Image<f32>)
        where
            S: NoiseSchedule + Clone,
            L: Locality + Clone,
            E: Equivariance + Clone,
        {
            let estimates: Vec<(simd::Isa, Image<f32>)> = simd::Isa::available()
                .into_iter()
                .map(|isa| {
                    let mut machine = machine.clone();
                    machine.isa = isa;
                    (isa, machine.x0_hat(query, 0.3, None).unwrap())
                })
                .collect();
            let (_, portable) = &estimates[0];
            for (isa, estimate) in &estimates[1..] {
                for (a, b) in estimate.as_slice().iter().zip(portable.as_slice()) {
                    assert!((a - b).abs() <= 1e-5, "{isa:?}: {a} against {b}");
                }
                assert_eq!(estimate, &estimates[1].1, "{isa:?}");
            }
        }
        let shape = Shape::new(1, 12, 12).unwrap();
        let (sparse, _) = sparse_values(40, shape);
        let (dense, _, query, _) = same_values(40, shape);
        let (few, _, _, _) = same_values(5, shape);
        let square = |side| SquarePatch::new(side).unwrap();
        let distinct =
            Machine::equivariant_local_zero_padded(sparse, LegacyCosine, square(3)).unwrap();
        check(&distinct, &query);
        assert_eq!(distinct.distinct.len(), 1, "distinct windows");
        for side in [3, 5, 11] {
            check(
                &Machine::equivariant_local(dense.clone(), LegacyCosine, square(side)).unwrap(),
                &query,
            );
            check(
                &Machine::equivariant_local_zero_padded(dense.clone(), LegacyCosine, square(side))
                    .unwrap(),
                &query,
            );
            check(
                &Machine::equivariant_local(few.clone(), LegacyCosine, square(side)).unwrap(),
                &query,
            );
        }
        check(
            &Machine::local(dense.clone(), LegacyCosine, square(5)).unwrap(),
            &query,
        );
    }

    /// Windows one line short of the image take the whole-torus route; with
    /// the training images' transforms kept by the machine they give what
    /// transforming each image per evaluation gives, with and without a
    /// class (whose images are not consecutive), for one and three
    /// channels.
    #[test]
    fn kept_transforms_change_nothing() {
        for channels in [1, 3] {
            let shape = Shape::new(channels, 10, 9).unwrap();
            let (narrow_set, wide_set) = sparse_values(21, shape);
            let (_, _, query, wide_query) = same_values(1, shape);
            let patch = crate::locality::Patch::offsets(4, 4, 4, 3);
            let kept = Machine::new(
                narrow_set.clone(),
                LegacyCosine,
                patch.clone(),
                PeriodicInterior,
            )
            .unwrap();
            let mut per_evaluation = kept.clone();
            per_evaluation.spectra = spectra::SpectraCache::refusing();
            let wide = Machine::new(wide_set, LegacyCosine, patch, PeriodicInterior).unwrap();
            for (t, class) in [(0.3, None), (0.6, Some(1)), (0.05, Some(2))] {
                let a = kept.x0_hat(&query, t, class).unwrap();
                let b = per_evaluation.x0_hat(&query, t, class).unwrap();
                let reference = wide.x0_hat(&wide_query, t, class).unwrap();
                for ((a, b), r) in a
                    .as_slice()
                    .iter()
                    .zip(b.as_slice())
                    .zip(reference.as_slice())
                {
                    assert!(
                        (a - b).abs() <= 1e-6,
                        "{channels} channels, {class:?}: {a} against {b}"
                    );
                    assert!(
                        (*a as f64 - r).abs() <= 2e-5,
                        "{a} against the f64 kernel's {r}"
                    );
                }
            }
            assert!(kept.spectra.is_kept());
            assert!(!per_evaluation.spectra.is_kept());
        }
    }

    /// Clones of one machine evaluated at once on the workers of a rayon
    /// pool, while the first of them computes the kept transforms on the
    /// same workers: a worker waiting for a block of that computation may
    /// pick up another evaluation, which must not wait for the
    /// computation it is part of. Fails (instead of hanging) if the
    /// evaluations do not finish within a minute.
    #[cfg(feature = "parallel")]
    #[test]
    fn clones_evaluated_on_the_same_pool_while_transforms_are_kept() {
        use rayon::prelude::*;
        let shape = Shape::new(1, 10, 9).unwrap();
        let (set, _) = sparse_values(3000, shape);
        let (_, _, query, _) = same_values(1, shape);
        let patch = crate::locality::Patch::offsets(4, 4, 4, 3);
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(32)
                .build()
                .unwrap();
            for _ in 0..10 {
                let machine =
                    Machine::new(set.clone(), LegacyCosine, patch.clone(), PeriodicInterior)
                        .unwrap();
                let first: Vec<f32> = pool.install(|| {
                    (0..64)
                        .into_par_iter()
                        .map(|i| {
                            let t = 0.3 + 0.001 * (i % 4) as f64;
                            machine.clone().x0_hat(&query, t, None).unwrap().as_slice()[0]
                        })
                        .collect()
                });
                assert!(first.iter().all(|v| v.is_finite()));
                assert!(machine.spectra.is_kept());
            }
            done.send(()).unwrap();
        });
        finished
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("evaluations on one pool finished");
    }

    /// Repeated small windows, compared once and weighted by their count,
    /// give what the `f64` kernel gives comparing every candidate, with
    /// and without a class, for one and three channels.
    #[test]
    fn distinct_windows_match_f64_kernel() {
        for (channels, sides) in [(1, &[1, 3][..]), (3, &[1][..])] {
            let shape = Shape::new(channels, 11, 9).unwrap();
            let (narrow_set, wide_set) = sparse_values(40, shape);
            let (_, _, narrow_query, wide_query) = same_values(1, shape);
            f32_matches_f64(&narrow_set, &wide_set, &narrow_query, &wide_query, sides);
            let machine = Machine::equivariant_local_zero_padded(
                narrow_set.clone(),
                LegacyCosine,
                SquarePatch::new(sides[0]).unwrap(),
            )
            .unwrap();
            for class in [None, Some(1)] {
                let narrow = machine.x0_hat(&narrow_query, 0.2, class).unwrap();
                let wide = Machine::equivariant_local_zero_padded(
                    wide_set.clone(),
                    LegacyCosine,
                    SquarePatch::new(sides[0]).unwrap(),
                )
                .unwrap()
                .x0_hat(&wide_query, 0.2, class)
                .unwrap();
                for (a, b) in narrow.as_slice().iter().zip(wide.as_slice()) {
                    assert!((*a as f64 - b).abs() < 2e-5, "{class:?}: {a} vs {b}");
                }
            }
            // Both evaluations took the distinct-window path.
            assert_eq!(machine.distinct.len(), 2);
            // A lopsided window (two rows, three columns, off centre).
            let patch = crate::locality::Patch::offsets(1, 0, 0, 2);
            let narrow =
                Machine::new(narrow_set.clone(), LegacyCosine, patch.clone(), ZeroPadded).unwrap();
            let wide = Machine::new(wide_set.clone(), LegacyCosine, patch, ZeroPadded).unwrap();
            let (a, b) = (
                narrow.x0_hat(&narrow_query, 0.3, None).unwrap(),
                wide.x0_hat(&wide_query, 0.3, None).unwrap(),
            );
            for (a, b) in a.as_slice().iter().zip(b.as_slice()) {
                assert!((*a as f64 - b).abs() < 2e-5, "lopsided: {a} vs {b}");
            }
            assert_eq!(narrow.distinct.len(), 1);
        }
    }

    /// Every patch machine in `f32` against the same machine in `f64`.
    fn f32_matches_f64(
        narrow_set: &TrainingSet<f32>,
        wide_set: &TrainingSet<f64>,
        narrow_query: &Image<f32>,
        wide_query: &Image<f64>,
        sides: &[usize],
    ) {
        for &side in sides {
            let local = SquarePatch::new(side).unwrap();
            for t in [0.05, 0.3, 0.9] {
                let pairs: Vec<Pair> = vec![
                    (
                        Machine::local(narrow_set.clone(), LegacyCosine, local.clone())
                            .unwrap()
                            .x0_hat(narrow_query, t, None),
                        Machine::local(wide_set.clone(), LegacyCosine, local.clone())
                            .unwrap()
                            .x0_hat(wide_query, t, None),
                    ),
                    (
                        Machine::equivariant_local(narrow_set.clone(), LegacyCosine, local.clone())
                            .unwrap()
                            .x0_hat(narrow_query, t, None),
                        Machine::equivariant_local(wide_set.clone(), LegacyCosine, local.clone())
                            .unwrap()
                            .x0_hat(wide_query, t, None),
                    ),
                    (
                        Machine::equivariant_local_periodic(
                            narrow_set.clone(),
                            LegacyCosine,
                            local.clone(),
                        )
                        .unwrap()
                        .x0_hat(narrow_query, t, None),
                        Machine::equivariant_local_periodic(
                            wide_set.clone(),
                            LegacyCosine,
                            local.clone(),
                        )
                        .unwrap()
                        .x0_hat(wide_query, t, None),
                    ),
                    (
                        Machine::equivariant_local_zero_padded(
                            narrow_set.clone(),
                            LegacyCosine,
                            local.clone(),
                        )
                        .unwrap()
                        .x0_hat(narrow_query, t, None),
                        Machine::equivariant_local_zero_padded(
                            wide_set.clone(),
                            LegacyCosine,
                            local.clone(),
                        )
                        .unwrap()
                        .x0_hat(wide_query, t, None),
                    ),
                ];
                for (index, (narrow, wide)) in pairs.into_iter().enumerate() {
                    match (narrow, wide) {
                        (Ok(narrow), Ok(wide)) => {
                            for (a, b) in narrow.as_slice().iter().zip(wide.as_slice()) {
                                let error = (*a as f64 - b).abs() / b.abs().max(1.0);
                                assert!(
                                    error < 2e-5,
                                    "machine {index}, k {side}, t {t}: {a} vs {b}"
                                );
                            }
                        }
                        (Err(Error::NoCandidates(_)), Err(Error::NoCandidates(_))) => {}
                        (a, b) => panic!(
                            "machine {index}, k {side}, t {t}: {:?} vs {:?}",
                            a.err(),
                            b.err()
                        ),
                    }
                }
            }
        }
    }

    /// The `f32` kernel's softmax state keeps the exact nearest distance
    /// and a largest weight of 1, like the `f64` kernel's: same minimum
    /// distances and normalisers, for every patch machine and many
    /// images (several folds and chunks).
    #[test]
    fn lane_kernel_posterior_matches_f64_posterior() {
        let shape = Shape::new(1, 12, 10).unwrap();
        let (narrow_set, wide_set, narrow_query, wide_query) = same_values(150, shape);
        let local = SquarePatch::new(3).unwrap();
        for t in [0.02, 0.5, 1.0] {
            let narrow = [
                Machine::local(narrow_set.clone(), LegacyCosine, local.clone())
                    .unwrap()
                    .posterior(&narrow_query, t, None),
                Machine::equivariant_local(narrow_set.clone(), LegacyCosine, local.clone())
                    .unwrap()
                    .posterior(&narrow_query, t, None),
                Machine::equivariant_local_zero_padded(
                    narrow_set.clone(),
                    LegacyCosine,
                    local.clone(),
                )
                .unwrap()
                .posterior(&narrow_query, t, None),
            ];
            let wide = [
                Machine::local(wide_set.clone(), LegacyCosine, local.clone())
                    .unwrap()
                    .posterior(&wide_query, t, None),
                Machine::equivariant_local(wide_set.clone(), LegacyCosine, local.clone())
                    .unwrap()
                    .posterior(&wide_query, t, None),
                Machine::equivariant_local_zero_padded(
                    wide_set.clone(),
                    LegacyCosine,
                    local.clone(),
                )
                .unwrap()
                .posterior(&wide_query, t, None),
            ];
            for (index, (narrow, wide)) in narrow.into_iter().zip(wide).enumerate() {
                let (narrow, wide) = (narrow.unwrap(), wide.unwrap());
                for (a, b) in narrow.min_distances().iter().zip(wide.min_distances()) {
                    assert!(
                        (a - b).abs() <= 1e-12 * b.abs().max(1.0),
                        "machine {index}, t {t}: nearest {a} vs {b}"
                    );
                }
                for (a, b) in narrow.normalisers().iter().zip(wide.normalisers()) {
                    assert!(
                        (a - b).abs() <= 2e-5 * b.abs(),
                        "machine {index}, t {t}: normaliser {a} vs {b}"
                    );
                }
            }
        }
    }

    /// Shards of an `f32` training set, evaluated apart by the lane kernel
    /// and merged, give the whole set's answer to `1e-6`.
    #[test]
    fn merged_f32_shards_equal_the_whole_set() {
        let shape = Shape::new(1, 12, 10).unwrap();
        let (whole, _, x, _) = same_values(150, shape);
        let first: Vec<usize> = (0..150).filter(|i| i % 3 == 0).collect();
        let rest: Vec<usize> = (0..150).filter(|i| i % 3 != 0).collect();
        let (first, rest) = (whole.select(&first).unwrap(), whole.select(&rest).unwrap());
        let mut worst: f64 = 0.0;
        for t in [0.05, 0.5, 1.0] {
            for side in [1, 3, 7] {
                let local = SquarePatch::new(side).unwrap();
                let posterior = |set: &TrainingSet<f32>, kind: usize| {
                    let set = set.clone();
                    match kind {
                        0 => Machine::local(set, LegacyCosine, local.clone())
                            .unwrap()
                            .posterior(&x, t, None),
                        1 => Machine::equivariant_local(set, LegacyCosine, local.clone())
                            .unwrap()
                            .posterior(&x, t, None),
                        _ => {
                            Machine::equivariant_local_zero_padded(set, LegacyCosine, local.clone())
                                .unwrap()
                                .posterior(&x, t, None)
                        }
                    }
                    .unwrap()
                };
                for kind in 0..3 {
                    let mut merged = posterior(&first, kind);
                    merged.merge(&posterior(&rest, kind)).unwrap();
                    let merged: Image<f64> = merged.to_image().unwrap();
                    let single: Image<f64> = posterior(&whole, kind).to_image().unwrap();
                    for (a, b) in merged.as_slice().iter().zip(single.as_slice()) {
                        let error = (a - b).abs() / b.abs().max(1.0);
                        worst = worst.max(error);
                        assert!(error <= 1e-6, "machine {kind}, t {t}, k {side}: {a} vs {b}");
                    }
                }
            }
        }
        println!("merged f32 shards: worst relative difference {worst:.2e}");
    }

    #[test]
    fn unknown_class_is_an_error() {
        let set = training();
        let machine = Machine::ideal(set.clone(), LegacyCosine).unwrap();
        let err = machine
            .x0_hat(&Image::zeros(set.shape()), 0.5, Some(9))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownClass(9)));
    }
}
