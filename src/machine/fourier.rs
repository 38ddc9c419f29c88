//! What both Fourier routes share ([`super::spectral`] per candidate
//! centre, [`super::torus`] per training image): the transforms of the
//! image's size, the query's transform, the product of two transforms and
//! the way back, and the groups of eight training images fed to the
//! streaming softmax.

use std::sync::Arc;

use rustfft::num_complex::Complex;
use rustfft::{Fft, FftPlanner};

use super::fast::{self, FOLD_TERMS, LANES, LaneState, Lanes, WideLanes};
use super::plan::{AxisPlan, Plan};
use super::posterior::PartialPosterior;
use super::simd::Isa;
use crate::image::Shape;

pub(super) type C64 = Complex<f64>;

/// One candidate centre, `(row, col)` in the image.
pub(super) struct Centre {
    pub row: usize,
    pub col: usize,
}

/// For each coordinate of an axis, the output coordinates whose candidate
/// centres include it.
fn takers(axis: &AxisPlan, len: usize) -> Vec<Vec<usize>> {
    let mut takers = vec![Vec::new(); len];
    for shift in &axis.shifts {
        for &q in &shift.queries {
            takers[(q as isize + shift.delta) as usize].push(q);
        }
    }
    for list in &mut takers {
        list.sort_unstable();
    }
    takers
}

/// The candidate centres of a plan, which output pixels take each, and
/// how often the lanes fold so that no lane sums more than [`FOLD_TERMS`]
/// terms.
pub(super) struct Centres {
    /// Every centre some output pixel takes, row by row.
    pub list: Vec<Centre>,
    /// Per centre row (column), the output rows (columns) that take it.
    pub row_takers: Vec<Vec<usize>>,
    pub col_takers: Vec<Vec<usize>>,
    /// Groups of eight images between folds of the lane states, and, when
    /// one group alone could pass [`FOLD_TERMS`] terms per lane, centres
    /// between folds.
    pub fold_every: usize,
    pub fold_centres: Option<usize>,
}

impl Centres {
    pub fn new(plan: &Plan) -> Self {
        let row_takers = takers(&plan.rows, plan.shape.height);
        let col_takers = takers(&plan.cols, plan.shape.width);
        let mut list = Vec::new();
        for (row, rows) in row_takers.iter().enumerate() {
            for (col, cols) in col_takers.iter().enumerate() {
                if !rows.is_empty() && !cols.is_empty() {
                    list.push(Centre { row, col });
                }
            }
        }
        // The most centres any output pixel takes from one image.
        let (most_rows, most_cols) = fast::most_candidates(plan);
        let most = most_rows * most_cols;
        Centres {
            list,
            row_takers,
            col_takers,
            fold_every: (FOLD_TERMS / most).max(1),
            fold_centres: (most > FOLD_TERMS).then_some(FOLD_TERMS),
        }
    }

    /// The centre coordinates some output pixel takes, along the rows
    /// (`rows`) or the columns.
    pub fn taken(&self, rows: bool) -> Vec<usize> {
        let takers = if rows {
            &self.row_takers
        } else {
            &self.col_takers
        };
        (0..takers.len())
            .filter(|&y| !takers[y].is_empty())
            .collect()
    }

    /// Adds every centre of the images of the current group to the lanes:
    /// `form` writes the distances of all lanes to the output pixels that
    /// take the centre; the lanes fold into `posterior` after every
    /// `fold_centres` centres.
    pub fn add_each<S: GroupScratch>(
        &self,
        (shape, beta, isa): (Shape, f64, Isa),
        scratch: &mut S,
        posterior: &mut PartialPosterior,
        mut form: impl FnMut(&mut S, &Centre),
    ) {
        let mut values = vec![[0.0f32; LANES]; shape.channels];
        let mut pending = vec![0u32; shape.positions()];
        for (done, centre) in self.list.iter().enumerate() {
            if let Some(every) = self.fold_centres
                && done > 0
                && done % every == 0
            {
                scratch.state().fold_into(posterior, beta);
            }
            form(scratch, centre);
            let (group, distances, state) = scratch.parts();
            group.values_at(shape, (centre.row, centre.col), &mut values);
            fast::add_centre(
                isa,
                beta,
                distances,
                (
                    &self.row_takers[centre.row],
                    &self.col_takers[centre.col],
                    shape.width,
                ),
                &values,
                state,
                &mut pending,
            );
        }
    }
}

