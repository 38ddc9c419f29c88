//! Whole-image distances: the ideal score, where every output pixel shares
//! one softmax over training images.
//!
//! `d_mu = ||phi_t - a phi^mu||^2`, `w_mu = exp(-beta (d_mu - d_min))`,
//! `x0hat = sum_mu w_mu phi^mu / sum_mu w_mu`: one exponential per
//! training image instead of one per image and pixel.

use super::posterior::{PartialPosterior, relative_weight};
use super::simd::Isa;
use crate::image::Shape;
use crate::real::Real;
use crate::training::TrainingSet;

/// The part of the ideal-score softmax over the training images `rows`.
pub(crate) fn whole_image<T: Real>(
    training: &TrainingSet<T>,
    rows: &[usize],
    query: &[T],
    signal: f64,
    beta: f64,
) -> PartialPosterior {
    let shape: Shape = training.shape();
    let distances: Vec<f64> = rows
        .iter()
        .map(|&row| squared_distance(training.image(row), query, signal))
        .collect();
    let minimum = distances.iter().copied().fold(f64::INFINITY, f64::min);

    let mut normaliser = 0.0;
    let mut sums = vec![0.0; shape.len()];
    for (&row, &distance) in rows.iter().zip(&distances) {
        let weight = relative_weight(distance, minimum, beta);
        if weight == 0.0 {
            continue;
        }
        normaliser += weight;
        add_weighted(&mut sums, training.image(row), weight);
    }

    let mut posterior = PartialPosterior::new(shape, beta);
    let positions = shape.positions();
    for position in 0..positions {
        posterior.merge_position(position, minimum, normaliser, |c| {
            sums[c * positions + position]
        });
    }
    posterior
}

/// Partial sums per lane, so that the sum vectorises.
const ACCUMULATORS: usize = 8;

/// `||q - a p||^2` in `f64`, with AVX2 and FMA when the CPU has them (and
/// `SCORE_MACHINES_SIMD` allows them, see [`Isa`]).
fn squared_distance<T: Real>(image: &[T], query: &[T], signal: f64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::detected() >= Isa::Avx2 {
            // SAFETY: `Isa::detected` gives AVX2 or more only where the CPU
            // supports AVX2 and FMA.
            return unsafe { squared_distance_avx2(image, query, signal) };
        }
    }
    squared_distance_portable(image, query, signal)
}

/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn squared_distance_avx2<T: Real>(image: &[T], query: &[T], signal: f64) -> f64 {
    squared_distance_portable(image, query, signal)
}

#[inline(always)]
fn squared_distance_portable<T: Real>(image: &[T], query: &[T], signal: f64) -> f64 {
    let mut partial = [0.0f64; ACCUMULATORS];
    let mut images = image.chunks_exact(ACCUMULATORS);
    let mut queries = query.chunks_exact(ACCUMULATORS);
    for (p, q) in (&mut images).zip(&mut queries) {
        for lane in 0..ACCUMULATORS {
            let r = q[lane].widen() - signal * p[lane].widen();
            partial[lane] += r * r;
        }
    }
    let tail: f64 = images
        .remainder()
        .iter()
        .zip(queries.remainder())
        .map(|(p, q)| {
            let r = q.widen() - signal * p.widen();
            r * r
        })
        .sum();
    partial.iter().sum::<f64>() + tail
}

/// `sums += weight * image`, with AVX2 and FMA when the CPU has them (and
/// `SCORE_MACHINES_SIMD` allows them).
fn add_weighted<T: Real>(sums: &mut [f64], image: &[T], weight: f64) {
    #[cfg(target_arch = "x86_64")]
    {
        if Isa::detected() >= Isa::Avx2 {
            // SAFETY: `Isa::detected` gives AVX2 or more only where the CPU
            // supports AVX2 and FMA.
            unsafe { add_weighted_avx2(sums, image, weight) };
            return;
        }
    }
    add_weighted_portable(sums, image, weight);
}

/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn add_weighted_avx2<T: Real>(sums: &mut [f64], image: &[T], weight: f64) {
    add_weighted_portable(sums, image, weight);
}

#[inline(always)]
fn add_weighted_portable<T: Real>(sums: &mut [f64], image: &[T], weight: f64) {
    for (sum, p) in sums.iter_mut().zip(image) {
        *sum += weight * p.widen();
    }
}
