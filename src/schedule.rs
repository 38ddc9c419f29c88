//! Noise schedules: the signal scale `a(t)` and noise scale `s(t)` of the
//! forward process `phi_t = a(t) phi_0 + s(t) eta`, `eta ~ N(0, I)`.

use std::f64::consts::FRAC_PI_2;
use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A forward noising process `phi_t = a(t) phi_0 + s(t) eta` for `t` in
/// `[0, 1]`.
///
/// Variance-preserving schedules have `a = sqrt(abar)`, `s = sqrt(1 - abar)`
/// for a decreasing `abar(t)`; variance-exploding ones have `a = 1`. The
/// machines and samplers use only `a` and `s`, so any pair works.
///
/// # Example
///
/// ```
/// use score_machines::schedule::{LegacyCosine, NoiseSchedule};
/// let schedule = LegacyCosine;
/// let (a, s) = (schedule.signal(0.5), schedule.noise(0.5));
/// assert!((a * a + s * s - 1.0).abs() < 1e-12);
/// ```
pub trait NoiseSchedule: Send + Sync + Debug {
    /// The signal scale `a(t)`.
    fn signal(&self, t: f64) -> f64;

    /// The noise scale `s(t)`.
    fn noise(&self, t: f64) -> f64;

    /// `abar(t) = a^2 / (a^2 + s^2)`, which is `a^2` for a
    /// variance-preserving schedule.
    fn alpha_bar(&self, t: f64) -> f64 {
        let (a, s) = (self.signal(t), self.noise(t));
        a * a / (a * a + s * s)
    }

    /// The time derivative `a'(t) = da/dt`.
    ///
    /// The default is a finite difference with step `h = 1e-6`: central,
    /// `(a(t + h) - a(t - h)) / (2 h)`, inside `[h, 1 - h]`, and one-sided
    /// within `h` of either end, so it never evaluates `a` outside
    /// `[0, 1]`. Its error is about `1e-10` relative inside and `h a''/2`
    /// at the ends. The schedules of this crate override it with the exact
    /// derivative.
    fn signal_derivative(&self, t: f64) -> f64 {
        finite_difference(|u| self.signal(u), t)
    }

    /// The time derivative `s'(t) = ds/dt`.
    ///
    /// The default is the finite difference of
    /// [`NoiseSchedule::signal_derivative`] applied to `s`. For a
    /// variance-preserving schedule `s' = -a a' / s`, which is infinite
    /// where `s = 0` and `a' != 0`; a finite difference returns a large
    /// finite number there instead.
    fn noise_derivative(&self, t: f64) -> f64 {
        finite_difference(|u| self.noise(u), t)
    }
}

/// Step of the finite-difference derivatives of [`NoiseSchedule`].
const DERIVATIVE_STEP: f64 = 1e-6;

/// `f'(t)` by a central difference inside `[h, 1 - h]` and a one-sided
/// difference within `h` of 0 or 1, with `h = DERIVATIVE_STEP`.
fn finite_difference(f: impl Fn(f64) -> f64, t: f64) -> f64 {
    let h = DERIVATIVE_STEP;
    if t < h {
        (f(t + h) - f(t)) / h
    } else if t > 1.0 - h {
        (f(t) - f(t - h)) / h
    } else {
        (f(t + h) - f(t - h)) / (2.0 * h)
    }
}

macro_rules! forward_schedule {
    ($($wrapper:ty),*) => {$(
        impl<S: NoiseSchedule + ?Sized> NoiseSchedule for $wrapper {
            fn signal(&self, t: f64) -> f64 {
                (**self).signal(t)
            }
            fn noise(&self, t: f64) -> f64 {
                (**self).noise(t)
            }
            fn alpha_bar(&self, t: f64) -> f64 {
                (**self).alpha_bar(t)
            }
            fn signal_derivative(&self, t: f64) -> f64 {
                (**self).signal_derivative(t)
            }
            fn noise_derivative(&self, t: f64) -> f64 {
                (**self).noise_derivative(t)
            }
        }
    )*};
}
forward_schedule!(&S, Box<S>, Arc<S>);

