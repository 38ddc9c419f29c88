//! Cross terms of windows nearly as large as the image: one correlation
//! over the whole torus, minus the lines each window leaves out.
//!
//! With a periodic query and an `h x w` window on an `H x W` image
//! (`h <= H`, `w <= W`), write `v = x - y` (modulo the image) for output
//! pixel `x` and candidate centre `y`. Over the whole torus the cross term
//! would be
//!
//! ```text
//! G(v) = sum_c sum_z q(c, z + v) a p(c, z)
//! ```
//!
//! one circular correlation per training image, for every `v` at once by
//! Fourier transforms ([`super::spectral`] transforms each centre's window
//! instead). The window of centre `y` leaves out `H - h` rows `e` and
//! `W - w` columns `f` of the training image, so
//!
//! ```text
//! C(x, y) = G(v) - sum_e Row_e(e + v_r, v_c) - sum_f Col_f(v_r, f + v_c)
//!                + sum_e sum_f sum_c q(c, e + v_r, f + v_c) a p(c, e, f)
//! Row_e(r, v_c) = sum_c sum_j q(c, r, j + v_c) a p(c, e, j)
//! Col_f(v_r, s) = sum_c sum_i q(c, i + v_r, s) a p(c, i, f)
//! ```
//!
//! (the last sum adds back the pixels both a left-out row and a left-out
//! column remove). `Row_e` and `Col_f` are tables of `H W` values per
//! training line, shared by every centre that leaves the line out, each a
//! sum of `W` (or `H`) products; a line of one constant value `u` (the
//! blank border of many image sets) needs only `u` times the query's line
//! sums. The window norms follow the same pattern:
//! `A(y) = |a p|^2 - sum_e |a p(e, .)|^2 - sum_f |a p(., f)|^2 + sum_e sum_f (a p(e, f))^2`.
//!
//! The tables take `2 H W` values of eight lanes per left-out line; where
//! they would pass [`MAX_TABLE_BYTES`] per worker (fully periodic windows
//! on large images leave out every line from some centre) the route is
//! not offered.
//!
//! For an ELS window one pixel short of the image this costs one pair of
//! transforms per two training images, where the per-centre route pays one
//! pair per centre, four line tables (of `W` or `H` products per value, or
//! none for constant lines) and four terms per distance. Everything
//! is `f64` until the softmax; the rounding of `G` is bounded like that of
//! the per-centre transforms (with the whole image as window) and the line
//! sums add at most `(H + W) eps` of the same magnitudes.
//!
//! With the training images' transforms kept ([`super::spectra`]) only
//! the inverse transform is left per pair of images; where both sides
//! factor into primes up to 7 it runs eight columns at a time
//! ([`super::batch_dft`]), else by `rustfft`.

use std::sync::OnceLock;

use super::batch_dft::{PlaneInverse, padded};
use super::fast::{self, LANES, LaneState, NOT_A_CANDIDATE, Portable, Vector, Wide, WideLanes};
use super::fourier::{
    C64, Centre, Centres, Group, GroupScratch, Transforms, multiply, run_in_groups,
};
use super::plan::Plan;
use super::posterior::PartialPosterior;
use super::simd::Isa;
use super::spectra::{TrainingSpectra, correlate_pair, split};
use crate::equivariance::Boundary;

/// What the whole-torus route needs of a [`Plan`].
pub(crate) struct TorusPlan {
    centres: Centres,
    /// Per centre row (column), the training rows (columns) its window
    /// leaves out, as indices into `line_rows` (`line_cols`).
    left_out_rows: Vec<Vec<usize>>,
    left_out_cols: Vec<Vec<usize>>,
    /// The training rows (columns) some taken centre leaves out.
    line_rows: Vec<usize>,
    line_cols: Vec<usize>,
    /// The columns of the doubled rows of `G` that some centre reads.
    read_cols: std::ops::Range<usize>,
    /// Planned on first use: the cost model builds plans it then drops.
    transforms: OnceLock<Transforms>,
    /// The inverse transforms eight at a time, where both sides allow
    /// them; else `rustfft`'s.
    inverse: OnceLock<Option<PlaneInverse>>,
    shape: (usize, usize),
}

/// The most memory the line tables of one worker may take: windows that
/// wrap around large images (periodic ELS) leave out every line of the
/// image from some centre, and their tables grow as `(H + W) H W`
/// (about 67 MB on 64x64 images).
const MAX_TABLE_BYTES: usize = 16 << 20;

/// The row strides of the split spectra (`H` rounded up to eight) and of
/// the split results (`W` likewise).
fn strides(height: usize, width: usize) -> (usize, usize) {
    (padded(height), padded(width))
}

/// The bytes of the tables of `lines` left-out lines on images of
/// `positions` pixels: `2 positions` values of eight `f64` lanes each.
fn table_bytes(lines: usize, positions: usize) -> usize {
    lines * 2 * positions * std::mem::size_of::<WideLanes>()
}

/// For an axis of `len` coordinates and a window reaching `before`
/// coordinates before its centre and covering `side`, the coordinates the
/// window of centre `y` leaves out: `y - before + side .. y - before + len`,
/// modulo `len`.
fn left_out(y: usize, before: usize, side: usize, len: usize) -> Vec<usize> {
    (side..len)
        .map(|i| (y + i + len - before % len) % len)
        .collect()
}

impl TorusPlan {
    /// The whole-torus route for `plan`, if its query windows wrap (a
    /// periodic boundary), its windows are uniform and no larger than the
    /// image, and the tables of its left-out lines take at most
    /// [`MAX_TABLE_BYTES`] per worker.
    pub fn new(plan: &Plan) -> Option<Self> {
        let shape = plan.shape;
        let (height, width) = (shape.height, shape.width);
        let patch = &plan.patch;
        if plan.boundary != Boundary::Periodic
            || !patch.is_uniform()
            || patch.height() > height
            || patch.width() > width
        {
            return None;
        }
        let centres = Centres::new(plan);
        let (taken_rows, taken_cols) = (centres.taken(true), centres.taken(false));
        // The lines left out by taken centres, and each centre's as
        // indices into them.
        let lines = |taken: &[usize], before: usize, side: usize, len: usize| {
            let mut left = vec![Vec::new(); len];
            let mut lines: Vec<usize> = Vec::new();
            for &y in taken {
                left[y] = left_out(y, before, side, len);
                lines.extend(&left[y]);
            }
            lines.sort_unstable();
            lines.dedup();
            for list in &mut left {
                for line in list.iter_mut() {
                    *line = lines.binary_search(line).expect("a left-out line");
                }
            }
            (lines, left)
        };
        let (line_rows, left_out_rows) = lines(&taken_rows, patch.up(), patch.height(), height);
        let (line_cols, left_out_cols) = lines(&taken_cols, patch.left(), patch.width(), width);
        if table_bytes(line_rows.len() + line_cols.len(), shape.positions()) > MAX_TABLE_BYTES {
            return None;
        }
        // Centre column `y_c` reads columns `W - y_c ..` of the doubled
        // rows, `W` of them.
        let starts = taken_cols.iter().map(|&y_c| width - y_c);
        let read_cols = match (starts.clone().min(), starts.max()) {
            (Some(first), Some(last)) => first..last + width,
            _ => 0..0,
        };
        Some(TorusPlan {
            centres,
            read_cols,
            left_out_rows,
            left_out_cols,
            line_rows,
            line_cols,
            transforms: OnceLock::new(),
            inverse: OnceLock::new(),
            shape: (height, width),
        })
    }

