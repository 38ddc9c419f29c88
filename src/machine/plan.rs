//! What one evaluation compares: the resolved patch, the padded layout and,
//! per axis, the displacements from output pixels to candidate centres.

use crate::equivariance::{Axis, Boundary, Equivariance};
use crate::error::{Error, Result};
use crate::image::Shape;
use crate::locality::{Patch, Window};

/// The largest padded plane (rows times columns) a periodic window may need.
const MAX_PADDED_AREA: usize = 1 << 24;

/// A periodic window's padded plane may be at most this many times the
/// image...
const WRAPS: usize = 16;

/// ...or this many pixels, whichever is larger.
const MIN_WRAP_LIMIT: usize = 1 << 16;

/// Output coordinates along one axis whose candidate centres include
/// `query + delta`.
#[derive(Clone, Debug)]
pub(crate) struct Shift {
    pub delta: isize,
    pub queries: Vec<usize>,
}

impl Shift {
    pub fn first(&self) -> usize {
        self.queries[0]
    }

    pub fn last(&self) -> usize {
        self.queries[self.queries.len() - 1]
    }

    pub fn span(&self) -> usize {
        self.last() - self.first() + 1
    }
}

/// The displacements of one axis.
#[derive(Clone, Debug)]
pub(crate) struct AxisPlan {
    pub shifts: Vec<Shift>,
    /// Number of (query, candidate) pairs on this axis.
    pub pairs: usize,
}

impl AxisPlan {
    fn new(equivariance: &dyn Equivariance, axis: Axis, name: &str) -> Result<Self> {
        let len = axis.len as isize;
        let mut by_delta: Vec<Vec<usize>> = vec![Vec::new(); 2 * axis.len - 1];
        let mut pairs = 0;
        for query in 0..axis.len {
            let candidates = equivariance.candidates(axis, query);
            if candidates.is_empty() {
                return Err(Error::NoCandidates(format!(
                    "no candidate centre along the {name} axis for coordinate {query} \
                     ({} pixels, window reaching {} before and {} after its centre)",
                    axis.len, axis.before, axis.after
                )));
            }
            if candidates.end > axis.len {
                return Err(Error::InvalidParameter(format!(
                    "equivariance returned candidates {candidates:?} outside 0..{} along the {name} axis",
                    axis.len
                )));
            }
            for y in candidates {
                let delta = y as isize - query as isize;
                by_delta[(delta + len - 1) as usize].push(query);
                pairs += 1;
            }
        }
        let shifts = by_delta
            .into_iter()
            .enumerate()
            .filter(|(_, q)| !q.is_empty())
            .map(|(i, queries)| Shift {
                delta: i as isize - (len - 1),
                queries,
            })
            .collect();
        Ok(AxisPlan { shifts, pairs })
    }
}

/// Everything about one evaluation that depends on the shape, window and
/// equivariance but not on the images.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub shape: Shape,
    pub patch: Patch,
    pub boundary: Boundary,
    pub rows: AxisPlan,
    pub cols: AxisPlan,
    /// Padded plane size: `(H + up + down) x (W + left + right)`.
    pub padded_height: usize,
    pub padded_width: usize,
    /// Whether every window covers the whole zero-padded image and the only
    /// candidate is the output pixel's own location, so that the distance
    /// is the same for every output pixel (the ideal score).
    pub global: bool,
}

