//! Proptest strategies for the inputs of score functions.
//!
//! Every strategy shrinks towards the simplest input: shapes towards one
//! channel and one pixel, pixel values towards 0 (or the range bound
//! nearest to 0), training sets towards one image, times towards
//! [`SMALLEST_TIME`], patch sides towards 1, shifts towards `(0, 0)` and
//! schedules towards [`LegacyCosine`].

use std::ops::RangeInclusive;
use std::sync::Arc;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::Config;

use crate::image::{Image, Shape};
use crate::real::Real;
use crate::schedule::{
    Cosine, Exponential, LegacyCosine, LinearBeta, NoiseSchedule, VarianceExploding,
};
use crate::training::TrainingSet;

/// The smallest time [`times`] draws: `1e-3`.
///
/// Near `t = 0` the noise scale `s(t)` vanishes, so `epshat` and the score
/// are differences of nearly equal numbers divided by `s`; at `1e-3` the
/// schedules of [`schedules`] keep `s >= 1.5e-3`, where those identities
/// still hold to about 12 digits in `f64`.
pub const SMALLEST_TIME: f64 = 1e-3;

/// A proptest configuration that runs `cases` cases, unless the
/// `PROPTEST_CASES` environment variable asks for another number.
///
/// [`Config::with_cases`] ignores the variable; this one lets a slow,
/// thorough run (`PROPTEST_CASES=5000 cargo test`) reuse tests written with
/// a small default.
pub fn config(cases: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(cases);
    Config {
        cases,
        ..Config::default()
    }
}

fn check_range(what: &str, range: &RangeInclusive<usize>, least: usize) {
    assert!(
        range.start() <= range.end() && *range.start() >= least,
        "{what} range {range:?} must be non-empty and start at {least} or more"
    );
}

fn check_values(range: &RangeInclusive<f64>) {
    assert!(
        range.start().is_finite() && range.end().is_finite() && range.start() <= range.end(),
        "pixel range {range:?} must be finite and non-empty"
    );
}

/// Image shapes with channels, height and width drawn uniformly from the
/// given ranges.
///
/// # Panics
///
/// If a range is empty or starts at 0 (a programmer error in the test).
///
/// # Example
///
/// ```
/// use proptest::strategy::{Strategy, ValueTree};
/// use proptest::test_runner::TestRunner;
/// use score_machines::testing::shapes;
///
/// let mut runner = TestRunner::deterministic();
/// let shape = shapes(1..=3, 2..=8, 2..=8).new_tree(&mut runner).unwrap().current();
/// assert!((1..=3).contains(&shape.channels) && (2..=8).contains(&shape.height));
/// ```
pub fn shapes(
    channels: RangeInclusive<usize>,
    height: RangeInclusive<usize>,
    width: RangeInclusive<usize>,
) -> impl Strategy<Value = Shape> + Clone {
    check_range("channel", &channels, 1);
    check_range("height", &height, 1);
    check_range("width", &width, 1);
    (channels, height, width).prop_map(|(c, h, w)| Shape::new(c, h, w).expect("dimensions >= 1"))
}

fn pixels<T: Real>(range: RangeInclusive<f64>) -> impl Strategy<Value = T> + Clone {
    check_values(&range);
    if range.start() == range.end() {
        Just(T::narrow(*range.start())).boxed()
    } else {
        range.prop_map(T::narrow).boxed()
    }
}

