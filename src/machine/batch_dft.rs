//! Inverse discrete Fourier transforms of many sequences at once, eight
//! per vector operation.
//!
//! The sequences are the columns of a plane held as its real and its
//! imaginary parts, `n` rows of `stride` values each (`stride` a multiple
//! of eight): sequence `b` has its element `j` at `j * stride + b`. Each
//! is transformed as
//!
//! ```text
//! y(k) = sum_j x(j) e^(+2 pi i j k / n)
//! ```
//!
//! unnormalised, as `rustfft`'s inverse transforms. The transform is a
//! Stockham (self-sorting) mixed-radix one: `n = r_1 r_2 ... r_s` with
//! radices 4, 2 and the odd primes up to [`MAX_RADIX`]; each radix is one
//! pass over the plane, reading one pair of buffers and writing the
//! other. A pass at radix `r`, after radices whose product is `s`, takes
//! for each `j < n / r` the elements `x(j + m n / r)`, `m < r`, turns
//! element `m` by `e^(+2 pi i m (j mod s) / (s r))`, transforms the `r`
//! of them and writes output `k` to `x'((j div s) s r + j mod s + k s)`.
//! Every vector operation serves eight sequences with one twiddle factor,
//! so no lanes are shuffled. The odd radices pair `x(m)` with `x(r - m)`:
//!
//! ```text
//! y(k), y(r - k) = x(0) + sum_m cos(2 pi m k / r) (x(m) + x(r - m))
//!                  +- i sum_m sin(2 pi m k / r) (x(m) - x(r - m))
//! ```
//!
//! (`m, k = 1 .. (r - 1) / 2`). The rounding is that of a mixed-radix
//! transform with exact twiddle factors, as for `rustfft`'s.

use super::fast::{LANES, Portable, Vector, Wide};
use super::simd::Isa;

/// The largest radix: lengths with a prime factor above it are not
/// offered.
pub(crate) const MAX_RADIX: usize = 7;

/// `len` rounded up to a whole number of vectors of eight.
pub(crate) fn padded(len: usize) -> usize {
    len.next_multiple_of(LANES)
}

/// The plan of one length.
pub(crate) struct BatchInverse {
    len: usize,
    stages: Vec<Stage>,
}

/// One pass: its radix, the product of the radices before it, and its
/// factors.
struct Stage {
    radix: usize,
    span: usize,
    /// `(cos, sin)` of `2 pi t m / (span radix)` at `t * (radix - 1) + m - 1`
    /// for `t < span` and `1 <= m < radix`.
    twiddles: Vec<(f64, f64)>,
    /// For odd radices, `(cos, sin)` of `2 pi m k / radix` at
    /// `(m - 1) * radix + k - 1` for `1 <= m < radix` and `1 <= k <= radix`
    /// (the butterfly reads `m, k <= (radix - 1) / 2`).
    rotations: Vec<(f64, f64)>,
}

impl BatchInverse {
    /// The plan for sequences of `len` elements, if every prime factor of
    /// `len` is at most [`MAX_RADIX`] (and `len > 0`).
    pub fn new(len: usize) -> Option<Self> {
        if len == 0 {
            return None;
        }
        let mut radices = Vec::new();
        let mut rest = len;
        while rest.is_multiple_of(4) {
            radices.push(4);
            rest /= 4;
        }
        for prime in (2..=MAX_RADIX).filter(|&p| (2..p).all(|d| !p.is_multiple_of(d))) {
            while rest.is_multiple_of(prime) {
                radices.push(prime);
                rest /= prime;
            }
        }
        if rest != 1 {
            return None;
        }
        let angle = |num: usize, den: usize| {
            let theta = 2.0 * std::f64::consts::PI * num as f64 / den as f64;
            (theta.cos(), theta.sin())
        };
        let mut span = 1;
        let mut stages = Vec::with_capacity(radices.len());
        for radix in radices {
            let twiddles = (0..span)
                .flat_map(|t| (1..radix).map(move |m| (t * m, span * radix)))
                .map(|(num, den)| angle(num, den))
                .collect();
            let rotations = if radix % 2 == 1 {
                (1..radix)
                    .flat_map(|m| (1..=radix).map(move |k| (m * k, radix)))
                    .map(|(num, den)| angle(num % den, den))
                    .collect()
            } else {
                Vec::new()
            };
            stages.push(Stage {
                radix,
                span,
                twiddles,
                rotations,
            });
            span *= radix;
        }
        Some(BatchInverse { len, stages })
    }

