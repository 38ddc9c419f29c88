//! The `f32` kernel: the same exact distances as [`super::kernel`], eight
//! candidates at a time.
//!
//! The eight lanes of a vector are eight training images `p_0 .. p_7`
//! interleaved value by value, all at one displacement `(dr, dc)` (with
//! fewer than [`IMAGE_LANES_FROM`] training images: one image at eight
//! consecutive column displacements `dc0 .. dc0 + 8` instead, written
//! `p_l(z) = p(z + (0, l))` below). One pass down the rows of the windows'
//! bounding box computes, row by row,
//!
//! ```text
//! E(z)[l] = sum_c (q(c, z) - a p_l(c, z + (dr, dc)))^2     residuals
//! R(z)[l] = E(z) + ... + E(z + w - 1)                       sliding along the row
//! D(x)[l] = R(x) + ... + R(x + h - 1)                       running sum of the last h rows
//! ```
//!
//! and feeds each finished row of window distances `D` straight into the
//! softmax. On one-channel images with image lanes (except for a single
//! displacement) the distances are expanded instead, where their rounding
//! allows it (see [`LaneJob::uses_cross_terms`]):
//!
//! ```text
//! d(x; y) = Q(x) + A(y) - 2 C(x, y)      Q, A: squared window norms of q and a p
//! C(x, y) = sum_o q(x + o) a p(y + o)    slid like E above, over rows where q can be non-zero
//! ```
//!
//! There the images are read as stored, `f32` widened to `f64` as they are
//! loaded, and the query carries the factor `2 a`; a displacement that
//! serves only a few output rows sums its products down the columns first
//! (see [`cross_few_rows`]).
//!
//! With a periodic query, displacements `H` (or `W`) apart reach the same
//! candidate centres from output coordinates `H` apart and are walked as
//! one run over virtual coordinates (see [`joined_shifts`]).
//!
//! The cost per residual does not depend on the patch side, and
//! the buffers are one row of residuals, a ring of `h` rows of row sums
//! and one row of distances (tens of kilobytes at most). Residuals, window sums
//! and the reference distance are `f64`, so that the softmax exponent
//! `beta (d - m)` keeps its accuracy when `beta d` is large (small `t`,
//! large windows); weights, normalisers and weighted sums are `f32`.
//!
//! Every output position keeps one reference distance `m` (at least its
//! smallest distance so far) and, per lane, a normaliser and weighted sums
//! relative to `m`. A candidate adds
//!
//! ```text
//! e = exp(beta (m - d)),   Z <- Z + e,   S <- S + e v
//! ```
//!
//! with no rescaling as long as `beta (m - d) <= 8`; a candidate further
//! below the reference first lowers `m` and rescales the position's lanes.
//! The lanes are folded into the `f64` [`PartialPosterior`] as soon as
//! another training image (column lanes, where a lane is every eighth
//! column displacement) or another group of eight (image lanes) could
//! take a lane's sums past [`FOLD_TERMS`] terms at an output pixel, but
//! at least after every image or group, and at most every `FOLD_EVERY`;
//! where one image or group alone could pass [`FOLD_TERMS`] (images with
//! more than about a thousand candidates per pixel), also after every
//! [`FOLD_TERMS`] displacement blocks. So no `f32` sum runs over more
//! than [`FOLD_TERMS`] terms.

use super::plan::{Plan, Shift, joined_shifts, query_reach};
use super::posterior::PartialPosterior;
use super::simd::Isa;
use crate::equivariance::Boundary;

/// Candidates handled together: training images, or column displacements.
pub(crate) const LANES: usize = 8;
pub(crate) type Lanes = [f32; LANES];
pub(crate) type WideLanes = [f64; LANES];

/// The distance given to a lane that is no candidate for an output pixel.
///
/// Its exponent `beta (m - 1e300)` is below `-1e270` for any reference
/// `m` the position can hold (the fast path requires `beta >= 1e-30` and
/// finite pixels), so its weight is exactly 0; a group of lanes none of
/// which is a candidate leaves the state untouched.
pub(crate) const NOT_A_CANDIDATE: f64 = 1e300;

/// Half of [`NOT_A_CANDIDATE`]: distances at or above it are not candidates.
const NO_CANDIDATE_ABOVE: f64 = 0.5e300;

/// The largest exponent `beta (m - d)` added without lowering the
/// reference `m`: weights stay below `e^8`. A lane sums at most
/// [`FOLD_TERMS`] terms between folds, so with training values
/// up to `1e20` (the fast path's bound) its sums stay far below the `f32`
/// maximum for any image size.
pub(crate) const ABOVE_REFERENCE: f32 = 8.0;

/// [`ABOVE_REFERENCE`] for exponents in base 2, `beta log2(e) (m - d)`.
pub(crate) const ABOVE_REFERENCE_LOG2: f32 = ABOVE_REFERENCE * std::f32::consts::LOG2_E;

/// Training images per chunk for `per_core` chunks per core, each a
/// multiple of [`FOLD_EVERY`], so that most folds start from a known
/// minimum.
///
/// Fewer, larger chunks skip more: a chunk's softmax reference is the
/// smallest distance among its own images so far, and the longer it runs
/// the closer that is to the final minimum, so the more candidates the
/// bounded skip recognises as negligible. More chunks per core leave the
/// scheduler room to balance a busy host. The lanes take
/// [`LANE_CHUNKS_PER_CORE`], the transforms [`TRANSFORM_CHUNKS_PER_CORE`].
pub(crate) fn chunk_len(images: usize, per_core: usize) -> usize {
    #[cfg(feature = "parallel")]
    let workers = rayon::current_num_threads().max(1);
    #[cfg(not(feature = "parallel"))]
    let workers = 1;
    let per_chunk = images.div_ceil(per_core.max(1) * workers);
    per_chunk.div_ceil(FOLD_EVERY).max(1) * FOLD_EVERY
}

/// Chunks per core of the lanes: two. One per core made bbELS at k = 15
/// on 1,000 MNIST digits no faster (best of 60 on two cores, alternated:
/// 42.6 ms to 43.8 ms against 40.9 ms to 42.2 ms).
pub(crate) const LANE_CHUNKS_PER_CORE: usize = 2;

/// Chunks per core of the Fourier routes: one. Their evaluations take a
/// few milliseconds at k = 27, and a chunk's first groups, which meet a
/// reference that has not settled, cost several times a later one: one
/// chunk per core instead of two took ELS at k = 27 on 1,000 MNIST digits
/// from 2.91 ms to 3.27 ms down to 2.46 ms to 2.81 ms (best of 300 on two
/// cores, ten alternated pairs), and at k = 25 from 16.2 ms to 16.6 ms
/// down to 15.3 ms to 15.5 ms (best of 100).
pub(crate) const TRANSFORM_CHUNKS_PER_CORE: usize = 1;

/// Candidates with `beta (d - m) > NEGLIGIBLE` on all eight lanes, where `m`
/// is the position's reference distance (never below the final minimum of
/// the output pixel), are skipped: each such weight is below
/// `exp(-32) = 1.3e-14` of the largest, so even `10^7` of them change an
/// output pixel by less than `1.3e-7` of the range of the training values.
pub(crate) const NEGLIGIBLE: f32 = 32.0;

/// [`NEGLIGIBLE`] for exponents in base 2, `beta log2(e) (d - m)`.
pub(crate) const NEGLIGIBLE_LOG2: f32 = NEGLIGIBLE * std::f32::consts::LOG2_E;

/// Exponents above this are those of candidates at or below the reference
/// distance (`beta (m - d) >= 0`; the bound also admits exponents that
/// underflowed to a tiny negative `f32`), the only ones that can lower the
/// nearest distance a lane has seen.
const AT_OR_BELOW_REFERENCE: f32 = -f32::MIN_POSITIVE;

/// With image lanes, the lanes are folded once the candidates added to a
/// lane at one output pixel may pass this many (but at least after every
/// group of eight images).
pub(crate) const FOLD_TERMS: usize = 1024;

/// The most candidates any output pixel of `plan` has in one image, along
/// the rows and along the columns (their product is the most in all).
pub(crate) fn most_candidates(plan: &Plan) -> (usize, usize) {
    let most = |axis: &super::plan::AxisPlan, len: usize| {
        let mut count = vec![0usize; len];
        for shift in &axis.shifts {
            for &q in &shift.queries {
                count[q] += 1;
            }
        }
        count.into_iter().max().unwrap_or(0)
    };
    (
        most(&plan.rows, plan.shape.height).max(1),
        most(&plan.cols, plan.shape.width).max(1),
    )
}

/// Training images (or, for the same location, groups of eight images)
/// per lane whose lane states are folded together into `f64`, when a lane
/// holds few candidates per image.
pub(crate) const FOLD_EVERY: usize = 16;

/// A row displacement and which output rows it serves.
pub(crate) struct RowShift {
    delta: isize,
    first: usize,
    valid: Vec<bool>,
}

/// One column displacement (image lanes) or eight consecutive ones
/// (column lanes) and, per output column in `first ..= last`, what each
/// lane adds to its distance: 0 for a candidate, [`NOT_A_CANDIDATE`] for
/// a lane that is none.
pub(crate) struct ColumnBlock {
    delta: isize,
    first: usize,
    penalty: Vec<WideLanes>,
    /// Whether every penalty is 0, so that it need not be added.
    all_candidates: bool,
}

impl ColumnBlock {
    /// The column of an extended padded training image that lines up with
    /// the block's first column (padded query column `first`).
    fn image_column(&self, lanes: &LanePlan) -> usize {
        ((lanes.margin + self.first) as isize + self.delta) as usize
    }
}

/// The displacement structure of a [`Plan`] regrouped for the lanes.
pub(crate) struct LanePlan {
    rows: Vec<RowShift>,
    blocks: Vec<ColumnBlock>,
    /// Rows and columns of the padded query the lanes read: more than the
    /// plan's padded plane where displacements wrap (see [`joined_shifts`]),
    /// the query continued periodically.
    query_rows: usize,
    query_cols: usize,
    /// Extra zero columns on each side of a padded training image, so that
    /// every lane reads inside the buffer.
    margin: usize,
    /// Whether the lanes are eight training images at one displacement
    /// rather than eight column displacements of one image.
    image_lanes: bool,
    /// Groups of eight images (image lanes) or images (column lanes)
    /// between folds.
    fold_every: usize,
    /// Where one image (column lanes) or one group of eight (image lanes)
    /// can give a lane more than [`FOLD_TERMS`] terms at an output pixel
    /// (large images), the lanes also fold after this many displacement
    /// blocks: each block adds at most one term per lane and pixel.
    fold_blocks: Option<usize>,
    /// Whether each output pixel's only candidate is its own location.
    same_location: bool,
    /// The (row shift, block) pairs whose cross terms are summed along the
    /// rows first ([`cross_block`]) and those summed down the columns first
    /// ([`cross_few_rows`]).
    by_rows: Vec<(usize, usize)>,
    by_columns: Vec<(usize, usize)>,
}

/// Training sets from this size on put eight training images in the lanes
/// (see [`LanePlan::new`]).
pub(crate) const IMAGE_LANES_FROM: usize = 4 * LANES;

impl LanePlan {
    /// Regroups `plan` for a worker that will see about `images` training
    /// images.
    ///
    /// With eight training images in the lanes every lane of a block shares
    /// one displacement, so the block's residuals cover exactly the windows
    /// of that displacement and every lane of a softmax step is a
    /// candidate. With eight consecutive column displacements in the lanes
    /// instead, a block covers the union of eight output ranges that are
    /// shifted against each other, and near the ends of those ranges some
    /// lanes are no candidate. Image lanes are faster (1.2x to 3.3x on
    /// MNIST) as long as there are enough images to fill the lanes; the
    /// same-location plan (LS) always uses them.
    pub fn new(plan: &Plan, images: usize) -> Self {
        Self::build(plan, images, true)
    }

    /// As [`LanePlan::new`]; `wrap` lets displacements of a periodic query
    /// wrap (see [`joined_shifts`]).
    fn build(plan: &Plan, images: usize, wrap: bool) -> Self {
        let same_location = plan.rows.shifts.len() == 1
            && plan.cols.shifts.len() == 1
            && plan.rows.shifts[0].delta == 0
            && plan.cols.shifts[0].delta == 0;
        let image_lanes = same_location || images >= IMAGE_LANES_FROM;
        let lanes_per_block = if image_lanes { 1 } else { LANES as isize };
        let periodic = wrap && plan.boundary == Boundary::Periodic;
        let (height, width) = (plan.patch.height(), plan.patch.width());
        let row_shifts = joined_shifts(&plan.rows.shifts, plan.shape.height, height, periodic);
        let rows: Vec<RowShift> = row_shifts
            .iter()
            .map(|shift| {
                let mut valid = vec![false; shift.span()];
                for &q in &shift.queries {
                    valid[q - shift.first()] = true;
                }
                RowShift {
                    delta: shift.delta,
                    first: shift.first(),
                    valid,
                }
            })
            .collect();

        // Column lanes group eight consecutive displacements of the plan;
        // image lanes take one displacement per block.
        let wrapped_cols;
        let shifts: &[Shift] = if image_lanes {
            wrapped_cols = joined_shifts(&plan.cols.shifts, plan.shape.width, width, periodic);
            &wrapped_cols
        } else {
            &plan.cols.shifts
        };
        let mut blocks: Vec<ColumnBlock> = Vec::new();
        let mut start = 0;
        while start < shifts.len() {
            let delta = shifts[start].delta;
            let mut end = start;
            while end < shifts.len() && shifts[end].delta < delta + lanes_per_block {
                end += 1;
            }
            let members = &shifts[start..end];
            let first = members
                .iter()
                .map(Shift::first)
                .min()
                .expect("non-empty block");
            let last = members
                .iter()
                .map(Shift::last)
                .max()
                .expect("non-empty block");
            let mut penalty = vec![[NOT_A_CANDIDATE; LANES]; last - first + 1];
            for shift in members {
                let lane = (shift.delta - delta) as usize;
                for &q in &shift.queries {
                    if image_lanes {
                        penalty[q - first] = [0.0; LANES];
                    } else {
                        penalty[q - first][lane] = 0.0;
                    }
                }
            }
            let all_candidates = penalty.iter().all(|lanes| lanes.iter().all(|&p| p == 0.0));
            blocks.push(ColumnBlock {
                delta,
                first,
                penalty,
                all_candidates,
            });
            start = end;
        }
        // A block reads the padded columns `first + delta ..` up to its last
        // residual column, plus seven more when the lanes are columns.
        let extra = if image_lanes { 0 } else { LANES - 1 };
        let margin = blocks
            .iter()
            .map(|block| {
                let start = block.first as isize + block.delta;
                let end = start + (block.penalty.len() + plan.patch.width() - 1 + extra) as isize;
                (-start).max(end - plan.padded_width as isize).max(0) as usize
            })
            .max()
            .unwrap_or(0);
        // Terms one lane can take at one output pixel per image: all of the
        // image's candidates with image lanes, every eighth column
        // displacement with column lanes.
        let (most_rows, most_cols) = most_candidates(plan);
        let per_lane = if image_lanes {
            most_rows * most_cols
        } else {
            most_rows * most_cols.div_ceil(LANES)
        };
        let (query_rows, query_cols) = (
            query_reach(&row_shifts, height, plan.padded_height),
            query_reach(shifts, width, plan.padded_width),
        );
        let support = query_support(plan, query_rows, query_cols);
        let (by_columns, by_rows): (Vec<_>, Vec<_>) = (0..rows.len())
            .flat_map(|r| (0..blocks.len()).map(move |b| (r, b)))
            .partition(|&(r, b)| {
                let (rows, block) = (&rows[r], &blocks[b]);
                let (live_rows, live_cols) = live_region(
                    rows,
                    block,
                    (height, width),
                    plan.padded_height,
                    support.clone(),
                );
                !live_cols.is_empty()
                    && few_rows_pay(
                        rows,
                        (height, width),
                        block.penalty.len(),
                        live_rows.len(),
                        live_cols.len(),
                    )
            });
        LanePlan {
            query_rows,
            query_cols,
            by_rows,
            by_columns,
            rows,
            blocks,
            margin,
            image_lanes,
            fold_every: (FOLD_TERMS / per_lane).clamp(1, FOLD_EVERY),
            fold_blocks: (per_lane > FOLD_TERMS).then_some(FOLD_TERMS),
            same_location,
        }
    }

