//! Samplers against exact solutions, hand computations and bad input.

use std::ops::ControlFlow;
use std::sync::Arc;

use score_machines::Result;
use score_machines::prelude::*;
use score_machines::sampler::RecordedStep;

fn shape() -> Shape {
    Shape::new(1, 4, 5).unwrap()
}

/// A fixed clean image with values in [-1, 1].
fn clean_image(shape: Shape) -> Image<f64> {
    let pixels = (0..shape.len()).map(|i| (i as f64 * 0.37).sin()).collect();
    Image::from_vec(shape, pixels).unwrap()
}

fn max_abs_difference(a: &Image<f64>, b: &Image<f64>) -> f64 {
    a.as_slice()
        .iter()
        .zip(b.as_slice())
        .map(|(u, v)| (u - v).abs())
        .fold(0.0, f64::max)
}

type Closure = Box<dyn Fn(&Image<f64>, f64, Option<usize>) -> Result<Image<f64>> + Send + Sync>;

/// The exact score of the distribution with all its mass on `c`, as a
/// prediction of kind `native`: `x0hat = c`, `epshat = (x - a c) / s`,
/// `score = -(x - a c) / s^2`.
fn one_point(
    schedule: Arc<dyn NoiseSchedule>,
    c: Image<f64>,
    native: Prediction,
) -> ClosureScore<Arc<dyn NoiseSchedule>, Closure> {
    let inner = schedule.clone();
    let shape = c.shape();
    let function: Closure = Box::new(move |x: &Image<f64>, t: f64, _class: Option<usize>| {
        let (a, s) = (inner.signal(t), inner.noise(t));
        let values = x
            .as_slice()
            .iter()
            .zip(c.as_slice())
            .map(|(&x, &c)| match native {
                Prediction::CleanImage => c,
                Prediction::Noise => (x - a * c) / s,
                Prediction::Score => -(x - a * c) / (s * s),
            });
        Image::from_vec(x.shape(), values.collect())
    });
    ClosureScore::new(schedule, native, Some(shape), function)
}

fn legacy() -> Arc<dyn NoiseSchedule> {
    Arc::new(LegacyCosine)
}

fn variance_exploding() -> Arc<dyn NoiseSchedule> {
    Arc::new(VarianceExploding::new(0.01, 5.0).unwrap())
}

/// DDIM is exact for a one-point distribution: it keeps `epshat` constant
/// along the path `x_t = a(t) c + s(t) k`, so a variance-preserving run
/// lands on `c`, and a variance-exploding one on `c + s(0) k`, from any of
/// the three native predictions, for any number of steps.
#[test]
fn ddim_lands_on_the_single_point() {
    let c = clean_image(shape());
    for native in [Prediction::Noise, Prediction::CleanImage, Prediction::Score] {
        for steps in [1, 2, 7, 50] {
            let score = one_point(legacy(), c.clone(), native);
            let noise = initial_noise::<f64>(shape(), 11);
            let mut trajectory = Trajectory::new();
            let sampler = Sampler::new(Method::Ddim, steps).unwrap();
            let sample = sampler
                .sample(&score, noise.clone(), None, &mut trajectory)
                .unwrap();
            assert!(
                max_abs_difference(&sample, &c) < 1e-12,
                "{native:?}, {steps} steps: {}",
                max_abs_difference(&sample, &c)
            );
            // epshat stays the noise of the starting point all the way.
            let k = &trajectory.steps()[0].eps_hat;
            for step in trajectory.steps() {
                assert!(max_abs_difference(&step.eps_hat, k) < 1e-9, "{native:?}");
            }
        }
    }

    let schedule = variance_exploding();
    let score = one_point(schedule.clone(), c.clone(), Prediction::Noise);
    let noise = initial_noise::<f64>(shape(), 11);
    let sample = Sampler::new(Method::Ddim, 9)
        .unwrap()
        .sample(&score, noise.clone(), None, &mut ())
        .unwrap();
    let (a1, s1, s0) = (
        schedule.signal(1.0),
        schedule.noise(1.0),
        schedule.noise(0.0),
    );
    for ((&out, &x), &c) in sample
        .as_slice()
        .iter()
        .zip(noise.as_slice())
        .zip(c.as_slice())
    {
        let expected = c + s0 * (x - a1 * c) / s1;
        assert!((out - expected).abs() < 1e-12);
    }
}

