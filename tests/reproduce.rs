//! Recorded network trajectories, their replay, calibration and
//! comparison: against the shared CNN recordings, damaged copies of a
//! recording, machines with a known scale schedule and hand-made images.
#![cfg(feature = "io")]

mod common;

use std::path::PathBuf;

use common::shared;
use score_machines::calibrate::{Calibration, CalibrationProgress, Criterion};
use score_machines::compare::{Agreement, Comparison, cosine_similarity, mse, pearson};
use score_machines::io::npy;
use score_machines::prelude::*;
use score_machines::reference::{RecordedTrajectories, TIME_TOLERANCE};

/// A fresh empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "score-machines-reproduce-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_abs_difference(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(u, v)| (*u as f64 - *v as f64).abs())
        .fold(0.0, f64::max)
}

/// Values read with Python's `struct` module from the `.npy` files.
#[test]
fn shared_recordings_load_with_their_values() {
    // (folder, xt[7][11] at (14, 14), eps[31][19] at (0, 0), final[12] at (3, 20))
    let expected = [
        (
            "zeros",
            0.29295769333839417,
            -1.211167812347412,
            -0.9982582330703735,
        ),
        (
            "circular",
            0.5957862734794617,
            -0.28685951232910156,
            -1.0479366779327393,
        ),
    ];
    for (name, xt, eps, last) in expected {
        let Some(dir) = shared(&format!("cnn-mnist/{name}")) else {
            return;
        };
        let recording = RecordedTrajectories::<f32>::read(&dir).unwrap();
        assert_eq!(recording.shape(), Shape::new(1, 28, 28).unwrap());
        assert_eq!((recording.len(), recording.steps()), (32, 20));
        assert_eq!(recording.seeds(), (0..32).collect::<Vec<_>>());
        assert_eq!(recording.times()[0], 1.0);
        assert_eq!(recording.times()[19], 0.05000000074505806);
        for (step, &t) in recording.times().iter().enumerate() {
            assert!((t - (20 - step) as f64 / 20.0).abs() < 1e-7);
            assert_eq!(recording.step_at((20 - step) as f64 / 20.0), Some(step));
        }
        let seed = recording.initial_noise(5).unwrap();
        assert_eq!(seed.get(0, 14, 14) as f64, -0.9032129645347595);
        assert_eq!(recording.input(5, 0).unwrap(), seed);
        assert_eq!(recording.input(7, 11).unwrap().get(0, 14, 14) as f64, xt);
        let prediction = recording.noise_prediction(31, 19).unwrap();
        assert_eq!(prediction.get(0, 0, 0) as f64, eps);
        assert_eq!(
            recording.final_image(12).unwrap().get(0, 3, 20) as f64,
            last
        );
        assert!(recording.final_image(32).is_err());
        assert!(recording.noise_prediction(0, 20).is_err());

        // f64 storage holds the same float32 values.
        let wide = RecordedTrajectories::<f64>::read(&dir).unwrap();
        assert_eq!(wide.input(7, 11).unwrap().get(0, 14, 14), xt);
    }
}

/// Replaying the network's recorded noise predictions through this crate's
/// DDIM sampler from the recorded noise gives back every recorded input and
/// the final image: our DDIM is the network's sampler.
///
/// One DDIM step from a recorded input with the recorded prediction lands
/// within 4.1e-6 of the next recorded input (checked with Python's `struct`
/// on every step of 8 trajectories; the largest gap is on the first step,
/// where the network's float32 update `7.3 x - 7.3 eps + ...` rounds most),
/// and the later steps multiply such a gap by up to
/// `sqrt(abar(0) / abar(0.95)) ~ 11`: the replay stays within 4.8e-5
/// (zero padding) and 8.7e-5 (circular) of the recording at every step,
/// which is the recording's own precision.
#[test]
fn replayed_networks_through_ddim_reproduce_their_outputs() {
    let sampler = Sampler::new(Method::Ddim, 20).unwrap();
    for name in ["zeros", "circular"] {
        let Some(dir) = shared(&format!("cnn-mnist/{name}")) else {
            return;
        };
        let recording = RecordedTrajectories::<f32>::read(&dir).unwrap();
        let (mut worst_input, mut worst_final) = (0.0_f64, 0.0_f64);
        for index in 0..recording.len() {
            let replay = recording
                .replay(index, LegacyCosine)
                .unwrap()
                .with_input_tolerance(f64::INFINITY)
                .unwrap();
            let mut inputs = |step: &StepRecord<'_, f32>| {
                let recorded = recording.input(index, step.step).unwrap();
                worst_input =
                    worst_input.max(max_abs_difference(step.x.as_slice(), recorded.as_slice()));
            };
            let noise = recording.initial_noise(index).unwrap();
            let out = sampler.sample(&replay, noise, None, &mut inputs).unwrap();
            let recorded = recording.final_image(index).unwrap();
            worst_final = worst_final.max(max_abs_difference(out.as_slice(), recorded.as_slice()));
        }
        println!("{name}: largest input gap {worst_input:.2e}, final gap {worst_final:.2e}");
        assert!(worst_input < 1e-4, "{name}: inputs differ by {worst_input}");
        assert!(
            worst_final < 1e-4,
            "{name}: final images differ by {worst_final}"
        );
    }
}

