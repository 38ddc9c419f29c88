//! Recorded reverse trajectories of a reference score function, such as a
//! trained network, and their replay.
//!
//! A recording holds, for each of `M` initial noises (one per seed) and
//! each of `n` sampler steps in sampling order:
//!
//! ```text
//! initial[m]     phi_1, the state at t = 1 (the initial noise)
//! input[m][i]    x_t, the state the reference saw at step i, t = times[i]
//! noise[m][i]    epshat(x_t, t), the reference's noise prediction there
//! final[m]       the state after the last step
//! ```
//!
//! This is all that calibration ([`crate::calibrate`]) and comparison
//! ([`crate::compare`]) need from a reference, whether it is a network
//! recorded elsewhere and read from files ([`RecordedTrajectories::read`],
//! with the `io` feature), or any [`ScoreFunction`] of this crate (a
//! machine, or a live network behind [`ClosureScore`](crate::ClosureScore))
//! recorded here with [`RecordedTrajectories::record`]. A recording replays
//! as a score function with [`RecordedTrajectories::replay`].
//!
//! # Folder format
//!
//! A folder holds five C-order `float32` or `float64` `.npy` arrays, with
//! `C x H x W` images:
//!
//! | file | shape | content |
//! |---|---|---|
//! | `seeds.npy` | `[M, C, H, W]` | the initial noise of each trajectory |
//! | `xt.npy` | `[M, n, C, H, W]` | the input `x_t` at each step |
//! | `eps.npy` | `[M, n, C, H, W]` | the noise prediction at each step |
//! | `final.npy` | `[M, C, H, W]` | the final image |
//! | `times.npy` | `[n]` | the time `t` of each step, decreasing |
//!
//! Other files (a `meta.json` describing the run, say) are ignored.
//!
//! # Example
//!
//! ```
//! use score_machines::prelude::*;
//! use score_machines::reference::RecordedTrajectories;
//!
//! let shape = Shape::new(1, 4, 4)?;
//! let pixels: Vec<f64> = (0..3 * 16).map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0).collect();
//! let machine = Machine::ideal(TrainingSet::new(shape, pixels, None)?, LegacyCosine)?;
//! let sampler = Sampler::new(Method::Ddim, 10)?;
//! let noises = [initial_noise(shape, 0), initial_noise(shape, 1)];
//! let recording = RecordedTrajectories::record(&machine, &sampler, &noises, None)?;
//! assert_eq!((recording.len(), recording.steps()), (2, 10));
//!
//! // Replaying trajectory 1 through the same sampler gives its final image
//! // (up to rounding: the machine predicts x0hat, the replay the noise).
//! let replay = recording.replay(1, LegacyCosine)?;
//! let again = sampler.sample(&replay, recording.initial_noise(1)?, None, &mut ())?;
//! let gap = again.squared_distance(&recording.final_image(1)?)?.sqrt();
//! assert!(gap < 1e-12);
//! # Ok::<(), score_machines::Error>(())
//! ```

use std::ops::Range;

use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;
use crate::sampler::{Sampler, Trajectory};
use crate::schedule::{NoiseSchedule, check_time};
use crate::score::{Prediction, ScoreFunction};

/// Two times closer than this are the same step: [`RecordedTrajectories::step_at`]
/// matches a requested `t` to a recorded time within it.
///
/// Times stored as `float32` are within `6e-8` of their decimal values
/// (`0.95` is stored as `0.949999988`), so `1e-6` matches them to the
/// `f64` times of a [`Sampler`] while keeping any two steps of a
/// sampler of up to `10^5` steps apart.
pub const TIME_TOLERANCE: f64 = 1e-6;

/// Default tolerance of the input check of [`ReplayedScore`]: the largest
/// accepted `|x - x_t| / max(1, |x_t|)` over the pixels of an input `x`
/// and the recorded input `x_t`.
///
/// Replaying the recorded noise predictions of the shared CNN recordings
/// through this crate's DDIM sampler from their initial noise reproduces
/// every recorded input to within `9e-5` (the network's own float32
/// rounding, about `4e-6` on its first step, grows by the DDIM
/// coefficients along the trajectory); `1e-3` leaves a margin of ten for
/// other rounding while refusing any input that is genuinely elsewhere:
/// two trajectories' inputs differ by order 1.
pub const DEFAULT_INPUT_TOLERANCE: f64 = 1e-3;

