//! Inputs at the edges of what the machines accept: extreme magnitudes,
//! huge windows, times where conversions overflow. Each must give a correct
//! result or a clear error, never a panic or a non-finite value.

use score_machines::prelude::*;

fn shape() -> Shape {
    Shape::new(1, 6, 6).unwrap()
}

#[test]
fn huge_f32_pixels_fall_back_to_exact_arithmetic() {
    let training = TrainingSet::new(shape(), vec![3e37_f32; 20 * 36], None).unwrap();
    let els =
        Machine::equivariant_local(training.clone(), LegacyCosine, SquarePatch::new(3).unwrap())
            .unwrap();
    let out = els.x0_hat(&Image::zeros(shape()), 0.5, None).unwrap();
    assert!(
        out.as_slice().iter().all(|&v| v == 3e37),
        "{:?}",
        &out.as_slice()[..3]
    );

    let ls = Machine::local(training, LegacyCosine, SquarePatch::new(3).unwrap()).unwrap();
    let out = ls.x0_hat(&Image::zeros(shape()), 0.5, None).unwrap();
    assert!(out.as_slice().iter().all(|&v| v == 3e37));
}

#[test]
fn overflowing_distances_are_an_error() {
    let training = TrainingSet::new(shape(), vec![1e160_f64; 2 * 36], None).unwrap();
    let machine = Machine::ideal(training, LegacyCosine).unwrap();
    let err = machine
        .x0_hat(&Image::zeros(shape()), 0.5, None)
        .unwrap_err();
    assert!(matches!(err, Error::InvalidParameter(_)), "{err}");
    assert!(err.to_string().contains("overflow"), "{err}");
}

#[test]
fn overflowing_conversions_are_an_error() {
    let pixels: Vec<f32> = (0..2 * 36).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect();
    let training = TrainingSet::new(shape(), pixels, None).unwrap();
    let machine = Machine::ideal(training, Exponential::default()).unwrap();
    let x = Image::from_vec(shape(), vec![0.5_f32; 36]).unwrap();
    let err = machine.score(&x, 1e-40, None).unwrap_err();
    assert!(matches!(err, Error::InvalidTime { .. }), "{err}");
}

#[test]
fn huge_zero_padded_windows_equal_the_whole_image() {
    let pixels: Vec<f64> = (0..3 * 36)
        .map(|i| ((i * 7) % 11) as f64 / 5.0 - 1.0)
        .collect();
    let training = TrainingSet::new(shape(), pixels, None).unwrap();
    let x = Image::from_vec(shape(), (0..36).map(|i| (i as f64 / 18.0) - 1.0).collect()).unwrap();
    let ideal = Machine::ideal(training.clone(), LegacyCosine)
        .unwrap()
        .x0_hat(&x, 0.4, None)
        .unwrap();
    for side in [101, usize::MAX] {
        let local = Machine::local(
            training.clone(),
            LegacyCosine,
            SquarePatch::new(side).unwrap(),
        )
        .unwrap()
        .x0_hat(&x, 0.4, None)
        .unwrap();
        for (a, b) in local.as_slice().iter().zip(ideal.as_slice()) {
            assert!((a - b).abs() < 1e-12);
        }
        let zero_padded = Machine::equivariant_local_zero_padded(
            training.clone(),
            LegacyCosine,
            SquarePatch::new(side).unwrap(),
        )
        .unwrap()
        .x0_hat(&x, 0.4, None);
        assert!(zero_padded.is_ok());
    }
    let offsets = Patch::offsets(usize::MAX, 0, 0, usize::MAX);
    let lopsided = Machine::local(training, LegacyCosine, offsets)
        .unwrap()
        .x0_hat(&x, 0.4, None);
    assert!(lopsided.is_ok());
}

#[test]
fn huge_periodic_windows_are_refused() {
    let training = TrainingSet::new(shape(), vec![0.5_f32; 36], None).unwrap();
    for side in [1001, 1_000_001, usize::MAX] {
        let machine = Machine::equivariant_local_periodic(
            training.clone(),
            LegacyCosine,
            SquarePatch::new(side).unwrap(),
        )
        .unwrap();
        let err = machine
            .x0_hat(&Image::zeros(shape()), 0.5, None)
            .unwrap_err();
        assert!(matches!(err, Error::InvalidWindow(_)), "{err}");
    }
    // A periodic window a few times the image still works.
    let machine =
        Machine::equivariant_local_periodic(training, LegacyCosine, SquarePatch::new(13).unwrap())
            .unwrap();
    assert_eq!(
        machine
            .x0_hat(&Image::zeros(shape()), 0.5, None)
            .unwrap()
            .as_slice(),
        &[0.5; 36]
    );
}

