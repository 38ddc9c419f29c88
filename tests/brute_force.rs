//! Every machine against the brute-force reference of `tests/reference`,
//! on seeded random images and on real MNIST digits, in `f64` and `f32`.
//!
//! Agreement is relative: `|got - want| <= tolerance * max(1, |want|)`,
//! with tolerance `1e-9` for machines over `f64` training sets and `1e-4`
//! over `f32` ones (the reference then works on the same `f32` values
//! widened to `f64`). See `docs/precision.md`.

mod reference;

use std::collections::BTreeMap;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use score_machines::prelude::*;

use reference::{Output, Problem, Rule};

/// Relative tolerance for machines over `f64` training sets.
const TOLERANCE_F64: f64 = 1e-9;
/// Relative tolerance for machines over `f32` training sets.
const TOLERANCE_F32: f64 = 1e-4;
/// Times at which machines are compared with the reference.
const TIMES: [f64; 5] = [0.1, 0.3, 0.5, 0.7, 0.95];

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Ideal,
    Equivariant,
    Local,
    EquivariantLocal,
    EquivariantLocalPeriodic,
    EquivariantLocalZeroPadded,
}

const KINDS: [Kind; 6] = [
    Kind::Ideal,
    Kind::Equivariant,
    Kind::Local,
    Kind::EquivariantLocal,
    Kind::EquivariantLocalPeriodic,
    Kind::EquivariantLocalZeroPadded,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Ideal => "IS",
            Kind::Equivariant => "ES",
            Kind::Local => "LS",
            Kind::EquivariantLocal => "ELS",
            Kind::EquivariantLocalPeriodic => "ELS periodic",
            Kind::EquivariantLocalZeroPadded => "bbELS",
        }
    }

    /// Whether the machine has a patch side (IS and ES see the whole image).
    fn has_patch(self) -> bool {
        !matches!(self, Kind::Ideal | Kind::Equivariant)
    }
}

/// Builds the machine of `kind` (patch side `side` where it has one) and
/// evaluates `$body` with it bound to `$machine`.
macro_rules! with_machine {
    ($kind:expr, $training:expr, $side:expr, |$machine:ident| $body:expr) => {{
        let training = $training;
        let patch = SquarePatch::new($side).expect("odd patch side");
        match $kind {
            Kind::Ideal => {
                let $machine = Machine::ideal(training, LegacyCosine).unwrap();
                $body
            }
            Kind::Equivariant => {
                let $machine = Machine::equivariant(training, LegacyCosine).unwrap();
                $body
            }
            Kind::Local => {
                let $machine = Machine::local(training, LegacyCosine, patch).unwrap();
                $body
            }
            Kind::EquivariantLocal => {
                let $machine = Machine::equivariant_local(training, LegacyCosine, patch).unwrap();
                $body
            }
            Kind::EquivariantLocalPeriodic => {
                let $machine =
                    Machine::equivariant_local_periodic(training, LegacyCosine, patch).unwrap();
                $body
            }
            Kind::EquivariantLocalZeroPadded => {
                let $machine =
                    Machine::equivariant_local_zero_padded(training, LegacyCosine, patch).unwrap();
                $body
            }
        }
    }};
}

fn machine_x0_hat<T: Real>(
    kind: Kind,
    training: &TrainingSet<T>,
    side: usize,
    x: &Image<T>,
    t: f64,
    class: Option<usize>,
) -> Result<Vec<f64>, Error> {
    with_machine!(kind, training.clone(), side, |machine| machine
        .x0_hat(x, t, class)
        .map(|image| image.as_slice().iter().map(|v| v.widen()).collect()))
}

fn reference_output(kind: Kind, problem: &Problem, side: usize, rule: Rule) -> Option<Output> {
    match kind {
        Kind::Ideal => Some(reference::ideal(problem, rule)),
        Kind::Equivariant => Some(reference::equivariant(problem, rule)),
        Kind::Local => Some(reference::local(problem, side, rule)),
        Kind::EquivariantLocal => reference::equivariant_local(problem, side, rule),
        Kind::EquivariantLocalPeriodic => {
            Some(reference::equivariant_local_periodic(problem, side, rule))
        }
        Kind::EquivariantLocalZeroPadded => Some(reference::equivariant_local_zero_padded(
            problem, side, rule,
        )),
    }
}

