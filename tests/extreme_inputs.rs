//! Public functions at the limits of their inputs: windows too large to
//! count, shifts near `isize::MIN`, absurd trial counts, images whose
//! values are finite but near the end of the `f64` range, and `float64`
//! files read as `f32`. Each must give a correct result or a clear error.

use score_machines::calibrate::{Calibration, Criterion};
use score_machines::compare::{Comparison, cosine_similarity, mse, pearson};
use score_machines::locality::Patch;
use score_machines::prelude::*;
use score_machines::reference::RecordedTrajectories;
use score_machines::testing::{
    MAX_TRIALS, Query, ReceptiveFieldProbe, ShiftRule, check_translation_equivariance,
    effective_receptive_field_with, equivariance_error,
};

fn shape() -> Shape {
    Shape::new(1, 5, 6).unwrap()
}

fn varied(shape: Shape, seed: usize) -> Vec<f64> {
    (0..shape.len())
        .map(|i| (((i + seed) * 7919) % 23) as f64 / 11.0 - 1.0)
        .collect()
}

fn image(values: &[f64]) -> Image<f64> {
    Image::from_vec(Shape::new(1, 1, values.len()).unwrap(), values.to_vec()).unwrap()
}

#[test]
fn weights_for_a_patch_too_large_to_count_are_refused() {
    let huge = Patch::square(usize::MAX).unwrap();
    assert!(matches!(
        huge.with_weights(vec![0.5]),
        Err(Error::InvalidWindow(_))
    ));
    // Extents whose sum overflows: the true height is 2^64 + 1 rows.
    let wider = Patch::offsets(usize::MAX, usize::MAX, 0, 0);
    assert!(matches!(
        wider.with_weights(vec![1.0]),
        Err(Error::InvalidWindow(_))
    ));
    assert!(Patch::square(3).unwrap().with_weights(vec![1.0; 9]).is_ok());
}

#[test]
fn shifts_near_isize_min_are_taken_modulo_the_image() {
    let shape = shape();
    let training =
        TrainingSet::new(shape, (0..4).flat_map(|k| varied(shape, k)).collect(), None).unwrap();
    let es = Machine::equivariant(training, LegacyCosine).unwrap();
    let x = Image::from_vec(shape, varied(shape, 9)).unwrap();
    let extreme = [(isize::MIN, 0), (0, isize::MIN), (isize::MAX, isize::MIN)];
    let error = equivariance_error(&es, &x, 0.5, &extreme).unwrap();
    assert!(error < 1e-12, "ES is exactly equivariant, got {error}");
    // isize::MIN is -2^63: -2 mod 5 rows, -2 mod 6 columns.
    let reduced = equivariance_error(&es, &x, 0.5, &[(3, 0), (0, 4), (1, 4)]).unwrap();
    assert!((error - reduced).abs() < 1e-15);
    for shift in extreme {
        let verdict = check_translation_equivariance(
            &es,
            Query::new(&x, 0.5),
            shift,
            &ShiftRule::Periodic,
            1e-12,
        )
        .unwrap();
        verdict.assert_passed();
    }
}

#[test]
fn absurd_trial_counts_are_refused() {
    let shape = shape();
    let training = TrainingSet::new(shape, varied(shape, 0), None).unwrap();
    let is = Machine::ideal(training, LegacyCosine).unwrap();
    let x = Image::from_vec(shape, varied(shape, 3)).unwrap();
    for trials in [MAX_TRIALS + 1, usize::MAX] {
        let probe = ReceptiveFieldProbe {
            trials,
            ..ReceptiveFieldProbe::default()
        };
        let result = effective_receptive_field_with(&is, &x, 0.5, 1e-9, &probe);
        assert!(
            matches!(&result, Err(Error::InvalidParameter(m)) if m.contains("trials")),
            "{result:?}"
        );
    }
}

#[test]
fn correlations_of_huge_finite_images_are_finite_and_scale_free() {
    let (u, v) = ([1.0, -1.0, 3.0, 0.0], [2.0, -1.0, 1.0, 0.0]);
    let scaled = |values: [f64; 4], by: f64| image(&values.map(|x| x * by));
    let r = pearson(&image(&u), &image(&v)).unwrap();
    let cos = cosine_similarity(&image(&u), &image(&v)).unwrap();
    for by in [1e200, 1e300, 1e-300] {
        let r_big = pearson(&scaled(u, by), &scaled(v, by)).unwrap();
        let cos_big = cosine_similarity(&scaled(u, by), &scaled(v, by)).unwrap();
        assert!((r_big - r).abs() < 1e-14, "{by:e}: {r_big} vs {r}");
        assert!((cos_big - cos).abs() < 1e-14, "{by:e}: {cos_big} vs {cos}");
    }
    // MSE: 1e300-sized differences overflow f64 and are an error ...
    let result = mse(&scaled(u, 1e300), &scaled(v, 1e300));
    assert!(
        matches!(&result, Err(Error::InvalidParameter(m)) if m.contains("f64 range")),
        "{result:?}"
    );

    // Scaled by 1e154 the sums of squares overflow but the MSE does not.
    let compared = |by: f64| {
        Comparison::from_images(
            &[3],
            &[scaled(u, by)],
            &[scaled(v, by)],
            &[scaled([1.0, -1.0, 2.0, 0.0], by)],
        )
    };
    let comparison = compared(1e154).unwrap();
    assert!((comparison.median_r() - r).abs() < 1e-14);
    assert!((comparison.median_mse() / 1.25e308 - 1.0).abs() < 1e-12);
    let result = compared(1e200);
    assert!(
        matches!(&result, Err(Error::InvalidParameter(m)) if m.contains("seed 3")),
        "{result:?}"
    );
}