/// Transposes the `rows x cols` matrix `from` into `to`.
pub(super) fn transpose(from: &[C64], to: &mut [C64], rows: usize, cols: usize) {
    for (r, row) in from.chunks_exact(cols).enumerate() {
        for (c, &value) in row.iter().enumerate() {
            to[c * rows + r] = value;
        }
    }
}

/// Forward and inverse transforms along the rows (`W` values) and the
/// columns (`H` values) of an `H x W` plane.
pub(super) struct Transforms {
    height: usize,
    width: usize,
    forward_rows: Arc<dyn Fft<f64>>,
    forward_cols: Arc<dyn Fft<f64>>,
    inverse_rows: Arc<dyn Fft<f64>>,
    inverse_cols: Arc<dyn Fft<f64>>,
}

impl Transforms {
    pub fn new(height: usize, width: usize) -> Self {
        let mut planner = FftPlanner::<f64>::new();
        Transforms {
            height,
            width,
            forward_rows: planner.plan_fft_forward(width),
            forward_cols: planner.plan_fft_forward(height),
            inverse_rows: planner.plan_fft_inverse(width),
            inverse_cols: planner.plan_fft_inverse(height),
        }
    }

    /// A scratch buffer large enough for every transform.
    pub fn scratch(&self) -> Vec<C64> {
        let len = [
            &self.forward_rows,
            &self.forward_cols,
            &self.inverse_rows,
            &self.inverse_cols,
        ]
        .iter()
        .map(|fft| fft.get_inplace_scratch_len())
        .max()
        .unwrap_or(0);
        vec![C64::default(); len]
    }

    /// The transform of each channel of `query` (`H x W` planes), stored
    /// transposed (`W x H`, as [`Transforms::forward`] leaves it).
    pub fn query_spectra(&self, query: &[f32], scratch: &mut [C64]) -> Vec<Vec<C64>> {
        let plane_len = self.height * self.width;
        let mut plane = vec![C64::default(); plane_len];
        query
            .chunks_exact(plane_len)
            .map(|channel| {
                for (z, &v) in plane.iter_mut().zip(channel) {
                    *z = C64::new(v as f64, 0.0);
                }
                let mut transposed = vec![C64::default(); plane_len];
                self.forward_whole(&mut plane, &mut transposed, scratch);
                transposed
            })
            .collect()
    }

    /// Transforms `plane` into `transposed` (stored `W x H`), where only
    /// the rows in `rows` of `plane` hold values (the others are zero).
    pub fn forward(
        &self,
        plane: &mut [C64],
        rows: &[std::ops::Range<usize>],
        transposed: &mut [C64],
        scratch: &mut [C64],
    ) {
        let width = self.width;
        for rows in rows {
            self.forward_rows
                .process_with_scratch(&mut plane[rows.start * width..rows.end * width], scratch);
        }
        transpose(plane, transposed, self.height, width);
        self.forward_cols.process_with_scratch(transposed, scratch);
    }

    /// [`Transforms::forward`] with values in every row.
    pub fn forward_whole(&self, plane: &mut [C64], transposed: &mut [C64], scratch: &mut [C64]) {
        let rows = 0..self.height;
        self.forward(plane, std::slice::from_ref(&rows), transposed, scratch);
    }

