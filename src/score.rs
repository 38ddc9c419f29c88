//! Score functions: anything that, given a noisy image `phi_t` at time `t`,
//! predicts the clean image, the noise or the score.
//!
//! The three predictions determine each other through the schedule's
//! `a = a(t)` and `s = s(t)`:
//!
//! ```text
//! epshat = (phi_t - a x0hat) / s
//! score  = -(phi_t - a x0hat) / s^2 = -epshat / s
//! x0hat  = (phi_t - s epshat) / a
//! ```

use std::fmt::Debug;

use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;
use crate::schedule::{NoiseSchedule, check_time};

/// Which of the three equivalent predictions a score function makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prediction {
    /// The posterior mean of the clean image, `x0hat`.
    CleanImage,
    /// The noise, `epshat`.
    Noise,
    /// The score, `grad log p_t(phi_t)`.
    Score,
}

/// A denoiser of images of one shape under one noise schedule.
///
/// Implementors give their native prediction; the other two follow from the
/// identities in the [module documentation](self). The machines of this
/// crate predict `x0hat`; a wrapped noise-predicting network predicts
/// `epshat` (see [`ClosureScore`]).
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 1, 2)?;
/// let training = TrainingSet::new(shape, vec![1.0_f64, -1.0], None)?;
/// let machine = Machine::ideal(training, LegacyCosine)?;
/// let x = Image::from_vec(shape, vec![0.3, 0.1])?;
/// // With one training image, x0hat is that image whatever the input.
/// assert_eq!(machine.x0_hat(&x, 0.5, None)?.as_slice(), &[1.0, -1.0]);
/// let eps = machine.eps_hat(&x, 0.5, None)?;
/// let score = machine.score(&x, 0.5, None)?;
/// let s = LegacyCosine.noise(0.5);
/// assert!((score.get(0, 0, 0) + eps.get(0, 0, 0) / s).abs() < 1e-12);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub trait ScoreFunction<T: Real>: Send + Sync {
    /// The noise schedule that defines `a(t)` and `s(t)`.
    fn schedule(&self) -> &dyn NoiseSchedule;

    /// The shape of the images this function accepts, if it is fixed.
    fn shape(&self) -> Option<Shape>;

    /// The prediction [`ScoreFunction::predict_native_into`] writes.
    fn native(&self) -> Prediction;

    /// Writes the native prediction for `phi_t = x` at time `t`, optionally
    /// for class `class`, into `out` (of `x`'s shape).
    ///
    /// # Errors
    ///
    /// Implementation-defined; the machines fail on a wrong shape, a time
    /// outside `[0, 1]`, non-finite input or an unknown class.
    fn predict_native_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        out: &mut Image<T>,
    ) -> Result<()>;

    /// Writes the requested prediction into `out`, converting from the
    /// native one with the identities of the [module documentation](self).
    ///
    /// # Errors
    ///
    /// As [`ScoreFunction::predict_native_into`]; also
    /// [`Error::NonFinite`] if the native prediction holds a NaN or
    /// infinite value, [`Error::InvalidTime`] as [`convert_in_place`] when
    /// a conversion is needed, and [`Error::ShapeMismatch`] if `out` has
    /// another shape than `x`.
    fn predict_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        target: Prediction,
        out: &mut Image<T>,
    ) -> Result<()> {
        check_time(t)?;
        if out.shape() != x.shape() {
            return Err(Error::shape("output image shape", x.shape(), out.shape()));
        }
        self.predict_native_into(x, t, class, out)?;
        convert_in_place(self.schedule(), x, t, self.native(), target, out)
    }

    /// The posterior mean `x0hat(phi_t, t)`.
    ///
    /// # Errors
    ///
    /// As [`ScoreFunction::predict_into`].
    fn x0_hat(&self, x: &Image<T>, t: f64, class: Option<usize>) -> Result<Image<T>> {
        let mut out = Image::zeros(x.shape());
        self.predict_into(x, t, class, Prediction::CleanImage, &mut out)?;
        Ok(out)
    }

    /// The noise estimate `epshat = (phi_t - a x0hat) / s`.
    ///
    /// # Errors
    ///
    /// As [`ScoreFunction::predict_into`].
    fn eps_hat(&self, x: &Image<T>, t: f64, class: Option<usize>) -> Result<Image<T>> {
        let mut out = Image::zeros(x.shape());
        self.predict_into(x, t, class, Prediction::Noise, &mut out)?;
        Ok(out)
    }

    /// The score `-(phi_t - a x0hat) / s^2`.
    ///
    /// # Errors
    ///
    /// As [`ScoreFunction::predict_into`].
    fn score(&self, x: &Image<T>, t: f64, class: Option<usize>) -> Result<Image<T>> {
        let mut out = Image::zeros(x.shape());
        self.predict_into(x, t, class, Prediction::Score, &mut out)?;
        Ok(out)
    }
}

macro_rules! forward_score_function {
    ($($wrapper:ty),*) => {$(
        impl<T: Real, F: ScoreFunction<T> + ?Sized> ScoreFunction<T> for $wrapper {
            fn schedule(&self) -> &dyn NoiseSchedule {
                (**self).schedule()
            }
            fn shape(&self) -> Option<Shape> {
                (**self).shape()
            }
            fn native(&self) -> Prediction {
                (**self).native()
            }
            fn predict_native_into(
                &self,
                x: &Image<T>,
                t: f64,
                class: Option<usize>,
                out: &mut Image<T>,
            ) -> Result<()> {
                (**self).predict_native_into(x, t, class, out)
            }
        }
    )*};
}
forward_score_function!(&F, Box<F>, std::sync::Arc<F>);

