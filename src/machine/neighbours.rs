//! Zero-padded windows as large as the image but for a line: every
//! candidate centre at most one pixel from its output pixel, and one pass
//! over each training image.
//!
//! With zero padding, a window one line short of the image along an axis
//! (`k = H - 1` on an even side `H`, as at k = 27 on MNIST) leaves that
//! axis two interior coordinates: an output pixel in one of the two
//! middle lines compares its window with those of both, every other
//! pixel only with its own location. So the displacement `delta = y - x`
//! between candidate centre `y` and output pixel `x` is `-1`, `0` or `+1`
//! along each axis, and the cross term of a displacement is
//!
//! ```text
//! C_delta(x) = sum over z in W(x) of q(z) p(z + delta)
//! ```
//!
//! with `W(x)` the window of `x` clipped to the image (the padding is
//! zero).
//!
//! - For `delta = 0`, which every output pixel takes, the window sums of
//!   `q p`, and of `p^2` for the window norms `A`, come from summed-area
//!   tables: `T(i, j)` is the sum over rows `0 .. i` and columns
//!   `0 .. j`. The rows `lo .. hi` of the window of output row `i`, over
//!   the columns `0 .. j`, are `T(hi, j) - T(lo, j)` (`T(hi, j)` alone
//!   where `lo` is 0), and a window is one more difference along the row.
//! - For a displacement of one pixel along an axis, the window of every
//!   output pixel that takes it spans all of that axis where both `q(z)`
//!   and `p(z + delta)` lie in the image (the route is offered only
//!   then), so only the other axis is windowed: `(0, +-1)` needs one sum
//!   per row, `(+-1, 0)` one per column, and the four diagonal
//!   displacements one sum each.
//!
//! [`choose`] checks these properties on the plan, not the constraint's
//! name, so a constraint of one's own with zero padding and
//! displacements of at most one pixel takes the route too.
//!
//! All of them are gathered in one pass over the training pixels, eight
//! images at a time (the lanes, as in [`super::fast`]): each value
//! `p(r, c)`, widened once, meets the nine query values around `(r, c)`,
//! ten multiply-adds per pixel where the general lane kernel pays sliding
//! window sums for each displacement. The distances are then
//! `Q(x) + A(x + delta) - 2 C_delta(x)` (the query carries the factor
//! `2 a`, `A` the factor `a^2`), screened and added to the softmax states
//! as in [`fast::add_listed_with`]. Everything is `f64` until the
//! softmax; [`rounding_steps`] bounds the rounding of the sums, and the
//! machine takes this route only where that bound keeps the exponent
//! within its budget. At k = 27 on MNIST it is 1.5x to 1.7x faster than
//! the lanes in criterion's means and 1.9x to 2.1x in the best
//! evaluations (`docs/performance.md`, method 18).

use super::fast::{self, LANES, LaneState, Lanes, NOT_A_CANDIDATE, Portable, Vector, Wide};
use super::fast::{WideLanes, add_listed_with, add_run_with, interleave_row};
use super::plan::{AxisPlan, Plan};
use super::posterior::PartialPosterior;
use super::simd::{Aligned, Isa};
use crate::equivariance::Boundary;

/// One axis of a [`NeighbourPlan`].
#[derive(Clone, Debug)]
struct AxisWindows {
    len: usize,
    /// Per output coordinate `i`, the coordinates `lo .. hi` its window
    /// covers inside the image.
    windows: Vec<(usize, usize)>,
    /// The output coordinates that take the displacement `-1` and `+1`.
    back: Vec<usize>,
    forward: Vec<usize>,
}

impl AxisWindows {
    /// The axis of `axis` (`len` long, windows reaching `before` and
    /// `after` coordinates from their centre), if its displacements are
    /// `-1`, `0` and `+1` only, `0` serves every coordinate, and each
    /// coordinate that takes `-1` or `+1` has a window spanning every
    /// coordinate `z` with `z` and `z + delta` in the image.
    fn new(axis: &AxisPlan, len: usize, before: usize, after: usize) -> Option<Self> {
        let windows: Vec<(usize, usize)> = (0..len)
            .map(|i| (i.saturating_sub(before), (i + after + 1).min(len)))
            .collect();
        let (mut back, mut forward) = (Vec::new(), Vec::new());
        let mut own = false;
        for shift in &axis.shifts {
            match shift.delta {
                0 => own = shift.queries.iter().copied().eq(0..len),
                -1 => back = shift.queries.clone(),
                1 => forward = shift.queries.clone(),
                _ => return None,
            }
        }
        // `delta = +1` pairs `z` in `0 .. len - 1`, `-1` pairs `1 .. len`.
        let spans = |takers: &[usize], from: usize, to: usize| {
            takers.iter().all(|&i| {
                let (lo, hi) = windows[i];
                lo <= from && hi >= to
            })
        };
        let full = spans(&forward, 0, len.saturating_sub(1)) && spans(&back, 1, len);
        (own && full).then_some(AxisWindows {
            len,
            windows,
            back,
            forward,
        })
    }

