//! A batch of images drawn as one 8-bit PNG grid, encoded with the `png`
//! crate.
//!
//! Images sit in cells of a grid, left to right then top to bottom, each
//! pixel enlarged to a `scale x scale` block, with `padding` background
//! pixels between cells and around the grid. A value `v` becomes the byte
//!
//! ```text
//! round( 255 (v - lo) / (hi - lo) ), clamped to 0..=255
//! ```
//!
//! for the range `(lo, hi)` of [`GridOptions`]. One-channel images give a
//! grayscale PNG, three-channel images an RGB one.
//!
//! # Example
//!
//! ```
//! use score_machines::io::png::{encode_grid, GridOptions};
//! use score_machines::{Image, Shape};
//!
//! let shape = Shape::new(1, 8, 8)?;
//! let digits = vec![Image::from_vec(shape, vec![0.0_f32; 64])?; 10];
//! let options = GridOptions { columns: Some(5), scale: 4, ..GridOptions::default() };
//! let bytes = encode_grid(&digits, &options)?;
//! assert!(bytes.starts_with(b"\x89PNG"));
//! # Ok::<(), score_machines::Error>(())
//! ```

use std::path::Path;

use super::io_error;
use crate::error::{Error, Result};
use crate::image::Image;
use crate::real::Real;

/// Largest width or height of a grid, in pixels: `2^31 - 1`, the PNG
/// format's own limit.
pub const MAX_GRID_SIDE: usize = (1 << 31) - 1;

/// Largest number of 8-bit samples in a grid, `width * height * channels`:
/// `2^30` bytes (1 GiB), checked before anything is allocated.
pub const MAX_GRID_BYTES: usize = 1 << 30;

/// Layout and value mapping of a PNG grid.
#[derive(Clone, Debug, PartialEq)]
pub struct GridOptions {
    /// Number of cells per row; `None` chooses `ceil(sqrt(B))` for `B`
    /// images. The last row may be partly empty.
    pub columns: Option<usize>,
    /// Each pixel becomes a `scale x scale` block (at least 1), so that
    /// small images such as 8x8 digits stay visible.
    pub scale: usize,
    /// Background pixels between cells and around the grid.
    pub padding: usize,
    /// The values drawn as 0 and 255; values outside are clamped.
    pub range: (f64, f64),
    /// Gray level of the padding and of empty cells (all three channels for
    /// RGB).
    pub background: u8,
}

impl Default for GridOptions {
    /// Automatic columns, scale 1, padding 1, range `(-1, 1)` (the pixel
    /// range of the IDX reader), mid-gray background 128.
    fn default() -> Self {
        GridOptions {
            columns: None,
            scale: 1,
            padding: 1,
            range: (-1.0, 1.0),
            background: 128,
        }
    }
}

/// Writes the PNG grid of [`encode_grid`] to `path`.
///
/// # Errors
///
/// As [`encode_grid`], and [`Error::Io`] if the file cannot be written.
pub fn write_grid<T: Real>(
    path: impl AsRef<Path>,
    images: &[Image<T>],
    options: &GridOptions,
) -> Result<()> {
    let path = path.as_ref();
    let bytes = encode_grid(images, options)?;
    std::fs::write(path, bytes).map_err(|e| io_error(path, e))
}

