//! Samplers: from noise at `t = 1` to an image at `t = 0` with any
//! [`ScoreFunction`].
//!
//! Every method runs on the uniform grid `t_i = i / n`, `i = n, n - 1,
//! ..., 1`, moving the state `x` from `t = t_i` to `t' = t_{i-1}`, with
//! `a = a(t)`, `s = s(t)`, `a' = a(t')`, `s' = s(t')` and the score
//! function's predictions `epshat`, `x0hat` at `(x, t)`:
//!
//! - [`Method::Ddim`], deterministic DDIM:
//!   `x <- (a'/a) x + (s' - (a'/a) s) epshat`, which for a
//!   variance-preserving schedule is the reference
//!   `x <- sqrt(abp/ab) x + (sqrt(1 - abp) - sqrt(abp/ab) sqrt(1 - ab)) epshat`
//!   with `ab = abar(t)`, `abp = abar(t')`.
//! - [`Method::Ddpm`], ancestral sampling from the Gaussian posterior of
//!   `x_{t'}` given `x_t` and `x0 = x0hat`, with seeded noise.
//! - [`Method::Euler`] and [`Method::Heun`], the probability-flow ODE
//!   `dx/dt = (a_dot/a) x + (s_dot - a_dot s / a) epshat(x, t)` with the time
//!   derivatives `a_dot`, `s_dot` of
//!   [`NoiseSchedule::signal_derivative`] and
//!   [`NoiseSchedule::noise_derivative`].
//!
//! The schedule is the score function's own ([`ScoreFunction::schedule`]).
//! Arithmetic is in `f64` from the stored pixels; the state is stored back in
//! the image's type `T` after every step.
//!
//! DDIM is written as `x <- a' x0hat + s' epshat`, the same expression
//! rearranged with `x0hat = (x - s epshat) / a`; from a clean-image
//! prediction it needs no division by `a`, and on a last step with
//! `a(0) = 1`, `s(0) = 0` it returns `x0hat` exactly.
//!
//! # Accuracy of the ODE methods
//!
//! For a one-point data distribution DDIM is exact, and the ODE methods
//! approach it as the step count grows. Measured at 200 steps (maximum
//! pixel difference from DDIM, pixels in `[-1, 1]`): legacy cosine, Euler
//! and Heun both `3.0e-5` (the final step, an Euler step for both, dominates
//! and both are second order); variance exploding from 0.01 to 5, Euler
//! `5.7e-4` (first order), Heun `3.2e-6` (second order). Schedules whose
//! `s(t)` grows like `sqrt(t)` near 0, [`Cosine`](crate::schedule::Cosine)
//! and [`Exponential`](crate::schedule::Exponential), have an infinite
//! `s_dot(0)`, and on this uniform grid the ODE methods converge slowly
//! for them: `1.3e-2` (Cosine) and `0.15` (Exponential) at 200 steps,
//! where DDIM is exact.
//!
//! An [`Observer`] sees every step before its update (see [`StepRecord`]);
//! [`Trajectory`] records them all.
//!
//! # Example
//!
//! ```
//! use score_machines::prelude::*;
//!
//! let shape = Shape::new(1, 3, 3)?;
//! let pixels: Vec<f64> = (0..9).map(|i| i as f64 / 4.0 - 1.0).collect();
//! let training = TrainingSet::new(shape, pixels.clone(), None)?;
//! let machine = Machine::ideal(training, LegacyCosine)?;
//!
//! let sampler = Sampler::new(Method::Ddim, 20)?;
//! let noise = initial_noise::<f64>(shape, 42);
//! let sample = sampler.sample(&machine, noise, None, &mut ())?;
//! // With one training image the ideal score sends every noise to it.
//! assert_eq!(sample.as_slice(), &pixels[..]);
//! # Ok::<(), score_machines::Error>(())
//! ```

mod observer;

use std::ops::ControlFlow;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;
use crate::schedule::NoiseSchedule;
use crate::score::{Prediction, ScoreFunction};

pub use observer::{NoObserver, Observer, RecordedStep, StepRecord, Trajectory};

