//! The streaming softmax state of a machine: mergeable partial posteriors.

use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;

/// A softmax-weighted average over part of a machine's candidates, kept per
/// output pixel as a running minimum distance, a normaliser and weighted
/// sums, so that parts computed apart merge exactly.
///
/// For output pixel `x` and candidates `j` with squared distances `d_j` and
/// values `v_j` (the candidate's centre pixel, all channels), with
/// `beta = 1 / (2 s^2)`:
///
/// ```text
/// d_min(x) = min_j d_j
/// Z(x)     = sum_j exp(-beta (d_j - d_min))
/// S_c(x)   = sum_j exp(-beta (d_j - d_min)) v_j[c]
/// x0hat(x) = S_c(x) / Z(x)
/// ```
///
/// This is the log-sum-exp form of the softmax with running maximum
/// `-beta d_min`: no term overflows, and the largest weight is exactly 1,
/// so none underflows to an empty sum, at any `t` and pixel scale. At
/// `s = 0` (`beta` infinite) the weights become 1 for the nearest
/// candidates and 0 for the rest.
///
/// Two parts over disjoint candidate sets (for example two shards of a
/// training set, see [`crate::Machine::posterior`]) merge into the part over
/// their union, identical to a single pass up to rounding.
#[derive(Clone, Debug, PartialEq)]
pub struct PartialPosterior {
    shape: Shape,
    beta: f64,
    min_distance: Vec<f64>,
    normaliser: Vec<f64>,
    sums: Vec<f64>,
}

#[inline]
pub(crate) fn relative_weight(distance: f64, minimum: f64, beta: f64) -> f64 {
    if distance == minimum {
        1.0
    } else if distance == f64::INFINITY {
        0.0
    } else {
        (-(distance - minimum) * beta).exp()
    }
}

impl PartialPosterior {
    /// An empty part (no candidate yet) for images of `shape` at inverse
    /// temperature `beta = 1 / (2 s^2)`, which should be at least 0 (it may
    /// be infinite); a part with a negative or NaN `beta` merges with none
    /// (see [`PartialPosterior::merge`]).
    pub fn new(shape: Shape, beta: f64) -> Self {
        let positions = shape.positions();
        PartialPosterior {
            shape,
            beta,
            min_distance: vec![f64::INFINITY; positions],
            normaliser: vec![0.0; positions],
            sums: vec![0.0; shape.len()],
        }
    }

    /// The image shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The inverse temperature `beta = 1 / (2 s^2)`.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Per output pixel, the smallest squared distance seen (infinite where
    /// no candidate was seen).
    pub fn min_distances(&self) -> &[f64] {
        &self.min_distance
    }

    /// Per output pixel, `Z(x)`: the sum of weights relative to the nearest
    /// candidate.
    pub fn normalisers(&self) -> &[f64] {
        &self.normaliser
    }

    /// Adds a candidate with squared distance `distance` for output position
    /// `position = row * W + col`, whose value in channel `c` is
    /// `values[c * stride]`.
    #[inline]
    pub(crate) fn add(&mut self, position: usize, distance: f64, values: &[f64], stride: usize) {
        let positions = self.shape.positions();
        let minimum = self.min_distance[position];
        if distance < minimum {
            let rescale = relative_weight(minimum, distance, self.beta);
            self.normaliser[position] = self.normaliser[position] * rescale + 1.0;
            for c in 0..self.shape.channels {
                let sum = &mut self.sums[c * positions + position];
                *sum = *sum * rescale + values[c * stride];
            }
            self.min_distance[position] = distance;
        } else {
            let weight = relative_weight(distance, minimum, self.beta);
            self.normaliser[position] += weight;
            for c in 0..self.shape.channels {
                self.sums[c * positions + position] += weight * values[c * stride];
            }
        }
    }

    /// Merges, at one output position, a part with minimum distance
    /// `min_distance`, normaliser `normaliser` and channel sums
    /// `sum(c)` (all relative to `min_distance`).
    #[inline]
    pub(crate) fn merge_position(
        &mut self,
        position: usize,
        min_distance: f64,
        normaliser: f64,
        sum: impl Fn(usize) -> f64,
    ) {
        let positions = self.shape.positions();
        let mine = self.min_distance[position];
        let minimum = mine.min(min_distance);
        if minimum == f64::INFINITY {
            return;
        }
        let w_mine = relative_weight(mine, minimum, self.beta);
        let w_theirs = relative_weight(min_distance, minimum, self.beta);
        self.normaliser[position] = self.normaliser[position] * w_mine + normaliser * w_theirs;
        for c in 0..self.shape.channels {
            let i = c * positions + position;
            self.sums[i] = self.sums[i] * w_mine + sum(c) * w_theirs;
        }
        self.min_distance[position] = minimum;
    }