    /// The inverse transforms eight at a time, if the sides allow them.
    fn inverse(&self) -> Option<&PlaneInverse> {
        let (height, width) = self.shape;
        self.inverse
            .get_or_init(|| PlaneInverse::new(height, width))
            .as_ref()
    }

    /// The transforms of the image's size.
    fn transforms(&self) -> &Transforms {
        let (height, width) = self.shape;
        self.transforms
            .get_or_init(|| Transforms::new(height, width))
    }

    /// The work of one training image in lane cross terms (see
    /// [`super::spectral::pays`]), for line values that are not constant:
    /// the whole-image transforms, the line tables (`H W` sums of `W` or
    /// `H` products per line) and forming each distance from its terms.
    pub fn cost(&self, plan: &Plan, transform_cost: f64) -> f64 {
        let shape = plan.shape;
        let (height, width) = (shape.height as f64, shape.width as f64);
        let positions = shape.positions() as f64;
        let channels = shape.channels as f64;
        let transforms = positions * positions.log2() * channels * transform_cost;
        let lines = positions
            * (self.line_rows.len() as f64 * width + self.line_cols.len() as f64 * height)
            * channels
            * LINE_COST;
        let forming: f64 = self
            .centres
            .list
            .iter()
            .map(|centre| {
                let outputs = self.centres.row_takers[centre.row].len()
                    * self.centres.col_takers[centre.col].len();
                let (e, f) = (
                    self.left_out_rows[centre.row].len(),
                    self.left_out_cols[centre.col].len(),
                );
                outputs as f64 * (2 + e + f + e * f * shape.channels) as f64
            })
            .sum::<f64>()
            * FORM_COST;
        transforms + lines + forming
    }
}

/// The cost of one product of a line table, in lane cross terms.
///
/// Calibrated with the cost of [`super::spectral`]'s transforms on 28x28
/// MNIST digits made non-constant by a little noise (ELS, 1,000 images,
/// two cores, each route forced in turn): the tables of the 4 lines at
/// k = 27 took about 2.4 ms more than the constant lines of the plain
/// digits, and those of the 12 lines at k = 25 about 6.8 ms.
const LINE_COST: f64 = 0.25;

/// The cost of one term of a distance formed from the tables, in lane
/// cross terms.
///
/// Calibrated as [`LINE_COST`]: with the softmax taken out (its share of
/// the per-centre route's time at the same side), forming the 37 terms of
/// each distance at k = 23 cost 0.53 and the 17 terms at k = 25 0.60 lane
/// cross terms each. On those noisy digits the whole-torus route then
/// loses to the lanes at k = 23 (0.085 s against 0.076 s) and beats the
/// per-centre transforms at k = 25 (0.028 s against 0.037 s) and k = 27.
/// (On the plain digits, whose left-out lines are mostly constant, it
/// would also win at k = 23, 0.070 s against 0.076 s; the model assumes
/// lines that are not.)
const FORM_COST: f64 = 0.55;

/// Everything a worker needs that is shared by all training images.
pub(crate) struct TorusJob<'a> {
    pub plan: &'a Plan,
    pub torus: &'a TorusPlan,
    pub signal: f64,
    pub beta: f64,
    /// The instruction set the kernels run on (see [`Isa`]).
    pub isa: Isa,
    /// The transforms of the training images, if the machine keeps them
    /// (see [`super::spectra`]); else each group transforms its images.
    pub spectra: Option<&'a TrainingSpectra>,
}

/// Buffers of one worker.
pub(crate) struct TorusScratch {
    /// Per channel, the transform of the query (transposed: `W x H`).
    query_spectra: Vec<Vec<C64>>,
    /// The same, as real and imaginary parts, for the kept transforms
    /// (empty without them).
    query_split: Vec<(Vec<f64>, Vec<f64>)>,
    /// Per channel, the query's rows continued periodically (`H` lines of
    /// [`line_stride`]`(W)`), and its columns likewise.
    query_rows: Vec<Vec<f64>>,
    query_cols: Vec<Vec<f64>>,
    /// Per channel, the sum of each query row (column).
    query_row_sums: Vec<Vec<f64>>,
    query_col_sums: Vec<Vec<f64>>,
    /// `Q(x)`, the squared norm of the query window at every output pixel.
    query_norms: Vec<f64>,
    group: Group,
    plane: Vec<C64>,
    transposed: Vec<C64>,
    product: Vec<C64>,
    fft_scratch: Vec<C64>,
    /// With kept transforms, the product of one pair as real and
    /// imaginary parts (`W` rows of `H` rounded up to eight), and the
    /// scratch of the inverse transforms eight at a time.
    split_product: (Vec<f64>, Vec<f64>),
    split_scratch: (Vec<f64>, Vec<f64>),
    /// The inverse transforms of the group's pairs of images, real and
    /// imaginary parts, one plane per pair (`H` rows of `W` rounded up to
    /// eight).
    results: (Vec<f64>, Vec<f64>),
    /// `G(v)` of every lane, rows written twice over (`H x 2W`; only the
    /// columns some centre reads are filled).
    whole: Vec<WideLanes>,
    /// `Row_e` per left-out row `e` and `Col_f` per left-out column `f`,
    /// each `H x 2W`, and whether the line is constant (its table then
    /// holds only the values of the first column, or first row).
    row_tables: Vec<WideLanes>,
    col_tables: Vec<WideLanes>,
    constant_rows: Vec<bool>,
    constant_cols: Vec<bool>,
    /// Per channel, the scaled values of the current line, per lane.
    line: Vec<WideLanes>,
    /// `|a p|^2`, and per left-out row, column and crossing of the two,
    /// the squared norms of the scaled values left out.
    full_norms: WideLanes,
    row_norms: Vec<WideLanes>,
    col_norms: Vec<WideLanes>,
    crossing_norms: Vec<WideLanes>,
    /// Per crossing of a left-out row and column, and channel, the scaled
    /// value there.
    crossings: Vec<WideLanes>,
    /// A row of zeros.
    zeros: Vec<WideLanes>,
    distances: Vec<WideLanes>,
    state: LaneState,
}

