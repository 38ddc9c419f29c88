//! The `f32` kernel: the same exact distances as [`super::kernel`], eight
//! candidate columns at a time.
//!
//! For one training image, one row displacement `dr` and a block of eight
//! consecutive column displacements `dc0 .. dc0 + 8` (the lanes), the
//! residuals `E(z)[l] = sum_c (q(c, z) - a p(c, z + (dr, dc0 + l)))^2` are
//! summed over the window by sliding sums along rows, then along columns,
//! so the cost per comparison does not grow with the patch side. Residuals,
//! window sums and the running minimum distance are `f64`, so that the
//! softmax exponent `beta (d - m)` keeps its accuracy when `beta d` is large
//! (small `t`, large windows); weights, normalisers and weighted sums are
//! `f32`. Each lane keeps its own streaming softmax state, updated with one
//! `f32` exponential per comparison and no branch:
//!
//! ```text
//! e = exp(-beta |d - m|)
//! d <  m:  Z <- Z e + 1,  S <- S e + v,  m <- d
//! d >= m:  Z <- Z + e,    S <- S + e v
//! ```
//!
//! After every few training images the lane states are folded into the
//! `f64` [`PartialPosterior`], so no `f32` sum runs over more than a few
//! thousand terms.

use super::plan::{Plan, Shift};
use super::posterior::PartialPosterior;

/// Candidate columns handled together.
pub(crate) const LANES: usize = 8;
type Lanes = [f32; LANES];
type WideLanes = [f64; LANES];

/// The distance given to a lane that is no candidate for an output pixel.
///
/// Such a lane may collect weight only while it has seen no real
/// candidate; the first real one rescales it by `exp(-beta (1e300 - d)) =
/// 0` exactly, and a lane left with only such entries is folded with
/// minimum distance 1e300, whose weight relative to any real candidate is
/// exactly 0 (the fast path requires `beta >= 1e-30`).
const NOT_A_CANDIDATE: f64 = 1e300;

/// Training images per worker: about four chunks per core, each a multiple
/// of [`FOLD_EVERY`], so that most folds start from a known minimum.
pub(crate) fn chunk_len(images: usize) -> usize {
    #[cfg(feature = "parallel")]
    let workers = rayon::current_num_threads().max(1);
    #[cfg(not(feature = "parallel"))]
    let workers = 1;
    let per_worker = images.div_ceil(4 * workers);
    per_worker.div_ceil(FOLD_EVERY).max(1) * FOLD_EVERY
}

/// Candidates with `beta (d - m) > NEGLIGIBLE` on all eight lanes, where `m`
/// is each lane's smallest distance so far (never below the final minimum
/// of the output pixel), are skipped: each such weight is below
/// `exp(-32) = 1.3e-14` of the largest, so even `10^7` of them change an
/// output pixel by less than `1.3e-7` of the range of the training values.
const NEGLIGIBLE: f32 = 32.0;

/// Training images whose lane states are folded together into `f64`.
pub(crate) const FOLD_EVERY: usize = 16;

/// A row displacement and which output rows it serves.
struct RowShift {
    delta: isize,
    first: usize,
    valid: Vec<bool>,
}

/// Eight consecutive column displacements and, per output column in
/// `first ..= last`, which lanes are candidates.
struct ColumnBlock {
    delta: isize,
    first: usize,
    mask: Vec<[u32; LANES]>,
}

/// The displacement structure of a [`Plan`] regrouped for the lanes.
pub(crate) struct LanePlan {
    rows: Vec<RowShift>,
    blocks: Vec<ColumnBlock>,
    /// Extra zero columns on each side of a padded training image, so that
    /// every lane reads inside the buffer.
    margin: usize,
}

