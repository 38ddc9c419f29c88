//! Cross terms by Fourier transforms, for query windows that wrap.
//!
//! With a periodic boundary the query window of output pixel `x` wraps
//! around the image, so for one candidate centre `y` the cross term
//!
//! ```text
//! C(x, y) = sum_c sum_o q(c, (x + o) mod (H, W)) a p(c, y + o)
//! ```
//!
//! is, as a function of `x`, a circular convolution of the query with the
//! candidate window turned around:
//!
//! ```text
//! C(., y) = sum_c q_c (*) K_c,    K_c((-o) mod (H, W)) += a p(c, y + o)
//! ```
//!
//! (offsets that meet modulo the image, in windows wider than it, add up).
//! One forward transform of `K_c` per channel, a product with the query's
//! transform and one inverse transform give `C(x, y)` for every output
//! pixel at once. Two training images share each complex transform, one as
//! its real part and one as its imaginary part: as the query is real, the
//! real part of the result is the first image's cross terms and the
//! imaginary part the second's. The cost per comparison is about
//! `log2(H W)` multiply-adds whatever the window, where the sliding sums
//! of [`super::fast`] pay a number that grows with it once few centres
//! remain (about 209 at k = 27 on 28x28 images): this route serves the
//! large windows of ELS, where each output pixel has only a few interior
//! candidate centres. The distances are then `d = Q(x) + A(y) - 2 C(x, y)`
//! with `Q` and `A` the squared window norms summed directly, and go
//! through the same streaming softmax as the lanes ([`fast::add_centre`]).
//!
//! Where the windows are at most a few lines short of the image, one
//! transform of the whole image per training image and corrections for
//! the lines each window leaves out cost less ([`super::torus`]);
//! [`choose`] picks the cheaper of the two routes and the lanes.
//!
//! Everything is `f64` until the softmax. The rounding of the transforms
//! is bounded by [`cross_term_error`], which the caller checks against the
//! exponent budget before choosing either route.

use super::fast::{self, LANES, LaneState, NOT_A_CANDIDATE, WideLanes};
use super::fourier::{
    C64, Centre, Centres, Group, GroupScratch, Transforms, multiply, run_in_groups,
};
use super::plan::{AxisPlan, Plan, joined_shifts};
use super::posterior::PartialPosterior;
use super::simd::Isa;
use super::torus::TorusPlan;
use crate::equivariance::Boundary;

/// What the Fourier route needs of a [`Plan`]: its candidate centres and
/// the transforms of the image's size.
pub(crate) struct SpectralPlan {
    centres: Centres,
    /// Per window row `i` (column `j`), the row (column) of the turned
    /// window it lands on: `(up - i) mod H` (`(left - j) mod W`).
    row_targets: Vec<usize>,
    col_targets: Vec<usize>,
    /// Per centre row `y` (column) and window row `i` (column `j`), the
    /// image row (column) the window reads, `(y + i - up) mod H`: windows
    /// of periodic plans wrap around the training image.
    row_sources: Vec<Vec<usize>>,
    col_sources: Vec<Vec<usize>>,
    /// The rows of the turned window that receive a value, as runs of
    /// consecutive rows (transformed in one call each).
    touched_rows: Vec<std::ops::Range<usize>>,
    transforms: Transforms,
}

/// The cost of the transforms per centre, output pixel and `log2(H W)`,
/// in lane cross terms (see [`pays`]).
///
/// Calibrated on 28x28 MNIST digits (ELS, 1,000 images, two cores, each
/// route forced in turn), where the lanes' displacements join into 784
/// cross terms per displacement row and column whatever the window: the
/// transforms ran 0.51 times as fast as the lanes at k = 19 (where lane
/// cross terms are 0.8 times `centres H W log2(H W)`), 0.68 times at
/// k = 21 (1.27), as fast at k = 23 (2.27), 1.69 times at k = 25 (5.1) and
/// 5.2 times at k = 27 (20.4), so they take over above a ratio of 2.3.
const TRANSFORM_COST: f64 = 2.3;