    /// The same plan with the cross terms of every displacement summed down
    /// the columns first (`by_columns`) or along the rows first.
    #[cfg(test)]
    fn summing_all(mut self, by_columns: bool) -> Self {
        let mut all = std::mem::take(&mut self.by_rows);
        all.append(&mut self.by_columns);
        all.sort_unstable();
        if by_columns {
            self.by_columns = all;
        } else {
            self.by_rows = all;
        }
        self
    }

    /// Width of an extended padded plane.
    pub fn extended_width(&self, plan: &Plan) -> usize {
        plan.padded_width + 2 * self.margin
    }

    /// Distance between the values of neighbouring columns in the lane
    /// buffers: 1 for column lanes, [`LANES`] for interleaved image lanes.
    fn column_stride(&self) -> usize {
        if self.image_lanes { LANES } else { 1 }
    }
}

/// Streaming softmax state of every output position: one reference
/// distance, and per lane a normaliser and weighted sums relative to it.
pub(crate) struct LaneState {
    reference: Vec<f64>,
    /// The smallest distance seen at each position since the last fold
    /// (at most the reference): the routes that screen their positions
    /// into a list ([`add_centre`], [`add_listed_with`]) skip candidates
    /// far above it rather than above the reference, which a new nearest
    /// candidate lowers only when it is `8 / beta` below (see
    /// [`Step::add_reached`]).
    screen: Vec<f64>,
    /// Per lane, the smallest distance that carried weight since the
    /// last fold.
    nearest: Vec<WideLanes>,
    normaliser: Vec<Lanes>,
    /// Weighted sums, position-major: channel `c` of position `p` at
    /// `p * channels + c`.
    sums: Vec<Lanes>,
    channels: usize,
}

impl LaneState {
    pub(crate) fn new(positions: usize, channels: usize) -> Self {
        LaneState {
            reference: vec![f64::INFINITY; positions],
            screen: vec![f64::INFINITY; positions],
            nearest: vec![[f64::INFINITY; LANES]; positions],
            normaliser: vec![[0.0; LANES]; positions],
            sums: vec![[0.0; LANES]; positions * channels],
            channels,
        }
    }

    /// Moves every position into `posterior`, relative to the smallest
    /// distance that carried weight (so that the posterior keeps the exact
    /// nearest distance and a largest weight of 1), and clears the state,
    /// keeping as reference the smallest distance the posterior has seen
    /// there, so that later candidates far above it are recognised as
    /// negligible.
    pub(crate) fn fold_into(&mut self, posterior: &mut PartialPosterior, beta: f64) {
        let positions = self.reference.len();
        for position in 0..positions {
            let normaliser: f64 = self.normaliser[position].iter().map(|&z| z as f64).sum();
            if normaliser > 0.0 {
                // The lanes record only candidates at or below the
                // reference, itself a distance seen (by this fold or by
                // the posterior), so the smaller of the two is the nearest
                // distance seen.
                let nearest = self.nearest[position]
                    .iter()
                    .copied()
                    .fold(self.reference[position], f64::min);
                // exp(-beta (d - nearest)) = exp(beta (m - d)) exp(beta (nearest - m)),
                // a factor between e^-8 (the reference is lowered below that)
                // and e^32 (candidates further above are skipped).
                let factor = (beta * (nearest - self.reference[position])).exp();
                let sums = &self.sums;
                posterior.merge_position(position, nearest, normaliser * factor, |c| {
                    sums[position * self.channels + c]
                        .iter()
                        .map(|&s| s as f64)
                        .sum::<f64>()
                        * factor
                });
            }
            self.reference[position] = posterior.min_distances()[position];
            self.screen[position] = self.reference[position];
            self.nearest[position] = [f64::INFINITY; LANES];
            self.normaliser[position] = [0.0; LANES];
        }
        self.sums.fill([0.0; LANES]);
    }
}

/// Lowers the `reference` of one position to `minimum` (below it),
/// rescaling the position's `normaliser` and weighted `sums` by
/// `exp(-beta (m - minimum))`.
#[cold]
#[inline(never)]
fn lower_reference(
    reference: &mut f64,
    normaliser: &mut Lanes,
    sums: &mut [Lanes],
    minimum: f64,
    beta: f64,
) {
    let factor = if reference.is_finite() {
        (-beta * (*reference - minimum)).exp() as f32
    } else {
        0.0
    };
    for z in normaliser.iter_mut() {
        *z *= factor;
    }
    for s in sums.iter_mut().flatten() {
        *s *= factor;
    }
    *reference = minimum;
}

/// Buffers of one worker.
pub(crate) struct LaneScratch {
    /// The padded query, widened.
    query: Vec<f64>,
    /// One padded training image, or eight with image lanes (empty where
    /// `image_rows` is set).
    padded: Vec<f32>,
    /// The extended padded training image, or eight of them interleaved.
    image: Vec<f32>,
    /// With image lanes and zero padding: where each row of each channel
    /// of the image starts in an extended padded plane. Only these rows
    /// are written and scaled; the padding around them stays zero.
    image_rows: Option<Vec<usize>>,
    /// The same times the signal scale `a`, widened (residual sums only;
    /// cross terms read `image`).
    scaled: Vec<f64>,
    /// Residuals of one row.
    residual: Vec<WideLanes>,
    /// Row window sums of the last `h` rows, a ring (with cross terms, the
    /// running sums of the last `h + 1` rows, see [`cross_block`]).
    row_sums: Vec<WideLanes>,
    /// Window distances of the current output row (with cross terms:
    /// their window sums `C`).
    distances: Vec<WideLanes>,
    /// With cross terms: `Q(x)`, the squared norm of the query window of
    /// every output position.
    query_norms: Vec<f64>,
    /// With cross terms: `A(y)`, the squared norm of the window of `a p`
    /// at every candidate centre, per lane ([`NOT_A_CANDIDATE`] for an
    /// empty lane).
    window_norms: Vec<WideLanes>,
    /// Row window sums of `(a p)^2` while [`LaneScratch::window_norms`] is
    /// built.
    norm_rows: Vec<WideLanes>,
    state: LaneState,
}

impl LaneScratch {
    /// Writes the images of `group` (at most eight) into the lanes of
    /// `image`, value by value, and zeros into the lanes past them. The
    /// lanes are written in order, eight values at a time, so that each
    /// line of the buffer is written once per group.
    #[inline(always)]
    fn interleave<V: Vector>(
        &mut self,
        group: &[&[f32]],
        plan: &Plan,
        extended: usize,
        margin: usize,
    ) {
        let filled = group.len();
        if let Some(rows) = &self.image_rows {
            // Zero padding: only the images' own rows change.
            let width = plan.shape.width;
            for (r, &start) in rows.iter().enumerate() {
                let out = &mut self.image[start * LANES..(start + width) * LANES];
                interleave_row::<V>(out, group.iter().map(|image| &image[r * width..][..width]));
            }
            return;
        }
        let plane = self.padded.len() / LANES;
        for (image, padded) in group.iter().zip(self.padded.chunks_exact_mut(plane)) {
            plan.pad_into(image, padded, extended, margin);
        }
        // A row of the extended plane at a time, so that its lanes stay in
        // the first-level cache while the eight images are written in.
        let padded = &self.padded;
        for (r, out) in self.image.chunks_exact_mut(extended * LANES).enumerate() {
            let rows = (0..filled).map(|l| &padded[l * plane + r * extended..][..extended]);
            interleave_row::<V>(out, rows);
        }
    }

    /// `scaled = a * image`, widened (with zero padding, on the image's
    /// rows only: the padding is zero in both).
    #[inline(always)]
    fn scale_image(&mut self, signal: f64, width: usize) {
        let Some(rows) = &self.image_rows else {
            for (scaled, &value) in self.scaled.iter_mut().zip(&self.image) {
                *scaled = signal * value as f64;
            }
            return;
        };
        for &start in rows {
            let span = start * LANES..(start + width) * LANES;
            let values = &self.image[span.clone()];
            for (scaled, &value) in self.scaled[span].iter_mut().zip(values) {
                *scaled = signal * value as f64;
            }
        }
    }
}

/// Writes value `x` of the `l`-th row of `rows` to lane `l` of `out[x]`
/// (`out` holds eight lanes per value), and zeros to the lanes past the
/// last row.
#[inline(always)]
pub(crate) fn interleave_row<'a, V: Vector>(
    out: &mut [f32],
    rows: impl ExactSizeIterator<Item = &'a [f32]>,
) {
    let filled = rows.len();
    if filled == LANES {
        // Eight values of each row at a time, transposed in registers.
        let mut all: [&[f32]; LANES] = [&[]; LANES];
        for (slot, row) in all.iter_mut().zip(rows) {
            *slot = row;
        }
        let rows = all;
        let len = rows[0].len().min(out.len() / LANES);
        let whole = len - len % LANES;
        for (x, out) in (0..whole)
            .step_by(LANES)
            .zip(out.chunks_exact_mut(LANES * LANES))
        {
            let columns = V::transpose(std::array::from_fn(|l| V::load_slice(&rows[l][x..])));
            for (column, out) in columns.into_iter().zip(out.chunks_exact_mut(LANES)) {
                column.store(out.try_into().expect("eight lanes"));
            }
        }
        for (l, row) in rows.iter().enumerate() {
            for (lanes, &value) in out[whole * LANES..]
                .chunks_exact_mut(LANES)
                .zip(&row[whole..])
            {
                lanes[l] = value;
            }
        }
        return;
    }
    for (l, row) in rows.enumerate() {
        for (lanes, &value) in out.chunks_exact_mut(LANES).zip(row) {
            lanes[l] = value;
        }
    }
    if filled < LANES {
        for lanes in out.chunks_exact_mut(LANES) {
            lanes[filled..].fill(0.0);
        }
    }
}

/// Everything a worker needs that is shared by all training images.
pub(crate) struct LaneJob<'a> {
    pub plan: &'a Plan,
    pub lanes: &'a LanePlan,
    pub signal: f64,
    pub beta: f64,
    /// Whether image lanes may expand each distance into norms and a cross
    /// term (see [`LaneJob::uses_cross_terms`]).
    pub cross: bool,
    /// The instruction set the kernel runs on: [`Isa::detected`], or in
    /// tests any of [`Isa::available`].
    pub isa: Isa,
}

/// What the lanes need of the query, the same for every chunk of training
/// images of one evaluation: built once by [`LaneJob::query`].
pub(crate) struct LaneQuery {
    /// The padded query, widened (continued periodically where the
    /// displacements wrap).
    query: Vec<f64>,
    /// With cross terms: `Q(x)` of every output position.
    norms: Vec<f64>,
}