#[test]
fn mse_whose_squares_overflow_but_mean_does_not_is_exact() {
    // Differences of 1.2e154: the sum of squares 2.88e308 overflows, the
    // mean 7.2e307 does not.
    let u = image(&[6e153, 6e153, 0.0, 0.0]);
    let v = image(&[-6e153, -6e153, 0.0, 0.0]);
    let value = mse(&u, &v).unwrap();
    assert!((value / 7.2e307 - 1.0).abs() < 1e-12, "{value:e}");
}

#[test]
fn a_constant_image_is_named_in_a_comparison() {
    let varied = image(&[0.0, 1.0, 2.0, 3.0]);
    let constant = image(&[0.5; 4]);
    let error = pearson(&varied, &constant).unwrap_err().to_string();
    assert!(error.contains("second image is constant"), "{error}");

    let message = |reference: &Image<f64>, machine: &Image<f64>, baseline: &Image<f64>| {
        Comparison::from_images(
            &[7, 42],
            &[varied.clone(), reference.clone()],
            &[varied.clone(), machine.clone()],
            &[varied.clone(), baseline.clone()],
        )
        .unwrap_err()
        .to_string()
    };
    let shifted = image(&[3.0, 1.0, 2.0, 0.0]);
    let m = message(&constant, &shifted, &shifted);
    assert!(
        m.contains("seed 42") && m.contains("reference's final image is constant"),
        "{m}"
    );
    let m = message(&shifted, &constant, &shifted);
    assert!(
        m.contains("seed 42") && m.contains("machine's final image is constant"),
        "{m}"
    );
    let m = message(&shifted, &shifted, &constant);
    assert!(
        m.contains("seed 42") && m.contains("baseline's final image is constant"),
        "{m}"
    );
}

#[test]
fn calibration_on_huge_noise_predictions_keeps_its_criteria() {
    let shape = Shape::new(1, 4, 4).unwrap();
    let training =
        TrainingSet::new(shape, (0..5).flat_map(|k| varied(shape, k)).collect(), None).unwrap();
    let machine = Machine::ideal(training.clone(), LegacyCosine).unwrap();
    let initial = varied(shape, 11);
    let times = vec![1.0, 0.5];
    let x1 = Image::from_vec(shape, initial.clone()).unwrap();
    let x2 = Image::from_vec(shape, varied(shape, 12)).unwrap();
    // The recorded noise predictions are the machine's own, times 1e300:
    // the cosine is exactly 1 whatever the scale.
    let mut noise = Vec::new();
    for (x, t) in [(&x1, 1.0), (&x2, 0.5)] {
        let eps = machine.eps_hat(x, t, None).unwrap();
        noise.extend(eps.as_slice().iter().map(|v| v * 1e300));
    }
    let inputs: Vec<f64> = x1.as_slice().iter().chain(x2.as_slice()).copied().collect();
    let recording =
        RecordedTrajectories::new(shape, times, initial, inputs, noise, vec![0.0; shape.len()])
            .unwrap();
    let calibration = Calibration::run(
        &recording,
        &[1, 3],
        |_| Machine::ideal(training.clone(), LegacyCosine),
        |_| {},
    )
    .unwrap();
    for step in 0..2 {
        let cosine = calibration.cosine(step, 0, 1).unwrap();
        assert!((cosine - 1.0).abs() < 1e-12, "{cosine}");
        let distance = calibration.distance(step, 0, 1).unwrap();
        assert!(distance.is_finite() && distance > 1e299, "{distance:e}");
    }
    assert_eq!(
        calibration.schedule(Criterion::Cosine).unwrap().sides(),
        &[1, 1]
    );
    assert_eq!(
        calibration.schedule(Criterion::Distance).unwrap().sides(),
        &[1, 1]
    );

    // Predictions near f64::MAX of opposite signs: the distance itself
    // exceeds the f64 range, which is an error, not an infinite distance.
    let mut noise = Vec::new();
    for (x, t) in [(&x1, 1.0), (&x2, 0.5)] {
        let eps = machine.eps_hat(x, t, None).unwrap();
        noise.extend(eps.as_slice().iter().map(|v| -v.signum() * f64::MAX));
    }
    let inputs: Vec<f64> = x1.as_slice().iter().chain(x2.as_slice()).copied().collect();
    let recording = RecordedTrajectories::new(
        shape,
        vec![1.0, 0.5],
        x1.as_slice().to_vec(),
        inputs,
        noise,
        vec![0.0; shape.len()],
    )
    .unwrap();
    let result = Calibration::run(
        &recording,
        &[1],
        |_| Machine::ideal(training.clone(), LegacyCosine),
        |_| {},
    );
    assert!(
        matches!(&result, Err(Error::InvalidParameter(m)) if m.contains("L2 distance")),
        "{result:?}"
    );
}