impl SpectralPlan {
    /// The Fourier route for `plan`, if its query windows wrap (a periodic
    /// boundary) and its windows are uniform.
    pub fn new(plan: &Plan) -> Option<Self> {
        if plan.boundary != Boundary::Periodic || !plan.patch.is_uniform() {
            return None;
        }
        let shape = plan.shape;
        let (height, width) = (shape.height, shape.width);
        let (up, left) = (plan.patch.up() as isize, plan.patch.left() as isize);
        let row_targets: Vec<usize> = (0..plan.patch.height())
            .map(|i| (up - i as isize).rem_euclid(height as isize) as usize)
            .collect();
        let col_targets: Vec<usize> = (0..plan.patch.width())
            .map(|j| (left - j as isize).rem_euclid(width as isize) as usize)
            .collect();
        let sources = |len: usize, before: isize, side: usize| -> Vec<Vec<usize>> {
            (0..len)
                .map(|y| {
                    (0..side)
                        .map(|i| {
                            (y as isize + i as isize - before).rem_euclid(len as isize) as usize
                        })
                        .collect()
                })
                .collect()
        };
        let row_sources = sources(height, up, plan.patch.height());
        let col_sources = sources(width, left, plan.patch.width());
        let mut rows = row_targets.clone();
        rows.sort_unstable();
        rows.dedup();
        let mut touched_rows: Vec<std::ops::Range<usize>> = Vec::new();
        for row in rows {
            match touched_rows.last_mut() {
                Some(run) if run.end == row => run.end += 1,
                _ => touched_rows.push(row..row + 1),
            }
        }
        Some(SpectralPlan {
            centres: Centres::new(plan),
            row_targets,
            col_targets,
            row_sources,
            col_sources,
            touched_rows,
            transforms: Transforms::new(height, width),
        })
    }
}

/// How the cross terms of a periodic plan with a uniform window are
/// computed when transforms pay: per candidate centre, or once over the
/// whole torus with line corrections ([`super::torus`]).
pub(crate) enum Route {
    PerCentre(SpectralPlan),
    Torus(TorusPlan),
}

/// The transform route for `plan` that costs least, if it costs less
/// than the sliding sums of the lanes (a periodic plan with a uniform
/// window; any other gives `None`): the lanes pay `(n_r + h - 1)(n_c + w - 1)`
/// cross terms for a displacement that serves `n_r x n_c` output pixels,
/// the per-centre transforms about `H W log2(H W)` operations per centre
/// and pair of images whatever the window, and the whole-torus route one
/// such pair of transforms plus its line tables and the terms of each
/// distance ([`TorusPlan::cost`]).
pub(crate) fn choose(plan: &Plan) -> Option<Route> {
    let (lanes, per_centre) = costs(plan)?;
    let torus = TorusPlan::new(plan).map(|torus| (torus.cost(plan, TRANSFORM_COST), torus));
    match torus {
        Some((cost, torus)) if cost < per_centre.min(lanes) => Some(Route::Torus(torus)),
        _ if per_centre < lanes => SpectralPlan::new(plan).map(Route::PerCentre),
        _ => None,
    }
}

/// The cost per training image of the lanes and of the per-centre
/// transforms, in lane cross terms, for a periodic plan with a uniform
/// window.
fn costs(plan: &Plan) -> Option<(f64, f64)> {
    if plan.boundary != Boundary::Periodic || !plan.patch.is_uniform() {
        return None;
    }
    let (h, w) = (plan.patch.height(), plan.patch.width());
    let shape = plan.shape;
    // The lanes' displacements, joined where they wrap around the query.
    let spans = |axis: &AxisPlan, len: usize, side: usize| -> f64 {
        joined_shifts(&axis.shifts, len, side, true)
            .iter()
            .map(|s| (s.span() + side - 1) as f64)
            .sum()
    };
    let lane_terms = spans(&plan.rows, shape.height, h) * spans(&plan.cols, shape.width, w);
    let centres = Centres::new(plan).list.len() as f64;
    let positions = shape.positions() as f64;
    let transform_terms =
        centres * positions * positions.log2() * shape.channels as f64 * TRANSFORM_COST;
    Some((lane_terms, transform_terms))
}