    /// Transforms `product` (a transposed spectrum, `W x H`) back into
    /// `plane` (`H x W`), times `H W`.
    pub fn inverse(&self, product: &mut [C64], plane: &mut [C64], scratch: &mut [C64]) {
        self.inverse_cols.process_with_scratch(product, scratch);
        transpose(product, plane, self.width, self.height);
        self.inverse_rows.process_with_scratch(plane, scratch);
    }
}

/// `product = spectrum * query`, or `+=` unless `first` (summing the
/// channels before one inverse transform).
pub(super) fn multiply(product: &mut [C64], spectrum: &[C64], query: &[C64], first: bool) {
    let pairs = product.iter_mut().zip(spectrum).zip(query);
    if first {
        for ((p, k), q) in pairs {
            *p = k * q;
        }
    } else {
        for ((p, k), q) in pairs {
            *p += k * q;
        }
    }
}

/// Up to eight training images, one per lane: times the signal scale in
/// `f64` for the transforms (empty where [`run_in_groups`] is told that
/// nothing reads them), and as they are for the centre values.
pub(super) struct Group {
    pub scaled: Vec<Vec<f64>>,
    pub images: Vec<Vec<f32>>,
    /// The training row of each lane's image.
    pub rows: [usize; LANES],
    /// Lanes that hold an image.
    pub filled: usize,
}

impl Group {
    pub fn new() -> Self {
        Group {
            scaled: vec![Vec::new(); LANES],
            images: vec![Vec::new(); LANES],
            rows: [0; LANES],
            filled: 0,
        }
    }

    /// Writes into `values` (one per channel) the value of every lane's
    /// image at pixel `(row, col)`.
    pub fn values_at(&self, shape: Shape, (row, col): (usize, usize), values: &mut [Lanes]) {
        for (channel, lanes) in values.iter_mut().enumerate() {
            let at = channel * shape.positions() + row * shape.width + col;
            for (lane, v) in lanes[..self.filled].iter_mut().enumerate() {
                *v = self.images[lane][at];
            }
        }
    }
}

/// The buffers of a Fourier route that [`run_in_groups`] and
/// [`Centres::add_each`] need.
pub(super) trait GroupScratch {
    /// The group of images, the distances of one centre and the lanes.
    fn parts(&mut self) -> (&Group, &[WideLanes], &mut LaneState);
    fn group(&mut self) -> &mut Group;
    fn state(&mut self) -> &mut LaneState {
        self.parts().2
    }
}

/// Feeds `images` (training rows and their values) into groups of eight,
/// with their values times `signal` in [`Group::scaled`] if `scaled`, and
/// hands each full group (and the last, partial one) to `flush`; folds the
/// lanes into `posterior` after every `fold_every` groups and at the end.
pub(super) fn run_in_groups<'i, S: GroupScratch>(
    images: impl Iterator<Item = (usize, &'i [f32])>,
    scratch: &mut S,
    posterior: &mut PartialPosterior,
    (signal, beta, fold_every, scaled): (f64, f64, usize, bool),
    mut flush: impl FnMut(&mut S, &mut PartialPosterior),
) {
    let mut images = images.fuse();
    let mut pending = 0;
    loop {
        let group = scratch.group();
        while group.filled < LANES {
            let Some((row, image)) = images.next() else {
                break;
            };
            let lane = group.filled;
            group.rows[lane] = row;
            group.scaled[lane].clear();
            if scaled {
                group.scaled[lane].extend(image.iter().map(|&v| signal * v as f64));
            }
            group.images[lane].clear();
            group.images[lane].extend_from_slice(image);
            group.filled += 1;
        }
        if group.filled == 0 {
            break;
        }
        flush(scratch, posterior);
        scratch.group().filled = 0;
        pending += 1;
        if pending == fold_every {
            scratch.state().fold_into(posterior, beta);
            pending = 0;
        }
    }
    if pending > 0 {
        scratch.state().fold_into(posterior, beta);
    }
}