impl LanePlan {
    pub fn new(plan: &Plan) -> Self {
        let rows = plan
            .rows
            .shifts
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

        let shifts: &[Shift] = &plan.cols.shifts;
        let mut blocks = Vec::new();
        let mut start = 0;
        while start < shifts.len() {
            let delta = shifts[start].delta;
            let mut end = start;
            while end < shifts.len() && shifts[end].delta < delta + LANES as isize {
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
            let mut mask = vec![[0u32; LANES]; last - first + 1];
            for shift in members {
                let lane = (shift.delta - delta) as usize;
                for &q in &shift.queries {
                    mask[q - first][lane] = u32::MAX;
                }
            }
            blocks.push(ColumnBlock { delta, first, mask });
            start = end;
        }
        LanePlan {
            rows,
            blocks,
            margin: plan.shape.width + LANES,
        }
    }

    /// Width of an extended padded plane.
    pub fn extended_width(&self, plan: &Plan) -> usize {
        plan.padded_width + 2 * self.margin
    }
}

/// Per-lane streaming softmax state of every output position.
struct LaneState {
    min: Vec<WideLanes>,
    normaliser: Vec<Lanes>,
    sums: Vec<Lanes>,
}

impl LaneState {
    fn new(positions: usize, channels: usize) -> Self {
        LaneState {
            min: vec![[f64::INFINITY; LANES]; positions],
            normaliser: vec![[0.0; LANES]; positions],
            sums: vec![[0.0; LANES]; positions * channels],
        }
    }

    /// Moves every lane into `posterior` and clears the state, keeping as
    /// every lane's reference distance the smallest distance the posterior
    /// has seen at that position, so that later candidates far above it
    /// are recognised as negligible.
    fn fold_into(&mut self, posterior: &mut PartialPosterior) {
        let positions = self.min.len();
        for position in 0..positions {
            for lane in 0..LANES {
                let normaliser = self.normaliser[position][lane];
                if normaliser > 0.0 {
                    let sums = &self.sums;
                    posterior.merge_position(
                        position,
                        self.min[position][lane],
                        normaliser as f64,
                        |c| sums[c * positions + position][lane] as f64,
                    );
                }
            }
            self.min[position] = [posterior.min_distances()[position]; LANES];
            self.normaliser[position] = [0.0; LANES];
        }
        self.sums.fill([0.0; LANES]);
    }
}

/// Buffers of one worker.
pub(crate) struct LaneScratch {
    query: Vec<f32>,
    image: Vec<f32>,
    residual: Vec<WideLanes>,
    row_sums: Vec<WideLanes>,
    distances: Vec<WideLanes>,
    state: LaneState,
}

/// Everything a worker needs that is shared by all training images.
pub(crate) struct LaneJob<'a> {
    pub plan: &'a Plan,
    pub lanes: &'a LanePlan,
    pub signal: f64,
    pub beta: f64,
}

impl LaneJob<'_> {
    pub fn scratch(&self, query: &[f32]) -> LaneScratch {
        let plan = self.plan;
        let extended = self.lanes.extended_width(plan);
        let mut padded_query =
            vec![0.0; plan.padded_height * plan.padded_width * plan.shape.channels];
        plan.pad(query, &mut padded_query);
        LaneScratch {
            query: padded_query,
            image: vec![0.0; plan.padded_height * extended * plan.shape.channels],
            residual: Vec::new(),
            row_sums: Vec::new(),
            distances: Vec::new(),
            state: LaneState::new(plan.shape.positions(), plan.shape.channels),
        }
    }

    /// Adds the candidates of every image in `images` to `posterior`.
    pub fn run<'i>(
        &self,
        images: impl Iterator<Item = &'i [f32]>,
        scratch: &mut LaneScratch,
        posterior: &mut PartialPosterior,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                unsafe { avx2::run(self, images, scratch, posterior) };
                return;
            }
        }
        run_with::<Portable>(self, images, scratch, posterior);
    }
}