/// A sampling method; see the [module documentation](self) for the update
/// rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    /// Deterministic DDIM, one score evaluation per step.
    Ddim,
    /// Ancestral DDPM sampling, one score evaluation per step, with noise
    /// from a [`ChaCha8Rng`] seeded with `seed`.
    ///
    /// With `alpha = a/a'` and `sigma2 = s^2 - alpha^2 s'^2` (the variance
    /// added between `t'` and `t`), the step draws
    /// `x <- (alpha s'^2 / s^2) x + (a' sigma2 / s^2) x0hat + sqrt(v) z`,
    /// `v = sigma2 s'^2 / s^2`, `z ~ N(0, I)`, and adds no noise on the
    /// last step. The noise is drawn pixel by pixel in buffer order, step
    /// after step, so a seed fixes the run exactly.
    Ddpm {
        /// Seed of the noise generator.
        seed: u64,
    },
    /// Euler steps of the probability-flow ODE, one score evaluation per
    /// step: `x <- x + (t' - t) f(x, t)`.
    Euler,
    /// Heun steps of the probability-flow ODE, two score evaluations per
    /// step: the Euler prediction `x~ = x + (t' - t) f(x, t)` corrected to
    /// `x <- x + (t' - t) (f(x, t) + f(x~, t')) / 2`. The last step, to
    /// `t' = 0` where `s` is usually 0 and the score undefined, is an Euler
    /// step.
    Heun,
}

/// How a sampling run ended.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Completion {
    /// Every step ran; the state is at `t = 0`.
    Finished,
    /// The observer stopped the run at step `step`, before its update; the
    /// state is the one the observer saw, at time `t`.
    Stopped {
        /// The 0-based step at which the observer stopped.
        step: usize,
        /// The time of the state.
        t: f64,
    },
}

/// Largest number of steps a [`Sampler`] takes: `10^7`.
///
/// Step times `i / n` stay distinct in `f64` far beyond this, but a run of
/// more steps would take days for any useful machine; the cap keeps step
/// and evaluation counts far from `usize` overflow on every platform.
pub const MAX_STEPS: usize = 10_000_000;

/// A sampling method with a number of steps.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let sampler = Sampler::new(Method::Heun, 4)?;
/// assert_eq!(sampler.evaluations(), 7);
/// let times: Vec<(f64, f64)> = sampler.times().collect();
/// assert_eq!(times, [(1.0, 0.75), (0.75, 0.5), (0.5, 0.25), (0.25, 0.0)]);
/// assert!(Sampler::new(Method::Ddim, 0).is_err());
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sampler {
    method: Method,
    steps: usize,
}

impl Sampler {
    /// A sampler taking `steps` steps of `method` from `t = 1` to `t = 0`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `steps` is 0 or more than
    /// [`MAX_STEPS`].
    pub fn new(method: Method, steps: usize) -> Result<Self> {
        if steps == 0 {
            return Err(Error::InvalidParameter(
                "a sampler needs at least one step".into(),
            ));
        }
        if steps > MAX_STEPS {
            return Err(Error::InvalidParameter(format!(
                "a sampler takes at most {MAX_STEPS} steps, got {steps}"
            )));
        }
        Ok(Sampler { method, steps })
    }

    /// The method.
    pub fn method(&self) -> Method {
        self.method
    }

    /// The number of steps `n`.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The number of score evaluations of a full run: `n`, or `2 n - 1`
    /// for Heun's method (at most `2 MAX_STEPS - 1`, since [`Sampler::new`]
    /// caps `n` at [`MAX_STEPS`]).
    pub fn evaluations(&self) -> usize {
        match self.method {
            Method::Heun => self.steps.saturating_mul(2).saturating_sub(1),
            _ => self.steps,
        }
    }