/// A machine on a single training image returns that image exactly, in
/// f64 and f32, with and without a class, through DDIM and DDPM.
#[test]
fn single_image_machine_returns_its_image() {
    let c = clean_image(shape());
    let training = TrainingSet::new(shape(), c.as_slice().to_vec(), Some(vec![3])).unwrap();
    let machine =
        Machine::local(training.clone(), LegacyCosine, SquarePatch::new(3).unwrap()).unwrap();
    for method in [Method::Ddim, Method::Ddpm { seed: 4 }] {
        for class in [None, Some(3)] {
            let sampler = Sampler::new(method, 10).unwrap();
            let sample = sampler
                .sample(&machine, initial_noise(shape(), 1), class, &mut ())
                .unwrap();
            assert_eq!(sample, c, "{method:?}");
        }
    }

    let training32 = training.cast::<f32>().unwrap();
    let machine32 = Machine::ideal(training32.clone(), LegacyCosine).unwrap();
    let sample = Sampler::new(Method::Ddim, 5)
        .unwrap()
        .sample(&machine32, initial_noise::<f32>(shape(), 2), None, &mut ())
        .unwrap();
    assert_eq!(sample.as_slice(), training32.image(0));
}

/// Two DDIM steps against the reference formula written out by hand:
/// `x <- sqrt(abp/ab) x + (sqrt(1 - abp) - sqrt(abp/ab) sqrt(1 - ab)) epshat`
/// at `t = 1 -> 1/2` and `t = 1/2 -> 0`, with a noise prediction that
/// depends on `x` and `t`.
#[test]
fn two_ddim_steps_match_the_hand_computation() {
    let eps = |x: f64, t: f64| 0.3 * x + 0.1 * (5.0 * t).sin() - 0.2;
    let score = ClosureScore::new(
        LegacyCosine,
        Prediction::Noise,
        None,
        move |x: &Image<f64>, t: f64, _class: Option<usize>| {
            let values = x.as_slice().iter().map(|&v| eps(v, t)).collect();
            Image::from_vec(x.shape(), values)
        },
    );
    let noise = initial_noise::<f64>(shape(), 5);
    let sample = Sampler::new(Method::Ddim, 2)
        .unwrap()
        .sample(&score, noise.clone(), None, &mut ())
        .unwrap();

    let abar = |t: f64| LegacyCosine.alpha_bar(t);
    let step = |x: f64, t: f64, t_next: f64| {
        let (ab, abp) = (abar(t), abar(t_next));
        (abp / ab).sqrt() * x
            + ((1.0 - abp).sqrt() - (abp / ab).sqrt() * (1.0 - ab).sqrt()) * eps(x, t)
    };
    for (&out, &x) in sample.as_slice().iter().zip(noise.as_slice()) {
        let expected = step(step(x, 1.0, 0.5), 0.5, 0.0);
        assert!(
            (out - expected).abs() <= 1e-12 * (1.0 + expected.abs()),
            "{out} against {expected}"
        );
    }
}

#[test]
fn ddpm_is_reproducible_from_its_seed() {
    let training = TrainingSet::new(
        shape(),
        (0..3 * 20)
            .map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0)
            .collect(),
        None,
    )
    .unwrap();
    let machine = Machine::ideal(training, LegacyCosine).unwrap();
    let run = |seed: u64| {
        Sampler::new(Method::Ddpm { seed }, 12)
            .unwrap()
            .sample(&machine, initial_noise(shape(), 0), None, &mut ())
            .unwrap()
    };
    assert_eq!(run(1), run(1));
    // Different noise: the final images, or at least the intermediate
    // states, differ.
    let states = |seed: u64| {
        let mut trajectory = Trajectory::new();
        Sampler::new(Method::Ddpm { seed }, 12)
            .unwrap()
            .sample(&machine, initial_noise(shape(), 0), None, &mut trajectory)
            .unwrap();
        trajectory.into_steps()
    };
    let (a, b) = (states(1), states(2));
    assert_eq!(a[0].x, b[0].x);
    assert!(max_abs_difference(&a[1].x, &b[1].x) > 1e-3);
}