impl Plan {
    pub fn new(shape: Shape, window: &Window, equivariance: &dyn Equivariance) -> Result<Self> {
        let boundary = equivariance.boundary();
        let periodic = boundary == Boundary::Periodic;
        let patch = match window {
            Window::Whole => {
                let (up, down) = Window::whole_extent(shape.height, periodic);
                let (left, right) = Window::whole_extent(shape.width, periodic);
                Patch::offsets(up, down, left, right)
            }
            Window::Patch(patch) => patch.clone(),
        };
        let row_axis = Axis {
            len: shape.height,
            before: patch.up(),
            after: patch.down(),
        };
        let col_axis = Axis {
            len: shape.width,
            before: patch.left(),
            after: patch.right(),
        };
        let rows = AxisPlan::new(equivariance, row_axis, "row")?;
        let cols = AxisPlan::new(equivariance, col_axis, "column")?;

        // With zero padding, offsets beyond `len - 1` read 0 in the query and
        // in every candidate from any centre, so they add nothing: crop them.
        // Periodic windows wrap, so every offset counts; their padded planes
        // must stay of a size that can be held.
        let patch = match boundary {
            Boundary::Zero => patch.crop(
                patch.up().min(shape.height - 1),
                patch.down().min(shape.height - 1),
                patch.left().min(shape.width - 1),
                patch.right().min(shape.width - 1),
            ),
            Boundary::Periodic => patch,
        };
        let padded_height = shape
            .height
            .checked_add(patch.up())
            .and_then(|v| v.checked_add(patch.down()));
        let padded_width = shape
            .width
            .checked_add(patch.left())
            .and_then(|v| v.checked_add(patch.right()));
        let (padded_height, padded_width) = match (padded_height, padded_width) {
            (Some(h), Some(w)) if h.checked_mul(w).is_some_and(|area| area <= MAX_PADDED_AREA) => {
                (h, w)
            }
            _ => {
                return Err(Error::InvalidWindow(format!(
                    "a window reaching {}/{} rows and {}/{} columns around its centre wraps \
                     around a {}x{} image too many times; periodic windows may span at most \
                     {MAX_PADDED_AREA} padded pixels",
                    patch.up(),
                    patch.down(),
                    patch.left(),
                    patch.right(),
                    shape.height,
                    shape.width
                )));
            }
        };
        // The cost grows with the padded area: refuse windows that wrap
        // around the image many times, almost surely a mistake.
        let wrap_limit = (WRAPS * shape.positions()).max(MIN_WRAP_LIMIT);
        if periodic && padded_height * padded_width > wrap_limit {
            return Err(Error::InvalidWindow(format!(
                "a periodic window reaching {}/{} rows and {}/{} columns around its centre \
                 wraps around a {}x{} image too many times: its padded plane of {} pixels \
                 exceeds {wrap_limit} ({WRAPS} times the image, at least {MIN_WRAP_LIMIT})",
                patch.up(),
                patch.down(),
                patch.left(),
                patch.right(),
                shape.height,
                shape.width,
                padded_height * padded_width
            )));
        }
        let covers =
            |before: usize, after: usize, len: usize| before >= len - 1 && after >= len - 1;
        let same_location = |plan: &AxisPlan| plan.shifts.len() == 1 && plan.shifts[0].delta == 0;
        let global = boundary == Boundary::Zero
            && patch.is_uniform()
            && covers(patch.up(), patch.down(), shape.height)
            && covers(patch.left(), patch.right(), shape.width)
            && same_location(&rows)
            && same_location(&cols);
        Ok(Plan {
            shape,
            padded_height,
            padded_width,
            patch,
            boundary,
            rows,
            cols,
            global,
        })
    }

    /// The same plan for the output pixels in `rows x cols` only (per axis,
    /// which coordinates to keep), or `None` if that leaves no pair.
    pub fn restricted(&self, rows: &[bool], cols: &[bool]) -> Option<Plan> {
        let keep = |axis: &AxisPlan, keep: &[bool]| {
            let shifts: Vec<Shift> = axis
                .shifts
                .iter()
                .filter_map(|shift| {
                    let queries: Vec<usize> =
                        shift.queries.iter().copied().filter(|&q| keep[q]).collect();
                    (!queries.is_empty()).then_some(Shift {
                        delta: shift.delta,
                        queries,
                    })
                })
                .collect();
            let pairs = shifts.iter().map(|shift| shift.queries.len()).sum();
            AxisPlan { shifts, pairs }
        };
        let (rows, cols) = (keep(&self.rows, rows), keep(&self.cols, cols));
        if rows.pairs == 0 || cols.pairs == 0 {
            return None;
        }
        Some(Plan {
            rows,
            cols,
            global: false,
            ..self.clone()
        })
    }

    /// The sum of the window's weights (its pixel count when uniform).
    pub fn weight_sum(&self) -> f64 {
        match self.patch.weights() {
            Some(weights) => weights.iter().sum(),
            None => self.patch.height() as f64 * self.patch.width() as f64,
        }
    }

    /// Number of (output pixel, candidate centre) pairs per training image.
    pub fn comparisons_per_image(&self) -> usize {
        self.rows.pairs * self.cols.pairs
    }

    /// Writes `image` (channel-major, unpadded) into `padded` with this
    /// plan's margins and boundary.
    pub fn pad<T: crate::Real, U: crate::Real>(&self, image: &[T], padded: &mut [U]) {
        self.pad_into(image, padded, self.padded_width, 0);
    }

    /// `image` padded by [`Plan::pad`] into a new `f64` buffer.
    pub fn padded<T: crate::Real>(&self, image: &[T]) -> Vec<f64> {
        let mut padded = vec![0.0; self.padded_height * self.padded_width * self.shape.channels];
        self.pad(image, &mut padded);
        padded
    }