impl LaneJob<'_> {
    /// The padded query and, with cross terms, its window norms.
    pub fn query(&self, query: &[f32]) -> LaneQuery {
        let plan = self.plan;
        let mut padded_query =
            vec![0.0f32; plan.padded_height * plan.padded_width * plan.shape.channels];
        plan.pad(query, &mut padded_query);
        let padded_query: Vec<f64> = padded_query.iter().map(|&v| v as f64).collect();
        let norms = if self.uses_cross_terms() {
            query_window_norms(plan, &padded_query)
        } else {
            Vec::new()
        };
        let (query_rows, query_cols) = (self.lanes.query_rows, self.lanes.query_cols);
        let mut query = plan.continue_periodically(padded_query, query_rows, query_cols);
        if self.uses_cross_terms() {
            // Cross terms read the training images as they are: the query
            // carries the factor `2 a` of `2 C(x, y) = sum q 2 a p`.
            let factor = 2.0 * self.signal;
            for value in &mut query {
                *value *= factor;
            }
        }
        LaneQuery { query, norms }
    }

    /// The buffers of one worker.
    pub fn scratch(&self, query: &LaneQuery) -> LaneScratch {
        let plan = self.plan;
        let extended = self.lanes.extended_width(plan);
        let plane_len = plan.padded_height * extended * plan.shape.channels;
        let image_len = plane_len * self.lanes.column_stride();
        // Zero padding with image lanes writes the images' rows straight
        // into the lanes and needs no padded copy.
        let image_rows = self.image_rows();
        LaneScratch {
            query: query.query.clone(),
            padded: if image_rows.is_some() {
                Vec::new()
            } else if self.lanes.image_lanes {
                vec![0.0; plane_len * LANES]
            } else {
                vec![0.0; plane_len]
            },
            image_rows,
            image: vec![0.0; image_len],
            // Cross terms read `image` itself.
            scaled: if self.uses_cross_terms() {
                Vec::new()
            } else {
                vec![0.0; image_len]
            },
            residual: Vec::new(),
            row_sums: Vec::new(),
            distances: Vec::new(),
            query_norms: query.norms.clone(),
            window_norms: Vec::new(),
            norm_rows: Vec::new(),
            state: LaneState::new(plan.shape.positions(), plan.shape.channels),
        }
    }

    /// With image lanes and zero padding, where each row of each channel
    /// of a training image starts in an extended padded plane (see
    /// [`LaneScratch::image_rows`]).
    fn image_rows(&self) -> Option<Vec<usize>> {
        let plan = self.plan;
        if !self.lanes.image_lanes || plan.boundary != Boundary::Zero {
            return None;
        }
        let extended = self.lanes.extended_width(plan);
        let shape = plan.shape;
        let left = self.lanes.margin + plan.patch.left();
        Some(
            (0..shape.channels)
                .flat_map(|c| {
                    (0..shape.height).map(move |r| {
                        (c * plan.padded_height + plan.patch.up() + r) * extended + left
                    })
                })
                .collect(),
        )
    }

    /// Whether the distances are expanded as
    /// `d(x; y) = Q(x) + A(y) - 2 C(x, y)`: with image lanes, when the
    /// caller allows it. Only the cross term `C(x, y) = sum q(z) a p(z + delta)`
    /// then needs window sums per displacement, and only over the rows and
    /// columns where the padded query can be non-zero.
    pub fn uses_cross_terms(&self) -> bool {
        self.cross
            && self.lanes.image_lanes
            && !self.lanes.same_location
            && self.plan.shape.channels == 1
    }

    /// The padded-query rows and columns that can hold a non-zero value:
    /// the image itself with zero padding, everything when periodic.
    fn query_support(&self) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
        query_support(self.plan, self.lanes.query_rows, self.lanes.query_cols)
    }

    /// Adds the candidates of every image in `images` to `posterior`.
    pub fn run<'i>(
        &self,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut LaneScratch,
        posterior: &mut PartialPosterior,
    ) {
        match self.isa {
            // SAFETY: `Isa::detected` gives a level only where the CPU
            // supports it, and the levels a job is built with come from it
            // or from `Isa::available`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::run(self, images, scratch, posterior) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::run(self, images, scratch, posterior) },
            _ => run_with::<Portable>(self, images, scratch, posterior),
        }
    }
}

/// The padded-query rows and columns that can hold a non-zero value, of a
/// query widened to `query_rows x query_cols` (see [`LanePlan`]).
fn query_support(
    plan: &Plan,
    query_rows: usize,
    query_cols: usize,
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    match plan.boundary {
        Boundary::Zero => {
            let (up, left) = (plan.patch.up(), plan.patch.left());
            (up..up + plan.shape.height, left..left + plan.shape.width)
        }
        Boundary::Periodic => (0..query_rows, 0..query_cols),
    }
}

/// Adds one candidate centre of eight training images (the lanes) to the
/// softmax states of the output positions `rows x cols` (row-major in an
/// image `width` columns wide): `distances[x]` holds the lanes' squared
/// distances at position `x`, and `values[c]` the lanes' values in channel
/// `c` at the centre. Lanes that are no candidate carry the distance
/// [`NOT_A_CANDIDATE`]. `isa` is the instruction set to run on, one the
/// CPU supports; `pending` has room for every position.
///
/// Every position is tested first, without a branch, into a list in
/// `pending` of those where some lane may carry weight (see
/// [`Step::reaches`]); then only those are added. Whether a position
/// passes is close to a coin toss for the four centres of windows one
/// line short of the image, and a mispredicted branch per position cost
/// more than the list: 1.11x to 1.18x at k = 27 on MNIST (ELS), no
/// difference with the 784 centres of `PeriodicFull` at k = 21 to 27.
/// The lanes (`Segment::add`) keep a branch per position, where the list
/// was 1.1x to 1.2x slower at k = 15.
pub(crate) fn add_centre(
    isa: Isa,
    beta: f64,
    distances: &[WideLanes],
    outputs: (&[usize], &[usize], usize),
    values: &[Lanes],
    state: &mut LaneState,
    pending: &mut [u32],
) {
    let lanes = (state, pending);
    match isa {
        // SAFETY: as in `LaneJob::run`, `isa` is a level the CPU supports.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { avx512::add_centre(beta, distances, outputs, values, lanes) },
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { avx2::add_centre(beta, distances, outputs, values, lanes) },
        _ => add_centre_with::<Portable>(beta, distances, outputs, values, lanes),
    }
}

#[inline(always)]
fn add_centre_with<V: Vector>(
    beta: f64,
    distances: &[WideLanes],
    (rows, cols, width): (&[usize], &[usize], usize),
    values: &[Lanes],
    (state, pending): (&mut LaneState, &mut [u32]),
) {
    let step = Step::<V> {
        beta: V::Wide::splat(beta * std::f64::consts::LOG2_E),
        natural_beta: beta,
        negligible: NEGLIGIBLE as f64 / beta,
        add_penalty: false,
    };
    let zero = V::Wide::splat(0.0);
    let no_penalty = [0.0; LANES];
    let LaneState {
        reference,
        screen,
        nearest,
        normaliser,
        sums,
        channels,
    } = state;
    let channels = *channels;
    // Whole rows (every column takes the centre, as in most routes) are
    // screened from slices of the row, without an index per column.
    let whole_rows = cols.len() == width && cols.iter().enumerate().all(|(i, &c)| i == c);
    let mut kept = 0;
    for &r in rows {
        let start = r * width;
        let row_distances = &distances[start..start + width];
        let row_references = &screen[start..start + width];
        if whole_rows {
            for (c, (d, &m)) in row_distances.iter().zip(row_references).enumerate() {
                let distance = V::Wide::load(d).max(zero);
                pending[kept] = (start + c) as u32;
                kept += usize::from(step.reaches(distance, &no_penalty, m));
            }
        } else {
            for &c in cols {
                let distance = V::Wide::load(&row_distances[c]).max(zero);
                pending[kept] = (start + c) as u32;
                kept += usize::from(step.reaches(distance, &no_penalty, row_references[c]));
            }
        }
    }
    for &p in &pending[..kept] {
        let p = p as usize;
        let pixel = PixelState {
            reference: &mut reference[p],
            screen: Some(&mut screen[p]),
            nearest: &mut nearest[p],
            normaliser: &mut normaliser[p],
            sums: &mut sums[p * channels..(p + 1) * channels],
        };
        let distance = V::Wide::load(&distances[p]).max(zero);
        step.add_reached(distance, pixel, |channel| V::load(&values[channel]));
    }
}

/// Adds eight candidates (the lanes) at each of `positions`: the lanes
/// at `positions[i]` are at squared distances `distances[i]` (clamped at
/// 0) and have the one-channel values `values[i]`. Lanes that are no
/// candidate carry [`NOT_A_CANDIDATE`]. As in [`add_centre`], every
/// position is screened first, without a branch, into a list in `pending`
/// (room for every position), and only the listed ones are added.
#[inline(always)]
pub(crate) fn add_listed_with<V: Vector>(
    beta: f64,
    positions: &[u32],
    distances: &[WideLanes],
    values: &[Lanes],
    state: &mut LaneState,
    pending: &mut [u32],
) {
    let step = Step::<V>::one_channel(beta, state);
    let zero = V::Wide::splat(0.0);
    let no_penalty = [0.0; LANES];
    let len = positions.len();
    let distances = &distances[..len];
    let mut kept = 0;
    for (i, (&p, d)) in positions.iter().zip(distances).enumerate() {
        let distance = V::Wide::load(d).max(zero);
        pending[kept] = i as u32;
        kept += usize::from(step.reaches(distance, &no_penalty, state.screen[p as usize]));
    }
    step.add_pending(
        &pending[..kept],
        |i| positions[i] as usize,
        distances,
        values,
        state,
    );
}

/// [`add_listed_with`] for the run of positions `first ..` (as many as
/// `distances`).
#[inline(always)]
pub(crate) fn add_run_with<V: Vector>(
    beta: f64,
    first: usize,
    distances: &[WideLanes],
    values: &[Lanes],
    state: &mut LaneState,
    pending: &mut [u32],
) {
    let step = Step::<V>::one_channel(beta, state);
    let zero = V::Wide::splat(0.0);
    let no_penalty = [0.0; LANES];
    let references = &state.screen[first..first + distances.len()];
    let mut kept = 0;
    for (i, (d, &m)) in distances.iter().zip(references).enumerate() {
        let distance = V::Wide::load(d).max(zero);
        pending[kept] = i as u32;
        kept += usize::from(step.reaches(distance, &no_penalty, m));
    }
    step.add_pending(&pending[..kept], |i| first + i, distances, values, state);
}

/// Eight `f32` lanes and the operations the kernel needs.
pub(crate) trait Vector: Copy {
    /// The same eight lanes in `f64`.
    type Wide: Wide<Narrow = Self>;
    fn load(lanes: &Lanes) -> Self;
    /// Eight consecutive values starting at `values[0]`.
    fn load_slice(values: &[f32]) -> Self;
    fn store(self, lanes: &mut Lanes);
    fn add(self, other: Self) -> Self;
    /// `self * other + addend`.
    fn mul_add(self, other: Self, addend: Self) -> Self;
    /// Whether any lane is above `threshold` (NaN lanes are not).
    fn any_above(self, threshold: f32) -> bool;
    /// Whether every lane is below `threshold`.
    fn all_below(self, threshold: f32) -> bool;
    /// `2^self` for lanes `<= 127`, as [`exp2_bounded`].
    fn exp2(self) -> Self;
    /// Lane `l` of vector `j` of the result is lane `j` of `rows[l]`.
    fn transpose(rows: [Self; LANES]) -> [Self; LANES];
    /// [`cross_few_rows`] with these lanes, compiled apart from the loop
    /// that calls it so that the compiler's choices for that loop do not
    /// change.
    fn cross_few_rows(
        job: &LaneJob<'_>,
        rows: &RowShift,
        block: &ColumnBlock,
        scratch: &mut LaneScratch,
    );
}

/// Eight `f64` lanes.
pub(crate) trait Wide: Copy {
    type Narrow;
    fn splat(value: f64) -> Self;
    fn load(lanes: &WideLanes) -> Self;
    /// Eight consecutive values starting at `values[0]`.
    fn load_slice(values: &[f64]) -> Self;
    /// Eight consecutive `f32` values starting at `values[0]`, widened.
    fn load_widened(values: &[f32]) -> Self;
    fn store(self, lanes: &mut WideLanes);
    /// Into the first eight of `values`.
    fn store_slice(self, values: &mut [f64]);
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    /// `self * other + addend`.
    fn mul_add(self, other: Self, addend: Self) -> Self;
    fn min(self, other: Self) -> Self;
    fn max(self, other: Self) -> Self;
    /// Whether every lane is above `threshold`.
    fn all_above(self, threshold: Self) -> bool;
    /// Rounds to `f32`.
    fn narrow(self) -> Self::Narrow;
}

/// The portable lanes: plain arrays.
#[derive(Clone, Copy)]
pub(crate) struct Portable(Lanes);

/// The portable wide lanes.
#[derive(Clone, Copy)]
pub(crate) struct PortableWide(WideLanes);

impl Vector for Portable {
    type Wide = PortableWide;
    #[inline(always)]
    fn load(lanes: &Lanes) -> Self {
        Portable(*lanes)
    }
    #[inline(always)]
    fn load_slice(values: &[f32]) -> Self {
        Portable(values[..LANES].try_into().expect("eight values"))
    }
    #[inline(always)]
    fn store(self, lanes: &mut Lanes) {
        *lanes = self.0;
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] + other.0[l]))
    }
    #[inline(always)]
    fn mul_add(self, other: Self, addend: Self) -> Self {
        Portable(std::array::from_fn(|l| {
            self.0[l] * other.0[l] + addend.0[l]
        }))
    }
    #[inline(always)]
    fn any_above(self, threshold: f32) -> bool {
        self.0.iter().any(|&v| v > threshold)
    }
    #[inline(always)]
    fn all_below(self, threshold: f32) -> bool {
        self.0.iter().all(|&v| v < threshold)
    }
    #[inline(always)]
    fn exp2(self) -> Self {
        Portable(std::array::from_fn(|l| exp2_bounded(self.0[l])))
    }
    #[inline(always)]
    fn transpose(rows: [Self; LANES]) -> [Self; LANES] {
        std::array::from_fn(|j| Portable(std::array::from_fn(|l| rows[l].0[j])))
    }
    #[inline(never)]
    fn cross_few_rows(
        job: &LaneJob<'_>,
        rows: &RowShift,
        block: &ColumnBlock,
        scratch: &mut LaneScratch,
    ) {
        cross_few_rows::<Portable>(job, rows, block, scratch);
    }
}