/// For a one-point distribution each DDPM step samples the exact posterior,
/// so from a draw of the forward marginal at `t = 1` the state at `t` is
/// distributed as `a(t) c + s(t) N(0, 1)` pixel by pixel. Checked on 16,384
/// pixels at `t = 1/2`: the mean within 5 standard errors and the variance
/// within 8 %, for a variance-preserving and a variance-exploding schedule.
#[test]
fn ddpm_follows_the_forward_marginals() {
    let big = Shape::new(1, 128, 128).unwrap();
    let level = 0.5;
    for schedule in [legacy(), variance_exploding()] {
        let c = Image::from_vec(big, vec![level; big.len()]).unwrap();
        let score = one_point(schedule.clone(), c, Prediction::Noise);
        let (a1, s1) = (schedule.signal(1.0), schedule.noise(1.0));
        let mut x = initial_noise::<f64>(big, 21);
        for v in x.as_mut_slice() {
            *v = a1 * level + s1 * *v;
        }
        let mut stop_at_half = |record: &StepRecord<'_, f64>| {
            if record.t == 0.5 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut observer = StopWith(&mut stop_at_half);
        let end = Sampler::new(Method::Ddpm { seed: 8 }, 10)
            .unwrap()
            .sample_into(&score, &mut x, None, &mut observer, &mut Workspace::new())
            .unwrap();
        assert_eq!(end, Completion::Stopped { step: 5, t: 0.5 });

        let n = big.len() as f64;
        let mean = x.as_slice().iter().sum::<f64>() / n;
        let variance = x.as_slice().iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        let (a, s) = (schedule.signal(0.5), schedule.noise(0.5));
        assert!(
            (mean - a * level).abs() < 5.0 * s / n.sqrt(),
            "{schedule:?}: mean {mean}, expected {}",
            a * level
        );
        assert!(
            (variance / (s * s) - 1.0).abs() < 0.08,
            "{schedule:?}: variance {variance}, expected {}",
            s * s
        );
    }
}

/// An observer from a closure that may stop the run.
struct StopWith<'a, F>(&'a mut F);

