//! Repeated candidate patches, compared once and weighted by their count.
//!
//! When many output pixels share one candidate set (every output pixel of
//! ELS, the interior pixels of bbELS), the softmax over that set depends
//! only on the multiset of candidate windows: `m` identical windows at
//! distance `d` with centre value `v` add `m exp(-beta d)` to the
//! normaliser and `m exp(-beta d) v` to the weighted sums, exactly what the
//! `m` separate candidates add. Small windows of real images repeat a lot
//! (on 1,000 MNIST digits, 64% of all 3x3 windows are blank, and the
//! 784,000 single pixels take 256 values), so comparing each distinct
//! window once costs a fraction of the comparisons:
//!
//! ```text
//! d(x; j)  = sum_i (q_x[i] - a p_j[i])^2          j over distinct windows
//! Z(x)     = sum_j m_j exp(-beta (d(x; j) - d_min(x)))
//! S_c(x)   = sum_j m_j exp(-beta (d(x; j) - d_min(x))) v_j[c]
//! ```
//!
//! Each distance is a direct sum over the `h w C` window values (no sliding
//! sums), so this pays only for small windows; [`worthwhile`] decides.
//! Distances are `f64`, weights and sums `f32` in eight lanes, as in
//! [`super::fast`], with the same reference distance, skipping bound and
//! fold into the exact [`PartialPosterior`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::fast::{
    ABOVE_REFERENCE_LOG2, LANES, Lanes, NEGLIGIBLE_LOG2, Portable, Vector, Wide, WideLanes,
};
use super::plan::{AxisPlan, Plan};
use super::posterior::PartialPosterior;
use super::simd::Isa;

/// The most window values (`h w C`) for which the direct sum beats the
/// sliding sums of the lane kernel, measured on MNIST (up to 5x5 windows).
const MAX_WINDOW_VALUES: usize = 25;

/// The direct sums are used only when the candidate windows repeat at
/// least this often on average.
const MIN_REPEATS: f64 = 2.5;

/// The most memory the distinct windows of one machine may take, over all
/// its windows and classes; a set that would exceed it is not collected.
const MAX_BYTES: usize = 64 << 20;

/// Blocks of eight distinct windows compared against every output pixel
/// before moving on, so that the scaled block stays in the L1 cache.
const TILE_BLOCKS: usize = 32;

/// Blocks per worker: about four chunks per core, whole tiles.
pub(crate) fn chunk_len(blocks: usize) -> usize {
    #[cfg(feature = "parallel")]
    let workers = rayon::current_num_threads().max(1);
    #[cfg(not(feature = "parallel"))]
    let workers = 1;
    blocks.div_ceil(4 * workers).div_ceil(TILE_BLOCKS).max(1) * TILE_BLOCKS
}

/// Whether a window of `values` values (`h w C`) may take the
/// distinct-window path.
pub(crate) fn small_enough(values: usize) -> bool {
    values <= MAX_WINDOW_VALUES
}

/// Whether comparing the distinct windows of `patches` is cheaper than
/// comparing all `total` candidate windows.
pub(crate) fn worthwhile(patches: &DistinctPatches) -> bool {
    patches.total as f64 >= MIN_REPEATS * patches.distinct as f64
}

/// The output pixels that share the most common candidate set, per axis:
/// those coordinates whose candidate range is the axis's most common one,
/// and that range.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct SharedSet {
    pub rows: Vec<bool>,
    pub cols: Vec<bool>,
    pub row_range: (usize, usize),
    pub col_range: (usize, usize),
}

impl SharedSet {
    /// The shared set of `plan`, if at least half of the output pixels
    /// belong to it.
    pub fn of(plan: &Plan) -> Option<Self> {
        let (rows, row_range) = most_common_range(&plan.rows, plan.shape.height);
        let (cols, col_range) = most_common_range(&plan.cols, plan.shape.width);
        let members = rows.iter().filter(|&&r| r).count() * cols.iter().filter(|&&c| c).count();
        (2 * members >= plan.shape.positions()).then_some(SharedSet {
            rows,
            cols,
            row_range,
            col_range,
        })
    }