    /// Transforms the `stride` sequences of `data` (real and imaginary
    /// parts, `len x stride` values each), using `scratch` (as large).
    /// `stride` must be a multiple of eight.
    pub fn run(
        &self,
        isa: Isa,
        data: (&mut [f64], &mut [f64]),
        scratch: (&mut [f64], &mut [f64]),
        stride: usize,
    ) {
        debug_assert_eq!(stride % LANES, 0);
        match isa {
            // SAFETY: `isa` is a level the CPU supports (see
            // `Isa::detected`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::run_avx512(self, data, scratch, stride) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::run_avx2(self, data, scratch, stride) },
            _ => run_with::<Portable>(self, data, scratch, stride),
        }
    }
}

/// The inverse transform of an `H x W` plane from its transposed spectrum,
/// by [`BatchInverse`] along both axes.
pub(crate) struct PlaneInverse {
    height: usize,
    width: usize,
    along_cols: BatchInverse,
    along_rows: BatchInverse,
}

impl PlaneInverse {
    /// The plan for `height x width` planes, if both sides have no prime
    /// factor above [`MAX_RADIX`].
    pub fn new(height: usize, width: usize) -> Option<Self> {
        Some(PlaneInverse {
            height,
            width,
            along_cols: BatchInverse::new(width)?,
            along_rows: BatchInverse::new(height)?,
        })
    }

    /// The row stride of the spectrum: `H` rounded up to eight.
    pub fn spectrum_stride(&self) -> usize {
        padded(self.height)
    }

    /// The row stride of the plane: `W` rounded up to eight.
    pub fn plane_stride(&self) -> usize {
        padded(self.width)
    }

    /// Values in each buffer of the scratch.
    pub fn scratch_len(&self) -> usize {
        (self.width * self.spectrum_stride()).max(self.height * self.plane_stride())
    }

    /// Writes into `plane` (`H` rows of [`PlaneInverse::plane_stride`]
    /// values, real and imaginary parts) `H W` times the inverse transform
    /// of `spectrum` (`W` rows, one per column frequency, of
    /// [`PlaneInverse::spectrum_stride`] values), which it overwrites. The
    /// values past `H` in the spectrum's rows and past `W` in the plane's
    /// are transformed as sequences of their own; zeros stay zeros.
    pub fn run(
        &self,
        isa: Isa,
        spectrum: (&mut [f64], &mut [f64]),
        plane: (&mut [f64], &mut [f64]),
        scratch: (&mut [f64], &mut [f64]),
    ) {
        let (height, width) = (self.height, self.width);
        let (from, to) = (self.spectrum_stride(), self.plane_stride());
        let (spectrum_re, spectrum_im) = spectrum;
        let (plane_re, plane_im) = plane;
        let (scratch_re, scratch_im) = scratch;
        self.along_cols.run(
            isa,
            (&mut *spectrum_re, &mut *spectrum_im),
            (&mut *scratch_re, &mut *scratch_im),
            from,
        );
        for (spectrum, plane) in [
            (&*spectrum_re, &mut *plane_re),
            (&*spectrum_im, &mut *plane_im),
        ] {
            for (c, row) in spectrum.chunks_exact(from).take(width).enumerate() {
                for (r, &value) in row[..height].iter().enumerate() {
                    plane[r * to + c] = value;
                }
            }
        }
        self.along_rows
            .run(isa, (plane_re, plane_im), (scratch_re, scratch_im), to);
    }
}