/// A bound on the rounding of `C(x, y)` computed by either transform
/// route: `6 e (|q|_1 |K|_2 + |K|_1 |q|_2)` with `e = 8 eps (log2 H +
/// log2 W + 4)`, a generous multiple of the classical bound `eps log2 n` on
/// the relative 2-norm error of a fast Fourier transform of `n` values, and
/// `K` the turned windows (or, for [`super::torus`], whole images) of two
/// images packed into one transform, from the largest magnitudes of query
/// and scaled training values per channel; plus, for the line tables of
/// [`super::torus`], `2 (H + W) eps` times the largest sum of products of
/// a distance's terms, `(H W + H + W) sum_c |q_c| |a p_c|`.
pub(crate) fn cross_term_error(plan: &Plan, largest_query: &[f64], largest_scaled: &[f64]) -> f64 {
    let shape = plan.shape;
    let positions = shape.positions() as f64;
    let window = ((plan.patch.height() * plan.patch.width()) as f64).max(positions);
    let q1: f64 = largest_query.iter().map(|q| q * positions).sum();
    let q2: f64 = largest_query
        .iter()
        .map(|q| q * q * positions)
        .sum::<f64>()
        .sqrt();
    let k1: f64 = largest_scaled.iter().map(|p| 2.0 * p * window).sum();
    let k2: f64 = largest_scaled
        .iter()
        .map(|p| 2.0 * p * p * window)
        .sum::<f64>()
        .sqrt();
    let levels = (shape.height as f64).log2() + (shape.width as f64).log2() + 4.0;
    let (height, width) = (shape.height as f64, shape.width as f64);
    let products: f64 = largest_query
        .iter()
        .zip(largest_scaled)
        .map(|(q, p)| q * p)
        .sum::<f64>()
        * (positions + height + width);
    6.0 * 8.0 * f64::EPSILON * levels * (q1 * k2 + k1 * q2)
        + 2.0 * (height + width) * f64::EPSILON * products
}

/// Everything a worker needs that is shared by all training images.
pub(crate) struct SpectralJob<'a> {
    pub plan: &'a Plan,
    pub spectral: &'a SpectralPlan,
    pub signal: f64,
    pub beta: f64,
    /// The instruction set the kernels run on (see [`Isa`]).
    pub isa: Isa,
}

/// Buffers of one worker.
pub(crate) struct SpectralScratch {
    /// Per channel, the transform of the query (transposed: `W x H`).
    query: Vec<Vec<C64>>,
    /// `Q(x)`, the squared norm of the query window at every output pixel.
    query_norms: Vec<f64>,
    group: Group,
    /// One image-sized plane and its transpose.
    plane: Vec<C64>,
    transposed: Vec<C64>,
    product: Vec<C64>,
    fft_scratch: Vec<C64>,
    distances: Vec<WideLanes>,
    state: LaneState,
}

impl GroupScratch for SpectralScratch {
    fn parts(&mut self) -> (&Group, &[WideLanes], &mut LaneState) {
        (&self.group, &self.distances, &mut self.state)
    }
    fn group(&mut self) -> &mut Group {
        &mut self.group
    }
}