#[test]
fn schedules_with_extreme_parameters_stay_finite() {
    let wide = VarianceExploding::new(1e-200, 1e200).unwrap();
    assert!((wide.noise(0.5) - 1.0).abs() < 1e-12);
    let tiny = VarianceExploding::new(5e-324, 1.0).unwrap();
    assert!((tiny.noise(1.0) - 1.0).abs() < 1e-12);
    assert!(LinearBeta::new(1 << 40, 1e-4, 0.02).is_err());
    // s(t) = sin(theta) keeps its relative precision at small t.
    let t = 1e-8;
    let want = (t / 1.008 * std::f64::consts::FRAC_PI_2).sin();
    assert!((LegacyCosine.noise(t) - want).abs() <= 1e-15 * want);
}

/// A schedule with fixed scales, as a user might write one.
#[derive(Debug)]
struct FixedScales(f64, f64);

impl NoiseSchedule for FixedScales {
    fn signal(&self, _t: f64) -> f64 {
        self.0
    }
    fn noise(&self, _t: f64) -> f64 {
        self.1
    }
}

/// Times outside `[0, 1]`, non-finite pixels, non-finite or negative
/// scales and pixels that overflow `f32` are errors, not noised images.
#[test]
fn noised_refuses_bad_input() {
    let clean = Image::from_vec(shape(), (0..36).map(|i| i as f64 / 18.0 - 1.0).collect()).unwrap();
    for t in [-0.1, 1.5, f64::NAN, f64::INFINITY] {
        let err = noised(&clean, &LegacyCosine, t, 0).unwrap_err();
        assert!(matches!(err, Error::InvalidTime { .. }), "t = {t}: {err}");
    }
    let mut bad = clean.clone();
    bad.as_mut_slice()[3] = f64::NAN;
    let err = noised(&bad, &LegacyCosine, 0.5, 0).unwrap_err();
    assert!(matches!(err, Error::NonFinite("clean image")), "{err}");
    for scales in [
        FixedScales(f64::NAN, 0.5),
        FixedScales(1.0, f64::INFINITY),
        FixedScales(-1.0, 0.5),
        FixedScales(1.0, -0.5),
    ] {
        let err = noised(&clean, &scales, 0.5, 0).unwrap_err();
        assert!(
            matches!(err, Error::InvalidTime { .. }),
            "{scales:?}: {err}"
        );
    }
    // Zero scales are the formula's own limits: all noise, or nothing.
    assert_eq!(
        noised(&clean, &FixedScales(0.0, 0.0), 0.5, 0).unwrap(),
        Image::zeros(shape())
    );
    let large = Image::from_vec(shape(), vec![3e38f32; 36]).unwrap();
    let err = noised(&large, &FixedScales(2.0, 0.0), 0.5, 0).unwrap_err();
    assert!(matches!(err, Error::NonFinite("noised image")), "{err}");
    assert_eq!(
        noised(&large, &FixedScales(1.0, 0.0), 0.5, 0).unwrap(),
        large
    );
}

#[test]
fn non_finite_scales_in_conversions_are_an_error() {
    let x = Image::from_vec(shape(), vec![0.5_f64; 36]).unwrap();
    for (a, s) in [(f64::INFINITY, 0.5), (0.5, f64::INFINITY), (f64::NAN, 0.5)] {
        let net = ClosureScore::new(
            FixedScales(a, s),
            Prediction::Noise,
            None,
            |x: &Image<f64>, _: f64, _| Ok(x.clone()),
        );
        for result in [net.x0_hat(&x, 0.5, None), net.score(&x, 0.5, None)] {
            let err = result.unwrap_err();
            assert!(
                matches!(err, Error::InvalidTime { reason, .. } if reason.contains("non-finite")),
                "a = {a}, s = {s}: {err}"
            );
        }
    }
}

/// A score function of its own that writes a NaN, as a faulty network
/// wrapper might.
#[derive(Debug)]
struct WritesNan;