/// The body of [`BatchInverse::run`].
#[inline(always)]
fn run_with<V: Vector>(
    plan: &BatchInverse,
    (re, im): (&mut [f64], &mut [f64]),
    (other_re, other_im): (&mut [f64], &mut [f64]),
    stride: usize,
) {
    let size = plan.len * stride;
    let (re, im) = (&mut re[..size], &mut im[..size]);
    let (other_re, other_im) = (&mut other_re[..size], &mut other_im[..size]);
    // Passes alternate between the buffers; `in_data` tells where the
    // values are before each.
    let mut in_data = true;
    for stage in &plan.stages {
        let (from, to) = if in_data {
            ((&*re, &*im), (&mut *other_re, &mut *other_im))
        } else {
            ((&*other_re, &*other_im), (&mut *re, &mut *im))
        };
        match stage.radix {
            2 => pass::<V, 2>(plan.len, stage, stride, from, to),
            3 => pass::<V, 3>(plan.len, stage, stride, from, to),
            4 => pass::<V, 4>(plan.len, stage, stride, from, to),
            5 => pass::<V, 5>(plan.len, stage, stride, from, to),
            _ => pass::<V, 7>(plan.len, stage, stride, from, to),
        }
        in_data = !in_data;
    }
    if !in_data {
        re.copy_from_slice(other_re);
        im.copy_from_slice(other_im);
    }
}

/// One pass at radix `R` (see the module's description).
#[inline(always)]
fn pass<V: Vector, const R: usize>(
    len: usize,
    stage: &Stage,
    stride: usize,
    (from_re, from_im): (&[f64], &[f64]),
    (to_re, to_im): (&mut [f64], &mut [f64]),
) {
    let span = stage.span;
    let part = len / R;
    let zero = V::Wide::splat(0.0);
    for j in 0..part {
        let t = j % span;
        let out = (j / span) * span * R + t;
        let twiddles = &stage.twiddles[t * (R - 1)..][..R - 1];
        for b in (0..stride).step_by(LANES) {
            let mut x_re = [zero; R];
            let mut x_im = [zero; R];
            for m in 0..R {
                let at = (j + m * part) * stride + b;
                x_re[m] = V::Wide::load_slice(&from_re[at..]);
                x_im[m] = V::Wide::load_slice(&from_im[at..]);
            }
            if t > 0 {
                for m in 1..R {
                    let (c, s) = twiddles[m - 1];
                    let (a, b) = (x_re[m], x_im[m]);
                    x_re[m] = a.mul_add(V::Wide::splat(c), b.mul(V::Wide::splat(-s)));
                    x_im[m] = a.mul_add(V::Wide::splat(s), b.mul(V::Wide::splat(c)));
                }
            }
            let (y_re, y_im) = butterfly::<V, R>(x_re, x_im, &stage.rotations);
            for k in 0..R {
                let at = (out + k * span) * stride + b;
                y_re[k].store_slice(&mut to_re[at..]);
                y_im[k].store_slice(&mut to_im[at..]);
            }
        }
    }
}

type Parts<V, const R: usize> = ([<V as Vector>::Wide; R], [<V as Vector>::Wide; R]);