impl Wide for PortableWide {
    type Narrow = Portable;
    #[inline(always)]
    fn splat(value: f64) -> Self {
        PortableWide([value; LANES])
    }
    #[inline(always)]
    fn load(lanes: &WideLanes) -> Self {
        PortableWide(*lanes)
    }
    #[inline(always)]
    fn load_slice(values: &[f64]) -> Self {
        PortableWide(values[..LANES].try_into().expect("eight values"))
    }
    #[inline(always)]
    fn load_widened(values: &[f32]) -> Self {
        let values = &values[..LANES];
        PortableWide(std::array::from_fn(|l| values[l] as f64))
    }
    #[inline(always)]
    fn store(self, lanes: &mut WideLanes) {
        *lanes = self.0;
    }
    #[inline(always)]
    fn store_slice(self, values: &mut [f64]) {
        values[..LANES].copy_from_slice(&self.0);
    }
    #[inline(always)]
    fn add(self, other: Self) -> Self {
        PortableWide(std::array::from_fn(|l| self.0[l] + other.0[l]))
    }
    #[inline(always)]
    fn sub(self, other: Self) -> Self {
        PortableWide(std::array::from_fn(|l| self.0[l] - other.0[l]))
    }
    #[inline(always)]
    fn mul(self, other: Self) -> Self {
        PortableWide(std::array::from_fn(|l| self.0[l] * other.0[l]))
    }
    #[inline(always)]
    fn mul_add(self, other: Self, addend: Self) -> Self {
        PortableWide(std::array::from_fn(|l| {
            self.0[l] * other.0[l] + addend.0[l]
        }))
    }
    #[inline(always)]
    fn min(self, other: Self) -> Self {
        PortableWide(std::array::from_fn(|l| self.0[l].min(other.0[l])))
    }
    #[inline(always)]
    fn max(self, other: Self) -> Self {
        PortableWide(std::array::from_fn(|l| self.0[l].max(other.0[l])))
    }
    #[inline(always)]
    fn all_above(self, threshold: Self) -> bool {
        self.0.iter().zip(&threshold.0).all(|(a, b)| a > b)
    }
    #[inline(always)]
    fn narrow(self) -> Portable {
        Portable(std::array::from_fn(|l| self.0[l] as f32))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    //! The lanes as AVX2 registers. Every function here is compiled with
    //! AVX2 and FMA enabled and is reached only through [`run`], which its
    //! caller enters after checking that the CPU has both.

    use std::arch::x86_64::*;

    use super::{
        ColumnBlock, EXP2_COEFFICIENTS, LOWEST_POWER, LaneJob, LaneScratch, LaneState, Lanes,
        ROUND_BIASED, RowShift, Vector, Wide, WideLanes, add_centre_with, run_with,
    };
    use crate::machine::posterior::PartialPosterior;

    #[derive(Clone, Copy)]
    pub(crate) struct Avx(pub(super) __m256);

    #[derive(Clone, Copy)]
    pub(crate) struct AvxWide(__m256d, __m256d);

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run<'i>(
        job: &LaneJob<'_>,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut LaneScratch,
        posterior: &mut PartialPosterior,
    ) {
        run_with::<Avx>(job, images, scratch, posterior);
    }

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn add_centre(
        beta: f64,
        distances: &[WideLanes],
        outputs: (&[usize], &[usize], usize),
        values: &[Lanes],
        lanes: (&mut LaneState, &mut [u32]),
    ) {
        add_centre_with::<Avx>(beta, distances, outputs, values, lanes);
    }

    /// [`super::cross_few_rows`] with AVX2 lanes.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    #[inline(never)]
    unsafe fn cross_few_rows(
        job: &LaneJob<'_>,
        rows: &RowShift,
        block: &ColumnBlock,
        scratch: &mut LaneScratch,
    ) {
        super::cross_few_rows::<Avx>(job, rows, block, scratch);
    }

    /// `2^x` of every value, eight at a time.
    ///
    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[cfg(test)]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp2_all(values: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(values.len());
        for chunk in values.chunks_exact(super::LANES) {
            let mut lanes = [0.0; super::LANES];
            Avx::load_slice(chunk).exp2().store(&mut lanes);
            out.extend(lanes);
        }
        out
    }

    // SAFETY (every block below): an `Avx` or `AvxWide` value exists only
    // inside `run`, entered after the AVX2 and FMA check, and every pointer
    // read or write covers exactly eight values inside the borrowed array,
    // or inside a slice first cut to eight values.
    impl Vector for Avx {
        type Wide = AvxWide;
        #[inline(always)]
        fn load(lanes: &Lanes) -> Self {
            Avx(unsafe { _mm256_loadu_ps(lanes.as_ptr()) })
        }
        #[inline(always)]
        fn load_slice(values: &[f32]) -> Self {
            let values = &values[..8];
            Avx(unsafe { _mm256_loadu_ps(values.as_ptr()) })
        }
        #[inline(always)]
        fn store(self, lanes: &mut Lanes) {
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn add(self, other: Self) -> Self {
            Avx(unsafe { _mm256_add_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn mul_add(self, other: Self, addend: Self) -> Self {
            Avx(unsafe { _mm256_fmadd_ps(self.0, other.0, addend.0) })
        }
        #[inline(always)]
        fn any_above(self, threshold: f32) -> bool {
            unsafe {
                let above = _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, _mm256_set1_ps(threshold));
                _mm256_movemask_ps(above) != 0
            }
        }
        #[inline(always)]
        fn all_below(self, threshold: f32) -> bool {
            unsafe {
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, _mm256_set1_ps(threshold));
                _mm256_movemask_ps(below) == 0xff
            }
        }
        #[inline(always)]
        fn exp2(self) -> Self {
            unsafe {
                let x = _mm256_max_ps(self.0, _mm256_set1_ps(LOWEST_POWER));
                let round = _mm256_set1_ps(ROUND_BIASED);
                let shifted = _mm256_add_ps(x, round);
                let r = _mm256_sub_ps(x, _mm256_sub_ps(shifted, round));
                // Estrin's scheme, as in `exp2_bounded`.
                let [c0, c1, c2, c3, c4, c5] = EXP2_COEFFICIENTS.map(|c| _mm256_set1_ps(c));
                let r2 = _mm256_mul_ps(r, r);
                let r4 = _mm256_mul_ps(r2, r2);
                let low = _mm256_fmadd_ps(r, c1, c0);
                let mid = _mm256_fmadd_ps(r, c3, c2);
                let high = _mm256_fmadd_ps(r, c5, c4);
                let p = _mm256_fmadd_ps(r4, high, _mm256_fmadd_ps(r2, mid, low));
                let scale = _mm256_slli_epi32::<23>(_mm256_castps_si256(shifted));
                Avx(_mm256_mul_ps(p, _mm256_castsi256_ps(scale)))
            }
        }
        #[inline(always)]
        fn transpose(rows: [Self; 8]) -> [Self; 8] {
            unsafe {
                let r = rows.map(|row| row.0);
                // Pairs of rows interleaved, then quadruples, then halves.
                let t0 = _mm256_unpacklo_ps(r[0], r[1]);
                let t1 = _mm256_unpackhi_ps(r[0], r[1]);
                let t2 = _mm256_unpacklo_ps(r[2], r[3]);
                let t3 = _mm256_unpackhi_ps(r[2], r[3]);
                let t4 = _mm256_unpacklo_ps(r[4], r[5]);
                let t5 = _mm256_unpackhi_ps(r[4], r[5]);
                let t6 = _mm256_unpacklo_ps(r[6], r[7]);
                let t7 = _mm256_unpackhi_ps(r[6], r[7]);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                [
                    Avx(_mm256_permute2f128_ps::<0x20>(u0, u4)),
                    Avx(_mm256_permute2f128_ps::<0x20>(u1, u5)),
                    Avx(_mm256_permute2f128_ps::<0x20>(u2, u6)),
                    Avx(_mm256_permute2f128_ps::<0x20>(u3, u7)),
                    Avx(_mm256_permute2f128_ps::<0x31>(u0, u4)),
                    Avx(_mm256_permute2f128_ps::<0x31>(u1, u5)),
                    Avx(_mm256_permute2f128_ps::<0x31>(u2, u6)),
                    Avx(_mm256_permute2f128_ps::<0x31>(u3, u7)),
                ]
            }
        }
        #[inline(always)]
        fn cross_few_rows(
            job: &LaneJob<'_>,
            rows: &RowShift,
            block: &ColumnBlock,
            scratch: &mut LaneScratch,
        ) {
            // SAFETY: the kernel generic over `V` calls this only with
            // `V = Avx`, that is inside `run`, after the AVX2 and FMA check.
            unsafe { cross_few_rows(job, rows, block, scratch) };
        }
    }

    impl Wide for AvxWide {
        type Narrow = Avx;
        #[inline(always)]
        fn splat(value: f64) -> Self {
            unsafe { AvxWide(_mm256_set1_pd(value), _mm256_set1_pd(value)) }
        }
        #[inline(always)]
        fn load(lanes: &WideLanes) -> Self {
            unsafe {
                AvxWide(
                    _mm256_loadu_pd(lanes.as_ptr()),
                    _mm256_loadu_pd(lanes.as_ptr().add(4)),
                )
            }
        }
        #[inline(always)]
        fn load_slice(values: &[f64]) -> Self {
            let values = &values[..8];
            unsafe {
                AvxWide(
                    _mm256_loadu_pd(values.as_ptr()),
                    _mm256_loadu_pd(values.as_ptr().add(4)),
                )
            }
        }
        #[inline(always)]
        fn load_widened(values: &[f32]) -> Self {
            let values = &values[..8];
            unsafe {
                AvxWide(
                    _mm256_cvtps_pd(_mm_loadu_ps(values.as_ptr())),
                    _mm256_cvtps_pd(_mm_loadu_ps(values.as_ptr().add(4))),
                )
            }
        }
        #[inline(always)]
        fn store(self, lanes: &mut WideLanes) {
            unsafe {
                _mm256_storeu_pd(lanes.as_mut_ptr(), self.0);
                _mm256_storeu_pd(lanes.as_mut_ptr().add(4), self.1);
            }
        }
        #[inline(always)]
        fn store_slice(self, values: &mut [f64]) {
            let values = &mut values[..8];
            unsafe {
                _mm256_storeu_pd(values.as_mut_ptr(), self.0);
                _mm256_storeu_pd(values.as_mut_ptr().add(4), self.1);
            }
        }
        #[inline(always)]
        fn add(self, other: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_add_pd(self.0, other.0),
                    _mm256_add_pd(self.1, other.1),
                )
            }
        }
        #[inline(always)]
        fn sub(self, other: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_sub_pd(self.0, other.0),
                    _mm256_sub_pd(self.1, other.1),
                )
            }
        }
        #[inline(always)]
        fn mul(self, other: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_mul_pd(self.0, other.0),
                    _mm256_mul_pd(self.1, other.1),
                )
            }
        }
        #[inline(always)]
        fn mul_add(self, other: Self, addend: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_fmadd_pd(self.0, other.0, addend.0),
                    _mm256_fmadd_pd(self.1, other.1, addend.1),
                )
            }
        }
        #[inline(always)]
        fn min(self, other: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_min_pd(self.0, other.0),
                    _mm256_min_pd(self.1, other.1),
                )
            }
        }
        #[inline(always)]
        fn max(self, other: Self) -> Self {
            unsafe {
                AvxWide(
                    _mm256_max_pd(self.0, other.0),
                    _mm256_max_pd(self.1, other.1),
                )
            }
        }
        #[inline(always)]
        fn all_above(self, threshold: Self) -> bool {
            unsafe {
                let low = _mm256_cmp_pd::<_CMP_GT_OQ>(self.0, threshold.0);
                let high = _mm256_cmp_pd::<_CMP_GT_OQ>(self.1, threshold.1);
                _mm256_movemask_pd(_mm256_and_pd(low, high)) == 0xf
            }
        }
        #[inline(always)]
        fn narrow(self) -> Avx {
            unsafe {
                let low = _mm256_cvtpd_ps(self.0);
                let high = _mm256_cvtpd_ps(self.1);
                Avx(_mm256_insertf128_ps::<1>(_mm256_castps128_ps256(low), high))
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

#[inline(always)]
fn run_with<'i, V: Vector>(
    job: &LaneJob<'_>,
    images: impl Iterator<Item = &'i [f32]>,
    scratch: &mut LaneScratch,
    posterior: &mut PartialPosterior,
) {
    if job.lanes.image_lanes {
        run_image_lanes::<V>(job, images, scratch, posterior);
        return;
    }
    let plan = job.plan;
    let extended = job.lanes.extended_width(plan);
    let mut pending = 0;
    let mut clock = FoldClock::new(job);
    for image in images {
        plan.pad_into(image, &mut scratch.image, extended, job.lanes.margin);
        scratch.scale_image(job.signal, plan.shape.width);
        for rows in &job.lanes.rows {
            for block in &job.lanes.blocks {
                displacement_block::<V, 1>(job, rows, block, scratch);
                clock.tick(job, scratch, posterior);
            }
        }
        pending += 1;
        if pending == job.lanes.fold_every {
            scratch.state.fold_into(posterior, job.beta);
            pending = 0;
        }
    }
    if pending > 0 {
        scratch.state.fold_into(posterior, job.beta);
    }
}

/// The same-location case: eight training images at a time, interleaved
/// value by value so that lane `l` holds image `l`. A last group of fewer
/// than eight gives its empty lanes the distance [`NOT_A_CANDIDATE`].
#[inline(always)]
fn run_image_lanes<'i, V: Vector>(
    job: &LaneJob<'_>,
    images: impl Iterator<Item = &'i [f32]>,
    scratch: &mut LaneScratch,
    posterior: &mut PartialPosterior,
) {
    let plan = job.plan;
    let extended = job.lanes.extended_width(plan);
    let mut pending = 0;
    let mut clock = FoldClock::new(job);
    let mut group: [&[f32]; LANES] = [&[]; LANES];
    let mut filled = 0;
    let mut images = images.peekable();
    while let Some(image) = images.next() {
        group[filled] = image;
        filled += 1;
        if filled < LANES && images.peek().is_some() {
            continue;
        }
        scratch.interleave::<V>(&group[..filled], plan, extended, job.lanes.margin);
        flush_image_lanes::<V>(job, scratch, filled, &mut clock, posterior);
        filled = 0;
        pending += 1;
        if pending == job.lanes.fold_every {
            scratch.state.fold_into(posterior, job.beta);
            pending = 0;
        }
    }
    if pending > 0 {
        scratch.state.fold_into(posterior, job.beta);
    }
}

/// Counts displacement blocks for [`LanePlan::fold_blocks`].
struct FoldClock {
    every: Option<usize>,
    blocks: usize,
}

impl FoldClock {
    fn new(job: &LaneJob<'_>) -> Self {
        FoldClock {
            every: job.lanes.fold_blocks,
            blocks: 0,
        }
    }