    /// Merges a part over a disjoint set of candidates into this one.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if the parts differ in shape,
    /// [`Error::InvalidParameter`] if they were made at different times
    /// (different `beta`) or either `beta` is negative or NaN.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 4, 4)?;
    /// let pixels: Vec<f64> = (0..48).map(|i| ((i * 37) % 11) as f64 / 5.0 - 1.0).collect();
    /// let whole = TrainingSet::new(shape, pixels.clone(), None)?;
    /// let first = TrainingSet::new(shape, pixels[..16].to_vec(), None)?;
    /// let rest = TrainingSet::new(shape, pixels[16..].to_vec(), None)?;
    /// let local = SquarePatch::new(3)?;
    /// let x = Image::from_vec(shape, (0..16).map(|i| (i as f64 - 8.0) / 8.0).collect())?;
    ///
    /// let mut part = Machine::equivariant_local(first, LegacyCosine, local.clone())?
    ///     .posterior(&x, 0.4, None)?;
    /// part.merge(&Machine::equivariant_local(rest, LegacyCosine, local.clone())?
    ///     .posterior(&x, 0.4, None)?)?;
    /// let merged: Image<f64> = part.to_image()?;
    /// let single = Machine::equivariant_local(whole, LegacyCosine, local)?.x0_hat(&x, 0.4, None)?;
    /// for (a, b) in merged.as_slice().iter().zip(single.as_slice()) {
    ///     assert!((a - b).abs() < 1e-12);
    /// }
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn merge(&mut self, other: &PartialPosterior) -> Result<()> {
        if self.shape != other.shape {
            return Err(Error::shape(
                "partial posterior shape",
                self.shape,
                other.shape,
            ));
        }
        let invalid = |beta: f64| beta.is_nan() || beta < 0.0;
        if invalid(self.beta) || invalid(other.beta) {
            return Err(Error::InvalidParameter(format!(
                "cannot merge partial posteriors with inverse temperature beta {} and {} \
                 (it must be at least 0)",
                self.beta, other.beta
            )));
        }
        if self.beta.to_bits() != other.beta.to_bits() {
            return Err(Error::InvalidParameter(format!(
                "cannot merge partial posteriors at different times (beta {} and {})",
                self.beta, other.beta
            )));
        }
        let positions = self.shape.positions();
        for position in 0..positions {
            self.merge_position(
                position,
                other.min_distance[position],
                other.normaliser[position],
                |c| other.sums[c * positions + position],
            );
        }
        Ok(())
    }

    /// Writes `x0hat(x) = S(x) / Z(x)` into `out`.
    ///
    /// # Errors
    ///
    /// [`Error::NoCandidates`] if some pixel saw no candidate,
    /// [`Error::ShapeMismatch`] if `out` has another shape.
    pub fn write_into<T: Real>(&self, out: &mut Image<T>) -> Result<()> {
        if out.shape() != self.shape {
            return Err(Error::shape("output image shape", self.shape, out.shape()));
        }
        let positions = self.shape.positions();
        if let Some(position) = self.normaliser.iter().position(|&z| z.is_nan() || z <= 0.0) {
            return Err(Error::NoCandidates(format!(
                "output pixel (row {}, col {}) has no candidate patch",
                position / self.shape.width,
                position % self.shape.width
            )));
        }
        for (i, o) in out.as_mut_slice().iter_mut().enumerate() {
            *o = T::narrow(self.sums[i] / self.normaliser[i % positions]);
        }
        Ok(())
    }

    /// `x0hat` as a new image.
    ///
    /// # Errors
    ///
    /// As [`PartialPosterior::write_into`].
    pub fn to_image<T: Real>(&self) -> Result<Image<T>> {
        let mut out = Image::zeros(self.shape);
        self.write_into(&mut out)?;
        Ok(out)
    }
}
