//! Explaining an image as a patch mosaic: for every output pixel, the
//! training patch its softmax weighs most.
//!
//! A patch machine predicts output pixel `x` as a softmax-weighted average
//! of the centre values of candidate training patches `(mu, y)`:
//!
//! ```text
//! d(x; mu, y) = sum_c sum_o w_o (phi_t(c, x + o) - a phi^mu(c, y + o))^2
//! w(x; mu, y) = exp(-beta d(x; mu, y)) / Z(x),   beta = 1 / (2 s^2)
//! ```
//!
//! The *tile* of `x` is its nearest candidate, the one of largest weight:
//! the training image `mu`, the centre `y` within it, the distance and the
//! weight. At small `t` one tile carries nearly all the weight, so the
//! tiles say which training patch each pixel of a generated image was
//! copied from; at larger `t` the weight says how much of the average the
//! tile explains.

use std::collections::BTreeMap;

use super::kernel::{self, CandidateSink};
use super::plan::Plan;
use super::posterior::{PartialPosterior, relative_weight};
use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;
use crate::training::TrainingSet;

/// The nearest training patch of one output pixel.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Tile {
    /// The training image (its index in the machine's training set).
    pub image: usize,
    /// The centre of the patch within that image: row and column.
    pub centre: (usize, usize),
    /// The squared patch distance `d(x; mu, y)`: the (window-weighted) sum
    /// over the window's offsets and the channels of
    /// `(phi_t(x + o) - a phi^mu(y + o))^2`, as in `docs/machines.md`.
    pub distance: f64,
    /// How many candidates lie exactly at this distance (1 when the
    /// nearest patch is unique). Of tied candidates the tile names the one
    /// of lowest image index, then lowest centre: an arbitrary choice, as
    /// blank windows of many images tie.
    pub ties: usize,
    /// The tile's softmax weight `w(x; mu, y)`, in `(0, 1]`: the share of
    /// the output pixel the tile explains. Where the noise is 0 (at `t = 0`
    /// for every schedule but [`VarianceExploding`](crate::schedule::VarianceExploding),
    /// whose noise never reaches 0) it is `1 / m` for
    /// `m` candidates tied at the nearest distance.
    pub weight: f64,
}

/// An image explained as a mosaic of training patches: one [`Tile`] per
/// output pixel, from [`Machine::mosaic`](crate::Machine::mosaic).
///
/// # Example
///
/// ```
/// use score_machines::prelude::*;
///
/// let shape = Shape::new(1, 6, 6)?;
/// let pixels: Vec<f64> = (0..4 * 36).map(|i| ((i * 7919) % 13) as f64 / 6.0 - 1.0).collect();
/// let training = TrainingSet::new(shape, pixels, None)?;
/// let patch = SquarePatch::new(3)?;
/// let bbels = Machine::equivariant_local_zero_padded(training.clone(), LegacyCosine, patch)?;
///
/// // A training image explains itself: with zero padding every pixel's own
/// // window is among its candidates, so every tile is at distance 0.
/// // (ELS, whose query wraps and whose candidates lie inside the image,
/// // cannot match the windows of edge pixels.)
/// let image = training.to_image(2);
/// let mosaic = bbels.mosaic(&image, 0.0, None)?;
/// assert!(mosaic.tiles().iter().all(|tile| tile.distance == 0.0));
/// assert_eq!(mosaic.to_image(&training)?, bbels.x0_hat(&image, 0.0, None)?);
/// println!("{} source images, the first {:?}", mosaic.sources().len(), mosaic.sources()[0]);
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Mosaic {
    shape: Shape,
    tiles: Vec<Tile>,
}

impl Mosaic {
    /// The shape of the explained image.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The tiles, row by row (`row * W + col`).
    pub fn tiles(&self) -> &[Tile] {
        &self.tiles
    }

    /// The tile of output pixel `(row, col)`; `None` outside the image.
    pub fn tile(&self, row: usize, col: usize) -> Option<&Tile> {
        (row < self.shape.height && col < self.shape.width)
            .then(|| &self.tiles[row * self.shape.width + col])
    }

    /// The training images the tiles with a unique nearest patch
    /// (`ties == 1`) come from, with the number of output pixels each
    /// explains, most first (equal counts by image index). Tiles whose
    /// nearest distance is shared by several candidates are left out, as
    /// the image they name is only the lowest-indexed of those.
    pub fn sources(&self) -> Vec<(usize, usize)> {
        let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
        for tile in self.tiles.iter().filter(|tile| tile.ties == 1) {
            *counts.entry(tile.image).or_default() += 1;
        }
        let mut sources: Vec<(usize, usize)> = counts.into_iter().collect();
        sources.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        sources
    }