    /// One more block; folds the lanes when `every` blocks have passed.
    #[inline(always)]
    fn tick(
        &mut self,
        job: &LaneJob<'_>,
        scratch: &mut LaneScratch,
        posterior: &mut PartialPosterior,
    ) {
        if let Some(every) = self.every {
            self.blocks += 1;
            if self.blocks == every {
                scratch.state.fold_into(posterior, job.beta);
                self.blocks = 0;
            }
        }
    }
}

/// Scales the interleaved images of which the first `filled` lanes are
/// real and adds their candidates.
#[inline(always)]
fn flush_image_lanes<V: Vector>(
    job: &LaneJob<'_>,
    scratch: &mut LaneScratch,
    filled: usize,
    clock: &mut FoldClock,
    posterior: &mut PartialPosterior,
) {
    if job.uses_cross_terms() {
        // The query is scaled by `2 a` (see `LaneJob::query`), so that the
        // window sums of its products with the images are `2 C`; empty
        // lanes get the window norm NOT_A_CANDIDATE.
        window_norms::<V>(job, scratch, filled);
        let lanes = job.lanes;
        for &(r, b) in &lanes.by_rows {
            cross_block::<V>(job, &lanes.rows[r], &lanes.blocks[b], scratch);
            clock.tick(job, scratch, posterior);
        }
        for &(r, b) in &lanes.by_columns {
            V::cross_few_rows(job, &lanes.rows[r], &lanes.blocks[b], scratch);
            clock.tick(job, scratch, posterior);
        }
        return;
    }
    scratch.scale_image(job.signal, job.plan.shape.width);
    if filled == LANES {
        for rows in &job.lanes.rows {
            for block in &job.lanes.blocks {
                displacement_block::<V, LANES>(job, rows, block, scratch);
                clock.tick(job, scratch, posterior);
            }
        }
    } else {
        let partial: Vec<ColumnBlock> = job
            .lanes
            .blocks
            .iter()
            .map(|block| {
                let mut penalty = block.penalty.clone();
                for lanes in &mut penalty {
                    lanes[filled..].fill(NOT_A_CANDIDATE);
                }
                ColumnBlock {
                    delta: block.delta,
                    first: block.first,
                    penalty,
                    all_candidates: false,
                }
            })
            .collect();
        for rows in &job.lanes.rows {
            for block in &partial {
                displacement_block::<V, LANES>(job, rows, block, scratch);
                clock.tick(job, scratch, posterior);
            }
        }
    }
}

/// Distances for one row displacement and one block of column
/// displacements, streamed into the softmax states row by row.
#[inline(always)]
fn displacement_block<V: Vector, const STRIDE: usize>(
    job: &LaneJob<'_>,
    rows: &RowShift,
    block: &ColumnBlock,
    scratch: &mut LaneScratch,
) {
    let plan = job.plan;
    let lanes = job.lanes;
    let channels = plan.shape.channels;
    let ph = plan.padded_height;
    let extended = lanes.extended_width(plan);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let span_rows = rows.valid.len();
    let span_cols = block.penalty.len();
    let (z_rows, z_cols) = (span_rows + height - 1, span_cols + width - 1);
    let column_start = block.image_column(lanes);

    let LaneScratch {
        query,
        image,
        scaled,
        residual,
        row_sums,
        distances,
        state,
        ..
    } = scratch;
    // The residuals are written before they are read, and so are the ring
    // slots, whose first `h` rows are filled with zeros only when a row
    // reaches them.
    at_least(residual, z_cols);
    at_least(row_sums, height * span_cols);
    distances.clear();
    distances.resize(span_cols, [0.0; LANES]);

    // The ring slot of row `i`, `i mod h`, kept without a division.
    let mut slot_index = height - 1;
    for i in 0..z_rows {
        slot_index = if slot_index + 1 == height {
            0
        } else {
            slot_index + 1
        };
        // The ring slot of row `i` still holds the row sums of row `i - h`
        // (zeros for the first `h` rows), which leave the window as the
        // sums of row `i` enter it.
        let slot = &mut row_sums[slot_index * span_cols..][..span_cols];
        let query_row = rows.first + i;
        let image_row = query_row as isize + rows.delta;
        if i < height {
            slot.fill([0.0; LANES]);
        }
        if image_row < 0 || image_row >= ph as isize {
            // No candidate window reaches this row.
            for (d, leaving) in distances.iter_mut().zip(slot.iter_mut()) {
                V::Wide::load(d).sub(V::Wide::load(leaving)).store(d);
                *leaving = [0.0; LANES];
            }
        } else {
            // Residuals of the row, summed along it by a sliding window.
            let image_row = image_row as usize;
            let q = &query[query_row * lanes.query_cols + block.first..];
            let p = &scaled[(image_row * extended + column_start) * STRIDE..];
            let (q_plane, p_plane) = (lanes.query_rows * lanes.query_cols, ph * extended * STRIDE);
            // Four partial sums, so that the first window is not one long
            // dependency chain; then one addition per step on the chain.
            let mut partial = [V::Wide::splat(0.0); 4];
            for (j, e_j) in residual[..width].iter_mut().enumerate() {
                let e = residual_at::<V, STRIDE>(q, p, q_plane, p_plane, channels, j);
                e.store(e_j);
                partial[j % 4] = partial[j % 4].add(e);
            }
            let mut sum = partial[0].add(partial[1]).add(partial[2].add(partial[3]));
            enter_row_sum::<V>(sum, &mut slot[0], &mut distances[0]);
            for j in width..z_cols {
                let e = residual_at::<V, STRIDE>(q, p, q_plane, p_plane, channels, j);
                e.store(&mut residual[j]);
                sum = sum.add(e.sub(V::Wide::load(&residual[j - width])));
                let k = j + 1 - width;
                enter_row_sum::<V>(sum, &mut slot[k], &mut distances[k]);
            }
        }
        if i + 1 >= height && rows.valid[i + 1 - height] {
            softmax_row::<V, STRIDE>(
                job,
                rows,
                block,
                i + 1 - height,
                distances,
                None,
                image,
                state,
            );
        }
    }
}

/// Grows `buffer` to at least `len` values, leaving what it holds.
fn at_least(buffer: &mut Vec<WideLanes>, len: usize) {
    if buffer.len() < len {
        buffer.resize(len, [0.0; LANES]);
    }
}

/// Window sums `2 C(x, x + delta)` of the cross terms `(2 a q(z)) p(z + delta)`
/// (the query scaled, the interleaved images as stored) for one row displacement and one column displacement (image lanes),
/// streamed into the softmax states row by row. Rows where the padded
/// query is zero (and blocks whose columns all lie where it is zero) add
/// nothing and are not summed; within a row, the query's zero padding
/// makes the products outside the image zero.
///
/// Down the columns the rows are cut into blocks of `h`, and each row holds
/// the running sum `P(i)` of the row sums of its block up to row `i`. A
/// window of `h` rows ending at row `i` is then the block of `i` up to `i`
/// plus the end of the block before: `P(i) + (E - P(i - h))`, with `E` the
/// last running sum of that block (and `P(i)` alone where `i` ends a block).
/// A row costs one addition per column where sliding the window costs an
/// addition, a subtraction and two more stores, and no sum runs over more
/// than `h` rows, whatever the run's length.
#[inline(always)]
fn cross_block<V: Vector>(
    job: &LaneJob<'_>,
    rows: &RowShift,
    block: &ColumnBlock,
    scratch: &mut LaneScratch,
) {
    let plan = job.plan;
    let lanes = job.lanes;
    let ph = plan.padded_height;
    let extended = lanes.extended_width(plan);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let span_rows = rows.valid.len();
    let span_cols = block.penalty.len();
    let (z_rows, z_cols) = (span_rows + height - 1, span_cols + width - 1);
    let column_start = block.image_column(lanes);
    let (support_rows, support_cols) = job.query_support();
    // Columns `j` of the block (padded query column `first + j`) where the
    // query can be non-zero, as in [`live_region`]; written out here, and
    // the rows tested one by one below, because calling it made this loop
    // run 1.3% more instructions (bbELS at k = 15).
    let from = support_cols.start.saturating_sub(block.first).min(z_cols);
    let to = support_cols.end.saturating_sub(block.first).min(z_cols);

    let LaneScratch {
        query,
        image,
        row_sums,
        distances,
        query_norms,
        window_norms,
        state,
        ..
    } = scratch;
    // The running sums of the last `h + 1` rows, a ring: a window needs
    // those of its last row, of the row `h` above it and of the end of the
    // block before. Every slot is written before it is read.
    let slots = height + 1;
    at_least(row_sums, slots * span_cols);
    at_least(distances, span_cols);

    // The ring slot of row `i`, `i mod (h + 1)`, and the place of row `i`
    // in its block, `i mod h`, kept without a division.
    let mut slot_index = slots - 1;
    let mut in_block = height - 1;
    for i in 0..z_rows {
        let previous = slot_index;
        slot_index = if slot_index + 1 == slots {
            0
        } else {
            slot_index + 1
        };
        in_block = if in_block + 1 == height {
            0
        } else {
            in_block + 1
        };
        let starts_block = in_block == 0;
        let (current, before) = two_slots(row_sums, slot_index, previous, span_cols);
        let query_row = rows.first + i;
        let image_row = query_row as isize + rows.delta;
        if !support_rows.contains(&query_row)
            || image_row < 0
            || image_row >= ph as isize
            || from >= to
        {
            // The row adds nothing.
            if starts_block {
                current.fill([0.0; LANES]);
            } else {
                current.copy_from_slice(before);
            }
        } else {
            let image_row = image_row as usize;
            let q = &query[query_row * lanes.query_cols + block.first..][..z_cols];
            let p = &image[(image_row * extended + column_start) * LANES..][..z_cols * LANES];
            // The padded query is zero outside its support, so the products
            // there are zero: each row is summed over all its columns.
            if starts_block {
                cross_row_sums::<V, false>(q, p, width, from..to, before, current);
            } else {
                cross_row_sums::<V, true>(q, p, width, from..to, before, current);
            }
        }
        if i + 1 >= height && rows.valid[i + 1 - height] {
            let window: &[WideLanes] = if in_block + 1 == height {
                &row_sums[slot_index * span_cols..][..span_cols]
            } else {
                // Row `i - h` and the last row of the block before.
                let above = if slot_index + 1 == slots {
                    0
                } else {
                    slot_index + 1
                };
                let back = in_block + 1;
                let end = if slot_index >= back {
                    slot_index - back
                } else {
                    slot_index + slots - back
                };
                let current = &row_sums[slot_index * span_cols..][..span_cols];
                let above = &row_sums[above * span_cols..][..span_cols];
                let end = &row_sums[end * span_cols..][..span_cols];
                let out = &mut distances[..span_cols];
                for (((out, current), above), end) in
                    out.iter_mut().zip(current).zip(above).zip(end)
                {
                    let rest = V::Wide::load(end).sub(V::Wide::load(above));
                    V::Wide::load(current).add(rest).store(out);
                }
                &distances[..span_cols]
            };
            let norms = Norms {
                query: query_norms,
                windows: window_norms,
            };
            softmax_row::<V, LANES>(
                job,
                rows,
                block,
                i + 1 - height,
                window,
                Some(norms),
                image,
                state,
            );
        }
    }
}

/// Window sums `2 C(x, x + delta)` as in [`cross_block`], for a
/// displacement that serves few output rows: for each output row the
/// products of its window's rows are summed down the columns first,
/// `T(j) = sum_i q(i, j) s(i + delta_r, j + delta_c)` over the `h` rows `i`
/// of the window (one multiply-add per cell, two rows per pass over `T`),
/// and the window sums are then a sliding sum of `w` values of `T` along
/// the row. Row sums instead pay each row of the region (`h - 1` more
/// rows than the output rows) two multiply-adds per column. Only the rows
/// where the query and the training image can be non-zero and the columns
/// where the query can be are summed ([`live_region`]).
#[inline(always)]
fn cross_few_rows<V: Vector>(
    job: &LaneJob<'_>,
    rows: &RowShift,
    block: &ColumnBlock,
    scratch: &mut LaneScratch,
) {
    let plan = job.plan;
    let lanes = job.lanes;
    let extended = lanes.extended_width(plan);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let (live_rows, live_cols) = live_region(
        rows,
        block,
        (height, width),
        plan.padded_height,
        job.query_support(),
    );
    let span_cols = block.penalty.len();
    let z_cols = span_cols + width - 1;
    let column_start = block.image_column(lanes);
    let LaneScratch {
        query,
        image,
        residual: columns,
        distances,
        query_norms,
        window_norms,
        state,
        ..
    } = scratch;
    at_least(columns, z_cols);
    at_least(distances, span_cols);
    let query_stride = lanes.query_cols;
    let zero = V::Wide::splat(0.0);
    for (v, _) in rows.valid.iter().enumerate().filter(|(_, valid)| **valid) {
        let window = v.max(live_rows.start)..(v + height).min(live_rows.end);
        let columns = &mut columns[..z_cols];
        columns.fill([0.0; LANES]);
        // Two rows at a time, added to `T` in one pass.
        let row_of = |i: usize| {
            let query_row = rows.first + i;
            let image_row = (query_row as isize + rows.delta) as usize;
            (
                &query[query_row * query_stride + block.first..][live_cols.clone()],
                &image[(image_row * extended + column_start) * LANES..][..z_cols * LANES]
                    [live_cols.start * LANES..live_cols.end * LANES],
            )
        };
        let live = &mut columns[live_cols.clone()];
        let mut i = window.start;
        while i + 1 < window.end {
            let ((q0, p0), (q1, p1)) = (row_of(i), row_of(i + 1));
            let pairs = q0.iter().zip(p0.chunks_exact(LANES));
            let pairs = pairs.zip(q1.iter().zip(p1.chunks_exact(LANES)));
            for (t, ((q0, p0), (q1, p1))) in live.iter_mut().zip(pairs) {
                let first =
                    V::Wide::splat(*q0).mul_add(V::Wide::load_widened(p0), V::Wide::load(t));
                V::Wide::splat(*q1)
                    .mul_add(V::Wide::load_widened(p1), first)
                    .store(t);
            }
            i += 2;
        }
        if i < window.end {
            let (q0, p0) = row_of(i);
            for (t, (q0, p0)) in live.iter_mut().zip(q0.iter().zip(p0.chunks_exact(LANES))) {
                V::Wide::splat(*q0)
                    .mul_add(V::Wide::load_widened(p0), V::Wide::load(t))
                    .store(t);
            }
        }
        // Slide a window of `w` values of `T` along the row.
        let mut sum = zero;
        for t in &columns[live_cols.start.min(width)..live_cols.end.min(width)] {
            sum = sum.add(V::Wide::load(t));
        }
        sum.store(&mut distances[0]);
        for k in 1..span_cols {
            let change = V::Wide::load(&columns[k + width - 1]).sub(V::Wide::load(&columns[k - 1]));
            sum = sum.add(change);
            sum.store(&mut distances[k]);
        }
        let norms = Norms {
            query: query_norms,
            windows: window_norms,
        };
        softmax_row::<V, LANES>(
            job,
            rows,
            block,
            v,
            &distances[..span_cols],
            Some(norms),
            image,
            state,
        );
    }
}