/// The files of a recording folder.
#[cfg(feature = "io")]
const FILES: [&str; 5] = ["times.npy", "seeds.npy", "xt.npy", "eps.npy", "final.npy"];

/// The reverse trajectories of a reference score function from `M` initial
/// noises over `n` sampler steps: initial noise, input `x_t` and noise
/// prediction `epshat(x_t, t)` at every step, and final image (see the
/// [module documentation](self)).
///
/// Every trajectory carries an identifier, its seed: `0 .. M` for a new or
/// read recording, kept by [`RecordedTrajectories::select`].
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedTrajectories<T> {
    shape: Shape,
    times: Vec<f64>,
    seeds: Vec<usize>,
    initial: Vec<T>,
    inputs: Vec<T>,
    noise: Vec<T>,
    finals: Vec<T>,
}

impl<T: Real> RecordedTrajectories<T> {
    /// A recording from its buffers, each in C order: `initial` and
    /// `finals` hold `M` images of `shape`, `inputs` and `noise` hold
    /// `M x n` images (trajectory-major), `times` the `n` step times.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidParameter`] if there is no step or no trajectory,
    ///   or if the times are not finite, within `[0, 1]` and strictly
    ///   decreasing by more than [`TIME_TOLERANCE`];
    /// - [`Error::ShapeMismatch`] if a buffer's length does not fit `M`,
    ///   `n` and `shape`, with `M` taken from `initial`;
    /// - [`Error::NonFinite`] if a value is NaN or infinite;
    /// - [`Error::InvalidParameter`] if the input at the first step of a
    ///   trajectory is not its initial noise (to within `1e-6` relative).
    pub fn new(
        shape: Shape,
        times: Vec<f64>,
        initial: Vec<T>,
        inputs: Vec<T>,
        noise: Vec<T>,
        finals: Vec<T>,
    ) -> Result<Self> {
        check_times(&times)?;
        let len = shape.len();
        if initial.is_empty() || !initial.len().is_multiple_of(len) {
            return Err(if initial.is_empty() {
                Error::InvalidParameter("a recording needs at least one trajectory".into())
            } else {
                Error::shape(
                    "initial noise buffer length (a multiple of the image size)",
                    format!("M * {len}"),
                    initial.len(),
                )
            });
        }
        let count = initial.len() / len;
        let steps = times.len();
        let per_step = count * steps * len;
        for (what, buffer, expected) in [
            (
                "input buffer length (M * steps * image size)",
                &inputs,
                per_step,
            ),
            (
                "noise buffer length (M * steps * image size)",
                &noise,
                per_step,
            ),
            (
                "final image buffer length (M * image size)",
                &finals,
                count * len,
            ),
        ] {
            if buffer.len() != expected {
                return Err(Error::shape(what, expected, buffer.len()));
            }
        }
        for (what, buffer) in [
            ("recorded initial noise", &initial),
            ("recorded inputs", &inputs),
            ("recorded noise predictions", &noise),
            ("recorded final images", &finals),
        ] {
            if !buffer.iter().all(|v| v.is_finite()) {
                return Err(Error::NonFinite(what));
            }
        }
        let recording = RecordedTrajectories {
            shape,
            times,
            seeds: (0..count).collect(),
            initial,
            inputs,
            noise,
            finals,
        };
        recording.check_first_inputs()?;
        Ok(recording)
    }