/// Fails with [`Error::InvalidTime`] unless `0 <= t <= 1`.
pub(crate) fn check_time(t: f64) -> Result<()> {
    if (0.0..=1.0).contains(&t) {
        Ok(())
    } else {
        Err(Error::InvalidTime {
            t,
            reason: "t must lie in [0, 1]",
        })
    }
}

/// The schedule of the reference code:
/// `abar(t) = cos^2( (t / 1.008) * pi / 2 )`, so `abar(1) ~ 1.5e-4`.
///
/// `a = sqrt(abar) = cos(theta)`, `s = sqrt(1 - abar) = sin(theta)` with
/// `theta = k t`, `k = pi / (2 * 1.008)`; so `a' = -k sin(theta)` and
/// `s' = k cos(theta)`, finite on all of `[0, 1]`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LegacyCosine;

impl NoiseSchedule for LegacyCosine {
    fn signal(&self, t: f64) -> f64 {
        self.alpha_bar(t).sqrt()
    }

    /// `s = sqrt(1 - abar) = sin(t / 1.008 * pi / 2)`, computed as the sine
    /// so that it keeps full relative precision at small `t`.
    fn noise(&self, t: f64) -> f64 {
        (t / 1.008 * FRAC_PI_2).sin().max(0.0)
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        (t / 1.008 * FRAC_PI_2).cos().powi(2)
    }

    fn signal_derivative(&self, t: f64) -> f64 {
        let rate = FRAC_PI_2 / 1.008;
        -rate * (t / 1.008 * FRAC_PI_2).sin()
    }

    fn noise_derivative(&self, t: f64) -> f64 {
        let rate = FRAC_PI_2 / 1.008;
        rate * (t / 1.008 * FRAC_PI_2).cos()
    }
}

/// The cosine schedule with offset of Nichol & Dhariwal:
/// `abar(t) = f(t) / f(0)`, `f(t) = cos^2( (t + o) / (1 + o) * pi / 2 )`.
///
/// With `phi = (t + o) / (1 + o) * pi / 2` and `k = pi / (2 (1 + o))`:
/// `a = cos(phi) / cos(phi_0)`, `a' = -k sin(phi) / cos(phi_0)` and
/// `s' = -a a' / s`, which is `+infinity` at `t = 0` (there `s` grows like
/// `sqrt(t)`). Note `a(1) = cos(pi / 2) / cos(phi_0)`, about `6e-17`:
/// recovering `x0hat` from a noise prediction at `t = 1` divides by it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cosine {
    offset: f64,
}

impl Cosine {
    /// The cosine schedule with offset `o` (0.008 in the original paper).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] unless `o` is finite and positive.
    pub fn new(offset: f64) -> Result<Self> {
        if !(offset.is_finite() && offset > 0.0) {
            return Err(Error::InvalidParameter(format!(
                "cosine schedule offset must be finite and positive, got {offset}"
            )));
        }
        Ok(Cosine { offset })
    }

    fn f(&self, t: f64) -> f64 {
        ((t + self.offset) / (1.0 + self.offset) * FRAC_PI_2)
            .cos()
            .powi(2)
    }
}

impl Default for Cosine {
    /// Offset 0.008.
    fn default() -> Self {
        Cosine { offset: 0.008 }
    }
}

impl NoiseSchedule for Cosine {
    fn signal(&self, t: f64) -> f64 {
        self.alpha_bar(t).sqrt()
    }

    fn noise(&self, t: f64) -> f64 {
        (1.0 - self.alpha_bar(t)).max(0.0).sqrt()
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        (self.f(t) / self.f(0.0)).clamp(0.0, 1.0)
    }

    fn signal_derivative(&self, t: f64) -> f64 {
        let rate = FRAC_PI_2 / (1.0 + self.offset);
        let phi = |u: f64| (u + self.offset) * rate;
        -rate * phi(t).sin() / phi(0.0).cos()
    }

    fn noise_derivative(&self, t: f64) -> f64 {
        variance_preserving_noise_derivative(self, t)
    }
}