/// The relative error `|got - want| / max(1, |want|)`; two values agree to
/// tolerance `tol` when it is at most `tol`.
fn relative_error(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1.0)
}

/// The worst relative error of each comparison group, and every case that
/// broke its tolerance.
#[derive(Default)]
struct Tally {
    worst: BTreeMap<String, (f64, String)>,
    failures: Vec<String>,
    comparisons: usize,
}

impl Tally {
    /// Compares `got` with `want` value by value under `tolerance`,
    /// recording the worst case under `group`.
    fn compare(&mut self, group: &str, case: &str, got: &[f64], want: &[f64], tolerance: f64) {
        assert_eq!(got.len(), want.len(), "{case}: lengths differ");
        self.comparisons += 1;
        let (mut worst, mut at) = (0.0_f64, 0);
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            let error = relative_error(*g, *w);
            if error.is_nan() || error > worst {
                (worst, at) = (error, i);
            }
        }
        let detail = format!(
            "{case}: worst relative error {worst:.3e} at value {at}: got {:.17e}, want {:.17e}",
            got[at], want[at]
        );
        if worst.is_nan() || worst > tolerance {
            self.failures
                .push(format!("{detail} (tolerance {tolerance:.0e})"));
        }
        let entry = self
            .worst
            .entry(group.to_string())
            .or_insert((0.0, String::new()));
        if worst.is_nan() || worst > entry.0 || entry.1.is_empty() {
            *entry = (worst, detail);
        }
    }

    fn fail(&mut self, message: String) {
        self.failures.push(message);
    }

    /// Prints the worst case of each group and panics if any case failed.
    fn finish(self, title: &str) {
        println!("{title}: {} comparisons", self.comparisons);
        for (group, (worst, detail)) in &self.worst {
            println!("  {group:<20} worst {worst:.3e}  ({detail})");
        }
        assert!(
            self.failures.is_empty(),
            "{title}: {} failures:\n{}",
            self.failures.len(),
            self.failures.join("\n")
        );
    }
}

/// `phi_t = a x0 + s eta` with seeded standard normal `eta`.
fn noised(x0: &[f64], t: f64, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (a, s) = (LegacyCosine.signal(t), LegacyCosine.noise(t));
    x0.iter()
        .map(|v| {
            let eta: f64 = rng.sample(StandardNormal);
            a * v + s * eta
        })
        .collect()
}

fn uniform_values(count: usize, rng: &mut ChaCha8Rng) -> Vec<f64> {
    (0..count).map(|_| rng.random_range(-1.0..1.0)).collect()
}

fn narrowed<T: Real>(values: &[f64]) -> Vec<T> {
    values.iter().map(|&v| T::narrow(v)).collect()
}

/// Compares every machine in `kinds` (each patch machine at every side in
/// `sides`) with the reference for one query at time `t`.
#[allow(clippy::too_many_arguments)]
fn compare_all<T: Real>(
    tally: &mut Tally,
    label: &str,
    training: &TrainingSet<T>,
    query: &Image<T>,
    t: f64,
    kinds: &[Kind],
    sides: &[usize],
    tolerance: f64,
) {
    let problem = Problem::new(training, query, &LegacyCosine, t);
    for &kind in kinds {
        let kind_sides: &[usize] = if kind.has_patch() { sides } else { &[1] };
        for &side in kind_sides {
            let case = if kind.has_patch() {
                format!("{} {} {label} t={t} k={side}", kind.name(), T::NAME)
            } else {
                format!("{} {} {label} t={t}", kind.name(), T::NAME)
            };
            let group = format!("{} {}", kind.name(), T::NAME);
            let want = reference_output(kind, &problem, side, Rule::Softmax);
            let got = machine_x0_hat(kind, training, side, query, t, None);
            match (want, got) {
                (Some(want), Ok(got)) => {
                    tally.compare(&group, &case, &got, &want.x0_hat, tolerance)
                }
                (None, Err(Error::NoCandidates(_))) => {}
                (None, Ok(_)) => tally.fail(format!(
                    "{case}: the reference has no candidate but the machine returned an image"
                )),
                (None, Err(e)) => tally.fail(format!(
                    "{case}: the reference has no candidate; expected Error::NoCandidates, got {e}"
                )),
                (Some(_), Err(e)) => tally.fail(format!("{case}: the machine failed: {e}")),
            }
        }
    }
}