#[test]
fn replay_refuses_other_times_inputs_and_classes() {
    let Some(dir) = shared("cnn-mnist/zeros") else {
        return;
    };
    let recording = RecordedTrajectories::<f32>::read(&dir)
        .unwrap()
        .select(3..5)
        .unwrap();
    assert_eq!(recording.seeds(), &[3, 4]);
    let replay = recording.replay(1, LegacyCosine).unwrap();
    assert_eq!(replay.native(), Prediction::Noise);
    let x = recording.input(1, 4).unwrap();
    let t = recording.times()[4];
    assert_eq!(
        replay.eps_hat(&x, t, None).unwrap(),
        recording.noise_prediction(1, 4).unwrap()
    );

    // A time between two steps.
    let err = replay.eps_hat(&x, t + 0.01, None).unwrap_err();
    assert!(matches!(err, Error::InvalidTime { .. }), "{err}");
    // Within the time tolerance, the same step.
    assert!(replay.eps_hat(&x, t + 0.5 * TIME_TOLERANCE, None).is_ok());
    // Another trajectory's input.
    let other = recording.input(0, 4).unwrap();
    let err = replay.eps_hat(&other, t, None).unwrap_err();
    assert!(
        matches!(&err, Error::InvalidParameter(m) if m.contains("seed 4")),
        "{err}"
    );
    // Sampling from other noise fails at the first step.
    let sampler = Sampler::new(Method::Ddim, 20).unwrap();
    let noise = recording.initial_noise(0).unwrap();
    assert!(sampler.sample(&replay, noise, None, &mut ()).is_err());
    // A sampler whose times were not recorded.
    let sampler = Sampler::new(Method::Ddim, 7).unwrap();
    let noise = recording.initial_noise(1).unwrap();
    let err = sampler.sample(&replay, noise, None, &mut ()).unwrap_err();
    assert!(matches!(err, Error::InvalidTime { .. }), "{err}");
    // No class.
    let err = replay.eps_hat(&x, t, Some(3)).unwrap_err();
    assert!(matches!(err, Error::UnknownClass(3)), "{err}");
    assert!(recording.replay(2, LegacyCosine).is_err());
    assert!(
        recording
            .replay(0, LegacyCosine)
            .unwrap()
            .with_input_tolerance(-1.0)
            .is_err()
    );
}

/// A small recording of an ideal score machine: 3 trajectories, 5 steps,
/// 4x5 images.
fn small_recording() -> RecordedTrajectories<f32> {
    let shape = Shape::new(1, 4, 5).unwrap();
    let pixels: Vec<f32> = (0..6 * 20)
        .map(|i| ((i * 37) % 17) as f32 / 8.0 - 1.0)
        .collect();
    let machine =
        Machine::ideal(TrainingSet::new(shape, pixels, None).unwrap(), LegacyCosine).unwrap();
    let noises: Vec<_> = (0..3).map(|seed| initial_noise(shape, seed)).collect();
    let sampler = Sampler::new(Method::Ddim, 5).unwrap();
    RecordedTrajectories::record(&machine, &sampler, &noises, None).unwrap()
}

fn format_error_file(
    result: score_machines::Result<RecordedTrajectories<f32>>,
) -> (String, String) {
    match result {
        Err(Error::Format { path, reason }) => (
            path.file_name().unwrap().to_string_lossy().into_owned(),
            reason,
        ),
        other => panic!("expected a format error, got {other:?}"),
    }
}