/// `s' = -a a' / s` for a schedule with `a^2 + s^2 = 1`; `+infinity` where
/// `s = 0` and `a a' < 0`.
fn variance_preserving_noise_derivative(schedule: &impl NoiseSchedule, t: f64) -> f64 {
    let (signal, noise) = (schedule.signal(t), schedule.noise(t));
    -signal * schedule.signal_derivative(t) / noise
}

/// The DDPM schedule: `beta_j` linear from `beta_1` to `beta_T` over `T`
/// steps and `abar_i = prod_{j <= i} (1 - beta_j)`.
///
/// Continuous time maps to the step `i = t T`; between whole steps
/// `log abar` is interpolated linearly, so `abar(0) = 1` and
/// `abar(1) = abar_T`.
#[derive(Clone, Debug, PartialEq)]
pub struct LinearBeta {
    log_alpha_bar: Vec<f64>,
}

impl LinearBeta {
    /// `T` steps of betas from `beta_start` to `beta_end`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `steps` is zero or above [`MAX_LINEAR_STEPS`], or the betas are not
    /// in `(0, 1)`.
    pub fn new(steps: usize, beta_start: f64, beta_end: f64) -> Result<Self> {
        let valid = |b: f64| b.is_finite() && b > 0.0 && b < 1.0;
        if !(1..=MAX_LINEAR_STEPS).contains(&steps) || !valid(beta_start) || !valid(beta_end) {
            return Err(Error::InvalidParameter(format!(
                "linear beta schedule needs 1 to {MAX_LINEAR_STEPS} steps and betas in (0, 1), \
                 got {steps} steps, {beta_start} .. {beta_end}"
            )));
        }
        let mut log_alpha_bar = Vec::with_capacity(steps + 1);
        log_alpha_bar.push(0.0);
        let mut acc = 0.0;
        for j in 0..steps {
            let frac = if steps == 1 {
                0.0
            } else {
                j as f64 / (steps - 1) as f64
            };
            let beta = beta_start + (beta_end - beta_start) * frac;
            acc += (1.0 - beta).ln();
            log_alpha_bar.push(acc);
        }
        Ok(LinearBeta { log_alpha_bar })
    }

    /// Number of discrete steps `T`.
    pub fn steps(&self) -> usize {
        self.log_alpha_bar.len() - 1
    }
}

impl Default for LinearBeta {
    /// The DDPM defaults: 1,000 steps, betas from 1e-4 to 0.02.
    fn default() -> Self {
        LinearBeta::new(1000, 1e-4, 0.02).expect("valid defaults")
    }
}

impl NoiseSchedule for LinearBeta {
    fn signal(&self, t: f64) -> f64 {
        self.alpha_bar(t).sqrt()
    }

    fn noise(&self, t: f64) -> f64 {
        (1.0 - self.alpha_bar(t)).max(0.0).sqrt()
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        let steps = self.steps();
        let position = (t.clamp(0.0, 1.0) * steps as f64).min(steps as f64);
        let lower = (position.floor() as usize).min(steps);
        let upper = (lower + 1).min(steps);
        let frac = position - lower as f64;
        let log = self.log_alpha_bar[lower] * (1.0 - frac) + self.log_alpha_bar[upper] * frac;
        log.exp()
    }
}

/// The most steps a [`LinearBeta`] schedule may have (it stores one value
/// per step).
pub const MAX_LINEAR_STEPS: usize = 10_000_000;

/// `abar(t) = exp(-rate * t)`, variance preserving (rate 2 by default).
///
/// `a = exp(-rate t / 2)`, `a' = -(rate / 2) a`, `s' = -a a' / s`, which is
/// `+infinity` at `t = 0`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Exponential {
    rate: f64,
}

impl Exponential {
    /// `abar(t) = exp(-rate * t)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] unless `rate` is finite and positive.
    pub fn new(rate: f64) -> Result<Self> {
        if !(rate.is_finite() && rate > 0.0) {
            return Err(Error::InvalidParameter(format!(
                "exponential schedule rate must be finite and positive, got {rate}"
            )));
        }
        Ok(Exponential { rate })
    }
}

impl Default for Exponential {
    /// Rate 2: `abar(t) = exp(-2 t)`.
    fn default() -> Self {
        Exponential { rate: 2.0 }
    }
}