impl<F: FnMut(&StepRecord<'_, f64>) -> ControlFlow<()>> Observer<f64> for StopWith<'_, F> {
    fn observe(&mut self, record: &StepRecord<'_, f64>) -> ControlFlow<()> {
        (self.0)(record)
    }
}

fn ode_errors(schedule: Arc<dyn NoiseSchedule>, steps: usize) -> (f64, f64) {
    let c = clean_image(shape());
    let score = one_point(schedule, c, Prediction::Noise);
    let run = |method| {
        Sampler::new(method, steps)
            .unwrap()
            .sample(&score, initial_noise(shape(), 5), None, &mut ())
            .unwrap()
    };
    let ddim = run(Method::Ddim);
    (
        max_abs_difference(&run(Method::Euler), &ddim),
        max_abs_difference(&run(Method::Heun), &ddim),
    )
}

/// Euler and Heun integrate the probability-flow ODE, whose exact solution
/// for a one-point distribution is DDIM's. With 200 steps:
///
/// - legacy cosine: both within 5e-5 of DDIM (measured 3.0e-5 each); the
///   last step, an Euler step for both since `s(0) = 0`, dominates and
///   makes both second order (error ratio about 4 from 100 to 200 steps);
/// - variance exploding, `sigma` from 0.01 to 5: Euler within 1e-3
///   (measured 5.7e-4, first order), Heun within 1e-5 (measured 3.2e-6,
///   second order) and over 50 times closer.
#[test]
fn euler_and_heun_converge_to_ddim() {
    let (euler, heun) = ode_errors(legacy(), 200);
    assert!(euler < 5e-5 && heun < 5e-5, "{euler} {heun}");
    assert!(heun <= euler, "{euler} {heun}");
    let (euler_coarse, heun_coarse) = ode_errors(legacy(), 100);
    for ratio in [euler_coarse / euler, heun_coarse / heun] {
        assert!((3.5..4.5).contains(&ratio), "{ratio}");
    }

    let (euler, heun) = ode_errors(variance_exploding(), 200);
    assert!(euler < 1e-3 && heun < 1e-5, "{euler} {heun}");
    assert!(heun * 50.0 < euler, "{euler} {heun}");
    let (euler_coarse, heun_coarse) = ode_errors(variance_exploding(), 100);
    assert!((1.7..2.3).contains(&(euler_coarse / euler)));
    assert!((3.5..4.5).contains(&(heun_coarse / heun)));
}

/// The observer sees `steps` records in order, with times
/// `(steps - step) / steps`, and each record's `x` is the state before that
/// step's update: the first is the initial image, each next one is DDIM's
/// `a' x0hat + s' epshat` of the previous record, and the sample is that
/// of the last record.
#[test]
fn observer_sees_every_state_before_its_update() {
    let training = TrainingSet::new(
        shape(),
        (0..4 * 20)
            .map(|i| ((i * 13) % 7) as f64 / 3.0 - 1.0)
            .collect(),
        None,
    )
    .unwrap();
    let machine = Machine::ideal(training, LegacyCosine).unwrap();
    let steps = 8;
    let initial = initial_noise::<f64>(shape(), 3);
    let mut trajectory = Trajectory::new();
    let sample = Sampler::new(Method::Ddim, steps)
        .unwrap()
        .sample(&machine, initial.clone(), None, &mut trajectory)
        .unwrap();

    let records = trajectory.steps();
    assert_eq!(records.len(), steps);
    assert_eq!(records[0].x, initial);
    let ddim = |record: &RecordedStep<f64>| {
        let (a, s) = (
            LegacyCosine.signal(record.t_next),
            LegacyCosine.noise(record.t_next),
        );
        let values = record
            .x0_hat
            .as_slice()
            .iter()
            .zip(record.eps_hat.as_slice())
            .map(|(x0, eps)| a * x0 + s * eps)
            .collect();
        Image::from_vec(shape(), values).unwrap()
    };
    for (i, pair) in records.windows(2).enumerate() {
        assert_eq!(pair[0].t, (steps - i) as f64 / steps as f64);
        assert_eq!(pair[0].t_next, pair[1].t);
        assert!(pair[1].t < pair[0].t);
        assert!(max_abs_difference(&ddim(&pair[0]), &pair[1].x) < 1e-14);
    }
    assert_eq!(records[steps - 1].t_next, 0.0);
    assert!(max_abs_difference(&ddim(&records[steps - 1]), &sample) < 1e-14);

    // The predictions in a record agree with the machine's own.
    let record = &records[3];
    let x0 = machine.x0_hat(&record.x, record.t, None).unwrap();
    let eps = machine.eps_hat(&record.x, record.t, None).unwrap();
    assert_eq!(record.x0_hat, x0);
    assert!(max_abs_difference(&record.eps_hat, &eps) < 1e-12);
}

/// Closures observe every step of every method, Heun included; the step
/// and total are right; stopping early leaves the state the observer saw.
#[test]
fn closure_observers_and_early_stop() {
    let c = clean_image(shape());
    let score = one_point(legacy(), c, Prediction::CleanImage);
    for method in [
        Method::Ddim,
        Method::Ddpm { seed: 0 },
        Method::Euler,
        Method::Heun,
    ] {
        let mut seen = Vec::new();
        let mut observer = |record: &StepRecord<'_, f64>| seen.push((record.step, record.steps));
        Sampler::new(method, 6)
            .unwrap()
            .sample(&score, initial_noise(shape(), 0), None, &mut observer)
            .unwrap();
        assert_eq!(
            seen,
            (0..6).map(|i| (i, 6)).collect::<Vec<_>>(),
            "{method:?}"
        );

        let mut kept = None;
        let mut stop_at_two = |record: &StepRecord<'_, f64>| {
            if record.step == 2 {
                kept = Some(record.x.clone());
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        };
        let mut x = initial_noise(shape(), 0);
        let end = Sampler::new(method, 6)
            .unwrap()
            .sample_into(
                &score,
                &mut x,
                None,
                &mut StopWith(&mut stop_at_two),
                &mut Workspace::new(),
            )
            .unwrap();
        assert_eq!(
            end,
            Completion::Stopped {
                step: 2,
                t: 4.0 / 6.0
            }
        );
        assert_eq!(Some(x), kept);
    }
}

/// Every method works through a trait object and a schedule in a box.
#[test]
fn trait_objects_sample() {
    let c = clean_image(shape());
    let score = one_point(legacy(), c.clone(), Prediction::Noise);
    let dynamic: &dyn ScoreFunction<f64> = &score;
    let observer: &mut dyn Observer<f64> = &mut NoObserver;
    for method in [
        Method::Ddim,
        Method::Ddpm { seed: 3 },
        Method::Euler,
        Method::Heun,
    ] {
        let sample = Sampler::new(method, 100)
            .unwrap()
            .sample(dynamic, initial_noise(shape(), 0), None, observer)
            .unwrap();
        assert!(max_abs_difference(&sample, &c) < 2e-3, "{method:?}");
    }
}

#[test]
fn bad_input_is_an_error() {
    assert!(matches!(
        Sampler::new(Method::Heun, 0),
        Err(Error::InvalidParameter(_))
    ));

    let training = TrainingSet::new(shape(), clean_image(shape()).into_vec(), None).unwrap();
    let machine = Machine::ideal(training, LegacyCosine).unwrap();
    for method in [
        Method::Ddim,
        Method::Ddpm { seed: 1 },
        Method::Euler,
        Method::Heun,
    ] {
        let sampler = Sampler::new(method, 4).unwrap();
        let wrong = initial_noise::<f64>(Shape::new(1, 5, 4).unwrap(), 0);
        let err = sampler.sample(&machine, wrong, None, &mut ()).unwrap_err();
        assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");

        let mut nan = initial_noise::<f64>(shape(), 0);
        nan.set(0, 1, 2, f64::NAN);
        let err = sampler.sample(&machine, nan, None, &mut ()).unwrap_err();
        assert!(matches!(err, Error::NonFinite(_)), "{err}");

        let mut infinite = initial_noise::<f64>(shape(), 0);
        infinite.set(0, 0, 0, f64::NEG_INFINITY);
        assert!(matches!(
            sampler.sample(&machine, infinite, None, &mut ()),
            Err(Error::NonFinite(_))
        ));

        let err = sampler
            .sample(&machine, initial_noise(shape(), 0), Some(2), &mut ())
            .unwrap_err();
        assert!(matches!(err, Error::UnknownClass(2)), "{err}");
    }

    // A score function whose output turns non-finite.
    let broken = ClosureScore::new(
        LegacyCosine,
        Prediction::Noise,
        None,
        |x: &Image<f64>, t: f64, _class: Option<usize>| {
            let value = if t < 0.5 { f64::NAN } else { 0.0 };
            Image::from_vec(x.shape(), vec![value; x.shape().len()])
        },
    );
    let err = Sampler::new(Method::Heun, 4)
        .unwrap()
        .sample(&broken, initial_noise::<f64>(shape(), 0), None, &mut ())
        .unwrap_err();
    assert!(matches!(err, Error::NonFinite(_)), "{err}");

    // A schedule with no noise at t = 1 cannot be sampled from there.
    #[derive(Debug)]
    struct Silent;
    impl NoiseSchedule for Silent {
        fn signal(&self, _t: f64) -> f64 {
            1.0
        }
        fn noise(&self, _t: f64) -> f64 {
            0.0
        }
    }
    let silent = ClosureScore::new(
        Silent,
        Prediction::CleanImage,
        None,
        |x: &Image<f64>, _t: f64, _class: Option<usize>| Ok(x.clone()),
    );
    let err = Sampler::new(Method::Ddim, 3)
        .unwrap()
        .sample(&silent, initial_noise::<f64>(shape(), 0), None, &mut ())
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidTime { t, .. } if t == 1.0),
        "{err}"
    );
}

/// The initial noise is pinned: these are the first draws for seed 0.
/// A change here changes every seeded result of the crate.
#[test]
fn initial_noise_is_pinned_and_standard() {
    let first = initial_noise::<f64>(Shape::new(1, 1, 6).unwrap(), 0);
    assert_eq!(
        first.as_slice(),
        &[
            0.6999607946268154,
            -0.14406163542784764,
            0.30288628024558556,
            -1.374513899829971,
            1.200341661914451,
            0.1107813558351432,
        ]
    );

    let big = Shape::new(2, 100, 100).unwrap();
    let noise = initial_noise::<f64>(big, 1);
    let n = big.len() as f64;
    let mean = noise.as_slice().iter().sum::<f64>() / n;
    let variance = noise
        .as_slice()
        .iter()
        .map(|v| (v - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(mean.abs() < 5.0 / n.sqrt(), "{mean}");
    assert!((variance - 1.0).abs() < 0.05, "{variance}");
    assert_eq!(initial_noise::<f32>(big, 1), noise.cast::<f32>());
    assert_ne!(initial_noise::<f64>(big, 2), noise);
}
