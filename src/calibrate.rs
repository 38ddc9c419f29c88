//! Calibrating a machine's scale schedule on a reference's own
//! trajectories.
//!
//! At every step `i` of a recording (time `t_i`, recorded input `x` and
//! recorded noise prediction `e` of trajectory `m`), each candidate patch
//! side `k` gives a machine `M_k` (built by a closure, so any machine family
//! works), evaluated at the reference's own input:
//!
//! ```text
//! cosine(i, m, k)   = <epshat_k, e> / (|epshat_k| |e|)     epshat_k = M_k.eps_hat(x, t_i)
//! distance(i, m, k) = |epshat_k - e|                        (Euclidean, over all pixels)
//! ```
//!
//! Each trajectory then chooses the side with the highest cosine (or, with
//! [`Criterion::Distance`], the smallest distance), and the step's side is
//! the median of the chosen sides over trajectories.
//!
//! - Ties within a trajectory (equal values) go to the smaller side.
//! - The median of an even number of chosen sides is the lower of the two
//!   middle ones (as `torch.median` does), so the result is always one of
//!   the candidates, and therefore odd.
//!
//! # Cost
//!
//! A calibration makes `candidates x steps x trajectories` machine
//! evaluations, and nothing else: the reference is never evaluated (its
//! predictions are recorded), each candidate's machine is built once and
//! evaluated at every step of every trajectory, and both criteria come from
//! the same evaluation. [`Calibration`] keeps every cosine and distance,
//! so either criterion, or another summary, needs no new evaluation. For
//! 28x28 images and 5,000 training images an equivariant local machine
//! evaluation takes seconds, so a full calibration (14 sides, 20 steps, 8
//! trajectories: 2,240 evaluations) takes hours on two cores; fewer
//! candidates, trajectories or training images divide it accordingly.
//!
//! # Example
//!
//! A recording of a local score machine with a known scale schedule; the
//! calibration finds that schedule back.
//!
//! ```
//! use score_machines::calibrate::{Calibration, Criterion};
//! use score_machines::prelude::*;
//! use score_machines::reference::RecordedTrajectories;
//!
//! let shape = Shape::new(1, 6, 6)?;
//! let pixels: Vec<f64> = (0..8 * 36).map(|i| ((i * 7919) % 23) as f64 / 11.0 - 1.0).collect();
//! let training = TrainingSet::new(shape, pixels, None)?;
//! let truth = ScaleSchedule::new(vec![1, 3, 5, 7])?;
//! let network = Machine::local(training.clone(), LegacyCosine, truth.clone())?;
//! let noises: Vec<_> = (0..3).map(|seed| initial_noise(shape, seed)).collect();
//! let sampler = Sampler::new(Method::Ddim, 4)?;
//! let recording = RecordedTrajectories::record(&network, &sampler, &noises, None)?;
//!
//! let calibration = Calibration::run(
//!     &recording,
//!     &[1, 3, 5, 7],
//!     |side| Machine::local(training.clone(), LegacyCosine, SquarePatch::new(side)?),
//!     |_| {},
//! )?;
//! assert_eq!(calibration.schedule(Criterion::Cosine)?, truth);
//! assert_eq!(calibration.schedule(Criterion::Distance)?, truth);
//! # Ok::<(), score_machines::Error>(())
//! ```

use std::fmt;

use crate::compare::{cosine_of, distance_of, median};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::locality::ScaleSchedule;
use crate::real::Real;
use crate::reference::{RecordedTrajectories, TIME_TOLERANCE};
use crate::score::{Prediction, ScoreFunction};

/// How a trajectory chooses its side at a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Criterion {
    /// The highest cosine similarity between the machine's and the
    /// reference's noise predictions.
    Cosine,
    /// The smallest Euclidean (L2) distance between them.
    Distance,
}

/// Where a calibration is, given to its progress callback after every
/// machine evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CalibrationProgress {
    /// The patch side being evaluated.
    pub side: usize,
    /// The step just evaluated, in sampling order.
    pub step: usize,
    /// Evaluations done so far, this one included.
    pub done: usize,
    /// Evaluations of the whole calibration.
    pub total: usize,
}