#[cfg(feature = "io")]
#[test]
fn float64_values_beyond_f32_are_an_error_when_read_as_f32() {
    use score_machines::io::npy;
    let path = std::env::temp_dir().join(format!("extreme-inputs-{}.npy", std::process::id()));
    npy::write_array::<f64>(&path, &[1, 1, 2, 2], &[1.0, 1e300, 0.5, 2.0]).unwrap();
    let images = npy::read_images::<f32>(&path);
    let array = npy::read_array::<f32>(&path);
    let training = npy::read_training_set::<f32>(&path);
    let as_f64 = npy::read_array::<f64>(&path);
    std::fs::remove_file(&path).ok();
    for message in [
        images.unwrap_err().to_string(),
        array.unwrap_err().to_string(),
        training.unwrap_err().to_string(),
    ] {
        assert!(
            message.contains("value 1e300 at index 1 exceeds the f32 range"),
            "{message}"
        );
    }
    assert_eq!(as_f64.unwrap().1[1], 1e300);
}

#[test]
fn extreme_times_print_compactly_in_errors() {
    let shape = shape();
    let training = TrainingSet::new(shape, varied(shape, 0), None).unwrap();
    let is = Machine::ideal(training, LegacyCosine).unwrap();
    let x = Image::from_vec(shape, varied(shape, 1)).unwrap();
    let message = is.x0_hat(&x, -1e-300, None).unwrap_err().to_string();
    assert!(message.contains("t = -1e-300"), "{message}");
    assert!(message.len() < 100, "{message}");
    let message = is.x0_hat(&x, 1.5, None).unwrap_err().to_string();
    assert!(message.contains("t = 1.5"), "{message}");
}

/// The exact prediction of fully periodic ELS with a `1 x (2 half + 1)`
/// window for a one-row query `q` (constant) against copies of `image`:
/// every output pixel sees the same candidates.
fn periodic_row_prediction(image: &[f64], q: f64, half: usize, beta: f64) -> f64 {
    let w = image.len();
    let distances: Vec<f64> = (0..w)
        .map(|y| {
            (0..=2 * half)
                .map(|o| (q - image[(y + w + o - half) % w]).powi(2))
                .sum()
        })
        .collect();
    let nearest = distances.iter().copied().fold(f64::INFINITY, f64::min);
    let (mut z, mut s) = (0.0, 0.0);
    for (d, v) in distances.iter().zip(image) {
        let e = (-beta * (d - nearest)).exp();
        z += e;
        s += e * v;
    }
    s / z
}

/// Very wide images give each output pixel thousands of candidates per
/// training image; the `f32` lanes still fold before any of their sums
/// passes about a thousand terms, so that small weights added after a
/// large normaliser are not rounded away: within `1e-4` of the exact
/// answer with column lanes (16 images) and image lanes (40).
#[test]
fn thousands_of_candidates_per_pixel_stay_within_the_f32_promise() {
    let (width, half) = (8192, 13);
    let mut row = vec![-1.0_f64; width];
    for v in row.iter_mut().skip(width / 2 - 1596).take(3192) {
        *v = 1.0;
    }
    // A window of +1 pixels lies beta (27 x 4) = 8.4 above a blank one.
    let beta: f64 = 8.4 / 108.0;
    let sigma = (1.0 / (2.0 * beta)).sqrt();
    let schedule = VarianceExploding::new(sigma, sigma).unwrap();
    let want = periodic_row_prediction(&row, -1.0, half, beta);
    let shape = Shape::new(1, 1, width).unwrap();
    let query = Image::from_vec(shape, vec![-1.0_f32; width]).unwrap();
    for copies in [16, 40] {
        let pixels: Vec<f32> = (0..copies)
            .flat_map(|_| row.iter().map(|&v| v as f32))
            .collect();
        let training = TrainingSet::new(shape, pixels, None).unwrap();
        let machine = Machine::equivariant_local_periodic(
            training,
            schedule,
            Patch::offsets(0, 0, half, half),
        )
        .unwrap();
        let got = machine.x0_hat(&query, 0.5, None).unwrap();
        let worst = got
            .as_slice()
            .iter()
            .map(|&g| (g as f64 - want).abs())
            .fold(0.0, f64::max);
        println!("{copies} images: worst error {worst:.2e} (want {want})");
        assert!(worst <= 1e-4, "{copies} images: worst error {worst:e}");
    }
}