/// The inverse transform of `R` elements.
#[inline(always)]
fn butterfly<V: Vector, const R: usize>(
    x_re: [V::Wide; R],
    x_im: [V::Wide; R],
    rotations: &[(f64, f64)],
) -> Parts<V, R> {
    let mut y_re = x_re;
    let mut y_im = x_im;
    match R {
        2 => {
            y_re[0] = x_re[0].add(x_re[1]);
            y_im[0] = x_im[0].add(x_im[1]);
            y_re[1] = x_re[0].sub(x_re[1]);
            y_im[1] = x_im[0].sub(x_im[1]);
        }
        4 => {
            // (x0 + x2) +- (x1 + x3) and (x0 - x2) +- i (x1 - x3).
            let (s_re, s_im) = (x_re[0].add(x_re[2]), x_im[0].add(x_im[2]));
            let (d_re, d_im) = (x_re[0].sub(x_re[2]), x_im[0].sub(x_im[2]));
            let (t_re, t_im) = (x_re[1].add(x_re[3]), x_im[1].add(x_im[3]));
            let (u_re, u_im) = (x_re[1].sub(x_re[3]), x_im[1].sub(x_im[3]));
            y_re[0] = s_re.add(t_re);
            y_im[0] = s_im.add(t_im);
            y_re[2] = s_re.sub(t_re);
            y_im[2] = s_im.sub(t_im);
            y_re[1] = d_re.sub(u_im);
            y_im[1] = d_im.add(u_re);
            y_re[3] = d_re.add(u_im);
            y_im[3] = d_im.sub(u_re);
        }
        _ => {
            let half = (R - 1) / 2;
            let mut sum_re = x_re;
            let mut sum_im = x_im;
            let mut diff_re = x_re;
            let mut diff_im = x_im;
            for m in 1..=half {
                sum_re[m] = x_re[m].add(x_re[R - m]);
                sum_im[m] = x_im[m].add(x_im[R - m]);
                diff_re[m] = x_re[m].sub(x_re[R - m]);
                diff_im[m] = x_im[m].sub(x_im[R - m]);
            }
            let (mut zero_re, mut zero_im) = (x_re[0], x_im[0]);
            for m in 1..=half {
                zero_re = zero_re.add(sum_re[m]);
                zero_im = zero_im.add(sum_im[m]);
            }
            y_re[0] = zero_re;
            y_im[0] = zero_im;
            for k in 1..=half {
                let (mut a_re, mut a_im) = (x_re[0], x_im[0]);
                let (c, s) = rotations[k - 1];
                let mut b_re = diff_re[1].mul(V::Wide::splat(s));
                let mut b_im = diff_im[1].mul(V::Wide::splat(s));
                a_re = sum_re[1].mul_add(V::Wide::splat(c), a_re);
                a_im = sum_im[1].mul_add(V::Wide::splat(c), a_im);
                for m in 2..=half {
                    let (c, s) = rotations[(m - 1) * R + k - 1];
                    a_re = sum_re[m].mul_add(V::Wide::splat(c), a_re);
                    a_im = sum_im[m].mul_add(V::Wide::splat(c), a_im);
                    b_re = diff_re[m].mul_add(V::Wide::splat(s), b_re);
                    b_im = diff_im[m].mul_add(V::Wide::splat(s), b_im);
                }
                // y(k) = a + i b, y(R - k) = a - i b.
                y_re[k] = a_re.sub(b_im);
                y_im[k] = a_im.add(b_re);
                y_re[R - k] = a_re.add(b_im);
                y_im[R - k] = a_im.sub(b_re);
            }
        }
    }
    (y_re, y_im)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::*;
    use crate::machine::fast::avx2::Avx;
    use crate::machine::fast::avx512::Avx512;

    /// The arguments of [`BatchInverse::run`] after the level.
    type Planes<'a> = (&'a mut [f64], &'a mut [f64]);

    /// # Safety
    ///
    /// The CPU must support AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn run_avx2(
        plan: &BatchInverse,
        data: Planes<'_>,
        scratch: Planes<'_>,
        stride: usize,
    ) {
        run_with::<Avx>(plan, data, scratch, stride);
    }

    /// # Safety
    ///
    /// The CPU must support AVX-512F, AVX2 and FMA.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn run_avx512(
        plan: &BatchInverse,
        data: Planes<'_>,
        scratch: Planes<'_>,
        stride: usize,
    ) {
        run_with::<Avx512>(plan, data, scratch, stride);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::machine::spectral::tests::values;
    use rustfft::FftPlanner;
    use rustfft::num_complex::Complex;

    fn largest_prime_factor(mut n: usize) -> usize {
        let mut largest = 1;
        let mut p = 2;
        while n > 1 {
            while n.is_multiple_of(p) {
                largest = p;
                n /= p;
            }
            p += 1;
        }
        largest
    }

    /// Every length whose factors are at most 7 agrees with `rustfft`'s
    /// inverse transform, sequence by sequence, to a few units of
    /// rounding of the largest value, on every instruction set.
    #[test]
    fn agrees_with_rustfft() {
        let mut planner = FftPlanner::<f64>::new();
        for len in 1..=64usize {
            let Some(plan) = BatchInverse::new(len) else {
                assert!(largest_prime_factor(len) > MAX_RADIX, "{len} refused");
                continue;
            };
            assert!(largest_prime_factor(len) <= MAX_RADIX);
            let fft = planner.plan_fft_inverse(len);
            for stride in [8, 24] {
                let re = values(len * stride, len as u64);
                let im = values(len * stride, 1000 + len as u64);
                let mut expected = vec![0.0; 2 * len * stride];
                for b in 0..stride {
                    let mut column: Vec<Complex<f64>> = (0..len)
                        .map(|j| Complex::new(re[j * stride + b], im[j * stride + b]))
                        .collect();
                    fft.process(&mut column);
                    for (j, z) in column.iter().enumerate() {
                        expected[j * stride + b] = z.re;
                        expected[len * stride + j * stride + b] = z.im;
                    }
                }
                for isa in Isa::available() {
                    let (mut got_re, mut got_im) = (re.clone(), im.clone());
                    let (mut other_re, mut other_im) =
                        (vec![0.0; len * stride], vec![0.0; len * stride]);
                    plan.run(
                        isa,
                        (&mut got_re, &mut got_im),
                        (&mut other_re, &mut other_im),
                        stride,
                    );
                    let got = got_re.iter().chain(&got_im);
                    let worst = got
                        .zip(&expected)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    // Each output sums `len` values below 1 in magnitude.
                    let bound = 16.0 * len as f64 * f64::EPSILON * (len as f64).log2().max(1.0);
                    assert!(
                        worst <= bound,
                        "len {len}, stride {stride}, {isa:?}: off by {worst:e} (bound {bound:e})"
                    );
                }
            }
        }
    }

    /// The plane's inverse agrees with `rustfft`'s row-and-column one
    /// (`Transforms::inverse`) to rounding, and leaves zero padding zero.
    #[test]
    fn plane_inverse_agrees_with_the_transforms() {
        use crate::machine::fourier::{C64, Transforms};
        for (height, width) in [(28, 28), (1, 1), (4, 6), (9, 10), (16, 3), (7, 20)] {
            let plan = PlaneInverse::new(height, width).expect("small factors");
            let (rows, cols) = (plan.spectrum_stride(), plan.plane_stride());
            let re = values(width * height, 7);
            let im = values(width * height, 8);
            // The transposed spectrum, `W x H`, for `rustfft`.
            let mut spectrum: Vec<C64> =
                re.iter().zip(&im).map(|(&r, &i)| C64::new(r, i)).collect();
            let transforms = Transforms::new(height, width);
            let mut expected = vec![C64::default(); height * width];
            transforms.inverse(&mut spectrum, &mut expected, &mut transforms.scratch());
            let mut vector_levels = Vec::new();
            for isa in Isa::available() {
                let (mut spectrum_re, mut spectrum_im) =
                    (vec![0.0; width * rows], vec![0.0; width * rows]);
                for k_c in 0..width {
                    for k_r in 0..height {
                        spectrum_re[k_c * rows + k_r] = re[k_c * height + k_r];
                        spectrum_im[k_c * rows + k_r] = im[k_c * height + k_r];
                    }
                }
                let (mut plane_re, mut plane_im) =
                    (vec![0.0; height * cols], vec![0.0; height * cols]);
                let len = plan.scratch_len();
                let (mut scratch_re, mut scratch_im) = (vec![0.0; len], vec![0.0; len]);
                plan.run(
                    isa,
                    (&mut spectrum_re, &mut spectrum_im),
                    (&mut plane_re, &mut plane_im),
                    (&mut scratch_re, &mut scratch_im),
                );
                let bound = 64.0 * (height * width) as f64 * f64::EPSILON;
                for r in 0..height {
                    for c in 0..cols {
                        let got = C64::new(plane_re[r * cols + c], plane_im[r * cols + c]);
                        if c < width {
                            let want = expected[r * width + c];
                            assert!(
                                (got - want).norm() <= bound,
                                "{height}x{width} {isa:?} at ({r}, {c}): {got} against {want}"
                            );
                        } else {
                            assert_eq!(got, C64::default());
                        }
                    }
                }
                if isa != Isa::Portable {
                    vector_levels.push((plane_re, plane_im));
                }
            }
            // AVX2 and AVX-512 do the same operations lane by lane.
            for other in vector_levels.iter().skip(1) {
                assert_eq!(other, &vector_levels[0], "{height}x{width}");
            }
        }
    }

    #[test]
    fn lengths_with_large_prime_factors_are_not_offered() {
        assert!(BatchInverse::new(0).is_none());
        assert!(BatchInverse::new(11).is_none());
        assert!(BatchInverse::new(2 * 13).is_none());
        assert!(BatchInverse::new(28).is_some());
        assert!(BatchInverse::new(1).is_some());
    }
}
