//! Training sets: `N` images of one shape, optionally labelled.

use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;

/// `N` images of one shape, stored contiguously, with optional class labels.
///
/// Image `mu` occupies `data[mu * len .. (mu + 1) * len]` with
/// `len = C * H * W`, the layout of a C-order NumPy array `[N, C, H, W]`.
///
/// # Example
///
/// ```
/// use score_machines::{Shape, TrainingSet};
/// let shape = Shape::new(1, 1, 2)?;
/// let set = TrainingSet::new(shape, vec![0.0_f64, 1.0, 2.0, 3.0], Some(vec![7, 9]))?;
/// assert_eq!(set.len(), 2);
/// assert_eq!(set.image(1), &[2.0, 3.0]);
/// let nines = set.class(9)?;
/// assert_eq!(nines.len(), 1);
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct TrainingSet<T> {
    shape: Shape,
    data: Vec<T>,
    labels: Option<Vec<usize>>,
}

impl<T: Real> TrainingSet<T> {
    /// Wraps a buffer of `N * C * H * W` values and optional labels.
    ///
    /// # Errors
    ///
    /// - [`Error::EmptyTrainingSet`] if `data` is empty;
    /// - [`Error::ShapeMismatch`] if `data.len()` is not a multiple of
    ///   `shape.len()`, or there is not one label per image;
    /// - [`Error::NonFinite`] if a value is NaN or infinite.
    pub fn new(shape: Shape, data: Vec<T>, labels: Option<Vec<usize>>) -> Result<Self> {
        if data.is_empty() {
            return Err(Error::EmptyTrainingSet(String::new()));
        }
        if !data.len().is_multiple_of(shape.len()) {
            return Err(Error::shape(
                "training buffer length (a multiple of the image size)",
                format!("k * {}", shape.len()),
                data.len(),
            ));
        }
        let count = data.len() / shape.len();
        if let Some(labels) = &labels
            && labels.len() != count
        {
            return Err(Error::shape("number of labels", count, labels.len()));
        }
        if !data.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite("training set"));
        }
        Ok(TrainingSet {
            shape,
            data,
            labels,
        })
    }

    /// Collects images of one shape.
    ///
    /// # Errors
    ///
    /// As [`TrainingSet::new`], and [`Error::ShapeMismatch`] if the images
    /// differ in shape.
    pub fn from_images(images: &[Image<T>], labels: Option<Vec<usize>>) -> Result<Self> {
        let first = images
            .first()
            .ok_or_else(|| Error::EmptyTrainingSet(String::new()))?;
        let shape = first.shape();
        let mut data = Vec::with_capacity(images.len() * shape.len());
        for image in images {
            if image.shape() != shape {
                return Err(Error::shape("training image shape", shape, image.shape()));
            }
            data.extend_from_slice(image.as_slice());
        }
        Self::new(shape, data, labels)
    }

    /// The shape of every image.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// Number of images `N` (never zero).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.data.len() / self.shape.len()
    }

    /// Image `index` as a channel-major slice.
    ///
    /// # Panics
    ///
    /// If `index >= N`.
    pub fn image(&self, index: usize) -> &[T] {
        let len = self.shape.len();
        &self.data[index * len..(index + 1) * len]
    }

    /// Image `index` as an [`Image`].
    ///
    /// # Panics
    ///
    /// If `index >= N`.
    pub fn to_image(&self, index: usize) -> Image<T> {
        Image::from_slice(self.shape, self.image(index)).expect("shape is consistent")
    }

    /// All images, contiguous.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The labels, if any.
    pub fn labels(&self) -> Option<&[usize]> {
        self.labels.as_deref()
    }

    /// The images of one class, as a new training set.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownClass`] if the set has no labels or no image carries
    /// `label`.
    pub fn class(&self, label: usize) -> Result<TrainingSet<T>> {
        let labels = self.labels.as_ref().ok_or(Error::UnknownClass(label))?;
        let rows: Vec<usize> = (0..self.len()).filter(|&i| labels[i] == label).collect();
        if rows.is_empty() {
            return Err(Error::UnknownClass(label));
        }
        self.select(&rows)
    }

    /// The images at the given row indices, in that order (labels kept).
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 2, 2)?;
    /// let set = TrainingSet::new(shape, (0..12).map(f64::from).collect(), None)?;
    /// let shard = set.select(&[2, 0])?;
    /// assert_eq!(shard.image(0), set.image(2));
    /// assert!(set.select(&[3]).is_err());
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::EmptyTrainingSet`] if `rows` is empty,
    /// [`Error::InvalidParameter`] if an index is out of range.
    pub fn select(&self, rows: &[usize]) -> Result<TrainingSet<T>> {
        if rows.is_empty() {
            return Err(Error::EmptyTrainingSet(" (no rows selected)".into()));
        }
        let mut data = Vec::with_capacity(rows.len() * self.shape.len());
        for &row in rows {
            if row >= self.len() {
                return Err(Error::InvalidParameter(format!(
                    "row {row} of a training set of {} images",
                    self.len()
                )));
            }
            data.extend_from_slice(self.image(row));
        }
        let labels = self
            .labels
            .as_ref()
            .map(|l| rows.iter().map(|&r| l[r]).collect());
        Ok(TrainingSet {
            shape: self.shape,
            data,
            labels,
        })
    }

    /// The smallest and largest training value of channel `channel`.
    ///
    /// # Panics
    ///
    /// If `channel >= C`.
    pub fn channel_range(&self, channel: usize) -> (T, T) {
        let plane = self.shape.positions();
        let mut lo = T::infinity();
        let mut hi = T::neg_infinity();
        for mu in 0..self.len() {
            let image = self.image(mu);
            for &v in &image[channel * plane..(channel + 1) * plane] {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
        (lo, hi)
    }

    /// Converts every value to another float type, rounding to nearest.
    ///
    /// # Errors
    ///
    /// [`Error::NonFinite`] if a value is beyond the range of `U` (for
    /// example above `3.4e38` for `f32`).
    pub fn cast<U: Real>(&self) -> Result<TrainingSet<U>> {
        let data: Vec<U> = self.data.iter().map(|v| U::narrow(v.widen())).collect();
        if !data.iter().all(|v| v.is_finite()) {
            return Err(Error::NonFinite(
                "training set converted to another float type",
            ));
        }
        Ok(TrainingSet {
            shape: self.shape,
            data,
            labels: self.labels.clone(),
        })
    }

    /// Index and *squared* L2 distance of the training image nearest to
    /// `image` (the first of equally near ones).
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::prelude::*;
    ///
    /// let shape = Shape::new(1, 1, 2)?;
    /// let set = TrainingSet::new(shape, vec![0.0, 0.0, 1.0, 1.0], None)?;
    /// let (row, squared) = set.nearest(&Image::from_vec(shape, vec![1.0, 3.0])?)?;
    /// assert_eq!((row, squared), (1, 4.0)); // distance 2
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if the image's shape differs from the set's.
    pub fn nearest(&self, image: &Image<T>) -> Result<(usize, f64)> {
        if image.shape() != self.shape {
            return Err(Error::shape("query image shape", self.shape, image.shape()));
        }
        let mut best = (0, f64::INFINITY);
        for mu in 0..self.len() {
            let d = crate::image::squared_distance(image.as_slice(), self.image(mu));
            if d < best.1 {
                best = (mu, d);
            }
        }
        Ok(best)
    }
}