    /// The `(t, t')` pair of every step in sampling order:
    /// `(i / n, (i - 1) / n)` for `i = n .. 1`.
    pub fn times(&self) -> impl ExactSizeIterator<Item = (f64, f64)> + '_ {
        (0..self.steps).map(|step| self.time_pair(step))
    }

    fn time_pair(&self, step: usize) -> (f64, f64) {
        let n = self.steps as f64;
        let i = (self.steps - step) as f64;
        (i / n, (i - 1.0) / n)
    }

    /// Runs the sampler from `initial` (the state at `t = 1`), optionally
    /// for class `class`, showing every step to `observer`, and returns the
    /// final state (at `t = 0`, or where the observer stopped the run).
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 8, 8)?;
    /// let pixels: Vec<f32> = (0..6 * 64).map(|i| ((i * 7919) % 13) as f32 / 6.0 - 1.0).collect();
    /// let training = TrainingSet::new(shape, pixels, None)?;
    /// let machine = Machine::equivariant_local_zero_padded(training, LegacyCosine, SquarePatch::new(3)?)?;
    /// let sampler = Sampler::new(Method::Ddim, 10)?;
    /// // `&mut ()` observes nothing; a closure or a `Trajectory` sees every step.
    /// let sample = sampler.sample(&machine, initial_noise(shape, 42), None, &mut ())?;
    /// let again = sampler.sample(&machine, initial_noise(shape, 42), None, &mut ())?;
    /// assert_eq!(sample, again); // DDIM is deterministic given the seed
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// As [`Sampler::sample_into`].
    pub fn sample<T, F, O>(
        &self,
        score: &F,
        initial: Image<T>,
        class: Option<usize>,
        observer: &mut O,
    ) -> Result<Image<T>>
    where
        T: Real,
        F: ScoreFunction<T> + ?Sized,
        O: Observer<T> + ?Sized,
    {
        let mut x = initial;
        let mut workspace = Workspace::new();
        self.sample_into(score, &mut x, class, observer, &mut workspace)?;
        Ok(x)
    }

    /// Runs the sampler in place: `x` holds the state at `t = 1` on entry
    /// and the final state on return.
    ///
    /// The loop itself allocates nothing once `workspace` holds buffers of
    /// `x`'s shape (it takes them on first use); what the score function
    /// and the observer allocate is their own affair.
    ///
    /// # Errors
    ///
    /// - [`Error::ShapeMismatch`] if the score function has a fixed shape
    ///   and `x` has another;
    /// - [`Error::NonFinite`] if `x` holds NaN or infinity on entry, or if
    ///   the score function's output or the state stops being finite;
    /// - [`Error::InvalidTime`] if the schedule gives a non-finite scale or
    ///   derivative at a time the method needs, or `a(t) <= 0` or
    ///   `s(t) <= 0` at a time where the score is evaluated;
    /// - any error of the score function.
    ///
    /// After an error `x` holds the state of the step that failed.
    pub fn sample_into<T, F, O>(
        &self,
        score: &F,
        x: &mut Image<T>,
        class: Option<usize>,
        observer: &mut O,
        workspace: &mut Workspace<T>,
    ) -> Result<Completion>
    where
        T: Real,
        F: ScoreFunction<T> + ?Sized,
        O: Observer<T> + ?Sized,
    {
        if let Some(expected) = score.shape()
            && expected != x.shape()
        {
            return Err(Error::shape("initial image shape", expected, x.shape()));
        }
        x.check_finite("initial image")?;
        let schedule = score.schedule();
        let buffers = workspace.prepare(x.shape());
        let mut rng = match self.method {
            Method::Ddpm { seed } => Some(ChaCha8Rng::seed_from_u64(seed)),
            _ => None,
        };

        for step in 0..self.steps {
            let (t, t_next) = self.time_pair(step);
            let here = Scales::evaluated_at(schedule, t)?;
            let native = predict(score, x, t, class, &here, buffers)?;

            let record = StepRecord {
                step,
                steps: self.steps,
                t,
                t_next,
                x,
                eps_hat: &buffers.eps_hat,
                x0_hat: &buffers.x0_hat,
            };
            if let ControlFlow::Break(()) = observer.observe(&record) {
                return Ok(Completion::Stopped { step, t });
            }

            let last = step + 1 == self.steps;
            let finite = match self.method {
                Method::Ddim => {
                    let next = Scales::at(schedule, t_next)?;
                    ddim_update(x, native, &here, &next, buffers)
                }
                Method::Ddpm { .. } => {
                    let next = Scales::at(schedule, t_next)?;
                    let rng = rng.as_mut().expect("a DDPM run owns a generator");
                    ddpm_update(x, native, &here, &next, last, rng, buffers)
                }
                Method::Euler => euler_update(x, native, &here, t, t_next, schedule, buffers)?,
                Method::Heun if last => {
                    euler_update(x, native, &here, t, t_next, schedule, buffers)?
                }
                Method::Heun => heun_update(score, x, native, &here, t, t_next, class, buffers)?,
            };
            if !finite {
                return Err(Error::NonFinite("sampler state"));
            }
        }
        Ok(Completion::Finished)
    }
}