    /// Whether some output coordinate takes a displacement other than 0.
    fn shifts(&self) -> bool {
        !self.back.is_empty() || !self.forward.is_empty()
    }

    /// The output coordinates that take displacement `delta`.
    fn takers(&self, delta: isize) -> std::ops::Range<usize> {
        0..match delta {
            -1 => self.back.len(),
            1 => self.forward.len(),
            _ => self.len,
        }
    }

    /// The `n`-th output coordinate that takes displacement `delta`.
    fn taker(&self, delta: isize, n: usize) -> usize {
        match delta {
            -1 => self.back[n],
            1 => self.forward[n],
            _ => n,
        }
    }
}

/// The displacements `(rows, columns)` other than `(0, 0)`, in the order
/// their candidates are added.
const SHIFTS: [(isize, isize); 8] = [
    (0, -1),
    (0, 1),
    (-1, 0),
    (1, 0),
    (-1, -1),
    (-1, 1),
    (1, -1),
    (1, 1),
];

/// At most this many groups of eight images between folds of the lane
/// states into the posterior (fewer where a lane could pass
/// [`fast::FOLD_TERMS`] terms at a pixel). Each fold costs an exponential
/// per output pixel; every 64 groups instead of every 16 was 1.02x to
/// 1.05x faster at k = 27 on 1,000 MNIST digits (one thread, alternated).
const FOLD_GROUPS: usize = 64;

/// The route of this module for one [`Plan`]: see [`choose`].
#[derive(Clone, Debug)]
pub(crate) struct NeighbourPlan {
    rows: AxisWindows,
    cols: AxisWindows,
    /// Groups of eight images between folds of the lane states into the
    /// posterior.
    fold_every: usize,
    /// The most candidates one displacement adds at a time: a row of
    /// `(0, 0)`, or all of another displacement.
    batch: usize,
}

impl NeighbourPlan {
    /// The output pixels that take displacement `(dr, dc)`: `(rows, cols)`
    /// counts.
    fn takers(&self, dr: isize, dc: isize) -> (usize, usize) {
        (self.rows.takers(dr).len(), self.cols.takers(dc).len())
    }
}

/// The route for `plan`, if it applies: zero padding, one channel, and
/// along each axis displacements of at most one pixel, taken only by
/// output pixels whose windows span that axis (see the module's text),
/// with at least one displacement other than 0.
pub(crate) fn choose(plan: &Plan) -> Option<NeighbourPlan> {
    if plan.boundary != Boundary::Zero || plan.shape.channels != 1 || plan.global {
        return None;
    }
    let patch = &plan.patch;
    let shape = plan.shape;
    let rows = AxisWindows::new(&plan.rows, shape.height, patch.up(), patch.down())?;
    let cols = AxisWindows::new(&plan.cols, shape.width, patch.left(), patch.right())?;
    if !rows.shifts() && !cols.shifts() {
        return None;
    }
    let (most_rows, most_cols) = fast::most_candidates(plan);
    let mut route = NeighbourPlan {
        rows,
        cols,
        fold_every: (fast::FOLD_TERMS / (most_rows * most_cols)).clamp(1, FOLD_GROUPS),
        batch: shape.width,
    };
    for (dr, dc) in SHIFTS {
        let (rows, cols) = route.takers(dr, dc);
        route.batch = route.batch.max(rows * cols);
    }
    Some(route)
}

/// Training images per chunk: one chunk per core, in whole groups of
/// eight. Each chunk starts with no reference distance at any output
/// pixel, and its first groups, many of whose candidates lower the
/// reference, cost several times a later one: on one thread (1,000
/// MNIST digits at k = 27) two chunks took 1.39 ms to 1.45 ms against
/// 1.21 ms to 1.23 ms for one, and on two cores one chunk per core
/// instead of two took the best of 300 evaluations from 0.84 ms to
/// 0.94 ms down to 0.66 ms to 0.72 ms, and their means from 0.99 ms to
/// 1.23 ms down to 0.82 ms to 0.93 ms (the host busy, alternated). A
/// core held up by the host is then not relieved by the other, which
/// the means include.
pub(crate) fn chunk_len(images: usize) -> usize {
    #[cfg(feature = "parallel")]
    let workers = rayon::current_num_threads().max(1);
    #[cfg(not(feature = "parallel"))]
    let workers = 1;
    images.div_ceil(workers).div_ceil(LANES).max(1) * LANES
}