/// A seeded random configuration: `count` training images of `shape`
/// with values uniform in `[-1, 1)`, and two clean query sources (a noised
/// training image and a fresh random image).
struct RandomCase {
    label: String,
    shape: Shape,
    training: Vec<f64>,
    sources: [Vec<f64>; 2],
}

fn random_case(
    channels: usize,
    height: usize,
    width: usize,
    count: usize,
    seed: u64,
) -> RandomCase {
    let shape = Shape::new(channels, height, width).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let training = uniform_values(count * shape.len(), &mut rng);
    let fresh = uniform_values(shape.len(), &mut rng);
    let first = training[..shape.len()].to_vec();
    RandomCase {
        label: format!("random {shape} N={count}"),
        shape,
        training,
        sources: [first, fresh],
    }
}

fn random_cases() -> Vec<RandomCase> {
    vec![
        random_case(1, 7, 9, 8, 1),
        random_case(3, 7, 9, 5, 2),
        random_case(1, 8, 8, 12, 3),
        random_case(3, 9, 6, 6, 4),
        random_case(2, 1, 11, 5, 9),
        random_case(1, 4, 1, 7, 10),
        // Enough images for the fast kernel to put eight training images
        // in its vector lanes, with and without a partial last group.
        random_case(1, 7, 9, 40, 11),
        random_case(3, 6, 7, 35, 12),
    ]
}

/// The patch sides used on an image of this shape: 1, 3, 5, 9 and the
/// smallest odd side larger than the image.
fn sides_for(shape: Shape) -> Vec<usize> {
    let larger = (shape.height.max(shape.width) + 1) | 1;
    vec![1, 3, 5, 9, larger]
}

fn random_images_agree<T: Real>(tolerance: f64) {
    let mut tally = Tally::default();
    for case in random_cases() {
        let training = TrainingSet::new(case.shape, narrowed::<T>(&case.training), None).unwrap();
        let sides = sides_for(case.shape);
        for (q, source) in case.sources.iter().enumerate() {
            for (i, &t) in TIMES.iter().enumerate() {
                let x = Image::from_vec(case.shape, narrowed(&noised(source, t, 100 + i as u64)))
                    .unwrap();
                let label = format!("{} query {q}", case.label);
                compare_all(
                    &mut tally, &label, &training, &x, t, &KINDS, &sides, tolerance,
                );
            }
        }
    }
    tally.finish(&format!("random images, {}", T::NAME));
}

#[test]
fn random_images_f64_agree_with_reference() {
    random_images_agree::<f64>(TOLERANCE_F64);
}

#[test]
fn random_images_f32_agree_with_reference() {
    random_images_agree::<f32>(TOLERANCE_F32);
}

/// Zero-padded windows one line short of the image along one or both
/// axes (`k = H - 1`), where bbELS compares each output pixel with
/// candidates at most one pixel away and the `f32` machine takes one pass
/// per training image: with a partial group of eight images, with whole
/// and partial groups, and on a rectangular image whose columns fit the
/// window whole.
fn windows_one_line_short_agree<T: Real>(tolerance: f64) {
    let mut tally = Tally::default();
    let cases = [
        (random_case(1, 10, 10, 5, 21), 9),
        (random_case(1, 10, 10, 44, 22), 9),
        (random_case(1, 12, 9, 19, 23), 11),
        (random_case(1, 6, 6, 16, 24), 5),
    ];
    for (case, side) in cases {
        let training = TrainingSet::new(case.shape, narrowed::<T>(&case.training), None).unwrap();
        for (q, source) in case.sources.iter().enumerate() {
            for (i, &t) in TIMES.iter().enumerate() {
                let x = Image::from_vec(case.shape, narrowed(&noised(source, t, 400 + i as u64)))
                    .unwrap();
                let label = format!("{} query {q}", case.label);
                compare_all(
                    &mut tally,
                    &label,
                    &training,
                    &x,
                    t,
                    &[Kind::EquivariantLocalZeroPadded],
                    &[side],
                    tolerance,
                );
            }
        }
    }
    tally.finish(&format!("windows one line short, {}", T::NAME));
}