/// Reusable buffers of a sampler run, so that repeated runs on images of
/// one shape allocate nothing.
///
/// A workspace takes buffers for an image shape the first time a run uses
/// it, and new ones whenever the shape changes.
#[derive(Clone, Debug)]
pub struct Workspace<T> {
    buffers: Option<Buffers<T>>,
}

impl<T: Real> Workspace<T> {
    /// An empty workspace.
    pub fn new() -> Self {
        Workspace { buffers: None }
    }

    /// A workspace with buffers for images of `shape`.
    pub fn with_shape(shape: Shape) -> Self {
        Workspace {
            buffers: Some(Buffers::new(shape)),
        }
    }

    fn prepare(&mut self, shape: Shape) -> &mut Buffers<T> {
        let fits = matches!(&self.buffers, Some(buffers) if buffers.x0_hat.shape() == shape);
        if !fits {
            self.buffers = Some(Buffers::new(shape));
        }
        self.buffers.get_or_insert_with(|| Buffers::new(shape))
    }
}

impl<T: Real> Default for Workspace<T> {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Clone, Debug)]
struct Buffers<T> {
    /// `x0hat` at the state.
    x0_hat: Image<T>,
    /// `epshat` at the state.
    eps_hat: Image<T>,
    /// Heun: the Euler prediction `x~`.
    proposal: Image<T>,
    /// Heun: the native prediction at `(x~, t')`.
    second: Image<T>,
    /// Heun: the slope `f(x, t)`.
    slope: Vec<f64>,
}

impl<T: Real> Buffers<T> {
    fn new(shape: Shape) -> Self {
        Buffers {
            x0_hat: Image::zeros(shape),
            eps_hat: Image::zeros(shape),
            proposal: Image::zeros(shape),
            second: Image::zeros(shape),
            slope: vec![0.0; shape.len()],
        }
    }
}

/// `a(t)` and `s(t)` at one time.
#[derive(Clone, Copy, Debug)]
struct Scales {
    signal: f64,
    noise: f64,
}

impl Scales {
    /// The scales at a time the state moves to: finite.
    fn at(schedule: &dyn NoiseSchedule, t: f64) -> Result<Self> {
        let (signal, noise) = (schedule.signal(t), schedule.noise(t));
        if !(signal.is_finite() && noise.is_finite()) {
            return Err(Error::InvalidTime {
                t,
                reason: "the schedule gives a non-finite signal or noise scale here",
            });
        }
        Ok(Scales { signal, noise })
    }

    /// The scales at a time where the score is evaluated: finite and
    /// positive, so that `x0hat` and `epshat` determine each other.
    fn evaluated_at(schedule: &dyn NoiseSchedule, t: f64) -> Result<Self> {
        let scales = Self::at(schedule, t)?;
        if !(scales.signal > 0.0 && scales.noise > 0.0) {
            return Err(Error::InvalidTime {
                t,
                reason: "a sampler evaluates the score only where a(t) > 0 and s(t) > 0",
            });
        }
        Ok(scales)
    }

    /// `(x0hat, epshat)` in `f64` from the state value `x` and the native
    /// prediction `value` (a clean image or a noise).
    #[inline]
    fn split(&self, native: Native, x: f64, value: f64) -> (f64, f64) {
        match native {
            Native::CleanImage => (value, (x - self.signal * value) / self.noise),
            Native::Noise => ((x - self.noise * value) / self.signal, value),
        }
    }
}

/// `(a_dot(t), s_dot(t))`, finite.
fn derivatives(schedule: &dyn NoiseSchedule, t: f64) -> Result<(f64, f64)> {
    let (signal, noise) = (schedule.signal_derivative(t), schedule.noise_derivative(t));
    if !(signal.is_finite() && noise.is_finite()) {
        return Err(Error::InvalidTime {
            t,
            reason: "the schedule gives a non-finite derivative here",
        });
    }
    Ok((signal, noise))
}

/// Which buffer holds the score function's own output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Native {
    /// `x0_hat` (or `second`) holds `x0hat`.
    CleanImage,
    /// `eps_hat` (or `second`) holds `epshat`.
    Noise,
}