    /// Output positions (row-major) in the set.
    pub fn positions(&self) -> Vec<usize> {
        let width = self.cols.len();
        let mut positions = Vec::new();
        for (row, &in_rows) in self.rows.iter().enumerate() {
            if !in_rows {
                continue;
            }
            for (col, &in_cols) in self.cols.iter().enumerate() {
                if in_cols {
                    positions.push(row * width + col);
                }
            }
        }
        positions
    }
}

/// Per query coordinate, its candidate range `lo .. hi`; returns the
/// coordinates with the most common range and that range.
fn most_common_range(axis: &AxisPlan, len: usize) -> (Vec<bool>, (usize, usize)) {
    let mut ranges = vec![(usize::MAX, 0usize); len];
    for shift in &axis.shifts {
        for &query in &shift.queries {
            let y = (query as isize + shift.delta) as usize;
            let range = &mut ranges[query];
            range.0 = range.0.min(y);
            range.1 = range.1.max(y + 1);
        }
    }
    let mut counts: HashMap<(usize, usize), usize> = HashMap::new();
    for &range in &ranges {
        *counts.entry(range).or_default() += 1;
    }
    // The most common range; ties go to the widest, then the first.
    let common = counts
        .into_iter()
        .max_by_key(|&((lo, hi), count)| (count, hi - lo, std::cmp::Reverse(lo)))
        .map(|(range, _)| range)
        .expect("an axis has at least one coordinate");
    (
        ranges.iter().map(|&range| range == common).collect(),
        common,
    )
}

/// The distinct candidate windows of a training set for one shared set,
/// with their multiplicities, laid out in blocks of eight.
#[derive(Debug)]
pub(crate) struct DistinctPatches {
    /// Values per window, `h w C`, ordered channel, row, column.
    len: usize,
    channels: usize,
    /// Number of distinct windows.
    distinct: usize,
    /// Number of candidate windows they stand for.
    total: usize,
    /// Block `b`, value `i`, lane `l` at `(b len + i) LANES + l`, as the
    /// bits of the `f32` value.
    values: Vec<u32>,
    /// Block `b`, channel `c`, lane `l` at `(b C + c) LANES + l`: the
    /// multiplicity times the centre value.
    weighted_centres: Vec<f32>,
    /// Block `b`, lane `l` at `b LANES + l`; 0 for the lanes that pad the
    /// last block.
    multiplicity: Vec<f32>,
}

impl DistinctPatches {
    /// Collects the windows centred on `set.row_range x set.col_range` of
    /// every image in `images` (unpadded `f32` images), padded as `plan`
    /// says; `None` if their distinct windows would take more than
    /// `MAX_BYTES`.
    pub fn collect<'i>(
        plan: &Plan,
        set: &SharedSet,
        images: impl Iterator<Item = &'i [f32]>,
    ) -> Option<Self> {
        let channels = plan.shape.channels;
        let (ph, pw) = (plan.padded_height, plan.padded_width);
        let (h, w) = (plan.patch.height(), plan.patch.width());
        let len = h * w * channels;
        let mut padded = vec![0.0f32; ph * pw * channels];
        let mut table = WindowTable::new(len);
        let mut window = vec![0u32; len];
        let mut previous = vec![0u32; len];
        let mut previous_index = None;
        let mut total = 0;
        for image in images {
            plan.pad(image, &mut padded);
            for yr in set.row_range.0..set.row_range.1 {
                for yc in set.col_range.0..set.col_range.1 {
                    // The window of centre (yr, yc) starts at padded (yr, yc).
                    let mut i = 0;
                    for c in 0..channels {
                        for wr in 0..h {
                            let row = &padded[c * ph * pw + (yr + wr) * pw + yc..][..w];
                            for &value in row {
                                window[i] = value.to_bits();
                                i += 1;
                            }
                        }
                    }
                    // Neighbouring windows are often equal (blank background).
                    match previous_index {
                        Some(index) if window == previous => table.counts[index] += 1,
                        _ => {
                            previous_index = Some(table.add(&window));
                            previous.copy_from_slice(&window);
                        }
                    }
                    total += 1;
                    if table.bytes() > MAX_BYTES {
                        return None;
                    }
                }
            }
        }
        let centre = plan.patch.up() * w + plan.patch.left();
        if table.counts.is_empty() {
            return None;
        }
        Some(table.into_blocks(channels, h * w, centre, total))
    }

    /// Memory held, in bytes.
    pub fn bytes(&self) -> usize {
        4 * (self.values.len() + self.weighted_centres.len() + self.multiplicity.len())
    }

    /// Number of blocks of eight windows.
    fn blocks(&self) -> usize {
        self.multiplicity.len() / LANES
    }
}