    /// Records `score` sampled by `sampler` from each of `initial`
    /// (optionally for class `class`): the input and noise prediction at
    /// every step, as the sampler's [`StepRecord`](crate::sampler::StepRecord)
    /// shows them, and the final state.
    ///
    /// For Heun's method the recorded prediction is the first of each
    /// step's two evaluations, the one at the step's input.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `initial` is empty,
    /// [`Error::ShapeMismatch`] if its images differ in shape, and any
    /// error of [`Sampler::sample`].
    pub fn record<F>(
        score: &F,
        sampler: &Sampler,
        initial: &[Image<T>],
        class: Option<usize>,
    ) -> Result<Self>
    where
        F: ScoreFunction<T> + ?Sized,
    {
        let first = initial.first().ok_or_else(|| {
            Error::InvalidParameter("a recording needs at least one initial noise".into())
        })?;
        let shape = first.shape();
        let steps = sampler.steps();
        let mut noises = Vec::with_capacity(initial.len() * shape.len());
        let mut inputs = Vec::with_capacity(initial.len() * steps * shape.len());
        let mut predictions = Vec::with_capacity(initial.len() * steps * shape.len());
        let mut finals = Vec::with_capacity(initial.len() * shape.len());
        let mut times = Vec::new();
        let mut trajectory = Trajectory::new();
        for noise in initial {
            if noise.shape() != shape {
                return Err(Error::shape("initial noise shape", shape, noise.shape()));
            }
            trajectory.clear();
            let last = sampler.sample(score, noise.clone(), class, &mut trajectory)?;
            times = trajectory.steps().iter().map(|step| step.t).collect();
            for step in trajectory.steps() {
                inputs.extend_from_slice(step.x.as_slice());
                predictions.extend_from_slice(step.eps_hat.as_slice());
            }
            noises.extend_from_slice(noise.as_slice());
            finals.extend_from_slice(last.as_slice());
        }
        Self::new(shape, times, noises, inputs, predictions, finals)
    }

    /// Reads a recording folder (see the [module documentation](self) for
    /// the files), converting values to `T`.
    ///
    /// # Errors
    ///
    /// - [`Error::Io`] naming the file if one of the five arrays is missing
    ///   or unreadable;
    /// - [`Error::Format`] naming the file if it is not a valid `.npy`
    ///   array (truncated, say), if its shape does not match the others
    ///   (the trajectory count of `seeds.npy`, the step count of
    ///   `times.npy`, the image shape), if it holds a NaN or infinite value,
    ///   if the times are not strictly decreasing within `[0, 1]`, or if the
    ///   first input of a trajectory is not its initial noise.
    #[cfg(feature = "io")]
    pub fn read(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        use crate::io::npy;

        let dir = dir.as_ref();
        let format = |name: &str, reason: String| Error::Format {
            path: dir.join(name),
            reason,
        };
        let load = |name: &str| -> Result<(Vec<usize>, Vec<T>)> {
            let (dims, data) = npy::read_array::<T>(dir.join(name))?;
            if let Some(index) = data.iter().position(|v| !v.is_finite()) {
                return Err(format(
                    name,
                    format!(
                        "value {index} is {}; a recording must be finite",
                        data[index]
                    ),
                ));
            }
            Ok((dims, data))
        };

        let (time_dims, times) = npy::read_array::<f64>(dir.join(FILES[0]))?;
        let steps = match *time_dims {
            [steps] if steps > 0 => steps,
            _ => {
                return Err(format(
                    FILES[0],
                    format!(
                        "expected a non-empty 1-d array of step times, found shape {time_dims:?}"
                    ),
                ));
            }
        };
        check_times(&times).map_err(|e| format(FILES[0], e.to_string()))?;

        let (seed_dims, initial) = load(FILES[1])?;
        let (count, shape) = match *seed_dims {
            [m, c, h, w] if m > 0 => {
                let shape = Shape::new(c, h, w).map_err(|e| format(FILES[1], e.to_string()))?;
                (m, shape)
            }
            _ => {
                return Err(format(
                    FILES[1],
                    format!(
                        "expected initial noise [M, C, H, W] with M > 0, found shape {seed_dims:?}"
                    ),
                ));
            }
        };
        let image_dims = [shape.channels, shape.height, shape.width];
        let per_step: Vec<usize> = [count, steps].iter().chain(&image_dims).copied().collect();
        let per_seed: Vec<usize> = [count].iter().chain(&image_dims).copied().collect();
        let mut arrays = Vec::with_capacity(3);
        for (name, expected, origin) in [
            (FILES[2], &per_step, "[M, steps, C, H, W]"),
            (FILES[3], &per_step, "[M, steps, C, H, W]"),
            (FILES[4], &per_seed, "[M, C, H, W]"),
        ] {
            let (dims, data) = load(name)?;
            if &dims != expected {
                return Err(format(
                    name,
                    format!(
                        "shape {dims:?} does not match {origin} = {expected:?} \
                         (M, C, H, W from {}, steps from {})",
                        FILES[1], FILES[0]
                    ),
                ));
            }
            arrays.push(data);
        }
        let finals = arrays.pop().expect("three arrays");
        let noise = arrays.pop().expect("three arrays");
        let inputs = arrays.pop().expect("three arrays");
        Self::new(shape, times, initial, inputs, noise, finals).map_err(|e| match e {
            Error::InvalidParameter(reason) => format(FILES[2], reason),
            other => other,
        })
    }