/// Evaluates the score function at `(x, t)` into `out` and turns a score
/// into a noise prediction, `epshat = -s score`.
fn predict_native<T, F>(
    score: &F,
    x: &Image<T>,
    t: f64,
    class: Option<usize>,
    scales: &Scales,
    out: &mut Image<T>,
) -> Result<Native>
where
    T: Real,
    F: ScoreFunction<T> + ?Sized,
{
    let prediction = score.native();
    score.predict_native_into(x, t, class, out)?;
    let native = match prediction {
        Prediction::CleanImage => Native::CleanImage,
        Prediction::Noise => Native::Noise,
        Prediction::Score => {
            for value in out.as_mut_slice() {
                *value = T::narrow(-scales.noise * value.widen());
            }
            Native::Noise
        }
    };
    out.check_finite("score function output")?;
    Ok(native)
}

/// Fills `x0_hat` and `eps_hat` at the state: the native one from the score
/// function, the other derived from it.
fn predict<T, F>(
    score: &F,
    x: &Image<T>,
    t: f64,
    class: Option<usize>,
    scales: &Scales,
    buffers: &mut Buffers<T>,
) -> Result<Native>
where
    T: Real,
    F: ScoreFunction<T> + ?Sized,
{
    let target = match score.native() {
        Prediction::CleanImage => &mut buffers.x0_hat,
        Prediction::Noise | Prediction::Score => &mut buffers.eps_hat,
    };
    let native = predict_native(score, x, t, class, scales, target)?;
    let (x0_hat, eps_hat) = (
        buffers.x0_hat.as_mut_slice(),
        buffers.eps_hat.as_mut_slice(),
    );
    let mut finite = true;
    for ((&xv, x0), eps) in x.as_slice().iter().zip(x0_hat).zip(eps_hat) {
        let value = match native {
            Native::CleanImage => x0.widen(),
            Native::Noise => eps.widen(),
        };
        let (clean, noise) = scales.split(native, xv.widen(), value);
        match native {
            Native::CleanImage => *eps = T::narrow(noise),
            Native::Noise => *x0 = T::narrow(clean),
        }
        finite &= clean.is_finite() && noise.is_finite();
    }
    if !finite {
        return Err(Error::NonFinite(
            "prediction derived from the score function",
        ));
    }
    Ok(native)
}

/// The native prediction at the state, as stored by [`predict`].
fn native_values<T: Real>(buffers: &Buffers<T>, native: Native) -> &[T] {
    match native {
        Native::CleanImage => buffers.x0_hat.as_slice(),
        Native::Noise => buffers.eps_hat.as_slice(),
    }
}

/// Writes `f64` values into the state; returns whether all are finite.
#[inline]
fn store<T: Real>(slot: &mut T, value: f64) -> bool {
    *slot = T::narrow(value);
    value.is_finite()
}

/// DDIM: `x <- a' x0hat + s' epshat`, which with `x0hat = (x - s epshat)/a`
/// is `(a'/a) x + (s' - (a'/a) s) epshat`.
fn ddim_update<T: Real>(
    x: &mut Image<T>,
    native: Native,
    here: &Scales,
    next: &Scales,
    buffers: &Buffers<T>,
) -> bool {
    let values = native_values(buffers, native);
    let mut finite = true;
    for (slot, &value) in x.as_mut_slice().iter_mut().zip(values) {
        let (clean, noise) = here.split(native, slot.widen(), value.widen());
        finite &= store(slot, next.signal * clean + next.noise * noise);
    }
    finite
}

/// DDPM: a draw from the Gaussian posterior of `x_{t'}` given `x_t` and
/// `x0 = x0hat`; its mean alone on the last step.
fn ddpm_update<T: Real>(
    x: &mut Image<T>,
    native: Native,
    here: &Scales,
    next: &Scales,
    last: bool,
    rng: &mut ChaCha8Rng,
    buffers: &Buffers<T>,
) -> bool {
    let alpha = here.signal / next.signal;
    let variance_t = here.noise * here.noise;
    let variance_next = next.noise * next.noise;
    let added = variance_t - alpha * alpha * variance_next;
    let keep = alpha * variance_next / variance_t;
    let pull = next.signal * added / variance_t;
    let spread = if last {
        0.0
    } else {
        (added * variance_next / variance_t).max(0.0).sqrt()
    };
    let values = native_values(buffers, native);
    let mut finite = true;
    for (slot, &value) in x.as_mut_slice().iter_mut().zip(values) {
        let xv = slot.widen();
        let (clean, _) = here.split(native, xv, value.widen());
        let mut updated = keep * xv + pull * clean;
        if !last {
            let z: f64 = StandardNormal.sample(rng);
            updated += spread * z;
        }
        finite &= store(slot, updated);
    }
    finite
}