/// An open-addressing set of windows (as bit patterns) with counts.
struct WindowTable {
    len: usize,
    /// Distinct windows, `len` values each.
    store: Vec<u32>,
    counts: Vec<u32>,
    /// Index into `counts` plus one; 0 is empty.
    slots: Vec<u32>,
}

impl WindowTable {
    fn new(len: usize) -> Self {
        WindowTable {
            len,
            store: Vec::new(),
            counts: Vec::new(),
            slots: vec![0; 1024],
        }
    }

    fn hash(window: &[u32]) -> u64 {
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for &v in window {
            h = (h.rotate_left(5) ^ v as u64).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
        h ^ (h >> 29)
    }

    /// Memory held, in bytes.
    fn bytes(&self) -> usize {
        4 * (self.store.len() + self.counts.len() + self.slots.len())
    }

    /// Counts `window`; returns its index.
    fn add(&mut self, window: &[u32]) -> usize {
        let mask = self.slots.len() - 1;
        let mut slot = Self::hash(window) as usize & mask;
        loop {
            match self.slots[slot] {
                0 => {
                    self.store.extend_from_slice(window);
                    self.counts.push(1);
                    self.slots[slot] = self.counts.len() as u32;
                    if 2 * self.counts.len() > self.slots.len() {
                        self.grow();
                    }
                    return self.counts.len() - 1;
                }
                index => {
                    let index = index as usize - 1;
                    if &self.store[index * self.len..(index + 1) * self.len] == window {
                        self.counts[index] += 1;
                        return index;
                    }
                }
            }
            slot = (slot + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let mut slots = vec![0u32; 2 * self.slots.len()];
        let mask = slots.len() - 1;
        for index in 0..self.counts.len() {
            let window = &self.store[index * self.len..(index + 1) * self.len];
            let mut slot = Self::hash(window) as usize & mask;
            while slots[slot] != 0 {
                slot = (slot + 1) & mask;
            }
            slots[slot] = index as u32 + 1;
        }
        self.slots = slots;
    }

    /// Lays the windows out in blocks of eight; `plane` values per channel,
    /// the centre at `centre` within a plane.
    fn into_blocks(
        self,
        channels: usize,
        plane: usize,
        centre: usize,
        total: usize,
    ) -> DistinctPatches {
        let WindowTable {
            len,
            mut store,
            counts,
            slots,
        } = self;
        drop(slots);
        let distinct = counts.len();
        let blocks = distinct.div_ceil(LANES);
        // The lanes after the last window repeat it with multiplicity 0:
        // their distances are real candidates' distances, their weights 0.
        let last = store[(distinct - 1) * len..].to_vec();
        while store.len() < blocks * LANES * len {
            store.extend_from_slice(&last);
        }
        let mut weighted_centres = vec![0.0f32; blocks * channels * LANES];
        let mut multiplicity = vec![0.0f32; blocks * LANES];
        for (slot, count_slot) in multiplicity.iter_mut().enumerate() {
            let count = counts.get(slot).map_or(0.0, |&count| count as f32);
            *count_slot = count;
            let (block, lane) = (slot / LANES, slot % LANES);
            for c in 0..channels {
                weighted_centres[(block * channels + c) * LANES + lane] =
                    count * f32::from_bits(store[slot * len + c * plane + centre]);
            }
        }
        // Window-major to lane-major, one block (the same memory) at a time.
        let mut block = vec![0u32; len * LANES];
        for region in store.chunks_exact_mut(len * LANES) {
            for (lane, window) in region.chunks_exact(len).enumerate() {
                for (i, &bits) in window.iter().enumerate() {
                    block[i * LANES + lane] = bits;
                }
            }
            region.copy_from_slice(&block);
        }
        store.shrink_to_fit();
        DistinctPatches {
            len,
            channels,
            distinct,
            total,
            values: store,
            weighted_centres,
            multiplicity,
        }
    }
}

/// Distinct-window sets already collected, per class and window.
#[derive(Clone, Default)]
pub(crate) struct DistinctCache {
    /// `None` for a set that was too large to keep.
    entries: Arc<Mutex<HashMap<CacheKey, Option<Arc<DistinctPatches>>>>>,
}

/// What a distinct-window set depends on besides the training set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CacheKey {
    pub class: Option<usize>,
    pub extent: [usize; 4],
    pub set: SharedSet,
}

impl std::fmt::Debug for DistinctCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let entries = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        // Entries count collected sets and sets found too large to keep.
        write!(f, "DistinctCache {{ entries: {entries} }}")
    }
}