/// The rows `i` of a block whose padded query row `rows.first + i` lies in
/// `support_rows` and whose training row lies in the padded plane
/// (`padded_height` rows), and the columns `j` whose query column
/// `block.first + j` lies in `support_cols`.
fn live_region(
    rows: &RowShift,
    block: &ColumnBlock,
    (height, width): (usize, usize),
    padded_height: usize,
    (support_rows, support_cols): (std::ops::Range<usize>, std::ops::Range<usize>),
) -> (std::ops::Range<usize>, std::ops::Range<usize>) {
    let z_rows = rows.valid.len() + height - 1;
    let z_cols = block.penalty.len() + width - 1;
    let first = rows.first as isize;
    let lo = (support_rows.start as isize - first)
        .max(-rows.delta - first)
        .max(0);
    let hi = (support_rows.end as isize - first)
        .min(padded_height as isize - rows.delta - first)
        .min(z_rows as isize)
        .max(lo);
    let from = support_cols.start.saturating_sub(block.first).min(z_cols);
    let to = support_cols
        .end
        .saturating_sub(block.first)
        .clamp(from, z_cols);
    (lo as usize..hi as usize, from..to)
}

/// Whether [`cross_few_rows`] costs less than the row sums of
/// [`cross_block`] for a displacement serving `rows.valid` output rows and
/// `span_cols` columns, counting one unit per multiply-add or addition of
/// eight lanes: the row sums pay every live row of the region its first
/// window (at most `width` terms), two terms per further column and one
/// addition per column for the block sums; the column sums pay each
/// output row a product per live cell of its window and a sliding sum
/// along the row.
#[inline(always)]
fn few_rows_pay(
    rows: &RowShift,
    (height, width): (usize, usize),
    span_cols: usize,
    live_rows: usize,
    live_cols: usize,
) -> bool {
    let served = rows.valid.iter().filter(|&&v| v).count();
    let by_rows = live_rows * (live_cols.min(width) + 3 * span_cols);
    let by_columns = served * (live_rows.min(height) * live_cols + 2 * span_cols + width);
    by_columns < by_rows
}

/// The ring slots `current` (to write) and `before` (to read) of
/// `slot_len` values each, two different slots of `ring`.
#[inline(always)]
fn two_slots(
    ring: &mut [WideLanes],
    current: usize,
    before: usize,
    slot_len: usize,
) -> (&mut [WideLanes], &[WideLanes]) {
    if current < before {
        let (low, high) = ring.split_at_mut(before * slot_len);
        (
            &mut low[current * slot_len..][..slot_len],
            &high[..slot_len],
        )
    } else {
        let (low, high) = ring.split_at_mut(current * slot_len);
        (&mut high[..slot_len], &low[before * slot_len..][..slot_len])
    }
}

/// Slides the window sums `R(k) = sum_{j < w} q(k + j) s_l(k + j)` of one
/// channel along a row (`q` and the interleaved `f32` values `s`, widened
/// as they are read, both `span + w - 1` columns long, `q` zero outside the columns `support`) and writes
/// `R(k)`, or with `ADD` `before(k) + R(k)`, to `row(k)`.
///
/// The first window takes four partial sums and each later step forms its
/// change `q(k + w - 1) s(k + w - 1) - q(k - 1) s(k - 1)` off the running
/// sum, so that the chain of dependent operations is one addition per
/// column.
#[inline(always)]
fn cross_row_sums<V: Vector, const ADD: bool>(
    q: &[f64],
    s: &[f32],
    width: usize,
    support: std::ops::Range<usize>,
    before: &[WideLanes],
    row: &mut [WideLanes],
) {
    let zero = V::Wide::splat(0.0);
    let (mut a0, mut a1, mut a2, mut a3) = (zero, zero, zero, zero);
    // The first window, over its columns where `q` may be non-zero.
    let (lo, hi) = (
        support.start.min(width),
        support.end.clamp(support.start, width),
    );
    let mut q4 = q[lo..hi.max(lo)].chunks_exact(4);
    let mut s4 = s[lo * LANES..hi.max(lo) * LANES].chunks_exact(4 * LANES);
    for (q, s) in (&mut q4).zip(&mut s4) {
        a0 = V::Wide::splat(q[0]).mul_add(V::Wide::load_widened(&s[..LANES]), a0);
        a1 = V::Wide::splat(q[1]).mul_add(V::Wide::load_widened(&s[LANES..2 * LANES]), a1);
        a2 = V::Wide::splat(q[2]).mul_add(V::Wide::load_widened(&s[2 * LANES..3 * LANES]), a2);
        a3 = V::Wide::splat(q[3]).mul_add(V::Wide::load_widened(&s[3 * LANES..]), a3);
    }
    for (q, s) in q4
        .remainder()
        .iter()
        .zip(s4.remainder().chunks_exact(LANES))
    {
        a0 = V::Wide::splat(*q).mul_add(V::Wide::load_widened(s), a0);
    }
    let mut sum = a0.add(a1).add(a2.add(a3));
    let (Some((first, rest)), Some((before_first, before_rest))) =
        (row.split_first_mut(), before.split_first())
    else {
        return;
    };
    if ADD {
        sum.add(V::Wide::load(before_first)).store(first);
    } else {
        sum.store(first);
    }
    let entering = q[width..]
        .iter()
        .zip(s[width * LANES..].chunks_exact(LANES));
    let leaving = q.iter().zip(s.chunks_exact(LANES));
    for ((((q_in, s_in), (q_out, s_out)), out), before) in
        entering.zip(leaving).zip(rest).zip(before_rest)
    {
        let leaving = V::Wide::splat(-*q_out).mul(V::Wide::load_widened(s_out));
        let change = V::Wide::splat(*q_in).mul_add(V::Wide::load_widened(s_in), leaving);
        sum = sum.add(change);
        if ADD {
            sum.add(V::Wide::load(before)).store(out);
        } else {
            sum.store(out);
        }
    }
}

/// The squares of the eight lanes of `row` at column `j`.
#[inline(always)]
fn lane_squares<V: Vector>(row: &[f32], j: usize) -> V::Wide {
    let s = V::Wide::load_widened(&row[j * LANES..]);
    s.mul(s)
}

/// `A(y) = a^2 sum_c sum_o p_l(c, y + o)^2` for every candidate centre `y`
/// and lane `l` of the interleaved images (whose squares are exact in
/// `f64`), by sliding sums along the rows and then down the columns, a row
/// of running sums at a time; lanes from `filled` on get
/// [`NOT_A_CANDIDATE`].
#[inline(always)]
fn window_norms<V: Vector>(job: &LaneJob<'_>, scratch: &mut LaneScratch, filled: usize) {
    let plan = job.plan;
    let shape = plan.shape;
    let (ph, extended) = (plan.padded_height, job.lanes.extended_width(plan));
    let margin = job.lanes.margin;
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let LaneScratch {
        image,
        window_norms,
        norm_rows,
        residual: running,
        ..
    } = scratch;
    // Every row that can hold a value is written below (the first channel
    // stores, the others add); the rest stay zero from here.
    if norm_rows.len() != ph * shape.width {
        norm_rows.clear();
        norm_rows.resize(ph * shape.width, [0.0; LANES]);
    }
    // With zero padding only the image's own rows and columns hold values;
    // the sums of the padding rows stay zero.
    let (rows, first_column) = match plan.boundary {
        Boundary::Zero => (
            plan.patch.up()..plan.patch.up() + shape.height,
            plan.patch.left(),
        ),
        Boundary::Periodic => (0..ph, 0),
    };
    for c in 0..shape.channels {
        let plane = &image[c * ph * extended * LANES..];
        for r in rows.clone() {
            let row = &plane[(r * extended + margin) * LANES..];
            let mut sum = V::Wide::splat(0.0);
            for j in first_column.min(width - 1)..width - 1 {
                sum = sum.add(lane_squares::<V>(row, j));
            }
            for (x, out) in norm_rows[r * shape.width..][..shape.width]
                .iter_mut()
                .enumerate()
            {
                sum = sum.add(lane_squares::<V>(row, x + width - 1));
                if c == 0 {
                    sum.store(out);
                } else {
                    V::Wide::load(out).add(sum).store(out);
                }
                sum = sum.sub(lane_squares::<V>(row, x));
            }
        }
    }
    // Down the columns, a row of running sums at a time: the window of
    // output row `r` takes the row sums of rows `r ..= r + h - 1`.
    window_norms.resize(shape.positions(), [0.0; LANES]);
    at_least(running, shape.width);
    let running = &mut running[..shape.width];
    running.fill([0.0; LANES]);
    let norm_row = |r: usize| &norm_rows[r * shape.width..][..shape.width];
    for r in rows.start.min(height - 1)..height - 1 {
        for (sum, value) in running.iter_mut().zip(norm_row(r)) {
            V::Wide::load(sum).add(V::Wide::load(value)).store(sum);
        }
    }
    let squared_signal = V::Wide::splat(job.signal * job.signal);
    for (r, out) in window_norms.chunks_exact_mut(shape.width).enumerate() {
        let (entering, leaving) = (norm_row(r + height - 1), norm_row(r));
        for (((sum, out), entering), leaving) in
            running.iter_mut().zip(out).zip(entering).zip(leaving)
        {
            let window = V::Wide::load(sum).add(V::Wide::load(entering));
            window.mul(squared_signal).store(out);
            window.sub(V::Wide::load(leaving)).store(sum);
        }
    }
    if filled < LANES {
        for lanes in window_norms.iter_mut() {
            lanes[filled..].fill(NOT_A_CANDIDATE);
        }
    }
}

/// `Q(x) = sum_c sum_o q(c, x + o)^2` for every output position `x` of
/// the padded query, summed directly (rows, then columns).
pub(crate) fn query_window_norms(plan: &Plan, query: &[f64]) -> Vec<f64> {
    let shape = plan.shape;
    let (ph, pw) = (plan.padded_height, plan.padded_width);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let mut rows = vec![0.0; ph * shape.width];
    for plane in query.chunks_exact(ph * pw) {
        for r in 0..ph {
            for x in 0..shape.width {
                rows[r * shape.width + x] += plane[r * pw + x..][..width]
                    .iter()
                    .map(|v| v * v)
                    .sum::<f64>();
            }
        }
    }
    let mut norms = vec![0.0; shape.positions()];
    for r in 0..shape.height {
        for x in 0..shape.width {
            norms[r * shape.width + x] = (0..height).map(|i| rows[(r + i) * shape.width + x]).sum();
        }
    }
    norms
}

/// The norms that turn window sums of cross terms into distances.
#[derive(Clone, Copy)]
struct Norms<'a> {
    query: &'a [f64],
    windows: &'a [WideLanes],
}

/// Replaces the row sum in `slot` (leaving the window) by `sum`
/// (entering it), updating the window distance `distance`.
#[inline(always)]
fn enter_row_sum<V: Vector>(sum: V::Wide, slot: &mut WideLanes, distance: &mut WideLanes) {
    V::Wide::load(distance)
        .add(sum.sub(V::Wide::load(slot)))
        .store(distance);
    sum.store(slot);
}

/// `sum_c (q(c, j) - a p(c, j + l))^2` for the eight lanes `l`, where `q`
/// and `p` start at channel 0 of a query row and a scaled training row
/// and channel planes are `q_plane` and `p_plane` values apart.
#[inline(always)]
fn residual_at<V: Vector, const STRIDE: usize>(
    q: &[f64],
    p: &[f64],
    q_plane: usize,
    p_plane: usize,
    channels: usize,
    j: usize,
) -> V::Wide {
    let r = V::Wide::splat(q[j]).sub(V::Wide::load_slice(&p[j * STRIDE..]));
    let mut e = r.mul(r);
    for c in 1..channels {
        let r = V::Wide::splat(q[c * q_plane + j])
            .sub(V::Wide::load_slice(&p[c * p_plane + j * STRIDE..]));
        e = r.mul_add(r, e);
    }
    e
}

/// Adds the window distances `distances` of output row `rows.first + i`
/// to the softmax states; with `norms`, `distances` holds the window sums
/// `2 C` of cross terms and the distance is `Q(x) + A(y) - 2 C`. The
/// exponent `x = beta (m - d)` is formed in `f64` and rounded to `f32`
/// only when it is no longer large.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn softmax_row<V: Vector, const STRIDE: usize>(
    job: &LaneJob<'_>,
    rows: &RowShift,
    block: &ColumnBlock,
    i: usize,
    distances: &[WideLanes],
    norms: Option<Norms<'_>>,
    image: &[f32],
    state: &mut LaneState,
) {
    let plan = job.plan;
    let lanes = job.lanes;
    let shape = plan.shape;
    let extended = lanes.extended_width(plan);
    let stride = plan.padded_height * extended * STRIDE;
    // Output row `row` and the block's columns are virtual where the
    // displacements wrap (see [`joined_shifts`]): past the image they
    // continue at its start.
    let row = rows.first + i;
    let out_row = if row >= shape.height {
        row - shape.height
    } else {
        row
    };
    let image_row = (row as isize + rows.delta) as usize + plan.patch.up();
    let value_start = ((image_row * extended + lanes.margin + block.first + plan.patch.left())
        as isize
        + block.delta) as usize;
    // Exponents in base 2: exp(beta (m - d)) = 2^(beta log2(e) (m - d)).
    let beta = V::Wide::splat(job.beta * std::f64::consts::LOG2_E);
    let value_start = value_start * STRIDE;
    let channels = shape.channels;
    let n = distances.len();
    let step = Step::<V> {
        beta,
        natural_beta: job.beta,
        negligible: NEGLIGIBLE as f64 / job.beta,
        add_penalty: !block.all_candidates,
    };
    // The window norms of the candidate centres `y = x + delta` of this
    // row, one per output pixel.
    let centres = ((row as isize + rows.delta) as usize * shape.width) as isize
        + block.first as isize
        + block.delta;
    // Block columns `0 .. split` are output columns `first ..`, the rest
    // (wrapped) output columns `0 ..`.
    let split = n.min(shape.width - block.first);
    let segment = Segment {
        step,
        penalty: &block.penalty,
        distances,
        norms,
        image,
        value_start,
        stride,
        centres: centres as usize,
        channels,
    };
    let base = out_row * shape.width + block.first;
    if split == n {
        segment.add::<STRIDE>(0..n, base, state);
    } else {
        segment.add::<STRIDE>(0..split, base, state);
        segment.add::<STRIDE>(split..n, base + split - shape.width, state);
    }
}