/// The probability-flow drift `f(x, t) = a_dot x0hat + s_dot epshat`,
/// equal to `(a_dot/a) x + (s_dot - a_dot s / a) epshat`.
#[inline]
fn drift(rates: (f64, f64), clean: f64, noise: f64) -> f64 {
    rates.0 * clean + rates.1 * noise
}

/// Euler: `x <- x + (t' - t) f(x, t)`.
fn euler_update<T: Real>(
    x: &mut Image<T>,
    native: Native,
    here: &Scales,
    t: f64,
    t_next: f64,
    schedule: &dyn NoiseSchedule,
    buffers: &Buffers<T>,
) -> Result<bool> {
    let rates = derivatives(schedule, t)?;
    let dt = t_next - t;
    let values = native_values(buffers, native);
    let mut finite = true;
    for (slot, &value) in x.as_mut_slice().iter_mut().zip(values) {
        let xv = slot.widen();
        let (clean, noise) = here.split(native, xv, value.widen());
        finite &= store(slot, xv + dt * drift(rates, clean, noise));
    }
    Ok(finite)
}

/// Heun: Euler prediction `x~`, then `x <- x + (t' - t) (f(x, t) + f(x~, t'))/2`.
#[allow(clippy::too_many_arguments)]
fn heun_update<T, F>(
    score: &F,
    x: &mut Image<T>,
    native: Native,
    here: &Scales,
    t: f64,
    t_next: f64,
    class: Option<usize>,
    buffers: &mut Buffers<T>,
) -> Result<bool>
where
    T: Real,
    F: ScoreFunction<T> + ?Sized,
{
    let schedule = score.schedule();
    let rates = derivatives(schedule, t)?;
    let rates_next = derivatives(schedule, t_next)?;
    let next = Scales::evaluated_at(schedule, t_next)?;
    let dt = t_next - t;

    let Buffers {
        x0_hat,
        eps_hat,
        proposal,
        second,
        slope,
    } = buffers;
    let values = match native {
        Native::CleanImage => x0_hat.as_slice(),
        Native::Noise => eps_hat.as_slice(),
    };
    let mut finite = true;
    for (((&xv, &value), f), guess) in x
        .as_slice()
        .iter()
        .zip(values)
        .zip(slope.iter_mut())
        .zip(proposal.as_mut_slice())
    {
        let xv = xv.widen();
        let (clean, noise) = here.split(native, xv, value.widen());
        *f = drift(rates, clean, noise);
        finite &= store(guess, xv + dt * *f);
    }
    if !finite {
        return Ok(false);
    }

    let native_next = predict_native(score, proposal, t_next, class, &next, second)?;
    for (((slot, &guess), &value), &f) in x
        .as_mut_slice()
        .iter_mut()
        .zip(proposal.as_slice())
        .zip(second.as_slice())
        .zip(slope.iter())
    {
        let (clean, noise) = next.split(native_next, guess.widen(), value.widen());
        let f_next = drift(rates_next, clean, noise);
        finite &= store(slot, slot.widen() + 0.5 * dt * (f + f_next));
    }
    Ok(finite)
}

/// Standard normal noise of `shape`, reproducible from `seed`: the state at
/// `t = 1` of a sampler run.
///
/// Pixel `i` of the buffer (channel-major) is the `i`-th draw of
/// `rand_distr::StandardNormal` (version 0.6) from
/// `ChaCha8Rng::seed_from_u64(seed)` (rand_chacha 0.10), drawn in `f64` and
/// rounded to `T`; so an `f32` image is the `f64` one rounded.
///
/// The same seed gives the same image on every platform and with every
/// release of rand_chacha 0.10 and rand_distr 0.6: the seed expansion, the
/// ChaCha8 stream and the ziggurat are fixed algorithms whose values the
/// rand crates change only with a new `0.x` version. One caveat: on the rare
/// draws that fall in the tail of rand_distr's ziggurat it calls `ln` from
/// the platform's math library, so a platform whose `ln` rounds differently
/// may differ in the last bit of such a pixel.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 4, 4)?;
/// let a = initial_noise::<f32>(shape, 1);
/// let b = initial_noise::<f64>(shape, 1);
/// assert_eq!(a, b.cast::<f32>());
/// assert_ne!(b, initial_noise::<f64>(shape, 2));
/// # Ok::<(), score_machines::Error>(())
/// ```
pub fn initial_noise<T: Real>(shape: Shape, seed: u64) -> Image<T> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut image = Image::zeros(shape);
    for value in image.as_mut_slice() {
        let z: f64 = StandardNormal.sample(&mut rng);
        *value = T::narrow(z);
    }
    image
}