#[test]
fn windows_one_line_short_agree_with_reference() {
    windows_one_line_short_agree::<f64>(TOLERANCE_F64);
    windows_one_line_short_agree::<f32>(TOLERANCE_F32);
}

/// Number of MNIST training digits (test rows `0..N`).
const MNIST_TRAINING: usize = 20;
/// Held-out digits noised into queries.
const MNIST_QUERY_ROWS: [usize; 2] = [1000, 1001];

/// One comparison on MNIST: time, patch side, which query digit, which
/// machines.
struct MnistCase {
    t: f64,
    side: usize,
    query: usize,
    kinds: &'static [Kind],
}

const fn mnist_case(t: f64, side: usize, query: usize, kinds: &'static [Kind]) -> MnistCase {
    MnistCase {
        t,
        side,
        query,
        kinds,
    }
}

use Kind::{
    Equivariant as Es, EquivariantLocal as Els, EquivariantLocalPeriodic as ElsPeriodic,
    EquivariantLocalZeroPadded as BbEls, Ideal as Is, Local as Ls,
};

/// The reference costs about `N * 784 * candidates * k^2` on a 28x28 digit,
/// so MNIST gets a selection: every time, every side (31 is larger than
/// the image, where the reference ELS has no candidate; at 27 the `f32`
/// ELS computes its cross terms by Fourier transforms), every machine,
/// both query digits; the small random images take every combination.
const MNIST_CASES: [MnistCase; 8] = [
    mnist_case(0.3, 27, 0, &[Els, BbEls]),
    mnist_case(0.9, 23, 1, &[Els]),
    mnist_case(0.1, 3, 0, &[Is, Ls, Els, ElsPeriodic, BbEls]),
    mnist_case(0.3, 5, 1, &[Is, Ls, Els, BbEls]),
    mnist_case(0.5, 9, 0, &[Is, Es, Ls, Els, BbEls]),
    mnist_case(0.7, 1, 1, &[Is, Ls, Els]),
    mnist_case(0.95, 3, 0, &[Is, Ls, ElsPeriodic, BbEls]),
    mnist_case(0.5, 31, 1, &[Is, Ls, Els, BbEls]),
];