impl GroupScratch for TorusScratch {
    fn parts(&mut self) -> (&Group, &[WideLanes], &mut LaneState) {
        (&self.group, &self.distances, &mut self.state)
    }
    fn group(&mut self) -> &mut Group {
        &mut self.group
    }
}

impl TorusJob<'_> {
    pub fn scratch(&self, query: &[f32]) -> TorusScratch {
        let plan = self.plan;
        let shape = plan.shape;
        let (height, width) = (shape.height, shape.width);
        let plane_len = height * width;
        let torus = self.torus;
        let transforms = torus.transforms();
        let mut fft_scratch = transforms.scratch();
        let query_spectra = transforms.query_spectra(query, &mut fft_scratch);
        let mut query_rows = Vec::new();
        let mut query_cols = Vec::new();
        let mut query_row_sums = Vec::new();
        let mut query_col_sums = Vec::new();
        for channel in query.chunks_exact(plane_len) {
            let value = |r: usize, c: usize| channel[r * width + c] as f64;
            query_rows.push(
                (0..height)
                    .flat_map(|r| (0..line_stride(width)).map(move |c| value(r, c % width)))
                    .collect(),
            );
            query_cols.push(
                (0..width)
                    .flat_map(|c| (0..line_stride(height)).map(move |r| value(r % height, c)))
                    .collect(),
            );
            query_row_sums.push(
                (0..height)
                    .map(|r| (0..width).map(|c| value(r, c)).sum())
                    .collect(),
            );
            query_col_sums.push(
                (0..width)
                    .map(|c| (0..height).map(|r| value(r, c)).sum())
                    .collect(),
            );
        }
        let padded_query = plan.padded(query);
        let channels = shape.channels;
        let (rows, cols) = (torus.line_rows.len(), torus.line_cols.len());
        let table = 2 * plane_len;
        let (padded_height, padded_width) = strides(height, width);
        TorusScratch {
            query_split: match self.spectra {
                Some(_) => query_spectra.iter().map(|s| split(s)).collect(),
                None => Vec::new(),
            },
            query_spectra,
            query_rows,
            query_cols,
            query_row_sums,
            query_col_sums,
            query_norms: fast::query_window_norms(plan, &padded_query),
            group: Group::new(),
            plane: vec![C64::default(); plane_len],
            transposed: vec![C64::default(); plane_len],
            product: vec![C64::default(); plane_len],
            fft_scratch,
            split_product: (
                vec![0.0; width * padded_height],
                vec![0.0; width * padded_height],
            ),
            split_scratch: match torus.inverse() {
                Some(inverse) if self.spectra.is_some() => {
                    let len = inverse.scratch_len();
                    (vec![0.0; len], vec![0.0; len])
                }
                _ => (Vec::new(), Vec::new()),
            },
            results: (
                vec![0.0; LANES / 2 * height * padded_width],
                vec![0.0; LANES / 2 * height * padded_width],
            ),
            whole: vec![[0.0; LANES]; table],
            row_tables: vec![[0.0; LANES]; rows * table],
            col_tables: vec![[0.0; LANES]; cols * table],
            constant_rows: vec![false; rows],
            constant_cols: vec![false; cols],
            line: vec![[0.0; LANES]; channels * height.max(width)],
            full_norms: [0.0; LANES],
            row_norms: vec![[0.0; LANES]; rows],
            col_norms: vec![[0.0; LANES]; cols],
            crossing_norms: vec![[0.0; LANES]; rows * cols],
            crossings: vec![[0.0; LANES]; rows * cols * channels],
            zeros: vec![[0.0; LANES]; width],
            distances: vec![[0.0; LANES]; plane_len],
            state: LaneState::new(shape.positions(), channels),
        }
    }

    /// Adds the candidates of every image in `images` to `posterior`.
    pub fn run<'i>(
        &self,
        images: impl Iterator<Item = (usize, &'i [f32])>,
        scratch: &mut TorusScratch,
        posterior: &mut PartialPosterior,
    ) {
        // The kept transforms need no scaled copy of the images.
        let scaled = self.spectra.is_none();
        let settings = (
            self.signal,
            self.beta,
            self.torus.centres.fold_every,
            scaled,
        );
        run_in_groups(
            images,
            scratch,
            posterior,
            settings,
            |scratch, posterior| self.flush(scratch, posterior),
        );
    }

    /// Adds every centre of the images of the current group.
    fn flush(&self, scratch: &mut TorusScratch, posterior: &mut PartialPosterior) {
        let shape = self.plan.shape;
        let torus = self.torus;
        for pair in 0..scratch.group.filled.div_ceil(2) {
            self.whole_correlation(scratch, [2 * pair, 2 * pair + 1]);
        }
        self.spread(scratch);
        self.line_tables(scratch);
        torus.centres.add_each(
            (shape, self.beta, self.isa),
            scratch,
            posterior,
            |scratch, centre| self.form_distances(scratch, centre),
        );
    }

    /// Writes `H W G(v)` of lanes `lanes` (the second may be past the
    /// group's images), or `H W G(v) / a` with kept transforms, into the
    /// real and imaginary parts of `scratch.results` for the pair, and
    /// their squared norms into `scratch.full_norms`.
    fn whole_correlation(&self, scratch: &mut TorusScratch, lanes: [usize; 2]) {
        let shape = self.plan.shape;
        let (height, width) = (shape.height, shape.width);
        let plane_len = height * width;
        let torus = self.torus;
        let TorusScratch {
            query_spectra,
            query_split,
            group,
            plane,
            transposed,
            product,
            fft_scratch,
            split_product,
            split_scratch,
            results,
            full_norms,
            ..
        } = scratch;
        let (padded_height, padded_width) = strides(height, width);
        let scaled = &group.scaled;
        let second = lanes[1] < group.filled;
        let transforms = torus.transforms();
        match self.spectra {
            Some(spectra) => {
                let rows = [group.rows[lanes[0]], group.rows[lanes[1]]];
                for (channel, (re, im)) in query_split.iter().enumerate() {
                    let first = spectra.channel(rows[0], channel);
                    let other = if second {
                        spectra.channel(rows[1], channel)
                    } else {
                        first
                    };
                    let pair = (first, other);
                    let query = (&re[..], &im[..]);
                    let first_channel = channel == 0;
                    correlate_pair(
                        self.isa,
                        (&mut split_product.0, &mut split_product.1),
                        pair,
                        query,
                        (height, width, padded_height),
                        first_channel,
                    );
                }
                // `|a p|^2 = a^2 sum p^2`.
                let squared = self.signal * self.signal;
                full_norms[lanes[0]] = squared * spectra.norm(rows[0]);
                if second {
                    full_norms[lanes[1]] = squared * spectra.norm(rows[1]);
                }
            }
            None => {
                for (channel, query) in query_spectra.iter().enumerate() {
                    let first = &scaled[lanes[0]][channel * plane_len..][..plane_len];
                    // Without a second image the first fills the imaginary
                    // part too: the real part of the result does not depend
                    // on it.
                    let other = if second {
                        &scaled[lanes[1]][channel * plane_len..][..plane_len]
                    } else {
                        first
                    };
                    // The image turned around, `K(m) = a p(-m)`, so that the
                    // convolution with the query is `sum_z q(z) a p(z - v)`.
                    for r in 0..height {
                        let target = &mut plane[((height - r) % height) * width..][..width];
                        let (first, other) =
                            (&first[r * width..][..width], &other[r * width..][..width]);
                        // Column 0 stays, column `c` goes to `W - c`.
                        let (head, tail) = target.split_at_mut(1);
                        let pixels = first.iter().zip(other);
                        for (t, (&re, &im)) in
                            head.iter_mut().chain(tail.iter_mut().rev()).zip(pixels)
                        {
                            *t = C64::new(re, im);
                        }
                    }
                    transforms.forward_whole(plane, transposed, fft_scratch);
                    multiply(product, transposed, query, channel == 0);
                }
                // `|a p|^2`, over every channel.
                let squares = |lane: usize| scaled[lane].iter().map(|v| v * v).sum();
                full_norms[lanes[0]] = squares(lanes[0]);
                if second {
                    full_norms[lanes[1]] = squares(lanes[1]);
                }
            }
        }
        let pair = lanes[0] / 2;
        let result_len = height * padded_width;
        let out = (
            &mut results.0[pair * result_len..][..result_len],
            &mut results.1[pair * result_len..][..result_len],
        );
        match (self.spectra, torus.inverse()) {
            (Some(_), Some(inverse)) => inverse.run(
                self.isa,
                (&mut split_product.0, &mut split_product.1),
                out,
                (&mut split_scratch.0, &mut split_scratch.1),
            ),
            (kept, _) => {
                if kept.is_some() {
                    for (k_c, row) in product.chunks_exact_mut(height).enumerate() {
                        let at = k_c * padded_height;
                        let parts = split_product.0[at..].iter().zip(&split_product.1[at..]);
                        for (z, (&re, &im)) in row.iter_mut().zip(parts) {
                            *z = C64::new(re, im);
                        }
                    }
                }
                transforms.inverse(product, plane, fft_scratch);
                for (r, row) in plane.chunks_exact(width).enumerate() {
                    for (c, z) in row.iter().enumerate() {
                        out.0[r * padded_width + c] = z.re;
                        out.1[r * padded_width + c] = z.im;
                    }
                }
            }
        }
    }

    /// Spreads the correlations of every pair over the lanes of
    /// `scratch.whole`: the convolution at `v`,
    /// `sum_m q(v - m) K(m) = sum_z q(z) a p(z - v)`, is `G(v)` (with `z`
    /// renamed) times the transforms' factor `H W` (and `1 / a` with kept
    /// transforms). Lanes past the group's images get values from earlier
    /// groups or from a missing second image, finite either way; their
    /// distances are replaced by `NOT_A_CANDIDATE`. Only the columns of
    /// the doubled rows that some centre reads are written (29 of 56 for
    /// ELS one column short of the image).
    fn spread(&self, scratch: &mut TorusScratch) {
        let shape = self.plan.shape;
        let width = shape.width;
        let plane_len = shape.height * width;
        let scale = match self.spectra {
            Some(_) => self.signal / plane_len as f64,
            None => 1.0 / plane_len as f64,
        };
        let TorusScratch { results, whole, .. } = scratch;
        let (_, padded_width) = strides(shape.height, width);
        let result_len = shape.height * padded_width;
        let read_cols = self.torus.read_cols.clone();
        for (r, out) in whole.chunks_exact_mut(2 * width).enumerate() {
            for (j, out) in out[read_cols.clone()].iter_mut().enumerate() {
                let at = r * padded_width + (read_cols.start + j) % width;
                let mut lanes = [0.0; LANES];
                for (pair, lanes) in lanes.chunks_exact_mut(2).enumerate() {
                    lanes[0] = scale * results.0[pair * result_len + at];
                    lanes[1] = scale * results.1[pair * result_len + at];
                }
                *out = lanes;
            }
        }
    }

    /// Fills `Row_e` and `Col_f` for every left-out line, their squared
    /// norms, and the values and squared norms where they cross.
    fn line_tables(&self, scratch: &mut TorusScratch) {
        let shape = self.plan.shape;
        let (height, width) = (shape.height, shape.width);
        let plane_len = height * width;
        let channels = shape.channels;
        let torus = self.torus;
        let TorusScratch {
            query_rows,
            query_cols,
            query_row_sums,
            query_col_sums,
            group,
            row_tables,
            col_tables,
            constant_rows,
            constant_cols,
            line,
            row_norms,
            col_norms,
            crossing_norms,
            crossings,
            ..
        } = scratch;
        let filled = group.filled;
        // `a p`, as `Group::scaled` holds it (which the kept transforms
        // leave unfilled).
        let lanes = (&group.images[..], self.signal, filled);
        // Rows: `Row_e(r, v) = sum_c sum_j q(c, r, j + v) a p(c, e, j)`,
        // stored at `r * 2W + v` and `r * 2W + v + W`.
        for (slot, &e) in torus.line_rows.iter().enumerate() {
            gather(line, lanes, channels, width, |c, j| {
                c * plane_len + e * width + j
            });
            row_norms[slot] = squared_norms(&line[..channels * width]);
            let table = &mut row_tables[slot * 2 * plane_len..][..2 * plane_len];
            constant_rows[slot] = line_table(
                self.isa,
                table,
                &line[..channels * width],
                query_rows,
                query_row_sums,
                (height, width),
                false,
            );
        }
        // Columns: `Col_f(v, s) = sum_c sum_i q(c, i + v, s) a p(c, i, f)`,
        // stored at `v * 2W + s` and `v * 2W + s + W`.
        for (slot, &f) in torus.line_cols.iter().enumerate() {
            gather(line, lanes, channels, height, |c, i| {
                c * plane_len + i * width + f
            });
            col_norms[slot] = squared_norms(&line[..channels * height]);
            let table = &mut col_tables[slot * 2 * plane_len..][..2 * plane_len];
            constant_cols[slot] = line_table(
                self.isa,
                table,
                &line[..channels * height],
                query_cols,
                query_col_sums,
                (width, height),
                true,
            );
        }
        let lines = torus.line_cols.len();
        for (r, &e) in torus.line_rows.iter().enumerate() {
            for (s, &f) in torus.line_cols.iter().enumerate() {
                let mut norm = [0.0; LANES];
                for c in 0..channels {
                    let mut value = [0.0; LANES];
                    for (lane, v) in value[..filled].iter_mut().enumerate() {
                        *v = self.signal * group.images[lane][c * plane_len + e * width + f] as f64;
                    }
                    for (n, v) in norm.iter_mut().zip(&value) {
                        *n += v * v;
                    }
                    crossings[(r * lines + s) * channels + c] = value;
                }
                crossing_norms[r * lines + s] = norm;
            }
        }
    }

    /// Writes into `scratch.distances` the distances of every lane to the
    /// output pixels that take `centre`.
    fn form_distances(&self, scratch: &mut TorusScratch, centre: &Centre) {
        match self.isa {
            // SAFETY: `Isa::detected` gives a level only where the CPU
            // supports it, and the levels a job is built with come from it
            // or from `Isa::available`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::form_distances_avx512(self, scratch, centre) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::form_distances_avx2(self, scratch, centre) },
            _ => form_distances_with::<Portable>(self, scratch, centre),
        }
    }
}