/// A clean image carried forward to time `t`: `phi_t = a(t) clean + s(t)
/// eta`, with `a`, `s` the signal and noise scales of `schedule` and `eta`
/// the standard normal noise [`initial_noise`] draws for `seed` in `f64`
/// (for `f32` images too: the noise is not rounded before the sum).
///
/// This is the noisy input a score function sees at `t`, for instance to
/// compare machines on a held-out image or to ask what a machine makes of
/// it ([`ScoreFunction::x0_hat`]). The sum is formed in `f64` from the
/// stored pixels and rounded to `T` once. At `t = 0` with `a(0) = 1`,
/// `s(0) = 0` (every variance-preserving schedule of this crate) it returns
/// `clean` exactly.
///
/// # Errors
///
/// - [`Error::InvalidTime`] unless `0 <= t <= 1`, and where the schedule's
///   `a(t)` or `s(t)` is not finite or is negative (as the machines).
/// - [`Error::NonFinite`] if `clean` holds a NaN or infinite pixel, or if
///   a noised pixel does not fit in `T`.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 4, 4)?;
/// let clean = Image::<f64>::from_vec(shape, (0..16).map(|i| i as f64 / 8.0 - 1.0).collect())?;
/// let noisy = noised(&clean, &LegacyCosine, 0.5, 7)?;
/// let (a, s) = (LegacyCosine.signal(0.5), LegacyCosine.noise(0.5));
/// let eta = initial_noise::<f64>(shape, 7);
/// assert_eq!(noisy.get(0, 1, 2), a * clean.get(0, 1, 2) + s * eta.get(0, 1, 2));
/// assert_eq!(noised(&clean, &LegacyCosine, 0.0, 7)?, clean);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub fn noised<T, S>(clean: &Image<T>, schedule: &S, t: f64, seed: u64) -> Result<Image<T>>
where
    T: Real,
    S: NoiseSchedule + ?Sized,
{
    crate::schedule::check_time(t)?;
    clean.check_finite("clean image")?;
    let (a, s) = (schedule.signal(t), schedule.noise(t));
    if !(a.is_finite() && s.is_finite()) {
        return Err(Error::InvalidTime {
            t,
            reason: "the schedule gives a non-finite signal or noise scale here",
        });
    }
    if a < 0.0 || s < 0.0 {
        return Err(Error::InvalidTime {
            t,
            reason: "the schedule gives a negative signal or noise scale here",
        });
    }
    let eta = initial_noise::<f64>(clean.shape(), seed);
    let mut out = Image::zeros(clean.shape());
    for ((slot, &x), &e) in out
        .as_mut_slice()
        .iter_mut()
        .zip(clean.as_slice())
        .zip(eta.as_slice())
    {
        let value = T::narrow(a * x.widen() + s * e);
        if !value.is_finite() {
            return Err(Error::NonFinite("noised image"));
        }
        *slot = value;
    }
    Ok(out)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod step_limits {
    use super::*;

    #[test]
    fn step_counts_above_the_cap_are_refused() {
        for method in [Method::Ddim, Method::Euler, Method::Heun] {
            for steps in [MAX_STEPS + 1, usize::MAX / 2 + 1, usize::MAX] {
                match Sampler::new(method, steps) {
                    Err(Error::InvalidParameter(message)) => {
                        assert!(message.contains(&steps.to_string()), "{message}")
                    }
                    other => panic!("{method:?} with {steps} steps: {other:?}"),
                }
            }
        }
    }

    #[test]
    fn evaluations_at_the_cap() {
        let heun = Sampler::new(Method::Heun, MAX_STEPS).unwrap();
        assert_eq!(heun.evaluations(), 2 * MAX_STEPS - 1);
        let euler = Sampler::new(Method::Euler, MAX_STEPS).unwrap();
        assert_eq!(euler.evaluations(), MAX_STEPS);
        assert_eq!(Sampler::new(Method::Heun, 1).unwrap().evaluations(), 1);
    }
}