/// Eight `f32` lanes and the operations the kernel needs.
trait Vector: Copy {
    /// The same eight lanes in `f64`.
    type Wide: Wide<Narrow = Self>;
    fn splat(value: f32) -> Self;
    fn load(lanes: &Lanes) -> Self;
    /// Eight consecutive values starting at `values[0]`.
    fn load_slice(values: &[f32]) -> Self;
    fn store(self, lanes: &mut Lanes);
    fn mul(self, other: Self) -> Self;
    /// `self * other + addend`.
    fn mul_add(self, other: Self, addend: Self) -> Self;
    /// Lane-wise `if self > 0 { if_positive } else { otherwise }`.
    fn select_positive(self, if_positive: Self, otherwise: Self) -> Self;
    fn abs(self) -> Self;
    /// Whether every lane is below `threshold`.
    fn all_below(self, threshold: f32) -> bool;
    /// `exp(-self)` for lanes `>= 0`, as [`exp_non_positive`].
    fn exp_negated(self) -> Self;
}

/// Eight `f64` lanes.
trait Wide: Copy {
    type Narrow;
    fn splat(value: f64) -> Self;
    fn load(lanes: &WideLanes) -> Self;
    /// Eight consecutive `f32` values starting at `values[0]`, widened.
    fn load_widened(values: &[f32]) -> Self;
    fn store(self, lanes: &mut WideLanes);
    fn add(self, other: Self) -> Self;
    fn sub(self, other: Self) -> Self;
    fn mul(self, other: Self) -> Self;
    /// `self * other + addend`.
    fn mul_add(self, other: Self, addend: Self) -> Self;
    fn min(self, other: Self) -> Self;
    fn max(self, other: Self) -> Self;
    /// Lane-wise `if mask { self } else { otherwise }`, mask lanes all ones or zero.
    fn select_mask(self, mask: &[u32; LANES], otherwise: Self) -> Self;
    /// Rounds to `f32`.
    fn narrow(self) -> Self::Narrow;
}

/// The portable lanes: plain arrays.
#[derive(Clone, Copy)]
struct Portable(Lanes);

/// The portable wide lanes.
#[derive(Clone, Copy)]
struct PortableWide(WideLanes);