/// Copies into `line` the scaled values `a p` of one training line of
/// every lane, channel by channel (`len` values each, at `at(channel, i)`
/// in the image); lanes past `filled` are zero.
fn gather(
    line: &mut [WideLanes],
    (images, signal, filled): (&[Vec<f32>], f64, usize),
    channels: usize,
    len: usize,
    at: impl Fn(usize, usize) -> usize,
) {
    for c in 0..channels {
        for i in 0..len {
            let lanes = &mut line[c * len + i];
            for (lane, v) in lanes.iter_mut().enumerate() {
                *v = if lane < filled {
                    signal * images[lane][at(c, i)] as f64
                } else {
                    0.0
                };
            }
        }
    }
}

/// The sum of squares of every lane.
fn squared_norms(line: &[WideLanes]) -> WideLanes {
    let mut norms = [0.0; LANES];
    for lanes in line {
        for (n, v) in norms.iter_mut().zip(lanes) {
            *n += v * v;
        }
    }
    norms
}

/// Fills `table` with `T(o, v) = sum_c sum_i query(c, o, i + v) line(c, i)`
/// for `o < outer` and `v < len`, where `query` holds per channel `outer`
/// query lines of [`line_stride`]`(len)` values (each line continued
/// periodically) and `line` per channel `len` lanes. The table is stored
/// as `outer` rows of `2 len` (`T(o, v)` at `v` and `v + len`), or with
/// `transposed` as `len` rows of `2 outer` (`T(o, v)` at row `v`, columns
/// `o` and `o + outer`). A line of one value per channel and lane takes
/// the query's line sums instead of `len` products per entry: its table
/// does not depend on `v`, only `T(o, 0)` is stored, and the result is
/// `true`.
fn line_table(
    isa: Isa,
    table: &mut [WideLanes],
    line: &[WideLanes],
    query: &[Vec<f64>],
    query_sums: &[Vec<f64>],
    (outer, len): (usize, usize),
    transposed: bool,
) -> bool {
    let constant = line.chunks_exact(len).all(|values| {
        let first = values[0];
        values.iter().all(|v| *v == first)
    });
    if constant {
        for o in 0..outer {
            let mut value = [0.0; LANES];
            for (sums, values) in query_sums.iter().zip(line.chunks_exact(len)) {
                let sum = sums[o];
                for (v, u) in value.iter_mut().zip(&values[0]) {
                    *v += sum * u;
                }
            }
            store(table, o, 0, outer, len, transposed, value);
        }
        return true;
    }
    match isa {
        // SAFETY: as in `TorusJob::form_distances`, `isa` is a level the
        // CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe {
            x86::correlate_lines_avx512((table, line, query), outer, len, transposed)
        },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe {
            x86::correlate_lines_avx2((table, line, query), outer, len, transposed)
        },
        _ => correlate_lines::<Portable>(table, line, query, outer, len, transposed),
    }
    false
}

