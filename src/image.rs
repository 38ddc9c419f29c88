//! Images: `C` channels of `H x W` pixels, stored channel-major.

use std::fmt;

use nalgebra::DMatrix;

use crate::error::{Error, Result};
use crate::real::Real;

/// The shape of an image: channels, height and width.
///
/// Pixel `(c, row, col)` of an image of this shape sits at index
/// `(c * height + row) * width + col` of its buffer (channel-major, rows
/// contiguous), the layout of a C-order NumPy array `[C, H, W]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Shape {
    /// Number of channels `C`.
    pub channels: usize,
    /// Number of rows `H`.
    pub height: usize,
    /// Number of columns `W`.
    pub width: usize,
}

impl Shape {
    /// A shape with every dimension at least 1.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShape`] if a dimension is zero or the pixel count
    /// overflows `usize`.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::Shape;
    /// let shape = Shape::new(1, 28, 28)?;
    /// assert_eq!(shape.len(), 784);
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn new(channels: usize, height: usize, width: usize) -> Result<Self> {
        if channels == 0 || height == 0 || width == 0 {
            return Err(Error::InvalidShape(format!(
                "every dimension must be at least 1, got {channels}x{height}x{width}"
            )));
        }
        channels
            .checked_mul(height)
            .and_then(|v| v.checked_mul(width))
            .ok_or_else(|| Error::InvalidShape("pixel count overflows".into()))?;
        Ok(Shape {
            channels,
            height,
            width,
        })
    }

    /// Number of values `C * H * W`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Number of pixel positions `H * W`.
    pub fn positions(&self) -> usize {
        self.height * self.width
    }

    /// Buffer index of `(channel, row, col)`.
    #[inline]
    pub fn index(&self, channel: usize, row: usize, col: usize) -> usize {
        (channel * self.height + row) * self.width + col
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}x{}", self.channels, self.height, self.width)
    }
}

/// An image of `C x H x W` pixels of type `T`, channel-major.
///
/// # Example
///
/// ```
/// use score_machines::{Image, Shape};
/// let shape = Shape::new(1, 2, 3)?;
/// let image = Image::from_vec(shape, vec![0.0_f32, 1.0, 2.0, 3.0, 4.0, 5.0])?;
/// assert_eq!(image.get(0, 1, 2), 5.0);
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Image<T> {
    shape: Shape,
    data: Vec<T>,
}

impl<T: Real> Image<T> {
    /// Wraps a channel-major buffer.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if `data.len() != shape.len()`.
    pub fn from_vec(shape: Shape, data: Vec<T>) -> Result<Self> {
        if data.len() != shape.len() {
            return Err(Error::shape("image buffer length", shape.len(), data.len()));
        }
        Ok(Image { shape, data })
    }

    /// Copies a channel-major slice.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if `data.len() != shape.len()`.
    pub fn from_slice(shape: Shape, data: &[T]) -> Result<Self> {
        Self::from_vec(shape, data.to_vec())
    }

    /// An image of zeros.
    pub fn zeros(shape: Shape) -> Self {
        Image {
            shape,
            data: vec![T::zero(); shape.len()],
        }
    }

    /// A one-channel image from a matrix: entry `(row, col)` becomes pixel
    /// `(0, row, col)`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShape`] if the matrix is empty.
    ///
    /// # Example
    ///
    /// ```
    /// use nalgebra::DMatrix;
    /// use score_machines::Image;
    /// let m = DMatrix::from_row_slice(2, 2, &[1.0_f64, 2.0, 3.0, 4.0]);
    /// let image = Image::from_matrix(&m)?;
    /// assert_eq!(image.get(0, 1, 0), 3.0);
    /// assert_eq!(image.to_matrix(0)?, m);
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn from_matrix(matrix: &DMatrix<T>) -> Result<Self> {
        Self::from_channels(std::slice::from_ref(matrix))
    }

    /// An image from one matrix per channel, all of one size.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidShape`] if there is no matrix or they are empty,
    /// [`Error::ShapeMismatch`] if their sizes differ.
    pub fn from_channels(channels: &[DMatrix<T>]) -> Result<Self> {
        let first = channels
            .first()
            .ok_or_else(|| Error::InvalidShape("no channel given".into()))?;
        let shape = Shape::new(channels.len(), first.nrows(), first.ncols())?;
        let mut data = Vec::with_capacity(shape.len());
        for m in channels {
            if m.shape() != first.shape() {
                return Err(Error::shape(
                    "channel matrix size",
                    format!("{:?}", first.shape()),
                    format!("{:?}", m.shape()),
                ));
            }
            for row in 0..shape.height {
                for col in 0..shape.width {
                    data.push(m[(row, col)]);
                }
            }
        }
        Ok(Image { shape, data })
    }