    /// The mosaic itself: every output pixel set to the centre value of its
    /// tile, in every channel. Where the noise is 0 (see [`Tile::weight`]),
    /// without ties, this is the
    /// machine's prediction.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if `training` holds images of another
    /// shape, [`Error::InvalidParameter`] if a tile names an image it does
    /// not hold (a training set other than the machine's).
    pub fn to_image<T: Real>(&self, training: &TrainingSet<T>) -> Result<Image<T>> {
        if training.shape() != self.shape {
            return Err(Error::shape(
                "training image shape",
                self.shape,
                training.shape(),
            ));
        }
        let plane = self.shape.positions();
        let mut pixels = vec![T::zero(); self.shape.len()];
        for (position, tile) in self.tiles.iter().enumerate() {
            if tile.image >= training.len() {
                return Err(Error::InvalidParameter(format!(
                    "the mosaic names training image {} of a set of {}",
                    tile.image,
                    training.len()
                )));
            }
            let source = training.image(tile.image);
            let centre = tile.centre.0 * self.shape.width + tile.centre.1;
            for c in 0..self.shape.channels {
                pixels[c * plane + position] = source[c * plane + centre];
            }
        }
        Image::from_vec(self.shape, pixels)
    }
}

/// Per output position, the nearest candidate seen so far, and the
/// softmax state of every candidate seen (for the weights).
#[derive(Clone)]
pub(crate) struct NearestPatches {
    /// The training image whose candidates are being added.
    image: usize,
    /// `(distance, image, centre)`, infinite where none was seen.
    best: Vec<(f64, usize, (usize, usize))>,
    /// Candidates at exactly the distance of `best`.
    ties: Vec<usize>,
    posterior: PartialPosterior,
}

impl NearestPatches {
    fn new(shape: Shape, beta: f64) -> Self {
        NearestPatches {
            image: 0,
            best: vec![(f64::INFINITY, usize::MAX, (0, 0)); shape.positions()],
            ties: vec![0; shape.positions()],
            posterior: PartialPosterior::new(shape, beta),
        }
    }

    /// Keeps, per position, the nearer of two; equal distances go to the
    /// lower image index, then the lower centre, so that the result does
    /// not depend on how the images were split.
    fn merge(mut self, other: &NearestPatches) -> Self {
        let pairs = self.best.iter_mut().zip(&mut self.ties);
        for ((mine, ties), (theirs, their_ties)) in pairs.zip(other.best.iter().zip(&other.ties)) {
            if theirs.0 < mine.0 {
                *ties = *their_ties;
            } else if theirs.0 == mine.0 {
                *ties += their_ties;
            }
            if (theirs.0, theirs.1, theirs.2) < (mine.0, mine.1, mine.2) {
                *mine = *theirs;
            }
        }
        self.posterior
            .merge(&other.posterior)
            .expect("parts of one evaluation agree");
        self
    }

    /// The mosaic: each nearest candidate, weighted within its softmax.
    fn into_mosaic(self) -> Mosaic {
        let posterior = &self.posterior;
        let beta = posterior.beta();
        let tiles = self
            .best
            .into_iter()
            .zip(self.ties)
            .zip(
                posterior
                    .min_distances()
                    .iter()
                    .zip(posterior.normalisers()),
            )
            .map(
                |(((distance, image, centre), ties), (&minimum, &normaliser))| Tile {
                    image,
                    centre,
                    distance,
                    ties,
                    weight: relative_weight(distance, minimum, beta) / normaliser,
                },
            )
            .collect();
        Mosaic {
            shape: posterior.shape(),
            tiles,
        }
    }
}

impl CandidateSink for NearestPatches {
    #[inline]
    fn add(
        &mut self,
        position: usize,
        distance: f64,
        centre: (usize, usize),
        values: &[f64],
        stride: usize,
    ) {
        let best = &mut self.best[position];
        let ties = &mut self.ties[position];
        if distance < best.0 {
            *ties = 1;
        } else if distance == best.0 {
            *ties += 1;
        }
        if (distance, self.image, centre) < (best.0, best.1, best.2) {
            *best = (distance, self.image, centre);
        }
        self.posterior.add(position, distance, values, stride);
    }
}

/// The mosaic of `query` (padded by `plan`) over the training images
/// `rows`, in `f64`: distances exact up to the rounding of
/// [`kernel::accumulate`], which sums directly with `direct_only`.
pub(crate) fn mosaic<T: Real>(
    training: &TrainingSet<T>,
    rows: &[usize],
    plan: &Plan,
    query: &[f64],
    signal: f64,
    beta: f64,
    direct_only: bool,
) -> Mosaic {
    let shape = training.shape();
    let chunk = |rows: &[usize]| {
        let mut nearest = NearestPatches::new(shape, beta);
        kernel::accumulate_images(
            training,
            rows,
            plan,
            query,
            signal,
            direct_only,
            &mut nearest,
            |nearest, row| nearest.image = row,
        );
        nearest
    };
    // Chunks of a fixed size, merged in order (a batch of chunks at a time,
    // so that few parts are held at once): the sums are rounded the same
    // way whatever the number of threads.
    const CHUNK: usize = 16;
    const BATCH: usize = 32 * CHUNK;
    let mut whole = NearestPatches::new(shape, beta);
    for batch in rows.chunks(BATCH) {
        #[cfg(feature = "parallel")]
        let parts: Vec<NearestPatches> = {
            use rayon::prelude::*;
            batch.par_chunks(CHUNK).map(chunk).collect()
        };
        #[cfg(not(feature = "parallel"))]
        let parts: Vec<NearestPatches> = batch.chunks(CHUNK).map(chunk).collect();
        for part in &parts {
            whole = whole.merge(part);
        }
    }
    whole.into_mosaic()
}