impl DistinctCache {
    /// Number of sets collected and kept.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries
            .lock()
            .map(|e| e.values().flatten().count())
            .unwrap_or(0)
    }

    /// The set for `key`, collected by `collect` on first use (`None` if
    /// it was too large). Keeping it may drop the other sets, so that all
    /// together take at most `MAX_BYTES`.
    pub fn get_or_collect(
        &self,
        key: CacheKey,
        collect: impl FnOnce() -> Option<DistinctPatches>,
    ) -> Option<Arc<DistinctPatches>> {
        if let Ok(entries) = self.entries.lock()
            && let Some(found) = entries.get(&key)
        {
            return found.clone();
        }
        let collected = collect().map(Arc::new);
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(new) = &collected {
                let held: usize = entries.values().flatten().map(|set| set.bytes()).sum();
                if held + new.bytes() > MAX_BYTES {
                    entries.retain(|_, set| set.is_none());
                }
            }
            entries.insert(key, collected.clone());
        }
        collected
    }
}

/// One evaluation over a distinct-window set.
pub(crate) struct DistinctJob<'a> {
    pub patches: &'a DistinctPatches,
    /// Output positions of the shared set.
    pub positions: &'a [usize],
    /// Per output position of the set, its query window (`len` values, in
    /// the order of the distinct windows).
    pub queries: &'a [f64],
    pub signal: f64,
    pub beta: f64,
    /// The instruction set the kernels run on (see [`Isa`]).
    pub isa: Isa,
}