    /// One channel as an `H x W` matrix.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `channel >= C`.
    pub fn to_matrix(&self, channel: usize) -> Result<DMatrix<T>> {
        if channel >= self.shape.channels {
            return Err(Error::InvalidParameter(format!(
                "channel {channel} of an image with {} channels",
                self.shape.channels
            )));
        }
        let plane = self.channel(channel);
        Ok(DMatrix::from_row_slice(
            self.shape.height,
            self.shape.width,
            plane,
        ))
    }

    /// The shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// The channel-major buffer.
    pub fn as_slice(&self) -> &[T] {
        &self.data
    }

    /// The channel-major buffer, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// The buffer, by value.
    pub fn into_vec(self) -> Vec<T> {
        self.data
    }

    /// The `H x W` plane of one channel, row-major.
    ///
    /// # Panics
    ///
    /// If `channel >= C`.
    pub fn channel(&self, channel: usize) -> &[T] {
        let plane = self.shape.positions();
        &self.data[channel * plane..(channel + 1) * plane]
    }

    /// Pixel `(channel, row, col)`.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn get(&self, channel: usize, row: usize, col: usize) -> T {
        assert!(row < self.shape.height && col < self.shape.width);
        self.data[self.shape.index(channel, row, col)]
    }

    /// Sets pixel `(channel, row, col)`.
    ///
    /// # Panics
    ///
    /// If an index is out of range.
    pub fn set(&mut self, channel: usize, row: usize, col: usize, value: T) {
        assert!(row < self.shape.height && col < self.shape.width);
        let index = self.shape.index(channel, row, col);
        self.data[index] = value;
    }

    /// Whether every pixel is finite.
    pub fn is_finite(&self) -> bool {
        self.data.iter().all(|v| v.is_finite())
    }

    /// Fails with [`Error::NonFinite`] naming `what` if a pixel is NaN or
    /// infinite.
    pub fn check_finite(&self, what: &'static str) -> Result<()> {
        if self.is_finite() {
            Ok(())
        } else {
            Err(Error::NonFinite(what))
        }
    }

    /// The image circularly shifted by `(rows, cols)`: pixel `(c, i, j)` of
    /// the result is pixel `(c, i - rows, j - cols)` of `self`, indices
    /// modulo `H` and `W`.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::{Image, Shape};
    /// let image = Image::from_vec(Shape::new(1, 1, 3)?, vec![1.0_f32, 2.0, 3.0])?;
    /// assert_eq!(image.shifted(0, 1).as_slice(), &[3.0, 1.0, 2.0]);
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn shifted(&self, rows: isize, cols: isize) -> Self {
        let Shape {
            channels,
            height,
            width,
        } = self.shape;
        // Reduce the shifts first, so that no subtraction can overflow.
        let rows = (rows as i128).rem_euclid(height as i128) as usize;
        let cols = (cols as i128).rem_euclid(width as i128) as usize;
        let mut out = Image::zeros(self.shape);
        for c in 0..channels {
            for i in 0..height {
                let src_i = (i + height - rows) % height;
                for j in 0..width {
                    let src_j = (j + width - cols) % width;
                    out.data[self.shape.index(c, i, j)] =
                        self.data[self.shape.index(c, src_i, src_j)];
                }
            }
        }
        out
    }

    /// Converts every pixel to another float type.
    pub fn cast<U: Real>(&self) -> Image<U> {
        Image {
            shape: self.shape,
            data: self.data.iter().map(|v| U::narrow(v.widen())).collect(),
        }
    }

    /// Squared Euclidean distance to an image of the same shape.
    ///
    /// # Errors
    ///
    /// [`Error::ShapeMismatch`] if the shapes differ.
    pub fn squared_distance(&self, other: &Image<T>) -> Result<f64> {
        if self.shape != other.shape {
            return Err(Error::shape("image shapes", self.shape, other.shape));
        }
        Ok(squared_distance(&self.data, &other.data))
    }
}

/// `sum_i (a_i - b_i)^2` in `f64`.
pub(crate) fn squared_distance<T: Real>(a: &[T], b: &[T]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            let d = x.widen() - y.widen();
            d * d
        })
        .sum()
}
