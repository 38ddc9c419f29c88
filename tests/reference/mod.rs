//! Brute-force score machines, written straight from the mathematical
//! contract with plain nested loops in `f64`.
//!
//! Nothing here calls the crate's machines: the crate supplies only the
//! containers (`Image`, `Shape`, `TrainingSet`) and `a(t)`, `s(t)` from a
//! `NoiseSchedule`. Every distance is summed term by term over every channel
//! and window offset, every softmax is an explicit log-sum-exp over the full
//! list of candidates. The code is meant to be obviously right, not fast.
//!
//! For an output pixel `x` and a candidate `(mu, y)`:
//!
//! ```text
//! d(x; mu, y) = sum_c sum_{o in -r..=r x -r..=r} (phi_t(c, x + o) - a phi^mu(c, y + o))^2
//! w           = exp(-d / (2 s^2)) / sum over all candidates of x of the same
//! x0hat(x)    = sum w phi^mu(y)            (all channels of the centre pixel)
//! ```
//!
//! with `r = k / 2`; how `x + o` and `y + o` read outside the image, and
//! which `(mu, y)` are candidates, is what tells the machines apart.

#![allow(dead_code)]

pub mod idx;

use std::path::PathBuf;

use score_machines::schedule::NoiseSchedule;
use score_machines::{Image, Real, Shape, TrainingSet};

/// One evaluation: training images, the noisy query and the schedule's
/// `a = a(t)`, `s = s(t)`, all in `f64`.
#[derive(Clone, Debug)]
pub struct Problem {
    pub shape: Shape,
    pub training: Vec<Vec<f64>>,
    pub labels: Option<Vec<usize>>,
    pub query: Vec<f64>,
    pub signal: f64,
    pub noise: f64,
}

impl Problem {
    /// The problem of evaluating at `phi_t = query`, time `t`, with the
    /// training set and query widened to `f64`.
    pub fn new<T: Real>(
        training: &TrainingSet<T>,
        query: &Image<T>,
        schedule: &dyn NoiseSchedule,
        t: f64,
    ) -> Self {
        assert_eq!(training.shape(), query.shape());
        let widen = |values: &[T]| values.iter().map(|v| v.widen()).collect::<Vec<f64>>();
        Problem {
            shape: training.shape(),
            training: (0..training.len())
                .map(|mu| widen(training.image(mu)))
                .collect(),
            labels: training.labels().map(|l| l.to_vec()),
            query: widen(query.as_slice()),
            signal: schedule.signal(t),
            noise: schedule.noise(t),
        }
    }

    /// The same problem over the training images labelled `class` only
    /// (class conditioning). `None` if no image carries that label.
    pub fn restricted_to_class(&self, class: usize) -> Option<Problem> {
        let labels = self.labels.as_ref()?;
        let mut training = Vec::new();
        for (mu, image) in self.training.iter().enumerate() {
            if labels[mu] == class {
                training.push(image.clone());
            }
        }
        if training.is_empty() {
            return None;
        }
        let count = training.len();
        Some(Problem {
            training,
            labels: Some(vec![class; count]),
            ..self.clone()
        })
    }

    fn index(&self, channel: usize, row: usize, col: usize) -> usize {
        (channel * self.shape.height + row) * self.shape.width + col
    }
}

/// How a window reads a position `(row, col)` that may lie outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reading {
    /// Outside positions hold 0.
    ZeroPadded,
    /// Indices wrap around modulo the image size.
    Wrapped,
    /// The window must lie inside the image: outside positions hold NaN,
    /// which [`patch_distance`] refuses.
    Inside,
}