impl DistinctJob<'_> {
    /// The query windows of `positions` read from the padded query.
    pub fn query_windows(plan: &Plan, padded_query: &[f32], positions: &[usize]) -> Vec<f64> {
        let channels = plan.shape.channels;
        let width = plan.shape.width;
        let (ph, pw) = (plan.padded_height, plan.padded_width);
        let (h, w) = (plan.patch.height(), plan.patch.width());
        let mut windows = Vec::with_capacity(positions.len() * h * w * channels);
        for &position in positions {
            let (xr, xc) = (position / width, position % width);
            for c in 0..channels {
                for wr in 0..h {
                    let row = &padded_query[c * ph * pw + (xr + wr) * pw + xc..][..w];
                    windows.extend(row.iter().map(|&v| v as f64));
                }
            }
        }
        windows
    }

    /// Number of blocks of eight windows.
    pub fn blocks(&self) -> usize {
        self.patches.blocks()
    }

    /// Adds the windows of blocks `blocks` to `posterior`.
    pub fn run(&self, blocks: std::ops::Range<usize>, posterior: &mut PartialPosterior) {
        match self.isa {
            // SAFETY: `Isa::detected` gives a level only where the CPU
            // supports it, and the levels a job is built with come from it
            // or from `Isa::available`.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::run_avx512(self, blocks, posterior) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::run_avx2(self, blocks, posterior) },
            _ => run_with::<Portable>(self, blocks, posterior),
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::super::fast::avx2::Avx;
    use super::super::fast::avx512::Avx512;
    use super::{DistinctJob, PartialPosterior, run_with};

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(
        job: &DistinctJob<'_>,
        blocks: std::ops::Range<usize>,
        posterior: &mut PartialPosterior,
    ) {
        run_with::<Avx>(job, blocks, posterior);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512(
        job: &DistinctJob<'_>,
        blocks: std::ops::Range<usize>,
        posterior: &mut PartialPosterior,
    ) {
        run_with::<Avx512>(job, blocks, posterior);
    }
}

/// The kernel: per tile of blocks, scale the tile once, then for every
/// output position of the set sweep the tile with the softmax state in
/// registers and fold it into `posterior`.
#[inline(always)]
fn run_with<V: Vector>(
    job: &DistinctJob<'_>,
    blocks: std::ops::Range<usize>,
    posterior: &mut PartialPosterior,
) {
    let patches = job.patches;
    let (len, channels) = (patches.len, patches.channels);
    let mut scaled = vec![0.0f64; TILE_BLOCKS * len * LANES];
    // Exponents in base 2: exp(beta (m - d)) = 2^(beta log2(e) (m - d)).
    let beta = V::Wide::splat(job.beta * std::f64::consts::LOG2_E);
    let mut sums = vec![[0.0f32; LANES]; channels];
    let mut start = blocks.start;
    while start < blocks.end {
        let end = (start + TILE_BLOCKS).min(blocks.end);
        let tile = &patches.values[start * len * LANES..end * len * LANES];
        for (s, &v) in scaled.iter_mut().zip(tile) {
            *s = job.signal * f32::from_bits(v) as f64;
        }
        for (g, &position) in job.positions.iter().enumerate() {
            let query = &job.queries[g * len..(g + 1) * len];
            let mut reference = posterior.min_distances()[position];
            let mut nearest = V::Wide::splat(f64::INFINITY);
            let mut normaliser = V::load(&[0.0; LANES]);
            for s in sums.iter_mut() {
                *s = [0.0; LANES];
            }
            for block in 0..end - start {
                let values = &scaled[block * len * LANES..(block + 1) * len * LANES];
                let r = V::Wide::splat(query[0]).sub(V::Wide::load_slice(values));
                let mut distance = r.mul(r);
                for i in 1..len {
                    let r = V::Wide::splat(query[i]).sub(V::Wide::load_slice(&values[i * LANES..]));
                    distance = r.mul_add(r, distance);
                }
                let mut exponent = V::Wide::splat(reference).sub(distance).mul(beta).narrow();
                if exponent.any_above(ABOVE_REFERENCE_LOG2) {
                    let mut lanes: WideLanes = [0.0; LANES];
                    distance.store(&mut lanes);
                    let minimum = lanes.iter().copied().fold(f64::INFINITY, f64::min);
                    let factor = if reference.is_finite() {
                        (-job.beta * (reference - minimum)).exp() as f32
                    } else {
                        0.0
                    };
                    let factor = V::load(&[factor; LANES]);
                    let zero = V::load(&[0.0; LANES]);
                    normaliser = normaliser.mul_add(factor, zero);
                    for s in sums.iter_mut() {
                        V::load(s).mul_add(factor, zero).store(s);
                    }
                    reference = minimum;
                    exponent = V::Wide::splat(minimum).sub(distance).mul(beta).narrow();
                } else if exponent.all_below(-NEGLIGIBLE_LOG2) {
                    continue;
                }
                nearest = nearest.min(distance);
                let weight = exponent.exp2();
                let b = start + block;
                let multiplicity: &Lanes = patches.multiplicity[b * LANES..][..LANES]
                    .try_into()
                    .expect("eight lanes");
                normaliser = weight.mul_add(V::load(multiplicity), normaliser);
                for (c, s) in sums.iter_mut().enumerate() {
                    let centres = &patches.weighted_centres[(b * channels + c) * LANES..];
                    weight.mul_add(V::load_slice(centres), V::load(s)).store(s);
                }
            }
            // Fold relative to the nearest distance that carried weight.
            let mut z: Lanes = [0.0; LANES];
            normaliser.store(&mut z);
            let total: f64 = z.iter().map(|&v| v as f64).sum();
            if total > 0.0 {
                let mut lanes: WideLanes = [0.0; LANES];
                nearest.store(&mut lanes);
                let nearest = lanes.iter().copied().fold(f64::INFINITY, f64::min);
                let factor = (job.beta * (nearest - reference)).exp();
                let sums = &sums;
                posterior.merge_position(position, nearest, total * factor, |c| {
                    sums[c].iter().map(|&s| s as f64).sum::<f64>() * factor
                });
            }
        }
        start = end;
    }
}