/// What one output row's softmax step reads, for
/// [`Segment::add`].
struct Segment<'a, V: Vector> {
    step: Step<V>,
    penalty: &'a [WideLanes],
    distances: &'a [WideLanes],
    norms: Option<Norms<'a>>,
    image: &'a [f32],
    /// Where the values of block column 0 start in `image`.
    value_start: usize,
    /// Distance between channel planes in `image`.
    stride: usize,
    /// Index of the candidate centre of block column 0 in the window norms.
    centres: usize,
    channels: usize,
}

impl<V: Vector> Segment<'_, V> {
    /// Adds block columns `columns`, output positions `base ..`.
    #[inline(always)]
    fn add<const STRIDE: usize>(
        &self,
        columns: std::ops::Range<usize>,
        base: usize,
        state: &mut LaneState,
    ) {
        let zero = V::Wide::splat(0.0);
        let (step, image, stride, channels) = (self.step, self.image, self.stride, self.channels);
        let len = columns.len();
        let value_start = self.value_start + columns.start * STRIDE;
        let LaneState {
            reference,
            nearest,
            normaliser,
            sums,
            ..
        } = state;
        let Some(norms) = self.norms else {
            let per_position = self.distances[columns.clone()]
                .iter()
                .zip(&self.penalty[columns.clone()])
                .zip(&mut reference[base..base + len])
                .zip(&mut nearest[base..base + len])
                .zip(&mut normaliser[base..base + len])
                .zip(sums[base * channels..(base + len) * channels].chunks_exact_mut(channels));
            for (j, (((((d, penalty), reference), nearest), z), s)) in per_position.enumerate() {
                let state = PixelState {
                    reference,
                    screen: None,
                    nearest,
                    normaliser: z,
                    sums: s,
                };
                let distance = V::Wide::load(d).max(zero);
                step.add(distance, penalty, state, |c| {
                    V::load_slice(&image[c * stride + value_start + j * STRIDE..])
                });
            }
            return;
        };
        debug_assert_eq!(channels, 1, "cross terms are for one channel");
        // Every slice `len` long, so that the loop indexes them unchecked.
        let values = &image[value_start..value_start + (len - 1) * STRIDE + LANES];
        let start = self.centres + columns.start;
        let windows = &norms.windows[start..start + len];
        let query = &norms.query[base..base + len];
        let distances = &self.distances[columns.clone()];
        let penalty = &self.penalty[columns];
        let reference = &mut reference[base..base + len];
        let nearest = &mut nearest[base..base + len];
        let normaliser = &mut normaliser[base..base + len];
        let sums = &mut sums[base..base + len];
        for j in 0..len {
            let distance = V::Wide::splat(query[j])
                .add(V::Wide::load(&windows[j]))
                .sub(V::Wide::load(&distances[j]))
                .max(zero);
            let state = PixelState {
                reference: &mut reference[j],
                screen: None,
                nearest: &mut nearest[j],
                normaliser: &mut normaliser[j],
                sums: std::slice::from_mut(&mut sums[j]),
            };
            step.add(distance, &penalty[j], state, |_| {
                V::load_slice(&values[j * STRIDE..])
            });
        }
    }
}

/// The softmax state of one output pixel, as [`LaneState`] holds it.
struct PixelState<'a> {
    reference: &'a mut f64,
    /// The position's screening distance, where the route keeps one (see
    /// [`LaneState`]).
    screen: Option<&'a mut f64>,
    nearest: &'a mut WideLanes,
    normaliser: &'a mut Lanes,
    sums: &'a mut [Lanes],
}

/// One streaming softmax step: eight candidates at their distances.
#[derive(Clone, Copy)]
struct Step<V: Vector> {
    /// `beta log2(e)`, in every lane: exponents are in base 2.
    beta: V::Wide,
    natural_beta: f64,
    /// `NEGLIGIBLE / beta`: candidates further than this above the
    /// reference weigh less than `exp(-NEGLIGIBLE)` of it.
    negligible: f64,
    /// Whether some lanes may be no candidate (a penalty to add).
    add_penalty: bool,
}

impl<V: Vector> Step<V> {
    /// The step of one-channel candidates without penalties, at `beta`.
    #[inline(always)]
    fn one_channel(beta: f64, state: &LaneState) -> Self {
        debug_assert_eq!(state.channels, 1, "one value per lane");
        Step {
            beta: V::Wide::splat(beta * std::f64::consts::LOG2_E),
            natural_beta: beta,
            negligible: NEGLIGIBLE as f64 / beta,
            add_penalty: false,
        }
    }

    /// Adds the candidates `pending` lists (indices into `distances` and
    /// `values`, at output position `position(i)`), which
    /// [`Step::reaches`] has passed.
    #[inline(always)]
    fn add_pending(
        self,
        pending: &[u32],
        position: impl Fn(usize) -> usize,
        distances: &[WideLanes],
        values: &[Lanes],
        state: &mut LaneState,
    ) {
        let zero = V::Wide::splat(0.0);
        let LaneState {
            reference,
            screen,
            nearest,
            normaliser,
            sums,
            ..
        } = state;
        for &i in pending {
            let i = i as usize;
            let p = position(i);
            let pixel = PixelState {
                reference: &mut reference[p],
                screen: Some(&mut screen[p]),
                nearest: &mut nearest[p],
                normaliser: &mut normaliser[p],
                sums: std::slice::from_mut(&mut sums[p]),
            };
            let distance = V::Wide::load(&distances[i]).max(zero);
            self.add_reached(distance, pixel, |_| V::load(&values[i]));
        }
    }

    /// Whether some of eight candidates at `distance` (plus `penalty`
    /// where some lanes are none) may carry weight at a position whose
    /// reference is `reference`: whether some lane is at most
    /// `NEGLIGIBLE / beta` above it. Most candidates are not, once the
    /// reference is near the minimum, and this finds them on the `f64`
    /// distances before any exponent is formed.
    #[inline(always)]
    fn reaches(self, mut distance: V::Wide, penalty: &WideLanes, reference: f64) -> bool {
        if self.add_penalty {
            distance = distance.add(V::Wide::load(penalty));
        }
        !distance.all_above(V::Wide::splat(reference + self.negligible))
    }

    /// Adds eight candidates at `distance` (plus `penalty` where some
    /// lanes are none), whose values in channel `c` are `values(c)`, if
    /// [`Step::reaches`] passes them.
    #[inline(always)]
    fn add(
        self,
        mut distance: V::Wide,
        penalty: &WideLanes,
        state: PixelState<'_>,
        values: impl Fn(usize) -> V,
    ) {
        if self.add_penalty {
            distance = distance.add(V::Wide::load(penalty));
        }
        // The test of `reaches`, on the distance with its penalty.
        if distance.all_above(V::Wide::splat(*state.reference + self.negligible)) {
            return;
        }
        self.add_reached(distance, state, values);
    }

    /// [`Step::add`] for candidates that [`Step::reaches`] has passed, at
    /// `distance` with the penalty already added where `add_penalty` asks
    /// for one (the Fourier routes have none: their step is built with
    /// `add_penalty` false).
    #[inline(always)]
    fn add_reached(self, distance: V::Wide, state: PixelState<'_>, values: impl Fn(usize) -> V) {
        let PixelState {
            reference,
            screen,
            nearest,
            normaliser,
            sums,
        } = state;
        let mut exponent = V::Wide::splat(*reference)
            .sub(distance)
            .mul(self.beta)
            .narrow();
        if exponent.any_above(AT_OR_BELOW_REFERENCE) {
            // Rare once a pixel has seen a few images: a candidate at or
            // below the reference. Only these can be a new nearest distance
            // (candidates above it leave the nearest at the reference or
            // below, see `LaneState::fold_into`).
            if exponent.any_above(ABOVE_REFERENCE_LOG2) {
                let minimum = lane_minimum(distance);
                if minimum >= NO_CANDIDATE_ABOVE {
                    return;
                }
                lower_reference(reference, normaliser, sums, minimum, self.natural_beta);
                exponent = V::Wide::splat(minimum)
                    .sub(distance)
                    .mul(self.beta)
                    .narrow();
            }
            if let Some(screen) = screen {
                // Some lane is at or below the reference: a candidate.
                *screen = screen.min(lane_minimum(distance));
            }
            distance.min(V::Wide::load(nearest)).store(nearest);
        }
        let weight = exponent.exp2();
        V::load(normaliser).add(weight).store(normaliser);
        if let [s] = sums {
            weight.mul_add(values(0), V::load(s)).store(s);
        } else {
            for (c, s) in sums.iter_mut().enumerate() {
                weight.mul_add(values(c), V::load(s)).store(s);
            }
        }
    }
}

/// The smallest of eight lanes.
#[inline(always)]
fn lane_minimum<W: Wide>(distance: W) -> f64 {
    let mut lanes = [0.0; LANES];
    distance.store(&mut lanes);
    lanes.iter().copied().fold(f64::INFINITY, f64::min)
}

/// Arguments of [`exp2_bounded`] at or below this give 0.
const LOWEST_POWER: f32 = -127.0;

/// `1.5 * 2^23 + 127`: adding it to `x` (with `|x| < 2^21`) rounds `x` to
/// an integer `n` and leaves `n + 127`, the biased exponent of `2^n`, in
/// the low bits of the sum.
const ROUND_BIASED: f32 = 12_583_039.0;

/// Minimax polynomial for `2^r` on `[-1/2, 1/2]`, lowest degree first
/// (relative error `7.5e-8` before rounding).
const EXP2_COEFFICIENTS: [f32; 6] = [
    1.000_000_1,
    0.693_146_94,
    0.240_221_2,
    0.055_507_13,
    0.009_675_541,
    0.001_327_647_2,
];