/// Pixel `(c, row, col)` of `image`, the position possibly outside the
/// image and then read as `how` says.
fn read(problem: &Problem, image: &[f64], c: usize, row: isize, col: isize, how: Reading) -> f64 {
    let (height, width) = (problem.shape.height as isize, problem.shape.width as isize);
    let inside = (0..height).contains(&row) && (0..width).contains(&col);
    match how {
        _ if inside => image[problem.index(c, row as usize, col as usize)],
        Reading::ZeroPadded => 0.0,
        Reading::Wrapped => {
            image[problem.index(
                c,
                row.rem_euclid(height) as usize,
                col.rem_euclid(width) as usize,
            )]
        }
        Reading::Inside => f64::NAN,
    }
}

/// An image copied into a frame `margin` pixels wide on every side, the
/// frame read with [`read`], so that every `k x k` window with
/// `k / 2 <= margin` is a run of plain indices.
struct Framed {
    channels: usize,
    margin: usize,
    height: usize,
    width: usize,
    data: Vec<f64>,
}

impl Framed {
    fn new(problem: &Problem, image: &[f64], margin: usize, how: Reading) -> Self {
        let channels = problem.shape.channels;
        let height = problem.shape.height + 2 * margin;
        let width = problem.shape.width + 2 * margin;
        let mut data = Vec::with_capacity(channels * height * width);
        for c in 0..channels {
            for i in 0..height {
                for j in 0..width {
                    let row = i as isize - margin as isize;
                    let col = j as isize - margin as isize;
                    data.push(read(problem, image, c, row, col, how));
                }
            }
        }
        Framed {
            channels,
            margin,
            height,
            width,
            data,
        }
    }

    /// Row `centre.0 + offset` of channel `c`, columns
    /// `centre.1 - r ..= centre.1 + r`, in image coordinates.
    fn window_row(&self, c: usize, centre: (usize, usize), offset: isize, r: usize) -> &[f64] {
        let row = (centre.0 + self.margin) as isize + offset;
        let first_col = centre.1 + self.margin - r;
        let start = (c * self.height + row as usize) * self.width + first_col;
        &self.data[start..start + 2 * r + 1]
    }
}

/// `sum_c sum_o (phi_t(c, x + o) - a phi^mu(c, y + o))^2` over the `k x k`
/// window, `query` framed as the query window reads and `candidate` as the
/// candidate window reads.
fn patch_distance(
    side: usize,
    signal: f64,
    query: &Framed,
    x: (usize, usize),
    candidate: &Framed,
    y: (usize, usize),
) -> f64 {
    let r = side / 2;
    let mut distance = 0.0;
    for c in 0..query.channels {
        for offset in -(r as isize)..=r as isize {
            let q = query.window_row(c, x, offset, r);
            let p = candidate.window_row(c, y, offset, r);
            for (qv, pv) in q.iter().zip(p) {
                let residual = qv - signal * pv;
                distance += residual * residual;
            }
        }
    }
    assert!(
        distance.is_finite(),
        "a candidate window at {y:?} reads outside the image"
    );
    distance
}

/// The query and every training image, framed for windows of side `side`.
fn frame_all(
    problem: &Problem,
    side: usize,
    query_reading: Reading,
    candidate_reading: Reading,
) -> (Framed, Vec<Framed>) {
    let margin = side / 2;
    let query = Framed::new(problem, &problem.query, margin, query_reading);
    let training = problem
        .training
        .iter()
        .map(|image| Framed::new(problem, image, margin, candidate_reading))
        .collect();
    (query, training)
}

/// How the weights of a candidate list are formed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rule {
    /// `w_j = exp(l_j - max l) / sum_i exp(l_i - max l)`, `l_j = -d_j / (2 s^2)`;
    /// needs `s > 0`.
    Softmax,
    /// The limit `s -> 0`: weight 1 on the nearest candidate, 0 elsewhere.
    Nearest,
}

/// A machine's output: `x0hat`, and over all softmaxes the smallest gap
/// between the nearest and the second-nearest candidate distance (infinite
/// where a softmax had a single candidate), which says whether
/// [`Rule::Nearest`] was well defined.
#[derive(Clone, Debug)]
pub struct Output {
    pub x0_hat: Vec<f64>,
    pub smallest_gap: f64,
}

