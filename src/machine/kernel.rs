//! Exact squared patch distances between one query and one training image,
//! streamed into a [`PartialPosterior`].
//!
//! For a displacement `delta = y - x` between output pixel and candidate
//! centre, the distance of every output pixel is a window sum of one
//! residual image:
//!
//! ```text
//! E_delta(z) = sum_c (q(c, z) - a p(c, z + delta))^2
//! d(x; x + delta) = sum_o w_o E_delta(x + o)
//! ```
//!
//! With uniform weights the window sums are sliding sums along rows and
//! then columns, whose cost does not depend on the patch size; when a
//! displacement has few output pixels, or the window is weighted, the sum
//! is taken directly. With a periodic query, displacements `H` (or `W`)
//! apart are walked as one run (see [`Walk`]). Both are exact up to `f64`
//! rounding relative to the largest residual along a row (see
//! docs/precision.md for data whose pixels differ by many orders of
//! magnitude).

use super::plan::{Plan, Shift, joined_shifts, query_reach};
use super::posterior::PartialPosterior;
use crate::equivariance::Boundary;
use crate::real::Real;
use crate::training::TrainingSet;

/// Buffers reused across training images.
#[derive(Default)]
pub(crate) struct Scratch {
    pub residual: Vec<f64>,
    pub row_sums: Vec<f64>,
    pub distances: Vec<f64>,
}

/// What receives the candidates of one training image.
pub(crate) trait CandidateSink {
    /// The candidate centred at `centre = (row, col)` of the image, for
    /// output position `position = row * W + col`, at squared distance
    /// `distance`; its value in channel `c` is `values[c * stride]`.
    fn add(
        &mut self,
        position: usize,
        distance: f64,
        centre: (usize, usize),
        values: &[f64],
        stride: usize,
    );
}

impl CandidateSink for PartialPosterior {
    #[inline]
    fn add(
        &mut self,
        position: usize,
        distance: f64,
        _centre: (usize, usize),
        values: &[f64],
        stride: usize,
    ) {
        PartialPosterior::add(self, position, distance, values, stride);
    }
}

/// Adds the candidates of the training images `rows` to `sink`, padding
/// each in turn with `plan`; `starting(sink, row)` is told each image's
/// row before its candidates.
#[allow(clippy::too_many_arguments)]
pub(crate) fn accumulate_images<T: Real, S: CandidateSink>(
    training: &TrainingSet<T>,
    rows: &[usize],
    plan: &Plan,
    query: &[f64],
    signal: f64,
    direct_only: bool,
    sink: &mut S,
    mut starting: impl FnMut(&mut S, usize),
) {
    let channels = training.shape().channels;
    let walk = Walk::new(plan, query);
    let mut scratch = Scratch::default();
    let mut padded = vec![0.0; plan.padded_height * plan.padded_width * channels];
    for &row in rows {
        plan.pad(training.image(row), &mut padded);
        starting(sink, row);
        accumulate(
            plan,
            &walk,
            &padded,
            signal,
            direct_only,
            sink,
            &mut scratch,
        );
    }
}

/// The displacements a kernel walks and the query they read: with a
/// periodic query, displacements `H` (or `W`) apart joined into one run
/// over virtual output coordinates (see [`joined_shifts`]), read from the
/// query continued periodically.
pub(crate) struct Walk {
    rows: Vec<Shift>,
    cols: Vec<Shift>,
    query: Vec<f64>,
    query_rows: usize,
    query_cols: usize,
}

impl Walk {
    /// The walk of `plan` for `query`, padded by `plan`.
    pub fn new(plan: &Plan, query: &[f64]) -> Self {
        let periodic = plan.boundary == Boundary::Periodic;
        let (height, width) = (plan.patch.height(), plan.patch.width());
        let rows = joined_shifts(&plan.rows.shifts, plan.shape.height, height, periodic);
        let cols = joined_shifts(&plan.cols.shifts, plan.shape.width, width, periodic);
        let query_rows = query_reach(&rows, height, plan.padded_height);
        let query_cols = query_reach(&cols, width, plan.padded_width);
        Walk {
            rows,
            cols,
            query: plan.continue_periodically(query.to_vec(), query_rows, query_cols),
            query_rows,
            query_cols,
        }
    }

    /// Start of channel `c`, padded row `row`, padded column `col` of the
    /// query.
    #[inline]
    fn at(&self, c: usize, row: usize, col: usize) -> usize {
        (c * self.query_rows + row) * self.query_cols + col
    }
}

/// The output position of virtual output coordinates `(row, col)` (below
/// twice the image's sides).
#[inline]
fn output_position(plan: &Plan, row: usize, col: usize) -> usize {
    let wrap = |v: usize, len: usize| if v >= len { v - len } else { v };
    wrap(row, plan.shape.height) * plan.shape.width + wrap(col, plan.shape.width)
}

/// Adds every candidate of one padded training image to `sink`; with
/// `direct_only` every distance is summed directly, never slid.
pub(crate) fn accumulate(
    plan: &Plan,
    walk: &Walk,
    image: &[f64],
    signal: f64,
    direct_only: bool,
    sink: &mut impl CandidateSink,
    scratch: &mut Scratch,
) {
    for rows in &walk.rows {
        for cols in &walk.cols {
            let (height, width) = (plan.patch.height(), plan.patch.width());
            let pairs = rows.queries.len() * cols.queries.len();
            let direct_cost = pairs * height * width;
            let sliding_cost = 3 * (rows.span() + height - 1) * (cols.span() + width - 1);
            if direct_only || !plan.patch.is_uniform() || direct_cost <= sliding_cost {
                direct(plan, walk, image, signal, rows, cols, sink);
            } else {
                sliding(plan, walk, image, signal, rows, cols, sink, scratch);
            }
        }
    }
}