/// Rounding steps of the route on an `H x W` image, in units of
/// `eps M` with `M` the largest term (as in the bound of the lane
/// kernel's expanded distances). An entry of a summed-area table sums at
/// most `W` products along a row (partial sums up to `W M`) and adds the
/// entry above (`H` steps of partial sums up to `H W M`):
/// `H W (H + W)`. A window is two differences of two entries each:
/// `4 H W (H + W) + 3 H W` for `2 C` and for the query norms `Q`, one
/// step more for `A` (the factor `a^2`), and the final sum `6 H W`. In all
/// `H W (12 (H + W) + 16)`: the sums of the other displacements (one axis
/// windowed, or none) stay below the first term.
pub(crate) fn rounding_steps(plan: &Plan) -> f64 {
    let (h, w) = (plan.shape.height as f64, plan.shape.width as f64);
    h * w * (12.0 * (h + w) + 16.0)
}

/// Everything a worker needs that is shared by all training images.
pub(crate) struct NeighbourJob<'a> {
    pub plan: &'a Plan,
    pub route: &'a NeighbourPlan,
    pub signal: f64,
    pub beta: f64,
    pub isa: Isa,
}

/// What the route needs of the query, built once per evaluation.
pub(crate) struct NeighbourQuery {
    /// The query times `2 a`, widened, with a border of one zero.
    scaled: Vec<f64>,
    /// `Q(x)`, the squared norm of every output pixel's query window.
    norms: Vec<f64>,
}

/// Buffers of one worker.
pub(crate) struct NeighbourScratch {
    query: Vec<f64>,
    query_norms: Vec<f64>,
    /// The eight images of a group, interleaved value by value.
    image: Aligned<Lanes>,
    /// Summed-area tables of `p^2` and `2 a q p`: entry `(i, j)` of the
    /// `(H + 1) x (W + 1)` table is the sum over image rows `0 .. i` and
    /// columns `0 .. j`.
    squares: Aligned<WideLanes>,
    cross: Aligned<WideLanes>,
    /// Running sums of one axis's sums of a displacement (`H + 1` or
    /// `W + 1` values).
    along: Vec<WideLanes>,
    /// Sums of the window rows of one output row over every run of
    /// columns from the first (`W + 1` values).
    window_squares: Aligned<WideLanes>,
    window_cross: Aligned<WideLanes>,
    /// Sums of the cross terms of `(0, -1)` and `(0, +1)` per query row,
    /// of `(-1, 0)` and `(+1, 0)` per query column, and of the four
    /// diagonal displacements (`(-1, -1)`, `(-1, +1)`, `(+1, -1)`,
    /// `(+1, +1)`) over the image.
    row_back: Vec<WideLanes>,
    row_forward: Vec<WideLanes>,
    col_back: Vec<WideLanes>,
    col_forward: Vec<WideLanes>,
    diagonals: [WideLanes; 4],
    /// Room for the candidates added at a time (`batch`): positions,
    /// distances, values, and the screening list.
    listed: Vec<u32>,
    distances: Vec<WideLanes>,
    values: Vec<Lanes>,
    pending: Vec<u32>,
    state: LaneState,
}