/// Converts `out`, which holds prediction `from` for input `x` at `t`, into
/// prediction `to`, in place.
///
/// # Errors
///
/// [`Error::NonFinite`] if `out` holds a NaN or infinite value;
/// [`Error::InvalidTime`] if `a(t)` or `s(t)` is not finite, if the
/// conversion divides by `a(t) <= 0` or `s(t) <= 0`, or if its result
/// overflows `T`.
pub fn convert_in_place<T: Real>(
    schedule: &dyn NoiseSchedule,
    x: &Image<T>,
    t: f64,
    from: Prediction,
    to: Prediction,
    out: &mut Image<T>,
) -> Result<()> {
    out.check_finite("score function output")?;
    if from == to {
        return Ok(());
    }
    let (a, s) = (schedule.signal(t), schedule.noise(t));
    if !(a.is_finite() && s.is_finite()) {
        return Err(Error::InvalidTime {
            t,
            reason: "the schedule gives a non-finite signal or noise scale here",
        });
    }
    let needs_s = matches!(from, Prediction::Score) || !matches!(to, Prediction::CleanImage);
    if needs_s && s <= 0.0 {
        return Err(Error::InvalidTime {
            t,
            reason: "the noise and the score need s(t) > 0",
        });
    }
    if matches!(to, Prediction::CleanImage) && a <= 0.0 {
        return Err(Error::InvalidTime {
            t,
            reason: "the clean image from a noise or score prediction needs a(t) > 0",
        });
    }
    for (o, &xv) in out.as_mut_slice().iter_mut().zip(x.as_slice()) {
        let (xv, v) = (xv.widen(), o.widen());
        // First to epshat, then to the target.
        let eps = match from {
            Prediction::CleanImage => (xv - a * v) / s,
            Prediction::Noise => v,
            Prediction::Score => -s * v,
        };
        let value = match (from, to) {
            (Prediction::CleanImage, Prediction::Score) => -(xv - a * v) / (s * s),
            (_, Prediction::CleanImage) => (xv - s * eps) / a,
            (_, Prediction::Noise) => eps,
            (_, Prediction::Score) => -eps / s,
        };
        let narrowed = T::narrow(value);
        if !narrowed.is_finite() {
            return Err(Error::InvalidTime {
                t,
                reason: "the converted prediction overflows the image type here (a small a(t) or s(t), or a very large prediction)",
            });
        }
        *o = narrowed;
    }
    Ok(())
}

/// A score function from a closure, for example a trained network from
/// another crate, so that machines and networks are compared through one
/// interface.
///
/// The closure receives `(phi_t, t, class)` and returns its native
/// prediction; the adapter checks the output's shape and finiteness.
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// // A "network" that predicts no noise at all.
/// let shape = Shape::new(1, 4, 4)?;
/// let net = ClosureScore::new(LegacyCosine, Prediction::Noise, Some(shape),
///     |x: &Image<f32>, _t: f64, _class: Option<usize>| Ok(Image::zeros(x.shape())));
/// let x = Image::from_vec(shape, vec![0.5_f32; 16])?;
/// let x0 = net.x0_hat(&x, 0.5, None)?;
/// let a = LegacyCosine.signal(0.5) as f32;
/// assert!((x0.get(0, 0, 0) - 0.5 / a).abs() < 1e-6);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub struct ClosureScore<S, F> {
    schedule: S,
    native: Prediction,
    shape: Option<Shape>,
    function: F,
}

impl<S, F> ClosureScore<S, F> {
    /// Wraps `function`, which makes prediction `native` under `schedule`
    /// for images of `shape` (any shape if `None`).
    pub fn new(schedule: S, native: Prediction, shape: Option<Shape>, function: F) -> Self {
        ClosureScore {
            schedule,
            native,
            shape,
            function,
        }
    }
}

impl<S: Debug, F> Debug for ClosureScore<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClosureScore")
            .field("schedule", &self.schedule)
            .field("native", &self.native)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

impl<T, S, F> ScoreFunction<T> for ClosureScore<S, F>
where
    T: Real,
    S: NoiseSchedule,
    F: Fn(&Image<T>, f64, Option<usize>) -> Result<Image<T>> + Send + Sync,
{
    fn schedule(&self) -> &dyn NoiseSchedule {
        &self.schedule
    }

    fn shape(&self) -> Option<Shape> {
        self.shape
    }

    fn native(&self) -> Prediction {
        self.native
    }

    fn predict_native_into(
        &self,
        x: &Image<T>,
        t: f64,
        class: Option<usize>,
        out: &mut Image<T>,
    ) -> Result<()> {
        check_time(t)?;
        if out.shape() != x.shape() {
            return Err(Error::shape("output image shape", x.shape(), out.shape()));
        }
        if let Some(shape) = self.shape
            && x.shape() != shape
        {
            return Err(Error::shape("input image shape", shape, x.shape()));
        }
        x.check_finite("input image")?;
        let prediction = (self.function)(x, t, class)?;
        if prediction.shape() != x.shape() {
            return Err(Error::shape(
                "closure output shape",
                x.shape(),
                prediction.shape(),
            ));
        }
        prediction.check_finite("closure output")?;
        out.as_mut_slice().copy_from_slice(prediction.as_slice());
        Ok(())
    }
}
