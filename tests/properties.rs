//! Properties the theory promises for every machine, checked on random
//! small training sets, queries, times, patch sides and schedules with the
//! crate's own `testing` module.
//!
//! Images are at most 2 x 8 x 8 with at most 6 training images, so each
//! property runs in well under a second; `PROPTEST_CASES=2000 cargo test
//! --test properties` runs them longer.

use std::sync::Arc;

use proptest::prelude::*;
use score_machines::equivariance::Boundary;
use score_machines::locality::Patch;
use score_machines::prelude::*;
use score_machines::testing::*;

type Score<T> = Box<dyn ScoreFunction<T>>;
type Schedule = Arc<dyn NoiseSchedule>;

/// Number of cases per property.
const CASES: u32 = 32;

/// The machines of the theory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Ideal,
    Equivariant,
    Local,
    /// ELS with the reference semantics: wrapping query, interior candidates.
    Els,
    /// ELS with wrapping query and candidate windows.
    PeriodicEls,
    /// ELS with zero padding (bbELS).
    ZeroPaddedEls,
}

const ALL: [Kind; 6] = [
    Kind::Ideal,
    Kind::Equivariant,
    Kind::Local,
    Kind::Els,
    Kind::PeriodicEls,
    Kind::ZeroPaddedEls,
];

fn build<T: Real>(
    kind: Kind,
    side: usize,
    training: TrainingSet<T>,
    schedule: Schedule,
) -> score_machines::Result<Score<T>> {
    let patch = SquarePatch::new(side)?;
    Ok(match kind {
        Kind::Ideal => Box::new(Machine::ideal(training, schedule)?),
        Kind::Equivariant => Box::new(Machine::equivariant(training, schedule)?),
        Kind::Local => Box::new(Machine::local(training, schedule, patch)?),
        Kind::Els => Box::new(Machine::equivariant_local(training, schedule, patch)?),
        Kind::PeriodicEls => Box::new(Machine::equivariant_local_periodic(
            training, schedule, patch,
        )?),
        Kind::ZeroPaddedEls => Box::new(Machine::equivariant_local_zero_padded(
            training, schedule, patch,
        )?),
    })
}

/// The patch side a kind uses: the reference ELS needs a patch that fits
/// in the image (otherwise it has no candidate, see
/// `reference_els_without_interior_patches_is_an_error`), so its side is
/// cut to the largest odd side not above `min(H, W)`.
fn side_for(kind: Kind, side: usize, shape: Shape) -> usize {
    if kind == Kind::Els {
        let fit = shape.height.min(shape.width);
        side.min(fit - (1 - fit % 2))
    } else {
        side
    }
}

/// One random input of a machine.
#[derive(Clone, Debug)]
struct Case<T> {
    training: TrainingSet<T>,
    x: Image<T>,
    t: f64,
    side: usize,
    schedule: Schedule,
}

impl<T: Real> Case<T> {
    fn machine(&self, kind: Kind) -> score_machines::Result<Score<T>> {
        let side = side_for(kind, self.side, self.training.shape());
        build(
            kind,
            side,
            self.training.clone(),
            Arc::clone(&self.schedule),
        )
    }

    fn builder(
        &self,
        kind: Kind,
    ) -> impl Fn(TrainingSet<T>) -> score_machines::Result<Score<T>> + use<T> {
        let side = side_for(kind, self.side, self.training.shape());
        let schedule = Arc::clone(&self.schedule);
        move |training| build(kind, side, training, Arc::clone(&schedule))
    }

    fn query(&self) -> Query<'_, T> {
        Query::new(&self.x, self.t)
    }
}

fn cases<T: Real>(classes: Option<usize>) -> impl Strategy<Value = Case<T>> {
    (
        training_and_query::<T>(shapes(1..=2, 1..=8, 1..=8), 1..=6, classes, -1.0..=1.0),
        times(),
        patch_sides(7),
        schedules(),
    )
        .prop_map(|((training, x), t, side, schedule)| Case {
            training,
            x,
            t,
            side,
            schedule,
        })
}

