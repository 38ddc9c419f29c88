//! Whole-image distances: the ideal score, where every output pixel shares
//! one softmax over training images.
//!
//! `d_mu = ||phi_t - a phi^mu||^2`, `w_mu = exp(-beta (d_mu - d_min))`,
//! `x0hat = sum_mu w_mu phi^mu / sum_mu w_mu`: one exponential per
//! training image instead of one per image and pixel.

use super::posterior::{PartialPosterior, relative_weight};
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
        .map(|&row| {
            training
                .image(row)
                .iter()
                .zip(query)
                .map(|(p, q)| {
                    let r = q.widen() - signal * p.widen();
                    r * r
                })
                .sum()
        })
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
        for (sum, p) in sums.iter_mut().zip(training.image(row)) {
            *sum += weight * p.widen();
        }
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
