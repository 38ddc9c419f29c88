//! The Fourier transforms of the training images, kept by the machine so
//! that the whole-torus route ([`super::torus`]) pays only the inverse
//! transform per evaluation.
//!
//! The transform of a real `H x W` plane `p`,
//!
//! ```text
//! P(k_r, k_c) = sum_{r, c} p(r, c) exp(-2 pi i (k_r r / H + k_c c / W))
//! ```
//!
//! is conjugate-symmetric, `P(k) = conj(P(-k))` (indices modulo the
//! image), so the columns `k_c <= W / 2` hold all of it:
//! `H (W / 2 + 1)` complex `f64` values per channel, 6,720 bytes for a
//! 28x28 image. They depend only on the training set, not on the time,
//! the window or the query, and are computed once, on the first
//! evaluation that needs them, for every image at once. A set whose
//! transforms would pass [`MAX_BYTES`] is not kept; the route then
//! transforms each image as it goes.

use std::sync::{Arc, OnceLock};

use super::fourier::{C64, Transforms};
use super::simd::Isa;
use crate::image::Shape;

/// The most the kept transforms of one machine may take: 128 MiB, 19,972
/// images of 28x28 pixels.
pub(crate) const MAX_BYTES: usize = 128 << 20;

/// The transforms of every training image, the columns `k_c <= W / 2`.
pub(crate) struct TrainingSpectra {
    height: usize,
    width: usize,
    channels: usize,
    /// `H (W / 2 + 1)` values per channel and image, stored transposed
    /// (`P(k_r, k_c)` at `k_c H + k_r`, as [`Transforms::forward`] leaves
    /// them): the real parts, then the imaginary parts.
    values: Vec<f64>,
    /// The squared norm of each image, `sum p^2` over its channels.
    norms: Vec<f64>,
}

impl TrainingSpectra {
    /// Complex values kept per channel of one image.
    fn per_channel(shape: Shape) -> usize {
        shape.height * (shape.width / 2 + 1)
    }

    /// The bytes the transforms of `count` images of `shape` take.
    pub fn bytes(shape: Shape, count: usize) -> usize {
        count
            .saturating_mul(shape.channels * Self::per_channel(shape))
            .saturating_mul(2 * std::mem::size_of::<f64>())
    }

    /// The transforms of the `count` images of `shape` stored one after
    /// the other in `images`.
    pub fn of(images: &[f32], shape: Shape, count: usize) -> Self {
        let (height, width) = (shape.height, shape.width);
        let plane_len = height * width;
        let kept = Self::per_channel(shape);
        let per_image = shape.channels * kept;
        let mut values = vec![0.0; 2 * count * per_image];
        let images = &images[..count * shape.len()];
        let norms = images
            .chunks_exact(shape.len())
            .map(|image| image.iter().map(|&v| v as f64 * v as f64).sum())
            .collect();
        let transform_images = |images: &[f32], out: &mut [f64]| {
            let transforms = Transforms::new(height, width);
            let mut scratch = transforms.scratch();
            let mut plane = vec![C64::default(); plane_len];
            let mut transposed = vec![C64::default(); plane_len];
            let channels = images.chunks_exact(plane_len);
            for (channel, out) in channels.zip(out.chunks_exact_mut(2 * kept)) {
                for (z, &v) in plane.iter_mut().zip(channel) {
                    *z = C64::new(v as f64, 0.0);
                }
                transforms.forward_whole(&mut plane, &mut transposed, &mut scratch);
                let (re, im) = out.split_at_mut(kept);
                for ((re, im), z) in re.iter_mut().zip(im).zip(&transposed) {
                    (*re, *im) = (z.re, z.im);
                }
            }
        };
        #[cfg(feature = "parallel")]
        {
            use rayon::prelude::*;
            // Blocks of images, so that each worker plans its transforms
            // once per block.
            const BLOCK: usize = 64;
            images
                .par_chunks(BLOCK * shape.len())
                .zip(values.par_chunks_mut(BLOCK * 2 * per_image))
                .for_each(|(images, out)| transform_images(images, out));
        }
        #[cfg(not(feature = "parallel"))]
        transform_images(images, &mut values);
        TrainingSpectra {
            height,
            width,
            channels: shape.channels,
            values,
            norms,
        }
    }

    /// `sum p^2` over the pixels of image `row`, every channel.
    pub fn norm(&self, row: usize) -> f64 {
        self.norms[row]
    }

    /// The kept transform of channel `channel` of image `row`.
    pub fn channel(&self, row: usize, channel: usize) -> Split<'_> {
        let kept = self.height * (self.width / 2 + 1);
        self.values[(row * self.channels + channel) * 2 * kept..][..2 * kept].split_at(kept)
    }
}