#[test]
fn written_recordings_read_back_and_damage_is_named() {
    let recording = small_recording();
    let good = scratch("good");
    recording.write(&good).unwrap();
    let back = RecordedTrajectories::<f32>::read(&good).unwrap();
    assert_eq!(back, recording);

    // Each case: a fresh copy of the folder, one file damaged.
    let copy = |name: &str| {
        let dir = scratch(name);
        for entry in std::fs::read_dir(&good).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
        dir
    };

    let dir = copy("missing");
    std::fs::remove_file(dir.join("xt.npy")).unwrap();
    match RecordedTrajectories::<f32>::read(&dir) {
        Err(Error::Io { path, .. }) => assert!(path.ends_with("xt.npy")),
        other => panic!("expected an I/O error, got {other:?}"),
    }

    let dir = copy("truncated");
    let bytes = std::fs::read(dir.join("eps.npy")).unwrap();
    std::fs::write(dir.join("eps.npy"), &bytes[..bytes.len() - 7]).unwrap();
    assert_eq!(
        format_error_file(RecordedTrajectories::read(&dir)).0,
        "eps.npy"
    );

    let dir = copy("fewer-finals");
    let finals: Vec<f32> = vec![0.0; 2 * 20];
    npy::write_array(dir.join("final.npy"), &[2, 1, 4, 5], &finals).unwrap();
    let (file, reason) = format_error_file(RecordedTrajectories::read(&dir));
    assert_eq!(file, "final.npy");
    assert!(reason.contains("[2, 1, 4, 5]"), "{reason}");

    let dir = copy("more-times");
    npy::write_array(dir.join("times.npy"), &[6], &[1.0, 0.8, 0.6, 0.4, 0.2, 0.1]).unwrap();
    let (file, reason) = format_error_file(RecordedTrajectories::read(&dir));
    assert_eq!(file, "xt.npy");
    assert!(reason.contains("times.npy"), "{reason}");

    let dir = copy("rising-times");
    npy::write_array(dir.join("times.npy"), &[5], &[0.2, 0.4, 0.6, 0.8, 1.0]).unwrap();
    assert_eq!(
        format_error_file(RecordedTrajectories::read(&dir)).0,
        "times.npy"
    );

    let dir = copy("nan");
    let (dims, mut eps) = npy::read_array::<f32>(dir.join("eps.npy")).unwrap();
    eps[77] = f32::NAN;
    npy::write_array(dir.join("eps.npy"), &dims, &eps).unwrap();
    let (file, reason) = format_error_file(RecordedTrajectories::read(&dir));
    assert_eq!(file, "eps.npy");
    assert!(reason.contains("value 77 is NaN"), "{reason}");

    let dir = copy("other-seeds");
    let noises: Vec<f32> = (0..3 * 20).map(|i| i as f32 / 60.0).collect();
    npy::write_array(dir.join("seeds.npy"), &[3, 1, 4, 5], &noises).unwrap();
    assert_eq!(
        format_error_file(RecordedTrajectories::read(&dir)).0,
        "xt.npy"
    );

    let dir = copy("flat-seeds");
    npy::write_array(dir.join("seeds.npy"), &[3, 20], &noises).unwrap();
    assert_eq!(
        format_error_file(RecordedTrajectories::read(&dir)).0,
        "seeds.npy"
    );

    let dir = copy("other-images");
    let (_, inputs) = npy::read_array::<f32>(dir.join("xt.npy")).unwrap();
    npy::write_array(dir.join("xt.npy"), &[3, 5, 1, 5, 4], &inputs).unwrap();
    let (file, reason) = format_error_file(RecordedTrajectories::read(&dir));
    assert_eq!(file, "xt.npy");
    assert!(reason.contains("[3, 5, 1, 4, 5]"), "{reason}");

    for dir in std::fs::read_dir(std::env::temp_dir()).unwrap() {
        let path = dir.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(&format!("score-machines-reproduce-{}-", std::process::id())) {
            let _ = std::fs::remove_dir_all(path);
        }
    }
}