/// The weights of candidates at distances `distances`: each candidate's
/// weight is `unnormalised[j] / total`.
struct Weights {
    unnormalised: Vec<f64>,
    total: f64,
    /// The gap between the two smallest distances.
    gap: f64,
}

impl Weights {
    /// `sum_j w_j v_j`, normalising once at the end so that equal values
    /// average to exactly that value.
    fn average(&self, values: impl Iterator<Item = f64>) -> f64 {
        let mut sum = 0.0;
        for (u, v) in self.unnormalised.iter().zip(values) {
            sum += u * v;
        }
        sum / self.total
    }
}

fn weights(distances: &[f64], noise: f64, rule: Rule) -> Weights {
    assert!(!distances.is_empty());
    let (mut nearest, mut second) = (f64::INFINITY, f64::INFINITY);
    for &d in distances {
        if d < nearest {
            (nearest, second) = (d, nearest);
        } else if d < second {
            second = d;
        }
    }
    let gap = second - nearest;
    let unnormalised = match rule {
        Rule::Softmax => {
            assert!(noise > 0.0, "the softmax needs s > 0");
            let log_weights: Vec<f64> = distances
                .iter()
                .map(|d| -d / (2.0 * noise * noise))
                .collect();
            let max = log_weights
                .iter()
                .copied()
                .fold(f64::NEG_INFINITY, f64::max);
            log_weights.iter().map(|l| (l - max).exp()).collect()
        }
        Rule::Nearest => {
            let mut best = 0;
            for (j, d) in distances.iter().enumerate() {
                if *d < distances[best] {
                    best = j;
                }
            }
            let mut one_hot = vec![0.0; distances.len()];
            one_hot[best] = 1.0;
            one_hot
        }
    };
    let total = unnormalised.iter().sum();
    Weights {
        unnormalised,
        total,
        gap,
    }
}

/// A softmax over whole images: `x0hat = sum_j w_j image_j`.
fn whole_image_average(problem: &Problem, candidates: &[Vec<f64>], rule: Rule) -> Output {
    let distances: Vec<f64> = candidates
        .iter()
        .map(|image| {
            let mut distance = 0.0;
            for (q, p) in problem.query.iter().zip(image) {
                let residual = q - problem.signal * p;
                distance += residual * residual;
            }
            distance
        })
        .collect();
    let weights = weights(&distances, problem.noise, rule);
    let x0_hat = (0..problem.shape.len())
        .map(|i| weights.average(candidates.iter().map(|image| image[i])))
        .collect();
    Output {
        x0_hat,
        smallest_gap: weights.gap,
    }
}

/// One softmax per output pixel over the candidates `(mu, y, distance)`
/// that `candidates(row, col)` lists; `None` if some pixel has none.
fn per_pixel_average(
    problem: &Problem,
    rule: Rule,
    candidates: impl Fn(usize, usize) -> Vec<(usize, (usize, usize), f64)>,
) -> Option<Output> {
    let shape = problem.shape;
    let mut x0_hat = vec![0.0; shape.len()];
    let mut smallest_gap = f64::INFINITY;
    for row in 0..shape.height {
        for col in 0..shape.width {
            let list = candidates(row, col);
            if list.is_empty() {
                return None;
            }
            let distances: Vec<f64> = list.iter().map(|(_, _, d)| *d).collect();
            let weights = weights(&distances, problem.noise, rule);
            smallest_gap = smallest_gap.min(weights.gap);
            for c in 0..shape.channels {
                let centres = list
                    .iter()
                    .map(|(mu, y, _)| problem.training[*mu][problem.index(c, y.0, y.1)]);
                x0_hat[problem.index(c, row, col)] = weights.average(centres);
            }
        }
    }
    Some(Output {
        x0_hat,
        smallest_gap,
    })
}

/// IS: one softmax over the training images,
/// `d_mu = ||phi_t - a phi^mu||^2`, `x0hat = sum_mu w_mu phi^mu`.
pub fn ideal(problem: &Problem, rule: Rule) -> Output {
    whole_image_average(problem, &problem.training, rule)
}