/// Stores `value` as `T(o, v)` (see [`line_table`]), twice over.
#[inline(always)]
fn store(
    table: &mut [WideLanes],
    o: usize,
    v: usize,
    outer: usize,
    len: usize,
    transposed: bool,
    value: WideLanes,
) {
    if transposed {
        table[v * 2 * outer + o] = value;
        table[v * 2 * outer + o + outer] = value;
    } else {
        table[o * 2 * len + v] = value;
        table[o * 2 * len + v + len] = value;
    }
}

/// Shifts `v` of [`correlate_lines`] summed together, so that eight
/// independent sums of four lanes are in flight.
const SHIFTS: usize = 4;

/// Values per query line of [`line_table`]: the line of `len` values
/// continued periodically far enough for every shift, also those
/// [`correlate_lines`] computes past the last one.
fn line_stride(len: usize) -> usize {
    2 * len + SHIFTS - 1
}

/// The sums of [`line_table`], [`SHIFTS`] shifts at a time.
#[inline(always)]
fn correlate_lines<V: Vector>(
    table: &mut [WideLanes],
    line: &[WideLanes],
    query: &[Vec<f64>],
    outer: usize,
    len: usize,
    transposed: bool,
) {
    let stride = line_stride(len);
    let zero = V::Wide::splat(0.0);
    for o in 0..outer {
        let mut v = 0;
        while v < len {
            let shifts = SHIFTS.min(len - v);
            let mut sums = [zero; SHIFTS];
            for (c, values) in line.chunks_exact(len).enumerate() {
                let q = &query[c][o * stride + v..][..len + SHIFTS - 1];
                for (i, lanes) in values.iter().enumerate() {
                    let p = V::Wide::load(lanes);
                    let q = &q[i..][..SHIFTS];
                    for (sum, &q) in sums.iter_mut().zip(q) {
                        *sum = V::Wide::splat(q).mul_add(p, *sum);
                    }
                }
            }
            for (u, sum) in sums[..shifts].iter().enumerate() {
                let mut value = [0.0; LANES];
                sum.store(&mut value);
                store(table, o, v + u, outer, len, transposed, value);
            }
            v += shifts;
        }
    }
}