/// Random-looking images in [-1, 1].
fn training(shape: Shape, count: usize) -> TrainingSet<f64> {
    let pixels = (0..count * shape.len())
        .map(|i| ((i * 7919 + 11) % 29) as f64 / 14.0 - 1.0)
        .collect();
    TrainingSet::new(shape, pixels, None).unwrap()
}

/// The reference is itself a machine with a known scale schedule; the
/// calibration over a family that contains it must find that schedule
/// under both criteria, with a cosine of 1 and a distance of 0 at the
/// chosen side.
#[test]
fn calibration_recovers_a_known_schedule() {
    let shape = Shape::new(1, 9, 9).unwrap();
    let set = training(shape, 10);
    let sampler = Sampler::new(Method::Ddim, 6).unwrap();
    let noises: Vec<_> = (0..3)
        .map(|seed| initial_noise(shape, 100 + seed))
        .collect();
    let candidates = [1, 3, 5, 7, 9];

    // bbELS: low noise first.
    let truth = ScaleSchedule::new(vec![1, 3, 3, 5, 7, 9]).unwrap();
    let network =
        Machine::equivariant_local_zero_padded(set.clone(), LegacyCosine, truth.clone()).unwrap();
    let recording = RecordedTrajectories::record(&network, &sampler, &noises, None).unwrap();
    let mut calls = Vec::new();
    let mut last = None;
    let calibration = Calibration::run(
        &recording,
        &candidates,
        |side| {
            calls.push(side);
            Machine::equivariant_local_zero_padded(
                set.clone(),
                LegacyCosine,
                SquarePatch::new(side)?,
            )
        },
        |progress: CalibrationProgress| last = Some(progress),
    )
    .unwrap();
    assert_eq!(calls, candidates);
    let last = last.unwrap();
    assert_eq!((last.done, last.total, last.side), (90, 90, 9));
    assert_eq!(calibration.schedule(Criterion::Cosine).unwrap(), truth);
    assert_eq!(calibration.schedule(Criterion::Distance).unwrap(), truth);
    for step in 0..6 {
        let side = calibration.side(step, Criterion::Cosine).unwrap();
        for index in 0..3 {
            assert!((calibration.cosine(step, index, side).unwrap() - 1.0).abs() < 1e-12);
            assert_eq!(calibration.distance(step, index, side).unwrap(), 0.0);
        }
    }

    // Reference ELS in f32, another schedule, candidates given unsorted.
    let set32: TrainingSet<f32> = set.cast().unwrap();
    let truth = ScaleSchedule::new(vec![3, 3, 5, 5, 7, 7]).unwrap();
    let network = Machine::equivariant_local(set32.clone(), LegacyCosine, truth.clone()).unwrap();
    let noises: Vec<Image<f32>> = noises.iter().map(Image::cast).collect();
    let recording = RecordedTrajectories::record(&network, &sampler, &noises, None).unwrap();
    let calibration = Calibration::run(
        &recording,
        &[7, 5, 3],
        |side| Machine::equivariant_local(set32.clone(), LegacyCosine, SquarePatch::new(side)?),
        |_| {},
    )
    .unwrap();
    assert_eq!(calibration.candidates(), &[3, 5, 7]);
    assert_eq!(calibration.schedule(Criterion::Cosine).unwrap(), truth);
    assert_eq!(calibration.to_string().lines().count(), 7);
}

#[test]
fn calibration_passes_machine_errors_on() {
    let shape = Shape::new(1, 5, 5).unwrap();
    let set = training(shape, 4);
    let sampler = Sampler::new(Method::Ddim, 3).unwrap();
    let network = Machine::ideal(set.clone(), LegacyCosine).unwrap();
    let recording =
        RecordedTrajectories::record(&network, &sampler, &[initial_noise(shape, 1)], None).unwrap();
    // Reference ELS has no candidate for a 7x7 patch in a 5x5 image.
    let err = Calibration::run(
        &recording,
        &[3, 7],
        |side| Machine::equivariant_local(set.clone(), LegacyCosine, SquarePatch::new(side)?),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::NoCandidates(_)), "{err}");
    let err = Calibration::run(
        &recording,
        &[2],
        |side| Machine::local(set.clone(), LegacyCosine, SquarePatch::new(side)?),
        |_| {},
    )
    .unwrap_err();
    assert!(matches!(err, Error::InvalidPatchSide(2)), "{err}");
}

