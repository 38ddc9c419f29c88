//! Watching a sampler step by step.

use std::ops::ControlFlow;

use crate::image::Image;
use crate::real::Real;

/// What a sampler shows its observer at one step, before the update.
///
/// At step `step` (0-based, in sampling order, out of `steps`) the sampler
/// holds the state `x = x_t` at time `t`, has evaluated the score function
/// there, and is about to move the state to `t_next < t`. The images are
/// borrowed read-only: an observer cannot change what the sampler does next
/// except by stopping it (see [`Observer::observe`]).
///
/// `eps_hat` and `x0_hat` are the score function's prediction at `(x, t)`
/// in both forms, one being the function's native output and the other
/// derived from it by `epshat = (x - a x0hat) / s` or
/// `x0hat = (x - s epshat) / a`, with `a = a(t)`, `s = s(t)`. For Heun's
/// method they belong to the first of the step's two evaluations, the one
/// at `(x, t)`.
#[derive(Clone, Copy, Debug)]
pub struct StepRecord<'a, T> {
    /// Index of the step in sampling order, `0 .. steps`.
    pub step: usize,
    /// Number of steps of the run.
    pub steps: usize,
    /// The time of the state, `t = (steps - step) / steps`.
    pub t: f64,
    /// The time the step moves to, `(steps - step - 1) / steps`.
    pub t_next: f64,
    /// The state `x_t` before the step's update.
    pub x: &'a Image<T>,
    /// The noise prediction `epshat(x_t, t)`.
    pub eps_hat: &'a Image<T>,
    /// The clean-image prediction `x0hat(x_t, t)`.
    pub x0_hat: &'a Image<T>,
}

/// Receives a [`StepRecord`] at every sampler step, before the update.
///
/// Implemented by `()` and [`NoObserver`] (which ignore every step), by
/// [`Trajectory`] (which records every step), and by every closure
/// `FnMut(&StepRecord<T>)` (which sees every step and never stops the run).
///
/// # Example
///
/// ```
/// use std::ops::ControlFlow;
/// use score_machines::prelude::*;
///
/// /// Stops the sampler once the time falls below a threshold.
/// struct StopBelow(f64);
///
/// impl<T: Real> Observer<T> for StopBelow {
///     fn observe(&mut self, record: &StepRecord<'_, T>) -> ControlFlow<()> {
///         if record.t < self.0 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
///     }
/// }
///
/// let shape = Shape::new(1, 2, 2)?;
/// let training = TrainingSet::new(shape, vec![0.5_f64, -0.5, 0.25, 1.0], None)?;
/// let machine = Machine::ideal(training, LegacyCosine)?;
/// let sampler = Sampler::new(Method::Ddim, 10)?;
/// let mut x = initial_noise::<f64>(shape, 7);
/// let mut workspace = Workspace::new();
/// let end = sampler.sample_into(&machine, &mut x, None, &mut StopBelow(0.5), &mut workspace)?;
/// // Steps at t = 1.0, 0.9, ..., 0.5 ran; the one at t = 0.4 was refused.
/// assert_eq!(end, Completion::Stopped { step: 6, t: 0.4 });
/// # Ok::<(), score_machines::Error>(())
/// ```
pub trait Observer<T: Real> {
    /// Called at every step with the state before the update.
    ///
    /// Return `ControlFlow::Continue(())` to go on, or
    /// `ControlFlow::Break(())` to stop the run before this step's update:
    /// the sampler then returns with the state equal to `record.x`.
    fn observe(&mut self, record: &StepRecord<'_, T>) -> ControlFlow<()>;
}

/// An observer that ignores every step; `()` does the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NoObserver;

impl<T: Real> Observer<T> for NoObserver {
    fn observe(&mut self, _record: &StepRecord<'_, T>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<T: Real> Observer<T> for () {
    fn observe(&mut self, _record: &StepRecord<'_, T>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

impl<T: Real, F> Observer<T> for F
where
    F: FnMut(&StepRecord<'_, T>),
{
    fn observe(&mut self, record: &StepRecord<'_, T>) -> ControlFlow<()> {
        self(record);
        ControlFlow::Continue(())
    }
}

/// One recorded step of a [`Trajectory`]: owned copies of a
/// [`StepRecord`]'s images.
#[derive(Clone, Debug, PartialEq)]
pub struct RecordedStep<T> {
    /// The time of the state.
    pub t: f64,
    /// The time the step moved to.
    pub t_next: f64,
    /// The state `x_t` before the step's update.
    pub x: Image<T>,
    /// The noise prediction at `(x_t, t)`.
    pub eps_hat: Image<T>,
    /// The clean-image prediction at `(x_t, t)`.
    pub x0_hat: Image<T>,
}

/// An observer that keeps a copy of `x_t`, `epshat` and `x0hat` at every
/// step, in sampling order.
///
/// It copies three images per step, so it allocates while sampling.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 2, 2)?;
/// let training = TrainingSet::new(shape, vec![0.5_f64, -0.5, 0.25, 1.0], None)?;
/// let machine = Machine::ideal(training, LegacyCosine)?;
/// let mut trajectory = Trajectory::new();
/// let x = initial_noise::<f64>(shape, 3);
/// let sample = Sampler::new(Method::Ddim, 5)?.sample(&machine, x.clone(), None, &mut trajectory)?;
/// assert_eq!(trajectory.len(), 5);
/// assert_eq!(trajectory.steps()[0].x, x);
/// assert_eq!(trajectory.steps()[4].t, 0.2);
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Trajectory<T> {
    steps: Vec<RecordedStep<T>>,
}

impl<T: Real> Trajectory<T> {
    /// An empty trajectory.
    pub fn new() -> Self {
        Trajectory { steps: Vec::new() }
    }

    /// Number of recorded steps.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// Whether no step is recorded.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The recorded steps, in sampling order.
    pub fn steps(&self) -> &[RecordedStep<T>] {
        &self.steps
    }

    /// Forgets every recorded step, keeping the allocation.
    pub fn clear(&mut self) {
        self.steps.clear();
    }

    /// The recorded steps, by value.
    pub fn into_steps(self) -> Vec<RecordedStep<T>> {
        self.steps
    }
}

impl<T: Real> Observer<T> for Trajectory<T> {
    fn observe(&mut self, record: &StepRecord<'_, T>) -> ControlFlow<()> {
        self.steps.push(RecordedStep {
            t: record.t,
            t_next: record.t_next,
            x: record.x.clone(),
            eps_hat: record.eps_hat.clone(),
            x0_hat: record.x0_hat.clone(),
        });
        ControlFlow::Continue(())
    }
}