/// Every cosine and distance of a calibration, and the sides they choose
/// (see the [module documentation](self)).
#[derive(Clone, Debug, PartialEq)]
pub struct Calibration {
    candidates: Vec<usize>,
    times: Vec<f64>,
    seeds: Vec<usize>,
    /// `[step][trajectory][candidate]`.
    cosine: Vec<f64>,
    /// `[step][trajectory][candidate]`.
    distance: Vec<f64>,
}

impl Calibration {
    /// Evaluates the machine `build(k)` of every candidate side `k` at the
    /// recorded input of every step of every trajectory of `reference`,
    /// calling `progress` after each evaluation.
    ///
    /// Candidates are used in ascending order; `build` is called once per
    /// candidate, and its machine dropped before the next is built.
    ///
    /// # Errors
    ///
    /// - [`Error::InvalidParameter`] if `candidates` is empty or repeats a
    ///   side; [`Error::InvalidPatchSide`] if a side is even or zero;
    /// - [`Error::NonFinite`] if a machine's noise prediction is not finite;
    /// - any error of `build` or of a machine evaluation (for example
    ///   [`Error::NoCandidates`] for a side too large for the image under
    ///   the reference periodic semantics);
    /// - [`Error::InvalidParameter`] if a machine's or the reference's
    ///   noise prediction is zero, so that no cosine exists, or if an L2
    ///   distance exceeds the `f64` range.
    ///
    /// Cosines and distances are computed so that no intermediate sum
    /// overflows: any finite predictions give a cosine in `[-1, 1]`, and a
    /// distance that is finite whenever its true value fits in an `f64`.
    pub fn run<T, M, B, P>(
        reference: &RecordedTrajectories<T>,
        candidates: &[usize],
        mut build: B,
        mut progress: P,
    ) -> Result<Self>
    where
        T: Real,
        M: ScoreFunction<T>,
        B: FnMut(usize) -> Result<M>,
        P: FnMut(CalibrationProgress),
    {
        let candidates = checked_candidates(candidates)?;
        let (steps, count, sides) = (reference.steps(), reference.len(), candidates.len());
        let total = steps * count * sides;
        let mut cosine = vec![f64::NAN; total];
        let mut distance = vec![f64::NAN; total];
        let shape = reference.shape();
        let mut prediction = Image::zeros(shape);
        let mut done = 0;
        for (c, &side) in candidates.iter().enumerate() {
            let machine = build(side)?;
            for (step, &t) in reference.times().iter().enumerate() {
                for m in 0..count {
                    let x = reference.input(m, step)?;
                    machine.predict_into(&x, t, None, Prediction::Noise, &mut prediction)?;
                    prediction.check_finite("a machine's noise prediction in a calibration")?;
                    let recorded = reference.noise_slice(m, step)?;
                    let slot = (step * count + m) * sides + c;
                    cosine[slot] = cosine_of(prediction.as_slice(), recorded).ok_or_else(|| {
                        Error::InvalidParameter(format!(
                            "zero noise prediction at step {step} of trajectory {m} \
                             (side {side}): no cosine similarity"
                        ))
                    })?;
                    distance[slot] = distance_of(prediction.as_slice(), recorded);
                    if !distance[slot].is_finite() {
                        return Err(Error::InvalidParameter(format!(
                            "at step {step} of trajectory {m} (side {side}) the L2 distance \
                             between the machine's and the recorded noise predictions \
                             exceeds the f64 range"
                        )));
                    }
                    done += 1;
                    progress(CalibrationProgress {
                        side,
                        step,
                        done,
                        total,
                    });
                }
            }
        }
        Ok(Calibration {
            candidates,
            times: reference.times().to_vec(),
            seeds: reference.seeds().to_vec(),
            cosine,
            distance,
        })
    }

    /// The candidate sides, ascending.
    pub fn candidates(&self) -> &[usize] {
        &self.candidates
    }

    /// The time of each step, in sampling order (decreasing).
    pub fn times(&self) -> &[f64] {
        &self.times
    }

    /// The seeds of the trajectories calibrated on.
    pub fn seeds(&self) -> &[usize] {
        &self.seeds
    }

    /// Number of steps.
    pub fn steps(&self) -> usize {
        self.times.len()
    }