/// The body of [`TorusJob::form_distances`].
#[inline(always)]
fn form_distances_with<V: Vector>(job: &TorusJob<'_>, scratch: &mut TorusScratch, centre: &Centre) {
    let shape = job.plan.shape;
    let (height, width) = (shape.height, shape.width);
    let channels = shape.channels;
    let plane_len = height * width;
    let torus = job.torus;
    let filled = scratch.group.filled;
    let left_rows = &torus.left_out_rows[centre.row];
    let left_cols = &torus.left_out_cols[centre.col];
    let lines = torus.line_cols.len();
    let TorusScratch {
        query_rows,
        query_norms,
        whole,
        row_tables,
        col_tables,
        constant_rows,
        constant_cols,
        full_norms,
        row_norms,
        col_norms,
        crossing_norms,
        crossings,
        zeros,
        distances,
        ..
    } = scratch;
    let stride = line_stride(width);
    // A(y), the squared norm of the scaled window at the centre.
    let mut window_norm = *full_norms;
    for &e in left_rows {
        for (a, n) in window_norm.iter_mut().zip(&row_norms[e]) {
            *a -= n;
        }
    }
    for &f in left_cols {
        for (a, n) in window_norm.iter_mut().zip(&col_norms[f]) {
            *a -= n;
        }
    }
    for &e in left_rows {
        for &f in left_cols {
            for (a, n) in window_norm.iter_mut().zip(&crossing_norms[e * lines + f]) {
                *a += n;
            }
        }
    }
    let window_norm = V::Wide::load(&window_norm);
    // Lanes without an image are no candidate anywhere.
    let mut absent = [0.0; LANES];
    absent[filled..].fill(NOT_A_CANDIDATE);
    let absent = V::Wide::load(&absent);
    // Output column `x` reads column `x + start` of the doubled rows, for
    // `v_c = x - y_c` modulo the width.
    let start = width - centre.col;
    if left_rows.len() <= 1 && left_cols.len() <= 1 {
        // A window at most one line short of the image along each axis:
        // one pass per row, with zeros for a line not left out.
        for &x_r in &torus.centres.row_takers[centre.row] {
            let v_r = (x_r + height - centre.row) % height;
            let whole = &whole[v_r * 2 * width + start..][..width];
            // The left-out row's table, or its one value where the row is
            // constant (0 where no row is left out).
            let (row_table, row_value, row) = match left_rows.first() {
                Some(&e) => {
                    let r = (torus.line_rows[e] + v_r) % height;
                    let table = &row_tables[e * 2 * plane_len + r * 2 * width..][..2 * width];
                    if constant_rows[e] {
                        (None, V::Wide::load(&table[0]), r)
                    } else {
                        (Some(&table[start..][..width]), V::Wide::splat(0.0), r)
                    }
                }
                None => (None, V::Wide::splat(0.0), 0),
            };
            let (col_table, s) = match left_cols.first() {
                Some(&f) => {
                    let s = (torus.line_cols[f] + start) % width;
                    let row = if constant_cols[f] { 0 } else { v_r };
                    (
                        &col_tables[f * 2 * plane_len + row * 2 * width + s..][..width],
                        s,
                    )
                }
                None => (&zeros[..], 0),
            };
            let crossing = match (left_rows.first(), left_cols.first()) {
                (Some(&e), Some(&f)) => Some(&crossings[(e * lines + f) * channels..][..channels]),
                _ => None,
            };
            let out = &mut distances[x_r * width..][..width];
            let norms = &query_norms[x_r * width..][..width];
            match crossing {
                // One channel (the common case), with its query row cut
                // once per row, and the row's term (a table or one value)
                // chosen once per row: leaving out the other, a subtraction
                // of zero, changes no bit.
                Some([value]) => {
                    let q = &query_rows[0][row * stride + s..][..width];
                    let value = V::Wide::load(value);
                    match row_table {
                        Some(row_table) => {
                            for x_c in 0..width {
                                let c = V::Wide::load(&whole[x_c])
                                    .sub(V::Wide::load(&row_table[x_c]))
                                    .sub(V::Wide::load(&col_table[x_c]));
                                let c = V::Wide::splat(q[x_c]).mul_add(value, c);
                                distance::<V>(norms[x_c], window_norm, c, absent)
                                    .store(&mut out[x_c]);
                            }
                        }
                        None => {
                            for x_c in 0..width {
                                let c = V::Wide::load(&whole[x_c])
                                    .sub(row_value)
                                    .sub(V::Wide::load(&col_table[x_c]));
                                let c = V::Wide::splat(q[x_c]).mul_add(value, c);
                                distance::<V>(norms[x_c], window_norm, c, absent)
                                    .store(&mut out[x_c]);
                            }
                        }
                    }
                }
                _ => {
                    let row_table = row_table.unwrap_or(zeros);
                    for x_c in 0..width {
                        let mut c = V::Wide::load(&whole[x_c])
                            .sub(row_value)
                            .sub(V::Wide::load(&row_table[x_c]))
                            .sub(V::Wide::load(&col_table[x_c]));
                        for (channel, value) in crossing.unwrap_or_default().iter().enumerate() {
                            let q = query_rows[channel][row * stride + s + x_c];
                            c = V::Wide::splat(q).mul_add(V::Wide::load(value), c);
                        }
                        distance::<V>(norms[x_c], window_norm, c, absent).store(&mut out[x_c]);
                    }
                }
            }
        }
        return;
    }
    // Windows further short of the image: the terms of each row are
    // gathered first (table rows to take away, constant lines' values,
    // query rows and values of the crossings), then summed in one pass
    // (about 2% slower than the pass above at k = 27).
    let mut subtract: Vec<&[WideLanes]> = Vec::with_capacity(left_rows.len() + left_cols.len());
    let mut corners: Vec<(&[f64], V::Wide)> =
        Vec::with_capacity(left_rows.len() * left_cols.len() * channels);
    for &x_r in &torus.centres.row_takers[centre.row] {
        let v_r = (x_r + height - centre.row) % height;
        subtract.clear();
        corners.clear();
        let mut constant = V::Wide::splat(0.0);
        for &e in left_rows {
            let r = (torus.line_rows[e] + v_r) % height;
            let table = &row_tables[e * 2 * plane_len + r * 2 * width..][..2 * width];
            if constant_rows[e] {
                constant = constant.add(V::Wide::load(&table[0]));
            } else {
                subtract.push(&table[start..][..width]);
            }
            for &f in left_cols {
                let s = (torus.line_cols[f] + start) % width;
                for channel in 0..channels {
                    let value = V::Wide::load(&crossings[(e * lines + f) * channels + channel]);
                    corners.push((&query_rows[channel][r * stride + s..][..width], value));
                }
            }
        }
        for &f in left_cols {
            let s = (torus.line_cols[f] + start) % width;
            let row = if constant_cols[f] { 0 } else { v_r };
            subtract.push(&col_tables[f * 2 * plane_len + row * 2 * width + s..][..width]);
        }
        let whole = &whole[v_r * 2 * width + start..][..width];
        let out = &mut distances[x_r * width..][..width];
        let norms = &query_norms[x_r * width..][..width];
        for x_c in 0..width {
            let mut c = V::Wide::load(&whole[x_c]).sub(constant);
            for table in &subtract {
                c = c.sub(V::Wide::load(&table[x_c]));
            }
            for (q, value) in &corners {
                c = V::Wide::splat(q[x_c]).mul_add(*value, c);
            }
            distance::<V>(norms[x_c], window_norm, c, absent).store(&mut out[x_c]);
        }
    }
}

