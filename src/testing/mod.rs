//! Property testing for score functions: [`proptest`] strategies for images,
//! training sets, times, patch sides, shifts and schedules; checks of the
//! properties the theory promises; and two measurements for black-box
//! score functions. Enabled by the `testing` feature.
//!
//! # Checks
//!
//! Every check takes any [`ScoreFunction`](crate::ScoreFunction) (a
//! [`Machine`](crate::Machine), a network wrapped in
//! [`ClosureScore`](crate::ClosureScore), a `Box<dyn ScoreFunction<T>>`),
//! evaluates it at a [`Query`] and returns a [`Verdict`]: how many values
//! were compared and the worst discrepancy found (which output pixel, what
//! caused it, how large it was), whether or not it exceeds the tolerance.
//! [`Verdict::into_test_result`] turns a failed verdict into a
//! [`TestCaseError`](proptest::test_runner::TestCaseError), so that proptest
//! shrinks the input to a minimal counterexample; [`Verdict::assert_passed`]
//! panics instead, for ordinary tests.
//!
//! | check | property |
//! |---|---|
//! | [`check_locality`] | moving an input pixel outside the window of output pixel `x` leaves `x0hat(x)` unchanged |
//! | [`check_translation_equivariance`] | `f(shift(phi)) = shift(f(phi))` on the pixels a [`ShiftRule`] names |
//! | [`check_convexity`] | every `x0hat` value lies within the training values of its channel |
//! | [`check_consistency`] | `epshat = (phi_t - a x0hat) / s` and `score = -epshat / s` |
//! | [`check_permutation_invariance`] | reordering the training set changes nothing |
//! | [`check_class_conditioning`] | a class-conditional call equals the machine built on that class alone |
//! | [`check_agreement`] | two score functions give the same `x0hat` |
//!
//! # Measurements
//!
//! [`effective_receptive_field`] finds the smallest window outside which
//! perturbations no longer move an output pixel, and [`equivariance_error`]
//! the largest violation of circular-shift equivariance; both treat the
//! score function as a black box.
//!
//! # Example
//!
//! ```
//! use proptest::prelude::*;
//! use score_machines::equivariance::Boundary;
//! use score_machines::locality::Patch;
//! use score_machines::prelude::*;
//! use score_machines::testing::*;
//!
//! proptest!(ProptestConfig::with_cases(8), |(
//!     (training, x) in training_and_query::<f64>(shapes(1..=1, 3..=6, 3..=6), 1..=4, None, -1.0..=1.0),
//!     t in times(),
//! )| {
//!     let machine = Machine::equivariant_local_zero_padded(training, LegacyCosine, SquarePatch::new(3)?)?;
//!     let query = Query::new(&x, t);
//!     check_locality(&machine, query, &Patch::square(3)?, Boundary::Zero, &Perturbation::default(), 1e-9)?
//!         .into_test_result()?;
//!     check_convexity(&machine, query, machine.training(), 1e-12)?.into_test_result()?;
//! });
//! ```

mod check;
mod measure;
mod strategy;

pub use proptest;

pub use check::{
    Cause, Finding, Identity, Perturbation, Pixel, Property, Query, ShiftRule, Verdict,
    check_agreement, check_class_conditioning, check_consistency, check_convexity, check_locality,
    check_permutation_invariance, check_translation_equivariance,
};
pub use measure::{
    MAX_TRIALS, ReceptiveFieldProbe, effective_receptive_field, effective_receptive_field_with,
    equivariance_error,
};
pub use strategy::{
    SMALLEST_TIME, config, image, images, labelled_training_set, patch_sides, permutations,
    schedules, shapes, shifts, times, times_with_zero, training_and_query, training_set,
    training_sets,
};