/// The centre value of candidate `(row, col)` (unpadded coordinates) is at
/// `image[offset + c * stride]`.
#[inline]
fn centre_offset(plan: &Plan, row: usize, col: usize) -> usize {
    (row + plan.patch.up()) * plan.padded_width + col + plan.patch.left()
}

fn direct(
    plan: &Plan,
    walk: &Walk,
    image: &[f64],
    signal: f64,
    rows: &Shift,
    cols: &Shift,
    sink: &mut impl CandidateSink,
) {
    let (pw, stride) = (plan.padded_width, plan.padded_height * plan.padded_width);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let weights = plan.patch.weights();
    let shape = plan.shape;
    for &xr in &rows.queries {
        let yr = (xr as isize + rows.delta) as usize;
        for &xc in &cols.queries {
            let yc = (xc as isize + cols.delta) as usize;
            let mut distance = 0.0;
            for c in 0..shape.channels {
                for i in 0..height {
                    let q = &walk.query[walk.at(c, xr + i, xc)..][..width];
                    let p = &image[c * stride + (yr + i) * pw + yc..][..width];
                    match weights {
                        None => {
                            for (qv, pv) in q.iter().zip(p) {
                                let r = qv - signal * pv;
                                distance += r * r;
                            }
                        }
                        Some(w) => {
                            for ((qv, pv), wv) in q.iter().zip(p).zip(&w[i * width..]) {
                                let r = qv - signal * pv;
                                distance += wv * r * r;
                            }
                        }
                    }
                }
            }
            let offset = centre_offset(plan, yr, yc);
            sink.add(
                output_position(plan, xr, xc),
                distance,
                (yr, yc),
                &image[offset..],
                stride,
            );
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn sliding(
    plan: &Plan,
    walk: &Walk,
    image: &[f64],
    signal: f64,
    rows: &Shift,
    cols: &Shift,
    sink: &mut impl CandidateSink,
    scratch: &mut Scratch,
) {
    let (ph, pw) = (plan.padded_height, plan.padded_width);
    let stride = ph * pw;
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let (row0, col0) = (rows.first(), cols.first());
    let (span_rows, span_cols) = (rows.span(), cols.span());
    let (z_rows, z_cols) = (span_rows + height - 1, span_cols + width - 1);

    // Residual E(z) over the bounding box of the windows. Rows whose shifted
    // training row falls outside the padded image belong to no valid pair.
    let residual = &mut scratch.residual;
    residual.clear();
    residual.resize(z_rows * z_cols, 0.0);
    for c in 0..plan.shape.channels {
        for i in 0..z_rows {
            let qr = row0 + i;
            let pr = qr as isize + rows.delta;
            if pr < 0 || pr >= ph as isize {
                continue;
            }
            let pc = col0 as isize + cols.delta;
            let (c_lo, c_hi) = valid_columns(pc, z_cols, pw);
            if c_lo >= c_hi {
                continue;
            }
            let q = &walk.query[walk.at(c, qr, col0)..][..z_cols];
            let p_start = c * stride + pr as usize * pw;
            let out = &mut residual[i * z_cols..(i + 1) * z_cols];
            for j in c_lo..c_hi {
                let pv = image[p_start + (pc + j as isize) as usize];
                let r = q[j] - signal * pv;
                out[j] += r * r;
            }
        }
    }

    // Sliding sums along rows: row_sums[i][j] = sum_{jj < width} E[i][j + jj].
    let row_sums = &mut scratch.row_sums;
    row_sums.clear();
    row_sums.resize(z_rows * span_cols, 0.0);
    for i in 0..z_rows {
        let e = &residual[i * z_cols..(i + 1) * z_cols];
        let out = &mut row_sums[i * span_cols..(i + 1) * span_cols];
        let mut sum: f64 = e[..width].iter().sum();
        out[0] = sum;
        for j in 1..span_cols {
            sum += e[j + width - 1] - e[j - 1];
            out[j] = sum;
        }
    }

    // Sliding sums down columns: distances[i][j] = sum_{ii < height} row_sums[i + ii][j].
    let distances = &mut scratch.distances;
    distances.clear();
    distances.resize(span_rows * span_cols, 0.0);
    for ii in 0..height {
        let src = &row_sums[ii * span_cols..(ii + 1) * span_cols];
        for (d, s) in distances[..span_cols].iter_mut().zip(src) {
            *d += s;
        }
    }
    for i in 1..span_rows {
        let (done, rest) = distances.split_at_mut(i * span_cols);
        let previous = &done[(i - 1) * span_cols..];
        let current = &mut rest[..span_cols];
        let entering = &row_sums[(i + height - 1) * span_cols..][..span_cols];
        let leaving = &row_sums[(i - 1) * span_cols..][..span_cols];
        for j in 0..span_cols {
            current[j] = previous[j] + entering[j] - leaving[j];
        }
    }

    for &xr in &rows.queries {
        let yr = (xr as isize + rows.delta) as usize;
        let line = &distances[(xr - row0) * span_cols..][..span_cols];
        for &xc in &cols.queries {
            let yc = (xc as isize + cols.delta) as usize;
            let offset = centre_offset(plan, yr, yc);
            sink.add(
                output_position(plan, xr, xc),
                line[xc - col0].max(0.0),
                (yr, yc),
                &image[offset..],
                stride,
            );
        }
    }
}

/// The range of `j` in `0..count` with `start + j` in `0..len`.
#[inline]
fn valid_columns(start: isize, count: usize, len: usize) -> (usize, usize) {
    let lo = (-start).max(0) as usize;
    let hi = (len as isize - start).clamp(0, count as isize) as usize;
    (lo.min(count), hi)
}