/// Images of a fixed shape, every value drawn uniformly from `range` (then
/// rounded to `T`).
///
/// # Panics
///
/// If `range` is empty or not finite.
pub fn image<T: Real>(
    shape: Shape,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = Image<T>> + Clone {
    vec(pixels::<T>(range), shape.len())
        .prop_map(move |data| Image::from_vec(shape, data).expect("length matches shape"))
}

/// Images of a random shape: a shape from `shapes`, then an [`image`] of it.
///
/// # Panics
///
/// If `range` is empty or not finite.
pub fn images<T: Real>(
    shapes: impl Strategy<Value = Shape>,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = Image<T>> {
    check_values(&range);
    shapes.prop_flat_map(move |shape| image::<T>(shape, range.clone()))
}

/// Unlabelled training sets of `shape` with a number of images drawn from
/// `count`, every value drawn uniformly from `range`.
///
/// # Panics
///
/// If `count` is empty or starts at 0, or `range` is empty or not finite.
pub fn training_set<T: Real>(
    shape: Shape,
    count: RangeInclusive<usize>,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = TrainingSet<T>> + Clone {
    check_range("image count", &count, 1);
    vec(image::<T>(shape, range), count).prop_map(|images| {
        TrainingSet::from_images(&images, None).expect("one shape, at least one image")
    })
}

/// Labelled training sets of `shape`: as [`training_set`], each image with
/// a label drawn uniformly from `0 .. classes`. Not every label need
/// occur.
///
/// # Panics
///
/// As [`training_set`], and if `classes` is 0.
pub fn labelled_training_set<T: Real>(
    shape: Shape,
    count: RangeInclusive<usize>,
    classes: usize,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = TrainingSet<T>> + Clone {
    check_range("image count", &count, 1);
    assert!(
        classes >= 1,
        "a labelled training set needs at least one class"
    );
    vec((image::<T>(shape, range), 0..classes), count).prop_map(|pairs| {
        let (images, labels): (Vec<Image<T>>, Vec<usize>) = pairs.into_iter().unzip();
        TrainingSet::from_images(&images, Some(labels)).expect("one shape, one label per image")
    })
}

/// Training sets of a random shape from `shapes`: unlabelled if `classes`
/// is `None`, otherwise labelled with labels in `0 .. classes`.
///
/// # Panics
///
/// As [`labelled_training_set`].
pub fn training_sets<T: Real>(
    shapes: impl Strategy<Value = Shape>,
    count: RangeInclusive<usize>,
    classes: Option<usize>,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = TrainingSet<T>> {
    check_range("image count", &count, 1);
    check_values(&range);
    shapes.prop_flat_map(move |shape| match classes {
        None => training_set::<T>(shape, count.clone(), range.clone()).boxed(),
        Some(classes) => {
            labelled_training_set::<T>(shape, count.clone(), classes, range.clone()).boxed()
        }
    })
}

/// A training set of a random shape and a query image of the same shape,
/// both with values in `range`: the usual input of a machine.
///
/// # Panics
///
/// As [`training_sets`].
pub fn training_and_query<T: Real>(
    shapes: impl Strategy<Value = Shape>,
    count: RangeInclusive<usize>,
    classes: Option<usize>,
    range: RangeInclusive<f64>,
) -> impl Strategy<Value = (TrainingSet<T>, Image<T>)> {
    check_range("image count", &count, 1);
    check_values(&range);
    shapes.prop_flat_map(move |shape| {
        let training = match classes {
            None => training_set::<T>(shape, count.clone(), range.clone()).boxed(),
            Some(classes) => {
                labelled_training_set::<T>(shape, count.clone(), classes, range.clone()).boxed()
            }
        };
        (training, image::<T>(shape, range.clone()))
    })
}

/// Times in `(0, 1]`: with probability 1/8 each the edge cases
/// [`SMALLEST_TIME`] and `1`, otherwise uniform in `[SMALLEST_TIME, 1]`.
/// Shrinks towards [`SMALLEST_TIME`].
pub fn times() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        1 => Just(SMALLEST_TIME),
        1 => Just(1.0),
        6 => SMALLEST_TIME..=1.0,
    ]
}

/// Times in `[0, 1]`: as [`times`], and `t = 0` with probability 1/8.
/// Shrinks towards 0.
///
/// At `t = 0` the noise scale of a variance-preserving schedule is 0, so
/// `epshat` and the score are undefined there and the score functions
/// return [`Error::InvalidTime`](crate::Error::InvalidTime) for them; only
/// `x0hat` exists.
pub fn times_with_zero() -> impl Strategy<Value = f64> + Clone {
    prop_oneof![
        1 => Just(0.0),
        7 => times(),
    ]
}

/// Odd patch sides `1, 3, 5, ..` up to `largest` (rounded down to odd),
/// uniform. Shrinks towards 1.
///
/// # Panics
///
/// If `largest` is 0.
pub fn patch_sides(largest: usize) -> impl Strategy<Value = usize> + Clone {
    assert!(largest >= 1, "the largest patch side must be at least 1");
    (0..=(largest - 1) / 2).prop_map(|half| 2 * half + 1)
}

/// Circular shifts `(rows, cols)` for images of `shape`: `rows` uniform in
/// `-(H - 1) ..= H - 1`, `cols` in `-(W - 1) ..= W - 1`, so that every
/// shift occurs, with both signs. Shrinks towards `(0, 0)`.
pub fn shifts(shape: Shape) -> impl Strategy<Value = (isize, isize)> + Clone {
    let (h, w) = (shape.height as isize, shape.width as isize);
    (-(h - 1)..=h - 1, -(w - 1)..=w - 1)
}

/// The five schedules of [`crate::schedule`] with their default
/// parameters, uniformly: [`LegacyCosine`], [`Cosine`] (offset 0.008),
/// [`LinearBeta`] (1,000 steps, 1e-4 to 0.02), [`Exponential`] (rate 2) and
/// [`VarianceExploding`] (sigma 0.01 to 50). Shrinks towards
/// [`LegacyCosine`].
pub fn schedules() -> impl Strategy<Value = Arc<dyn NoiseSchedule>> + Clone {
    let all: [Arc<dyn NoiseSchedule>; 5] = [
        Arc::new(LegacyCosine),
        Arc::new(Cosine::default()),
        Arc::new(LinearBeta::default()),
        Arc::new(Exponential::default()),
        Arc::new(VarianceExploding::default()),
    ];
    (0..all.len()).prop_map(move |index| Arc::clone(&all[index]))
}

/// Permutations of `0 .. len`, uniform. Shrinks towards the identity.
pub fn permutations(len: usize) -> impl Strategy<Value = Vec<usize>> + Clone {
    Just((0..len).collect::<Vec<usize>>()).prop_shuffle()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    #[test]
    fn patch_sides_are_odd_and_bounded() {
        let mut runner = TestRunner::deterministic();
        for _ in 0..200 {
            let side = patch_sides(8).new_tree(&mut runner).unwrap().current();
            assert!(side % 2 == 1 && side <= 7, "{side}");
        }
    }

    #[test]
    fn times_stay_in_the_unit_interval_and_hit_the_edges() {
        let mut runner = TestRunner::deterministic();
        let drawn: Vec<f64> = (0..400)
            .map(|_| times_with_zero().new_tree(&mut runner).unwrap().current())
            .collect();
        assert!(drawn.iter().all(|t| (0.0..=1.0).contains(t)));
        assert!(drawn.iter().all(|&t| t == 0.0 || t >= SMALLEST_TIME));
        for edge in [0.0, SMALLEST_TIME, 1.0] {
            assert!(drawn.contains(&edge), "edge case {edge} never drawn");
        }
    }

    #[test]
    fn labelled_sets_have_one_label_per_image() {
        let mut runner = TestRunner::deterministic();
        let shape = Shape::new(2, 3, 4).unwrap();
        for _ in 0..50 {
            let set: TrainingSet<f32> = labelled_training_set(shape, 1..=5, 3, -1.0..=1.0)
                .new_tree(&mut runner)
                .unwrap()
                .current();
            let labels = set.labels().unwrap();
            assert_eq!(labels.len(), set.len());
            assert!(labels.iter().all(|&l| l < 3));
            assert!(set.as_slice().iter().all(|v| (-1.0..=1.0).contains(v)));
        }
    }

    #[test]
    fn shifts_cover_both_signs_within_the_shape() {
        let mut runner = TestRunner::deterministic();
        let shape = Shape::new(1, 3, 5).unwrap();
        let drawn: Vec<(isize, isize)> = (0..300)
            .map(|_| shifts(shape).new_tree(&mut runner).unwrap().current())
            .collect();
        assert!(drawn.iter().all(|&(r, c)| r.abs() <= 2 && c.abs() <= 4));
        assert!(drawn.iter().any(|&(r, _)| r < 0) && drawn.iter().any(|&(r, _)| r > 0));
        assert!(drawn.iter().any(|&(_, c)| c < 0) && drawn.iter().any(|&(_, c)| c > 0));
    }

    #[test]
    fn permutations_are_permutations() {
        let mut runner = TestRunner::deterministic();
        for _ in 0..50 {
            let mut p = permutations(6).new_tree(&mut runner).unwrap().current();
            p.sort_unstable();
            assert_eq!(p, vec![0, 1, 2, 3, 4, 5]);
        }
    }
}