    /// Writes the recording as a folder of `.npy` arrays (see the
    /// [module documentation](self)), creating the folder if needed: images
    /// in `T`'s type, times as `float64`. Seeds are not written: a recording
    /// read back numbers its trajectories `0 .. M`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the folder or a file cannot be created or written.
    #[cfg(feature = "io")]
    pub fn write(&self, dir: impl AsRef<std::path::Path>) -> Result<()> {
        use crate::io::npy;

        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let (m, n) = (self.len(), self.steps());
        let image = [self.shape.channels, self.shape.height, self.shape.width];
        let per_seed: Vec<usize> = [m].iter().chain(&image).copied().collect();
        let per_step: Vec<usize> = [m, n].iter().chain(&image).copied().collect();
        npy::write_array(dir.join(FILES[0]), &[n], &self.times)?;
        npy::write_array(dir.join(FILES[1]), &per_seed, &self.initial)?;
        npy::write_array(dir.join(FILES[2]), &per_step, &self.inputs)?;
        npy::write_array(dir.join(FILES[3]), &per_step, &self.noise)?;
        npy::write_array(dir.join(FILES[4]), &per_seed, &self.finals)
    }

    /// The image shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Number of trajectories `M` (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.seeds.len()
    }

    /// Number of steps `n` of every trajectory (never zero).
    pub fn steps(&self) -> usize {
        self.times.len()
    }

    /// The time of each step, in sampling order (decreasing).
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The seed (identifier) of each trajectory.
    pub fn seeds(&self) -> &[usize] {
        &self.seeds
    }

    /// The step whose time is within [`TIME_TOLERANCE`] of `t`, if any.
    pub fn step_at(&self, t: f64) -> Option<usize> {
        self.times
            .iter()
            .position(|&recorded| (recorded - t).abs() <= TIME_TOLERANCE)
    }

    /// The initial noise of trajectory `index` (`0 .. M`).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `index >= M`.
    pub fn initial_noise(&self, index: usize) -> Result<Image<T>> {
        self.check_index(index)?;
        Image::from_slice(self.shape, self.image_of(&self.initial, index))
    }

    /// The input `x_t` of trajectory `index` at step `step`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `index >= M` or `step >= n`.
    pub fn input(&self, index: usize, step: usize) -> Result<Image<T>> {
        Image::from_slice(self.shape, self.step_slice(&self.inputs, index, step)?)
    }

    /// The recorded noise prediction `epshat(x_t, t)` of trajectory `index`
    /// at step `step`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `index >= M` or `step >= n`.
    pub fn noise_prediction(&self, index: usize, step: usize) -> Result<Image<T>> {
        Image::from_slice(self.shape, self.step_slice(&self.noise, index, step)?)
    }

    /// The final image of trajectory `index`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `index >= M`.
    pub fn final_image(&self, index: usize) -> Result<Image<T>> {
        self.check_index(index)?;
        Image::from_slice(self.shape, self.image_of(&self.finals, index))
    }

    /// Every final image, in trajectory order.
    pub fn final_images(&self) -> Vec<Image<T>> {
        (0..self.len())
            .map(|index| {
                Image::from_slice(self.shape, self.image_of(&self.finals, index))
                    .expect("buffers fit the shape")
            })
            .collect()
    }

    /// The trajectories at positions `range` (not seeds: positions
    /// `0 .. M` of this recording), keeping their seeds.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `range` is empty or reaches past `M`.
    pub fn select(&self, range: Range<usize>) -> Result<Self> {
        if range.is_empty() || range.end > self.len() {
            return Err(Error::InvalidParameter(format!(
                "trajectories {}..{} requested from a recording of {}",
                range.start,
                range.end,
                self.len()
            )));
        }
        let len = self.shape.len();
        let per_trajectory = self.steps() * len;
        Ok(RecordedTrajectories {
            shape: self.shape,
            times: self.times.clone(),
            seeds: self.seeds[range.clone()].to_vec(),
            initial: self.initial[range.start * len..range.end * len].to_vec(),
            inputs: self.inputs[range.start * per_trajectory..range.end * per_trajectory].to_vec(),
            noise: self.noise[range.start * per_trajectory..range.end * per_trajectory].to_vec(),
            finals: self.finals[range.start * len..range.end * len].to_vec(),
        })
    }

    /// A score function that replays trajectory `index`: at a recorded time
    /// it returns the recorded noise prediction (see [`ReplayedScore`]).
    ///
    /// `schedule` is the reference's noise schedule; the recording does
    /// not store it. It is used only to convert the replayed noise
    /// prediction into `x0hat` or a score, and by samplers.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `index >= M`.
    pub fn replay<S: NoiseSchedule>(
        &self,
        index: usize,
        schedule: S,
    ) -> Result<ReplayedScore<'_, T, S>> {
        self.check_index(index)?;
        Ok(ReplayedScore {
            recording: self,
            index,
            schedule,
            tolerance: DEFAULT_INPUT_TOLERANCE,
        })
    }

    /// `(index, step)` slice of a per-step buffer.
    pub(crate) fn step_slice<'a>(
        &self,
        buffer: &'a [T],
        index: usize,
        step: usize,
    ) -> Result<&'a [T]> {
        self.check_index(index)?;
        if step >= self.steps() {
            return Err(Error::InvalidParameter(format!(
                "step {step} of a recording of {} steps",
                self.steps()
            )));
        }
        let len = self.shape.len();
        let start = (index * self.steps() + step) * len;
        Ok(&buffer[start..start + len])
    }

    /// The recorded input at `(index, step)`, borrowed.
    pub(crate) fn input_slice(&self, index: usize, step: usize) -> Result<&[T]> {
        self.step_slice(&self.inputs, index, step)
    }

    /// The recorded noise prediction at `(index, step)`, borrowed.
    pub(crate) fn noise_slice(&self, index: usize, step: usize) -> Result<&[T]> {
        self.step_slice(&self.noise, index, step)
    }

    fn image_of<'a>(&self, buffer: &'a [T], index: usize) -> &'a [T] {
        let len = self.shape.len();
        &buffer[index * len..(index + 1) * len]
    }

    fn check_index(&self, index: usize) -> Result<()> {
        if index < self.len() {
            Ok(())
        } else {
            Err(Error::InvalidParameter(format!(
                "trajectory {index} of a recording of {}",
                self.len()
            )))
        }
    }

    /// The first input of every trajectory must be its initial noise.
    fn check_first_inputs(&self) -> Result<()> {
        for index in 0..self.len() {
            let start = self.image_of(&self.initial, index);
            let first = self.input_slice(index, 0)?;
            let gap = relative_gap(first, start);
            if gap > 1e-6 {
                return Err(Error::InvalidParameter(format!(
                    "the input at the first step of trajectory {index} differs from its \
                     initial noise by {gap:.3e}"
                )));
            }
        }
        Ok(())
    }
}