fn row(values: &[f64]) -> Image<f64> {
    Image::from_vec(Shape::new(1, 1, values.len()).unwrap(), values.to_vec()).unwrap()
}

#[test]
fn metrics_on_hand_made_images() {
    let a = row(&[1.0, 2.0, 3.0, 4.0]);
    assert_eq!(pearson(&a, &row(&[2.0, 4.0, 6.0, 8.0])).unwrap(), 1.0);
    assert_eq!(pearson(&a, &row(&[5.0, 4.0, 3.0, 2.0])).unwrap(), -1.0);
    // Centred: (-1.5, -0.5, 0.5, 1.5) and (-1.5, 0.5, -0.5, 1.5): 4 / 5.
    let b = row(&[1.0, 3.0, 2.0, 4.0]);
    assert!((pearson(&a, &b).unwrap() - 0.8).abs() < 1e-15);
    assert_eq!(mse(&a, &b).unwrap(), 0.5);
    let agreement = Agreement::between(&a, &b).unwrap();
    assert!((agreement.r_squared - 0.64).abs() < 1e-15);
    assert!(
        (cosine_similarity(&row(&[1.0, 0.0]), &row(&[1.0, 1.0])).unwrap()
            - std::f64::consts::FRAC_1_SQRT_2)
            .abs()
            < 1e-15
    );
    // Undefined or mismatched.
    assert!(matches!(
        pearson(&a, &row(&[2.0; 4])),
        Err(Error::InvalidParameter(_))
    ));
    assert!(cosine_similarity(&row(&[0.0, 0.0]), &row(&[1.0, 1.0])).is_err());
    assert!(matches!(
        pearson(&a, &row(&[1.0, 2.0, 3.0])),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        mse(&a, &row(&[1.0, f64::NAN, 3.0, 4.0])),
        Err(Error::NonFinite(_))
    ));
}

#[test]
fn comparison_summaries_on_hand_made_images() {
    let reference = [
        row(&[1.0, 2.0, 3.0, 4.0]),
        row(&[1.0, 2.0, 3.0, 4.0]),
        row(&[0.0, 0.0, 1.0, 1.0]),
        row(&[4.0, 3.0, 2.0, 1.0]),
    ];
    // Machine r: 1, 0.8, -1, 0.8 ; baseline r: 0.8, 1, 1, 0.8.
    let machine = [
        row(&[2.0, 4.0, 6.0, 8.0]),
        row(&[1.0, 3.0, 2.0, 4.0]),
        row(&[1.0, 1.0, 0.0, 0.0]),
        row(&[4.0, 2.0, 3.0, 1.0]),
    ];
    let baseline = [
        row(&[1.0, 3.0, 2.0, 4.0]),
        row(&[1.0, 2.0, 3.0, 4.0]),
        row(&[0.0, 0.0, 1.0, 1.0]),
        row(&[4.0, 2.0, 3.0, 1.0]),
    ];
    let seeds = [8, 9, 10, 11];
    let comparison = Comparison::from_images(&seeds, &reference, &machine, &baseline).unwrap();
    assert_eq!(comparison.len(), 4);
    let wins: Vec<bool> = comparison
        .seeds()
        .iter()
        .map(|s| s.machine_wins())
        .collect();
    assert_eq!(wins, [true, false, false, false]);
    assert_eq!(comparison.seeds()[2].seed, 10);
    assert_eq!(comparison.beating_baseline(), 1);
    assert_eq!(comparison.fraction_beating_baseline(), 0.25);
    // Sorted r: -1, 0.8, 0.8, 1: median 0.8; r^2: 0.64, 0.64, 1, 1: 0.82.
    assert!((comparison.median_r() - 0.8).abs() < 1e-15);
    assert!((comparison.median_r_squared() - 0.82).abs() < 1e-15);
    assert!((comparison.baseline_median_r() - 0.9).abs() < 1e-15);
    // Machine MSE: 7.5, 0.5, 1, 0.5: median 0.75.
    assert!((comparison.median_mse() - 0.75).abs() < 1e-15);
    let text = comparison.to_string();
    assert!(text.contains("on 1 of 4 seeds (0.25)"), "{text}");

    assert!(Comparison::from_images::<f64>(&[], &[], &[], &[]).is_err());
    assert!(Comparison::from_images(&seeds[..3], &reference, &machine, &baseline).is_err());
}