/// `2^x` for `x <= 127` in `f32`, branch-free so that it vectorises:
/// `x = n + r` with `n` the nearest integer and `|r| <= 1/2`, `2^r` by a
/// degree-5 minimax polynomial (relative error below `3e-7` with the
/// rounding of its evaluation), and `2^n` built from the exponent bits.
/// Arguments at or below -127 (including `-inf`) give 0, and so does NaN.
///
/// The softmax kernels form their exponents in base 2,
/// `x = beta log2(e) (m - d)`, so that `exp(beta (m - d)) = 2^x` needs no
/// change of base here.
#[inline(always)]
pub(crate) fn exp2_bounded(x: f32) -> f32 {
    let clamped = x.max(LOWEST_POWER);
    let shifted = clamped + ROUND_BIASED;
    let r = clamped - (shifted - ROUND_BIASED);
    // Estrin's scheme: (c0 + c1 r) + r^2 (c2 + c3 r) + r^4 (c4 + c5 r), a
    // shorter chain of dependent operations than Horner's rule.
    let [c0, c1, c2, c3, c4, c5] = EXP2_COEFFICIENTS;
    let r2 = r * r;
    let r4 = r2 * r2;
    let p = (c0 + c1 * r) + r2 * (c2 + c3 * r) + r4 * (c4 + c5 * r);
    // The low nine bits of `shifted` hold `n + 127`, in 0..=255 here.
    let scale = f32::from_bits(shifted.to_bits() << 23);
    p * scale
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The requested chunks per core, each a whole number of folds, and no
    /// more images per chunk than that needs.
    #[test]
    fn chunks_per_core_are_whole_folds() {
        #[cfg(feature = "parallel")]
        let workers = rayon::current_num_threads().max(1);
        #[cfg(not(feature = "parallel"))]
        let workers = 1;
        for per_core in [LANE_CHUNKS_PER_CORE, TRANSFORM_CHUNKS_PER_CORE, 3] {
            for images in [1, 15, 16, 17, 100, 1000, 5000, 12_345] {
                let len = chunk_len(images, per_core);
                assert!(
                    len >= FOLD_EVERY && len.is_multiple_of(FOLD_EVERY),
                    "{images}: {len}"
                );
                assert!(
                    images.div_ceil(len) <= per_core * workers,
                    "{images}: {len}"
                );
                assert!(
                    len < images.div_ceil(per_core * workers) + FOLD_EVERY,
                    "{images}: {len}"
                );
            }
        }
    }

    #[test]
    fn exponential_is_accurate_over_its_range() {
        let mut worst: f64 = 0.0;
        let mut x = ABOVE_REFERENCE_LOG2 + 20.0;
        while x > LOWEST_POWER + 1.0 {
            let got = exp2_bounded(x) as f64;
            let want = (x as f64).exp2();
            worst = worst.max((got - want).abs() / want);
            x -= 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        for n in -126..=127 {
            let got = exp2_bounded(n as f32) as f64;
            assert!((got / (n as f64).exp2() - 1.0).abs() < 3e-7, "2^{n}: {got}");
        }
        assert_eq!(exp2_bounded(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp2_bounded(LOWEST_POWER), 0.0);
        assert_eq!(exp2_bounded(-1e30), 0.0);
        assert_eq!(exp2_bounded(f32::NAN), 0.0);
    }

    fn dispatched_exp2(values: &[f32]) -> Vec<f32> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                return unsafe { avx2::exp2_all(values) };
            }
        }
        values
            .chunks_exact(LANES)
            .flat_map(|chunk| {
                let mut lanes = [0.0; LANES];
                Portable::load_slice(chunk).exp2().store(&mut lanes);
                lanes
            })
            .collect()
    }

    /// The vector exponential (AVX2 and FMA where the CPU has them) agrees
    /// with the scalar one to within the rounding of their evaluations.
    #[test]
    fn vector_exponential_agrees_with_scalar() {
        let mut inputs: Vec<f32> = (0..4000).map(|i| 12.0 - i as f32 * 0.0351).collect();
        inputs.extend([
            f32::NEG_INFINITY,
            f32::NAN,
            -1e30,
            LOWEST_POWER,
            -126.5,
            0.0,
            0.5,
        ]);
        while !inputs.len().is_multiple_of(LANES) {
            inputs.push(0.25);
        }
        let scalar: Vec<f32> = inputs.iter().map(|&x| exp2_bounded(x)).collect();
        let vector = dispatched_exp2(&inputs);
        for ((x, s), v) in inputs.iter().zip(&scalar).zip(&vector) {
            let gap = (s - v).abs() as f64;
            assert!(
                gap <= 2e-7 * s.abs() as f64,
                "2^{x}: scalar {s}, vector {v}"
            );
        }
    }

    /// Every instruction set the CPU has gives the same posterior as the
    /// portable lanes, for every kind of lane plan; AVX2 and AVX-512 give
    /// the same bits.
    #[test]
    fn instruction_sets_agree() {
        use crate::equivariance::{
            Equivariance, PeriodicFull, PeriodicInterior, SameLocation, ZeroPadded,
        };

        fn check(equivariance: &dyn Equivariance, channels: usize, side: usize, images: usize) {
            // Both lane layouts: columns (few images) and images, the
            // latter also with cross terms where they apply.
            let case = Case::new(equivariance, channels, side, images);
            for (layout_images, cross) in [
                (images, false),
                (IMAGE_LANES_FROM, false),
                (IMAGE_LANES_FROM, true),
            ] {
                let portable = case.run(layout_images, cross, Isa::Portable);
                let wide: Vec<Vec<f64>> = Isa::available()
                    .into_iter()
                    .filter(|&isa| isa > Isa::Portable)
                    .map(|isa| case.run(layout_images, cross, isa))
                    .collect();
                for got in &wide {
                    assert_close(&portable, got, 1e-5);
                    assert_eq!(got, &wide[0], "AVX2 and AVX-512 differ");
                }
            }
        }
        for images in [1, 7, 8, 19, 133] {
            check(&SameLocation, 1, 3, images);
            check(&SameLocation, 3, 5, images);
            check(&PeriodicInterior, 1, 3, images);
            check(&PeriodicFull, 3, 3, images);
            check(&ZeroPadded, 1, 5, images);
        }
    }

    /// Distances expanded into norms and cross terms give the same
    /// posterior as sums of squared residuals, for both boundaries, patches
    /// from 1x1 to larger than the image, and groups with empty lanes.
    #[test]
    fn cross_terms_agree_with_residuals() {
        use crate::equivariance::{PeriodicFull, PeriodicInterior, ZeroPadded};
        let mut checked = 0;
        for images in [1, 8, 13, 40] {
            for side in [1, 3, 5, 7, 9, 15] {
                let mut cases = vec![
                    Case::new(&PeriodicFull, 1, side, images),
                    Case::new(&ZeroPadded, 1, side, images),
                ];
                // Interior centres exist for windows up to the image width.
                if side <= 7 {
                    cases.push(Case::new(&PeriodicInterior, 1, side, images));
                }
                for case in cases {
                    let lanes = LanePlan::new(&case.plan, IMAGE_LANES_FROM);
                    if !case.job(&lanes, true).uses_cross_terms() {
                        // Windows wider than the image on both axes leave
                        // bbELS with the own location only (LS).
                        continue;
                    }
                    checked += 1;
                    let residuals = case.run(IMAGE_LANES_FROM, false, Isa::detected());
                    for isa in Isa::available() {
                        let cross = case.run(IMAGE_LANES_FROM, true, isa);
                        assert_close(&residuals, &cross, 2e-6);
                    }
                }
            }
        }
        assert_eq!(checked, 4 * (4 * 3 + 2), "cases that take cross terms");
    }

    /// Cross terms summed down the columns first ([`cross_few_rows`]) agree
    /// with residual sums for every displacement, whichever way the plan
    /// would sum it: zero padding and periodic queries, square and
    /// asymmetric windows, windows as tall as the image and taller, full
    /// and partial groups of eight, both lane implementations.
    #[test]
    fn column_sums_agree_with_residuals() {
        use crate::equivariance::{Equivariance, PeriodicFull, PeriodicInterior, ZeroPadded};
        use crate::image::Shape;
        use crate::locality::Patch;
        let patches = [
            Patch::offsets(1, 1, 1, 1),
            Patch::offsets(3, 3, 3, 3),
            Patch::offsets(3, 1, 0, 4),
            Patch::offsets(0, 5, 2, 1),
            Patch::offsets(6, 6, 6, 6),
            Patch::offsets(8, 8, 8, 8),
        ];
        let equivariances: [&dyn Equivariance; 3] = [&ZeroPadded, &PeriodicInterior, &PeriodicFull];
        let mut checked = 0;
        for (height, width) in [(9, 7), (13, 13), (5, 17)] {
            let shape = Shape::new(1, height, width).unwrap();
            for patch in &patches {
                for &equivariance in &equivariances {
                    for images in [IMAGE_LANES_FROM, IMAGE_LANES_FROM + 3] {
                        let Some(case) = Case::with_patch(shape, patch, equivariance, images)
                        else {
                            continue;
                        };
                        let lanes = LanePlan::new(&case.plan, images);
                        if !case.job(&lanes, true).uses_cross_terms() {
                            continue;
                        }
                        checked += 1;
                        let want = case.run_lanes(&lanes, false, Isa::detected());
                        let columns = lanes.summing_all(true);
                        for isa in Isa::available() {
                            let got = case.run_lanes(&columns, true, isa);
                            assert_close(&got, &want, 2e-6);
                        }
                        let rows = LanePlan::new(&case.plan, images).summing_all(false);
                        let got = case.run_lanes(&rows, true, Isa::detected());
                        assert_close(&got, &want, 2e-6);
                    }
                }
            }
        }
        assert!(checked >= 60, "only {checked} cases take cross terms");
    }

    /// With zero padding at k = 27 on 28x28 images, the six displacements
    /// one row off, which serve one output row or one pixel each, sum down
    /// the columns; the other three, which serve every row, along the rows.
    #[test]
    fn displacements_serving_one_row_sum_down_the_columns() {
        use crate::equivariance::ZeroPadded;
        use crate::image::Shape;
        use crate::locality::Patch;
        let shape = Shape::new(1, 28, 28).unwrap();
        let case =
            Case::with_patch(shape, &Patch::offsets(13, 13, 13, 13), &ZeroPadded, 1).expect("plan");
        let lanes = LanePlan::new(&case.plan, IMAGE_LANES_FROM);
        let shift = |(r, b): &(usize, usize)| (lanes.rows[*r].delta, lanes.blocks[*b].delta);
        let mut by_columns: Vec<_> = lanes.by_columns.iter().map(shift).collect();
        by_columns.sort_unstable();
        assert_eq!(
            by_columns,
            [(-1, -1), (-1, 0), (-1, 1), (1, -1), (1, 0), (1, 1)]
        );
        assert!(lanes.by_rows.iter().map(shift).any(|s| s == (0, 0)));
        assert_eq!(lanes.by_rows.len() + lanes.by_columns.len(), 9);
    }

    /// Displacements that wrap around a periodic query give the same
    /// posterior as the plan's own displacements: both lane layouts, with
    /// and without cross terms, one and several channels, square and
    /// asymmetric windows up to larger than the image, windows whose
    /// displacement runs wrap past the image on one or both axes.
    #[test]
    fn wrapped_displacements_agree_with_unwrapped_ones() {
        use crate::equivariance::{Equivariance, PeriodicFull, PeriodicInterior};
        use crate::image::Shape;
        use crate::locality::Patch;
        let mut joined = 0;
        let check = |case: &Case, images: usize| -> bool {
            let wrapped = LanePlan::build(&case.plan, images, true);
            let unwrapped = LanePlan::build(&case.plan, images, false);
            let joins = wrapped.rows.len() < unwrapped.rows.len()
                || wrapped.blocks.len() < unwrapped.blocks.len();
            for cross in [false, true] {
                let want = case.run_lanes(&unwrapped, cross, Isa::detected());
                for isa in Isa::available() {
                    let got = case.run_lanes(&wrapped, cross, isa);
                    assert_close(&got, &want, 2e-6);
                }
            }
            joins
        };
        let patches = [
            Patch::offsets(1, 1, 1, 1),
            Patch::offsets(2, 2, 2, 2),
            Patch::offsets(3, 3, 3, 3),
            Patch::offsets(3, 1, 0, 4),
            Patch::offsets(0, 5, 2, 1),
            Patch::offsets(6, 6, 6, 6),
        ];
        let equivariances: [&dyn Equivariance; 2] = [&PeriodicInterior, &PeriodicFull];
        for (channels, height, width) in [(1, 9, 7), (2, 6, 11), (1, 13, 13)] {
            let shape = Shape::new(channels, height, width).unwrap();
            for patch in &patches {
                for &equivariance in &equivariances {
                    let Some(case) = Case::with_patch(shape, patch, equivariance, 40) else {
                        continue;
                    };
                    for images in [5, IMAGE_LANES_FROM] {
                        joined += usize::from(check(&case, images));
                    }
                }
            }
        }
        assert!(joined >= 20, "only {joined} cases joined displacements");
    }

    /// At k = 15 on 28 pixels every interior displacement pair joins: 28
    /// displacements of 14 output coordinates instead of 41 of 1 to 14.
    #[test]
    fn interior_displacements_join_into_one_run_per_residue() {
        use crate::equivariance::PeriodicInterior;
        use crate::image::Shape;
        use crate::locality::Patch;
        let shape = Shape::new(1, 28, 28).unwrap();
        let case = Case::with_patch(shape, &Patch::offsets(7, 7, 7, 7), &PeriodicInterior, 1)
            .expect("interior centres");
        let shifts = &case.plan.rows.shifts;
        assert_eq!(shifts.len(), 41);
        let paid: usize = shifts.iter().map(|s| s.span() + 14).sum();
        assert_eq!(paid, 966);
        let wrapped = joined_shifts(shifts, 28, 15, true);
        assert_eq!(wrapped.len(), 28);
        assert!(
            wrapped
                .iter()
                .all(|s| s.span() == 14 && s.queries.len() == 14)
        );
        let mut deltas: Vec<isize> = wrapped.iter().map(|s| s.delta.rem_euclid(28)).collect();
        deltas.sort_unstable();
        assert_eq!(deltas, (0..28).collect::<Vec<_>>());
        // Zero padding never wraps.
        assert_eq!(joined_shifts(shifts, 28, 15, false).len(), 41);
    }

    /// One query against a deterministic training set.
    struct Case {
        plan: Plan,
        training: Vec<f32>,
        query: Vec<f32>,
    }

    impl Case {
        fn new(
            equivariance: &dyn crate::equivariance::Equivariance,
            channels: usize,
            side: usize,
            images: usize,
        ) -> Self {
            use crate::image::Shape;
            use crate::locality::{Locality, SquarePatch, Window};
            let shape = Shape::new(channels, 9, 7).expect("shape");
            let window = SquarePatch::new(side).expect("odd side").window(0.5);
            let Window::Patch(patch) = window else {
                panic!("a square patch is a patch")
            };
            Case::with_patch(shape, &patch, equivariance, images).expect("plan")
        }

        /// A case with a given window, or `None` if some output pixel has
        /// no candidate.
        fn with_patch(
            shape: crate::image::Shape,
            patch: &crate::locality::Patch,
            equivariance: &dyn crate::equivariance::Equivariance,
            images: usize,
        ) -> Option<Self> {
            let len = shape.len();
            let value = |i: usize| ((i * 7919 + 13) % 97) as f32 / 48.0 - 1.0;
            let window = crate::locality::Window::Patch(patch.clone());
            Some(Case {
                plan: Plan::new(shape, &window, equivariance).ok()?,
                training: (0..images * len).map(value).collect(),
                query: (0..len).map(|i| value(i * 31 + 5) * 1.3).collect(),
            })
        }

        /// The estimate with the lane plan `lanes`.
        fn run_lanes(&self, lanes: &LanePlan, cross: bool, isa: Isa) -> Vec<f64> {
            let job = LaneJob {
                isa,
                ..self.job(lanes, cross)
            };
            let mut posterior = PartialPosterior::new(self.plan.shape, job.beta);
            let mut scratch = job.scratch(&job.query(&self.query));
            let rows = self.training.chunks_exact(self.plan.shape.len());
            job.run(rows, &mut scratch, &mut posterior);
            let image: crate::image::Image<f64> = posterior.to_image().expect("estimate");
            image.as_slice().to_vec()
        }

        fn job<'a>(&'a self, lanes: &'a LanePlan, cross: bool) -> LaneJob<'a> {
            LaneJob {
                plan: &self.plan,
                lanes,
                signal: 0.8,
                beta: 0.9,
                cross,
                isa: Isa::detected(),
            }
        }

        /// The estimate with the lane layout chosen for `layout_images`
        /// training images, on the instruction set `isa`.
        fn run(&self, layout_images: usize, cross: bool, isa: Isa) -> Vec<f64> {
            let lanes = LanePlan::new(&self.plan, layout_images);
            assert!(lanes.image_lanes || layout_images < IMAGE_LANES_FROM);
            self.run_lanes(&lanes, cross, isa)
        }
    }

    fn assert_close(a: &[f64], b: &[f64], tolerance: f64) {
        for (a, b) in a.iter().zip(b) {
            assert!(
                (a - b).abs() <= tolerance * (1.0 + b.abs()),
                "{a} against {b}"
            );
        }
    }
}