/// Encodes images of one shape as an 8-bit PNG grid, in memory.
///
/// The PNG is `columns * W * scale + (columns + 1) * padding` pixels wide
/// and `rows * H * scale + (rows + 1) * padding` high, with
/// `rows = ceil(B / columns)`; image `i` fills the cell at row
/// `i / columns`, column `i % columns`.
///
/// # Errors
///
/// - [`Error::InvalidParameter`] if `images` is empty, `columns` is
///   `Some(0)`, `scale` is 0, the range is not finite with `lo < hi`, or
///   the grid is too large for a PNG;
/// - [`Error::ShapeMismatch`] if the images differ in shape;
/// - [`Error::InvalidShape`] if they have neither 1 nor 3 channels;
/// - [`Error::NonFinite`] if a pixel is NaN or infinite.
pub fn encode_grid<T: Real>(images: &[Image<T>], options: &GridOptions) -> Result<Vec<u8>> {
    let layout = Layout::new(images, options)?;
    let pixels = layout.render(images, options);
    let mut out = Vec::new();
    let mut encoder = ::png::Encoder::new(&mut out, layout.width as u32, layout.height as u32);
    encoder.set_color(if layout.channels == 1 {
        ::png::ColorType::Grayscale
    } else {
        ::png::ColorType::Rgb
    });
    encoder.set_depth(::png::BitDepth::Eight);
    let encode = |encoder: ::png::Encoder<'_, &mut Vec<u8>>| {
        let mut writer = encoder.write_header()?;
        writer.write_image_data(&pixels)?;
        writer.finish()
    };
    encode(encoder).map_err(|e| Error::InvalidParameter(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

/// The checked geometry of a grid.
struct Layout {
    channels: usize,
    columns: usize,
    width: usize,
    height: usize,
}

impl Layout {
    fn new<T: Real>(images: &[Image<T>], options: &GridOptions) -> Result<Self> {
        let first = images
            .first()
            .ok_or_else(|| Error::InvalidParameter("no image to draw".into()))?;
        let shape = first.shape();
        if let Some(other) = images.iter().find(|image| image.shape() != shape) {
            return Err(Error::shape("image shape in a grid", shape, other.shape()));
        }
        if shape.channels != 1 && shape.channels != 3 {
            return Err(Error::InvalidShape(format!(
                "a PNG grid draws images of 1 or 3 channels, got {}",
                shape.channels
            )));
        }
        if options.scale == 0 {
            return Err(Error::InvalidParameter(
                "grid scale must be at least 1".into(),
            ));
        }
        let (lo, hi) = options.range;
        if !(lo.is_finite() && hi.is_finite() && lo < hi) {
            return Err(Error::InvalidParameter(format!(
                "grid value range must be finite with lo < hi, got ({lo}, {hi})"
            )));
        }
        if images.iter().any(|image| !image.is_finite()) {
            return Err(Error::NonFinite("image drawn in a PNG grid"));
        }
        let columns = match options.columns {
            Some(0) => {
                return Err(Error::InvalidParameter(
                    "grid must have at least 1 column".into(),
                ));
            }
            Some(columns) => columns,
            None => (1..).find(|c| c * c >= images.len()).unwrap_or(1),
        };
        let rows = images.len().div_ceil(columns);
        let side = |cells: usize, len: usize| {
            cells
                .checked_mul(len.checked_mul(options.scale)?)?
                .checked_add(cells.checked_add(1)?.checked_mul(options.padding)?)
        };
        let (width, height) = match (side(columns, shape.width), side(rows, shape.height)) {
            (Some(width), Some(height)) => (width, height),
            _ => {
                return Err(Error::InvalidParameter(format!(
                    "a grid of {rows}x{columns} cells of {}x{} pixels at scale {} \
                     with padding {} overflows",
                    shape.height, shape.width, options.scale, options.padding
                )));
            }
        };
        let bytes = (width as u128) * (height as u128) * (shape.channels as u128);
        if width > MAX_GRID_SIDE || height > MAX_GRID_SIDE || bytes > MAX_GRID_BYTES as u128 {
            return Err(Error::InvalidParameter(format!(
                "the grid would be {width}x{height} pixels ({bytes} bytes of samples); \
                 the limits are {MAX_GRID_SIDE} pixels a side and {MAX_GRID_BYTES} bytes"
            )));
        }
        Ok(Layout {
            channels: shape.channels,
            columns,
            width,
            height,
        })
    }

    /// The interleaved 8-bit samples, row by row.
    fn render<T: Real>(&self, images: &[Image<T>], options: &GridOptions) -> Vec<u8> {
        let (lo, hi) = options.range;
        let to_byte = |v: T| {
            (255.0 * (v.widen() - lo) / (hi - lo))
                .round()
                .clamp(0.0, 255.0) as u8
        };
        let (scale, padding, channels) = (options.scale, options.padding, self.channels);
        let mut pixels = vec![options.background; self.width * self.height * channels];
        for (index, image) in images.iter().enumerate() {
            let shape = image.shape();
            let top = padding + (index / self.columns) * (shape.height * scale + padding);
            let left = padding + (index % self.columns) * (shape.width * scale + padding);
            for row in 0..shape.height {
                for col in 0..shape.width {
                    for channel in 0..channels {
                        let byte = to_byte(image.get(channel, row, col));
                        for dy in 0..scale {
                            let y = top + row * scale + dy;
                            for dx in 0..scale {
                                let x = left + col * scale + dx;
                                pixels[(y * self.width + x) * channels + channel] = byte;
                            }
                        }
                    }
                }
            }
        }
        pixels
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use super::*;
    use crate::image::Shape;

    /// Decodes a PNG: width, height, colour type and samples.
    fn decode(bytes: &[u8]) -> (u32, u32, ::png::ColorType, Vec<u8>) {
        let decoder = ::png::Decoder::new(Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.bit_depth, ::png::BitDepth::Eight);
        buf.truncate(info.buffer_size());
        (info.width, info.height, info.color_type, buf)
    }

    #[test]
    fn grayscale_grid_round_trips() {
        let shape = Shape::new(1, 2, 2).unwrap();
        let a = Image::from_vec(shape, vec![-1.0_f64, 1.0, 0.0, 5.0]).unwrap();
        let b = Image::from_vec(shape, vec![-7.0_f64, 0.5, -0.5, 1.0]).unwrap();
        let c = Image::from_vec(shape, vec![1.0_f64; 4]).unwrap();
        let options = GridOptions {
            columns: Some(2),
            scale: 2,
            padding: 1,
            background: 17,
            ..GridOptions::default()
        };
        let (width, height, color, px) = decode(&encode_grid(&[a, b, c], &options).unwrap());
        assert_eq!((width, height), (2 * 4 + 3, 2 * 4 + 3));
        assert_eq!(color, ::png::ColorType::Grayscale);
        let at = |x: usize, y: usize| px[y * width as usize + x];
        // Padding and the empty fourth cell are background.
        assert_eq!(at(0, 0), 17);
        assert_eq!(at(5, 3), 17);
        assert_eq!(at(7, 7), 17);
        // Image a: -1 -> 0, 1 -> 255, 0 -> round(127.5) = 128, 5 clamps to 255.
        for (x, y, v) in [(1, 1, 0), (2, 2, 0), (3, 1, 255), (4, 2, 255)] {
            assert_eq!(at(x, y), v, "({x}, {y})");
        }
        assert_eq!(at(1, 3), 128);
        assert_eq!(at(4, 4), 255);
        // Image b starts at column 1 + 4 + 1 = 6: -7 clamps to 0,
        // 0.5 -> round(191.25) = 191, -0.5 -> round(63.75) = 64.
        assert_eq!(at(6, 1), 0);
        assert_eq!(at(9, 2), 191);
        assert_eq!(at(7, 4), 64);
        // Image c in the second row.
        assert_eq!(at(1, 6), 255);
    }

    #[test]
    fn rgb_grid_interleaves_channels() {
        let shape = Shape::new(3, 1, 1).unwrap();
        let image = Image::from_vec(shape, vec![0.0_f32, 0.5, 1.0]).unwrap();
        let options = GridOptions {
            range: (0.0, 1.0),
            padding: 0,
            ..GridOptions::default()
        };
        let (width, height, color, px) = decode(&encode_grid(&[image], &options).unwrap());
        assert_eq!((width, height, color), (1, 1, ::png::ColorType::Rgb));
        assert_eq!(px, vec![0, 128, 255]);
    }

    #[test]
    fn automatic_columns_make_a_square_grid() {
        let shape = Shape::new(1, 1, 1).unwrap();
        let images = vec![Image::zeros(shape); 10];
        let options = GridOptions {
            padding: 0,
            ..GridOptions::default()
        };
        let (width, height, _, _) = decode(&encode_grid::<f64>(&images, &options).unwrap());
        assert_eq!((width, height), (4, 3));
    }

    #[test]
    fn bad_inputs_are_refused() {
        let gray = Image::<f32>::zeros(Shape::new(1, 2, 2).unwrap());
        let two = Image::<f32>::zeros(Shape::new(2, 2, 2).unwrap());
        let other = Image::<f32>::zeros(Shape::new(1, 2, 3).unwrap());
        let default = GridOptions::default();
        assert!(matches!(
            encode_grid::<f32>(&[], &default),
            Err(Error::InvalidParameter(_))
        ));
        assert!(matches!(
            encode_grid(std::slice::from_ref(&two), &default),
            Err(Error::InvalidShape(_))
        ));
        assert!(matches!(
            encode_grid(&[gray.clone(), other], &default),
            Err(Error::ShapeMismatch { .. })
        ));
        for options in [
            GridOptions {
                scale: 0,
                ..default.clone()
            },
            GridOptions {
                columns: Some(0),
                ..default.clone()
            },
            GridOptions {
                range: (1.0, 1.0),
                ..default.clone()
            },
            GridOptions {
                range: (f64::NAN, 1.0),
                ..default.clone()
            },
            GridOptions {
                padding: usize::MAX / 2,
                ..default.clone()
            },
        ] {
            assert!(matches!(
                encode_grid(std::slice::from_ref(&gray), &options),
                Err(Error::InvalidParameter(_))
            ));
        }
        let mut nan = gray.clone();
        nan.set(0, 1, 1, f32::NAN);
        assert!(matches!(
            encode_grid(&[nan], &default),
            Err(Error::NonFinite(_))
        ));
    }

    #[test]
    fn oversized_grids_are_refused_before_allocating() {
        let digit = Image::<f32>::zeros(Shape::new(1, 8, 8).unwrap());
        let huge = GridOptions {
            scale: 1 << 20,
            ..GridOptions::default()
        };
        match encode_grid(std::slice::from_ref(&digit), &huge) {
            Err(Error::InvalidParameter(message)) => {
                let side = 8 * (1 << 20) + 2;
                assert!(message.contains(&format!("{side}x{side}")), "{message}");
            }
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
        // Just above the byte cap: 32769 x 32769 one-byte samples, one
        // more row and column than 2^30 allows.
        let dot = Image::<f32>::zeros(Shape::new(1, 1, 1).unwrap());
        let just_over = GridOptions {
            scale: (1 << 15) + 1,
            padding: 0,
            ..GridOptions::default()
        };
        match encode_grid(std::slice::from_ref(&dot), &just_over) {
            Err(Error::InvalidParameter(message)) => {
                assert!(message.contains("1073807361 bytes"), "{message}")
            }
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
        // Overflowing arithmetic names the layout.
        let overflow = GridOptions {
            scale: usize::MAX / 4,
            ..GridOptions::default()
        };
        match encode_grid(std::slice::from_ref(&digit), &overflow) {
            Err(Error::InvalidParameter(message)) => {
                assert!(message.contains("overflows"), "{message}")
            }
            other => panic!("expected an invalid parameter, got {other:?}"),
        }
    }
}