impl Vector for Portable {
    type Wide = PortableWide;
    #[inline(always)]
    fn splat(value: f32) -> Self {
        Portable([value; LANES])
    }
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
    fn mul(self, other: Self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l] * other.0[l]))
    }
    #[inline(always)]
    fn mul_add(self, other: Self, addend: Self) -> Self {
        Portable(std::array::from_fn(|l| {
            self.0[l] * other.0[l] + addend.0[l]
        }))
    }
    #[inline(always)]
    fn select_positive(self, if_positive: Self, otherwise: Self) -> Self {
        Portable(std::array::from_fn(|l| {
            if self.0[l] > 0.0 {
                if_positive.0[l]
            } else {
                otherwise.0[l]
            }
        }))
    }
    #[inline(always)]
    fn abs(self) -> Self {
        Portable(std::array::from_fn(|l| self.0[l].abs()))
    }
    #[inline(always)]
    fn all_below(self, threshold: f32) -> bool {
        self.0.iter().all(|&v| v < threshold)
    }
    #[inline(always)]
    fn exp_negated(self) -> Self {
        Portable(std::array::from_fn(|l| exp_non_positive(-self.0[l])))
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
    fn load_widened(values: &[f32]) -> Self {
        let values = &values[..LANES];
        PortableWide(std::array::from_fn(|l| values[l] as f64))
    }
    #[inline(always)]
    fn store(self, lanes: &mut WideLanes) {
        *lanes = self.0;
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
    fn select_mask(self, mask: &[u32; LANES], otherwise: Self) -> Self {
        PortableWide(std::array::from_fn(|l| {
            if mask[l] != 0 {
                self.0[l]
            } else {
                otherwise.0[l]
            }
        }))
    }
    #[inline(always)]
    fn narrow(self) -> Portable {
        Portable(std::array::from_fn(|l| self.0[l] as f32))
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The lanes as AVX2 registers. Every function here is compiled with
    //! AVX2 and FMA enabled and is reached only through [`run`], which its
    //! caller enters after checking that the CPU has both.

    use std::arch::x86_64::*;

    use super::{LaneJob, LaneScratch, Lanes, Vector, Wide, WideLanes, run_with};
    use crate::machine::posterior::PartialPosterior;

    #[derive(Clone, Copy)]
    pub(super) struct Avx(__m256);

    #[derive(Clone, Copy)]
    pub(super) struct AvxWide(__m256d, __m256d);

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

    // SAFETY (every block below): an `Avx` or `AvxWide` value exists only
    // inside `run`, entered after the AVX2 and FMA check, and every pointer
    // read or write covers exactly eight values inside the borrowed array,
    // or inside a slice first cut to eight values.
    impl Vector for Avx {
        type Wide = AvxWide;
        #[inline(always)]
        fn splat(value: f32) -> Self {
            Avx(unsafe { _mm256_set1_ps(value) })
        }
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
        fn mul(self, other: Self) -> Self {
            Avx(unsafe { _mm256_mul_ps(self.0, other.0) })
        }
        #[inline(always)]
        fn mul_add(self, other: Self, addend: Self) -> Self {
            Avx(unsafe { _mm256_fmadd_ps(self.0, other.0, addend.0) })
        }
        #[inline(always)]
        fn select_positive(self, if_positive: Self, otherwise: Self) -> Self {
            unsafe {
                let positive = _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, _mm256_setzero_ps());
                Avx(_mm256_blendv_ps(otherwise.0, if_positive.0, positive))
            }
        }
        #[inline(always)]
        fn abs(self) -> Self {
            unsafe { Avx(_mm256_andnot_ps(_mm256_set1_ps(-0.0), self.0)) }
        }
        #[inline(always)]
        fn all_below(self, threshold: f32) -> bool {
            unsafe {
                let below = _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, _mm256_set1_ps(threshold));
                _mm256_movemask_ps(below) == 0xff
            }
        }
        #[inline(always)]
        fn exp_negated(self) -> Self {
            unsafe {
                let x = _mm256_max_ps(
                    _mm256_sub_ps(_mm256_setzero_ps(), self.0),
                    _mm256_set1_ps(-87.0),
                );
                let round = _mm256_set1_ps(12_582_912.0);
                let shifted = _mm256_fmadd_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E), round);
                let n = _mm256_sub_ps(shifted, round);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
                let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
                let mut p = _mm256_set1_ps(1.0 / 720.0);
                for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
                }
                let exponent =
                    _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_castps_si256(round));
                let bits =
                    _mm256_slli_epi32::<23>(_mm256_add_epi32(exponent, _mm256_set1_epi32(127)));
                let value = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
                let below = _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, _mm256_set1_ps(87.0));
                Avx(_mm256_andnot_ps(below, value))
            }
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
        fn load_widened(values: &[f32]) -> Self {
            let values = &values[..8];
            unsafe {
                let v = _mm256_loadu_ps(values.as_ptr());
                AvxWide(
                    _mm256_cvtps_pd(_mm256_castps256_ps128(v)),
                    _mm256_cvtps_pd(_mm256_extractf128_ps::<1>(v)),
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
        fn select_mask(self, mask: &[u32; 8], otherwise: Self) -> Self {
            unsafe {
                let low = _mm_loadu_si128(mask.as_ptr().cast());
                let high = _mm_loadu_si128(mask.as_ptr().add(4).cast());
                let low = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(low));
                let high = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(high));
                AvxWide(
                    _mm256_blendv_pd(otherwise.0, self.0, low),
                    _mm256_blendv_pd(otherwise.1, self.1, high),
                )
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

#[inline(always)]
fn run_with<'i, V: Vector>(
    job: &LaneJob<'_>,
    images: impl Iterator<Item = &'i [f32]>,
    scratch: &mut LaneScratch,
    posterior: &mut PartialPosterior,
) {
    let plan = job.plan;
    let extended = job.lanes.extended_width(plan);
    let mut pending = 0;
    for image in images {
        plan.pad_into(image, &mut scratch.image, extended, job.lanes.margin);
        for rows in &job.lanes.rows {
            for block in &job.lanes.blocks {
                displacement_block::<V>(job, rows, block, scratch);
            }
        }
        pending += 1;
        if pending == FOLD_EVERY {
            scratch.state.fold_into(posterior);
            pending = 0;
        }
    }
    if pending > 0 {
        scratch.state.fold_into(posterior);
    }
}

/// Distances for one row displacement and one block of column
/// displacements, streamed into the lane states.
#[inline(always)]
fn displacement_block<V: Vector>(
    job: &LaneJob<'_>,
    rows: &RowShift,
    block: &ColumnBlock,
    scratch: &mut LaneScratch,
) {
    let plan = job.plan;
    let lanes = job.lanes;
    let shape = plan.shape;
    let (ph, pw) = (plan.padded_height, plan.padded_width);
    let extended = lanes.extended_width(plan);
    let (height, width) = (plan.patch.height(), plan.patch.width());
    let span_rows = rows.valid.len();
    let span_cols = block.mask.len();
    let (z_rows, z_cols) = (span_rows + height - 1, span_cols + width - 1);
    let signal = V::Wide::splat(job.signal);

    // Residuals over the bounding box of the windows. Rows whose shifted
    // training row falls outside the padded image belong to no candidate.
    let residual = &mut scratch.residual;
    residual.clear();
    residual.resize(z_rows * z_cols, [0.0; LANES]);
    let column_start = ((lanes.margin + block.first) as isize + block.delta) as usize;
    for c in 0..shape.channels {
        for i in 0..z_rows {
            let query_row = rows.first + i;
            let image_row = query_row as isize + rows.delta;
            if image_row < 0 || image_row >= ph as isize {
                continue;
            }
            let q = &scratch.query[(c * ph + query_row) * pw + block.first..][..z_cols];
            let p = &scratch.image[(c * ph + image_row as usize) * extended + column_start..]
                [..z_cols + LANES - 1];
            let out = &mut residual[i * z_cols..(i + 1) * z_cols];
            for ((o, &qv), window) in out.iter_mut().zip(q).zip(p.windows(LANES)) {
                let r = V::Wide::splat(qv as f64).sub(signal.mul(V::Wide::load_widened(window)));
                r.mul_add(r, V::Wide::load(o)).store(o);
            }
        }
    }

    // Sliding sums along rows, columns outer so that rows run in parallel.
    let row_sums = &mut scratch.row_sums;
    row_sums.clear();
    row_sums.resize(z_rows * span_cols, [0.0; LANES]);
    for (e, sums) in residual
        .chunks_exact(z_cols)
        .zip(row_sums.chunks_exact_mut(span_cols))
    {
        let mut sum = V::Wide::splat(0.0);
        for value in &e[..width] {
            sum = sum.add(V::Wide::load(value));
        }
        sum.store(&mut sums[0]);
    }
    for j in 1..span_cols {
        for (e, sums) in residual
            .chunks_exact(z_cols)
            .zip(row_sums.chunks_exact_mut(span_cols))
        {
            V::Wide::load(&sums[j - 1])
                .add(V::Wide::load(&e[j + width - 1]))
                .sub(V::Wide::load(&e[j - 1]))
                .store(&mut sums[j]);
        }
    }

    // Sliding sums down columns.
    let distances = &mut scratch.distances;
    distances.clear();
    distances.resize(span_rows * span_cols, [0.0; LANES]);
    let (first_row, _) = distances.split_at_mut(span_cols);
    for sums in row_sums.chunks_exact(span_cols).take(height) {
        for (d, s) in first_row.iter_mut().zip(sums) {
            V::Wide::load(d).add(V::Wide::load(s)).store(d);
        }
    }
    for i in 1..span_rows {
        let (done, rest) = distances.split_at_mut(i * span_cols);
        let previous = &done[(i - 1) * span_cols..];
        let entering = &row_sums[(i + height - 1) * span_cols..][..span_cols];
        let leaving = &row_sums[(i - 1) * span_cols..][..span_cols];
        for (((d, p), e), l) in rest[..span_cols]
            .iter_mut()
            .zip(previous)
            .zip(entering)
            .zip(leaving)
        {
            V::Wide::load(p)
                .add(V::Wide::load(e))
                .sub(V::Wide::load(l))
                .store(d);
        }
    }

    // Softmax updates, with `x = beta (m - d)` in `f64`: `d < m` exactly
    // when `x > 0`. A lane that is no candidate here gets a distance that
    // can never carry weight: see `NOT_A_CANDIDATE`.
    let positions = shape.positions();
    let state = &mut scratch.state;
    let stride = ph * extended;
    let one = V::splat(1.0);
    let zero = V::Wide::splat(0.0);
    let not_a_candidate = V::Wide::splat(NOT_A_CANDIDATE);
    let beta = V::Wide::splat(job.beta);
    for (i, _) in rows.valid.iter().enumerate().filter(|(_, v)| **v) {
        let row = rows.first + i;
        let base = row * shape.width + block.first;
        let image_row = (row as isize + rows.delta) as usize + plan.patch.up();
        let value_start = ((image_row * extended + lanes.margin + block.first + plan.patch.left())
            as isize
            + block.delta) as usize;
        let minima = &mut state.min[base..base + span_cols];
        let normalisers = &mut state.normaliser[base..base + span_cols];
        let line = &distances[i * span_cols..(i + 1) * span_cols];
        for (j, (((d, mask), m), z)) in line
            .iter()
            .zip(&block.mask)
            .zip(minima.iter_mut())
            .zip(normalisers.iter_mut())
            .enumerate()
        {
            let distance = V::Wide::load(d)
                .max(zero)
                .select_mask(mask, not_a_candidate);
            let minimum = V::Wide::load(m);
            let exponent = minimum.sub(distance).mul(beta).narrow();
            if exponent.all_below(-NEGLIGIBLE) {
                continue;
            }
            distance.min(minimum).store(m);
            let e = exponent.abs().exp_negated();
            let rescale = exponent.select_positive(e, one);
            let weight = exponent.select_positive(one, e);
            V::load(z).mul_add(rescale, weight).store(z);
            for c in 0..shape.channels {
                let values = V::load_slice(&scratch.image[c * stride + value_start + j..]);
                let s = &mut state.sums[c * positions + base + j];
                weight.mul_add(values, V::load(s).mul(rescale)).store(s);
            }
        }
    }
}

/// `exp(x)` for `x <= 0` in `f32`, branch-free so that it vectorises:
/// `x = n ln 2 + r` with `|r| <= ln 2 / 2`, `exp(r)` by its degree-6 Taylor
/// polynomial (relative error below 2e-7), and `2^n` built from the
/// exponent bits. Arguments below -87 (including `-inf`) give 0; NaN gives
/// an unspecified value.
#[inline(always)]
pub(crate) fn exp_non_positive(x: f32) -> f32 {
    const LOG2_E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer.
    let clamped = x.max(-87.0);
    let shifted = clamped * LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let exponent = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let scale = f32::from_bits(((exponent + 127) << 23) as u32);
    let value = p * scale;
    if x < -87.0 { 0.0 } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_is_accurate_over_its_range() {
        let mut worst: f64 = 0.0;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_non_positive(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max((got - want).abs() / want);
            x -= 0.001_37;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_non_positive(0.0), 1.0);
        assert_eq!(exp_non_positive(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_non_positive(-100.0), 0.0);
    }
}