    /// The cosine similarity at step `step` of trajectory `index` (position
    /// in [`Calibration::seeds`]) for candidate side `side`; `None` if any
    /// of the three is out of range.
    pub fn cosine(&self, step: usize, index: usize, side: usize) -> Option<f64> {
        self.slot(step, index, side).map(|slot| self.cosine[slot])
    }

    /// The L2 distance at step `step` of trajectory `index` for candidate
    /// side `side`; `None` if any of the three is out of range.
    pub fn distance(&self, step: usize, index: usize, side: usize) -> Option<f64> {
        self.slot(step, index, side).map(|slot| self.distance[slot])
    }

    /// The median over trajectories of the cosine of side `side` at step
    /// `step` (the mean of the two middle values for an even count); `None`
    /// if either is out of range.
    pub fn median_cosine(&self, step: usize, side: usize) -> Option<f64> {
        let values: Option<Vec<f64>> = (0..self.seeds.len())
            .map(|index| self.cosine(step, index, side))
            .collect();
        values.map(|v| median(&v))
    }

    /// The side each trajectory chooses at step `step` under `criterion`
    /// (ties to the smaller side); `None` if `step` is out of range.
    pub fn chosen_sides(&self, step: usize, criterion: Criterion) -> Option<Vec<usize>> {
        if step >= self.steps() {
            return None;
        }
        let sides = self.candidates.len();
        let chosen = (0..self.seeds.len())
            .map(|index| {
                let start = (step * self.seeds.len() + index) * sides;
                let mut best = 0;
                for c in 1..sides {
                    let better = match criterion {
                        Criterion::Cosine => self.cosine[start + c] > self.cosine[start + best],
                        Criterion::Distance => {
                            self.distance[start + c] < self.distance[start + best]
                        }
                    };
                    if better {
                        best = c;
                    }
                }
                self.candidates[best]
            })
            .collect();
        Some(chosen)
    }

    /// The calibrated side of step `step`: the lower median of
    /// [`Calibration::chosen_sides`]; `None` if `step` is out of range.
    pub fn side(&self, step: usize, criterion: Criterion) -> Option<usize> {
        let mut chosen = self.chosen_sides(step, criterion)?;
        chosen.sort_unstable();
        Some(chosen[(chosen.len() - 1) / 2])
    }

    /// The calibrated side of every step, in sampling order (the step at
    /// the highest `t` first).
    pub fn sides(&self, criterion: Criterion) -> Vec<usize> {
        (0..self.steps())
            .map(|step| self.side(step, criterion).expect("step in range"))
            .collect()
    }

    /// The calibrated sides as a [`ScaleSchedule`] (low noise first, entry
    /// `j` for the step at `t = (j + 1) / n`), usable as the locality of
    /// any machine.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if the recorded times are not the
    /// uniform grid `t = i / n`, `i = n .. 1`, of the samplers of this
    /// crate (to within [`TIME_TOLERANCE`]): a scale schedule has no entry
    /// for other times.
    pub fn schedule(&self, criterion: Criterion) -> Result<ScaleSchedule> {
        let n = self.steps();
        for (step, &t) in self.times.iter().enumerate() {
            let expected = (n - step) as f64 / n as f64;
            if (t - expected).abs() > TIME_TOLERANCE {
                return Err(Error::InvalidParameter(format!(
                    "step {step} is at t = {t}, not at {expected}: the recorded times are not \
                     the grid i / {n} of a scale schedule"
                )));
            }
        }
        let mut sides = self.sides(criterion);
        sides.reverse();
        ScaleSchedule::new(sides)
    }

    fn slot(&self, step: usize, index: usize, side: usize) -> Option<usize> {
        let c = self.candidates.iter().position(|&k| k == side)?;
        (step < self.steps() && index < self.seeds.len())
            .then(|| (step * self.seeds.len() + index) * self.candidates.len() + c)
    }
}