/// `image` circularly shifted by `(rows, cols)`: pixel `(c, i, j)` of the
/// result is pixel `(c, i - rows, j - cols)`, indices modulo the size.
fn circular_shift(problem: &Problem, image: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let Shape {
        channels,
        height,
        width,
    } = problem.shape;
    let mut shifted = vec![0.0; image.len()];
    for c in 0..channels {
        for i in 0..height {
            for j in 0..width {
                let source_i = (i + height - rows) % height;
                let source_j = (j + width - cols) % width;
                shifted[problem.index(c, i, j)] = image[problem.index(c, source_i, source_j)];
            }
        }
    }
    shifted
}

/// ES: the ideal score over every circular shift of every training image.
pub fn equivariant(problem: &Problem, rule: Rule) -> Output {
    let mut candidates = Vec::new();
    for image in &problem.training {
        for rows in 0..problem.shape.height {
            for cols in 0..problem.shape.width {
                candidates.push(circular_shift(problem, image, rows, cols));
            }
        }
    }
    whole_image_average(problem, &candidates, rule)
}

/// LS: per pixel, every training image at the same location; both windows
/// zero-padded.
pub fn local(problem: &Problem, side: usize, rule: Rule) -> Output {
    let (query, training) = frame_all(problem, side, Reading::ZeroPadded, Reading::ZeroPadded);
    per_pixel_average(problem, rule, |row, col| {
        (0..problem.training.len())
            .map(|mu| {
                let x = (row, col);
                let d = patch_distance(side, problem.signal, &query, x, &training[mu], x);
                (mu, x, d)
            })
            .collect()
    })
    .expect("the local score always has candidates")
}

/// ELS, reference periodic semantics: the query window wraps, the
/// candidates are every window lying wholly inside a training image,
/// centres `r <= y < len - r` on both axes. `None` when there is none.
pub fn equivariant_local(problem: &Problem, side: usize, rule: Rule) -> Option<Output> {
    let r = side / 2;
    let Shape { height, width, .. } = problem.shape;
    let rows: Vec<usize> = (0..height).filter(|&y| r <= y && y + r < height).collect();
    let cols: Vec<usize> = (0..width).filter(|&y| r <= y && y + r < width).collect();
    let (query, training) = frame_all(problem, side, Reading::Wrapped, Reading::Inside);
    per_pixel_average(problem, rule, |row, col| {
        let mut list = Vec::new();
        for (mu, image) in training.iter().enumerate() {
            for &y_row in &rows {
                for &y_col in &cols {
                    let d = patch_distance(
                        side,
                        problem.signal,
                        &query,
                        (row, col),
                        image,
                        (y_row, y_col),
                    );
                    list.push((mu, (y_row, y_col), d));
                }
            }
        }
        list
    })
}

/// Fully periodic ELS: both windows wrap, every centre is a candidate.
pub fn equivariant_local_periodic(problem: &Problem, side: usize, rule: Rule) -> Output {
    let Shape { height, width, .. } = problem.shape;
    let (query, training) = frame_all(problem, side, Reading::Wrapped, Reading::Wrapped);
    per_pixel_average(problem, rule, |row, col| {
        let mut list = Vec::new();
        for (mu, image) in training.iter().enumerate() {
            for y_row in 0..height {
                for y_col in 0..width {
                    let d = patch_distance(
                        side,
                        problem.signal,
                        &query,
                        (row, col),
                        image,
                        (y_row, y_col),
                    );
                    list.push((mu, (y_row, y_col), d));
                }
            }
        }
        list
    })
    .expect("the periodic ELS always has candidates")
}