impl NeighbourJob<'_> {
    /// The query scaled by `2 a` with its zero border, and its window
    /// norms.
    pub fn query(&self, query: &[f32]) -> NeighbourQuery {
        let shape = self.plan.shape;
        let (height, width) = (shape.height, shape.width);
        let stride = width + 2;
        let mut scaled = vec![0.0; (height + 2) * stride];
        let factor = 2.0 * self.signal;
        for (r, row) in query.chunks_exact(width).enumerate() {
            for (out, &v) in scaled[(r + 1) * stride + 1..][..width].iter_mut().zip(row) {
                *out = factor * v as f64;
            }
        }
        NeighbourQuery {
            scaled,
            norms: self.query_norms(query),
        }
    }

    /// `Q(x)` of every output pixel, from a summed-area table of `q^2`
    /// (the squares of `f32` values are exact in `f64`).
    fn query_norms(&self, query: &[f32]) -> Vec<f64> {
        let (rows, cols) = (&self.route.rows, &self.route.cols);
        let (height, width) = (rows.len, cols.len);
        let table = width + 1;
        let mut sums = vec![0.0; (height + 1) * table];
        for (r, values) in query.chunks_exact(width).enumerate() {
            let mut row = 0.0;
            for (c, &v) in values.iter().enumerate() {
                let v = v as f64;
                row += v * v;
                sums[(r + 1) * table + c + 1] = sums[r * table + c + 1] + row;
            }
        }
        let mut norms = Vec::with_capacity(height * width);
        for &(top, bottom) in &rows.windows {
            let (upper, lower) = (
                &sums[top * table..][..table],
                &sums[bottom * table..][..table],
            );
            for &(left, right) in &cols.windows {
                norms.push((lower[right] - upper[right]) - (lower[left] - upper[left]));
            }
        }
        norms
    }

    /// The buffers of one worker.
    pub fn scratch(&self, query: &NeighbourQuery) -> NeighbourScratch {
        let shape = self.plan.shape;
        let (height, width) = (shape.height, shape.width);
        let positions = shape.positions();
        let batch = self.route.batch;
        let zeros = |len: usize| vec![[0.0; LANES]; len];
        NeighbourScratch {
            query: query.scaled.clone(),
            query_norms: query.norms.clone(),
            image: Aligned::zeros(positions),
            squares: Aligned::zeros((height + 1) * (width + 1)),
            cross: Aligned::zeros((height + 1) * (width + 1)),
            along: zeros(height.max(width) + 1),
            window_squares: Aligned::zeros(width + 1),
            window_cross: Aligned::zeros(width + 1),
            row_back: zeros(height),
            row_forward: zeros(height),
            col_back: zeros(width),
            col_forward: zeros(width),
            diagonals: [[0.0; LANES]; 4],
            listed: vec![0; batch],
            distances: zeros(batch),
            values: vec![[0.0; LANES]; batch],
            pending: vec![0; batch],
            state: LaneState::new(positions, 1),
        }
    }

    /// Adds the candidates of every image in `images` to `posterior`.
    pub fn run<'i>(
        &self,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut NeighbourScratch,
        posterior: &mut PartialPosterior,
    ) {
        match self.isa {
            // SAFETY: `Isa::detected` gives a level only where the CPU
            // supports it, and the levels a job is built with come from it
            // or from `Isa::available`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::run_avx512(self, images, scratch, posterior) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::run_avx2(self, images, scratch, posterior) },
            _ => run_with::<Portable>(self, images, scratch, posterior),
        }
    }
}

#[inline(always)]
fn run_with<'i, V: Vector>(
    job: &NeighbourJob<'_>,
    images: impl Iterator<Item = &'i [f32]>,
    scratch: &mut NeighbourScratch,
    posterior: &mut PartialPosterior,
) {
    let mut group: [&[f32]; LANES] = [&[]; LANES];
    let mut filled = 0;
    let mut groups = 0;
    let mut images = images.peekable();
    while let Some(image) = images.next() {
        group[filled] = image;
        filled += 1;
        if filled < LANES && images.peek().is_some() {
            continue;
        }
        interleave::<V>(&mut scratch.image, &group[..filled]);
        sum_group::<V>(job, scratch);
        add_group::<V>(job, scratch, filled);
        filled = 0;
        groups += 1;
        if groups == job.route.fold_every {
            scratch.state.fold_into(posterior, job.beta);
            groups = 0;
        }
    }
    if groups > 0 {
        scratch.state.fold_into(posterior, job.beta);
    }
}

/// Writes the images of `group` into the lanes of `image`, zeros into the
/// lanes past them: as one run of `H W` values, eight values of each
/// image at a time (`H W` is a multiple of eight on most image sets).
#[inline(always)]
fn interleave<V: Vector>(image: &mut [Lanes], group: &[&[f32]]) {
    let len = image.len();
    interleave_row::<V>(
        image.as_flattened_mut(),
        group.iter().map(|values| &values[..len]),
    );
}