proptest! {
    #![proptest_config(config(CASES))]

    #[test]
    fn outputs_are_convex_combinations_of_training_pixels(case in cases::<f64>(None)) {
        for kind in ALL {
            let machine = case.machine(kind)?;
            check_convexity(&machine, case.query(), &case.training, 1e-12)?.into_test_result()?;
        }
    }

    #[test]
    fn outputs_in_f32_stay_within_the_training_range_exactly(case in cases::<f32>(None)) {
        for kind in ALL {
            let machine = case.machine(kind)?;
            check_convexity(&machine, case.query(), &case.training, 0.0)?.into_test_result()?;
        }
    }

    #[test]
    fn local_score_with_a_covering_patch_is_the_ideal_score(
        case in cases::<f64>(None),
        extra in 0usize..3,
    ) {
        let shape = case.training.shape();
        let side = 2 * shape.height.max(shape.width) - 1 + 2 * extra;
        let local = Machine::local(case.training.clone(), Arc::clone(&case.schedule), SquarePatch::new(side)?)?;
        let ideal = Machine::ideal(case.training.clone(), Arc::clone(&case.schedule))?;
        check_agreement(&local, &ideal, case.query(), 1e-12)?.into_test_result()?;
    }

    #[test]
    fn one_training_image_is_returned_exactly_by_ideal_and_local_scores(
        case in cases::<f64>(None),
    ) {
        let one = case.training.select(&[0])?;
        let single = Case { training: one.clone(), ..case.clone() };
        for kind in [Kind::Ideal, Kind::Local] {
            let out = single.machine(kind)?.x0_hat(&single.x, single.t, None)?;
            prop_assert_eq!(out.as_slice(), one.image(0), "{:?}", kind);
        }
    }

    #[test]
    fn periodic_machines_commute_with_circular_shifts(
        (case, shift) in cases::<f64>(None).prop_flat_map(|case| {
            let shape = case.training.shape();
            (Just(case), shifts(shape))
        }),
    ) {
        // The reference ELS is included: its candidates (interior patches)
        // are the same for every output pixel and its query window wraps,
        // so shifting the query shifts the output exactly.
        for kind in [Kind::Equivariant, Kind::PeriodicEls, Kind::Els] {
            let machine = case.machine(kind)?;
            check_translation_equivariance(&machine, case.query(), shift, &ShiftRule::Periodic, 1e-9)?
                .into_test_result()?;
        }
    }

    #[test]
    fn zero_padded_els_commutes_with_shifts_away_from_the_border(
        (case, shift) in cases::<f64>(None).prop_flat_map(|case| {
            let shape = case.training.shape();
            (Just(case), shifts(shape))
        }),
    ) {
        let machine = case.machine(Kind::ZeroPaddedEls)?;
        let rule = ShiftRule::ZeroPadded(Patch::square(case.side)?);
        check_translation_equivariance(&machine, case.query(), shift, &rule, 1e-9)?
            .into_test_result()?;
    }

    #[test]
    fn output_pixels_ignore_input_outside_their_window(case in cases::<f64>(None)) {
        for (kind, boundary) in [
            (Kind::Local, Boundary::Zero),
            (Kind::ZeroPaddedEls, Boundary::Zero),
            (Kind::Els, Boundary::Periodic),
            (Kind::PeriodicEls, Boundary::Periodic),
        ] {
            let machine = case.machine(kind)?;
            let side = side_for(kind, case.side, case.training.shape());
            check_locality(
                &machine,
                case.query(),
                &Patch::square(side)?,
                boundary,
                &Perturbation::default(),
                1e-9,
            )?
            .into_test_result()?;
        }
    }

    #[test]
    fn training_order_does_not_matter(
        (case, permutation) in cases::<f64>(Some(3)).prop_flat_map(|case| {
            let n = case.training.len();
            (Just(case), permutations(n))
        }),
    ) {
        for kind in ALL {
            check_permutation_invariance(
                case.builder(kind),
                &case.training,
                case.query(),
                &permutation,
                1e-12,
            )?
            .into_test_result()?;
        }
    }

    #[test]
    fn score_noise_and_clean_image_agree_through_the_identities(case in cases::<f64>(None)) {
        for kind in ALL {
            let machine = case.machine(kind)?;
            check_consistency(&machine, case.query(), 1e-12)?.into_test_result()?;
        }
    }

    #[test]
    fn identities_hold_to_single_precision_in_f32(case in cases::<f32>(None)) {
        for kind in ALL {
            let machine = case.machine(kind)?;
            check_consistency(&machine, case.query(), 1e-6)?.into_test_result()?;
        }
    }

    #[test]
    fn class_conditioning_is_the_machine_of_that_class_alone(case in cases::<f64>(Some(3))) {
        for kind in ALL {
            check_class_conditioning(case.builder(kind), &case.training, case.query(), 1e-12)?
                .into_test_result()?;
        }
    }

    #[test]
    fn fully_periodic_machines_ignore_circular_shifts_of_training_images(
        (case, moves) in cases::<f64>(None).prop_flat_map(|case| {
            let shape = case.training.shape();
            let n = case.training.len();
            (Just(case), proptest::collection::vec(shifts(shape), n))
        }),
    ) {
        // Every patch of every circular shift of a training image is a
        // patch of the image itself, so the periodic ELS and ES see the same
        // candidates. The reference ELS does not (see
        // `reference_els_depends_on_where_training_content_sits`).
        let moved: Vec<Image<f64>> = moves
            .iter()
            .enumerate()
            .map(|(mu, &(dr, dc))| case.training.to_image(mu).shifted(dr, dc))
            .collect();
        let moved = TrainingSet::from_images(&moved, None)?;
        for kind in [Kind::Equivariant, Kind::PeriodicEls] {
            let original = case.machine(kind)?;
            let shifted = Case { training: moved.clone(), ..case.clone() }.machine(kind)?;
            check_agreement(&shifted, &original, case.query(), 1e-9)?.into_test_result()?;
        }
    }

    #[test]
    fn reference_els_without_interior_patches_is_an_error(case in cases::<f64>(None)) {
        let shape = case.training.shape();
        let side = 2 * (shape.height.min(shape.width) / 2) + 3;
        let machine = Machine::equivariant_local(
            case.training.clone(),
            Arc::clone(&case.schedule),
            SquarePatch::new(side)?,
        )?;
        let result = machine.x0_hat(&case.x, case.t, None);
        prop_assert!(matches!(result, Err(Error::NoCandidates(_))), "{:?}", result.err());
    }
}