impl ScoreFunction<f64> for WritesNan {
    fn schedule(&self) -> &dyn NoiseSchedule {
        &LegacyCosine
    }
    fn shape(&self) -> Option<Shape> {
        None
    }
    fn native(&self) -> Prediction {
        Prediction::Noise
    }
    fn predict_native_into(
        &self,
        x: &Image<f64>,
        _t: f64,
        _class: Option<usize>,
        out: &mut Image<f64>,
    ) -> score_machines::Result<()> {
        out.as_mut_slice().copy_from_slice(x.as_slice());
        out.as_mut_slice()[7] = f64::NAN;
        Ok(())
    }
}

#[test]
fn non_finite_score_function_outputs_are_an_error() {
    let x = Image::from_vec(shape(), vec![0.5_f64; 36]).unwrap();
    // Asked for its own prediction or a converted one, the NaN is named.
    for result in [
        WritesNan.eps_hat(&x, 0.5, None),
        WritesNan.x0_hat(&x, 0.5, None),
    ] {
        let err = result.unwrap_err();
        assert!(
            matches!(err, Error::NonFinite("score function output")),
            "{err}"
        );
    }
}

#[test]
fn negative_noise_scales_are_named_as_such() {
    let pixels: Vec<f32> = (0..2 * 36).map(|i| (i % 7) as f32 / 3.0 - 1.0).collect();
    let training = TrainingSet::new(shape(), pixels, None).unwrap();
    let machine = Machine::equivariant_local_zero_padded(
        training,
        FixedScales(1.0, -0.5),
        SquarePatch::new(3).unwrap(),
    )
    .unwrap();
    let err = machine
        .x0_hat(&Image::zeros(shape()), 0.4, None)
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidTime { reason, .. } if reason.contains("negative")),
        "{err}"
    );
}

#[test]
fn closure_outputs_of_the_wrong_shape_are_an_error() {
    let net = ClosureScore::new(
        LegacyCosine,
        Prediction::Noise,
        None,
        |x: &Image<f64>, _: f64, _| Ok(Image::zeros(x.shape())),
    );
    let x = Image::zeros(shape());
    let mut out = Image::zeros(Shape::new(1, 6, 7).unwrap());
    let err = net
        .predict_native_into(&x, 0.5, None, &mut out)
        .unwrap_err();
    assert!(matches!(err, Error::ShapeMismatch { .. }), "{err}");
}

#[test]
fn extreme_shifts_wrap_correctly() {
    let image = Image::from_vec(Shape::new(1, 1, 3).unwrap(), vec![1.0_f32, 2.0, 3.0]).unwrap();
    // isize::MIN = -(2^63), and 2^63 mod 3 = 2, so this is a shift by -2 = +1.
    assert_eq!(image.shifted(0, isize::MIN).as_slice(), &[3.0, 1.0, 2.0]);
    assert_eq!(
        image.shifted(0, isize::MAX).as_slice(),
        image.shifted(0, 1).as_slice()
    );
}

#[test]
fn casting_out_of_range_is_an_error() {
    let set = TrainingSet::new(shape(), vec![1e39_f64; 36], None).unwrap();
    assert!(matches!(set.cast::<f32>(), Err(Error::NonFinite(_))));
}

#[test]
fn f32_outputs_stay_within_the_training_range() {
    let training = TrainingSet::new(shape(), vec![-0.7_f32; 3 * 36], None).unwrap();
    let machine = Machine::equivariant_local_zero_padded(
        training,
        LegacyCosine,
        SquarePatch::new(3).unwrap(),
    )
    .unwrap();
    let x = Image::from_vec(shape(), (0..36).map(|i| i as f32 / 36.0).collect()).unwrap();
    let out = machine.x0_hat(&x, 0.5, None).unwrap();
    assert!(out.as_slice().iter().all(|&v| v == -0.7_f32));
}

/// A partial posterior made with a NaN or negative inverse temperature
/// merges with none, not even with itself.
#[test]
fn partial_posteriors_with_nan_beta_do_not_merge() {
    let shape = Shape::new(1, 2, 2).unwrap();
    for beta in [f64::NAN, -1.0] {
        let mut part = PartialPosterior::new(shape, beta);
        let other = PartialPosterior::new(shape, beta);
        assert!(matches!(
            part.merge(&other),
            Err(Error::InvalidParameter(_))
        ));
        let mut fine = PartialPosterior::new(shape, 1.0);
        assert!(fine.merge(&other).is_err());
    }
    let mut zero = PartialPosterior::new(shape, 0.0);
    assert!(zero.merge(&PartialPosterior::new(shape, 0.0)).is_ok());
}