/// `max_i |u_i - v_i| / max(1, |v_i|)`.
fn relative_gap<T: Real>(u: &[T], v: &[T]) -> f64 {
    u.iter()
        .zip(v)
        .map(|(a, b)| {
            let (a, b) = (a.widen(), b.widen());
            (a - b).abs() / b.abs().max(1.0)
        })
        .fold(0.0, f64::max)
}

/// Step times must be finite, in `[0, 1]`, and strictly decreasing.
fn check_times(times: &[f64]) -> Result<()> {
    if times.is_empty() {
        return Err(Error::InvalidParameter(
            "a recording needs at least one step".into(),
        ));
    }
    if let Some(t) = times.iter().find(|t| check_time(**t).is_err()) {
        return Err(Error::InvalidParameter(format!(
            "step time {t} is not in [0, 1]"
        )));
    }
    if let Some(pair) = times.windows(2).find(|p| p[1] >= p[0] - TIME_TOLERANCE) {
        return Err(Error::InvalidParameter(format!(
            "step times must decrease (sampling order), found {} then {}",
            pair[0], pair[1]
        )));
    }
    Ok(())
}

/// A recorded trajectory replayed as a score function: its native
/// prediction is the noise ([`Prediction::Noise`]), and at `(x, t)` it
/// returns the recorded `epshat` of the step whose time is `t`.
///
/// A recorded prediction is the reference's answer for one input, the
/// recorded `x_t`. Returning it for another input would be silently wrong,
/// so the replay checks that
///
/// ```text
/// max over pixels of |x - x_t| / max(1, |x_t|) <= tolerance
/// ```
///
/// ([`DEFAULT_INPUT_TOLERANCE`] unless changed with
/// [`ReplayedScore::with_input_tolerance`]). Sampling the replay with the
/// reference's own sampler from the recorded initial noise passes the check
/// at every step and reproduces the recorded final image; a different
/// sampler, schedule or initial noise fails it at the first step where the
/// state departs from the recording.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
/// use score_machines::reference::RecordedTrajectories;
///
/// let shape = Shape::new(1, 3, 3)?;
/// let machine = Machine::ideal(TrainingSet::new(shape, vec![0.5_f64; 9], None)?, LegacyCosine)?;
/// let noise = [initial_noise(shape, 4)];
/// let recording = RecordedTrajectories::record(&machine, &Sampler::new(Method::Ddim, 4)?, &noise, None)?;
/// let replay = recording.replay(0, LegacyCosine)?;
/// // At the recorded input the replay is the machine.
/// let x = recording.input(0, 2)?;
/// assert_eq!(replay.eps_hat(&x, 0.5, None)?, recording.noise_prediction(0, 2)?);
/// // Not a recorded time; not the recorded input.
/// assert!(replay.eps_hat(&x, 0.6, None).is_err());
/// assert!(replay.eps_hat(&recording.input(0, 1)?, 0.5, None).is_err());
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug)]
pub struct ReplayedScore<'a, T, S> {
    recording: &'a RecordedTrajectories<T>,
    index: usize,
    schedule: S,
    tolerance: f64,
}