impl NoiseSchedule for Exponential {
    fn signal(&self, t: f64) -> f64 {
        (-0.5 * self.rate * t).exp()
    }

    fn noise(&self, t: f64) -> f64 {
        (-(-self.rate * t).exp_m1()).max(0.0).sqrt()
    }

    fn alpha_bar(&self, t: f64) -> f64 {
        (-self.rate * t).exp()
    }

    fn signal_derivative(&self, t: f64) -> f64 {
        -0.5 * self.rate * self.signal(t)
    }

    fn noise_derivative(&self, t: f64) -> f64 {
        variance_preserving_noise_derivative(self, t)
    }
}

/// Variance exploding, geometric: `a = 1`,
/// `s(t) = sigma_min * (sigma_max / sigma_min)^t`.
///
/// `a' = 0` and `s' = s ln(sigma_max / sigma_min)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VarianceExploding {
    sigma_min: f64,
    sigma_max: f64,
}

impl VarianceExploding {
    /// Noise from `sigma_min` at `t = 0` to `sigma_max` at `t = 1`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] unless `0 < sigma_min <= sigma_max`,
    /// both finite.
    pub fn new(sigma_min: f64, sigma_max: f64) -> Result<Self> {
        if !(sigma_min.is_finite() && sigma_max.is_finite())
            || sigma_min <= 0.0
            || sigma_max < sigma_min
        {
            return Err(Error::InvalidParameter(format!(
                "variance-exploding schedule needs 0 < sigma_min <= sigma_max, got \
                 {sigma_min} and {sigma_max}"
            )));
        }
        Ok(VarianceExploding {
            sigma_min,
            sigma_max,
        })
    }
}

impl VarianceExploding {
    fn log_ratio(&self) -> f64 {
        self.sigma_max.ln() - self.sigma_min.ln()
    }
}

impl Default for VarianceExploding {
    /// `sigma` from 0.01 to 50.
    fn default() -> Self {
        VarianceExploding {
            sigma_min: 0.01,
            sigma_max: 50.0,
        }
    }
}

impl NoiseSchedule for VarianceExploding {
    fn signal(&self, _t: f64) -> f64 {
        1.0
    }

    fn noise(&self, t: f64) -> f64 {
        // exp(ln s_min + t (ln s_max - ln s_min)): no overflow of the ratio.
        (self.sigma_min.ln() + t * self.log_ratio()).exp()
    }

    fn signal_derivative(&self, _t: f64) -> f64 {
        0.0
    }