/// A transposed spectrum (or the kept half of one) as its real and its
/// imaginary parts.
pub(crate) type Split<'a> = (&'a [f64], &'a [f64]);

/// A plane to write as its real and imaginary parts.
pub(crate) type SplitMut<'a> = (&'a mut [f64], &'a mut [f64]);

/// Writes (with `overwrite`, else adds) into `product`, a transposed
/// spectrum of `H x W` values as its real and imaginary parts (`W` rows of
/// `stride >= H` values, the values past `H` untouched),
/// `(conj(P_1) + i conj(P_2)) Q`, with `P_1`,
/// `P_2` the transforms of two real images given by their kept halves and
/// `Q` the query's transform. Its inverse transform is the circular
/// correlation of the query with the first image in its real part and
/// with the second in its imaginary part: `conj(P)` is the transform of
/// the image turned around, `p(-m)`. (Without a second image, pass the
/// first again: the real part does not depend on it.)
pub(crate) fn correlate_pair(
    isa: Isa,
    product: SplitMut<'_>,
    (first, second): (Split<'_>, Split<'_>),
    query: Split<'_>,
    shape: (usize, usize, usize),
    overwrite: bool,
) {
    let pair = (first, second);
    match (isa, overwrite) {
        // SAFETY: `isa` is a level the CPU supports (see `Isa::detected`).
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, false) => unsafe {
            x86::correlate_pair_add(product, pair, query, shape)
        },
        #[cfg(target_arch = "x86_64")]
        (Isa::Avx2 | Isa::Avx512, true) => unsafe {
            x86::correlate_pair_write(product, pair, query, shape)
        },
        (_, false) => correlate_pair_with::<true>(product, pair, query, shape),
        (_, true) => correlate_pair_with::<false>(product, pair, query, shape),
    }
}

/// The body of [`correlate_pair`], adding to `product` with `ADD`. The
/// loops are over arrays of `f64`, which the compiler turns into vector
/// operations.
#[inline(always)]
fn correlate_pair_with<const ADD: bool>(
    (product_re, product_im): SplitMut<'_>,
    (first, second): (Split<'_>, Split<'_>),
    query: Split<'_>,
    (height, width, stride): (usize, usize, usize),
) {
    let half = width / 2 + 1;
    fn column(values: Split<'_>, k_c: usize, height: usize) -> Split<'_> {
        (
            &values.0[k_c * height..][..height],
            &values.1[k_c * height..][..height],
        )
    }
    for k_c in 0..width {
        let out_re = &mut product_re[k_c * stride..][..height];
        let out_im = &mut product_im[k_c * stride..][..height];
        let query = column(query, k_c, height);
        if k_c < half {
            // conj(P(k)) straight from the kept half:
            // conj(P_1) + i conj(P_2) = (re_1 + im_2) + i (re_2 - im_1).
            let (first, second) = (column(first, k_c, height), column(second, k_c, height));
            product_row::<ADD, false>(out_re, out_im, first, second, query);
        } else {
            // conj(P(k)) = P(-k), with `-k` in the kept half: column
            // `W - k_c`, row 0 for row 0 and row `H - i` for row `i`:
            // P_1(-k) + i P_2(-k) = (re_1 - im_2) + i (im_1 + re_2).
            let (first, second) = (
                column(first, width - k_c, height),
                column(second, width - k_c, height),
            );
            product_row::<ADD, true>(out_re, out_im, first, second, query);
        }
    }
}

/// One row (`k_c`) of [`correlate_pair`]: from the kept halves' column
/// `k_c` of both images, or with `MIRRORED` from column `W - k_c` read
/// backwards (row `H - i` for row `i`, row 0 for row 0). The real and
/// imaginary parts are separate arguments so that the compiler knows they
/// do not overlap, and vectorises the loop.
#[inline(always)]
fn product_row<const ADD: bool, const MIRRORED: bool>(
    out_re: &mut [f64],
    out_im: &mut [f64],
    (re_1, im_1): Split<'_>,
    (re_2, im_2): Split<'_>,
    (q_re, q_im): Split<'_>,
) {
    let height = out_re.len();
    let (out_im, re_1, im_1) = (&mut out_im[..height], &re_1[..height], &im_1[..height]);
    let (re_2, im_2, q_re, q_im) = (
        &re_2[..height],
        &im_2[..height],
        &q_re[..height],
        &q_im[..height],
    );
    if MIRRORED && height > 0 {
        let (a, b) = (re_1[0] - im_2[0], im_1[0] + re_2[0]);
        put::<ADD>(&mut out_re[0], a * q_re[0] - b * q_im[0]);
        put::<ADD>(&mut out_im[0], a * q_im[0] + b * q_re[0]);
    }
    let start = usize::from(MIRRORED);
    let (out_re, out_im) = (&mut out_re[start..], &mut out_im[start..]);
    let (q_re, q_im) = (&q_re[start..], &q_im[start..]);
    let len = out_re.len();
    for i in 0..len {
        let (a, b) = if MIRRORED {
            // Row `H - i` for row `i`.
            let m = height - start - i;
            (re_1[m] - im_2[m], im_1[m] + re_2[m])
        } else {
            (re_1[i] + im_2[i], re_2[i] - im_1[i])
        };
        put::<ADD>(&mut out_re[i], a * q_re[i] - b * q_im[i]);
        put::<ADD>(&mut out_im[i], a * q_im[i] + b * q_re[i]);
    }
}

/// Writes `value` into `out`, or with `ADD` adds it.
#[inline(always)]
fn put<const ADD: bool>(out: &mut f64, value: f64) {
    if ADD {
        *out += value;
    } else {
        *out = value;
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;

    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn correlate_pair_add(
        product: SplitMut<'_>,
        pair: (Split<'_>, Split<'_>),
        query: Split<'_>,
        shape: (usize, usize, usize),
    ) {
        correlate_pair_with::<true>(product, pair, query, shape);
    }

    /// # Safety
    ///
    /// The CPU must support AVX2.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn correlate_pair_write(
        product: SplitMut<'_>,
        pair: (Split<'_>, Split<'_>),
        query: Split<'_>,
        shape: (usize, usize, usize),
    ) {
        correlate_pair_with::<false>(product, pair, query, shape);
    }
}

/// Splits a transposed spectrum into its real and imaginary parts.
pub(crate) fn split(spectrum: &[C64]) -> (Vec<f64>, Vec<f64>) {
    spectrum.iter().map(|z| (z.re, z.im)).unzip()
}

/// The transforms of one machine's training set, computed on first use
/// and shared by its clones.
#[derive(Clone, Default)]
pub(crate) struct SpectraCache {
    /// `None` inside once the set was found too large to keep.
    slot: Arc<OnceLock<Option<Arc<TrainingSpectra>>>>,
}

impl std::fmt::Debug for SpectraCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kept = matches!(self.slot.get(), Some(Some(_)));
        write!(f, "SpectraCache {{ kept: {kept} }}")
    }
}