    /// As [`Plan::pad`], into planes of `out_width >= padded_width`
    /// columns with the padded image starting at column `col_offset`;
    /// other columns are left as they are.
    pub fn pad_into<T: crate::Real, U: crate::Real>(
        &self,
        image: &[T],
        padded: &mut [U],
        out_width: usize,
        col_offset: usize,
    ) {
        let Shape {
            channels,
            height,
            width,
        } = self.shape;
        let (ph, pw) = (self.padded_height, self.padded_width);
        let (up, left) = (self.patch.up() as isize, self.patch.left() as isize);
        for c in 0..channels {
            let plane = &image[c * height * width..(c + 1) * height * width];
            let out = &mut padded[c * ph * out_width..(c + 1) * ph * out_width];
            for i in 0..ph {
                let row = i as isize - up;
                let source_row = match self.boundary {
                    Boundary::Periodic => Some(row.rem_euclid(height as isize) as usize),
                    Boundary::Zero => (0..height as isize).contains(&row).then_some(row as usize),
                };
                let out_row = &mut out[i * out_width + col_offset..][..pw];
                let Some(source_row) = source_row else {
                    out_row.fill(U::zero());
                    continue;
                };
                let source = &plane[source_row * width..(source_row + 1) * width];
                match self.boundary {
                    // Runs of whole source rows, the first starting at
                    // column `-left mod width`.
                    Boundary::Periodic => {
                        let mut col = (-left).rem_euclid(width as isize) as usize;
                        let mut rest = &mut out_row[..];
                        while !rest.is_empty() {
                            let run = (width - col).min(rest.len());
                            let (head, tail) = rest.split_at_mut(run);
                            for (o, &v) in head.iter_mut().zip(&source[col..col + run]) {
                                *o = U::narrow(v.widen());
                            }
                            rest = tail;
                            col = 0;
                        }
                    }
                    // Zeros, the row (cropped windows never reach past it
                    // by more than the padding), zeros.
                    Boundary::Zero => {
                        let left = left as usize;
                        let (before, row) = out_row.split_at_mut(left.min(pw));
                        before.fill(U::zero());
                        let copied = width.min(row.len());
                        for (o, &v) in row[..copied].iter_mut().zip(source) {
                            *o = U::narrow(v.widen());
                        }
                        row[copied..].fill(U::zero());
                    }
                }
            }
        }
    }

    /// `padded` (a query padded by this plan) continued periodically over
    /// `rows x cols` padded coordinates, for the virtual output coordinates
    /// of [`joined_shifts`]; `padded` itself where no more is needed.
    pub fn continue_periodically(&self, padded: Vec<f64>, rows: usize, cols: usize) -> Vec<f64> {
        let (ph, pw) = (self.padded_height, self.padded_width);
        if (rows, cols) == (ph, pw) {
            return padded;
        }
        debug_assert_eq!(self.boundary, Boundary::Periodic);
        let Shape {
            channels,
            height,
            width,
        } = self.shape;
        let (up, left) = (self.patch.up(), self.patch.left());
        // Padded coordinate `r` holds image row `(r - up) mod H`, found at
        // padded row `up + (r - up) mod H`.
        let source = |r: usize, before: usize, len: usize| before + (r + len - before % len) % len;
        let mut wide = Vec::with_capacity(channels * rows * cols);
        for plane in padded.chunks_exact(ph * pw) {
            for r in 0..rows {
                let row = &plane[source(r, up, height) * pw..][..pw];
                wide.extend((0..cols).map(|c| row[source(c, left, width)]));
            }
        }
        wide
    }
}

/// The padded query coordinates along one axis that the windows of the
/// output coordinates of `shifts` (virtual ones included) read: at least
/// the plan's own `padded` length.
pub(crate) fn query_reach(shifts: &[Shift], side: usize, padded: usize) -> usize {
    shifts
        .iter()
        .map(|shift| shift.last() + side)
        .fold(padded, usize::max)
}

/// The displacements of one axis as the kernels walk them.
///
/// A displacement `delta` serving output coordinates `n` pays its sliding
/// sums over `n + side - 1` coordinates. With a periodic query the
/// windows of output coordinate `x` and `x + len` are the same, so the
/// outputs `x` of displacement `d > 0` are the outputs `x + len` of
/// displacement `d - len`, which reach the same candidate centres
/// `x + d`. Where the two together span fewer coordinates than they pay
/// apart, they become one displacement `d - len` over *virtual* output
/// coordinates `x` and `x + len` (below `2 len`), read from the query
/// continued periodically. For the interior centres of ELS every such
/// pair joins into one run of `len - side + 1` coordinates, so an axis
/// pays `len` displacements of `len` coordinates instead of up to
/// `2 len - side` displacements of `n + side - 1` (with `n` from
/// `len - side + 1` down to 1): at `k = 15` on 28 pixels, 784
/// coordinates instead of 966.
pub(crate) fn joined_shifts(
    shifts: &[Shift],
    len: usize,
    side: usize,
    periodic: bool,
) -> Vec<Shift> {
    if !periodic {
        return shifts.to_vec();
    }
    let len_signed = len as isize;
    let mut merged: Vec<Shift> = Vec::with_capacity(shifts.len());
    let mut taken = vec![false; shifts.len()];
    for (i, high) in shifts.iter().enumerate() {
        if high.delta <= 0 {
            continue;
        }
        let Ok(j) = shifts.binary_search_by_key(&(high.delta - len_signed), |s| s.delta) else {
            continue;
        };
        let low = &shifts[j];
        let queries: Vec<usize> = low
            .queries
            .iter()
            .copied()
            .chain(high.queries.iter().map(|&q| q + len))
            .collect();
        let joined = queries[queries.len() - 1] - queries[0] + 1;
        if joined < low.span() + high.span() + side - 1 {
            taken[i] = true;
            taken[j] = true;
            merged.push(Shift {
                delta: low.delta,
                queries,
            });
        }
    }
    merged.extend(
        shifts
            .iter()
            .zip(&taken)
            .filter(|(_, taken)| !**taken)
            .map(|(shift, _)| shift.clone()),
    );
    merged.sort_by_key(|shift| shift.delta);
    merged
}
