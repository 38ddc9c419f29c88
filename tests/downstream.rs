//! What a user of the library does with the `testing` feature: property
//! tests of the ELS machines, a broken score function caught and shrunk,
//! and a receptive field measured. Only the public API is used.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use score_machines::equivariance::Boundary;
use score_machines::locality::Patch;
use score_machines::prelude::*;
use score_machines::testing::*;

/// Small images with one or two channels, values in [-1, 1].
fn inputs() -> impl Strategy<Value = ((TrainingSet<f64>, Image<f64>), f64, usize)> {
    (
        training_and_query::<f64>(shapes(1..=2, 3..=8, 3..=8), 1..=5, None, -1.0..=1.0),
        times(),
        patch_sides(3),
    )
}

proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn els_is_local_equivariant_and_convex(((training, x), t, side) in inputs(), shift in (-3isize..=3, -3isize..=3)) {
        let els = Machine::equivariant_local(training.clone(), LegacyCosine, SquarePatch::new(side)?)?;
        let query = Query::new(&x, t);
        // The reference ELS reads its query window periodically.
        check_locality(&els, query, &Patch::square(side)?, Boundary::Periodic, &Perturbation::default(), 1e-9)?
            .into_test_result()?;
        check_translation_equivariance(&els, query, shift, &ShiftRule::Periodic, 1e-9)?
            .into_test_result()?;
        check_convexity(&els, query, &training, 1e-12)?.into_test_result()?;
    }

    #[test]
    fn zero_padded_els_is_local_equivariant_inside_and_convex(((training, x), t, side) in inputs(), shift in (-3isize..=3, -3isize..=3)) {
        let bbels = Machine::equivariant_local_zero_padded(training.clone(), LegacyCosine, SquarePatch::new(side)?)?;
        let query = Query::new(&x, t);
        let patch = Patch::square(side)?;
        check_locality(&bbels, query, &patch, Boundary::Zero, &Perturbation::default(), 1e-9)?
            .into_test_result()?;
        check_translation_equivariance(&bbels, query, shift, &ShiftRule::ZeroPadded(patch), 1e-9)?
            .into_test_result()?;
        check_convexity(&bbels, query, &training, 1e-12)?.into_test_result()?;
    }
}

/// Claims a 3 x 3 window, but output pixel `(r, c)` also reads input pixel
/// `(r, c + 2)` when there is one.
fn peeking_denoiser() -> impl ScoreFunction<f64> {
    ClosureScore::new(
        LegacyCosine,
        Prediction::CleanImage,
        None,
        |x: &Image<f64>, _t: f64, _class: Option<usize>| {
            let shape = x.shape();
            let mut out = x.clone();
            for c in 0..shape.channels {
                for r in 0..shape.height {
                    for col in 0..shape.width.saturating_sub(2) {
                        out.set(c, r, col, x.get(c, r, col) + 0.5 * x.get(c, r, col + 2));
                    }
                }
            }
            Ok(out)
        },
    )
}

fn locality_of_peeking_denoiser(x: &Image<f64>, t: f64) -> score_machines::Result<Verdict> {
    check_locality(
        &peeking_denoiser(),
        Query::new(x, t),
        &Patch::square(3)?,
        Boundary::Zero,
        &Perturbation::default(),
        1e-9,
    )
}

#[test]
fn a_non_local_closure_is_caught_and_shrunk_to_the_smallest_image() {
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (
        images::<f64>(shapes(1..=3, 1..=8, 1..=8), -1.0..=1.0),
        times(),
    );
    let result = runner.run(&strategy, |(x, t)| {
        locality_of_peeking_denoiser(&x, t)?.into_test_result()?;
        Ok(())
    });

    let Err(TestError::Fail(reason, (x, t))) = result else {
        panic!("the peeking denoiser passed: {result:?}");
    };
    // The smallest image in which a pixel two columns away exists.
    assert_eq!(x.shape(), Shape::new(1, 1, 3).unwrap());
    assert!(x.as_slice().iter().all(|&v| v == 0.0), "{x:?}");
    assert_eq!(t, SMALLEST_TIME);
    assert!(reason.message().contains("locality violated"), "{reason}");

    let verdict = locality_of_peeking_denoiser(&x, t).unwrap();
    let worst = verdict.worst.unwrap();
    assert_eq!(
        worst.pixel,
        Pixel {
            channel: 0,
            row: 0,
            col: 0
        }
    );
    let Cause::InputChanged { row, col, deltas } = worst.cause else {
        panic!("unexpected cause {:?}", worst.cause);
    };
    assert_eq!((row, col), (0, 2));
    assert_eq!(deltas.len(), 1);
    assert_eq!(deltas[0].abs(), 1.0);
    assert_eq!(worst.magnitude, 0.5);
}

#[test]
fn local_score_with_a_5x5_patch_has_a_5x5_receptive_field_at_every_time() {
    let shape = Shape::new(1, 9, 9).unwrap();
    let mut runner = TestRunner::deterministic();
    let training = training_set::<f64>(shape, 6..=6, -1.0..=1.0)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let x = image::<f64>(shape, -1.0..=1.0)
        .new_tree(&mut runner)
        .unwrap()
        .current();
    let local = Machine::local(training, LegacyCosine, SquarePatch::new(5).unwrap()).unwrap();
    for t in [0.1, 0.3, 0.5, 0.7, 0.9, 1.0] {
        let field = effective_receptive_field(&local, &x, t, 1e-9).unwrap();
        assert_eq!(field, 5, "t = {t}");
    }
}