fn mnist_agree<T: Real>(tolerance: f64, cases: &[MnistCase]) {
    let Some(path) = reference::data_file("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let (rows, cols, digits) = reference::idx::read_images(&path, MNIST_QUERY_ROWS[1] + 1);
    let shape = Shape::new(1, rows, cols).unwrap();
    let pixels: Vec<f64> = digits[..MNIST_TRAINING].concat();
    let training = TrainingSet::new(shape, narrowed::<T>(&pixels), None).unwrap();
    let mut tally = Tally::default();
    for (i, case) in cases.iter().enumerate() {
        let row = MNIST_QUERY_ROWS[case.query];
        let x = Image::from_vec(
            shape,
            narrowed(&noised(&digits[row], case.t, 200 + i as u64)),
        )
        .unwrap();
        let label = format!("MNIST N={MNIST_TRAINING} digit {row}");
        compare_all(
            &mut tally,
            &label,
            &training,
            &x,
            case.t,
            case.kinds,
            &[case.side],
            tolerance,
        );
    }
    tally.finish(&format!("MNIST digits, {}", T::NAME));
}

/// One huge pixel among values in `[-1, 1]`, in the training set or in the
/// query: sliding window sums would carry its rounding error into the
/// distances of every later window of its row and column, so the machines
/// sum such distances directly and every output agrees with the
/// reference, in `f64` and `f32`, with column lanes (9 or 12 images) and
/// image lanes (40).
#[test]
fn one_outlier_pixel_spoils_no_other_distance() {
    let mut tally = Tally::default();
    for count in [9, 40] {
        let case = random_case(1, 6, 12, count, 13);
        let mut pixels = case.training.clone();
        pixels[3] = 1e6;
        for (i, t) in [0.01, 0.3].into_iter().enumerate() {
            let source = &case.training[20 % count * case.shape.len()..][..case.shape.len()];
            let query = noised(source, t, 600 + i as u64);
            let label = format!("outlier N={count}");
            compare_outlier_case(
                &mut tally,
                &label,
                case.shape,
                &pixels,
                &query,
                t,
                TOLERANCE_F64,
            );
        }
    }
    // A huge pixel in the query instead, at magnitudes where sliding sums
    // would still pass the `f32` tolerance but not the `f64` one.
    let case = random_case(1, 6, 12, 12, 14);
    for outlier in [3e3, 3e4, 1e6] {
        for (i, t) in [0.1, 0.3, 0.9].into_iter().enumerate() {
            let mut query = noised(&case.sources[0], t, 700 + i as u64);
            query[14] = outlier;
            let label = format!("query outlier {outlier:e}");
            // Every ES window holds the outlier: its distances near
            // `outlier^2` are known to `eps outlier^2` in any summation
            // order, which moves `beta d` by about `1e-9` at `3e3`.
            compare_outlier_case(
                &mut tally,
                &label,
                case.shape,
                &case.training,
                &query,
                t,
                1e-8,
            );
        }
    }
    tally.finish("one outlier pixel");
}

/// Every machine over `training` in `f64` and `f32`, sides 1, 3 and 5,
/// against the reference at `query`; ES in `f64` with `es_tolerance`.
fn compare_outlier_case(
    tally: &mut Tally,
    label: &str,
    shape: Shape,
    training: &[f64],
    query: &[f64],
    t: f64,
    es_tolerance: f64,
) {
    let sides = [1, 3, 5];
    let wide = TrainingSet::new(shape, training.to_vec(), None).unwrap();
    let x = Image::from_vec(shape, query.to_vec()).unwrap();
    let local = [Is, Ls, Els, ElsPeriodic, BbEls];
    compare_all(tally, label, &wide, &x, t, &local, &sides, TOLERANCE_F64);
    compare_all(tally, label, &wide, &x, t, &[Es], &sides, es_tolerance);
    let narrow = TrainingSet::new(shape, narrowed::<f32>(training), None).unwrap();
    let x = Image::from_vec(shape, narrowed::<f32>(query)).unwrap();
    compare_all(tally, label, &narrow, &x, t, &KINDS, &sides, TOLERANCE_F32);
}

/// Pixel values far from zero (raw intensities near 230) are where
/// expanding `d = Q + A - 2C` cancels most. Training images that differ
/// from one shared image by at most 0.01 keep the softmax spread over many
/// of them at small `t`, where each evaluation moves from the expansion to
/// sums of squared residuals and then to direct sums as the rounding bounds
/// of the first two pass their limit (near `t = 0.014` and `t = 0.007` for
/// `k = 7` here). Across those limits every machine agrees with the
/// reference on the deviations from the shared offset (worst 1.7e-5, the
/// `f32` rounding of outputs near 230); an expansion accumulated in `f32`
/// fails here by 1e-3 to 5e-3.
#[test]
fn offset_pixels_agree_across_the_rounding_limits() {
    const OFFSET: f64 = 230.0;
    let mut tally = Tally::default();
    let case = random_case(1, 10, 12, 40, 15);
    let len = case.shape.len();
    let shared: Vec<f64> = case.sources[1].iter().map(|v| OFFSET + 20.0 * v).collect();
    // Values that `f32` holds exactly, so that the machines over `f32`
    // differ from the reference by their arithmetic alone.
    let exact = |v: f64| v as f32 as f64;
    let training: Vec<f64> = case
        .training
        .iter()
        .enumerate()
        .map(|(i, v)| exact(shared[i % len] + 0.01 * v))
        .collect();
    let deviation = |values: &[f64]| -> Vec<f64> { values.iter().map(|v| v - OFFSET).collect() };
    for (i, t) in [0.005, 0.01, 0.02, 0.1].into_iter().enumerate() {
        let query: Vec<f64> = noised(&training[7 * len..8 * len], t, 800 + i as u64)
            .into_iter()
            .map(exact)
            .collect();
        let wide = TrainingSet::new(case.shape, training.clone(), None).unwrap();
        let narrow = TrainingSet::new(case.shape, narrowed::<f32>(&training), None).unwrap();
        let x_wide = Image::from_vec(case.shape, query.clone()).unwrap();
        let x_narrow = Image::from_vec(case.shape, narrowed::<f32>(&query)).unwrap();
        let problem = Problem::new(&wide, &x_wide, &LegacyCosine, t);
        for kind in [Ls, Els, ElsPeriodic, BbEls] {
            for side in [3, 7] {
                let case = format!("{} offset pixels t={t} k={side}", kind.name());
                let want = reference_output(kind, &problem, side, Rule::Softmax)
                    .expect("candidates")
                    .x0_hat;
                let wide = machine_x0_hat(kind, &wide, side, &x_wide, t, None).unwrap();
                let narrow = machine_x0_hat(kind, &narrow, side, &x_narrow, t, None).unwrap();
                let want = deviation(&want);
                let group = format!("{} offset", kind.name());
                tally.compare(&group, &case, &deviation(&wide), &want, TOLERANCE_F64);
                tally.compare(&group, &case, &deviation(&narrow), &want, TOLERANCE_F32);
            }
        }
    }
    tally.finish("offset pixels across the rounding limits");
}

/// With many training images the `f32` kernel puts eight of them in its
/// vector lanes and folds its sums every few groups; on 600 MNIST digits
/// it agrees with the `f64` kernel (itself checked against the reference
/// above) at small and large `t` and every kind of patch machine.
#[test]
fn mnist_f32_image_lanes_agree_with_f64_kernel() {
    let Some(path) = reference::data_file("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    const TRAINING: usize = 600;
    let (rows, cols, digits) = reference::idx::read_images(&path, MNIST_QUERY_ROWS[1] + 1);
    let shape = Shape::new(1, rows, cols).unwrap();
    let pixels: Vec<f64> = digits[..TRAINING].concat();
    let wide = TrainingSet::new(shape, pixels.clone(), None).unwrap();
    let narrow = TrainingSet::new(shape, narrowed::<f32>(&pixels), None).unwrap();
    let cases = [
        (0.05, 15, 0, Els),
        (0.3, 7, 1, BbEls),
        (0.6, 27, 0, ElsPeriodic),
        (0.9, 7, 1, Els),
        (0.2, 27, 1, BbEls),
        // Cross terms by Fourier transforms (windows of 25 and 27); at 23
        // the lanes, their displacements wrapping around the query.
        (0.05, 27, 1, Els),
        (0.5, 25, 0, Els),
        (0.5, 23, 0, Els),
    ];
    let mut tally = Tally::default();
    for (i, (t, side, query, kind)) in cases.into_iter().enumerate() {
        let clean = &digits[MNIST_QUERY_ROWS[query]];
        let noisy = noised(clean, t, 300 + i as u64);
        let x_wide = Image::from_vec(shape, noisy.clone()).unwrap();
        let x_narrow = Image::from_vec(shape, narrowed::<f32>(&noisy)).unwrap();
        let want = machine_x0_hat(kind, &wide, side, &x_wide, t, None).unwrap();
        let got = machine_x0_hat(kind, &narrow, side, &x_narrow, t, None).unwrap();
        let case = format!("{} N={TRAINING} t={t} k={side}", kind.name());
        tally.compare(kind.name(), &case, &got, &want, TOLERANCE_F32);
    }
    tally.finish("MNIST, f32 lanes against the f64 kernel");
}

#[test]
fn mnist_digits_f64_agree_with_reference() {
    mnist_agree::<f64>(TOLERANCE_F64, &MNIST_CASES);
}

#[test]
fn mnist_digits_f32_agree_with_reference() {
    mnist_agree::<f32>(
        TOLERANCE_F32,
        &[
            mnist_case(0.3, 3, 1, &[Is, Ls, Els, ElsPeriodic, BbEls]),
            mnist_case(0.7, 5, 0, &[Is, Ls, Els, BbEls]),
            // Very low noise (beta near 4000): the reference distance is
            // lowered often and most candidates are negligible.
            mnist_case(0.02, 3, 0, &[Is, Ls, Els, BbEls]),
            // Pure noise: every candidate carries weight.
            mnist_case(1.0, 9, 1, &[Ls, Els, BbEls]),
            // Single pixels: 15,680 candidates per pixel, a few hundred
            // distinct values, each compared once.
            mnist_case(0.4, 1, 1, &[Els, ElsPeriodic, BbEls]),
            // Cross terms by Fourier transforms, at low and high noise.
            mnist_case(0.05, 27, 1, &[Els]),
            mnist_case(0.8, 25, 0, &[Els]),
            // Zero-padded windows one line short: one pass per image.
            mnist_case(0.3, 27, 0, &[BbEls]),
            mnist_case(0.9, 27, 1, &[BbEls]),
        ],
    );
}

fn labelled_case() -> (TrainingSet<f64>, Image<f64>) {
    let case = random_case(3, 7, 9, 10, 5);
    let labels = (0..10).map(|i| i % 3).collect();
    let training = TrainingSet::new(case.shape, case.training, Some(labels)).unwrap();
    let x = Image::from_vec(case.shape, noised(&case.sources[1], 0.5, 300)).unwrap();
    (training, x)
}

#[test]
fn class_conditioning_equals_the_class_alone() {
    let (training, x) = labelled_case();
    let t = 0.5;
    let problem = Problem::new(&training, &x, &LegacyCosine, t);
    let mut tally = Tally::default();
    for class in 0..3 {
        let alone = training.class(class).unwrap();
        let restricted = problem.restricted_to_class(class).unwrap();
        assert_eq!(restricted.training.len(), alone.len());
        for kind in KINDS {
            for side in [3, 5] {
                let case = format!("{} class {class} k={side}", kind.name());
                let conditioned =
                    machine_x0_hat(kind, &training, side, &x, t, Some(class)).unwrap();
                let separate = machine_x0_hat(kind, &alone, side, &x, t, None).unwrap();
                tally.compare(
                    "machine vs class alone",
                    &case,
                    &conditioned,
                    &separate,
                    1e-12,
                );
                let want = reference_output(kind, &restricted, side, Rule::Softmax).unwrap();
                tally.compare(
                    "machine vs reference",
                    &case,
                    &conditioned,
                    &want.x0_hat,
                    TOLERANCE_F64,
                );
            }
        }
    }
    assert!(matches!(
        machine_x0_hat(Kind::Local, &training, 3, &x, t, Some(7)),
        Err(Error::UnknownClass(7))
    ));
    tally.finish("class conditioning");
}

/// Merges the posteriors of `kind` over two shards and compares them with
/// the machine over `whole`.
#[allow(clippy::too_many_arguments)]
fn compare_shards<T: Real>(
    tally: &mut Tally,
    kind: Kind,
    [first, rest]: [&TrainingSet<T>; 2],
    whole: &TrainingSet<T>,
    side: usize,
    x: &Image<T>,
    t: f64,
    tolerance: f64,
) {
    let case = format!("{} t={t} k={side}", kind.name());
    let mut merged = with_machine!(kind, first.clone(), side, |m| m.posterior(x, t, None)).unwrap();
    let second = with_machine!(kind, rest.clone(), side, |m| m.posterior(x, t, None)).unwrap();
    merged.merge(&second).unwrap();
    let merged: Image<f64> = merged.to_image().unwrap();
    let single = machine_x0_hat(kind, whole, side, x, t, None).unwrap();
    tally.compare(kind.name(), &case, merged.as_slice(), &single, tolerance);
}

#[test]
fn merged_shards_equal_the_whole_set() {
    let case = random_case(3, 7, 9, 9, 6);
    let whole = TrainingSet::new(case.shape, case.training, None).unwrap();
    let first = whole.select(&[0, 1, 2, 3]).unwrap();
    let rest = whole.select(&[4, 5, 6, 7, 8]).unwrap();
    let mut tally = Tally::default();
    for &t in &[0.1, 0.5, 0.95] {
        let x = Image::from_vec(case.shape, noised(&case.sources[1], t, 400)).unwrap();
        for kind in KINDS {
            for side in [3, 5] {
                let shards = [&first, &rest];
                compare_shards(&mut tally, kind, shards, &whole, side, &x, t, 1e-12);
            }
        }
    }
    tally.finish("merged shards");
}

#[test]
fn time_zero_gives_the_nearest_candidate_centres() {
    let mut tally = Tally::default();
    for case in [random_case(1, 7, 9, 8, 7), random_case(3, 6, 5, 5, 8)] {
        let training = TrainingSet::new(case.shape, case.training.clone(), None).unwrap();
        // At t = 0, a = 1 and s = 0: the query is a clean image, here one
        // that is not in the training set.
        let x = Image::from_vec(case.shape, case.sources[1].clone()).unwrap();
        let problem = Problem::new(&training, &x, &LegacyCosine, 0.0);
        assert_eq!((problem.signal, problem.noise), (1.0, 0.0));
        for kind in KINDS {
            let sides: &[usize] = if kind.has_patch() {
                &[1, 3, 5, 7]
            } else {
                &[1]
            };
            for &side in sides {
                let label = format!("{} {} k={side}", kind.name(), case.label);
                let got = machine_x0_hat(kind, &training, side, &x, 0.0, None);
                match reference_output(kind, &problem, side, Rule::Nearest) {
                    Some(want) => {
                        assert!(
                            want.smallest_gap > 1e-9,
                            "{label}: near tie ({:e}) in the test data",
                            want.smallest_gap
                        );
                        let got = got.unwrap_or_else(|e| panic!("{label}: {e}"));
                        // The nearest centre exactly, not merely close.
                        tally.compare(kind.name(), &label, &got, &want.x0_hat, 0.0);
                    }
                    None => assert!(
                        matches!(got, Err(Error::NoCandidates(_))),
                        "{label}: expected Error::NoCandidates, got {got:?}"
                    ),
                }
            }
        }
    }
    tally.finish("t = 0, nearest candidate");
}

/// The softmax neither overflows nor underflows at any pixel scale: images
/// scaled by `1e-6` and `1e3` agree with the reference, compared after
/// dividing by the scale so that the tolerance stays relative.
#[test]
fn extreme_pixel_scales_agree_with_reference() {
    let mut tally = Tally::default();
    for scale in [1e-6, 1e3] {
        let case = random_case(3, 7, 9, 6, 11);
        let pixels: Vec<f64> = case.training.iter().map(|v| v * scale).collect();
        let training = TrainingSet::new(case.shape, pixels, None).unwrap();
        for t in [0.1, 0.5, 0.95] {
            let source: Vec<f64> = case.sources[1].iter().map(|v| v * scale).collect();
            let x = Image::from_vec(case.shape, noised(&source, t, 500)).unwrap();
            let problem = Problem::new(&training, &x, &LegacyCosine, t);
            for kind in KINDS {
                for side in [1, 3, 5] {
                    let case = format!("{} scale {scale:e} t={t} k={side}", kind.name());
                    let unscale = |values: Vec<f64>| -> Vec<f64> {
                        values.iter().map(|v| v / scale).collect()
                    };
                    let got = machine_x0_hat(kind, &training, side, &x, t, None).unwrap();
                    let want = reference_output(kind, &problem, side, Rule::Softmax).unwrap();
                    let group = format!("{} scale {scale:e}", kind.name());
                    tally.compare(
                        &group,
                        &case,
                        &unscale(got),
                        &unscale(want.x0_hat),
                        TOLERANCE_F64,
                    );
                }
            }
        }
    }
    tally.finish("extreme pixel scales");
}

/// The `f32` kernels (image lanes, repeated windows) on two shards of 200
/// MNIST digits, merged, give the whole set's prediction to `1e-5`: the
/// merge is exact, but the shards group their `f32` lane sums differently
/// (measured: `1.3e-6`).
#[test]
fn merged_f32_shards_of_mnist_equal_the_whole_set() {
    let Some(path) = reference::data_file("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let (rows, cols, digits) = reference::idx::read_images(&path, 201);
    let shape = Shape::new(1, rows, cols).unwrap();
    let pixels: Vec<f64> = digits[..200].concat();
    let whole = TrainingSet::new(shape, narrowed::<f32>(&pixels), None).unwrap();
    let first = whole.select(&(0..90).collect::<Vec<_>>()).unwrap();
    let rest = whole.select(&(90..200).collect::<Vec<_>>()).unwrap();
    let mut tally = Tally::default();
    for (i, &t) in [0.2, 0.5, 0.8].iter().enumerate() {
        let x = Image::from_vec(shape, narrowed(&noised(&digits[200], t, 500 + i as u64))).unwrap();
        for kind in [
            Kind::Local,
            Kind::EquivariantLocal,
            Kind::EquivariantLocalZeroPadded,
        ] {
            for side in [3, 7, 15] {
                let shards = [&first, &rest];
                compare_shards(&mut tally, kind, shards, &whole, side, &x, t, 1e-5);
            }
        }
    }
    tally.finish("merged f32 shards of MNIST");
}