/// The bbELS candidate coordinates along one axis for a query at `x`: `x`
/// alone if the query centre lies within `r` of an edge
/// (`x < r` or `x > len - 1 - r`), else `r ..= len - r - 1`.
fn zero_padded_axis(x: usize, len: usize, r: usize) -> Vec<usize> {
    if x < r || x + r > len - 1 {
        vec![x]
    } else {
        (r..=len - r - 1).collect()
    }
}

/// bbELS: both windows zero-padded, candidates by the per-axis rule of
/// [`zero_padded_axis`].
pub fn equivariant_local_zero_padded(problem: &Problem, side: usize, rule: Rule) -> Output {
    let r = side / 2;
    let Shape { height, width, .. } = problem.shape;
    let (query, training) = frame_all(problem, side, Reading::ZeroPadded, Reading::ZeroPadded);
    per_pixel_average(problem, rule, |row, col| {
        let mut list = Vec::new();
        for (mu, image) in training.iter().enumerate() {
            for &y_row in &zero_padded_axis(row, height, r) {
                for &y_col in &zero_padded_axis(col, width, r) {
                    let d = patch_distance(
                        side,
                        problem.signal,
                        &query,
                        (row, col),
                        image,
                        (y_row, y_col),
                    );
                    list.push((mu, (y_row, y_col), d));
                }
            }
        }
        list
    })
    .expect("bbELS always has candidates")
}

/// The folder of shared test data: `SCORE_MACHINES_DATA`, else
/// `../shared/data` next to the crate. `None` (after printing
/// `skipped: <reason>`) if `relative` is not there, unless
/// `SCORE_MACHINES_REQUIRE_DATA=1`, in which case it panics.
pub fn data_file(relative: &str) -> Option<PathBuf> {
    let folder = std::env::var_os("SCORE_MACHINES_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = folder.join(relative);
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("{} not found", path.display());
    if std::env::var("SCORE_MACHINES_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!("SCORE_MACHINES_REQUIRE_DATA=1 but {reason}");
    }
    println!("skipped: {reason}");
    None
}

/// Which candidates a patch machine compares, for [`all_candidates`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Candidates {
    /// LS: the same location, both windows zero-padded.
    SameLocation,
    /// ELS: windows wholly inside a training image, the query wrapping.
    Interior,
    /// Fully periodic ELS.
    Periodic,
    /// bbELS.
    ZeroPadded,
}

/// One candidate of an output pixel: training image, centre, distance.
pub type Candidate = (usize, (usize, usize), f64);

/// Per output pixel (row by row), every candidate of the machine `which`
/// with `side x side` windows, found by brute force.
pub fn all_candidates(problem: &Problem, side: usize, which: Candidates) -> Vec<Vec<Candidate>> {
    let r = side / 2;
    let Shape { height, width, .. } = problem.shape;
    let (query_reading, candidate_reading) = match which {
        Candidates::SameLocation | Candidates::ZeroPadded => {
            (Reading::ZeroPadded, Reading::ZeroPadded)
        }
        Candidates::Interior => (Reading::Wrapped, Reading::Inside),
        Candidates::Periodic => (Reading::Wrapped, Reading::Wrapped),
    };
    let (query, training) = frame_all(problem, side, query_reading, candidate_reading);
    let axis = |x: usize, len: usize| -> Vec<usize> {
        match which {
            Candidates::SameLocation => vec![x],
            Candidates::Interior => (0..len).filter(|&y| r <= y && y + r < len).collect(),
            Candidates::Periodic => (0..len).collect(),
            Candidates::ZeroPadded => zero_padded_axis(x, len, r),
        }
    };
    let mut lists = Vec::with_capacity(height * width);
    for row in 0..height {
        for col in 0..width {
            let mut list = Vec::new();
            for (mu, image) in training.iter().enumerate() {
                for &y_row in &axis(row, height) {
                    for &y_col in &axis(col, width) {
                        let y = (y_row, y_col);
                        let d = patch_distance(side, problem.signal, &query, (row, col), image, y);
                        list.push((mu, y, d));
                    }
                }
            }
            lists.push(list);
        }
    }
    lists
}