impl SpectralJob<'_> {
    pub fn scratch(&self, query: &[f32]) -> SpectralScratch {
        let plan = self.plan;
        let shape = plan.shape;
        let (height, width) = (shape.height, shape.width);
        let transforms = &self.spectral.transforms;
        let mut fft_scratch = transforms.scratch();
        let query_spectra = transforms.query_spectra(query, &mut fft_scratch);
        let padded_query = plan.padded(query);
        SpectralScratch {
            query: query_spectra,
            query_norms: fast::query_window_norms(plan, &padded_query),
            group: Group::new(),
            plane: vec![C64::default(); height * width],
            transposed: vec![C64::default(); height * width],
            product: vec![C64::default(); height * width],
            fft_scratch,
            distances: vec![[0.0; LANES]; height * width],
            state: LaneState::new(shape.positions(), shape.channels),
        }
    }

    /// Adds the candidates of every image in `images` to `posterior`.
    pub fn run<'i>(
        &self,
        images: impl Iterator<Item = (usize, &'i [f32])>,
        scratch: &mut SpectralScratch,
        posterior: &mut PartialPosterior,
    ) {
        let settings = (
            self.signal,
            self.beta,
            self.spectral.centres.fold_every,
            true,
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
    fn flush(&self, scratch: &mut SpectralScratch, posterior: &mut PartialPosterior) {
        let shape = self.plan.shape;
        let spectral = self.spectral;
        let filled = scratch.group.filled;
        // Lanes without an image are no candidate anywhere.
        for d in scratch.distances.iter_mut() {
            d[filled..].fill(NOT_A_CANDIDATE);
        }
        spectral.centres.add_each(
            (shape, self.beta, self.isa),
            scratch,
            posterior,
            |scratch, centre| {
                for pair in 0..filled.div_ceil(2) {
                    self.cross_terms(scratch, centre, [2 * pair, 2 * pair + 1]);
                }
            },
        );
    }

    /// Writes into `scratch.distances` the distances of lanes `lanes` (the
    /// second may be past the group's images) to every output pixel for
    /// `centre`.
    fn cross_terms(&self, scratch: &mut SpectralScratch, centre: &Centre, lanes: [usize; 2]) {
        let plan = self.plan;
        let shape = plan.shape;
        let (height, width) = (shape.height, shape.width);
        let plane_len = height * width;
        let spectral = self.spectral;
        let SpectralScratch {
            query,
            query_norms,
            group,
            plane,
            transposed,
            product,
            fft_scratch,
            distances,
            ..
        } = scratch;
        let scaled = &group.scaled;
        let second = lanes[1] < group.filled;
        let mut norms = [0.0; 2];
        for (channel, query) in query.iter().enumerate() {
            plane.fill(C64::default());
            let first = &scaled[lanes[0]][channel * plane_len..][..plane_len];
            // Without a second image the first fills the imaginary part
            // too: the real part of the result does not depend on it.
            let other = if second {
                &scaled[lanes[1]][channel * plane_len..][..plane_len]
            } else {
                first
            };
            let col_sources = &spectral.col_sources[centre.col];
            let rows = spectral
                .row_targets
                .iter()
                .zip(&spectral.row_sources[centre.row]);
            for (&target_row, &source_row) in rows {
                let first = &first[source_row * width..][..width];
                let other = &other[source_row * width..][..width];
                let out = &mut plane[target_row * width..][..width];
                for (&target_col, &source_col) in spectral.col_targets.iter().zip(col_sources) {
                    let (re, im) = (first[source_col], other[source_col]);
                    norms[0] += re * re;
                    norms[1] += im * im;
                    out[target_col] += C64::new(re, im);
                }
            }
            let transforms = &spectral.transforms;
            transforms.forward(plane, &spectral.touched_rows, transposed, fft_scratch);
            multiply(product, transposed, query, channel == 0);
        }
        spectral.transforms.inverse(product, plane, fft_scratch);
        let [norm_first, norm_second] = norms;
        // d = Q + A - 2 C, with the transforms' factor H W taken out of C.
        let scale = 2.0 / shape.positions() as f64;
        for ((d, c), &q) in distances
            .iter_mut()
            .zip(plane.iter())
            .zip(query_norms.iter())
        {
            d[lanes[0]] = q + norm_first - scale * c.re;
            if second {
                d[lanes[1]] = q + norm_second - scale * c.im;
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::equivariance::{Equivariance, PeriodicFull, PeriodicInterior, ZeroPadded};
    use crate::image::{Image, Shape};
    use crate::locality::{Locality, Patch, SquarePatch};
    use crate::machine::Machine;
    use crate::machine::fast::FOLD_TERMS;
    use crate::schedule::LegacyCosine;
    use crate::score::ScoreFunction;
    use crate::training::TrainingSet;

    pub(in crate::machine) fn plan(
        shape: Shape,
        patch: &Patch,
        equivariance: &dyn Equivariance,
    ) -> Plan {
        Plan::new(
            shape,
            &crate::locality::Window::Patch(patch.clone()),
            equivariance,
        )
        .unwrap()
    }

    fn square(side: usize) -> Patch {
        let r = side / 2;
        Patch::offsets(r, r, r, r)
    }

    #[test]
    fn transforms_serve_large_windows_whose_query_wraps() {
        let mnist = Shape::new(1, 28, 28).unwrap();
        let route = |side: usize, equivariance: &dyn Equivariance| {
            let plan = plan(mnist, &square(side), equivariance);
            match choose(&plan) {
                None => "lanes",
                Some(Route::PerCentre(_)) => "per centre",
                Some(Route::Torus(_)) => "torus",
            }
        };
        assert_eq!(route(27, &PeriodicInterior), "torus");
        assert_eq!(route(25, &PeriodicInterior), "torus");
        assert_eq!(route(23, &PeriodicInterior), "lanes");
        assert_eq!(route(21, &PeriodicInterior), "lanes");
        assert_eq!(route(7, &PeriodicInterior), "lanes");
        assert_eq!(route(27, &ZeroPadded), "lanes");
        // Windows larger than the image: only the per-centre transforms
        // add up offsets that meet modulo the image.
        let tiny = Shape::new(1, 3, 4).unwrap();
        let plan = plan(tiny, &square(9), &PeriodicFull);
        assert!(matches!(choose(&plan), Some(Route::PerCentre(_))));
    }
    /// Seeded values in `[-1, 1)`.
    pub(in crate::machine) fn values(count: usize, seed: u64) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..count)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 11) as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    /// The `f32` machine takes the transforms (checked) and agrees with the
    /// `f64` machine, whose kernel sums distances in the pixel domain.
    /// Returns whether the whole-torus route served every time.
    fn agrees<E, L>(shape: Shape, images: usize, locality: L, equivariance: E, seed: u64) -> bool
    where
        E: Equivariance + Clone + 'static,
        L: Locality + Clone + 'static,
    {
        let pixels = values(images * shape.len(), seed);
        let wide = TrainingSet::new(shape, pixels.clone(), None).unwrap();
        let narrow_pixels: Vec<f32> = pixels.iter().map(|&v| v as f32).collect();
        let narrow = TrainingSet::new(shape, narrow_pixels, None).unwrap();
        let exact =
            Machine::new(wide, LegacyCosine, locality.clone(), equivariance.clone()).unwrap();
        let fast =
            Machine::new(narrow, LegacyCosine, locality.clone(), equivariance.clone()).unwrap();
        let mut torus = true;
        for (i, t) in [0.2, 0.5, 0.9].into_iter().enumerate() {
            let crate::locality::Window::Patch(patch) = locality.window(t) else {
                panic!("a patch locality")
            };
            let plan = plan(shape, &patch, &equivariance);
            let route = choose(&plan).expect("the transforms are chosen");
            torus &= matches!(route, Route::Torus(_));
            let query: Vec<f64> = values(shape.len(), seed + 100 + i as u64);
            let x64 = Image::from_vec(shape, query.clone()).unwrap();
            let x32 = Image::from_vec(shape, query.iter().map(|&v| v as f32).collect()).unwrap();
            let want = exact.x0_hat(&x64, t, None).unwrap();
            let got = fast.x0_hat(&x32, t, None).unwrap();
            for (g, w) in got.as_slice().iter().zip(want.as_slice()) {
                assert!(
                    (*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                    "{shape} t={t}: {g} against {w}"
                );
            }
        }
        torus
    }

    /// Folding the lanes after every centre (as images with more than
    /// [`FOLD_TERMS`] centres per pixel do) or after every group gives the
    /// same posterior as folding once.
    #[test]
    fn folds_within_a_group_change_nothing() {
        let shape = Shape::new(1, 8, 8).unwrap();
        let plan = plan(shape, &square(7), &PeriodicInterior);
        let images: Vec<f32> = values(20 * 64, 7).iter().map(|&v| v as f32).collect();
        let query: Vec<f32> = values(64, 8).iter().map(|&v| v as f32).collect();
        let evaluate = |fold_every: usize, fold_centres: Option<usize>| {
            let mut spectral = SpectralPlan::new(&plan).unwrap();
            spectral.centres.fold_every = fold_every;
            spectral.centres.fold_centres = fold_centres;
            let job = SpectralJob {
                plan: &plan,
                spectral: &spectral,
                signal: 0.8,
                beta: 3.0,
                isa: Isa::detected(),
            };
            let mut scratch = job.scratch(&query);
            let mut posterior = PartialPosterior::new(shape, 3.0);
            job.run(
                images.chunks_exact(64).enumerate(),
                &mut scratch,
                &mut posterior,
            );
            posterior.to_image::<f64>().unwrap()
        };
        let once = evaluate(100, None);
        assert_eq!(
            SpectralPlan::new(&plan).unwrap().centres.fold_every,
            FOLD_TERMS / 4
        );
        for (every, centres) in [(1, None), (1, Some(1)), (2, Some(3))] {
            let folded = evaluate(every, centres);
            for (a, b) in folded.as_slice().iter().zip(once.as_slice()) {
                assert!(
                    (a - b).abs() <= 1e-6,
                    "{every} {centres:?}: {a} against {b}"
                );
            }
        }
    }

    #[test]
    fn transforms_agree_with_the_f64_kernel() {
        let routes = [
            // A window one pixel short of the image (4 centres), with and
            // without a partial last group of eight images.
            agrees(
                Shape::new(1, 8, 8).unwrap(),
                21,
                SquarePatch::new(7).unwrap(),
                PeriodicInterior,
                1,
            ),
            agrees(
                Shape::new(1, 8, 8).unwrap(),
                3,
                SquarePatch::new(7).unwrap(),
                PeriodicInterior,
                2,
            ),
            // Rectangular images of several channels (sizes 13 and 17 are
            // prime).
            agrees(
                Shape::new(2, 13, 17).unwrap(),
                10,
                Patch::offsets(6, 5, 8, 7),
                PeriodicInterior,
                3,
            ),
            agrees(
                Shape::new(2, 13, 13).unwrap(),
                9,
                SquarePatch::new(13).unwrap(),
                PeriodicInterior,
                4,
            ),
            // An asymmetric window.
            agrees(
                Shape::new(1, 9, 10).unwrap(),
                17,
                Patch::offsets(5, 2, 3, 5),
                PeriodicInterior,
                5,
            ),
            // Windows that wrap around the image more than once.
            agrees(
                Shape::new(1, 3, 4).unwrap(),
                12,
                SquarePatch::new(9).unwrap(),
                PeriodicFull,
                6,
            ),
        ];
        // Both routes served: the whole torus where windows are at most a
        // few lines short of the image, the per-centre transforms where
        // they are larger than it.
        assert!(routes.contains(&true) && routes.contains(&false));
    }
}