/// The pass over the training pixels: the summed-area tables of `p^2`
/// and `2 a q p`, and the sums of the eight displacements of one pixel.
#[inline(always)]
fn sum_group<V: Vector>(job: &NeighbourJob<'_>, scratch: &mut NeighbourScratch) {
    let shape = job.plan.shape;
    let (height, width) = (shape.height, shape.width);
    let stride = width + 2;
    let NeighbourScratch {
        query,
        image,
        squares,
        cross,
        row_back,
        row_forward,
        col_back,
        col_forward,
        diagonals,
        ..
    } = scratch;
    let zero = V::Wide::splat(0.0);
    col_back.fill([0.0; LANES]);
    col_forward.fill([0.0; LANES]);
    let mut corners = [zero; 4];
    let col_back = &mut col_back[..width];
    let col_forward = &mut col_forward[..width];
    let table = width + 1;
    for r in 0..height {
        let values = &image[r * width..][..width];
        // Query rows r - 1, r and r + 1, each from one column left.
        let up = &query[r * stride..][..stride];
        let mid = &query[(r + 1) * stride..][..stride];
        let down = &query[(r + 2) * stride..][..stride];
        let (above, below) = squares.split_at_mut((r + 1) * table);
        let (squares_above, squares_here) =
            (&above[r * table + 1..][..width], &mut below[1..][..width]);
        let (above, below) = cross.split_at_mut((r + 1) * table);
        let (cross_above, cross_here) =
            (&above[r * table + 1..][..width], &mut below[1..][..width]);
        let (mut square_row, mut cross_row) = (zero, zero);
        let (mut forward, mut back) = (zero, zero);
        let mut diagonal = [zero; 4];
        // The query values around column c: `[c - 1, c, c + 1]` of each
        // row, as three-value windows (no index to check).
        let around = up.windows(3).zip(mid.windows(3)).zip(down.windows(3));
        let tables = squares_above
            .iter()
            .zip(squares_here.iter_mut())
            .zip(cross_above.iter().zip(cross_here.iter_mut()));
        let columns = col_forward.iter_mut().zip(col_back.iter_mut());
        for ((((value, ((up, mid), down)), tables), columns), _) in values
            .iter()
            .zip(around)
            .zip(tables)
            .zip(columns)
            .zip(0..width)
        {
            let ((squares_above, squares_here), (cross_above, cross_here)) = tables;
            let (col_forward, col_back) = columns;
            let p = V::Wide::load_widened(value);
            square_row = p.mul_add(p, square_row);
            cross_row = V::Wide::splat(mid[1]).mul_add(p, cross_row);
            square_row
                .add(V::Wide::load(squares_above))
                .store(squares_here);
            cross_row.add(V::Wide::load(cross_above)).store(cross_here);
            // q(z) p(z + delta) with z = (r, c) - delta.
            forward = V::Wide::splat(mid[0]).mul_add(p, forward);
            back = V::Wide::splat(mid[2]).mul_add(p, back);
            V::Wide::splat(up[1])
                .mul_add(p, V::Wide::load(col_forward))
                .store(col_forward);
            V::Wide::splat(down[1])
                .mul_add(p, V::Wide::load(col_back))
                .store(col_back);
            diagonal[0] = V::Wide::splat(down[2]).mul_add(p, diagonal[0]);
            diagonal[1] = V::Wide::splat(down[0]).mul_add(p, diagonal[1]);
            diagonal[2] = V::Wide::splat(up[2]).mul_add(p, diagonal[2]);
            diagonal[3] = V::Wide::splat(up[0]).mul_add(p, diagonal[3]);
        }
        forward.store(&mut row_forward[r]);
        back.store(&mut row_back[r]);
        for (corner, row) in corners.iter_mut().zip(diagonal) {
            *corner = corner.add(row);
        }
    }
    for (out, corner) in diagonals.iter_mut().zip(corners) {
        corner.store(out);
    }
}

/// The sum over rows `rows` and columns `cols` of a summed-area table
/// `width + 1` entries wide.
#[inline(always)]
fn window_sum<V: Vector>(
    table: &[WideLanes],
    width: usize,
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
) -> V::Wide {
    let (upper, lower) = (&table[top * (width + 1)..], &table[bottom * (width + 1)..]);
    let right_part = V::Wide::load(&lower[right]).sub(V::Wide::load(&upper[right]));
    let left_part = V::Wide::load(&lower[left]).sub(V::Wide::load(&upper[left]));
    right_part.sub(left_part)
}

/// The window norms `A(y)` from the summed-area table of `p^2`.
struct Norms<'a, V: Vector> {
    squares: &'a [WideLanes],
    route: &'a NeighbourPlan,
    width: usize,
    squared_signal: V::Wide,
    /// [`NOT_A_CANDIDATE`] in the lanes that hold no image.
    empty: V::Wide,
}

impl<V: Vector> Norms<'_, V> {
    /// `A(y)` at centre `(row, col)`.
    #[inline(always)]
    fn at(&self, row: usize, col: usize) -> V::Wide {
        let (rows, cols) = (self.route.rows.windows[row], self.route.cols.windows[col]);
        window_sum::<V>(self.squares, self.width, rows, cols)
            .mul_add(self.squared_signal, self.empty)
    }
}