impl SpectraCache {
    /// A cache that never keeps the transforms.
    #[cfg(test)]
    pub fn refusing() -> Self {
        let slot = OnceLock::new();
        let _ = slot.set(None);
        SpectraCache {
            slot: Arc::new(slot),
        }
    }

    /// Whether the transforms are kept.
    #[cfg(test)]
    pub fn is_kept(&self) -> bool {
        matches!(self.slot.get(), Some(Some(_)))
    }

    /// The transforms of the `count` images in `images`, computed on the
    /// first call, or `None` if they would pass `max_bytes`.
    ///
    /// They are computed without holding the slot: the computation runs
    /// on the rayon workers, and a worker waiting for part of it may take
    /// up another evaluation of the same machine, which would wait forever
    /// for a slot held by itself. Evaluations that start together may
    /// therefore each compute the transforms; the first to finish keeps
    /// them, and the others drop theirs.
    pub fn get_or_compute(
        &self,
        images: &[f32],
        shape: Shape,
        count: usize,
        max_bytes: usize,
    ) -> Option<Arc<TrainingSpectra>> {
        if let Some(kept) = self.slot.get() {
            return kept.clone();
        }
        let computed = (TrainingSpectra::bytes(shape, count) <= max_bytes)
            .then(|| Arc::new(TrainingSpectra::of(images, shape, count)));
        // Another evaluation may have kept its own in the meantime.
        let _ = self.slot.set(computed);
        self.slot.get().cloned().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The direct transform of one channel, `P(k_r, k_c)` at `k_r W + k_c`.
    fn direct(plane: &[f64], height: usize, width: usize) -> Vec<C64> {
        let mut out = vec![C64::default(); height * width];
        for k_r in 0..height {
            for k_c in 0..width {
                let mut sum = C64::default();
                for r in 0..height {
                    for c in 0..width {
                        let angle = -2.0
                            * std::f64::consts::PI
                            * ((k_r * r) as f64 / height as f64 + (k_c * c) as f64 / width as f64);
                        sum += C64::new(angle.cos(), angle.sin()) * plane[r * width + c];
                    }
                }
                out[k_r * width + k_c] = sum;
            }
        }
        out
    }

    fn pixels(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    #[test]
    fn kept_halves_are_the_transforms() {
        for (height, width) in [(5, 7), (6, 4), (1, 9), (8, 1)] {
            let shape = Shape::new(2, height, width).unwrap();
            let images = pixels(3 * shape.len(), 7);
            let spectra = TrainingSpectra::of(&images, shape, 3);
            for row in 0..3 {
                for channel in 0..2 {
                    let at = (row * 2 + channel) * height * width;
                    let plane: Vec<f64> = images[at..at + height * width]
                        .iter()
                        .map(|&v| v as f64)
                        .collect();
                    let expected = direct(&plane, height, width);
                    let (re, im) = spectra.channel(row, channel);
                    for k_c in 0..width / 2 + 1 {
                        for k_r in 0..height {
                            let at = k_c * height + k_r;
                            let got = C64::new(re[at], im[at]);
                            let want = expected[k_r * width + k_c];
                            assert!((got - want).norm() < 1e-12, "{height}x{width} {k_r},{k_c}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn pair_product_correlates_both_images() {
        for (height, width) in [(5, 7), (6, 4), (4, 4), (1, 3), (3, 1)] {
            let shape = Shape::new(1, height, width).unwrap();
            let plane_len = height * width;
            let images = pixels(2 * plane_len, 3);
            let query = pixels(plane_len, 11);
            let spectra = TrainingSpectra::of(&images, shape, 2);
            let query_spectrum = TrainingSpectra::of(&query, shape, 1);
            // The query's whole transform, transposed.
            let transforms = Transforms::new(height, width);
            let mut plane: Vec<C64> = query.iter().map(|&v| C64::new(v as f64, 0.0)).collect();
            let mut full = vec![C64::default(); plane_len];
            transforms.forward_whole(&mut plane, &mut full, &mut transforms.scratch());
            let (re, im) = split(&full);
            assert_eq!(
                query_spectrum.channel(0, 0),
                (
                    &re[..re.len() / width * (width / 2 + 1)],
                    &im[..im.len() / width * (width / 2 + 1)]
                )
            );
            for (second, isa) in [true, false]
                .into_iter()
                .flat_map(|s| Isa::available().into_iter().map(move |i| (s, i)))
            {
                let first = spectra.channel(0, 0);
                let halves = (first, if second { spectra.channel(1, 0) } else { first });
                // Written, then added to a written product of the same,
                // rows padded to `stride` (the padding untouched).
                let stride = height + 3;
                let (mut product_re, mut product_im) =
                    (vec![9.0; width * stride], vec![9.0; width * stride]);
                let shape = (height, width, stride);
                let spectrum = (&re[..], &im[..]);
                let product = (&mut product_re[..], &mut product_im[..]);
                correlate_pair(isa, product, halves, spectrum, shape, true);
                let once = (product_re.clone(), product_im.clone());
                let product = (&mut product_re[..], &mut product_im[..]);
                correlate_pair(isa, product, halves, spectrum, shape, false);
                let mut product = vec![C64::default(); plane_len];
                for k_c in 0..width {
                    for i in 0..stride {
                        let at = k_c * stride + i;
                        let (twice, once) = (
                            C64::new(product_re[at], product_im[at]),
                            C64::new(once.0[at], once.1[at]),
                        );
                        if i < height {
                            assert_eq!(twice, once * 2.0);
                            product[k_c * height + i] = once;
                        } else {
                            assert_eq!((twice, once), (C64::new(9.0, 9.0), C64::new(9.0, 9.0)));
                        }
                    }
                }
                let mut out = vec![C64::default(); plane_len];
                transforms.inverse(&mut product, &mut out, &mut transforms.scratch());
                for vr in 0..height {
                    for vc in 0..width {
                        // sum_z q(z + v) p(z)
                        let correlation = |image: usize| -> f64 {
                            let mut sum = 0.0;
                            for r in 0..height {
                                for c in 0..width {
                                    let q = query[((r + vr) % height) * width + (c + vc) % width];
                                    sum +=
                                        q as f64 * images[image * plane_len + r * width + c] as f64;
                                }
                            }
                            sum
                        };
                        let got = out[vr * width + vc] / plane_len as f64;
                        assert!((got.re - correlation(0)).abs() < 1e-12);
                        if second {
                            assert!((got.im - correlation(1)).abs() < 1e-12, "{height}x{width}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn sets_past_the_bound_are_not_kept() {
        let shape = Shape::new(1, 4, 4).unwrap();
        let images = pixels(3 * shape.len(), 1);
        let bytes = TrainingSpectra::bytes(shape, 3);
        assert_eq!(bytes, 3 * 4 * 3 * 2 * 8);
        let cache = SpectraCache::default();
        assert!(cache.get_or_compute(&images, shape, 3, bytes - 1).is_none());
        // The answer is remembered.
        assert!(
            cache
                .get_or_compute(&images, shape, 3, usize::MAX)
                .is_none()
        );
        let cache = SpectraCache::default();
        let kept = cache.get_or_compute(&images, shape, 3, bytes).unwrap();
        let again = cache
            .clone()
            .get_or_compute(&images, shape, 3, bytes)
            .unwrap();
        assert!(Arc::ptr_eq(&kept, &again));
    }
}