/// A 1 x 5 x 5 training image with a single bright pixel at the top-left
/// corner, and a query holding the same pixel at the centre.
#[test]
fn reference_els_depends_on_where_training_content_sits() {
    let shape = Shape::new(1, 5, 5).unwrap();
    let mut corner = Image::<f64>::zeros(shape);
    corner.set(0, 0, 0, 1.0);
    let centred = corner.shifted(2, 2);
    let dark = Image::zeros(shape);
    let side = SquarePatch::new(3).unwrap();

    let machine = |bright: &Image<f64>| {
        let set = TrainingSet::from_images(&[bright.clone(), dark.clone()], None).unwrap();
        (
            Machine::equivariant_local(set.clone(), LegacyCosine, side.clone()).unwrap(),
            Machine::equivariant_local_periodic(set, LegacyCosine, side.clone()).unwrap(),
        )
    };
    let (reference_corner, periodic_corner) = machine(&corner);
    let (reference_centred, periodic_centred) = machine(&centred);
    let t = 0.05;
    let at_centre = |m: &dyn ScoreFunction<f64>| m.x0_hat(&centred, t, None).unwrap().get(0, 2, 2);

    // The bright pixel in the corner sits in no interior patch, so the
    // reference ELS cannot reproduce it; moved to the centre, it can.
    assert_eq!(at_centre(&reference_corner), 0.0);
    assert!(at_centre(&reference_centred) > 0.99);
    // The periodic ELS sees the same patches either way.
    let (a, b) = (at_centre(&periodic_corner), at_centre(&periodic_centred));
    assert!(a > 0.99 && (a - b).abs() < 1e-12, "{a} {b}");
}