/// Turns the sums of [`sum_group`] into distances and adds the
/// candidates, displacement by displacement: `(0, 0)` row by row, then
/// those of one pixel.
#[inline(always)]
fn add_group<V: Vector>(job: &NeighbourJob<'_>, scratch: &mut NeighbourScratch, filled: usize) {
    let route = job.route;
    let shape = job.plan.shape;
    let (height, width) = (shape.height, shape.width);
    let NeighbourScratch {
        query_norms,
        image,
        squares,
        cross,
        along,
        window_squares,
        window_cross,
        row_back,
        row_forward,
        col_back,
        col_forward,
        diagonals,
        listed,
        distances,
        values,
        pending,
        state,
        ..
    } = scratch;
    let zero = V::Wide::splat(0.0);
    let squared_signal = V::Wide::splat(job.signal * job.signal);
    // Lanes without an image are no candidate.
    let mut empty = [0.0; LANES];
    empty[filled..].fill(NOT_A_CANDIDATE);
    let empty = V::Wide::load(&empty);
    // `A(y) = a^2 sum p^2` over the window of `y`.
    let norms = Norms::<V> {
        squares,
        route,
        width,
        squared_signal,
        empty,
    };

    // Displacement (0, 0), one output row at a time: the sums of the
    // window's rows over every run of columns from the first are table
    // row `hi` less table row `lo` (zero where `lo` is 0).
    let table = width + 1;
    let (squares, cross): (&[WideLanes], &[WideLanes]) = (squares, cross);
    let window_squares = &mut window_squares[..table];
    let window_cross = &mut window_cross[..table];
    for i in 0..height {
        let (lo, hi) = route.rows.windows[i];
        let (squares_bottom, cross_bottom) = (
            &squares[hi * table..][..table],
            &cross[hi * table..][..table],
        );
        let (row_squares, row_cross): (&[WideLanes], &[WideLanes]) = if lo == 0 {
            (squares_bottom, cross_bottom)
        } else {
            let (squares_top, cross_top) = (
                &squares[lo * table..][..table],
                &cross[lo * table..][..table],
            );
            let bottom = squares_bottom.iter().zip(cross_bottom);
            let top = squares_top.iter().zip(cross_top);
            let out = window_squares.iter_mut().zip(window_cross.iter_mut());
            for (((squares_bottom, cross_bottom), (squares_top, cross_top)), (squares, cross)) in
                bottom.zip(top).zip(out)
            {
                V::Wide::load(squares_bottom)
                    .sub(V::Wide::load(squares_top))
                    .store(squares);
                V::Wide::load(cross_bottom)
                    .sub(V::Wide::load(cross_top))
                    .store(cross);
            }
            (window_squares, window_cross)
        };
        let query_row = &query_norms[i * width..][..width];
        let distances_row = &mut distances[..width];
        let windows = &route.cols.windows[..width];
        for ((&q, out), &(left, right)) in
            query_row.iter().zip(distances_row.iter_mut()).zip(windows)
        {
            let norm = V::Wide::load(&row_squares[right])
                .sub(V::Wide::load(&row_squares[left]))
                .mul_add(squared_signal, empty);
            let cross = V::Wide::load(&row_cross[right]).sub(V::Wide::load(&row_cross[left]));
            V::Wide::splat(q).add(norm).sub(cross).store(out);
        }
        add_run_with::<V>(
            job.beta,
            i * width,
            distances_row,
            &image[i * width..][..width],
            state,
            pending,
        );
    }

    // The displacements of one pixel: their cross terms are sums over
    // the output pixel's window along one axis (running sums of the row
    // or column sums) or over none (diagonals).
    for (dr, dc) in SHIFTS {
        let (row_takers, col_takers) = (route.rows.takers(dr), route.cols.takers(dc));
        if row_takers.is_empty() || col_takers.is_empty() {
            continue;
        }
        // Running sums of the windowed axis.
        let sums: &[WideLanes] = match (dr, dc) {
            (0, _) if dc < 0 => &row_back[..height],
            (0, _) => &row_forward[..height],
            (_, 0) if dr < 0 => &col_back[..width],
            (_, 0) => &col_forward[..width],
            _ => &[],
        };
        let mut sum = zero;
        along[0] = [0.0; LANES];
        for (out, s) in along[1..].iter_mut().zip(sums) {
            sum = sum.add(V::Wide::load(s));
            sum.store(out);
        }
        let diagonal = diagonals[usize::from(dr > 0) * 2 + usize::from(dc > 0)];
        let mut count = 0;
        for n in row_takers.clone() {
            let i = route.rows.taker(dr, n);
            for m in col_takers.clone() {
                let j = route.cols.taker(dc, m);
                let (lo, hi) = match (dr, dc) {
                    (0, _) => route.rows.windows[i],
                    (_, 0) => route.cols.windows[j],
                    _ => (0, 0),
                };
                let cross = if dr == 0 || dc == 0 {
                    V::Wide::load(&along[hi]).sub(V::Wide::load(&along[lo]))
                } else {
                    V::Wide::load(&diagonal)
                };
                let (y_row, y_col) = ((i as isize + dr) as usize, (j as isize + dc) as usize);
                V::Wide::splat(query_norms[i * width + j])
                    .add(norms.at(y_row, y_col))
                    .sub(cross)
                    .store(&mut distances[count]);
                listed[count] = (i * width + j) as u32;
                values[count] = image[y_row * width + y_col];
                count += 1;
            }
        }
        add_listed_with::<V>(
            job.beta,
            &listed[..count],
            &distances[..count],
            &values[..count],
            state,
            pending,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::machine::fast::avx2::Avx;
    use crate::machine::fast::avx512::Avx512;

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2<'i>(
        job: &NeighbourJob<'_>,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut NeighbourScratch,
        posterior: &mut PartialPosterior,
    ) {
        run_with::<Avx>(job, images, scratch, posterior);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512<'i>(
        job: &NeighbourJob<'_>,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut NeighbourScratch,
        posterior: &mut PartialPosterior,
    ) {
        run_with::<Avx512>(job, images, scratch, posterior);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::equivariance::{PeriodicInterior, ZeroPadded};
    use crate::image::Shape;
    use crate::locality::Patch;
    use crate::machine::fast::{LaneJob, LanePlan};
    use crate::machine::spectral::tests::{plan, values};

    fn square(side: usize) -> Patch {
        let r = side / 2;
        Patch::offsets(r, r, r, r)
    }

    #[test]
    fn the_route_takes_zero_padded_windows_one_line_short() {
        let mnist = Shape::new(1, 28, 28).unwrap();
        let route = choose(&plan(mnist, &square(27), &ZeroPadded)).unwrap();
        // The two middle rows: 13 takes row 14 too, 14 takes row 13.
        assert_eq!(
            (route.rows.forward.clone(), route.rows.back.clone()),
            (vec![13], vec![14])
        );
        assert_eq!(
            (route.cols.forward.clone(), route.cols.back.clone()),
            (vec![13], vec![14])
        );
        assert_eq!(route.rows.windows[0], (0, 14));
        assert_eq!(route.rows.windows[13], (0, 27));
        assert_eq!(route.rows.windows[14], (1, 28));
        assert_eq!(route.rows.windows[27], (14, 28));
        assert_eq!(route.fold_every, FOLD_GROUPS);
        // Two lines short: displacements of two pixels.
        assert!(choose(&plan(mnist, &square(25), &ZeroPadded)).is_none());
        // Periodic queries, and windows that leave every pixel its own
        // location only (the image's side, or more).
        assert!(choose(&plan(mnist, &square(27), &PeriodicInterior)).is_none());
        assert!(choose(&plan(mnist, &square(29), &ZeroPadded)).is_none());
        let odd = Shape::new(1, 27, 27).unwrap();
        assert!(choose(&plan(odd, &square(27), &ZeroPadded)).is_none());
        // One line short along the rows only.
        let tall = Shape::new(1, 12, 9).unwrap();
        let route = choose(&plan(tall, &square(11), &ZeroPadded)).unwrap();
        assert!(route.rows.shifts() && !route.cols.shifts());
        // More than one channel takes the lanes.
        let colour = Shape::new(3, 28, 28).unwrap();
        assert!(choose(&plan(colour, &square(27), &ZeroPadded)).is_none());
        assert_eq!(
            rounding_steps(&plan(mnist, &square(27), &ZeroPadded)),
            539_392.0
        );
    }

    /// A query that is a training image moved by one displacement: at
    /// the output pixels that take that displacement its candidate
    /// matches the query window exactly (the padding is zero in both), so
    /// the nearest distance there is 0 and, at a large `beta`, the output
    /// is that candidate's value. A wrong sum for any one displacement
    /// (a diagonal serves one pixel only) fails here.
    #[test]
    fn each_displacement_finds_its_exact_match() {
        let shape = Shape::new(1, 10, 10).unwrap();
        let plan = plan(shape, &square(9), &ZeroPadded);
        let route = choose(&plan).unwrap();
        let (signal, beta) = (0.8, 1e3);
        let images: Vec<f32> = values(3 * shape.len(), 7)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let first = &images[..shape.len()];
        for (dr, dc) in SHIFTS {
            // q(z) = a p(z + delta), zero where z + delta leaves the image.
            let query: Vec<f32> = (0..shape.len())
                .map(|z| {
                    let (r, c) = ((z / 10) as isize + dr, (z % 10) as isize + dc);
                    if (0..10).contains(&r) && (0..10).contains(&c) {
                        signal as f32 * first[(r * 10 + c) as usize]
                    } else {
                        0.0
                    }
                })
                .collect();
            let job = NeighbourJob {
                plan: &plan,
                route: &route,
                signal,
                beta,
                isa: Isa::detected(),
            };
            let mut scratch = job.scratch(&job.query(&query));
            let mut posterior = PartialPosterior::new(shape, beta);
            job.run(
                images.chunks_exact(shape.len()),
                &mut scratch,
                &mut posterior,
            );
            let output = posterior.to_image::<f64>().unwrap();
            let (rows, cols) = (route.rows.takers(dr), route.cols.takers(dc));
            assert!(!rows.is_empty() && !cols.is_empty());
            for n in rows {
                let i = route.rows.taker(dr, n);
                for m in cols.clone() {
                    let j = route.cols.taker(dc, m);
                    let y = ((i as isize + dr) * 10 + j as isize + dc) as usize;
                    let nearest = posterior.min_distances()[i * 10 + j];
                    assert!(
                        nearest.abs() < 1e-9,
                        "({dr}, {dc}) at ({i}, {j}): {nearest}"
                    );
                    let got = output.as_slice()[i * 10 + j];
                    assert!(
                        (got - first[y] as f64).abs() < 1e-6,
                        "({dr}, {dc}) at ({i}, {j}): {got} against {}",
                        first[y]
                    );
                }
            }
        }
    }

    /// The posterior and nearest distances of the route, on instruction
    /// set `isa`, folding every `fold` groups.
    fn run(
        plan: &Plan,
        images: &[f32],
        query: &[f32],
        isa: Isa,
        fold: Option<usize>,
    ) -> (Vec<f64>, Vec<f64>) {
        let (signal, beta) = (0.8, 2.5);
        let mut route = choose(plan).expect("windows one line short");
        if let Some(fold) = fold {
            route.fold_every = fold;
        }
        let job = NeighbourJob {
            plan,
            route: &route,
            signal,
            beta,
            isa,
        };
        let mut scratch = job.scratch(&job.query(query));
        let mut posterior = PartialPosterior::new(plan.shape, beta);
        job.run(
            images.chunks_exact(plan.shape.len()),
            &mut scratch,
            &mut posterior,
        );
        outcome(&posterior)
    }

    /// The same from the general lane kernel, with residual sums.
    fn lanes(plan: &Plan, images: &[f32], query: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (signal, beta) = (0.8, 2.5);
        let count = images.len() / plan.shape.len();
        let lanes = LanePlan::new(plan, count);
        let job = LaneJob {
            plan,
            lanes: &lanes,
            signal,
            beta,
            cross: false,
            isa: Isa::detected(),
        };
        let mut scratch = job.scratch(&job.query(query));
        let mut posterior = PartialPosterior::new(plan.shape, beta);
        job.run(
            images.chunks_exact(plan.shape.len()),
            &mut scratch,
            &mut posterior,
        );
        outcome(&posterior)
    }

    /// The estimate and the nearest distances of `posterior`.
    fn outcome(posterior: &PartialPosterior) -> (Vec<f64>, Vec<f64>) {
        let image = posterior.to_image::<f64>().unwrap().as_slice().to_vec();
        (image, posterior.min_distances().to_vec())
    }

    fn close(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(
                (g - w).abs() <= tolerance * w.abs().max(1.0),
                "{what}: {g} against {w}"
            );
        }
    }

    #[test]
    fn the_route_agrees_with_the_lanes() {
        let cases = [
            (Shape::new(1, 10, 10).unwrap(), square(9)),
            (Shape::new(1, 12, 9).unwrap(), square(11)),
            (Shape::new(1, 7, 12).unwrap(), square(11)),
            (Shape::new(1, 6, 8).unwrap(), Patch::offsets(2, 2, 3, 3)),
            (Shape::new(1, 6, 7).unwrap(), Patch::offsets(3, 1, 2, 3)),
            (Shape::new(1, 28, 28).unwrap(), square(27)),
        ];
        let mut checked = 0;
        for (case, (shape, patch)) in cases.iter().enumerate() {
            let plan = plan(*shape, patch, &ZeroPadded);
            for count in [1, 7, 8, 13, 40] {
                let seed = 100 * case as u64 + count as u64;
                let images: Vec<f32> = values(count * shape.len(), seed)
                    .iter()
                    .map(|&v| v as f32)
                    .collect();
                let query: Vec<f32> = values(shape.len(), seed + 1)
                    .iter()
                    .map(|&v| 1.3 * v as f32)
                    .collect();
                let what = format!("{shape} {patch:?} {count} images");
                let (want, want_nearest) = lanes(&plan, &images, &query);
                let (got, nearest) = run(&plan, &images, &query, Isa::detected(), None);
                close(&got, &want, 2e-6, &what);
                close(&nearest, &want_nearest, 1e-9, &what);
                // Folding after every group changes only the rounding.
                let (folded, _) = run(&plan, &images, &query, Isa::detected(), Some(1));
                close(&folded, &got, 1e-6, &what);
                // Every instruction set: the vector ones to the bit, the
                // portable one (without fused multiply-adds) to the
                // rounding of `f32`.
                for isa in Isa::available() {
                    let (other, _) = run(&plan, &images, &query, isa, None);
                    if isa > Isa::Portable && Isa::detected() > Isa::Portable {
                        assert_eq!(other, got, "{what} {isa:?}");
                    } else {
                        close(&other, &got, 1e-5, &format!("{what} {isa:?}"));
                    }
                }
                checked += 1;
            }
        }
        assert_eq!(checked, 30);
    }
}