/// `d = Q + A - 2 C` from the query window's squared norm `Q`, the lanes'
/// window norms `A` and cross terms `C`, at least `absent` (0, or
/// [`NOT_A_CANDIDATE`] for lanes without an image).
#[inline(always)]
fn distance<V: Vector>(query: f64, window: V::Wide, cross: V::Wide, absent: V::Wide) -> V::Wide {
    V::Wide::splat(query)
        .add(window)
        .sub(cross.mul(V::Wide::splat(2.0)))
        .max(absent)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::machine::fast::avx2::Avx;
    use crate::machine::fast::avx512::Avx512;

    /// The line tables' arguments: table, line, query lines.
    type Lines<'a> = (&'a mut [WideLanes], &'a [WideLanes], &'a [Vec<f64>]);

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn form_distances_avx2(
        job: &TorusJob<'_>,
        scratch: &mut TorusScratch,
        centre: &Centre,
    ) {
        form_distances_with::<Avx>(job, scratch, centre);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn form_distances_avx512(
        job: &TorusJob<'_>,
        scratch: &mut TorusScratch,
        centre: &Centre,
    ) {
        form_distances_with::<Avx512>(job, scratch, centre);
    }

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn correlate_lines_avx2(
        (table, line, query): Lines<'_>,
        outer: usize,
        len: usize,
        transposed: bool,
    ) {
        correlate_lines::<Avx>(table, line, query, outer, len, transposed);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn correlate_lines_avx512(
        (table, line, query): Lines<'_>,
        outer: usize,
        len: usize,
        transposed: bool,
    ) {
        correlate_lines::<Avx512>(table, line, query, outer, len, transposed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::equivariance::{Equivariance, PeriodicFull, PeriodicInterior};
    use crate::image::Shape;
    use crate::locality::Patch;
    use crate::machine::spectral::tests::{plan, values};
    use crate::machine::spectral::{SpectralJob, SpectralPlan};

    #[test]
    fn windows_leave_out_the_lines_past_their_ends() {
        // 28 rows, a window of 27 reaching 13 up: centre 13 covers rows
        // 0..=26, centre 14 rows 1..=27.
        assert_eq!(left_out(13, 13, 27, 28), vec![27]);
        assert_eq!(left_out(14, 13, 27, 28), vec![0]);
        // Three rows short, reaching 12 up.
        assert_eq!(left_out(12, 12, 25, 28), vec![25, 26, 27]);
        assert_eq!(left_out(15, 12, 25, 28), vec![0, 1, 2]);
        // Windows of periodic plans wrap: centre 0 of a 5-row window
        // reaching 2 up covers rows 26, 27, 0, 1, 2.
        assert_eq!(left_out(0, 2, 5, 28), (3..26).collect::<Vec<_>>());
        // A window as large as the image leaves nothing out.
        assert!(left_out(4, 3, 9, 9).is_empty());
        let shape = Shape::new(1, 28, 28).unwrap();
        let torus = TorusPlan::new(&plan(
            shape,
            &Patch::offsets(13, 13, 13, 13),
            &PeriodicInterior,
        ))
        .unwrap();
        assert_eq!(torus.centres.list.len(), 4);
        assert_eq!(
            (torus.line_rows.clone(), torus.line_cols.clone()),
            (vec![0, 27], vec![0, 27])
        );
        // Windows larger than the image take the per-centre transforms.
        assert!(
            TorusPlan::new(&plan(shape, &Patch::offsets(14, 14, 3, 3), &PeriodicFull)).is_none()
        );
        // Periodic windows one line short of a 64x64 image leave out all
        // 128 lines (from some centre): their tables would take 67 MB.
        let large = Shape::new(1, 64, 64).unwrap();
        let patch = Patch::offsets(31, 31, 31, 31);
        assert!(TorusPlan::new(&plan(large, &patch, &PeriodicFull)).is_none());
        assert_eq!(table_bytes(128, 64 * 64), 67_108_864);
        // Interior windows on the same image leave out only 2 rows and 2
        // columns.
        assert!(TorusPlan::new(&plan(large, &patch, &PeriodicInterior)).is_some());
    }

    /// `count` training images of `shape`, seeded, with the lines listed
    /// in `blank` (rows, then columns) set to -1 except in every
    /// `random_every`-th image (none if it exceeds `count`, all if 1).
    fn images(
        shape: Shape,
        count: usize,
        seed: u64,
        blank: (&[usize], &[usize]),
        random_every: usize,
    ) -> Vec<f32> {
        let mut pixels: Vec<f32> = values(count * shape.len(), seed)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let (height, width) = (shape.height, shape.width);
        for (index, image) in pixels.chunks_exact_mut(shape.len()).enumerate() {
            if index % random_every == random_every - 1 {
                continue;
            }
            for plane in image.chunks_exact_mut(height * width) {
                for &r in blank.0 {
                    plane[r * width..][..width].fill(-1.0);
                }
                for &c in blank.1 {
                    for r in 0..height {
                        plane[r * width + c] = -1.0;
                    }
                }
            }
        }
        pixels
    }

    /// The posterior of the whole-torus route and of the per-centre
    /// transforms, with fold intervals `fold`.
    fn both_routes(
        shape: Shape,
        patch: &Patch,
        equivariance: &dyn Equivariance,
        images: &[f32],
        query: &[f32],
        fold: (usize, Option<usize>),
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let plan = plan(shape, patch, equivariance);
        let (signal, beta) = (0.8, 2.5);
        let mut torus = TorusPlan::new(&plan).expect("a window no larger than the image");
        (torus.centres.fold_every, torus.centres.fold_centres) = fold;
        let count = images.len() / shape.len();
        let kept = TrainingSpectra::of(images, shape, count);
        let run = |isa: Isa, spectra: Option<&TrainingSpectra>| {
            let job = TorusJob {
                plan: &plan,
                torus: &torus,
                signal,
                beta,
                isa,
                spectra,
            };
            let mut scratch = job.scratch(query);
            let mut posterior = PartialPosterior::new(shape, beta);
            job.run(
                images.chunks_exact(shape.len()).enumerate(),
                &mut scratch,
                &mut posterior,
            );
            let got = posterior.to_image::<f64>().unwrap().as_slice().to_vec();
            (got, posterior.min_distances().to_vec())
        };
        let (got, nearest) = run(Isa::detected(), None);
        // The kept transforms of the training images give the same
        // correlations to rounding; the nearest distances agree as closely.
        let (with_kept, nearest_kept) = run(Isa::detected(), Some(&kept));
        for (a, b) in with_kept.iter().zip(&got) {
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "kept: {a} against {b}"
            );
        }
        for (a, b) in nearest_kept.iter().zip(&nearest) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "kept nearest: {a} against {b}"
            );
        }
        // Every instruction set: the vector ones to the bit, the portable
        // one (without fused multiply-adds) to the rounding of `f32`.
        for isa in Isa::available() {
            let (other, _) = run(isa, None);
            if isa > Isa::Portable && Isa::detected() > Isa::Portable {
                assert_eq!(other, got, "{isa:?}");
            } else {
                for (a, b) in other.iter().zip(&got) {
                    assert!(
                        (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                        "{isa:?}: {a} against {b}"
                    );
                }
            }
        }
        let spectral = SpectralPlan::new(&plan).unwrap();
        let job = SpectralJob {
            plan: &plan,
            spectral: &spectral,
            signal,
            beta,
            isa: Isa::detected(),
        };
        let mut scratch = job.scratch(query);
        let mut posterior = PartialPosterior::new(shape, beta);
        job.run(
            images.chunks_exact(shape.len()).enumerate(),
            &mut scratch,
            &mut posterior,
        );
        let want = posterior.to_image::<f64>().unwrap().as_slice().to_vec();
        for (a, b) in nearest.iter().zip(posterior.min_distances()) {
            assert!(
                (a - b).abs() <= 1e-9 * b.abs().max(1.0),
                "nearest {a} against {b}"
            );
        }
        (got, want, nearest)
    }

    #[test]
    fn the_whole_torus_agrees_with_the_per_centre_transforms() {
        type Case<'a> = (
            Shape,
            Patch,
            &'a dyn Equivariance,
            (&'a [usize], &'a [usize]),
        );
        let cases: Vec<Case> = vec![
            // One line short along both axes, as ELS at k = H - 1.
            (
                Shape::new(1, 12, 12).unwrap(),
                Patch::offsets(5, 5, 5, 5),
                &PeriodicInterior,
                (&[0, 11], &[0, 11]),
            ),
            // Three lines short, asymmetric, rectangular, two channels.
            (
                Shape::new(2, 11, 13).unwrap(),
                Patch::offsets(5, 3, 2, 7),
                &PeriodicInterior,
                (&[0, 9, 10], &[0, 1, 12]),
            ),
            // Short along one axis only.
            (
                Shape::new(1, 9, 10).unwrap(),
                Patch::offsets(4, 4, 3, 3),
                &PeriodicInterior,
                (&[], &[0, 1, 2, 9]),
            ),
            // Windows of the whole image.
            (
                Shape::new(3, 7, 7).unwrap(),
                Patch::offsets(3, 3, 3, 3),
                &PeriodicInterior,
                (&[], &[]),
            ),
            // Candidate windows that wrap: every line is left out by some centre.
            (
                Shape::new(1, 8, 9).unwrap(),
                Patch::offsets(3, 2, 4, 3),
                &PeriodicFull,
                (&[0, 5], &[2, 8]),
            ),
        ];
        let mut checked = 0;
        for (case, (shape, patch, equivariance, blank)) in cases.into_iter().enumerate() {
            for (count, random_every) in [(21, 1), (16, 5), (3, 100), (17, 1000)] {
                let seed = 10 * case as u64 + count as u64;
                let images = images(shape, count, seed, blank, random_every);
                let query: Vec<f32> = values(shape.len(), seed + 1)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                for fold in [(100, None), (1, Some(1))] {
                    let (got, want, _) =
                        both_routes(shape, &patch, equivariance, &images, &query, fold);
                    for (g, w) in got.iter().zip(&want) {
                        assert!(
                            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
                            "{shape} {patch:?} {count} images: {g} against {w}"
                        );
                    }
                    checked += 1;
                }
            }
        }
        assert_eq!(checked, 40);
    }

    /// Blank lines take the line sums of the query instead of a table; a
    /// group where one image has a line that is not blank takes the table
    /// for every lane.
    #[test]
    fn constant_lines_take_the_query_line_sums() {
        let shape = Shape::new(1, 10, 10).unwrap();
        let patch = Patch::offsets(4, 4, 4, 4);
        let plan = plan(shape, &patch, &PeriodicInterior);
        let torus = TorusPlan::new(&plan).unwrap();
        assert_eq!(torus.line_rows, vec![0, 9]);
        let query: Vec<f32> = values(100, 3).iter().map(|&v| v as f32).collect();
        for (random_every, constant) in [(1000, true), (1, false)] {
            let images = images(shape, 8, 4, (&[0, 9], &[0, 9]), random_every);
            let job = TorusJob {
                plan: &plan,
                torus: &torus,
                signal: 0.7,
                beta: 1.0,
                isa: Isa::detected(),
                spectra: None,
            };
            let mut scratch = job.scratch(&query);
            let mut posterior = PartialPosterior::new(shape, 1.0);
            job.run(
                images.chunks_exact(100).enumerate(),
                &mut scratch,
                &mut posterior,
            );
            assert_eq!(scratch.constant_rows, vec![constant; 2]);
            assert_eq!(scratch.constant_cols, vec![constant; 2]);
            let (got, want, _) = both_routes(
                shape,
                &patch,
                &PeriodicInterior,
                &images,
                &query,
                (100, None),
            );
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{g} against {w}");
            }
        }
    }
}