impl<T: Real, S> ReplayedScore<'_, T, S> {
    /// Sets the tolerance of the input check; `f64::INFINITY` turns the
    /// check off.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `tolerance` is negative or NaN.
    pub fn with_input_tolerance(mut self, tolerance: f64) -> Result<Self> {
        if tolerance.is_nan() || tolerance < 0.0 {
            return Err(Error::InvalidParameter(format!(
                "input tolerance must be non-negative, got {tolerance}"
            )));
        }
        self.tolerance = tolerance;
        Ok(self)
    }

    /// The tolerance of the input check.
    pub fn input_tolerance(&self) -> f64 {
        self.tolerance
    }

    /// The position of the replayed trajectory in its recording.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl<T: Real, S: NoiseSchedule> ScoreFunction<T> for ReplayedScore<'_, T, S> {
    fn schedule(&self) -> &dyn NoiseSchedule {
        &self.schedule
    }

    fn shape(&self) -> Option<Shape> {
        Some(self.recording.shape())
    }

    fn native(&self) -> Prediction {
        Prediction::Noise
    }

    /// Copies the recorded noise prediction of the step at `t`.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidTime`] if `t` is outside `[0, 1]` or not one of
    ///   the recorded times;
    /// - [`Error::ShapeMismatch`] if `x` or `out` has another shape than
    ///   the recording;
    /// - [`Error::UnknownClass`] if `class` is given (a recording is of
    ///   one distribution);
    /// - [`Error::InvalidParameter`] if `x` differs from the recorded input
    ///   beyond the tolerance.
    fn predict_native_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        out: &mut Image<T>,
    ) -> Result<()> {
        check_time(t)?;
        let shape = self.recording.shape();
        if x.shape() != shape {
            return Err(Error::shape("input image shape", shape, x.shape()));
        }
        if out.shape() != shape {
            return Err(Error::shape("output image shape", shape, out.shape()));
        }
        if let Some(label) = class {
            return Err(Error::UnknownClass(label));
        }
        let step = self.recording.step_at(t).ok_or(Error::InvalidTime {
            t,
            reason: "not one of the recorded step times",
        })?;
        let recorded = self.recording.input_slice(self.index, step)?;
        let gap = relative_gap(x.as_slice(), recorded);
        if gap.is_nan() || gap > self.tolerance {
            return Err(Error::InvalidParameter(format!(
                "the input at t = {t} differs from the recorded input of trajectory {} \
                 (seed {}) by {gap:.3e}, beyond the tolerance {:.1e}; a recorded \
                 prediction holds only at its own input",
                self.index, self.recording.seeds[self.index], self.tolerance
            )));
        }
        out.as_mut_slice()
            .copy_from_slice(self.recording.noise_slice(self.index, step)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny(times: Vec<f64>) -> Result<RecordedTrajectories<f64>> {
        let shape = Shape::new(1, 1, 2)?;
        let n = times.len();
        let initial = vec![0.5, -0.5, 1.0, 2.0];
        let mut inputs = Vec::new();
        for m in 0..2 {
            for i in 0..n {
                let v = if i == 0 {
                    initial[2 * m..2 * m + 2].to_vec()
                } else {
                    vec![i as f64, m as f64]
                };
                inputs.extend(v);
            }
        }
        let noise = (0..2 * n * 2).map(|v| v as f64).collect();
        RecordedTrajectories::new(shape, times, initial, inputs, noise, vec![0.0; 4])
    }

    #[test]
    fn accessors_index_trajectory_major() {
        let recording = tiny(vec![1.0, 0.5]).unwrap();
        assert_eq!(recording.len(), 2);
        assert_eq!(recording.steps(), 2);
        assert_eq!(recording.input(1, 1).unwrap().as_slice(), &[1.0, 1.0]);
        assert_eq!(
            recording.noise_prediction(1, 0).unwrap().as_slice(),
            &[4.0, 5.0]
        );
        assert_eq!(recording.initial_noise(1).unwrap().as_slice(), &[1.0, 2.0]);
        assert!(recording.input(2, 0).is_err());
        assert!(recording.input(0, 2).is_err());
        let second = recording.select(1..2).unwrap();
        assert_eq!(second.seeds(), &[1]);
        assert_eq!(
            second.noise_prediction(0, 1).unwrap().as_slice(),
            &[6.0, 7.0]
        );
        assert!(recording.select(1..3).is_err());
        assert_eq!(recording.step_at(0.5 + 1e-7), Some(1));
        assert_eq!(recording.step_at(0.6), None);
    }

    #[test]
    fn times_must_decrease_within_the_unit_interval() {
        for times in [
            vec![],
            vec![0.5, 0.5],
            vec![0.5, 0.7],
            vec![1.5, 0.5],
            vec![1.0, f64::NAN],
        ] {
            assert!(
                matches!(tiny(times.clone()), Err(Error::InvalidParameter(_))),
                "{times:?}"
            );
        }
    }

    #[test]
    fn first_input_must_be_the_initial_noise() {
        let shape = Shape::new(1, 1, 1).unwrap();
        let result =
            RecordedTrajectories::new(shape, vec![1.0], vec![0.3], vec![0.4], vec![0.0], vec![0.0]);
        assert!(matches!(result, Err(Error::InvalidParameter(_))));
        let result = RecordedTrajectories::new(
            shape,
            vec![1.0],
            vec![0.3],
            vec![0.3],
            vec![f64::NAN],
            vec![0.0],
        );
        assert!(matches!(result, Err(Error::NonFinite(_))));
        let result = RecordedTrajectories::new(
            shape,
            vec![1.0],
            vec![0.3],
            vec![0.3, 0.1],
            vec![0.0],
            vec![0.0],
        );
        assert!(matches!(result, Err(Error::ShapeMismatch { .. })));
    }
}