    fn noise_derivative(&self, t: f64) -> f64 {
        self.noise(t) * self.log_ratio()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_cosine_matches_reference_endpoints() {
        let s = LegacyCosine;
        assert_eq!(s.alpha_bar(0.0), 1.0);
        let end = s.alpha_bar(1.0);
        assert!((end - 1.5e-4).abs() < 1e-5, "{end}");
        assert_eq!(s.noise(0.0), 0.0);
    }

    #[test]
    fn variance_preserving_schedules_preserve_variance() {
        let schedules: Vec<Box<dyn NoiseSchedule>> = vec![
            Box::new(LegacyCosine),
            Box::new(Cosine::default()),
            Box::new(LinearBeta::default()),
            Box::new(Exponential::default()),
        ];
        for schedule in &schedules {
            let mut previous = f64::INFINITY;
            for i in 0..=100 {
                let t = i as f64 / 100.0;
                let (a, s) = (schedule.signal(t), schedule.noise(t));
                assert!((a * a + s * s - 1.0).abs() < 1e-12, "{schedule:?} at {t}");
                assert!(a <= previous, "{schedule:?} not decreasing at {t}");
                previous = a;
            }
        }
    }

    #[test]
    fn linear_beta_hits_whole_steps() {
        let s = LinearBeta::new(10, 0.1, 0.1).unwrap();
        assert!((s.alpha_bar(0.3) - 0.9f64.powi(3)).abs() < 1e-12);
        assert!((s.alpha_bar(1.0) - 0.9f64.powi(10)).abs() < 1e-12);
    }

    #[test]
    fn variance_exploding_is_geometric() {
        let s = VarianceExploding::new(0.1, 10.0).unwrap();
        assert!((s.noise(0.5) - 1.0).abs() < 1e-12);
        assert_eq!(s.signal(0.7), 1.0);
    }

    /// The exact derivatives agree with the finite difference of the trait's
    /// default: to `1e-8` relative inside `(0, 1)`, where the central
    /// difference is accurate to about `1e-10`, and to `1e-5` relative at
    /// `t = 1`, where the one-sided difference is first order in `h`.
    #[test]
    fn exact_derivatives_match_finite_differences() {
        let schedules: Vec<Box<dyn NoiseSchedule>> = vec![
            Box::new(LegacyCosine),
            Box::new(Cosine::default()),
            Box::new(Exponential::default()),
            Box::new(VarianceExploding::default()),
        ];
        let close = |exact: f64, numeric: f64, tolerance: f64| {
            (exact - numeric).abs() <= tolerance * (1.0 + exact.abs())
        };
        for schedule in &schedules {
            for (t, tolerance) in [
                (0.05, 1e-8),
                (0.25, 1e-8),
                (0.5, 1e-8),
                (0.75, 1e-8),
                (0.95, 1e-8),
                (1.0, 1e-5),
            ] {
                let numeric_a = finite_difference(|u| schedule.signal(u), t);
                let numeric_s = finite_difference(|u| schedule.noise(u), t);
                let (exact_a, exact_s) =
                    (schedule.signal_derivative(t), schedule.noise_derivative(t));
                assert!(
                    close(exact_a, numeric_a, tolerance),
                    "{schedule:?} a'({t}): exact {exact_a}, numeric {numeric_a}"
                );
                assert!(
                    close(exact_s, numeric_s, tolerance),
                    "{schedule:?} s'({t}): exact {exact_s}, numeric {numeric_s}"
                );
            }
        }
    }

    #[test]
    fn derivative_endpoint_values() {
        let rate = FRAC_PI_2 / 1.008;
        assert_eq!(LegacyCosine.signal_derivative(0.0), 0.0);
        assert!((LegacyCosine.noise_derivative(0.0) - rate).abs() < 1e-15);
        assert_eq!(Cosine::default().noise_derivative(0.0), f64::INFINITY);
        assert_eq!(Exponential::default().noise_derivative(0.0), f64::INFINITY);
        assert!((Exponential::default().signal_derivative(0.0) + 1.0).abs() < 1e-15);
        let ve = VarianceExploding::new(0.1, 10.0).unwrap();
        assert!((ve.noise_derivative(0.5) - 100f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn default_derivative_is_one_sided_at_the_ends() {
        // A schedule that panics outside [0, 1] shows the default never
        // leaves the interval.
        #[derive(Debug)]
        struct Strict;
        impl NoiseSchedule for Strict {
            fn signal(&self, t: f64) -> f64 {
                assert!((0.0..=1.0).contains(&t), "signal evaluated at {t}");
                1.0 - t * t
            }
            fn noise(&self, t: f64) -> f64 {
                assert!((0.0..=1.0).contains(&t), "noise evaluated at {t}");
                t
            }
        }
        assert!(Strict.signal_derivative(0.0).abs() < 1e-5);
        assert!((Strict.signal_derivative(1.0) + 2.0).abs() < 1e-5);
        assert!((Strict.signal_derivative(0.5) + 1.0).abs() < 1e-9);
        assert!((Strict.noise_derivative(1.0) - 1.0).abs() < 1e-9);
        // Forwarded through references and boxes.
        let boxed: Box<dyn NoiseSchedule> = Box::new(LegacyCosine);
        assert_eq!(
            boxed.noise_derivative(0.3),
            LegacyCosine.noise_derivative(0.3)
        );
        assert_eq!(
            NoiseSchedule::signal_derivative(&&Strict, 0.5),
            Strict.signal_derivative(0.5)
        );
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(Cosine::new(-1.0).is_err());
        assert!(LinearBeta::new(0, 1e-4, 0.02).is_err());
        assert!(Exponential::new(f64::NAN).is_err());
        assert!(VarianceExploding::new(2.0, 1.0).is_err());
    }
}