impl fmt::Display for Calibration {
    /// One line per step in sampling order: `t`, the side chosen by cosine
    /// with its median cosine, the side chosen by L2 distance (`by L2`), and the median
    /// cosine of every candidate side.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:>5} {:>5} {:>8} {:>5} | median cosine by side:",
            "t", "side", "cosine", "by L2"
        )?;
        for side in &self.candidates {
            write!(f, " {side:>5}")?;
        }
        for step in 0..self.steps() {
            let side = self.side(step, Criterion::Cosine).expect("step in range");
            writeln!(f)?;
            write!(
                f,
                "{:>5.2} {:>5} {:>8.4} {:>5} |{:22}",
                self.times[step],
                side,
                self.median_cosine(step, side).expect("in range"),
                self.side(step, Criterion::Distance).expect("step in range"),
                ""
            )?;
            for &k in &self.candidates {
                write!(
                    f,
                    " {:>5.3}",
                    self.median_cosine(step, k).expect("in range")
                )?;
            }
        }
        Ok(())
    }
}

/// Sorted candidate sides, checked odd and distinct.
fn checked_candidates(candidates: &[usize]) -> Result<Vec<usize>> {
    if candidates.is_empty() {
        return Err(Error::InvalidParameter("no candidate patch side".into()));
    }
    if let Some(&side) = candidates.iter().find(|&&k| k % 2 == 0) {
        return Err(Error::InvalidPatchSide(side));
    }
    let mut sorted = candidates.to_vec();
    sorted.sort_unstable();
    if let Some(pair) = sorted.windows(2).find(|p| p[0] == p[1]) {
        return Err(Error::InvalidParameter(format!(
            "candidate side {} given twice",
            pair[0]
        )));
    }
    Ok(sorted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn calibration(cosine: Vec<f64>, distance: Vec<f64>, count: usize) -> Calibration {
        Calibration {
            candidates: vec![1, 3, 5],
            times: vec![1.0, 0.5],
            seeds: (0..count).collect(),
            cosine,
            distance,
        }
    }

    #[test]
    fn ties_go_to_the_smaller_side_and_even_medians_down() {
        // Two trajectories: step 0 chooses 3 and 5 (lower median 3); step 1
        // has a tie between 1 and 5 for the first trajectory.
        let cosine = vec![
            0.1, 0.9, 0.2, /* */ 0.1, 0.2, 0.9, //
            0.8, 0.1, 0.8, /* */ 0.1, 0.1, 0.7,
        ];
        let distance = vec![
            3.0, 1.0, 2.0, /* */ 3.0, 2.0, 1.0, //
            1.0, 2.0, 1.0, /* */ 0.5, 2.0, 0.5,
        ];
        let c = calibration(cosine, distance, 2);
        assert_eq!(c.chosen_sides(0, Criterion::Cosine), Some(vec![3, 5]));
        assert_eq!(c.side(0, Criterion::Cosine), Some(3));
        assert_eq!(c.chosen_sides(1, Criterion::Cosine), Some(vec![1, 5]));
        assert_eq!(c.chosen_sides(1, Criterion::Distance), Some(vec![1, 1]));
        assert_eq!(c.sides(Criterion::Cosine), vec![3, 1]);
        assert_eq!(c.schedule(Criterion::Cosine).unwrap().sides(), &[1, 3]);
        assert_eq!(c.median_cosine(0, 5), Some(0.55));
        assert_eq!(c.cosine(1, 1, 5), Some(0.7));
        assert_eq!(c.cosine(1, 2, 5), None);
        assert_eq!(c.cosine(1, 1, 7), None);
        assert!(c.to_string().lines().count() == 3);
    }

    #[test]
    fn schedule_needs_the_uniform_grid() {
        let mut c = calibration(vec![0.0; 6], vec![0.0; 6], 1);
        c.times = vec![0.9, 0.5];
        assert!(matches!(
            c.schedule(Criterion::Cosine),
            Err(Error::InvalidParameter(_))
        ));
    }

    #[test]
    fn candidates_are_checked() {
        assert!(checked_candidates(&[]).is_err());
        assert!(matches!(
            checked_candidates(&[3, 4]),
            Err(Error::InvalidPatchSide(4))
        ));
        assert!(checked_candidates(&[3, 1, 3]).is_err());
        assert_eq!(checked_candidates(&[5, 1, 3]).unwrap(), vec![1, 3, 5]);
    }
}
