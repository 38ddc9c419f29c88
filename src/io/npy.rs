//! NumPy `.npy` arrays, read and written with the `npyz` crate.
//!
//! Floating-point arrays (`float32` or `float64`, little- or big-endian) are
//! read into any [`Real`] type: `float32` widens to `f64` exactly, and
//! `float64` rounds to nearest when read as `f32`; a finite `float64` value
//! beyond the `f32` range is an error, never read as infinity (NaN and
//! infinities stay what they are). Arrays are written
//! little-endian, `float32` from `f32` data and `float64` from `f64` data.
//! Only C (row-major) order is read; a Fortran-order file is refused with a
//! message saying so.
//!
//! Image batches use the layout of a C-order array `[B, C, H, W]`, the same
//! channel-major layout as [`Image`] and [`TrainingSet`].
//!
//! # Example
//!
//! ```
//! use score_machines::io::npy;
//!
//! let path = std::env::temp_dir().join(format!("npy-doc-{}.npy", std::process::id()));
//! npy::write_array(&path, &[2, 3], &[0.5_f32, 1.0, 1.5, 2.0, 2.5, 3.0])?;
//! let (shape, data) = npy::read_array::<f64>(&path)?;
//! assert_eq!(shape, vec![2, 3]);
//! assert_eq!(data[4], 2.5);
//! assert!(npy::read_info(&path)?.is_float32());
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), score_machines::Error>(())
//! ```
//!
//! # Limits
//!
//! Structured (record) and object arrays, `float16`, and headers longer
//! than 1 MiB or with escape sequences are refused; none of them is written
//! by `numpy.save` for a plain numeric array.

use std::fs::File;
use std::io::{BufWriter, Read};
use std::path::Path;

use npyz::{DType, NpyFile, NpyHeader, Order, TypeChar, TypeStr, WriterBuilder};

use super::{format_error, io_error, open_regular, read_file};
use crate::error::{Error, Result};
use crate::image::{Image, Shape};
use crate::real::Real;
use crate::training::TrainingSet;

/// The magic string that starts every `.npy` file.
const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// Longest header text accepted, in bytes.
const MAX_HEADER_LEN: usize = 1 << 20;

/// Deepest bracket nesting accepted in the header text.
const MAX_HEADER_DEPTH: usize = 16;

/// What the header of a `.npy` file declares.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArrayInfo {
    /// The dimensions, outermost first.
    pub shape: Vec<usize>,
    /// The NumPy type string: byte order (`<` little, `>` big, `|` not
    /// applicable), kind and size in bytes, e.g. `<f4` for little-endian
    /// `float32`, `|u1` for `uint8`.
    pub dtype: String,
    /// Whether the values are stored in Fortran (column-major) order.
    pub fortran_order: bool,
}

impl ArrayInfo {
    /// Number of values, the product of the dimensions (1 for a scalar),
    /// saturating at `usize::MAX` (the readers refuse such shapes).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.shape
            .iter()
            .try_fold(1_usize, |acc, &d| acc.checked_mul(d))
            .unwrap_or(usize::MAX)
    }

    /// Whether the values are `float32`, of either byte order.
    pub fn is_float32(&self) -> bool {
        matches!(self.dtype.as_str(), "<f4" | ">f4" | "|f4")
    }

    /// Whether the values are `float64`, of either byte order.
    pub fn is_float64(&self) -> bool {
        matches!(self.dtype.as_str(), "<f8" | ">f8" | "|f8")
    }
}

/// Reads only the header of a `.npy` file: shape, type and order.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be read or is not a regular file;
/// [`Error::Format`] if the header is malformed or truncated, declares an unsupported (structured or
/// object) type, or declares another data length than the file holds.
pub fn read_info(path: impl AsRef<Path>) -> Result<ArrayInfo> {
    let path = path.as_ref();
    let (mut file, file_len) = open_regular(path)?;
    let mut bytes = Vec::new();
    (&mut file)
        .take(12)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    let data_offset = preamble(&bytes, file_len, path)?;
    if data_offset > bytes.len() {
        file.take((data_offset - bytes.len()) as u64)
            .read_to_end(&mut bytes)
            .map_err(|e| io_error(path, e))?;
    }
    let parsed = parse(&bytes[..data_offset.min(bytes.len())], file_len, path)?;
    parsed.check_data_len(file_len, path)?;
    Ok(parsed.info)
}

/// Reads a C-order `float32` or `float64` array of any dimension: its shape
/// and its values in C order.
///
/// # Errors
///
/// - [`Error::Io`] if the file cannot be read or is not a regular file
///   (a folder, device, FIFO or socket);
/// - [`Error::Format`] naming the file if it is not a `.npy` file, is
///   truncated or has bytes after the data, is in Fortran order, holds
///   another type than `float32` or `float64`, or, read as `f32`, holds a
///   finite `float64` value beyond the `f32` range (the message gives the
///   value and its index in C order).
pub fn read_array<T: Real>(path: impl AsRef<Path>) -> Result<(Vec<usize>, Vec<T>)> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    decode_array(&bytes, path)
}

/// Reads a one-dimensional array of non-negative integers (any of `uint8`
/// to `uint64` or `int8` to `int64`, either byte order) as class labels.
///
/// # Errors
///
/// - [`Error::Io`] if the file cannot be read or is not a regular file
///   (a folder, device, FIFO or socket);
/// - [`Error::Format`] if it is not a one-dimensional integer array, holds
///   a negative value, or is malformed as for [`read_array`].
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let bytes = read_file(path)?;
    let parsed = parse(&bytes, bytes.len() as u64, path)?;
    if parsed.info.shape.len() != 1 {
        return Err(format_error(
            path,
            format!(
                "labels must be a 1-d array, found shape {:?}",
                parsed.info.shape
            ),
        ));
    }
    let data = parsed.data(&bytes, path)?;
    let labels: Vec<i128> = match (parsed.type_str.type_char(), parsed.item_size) {
        (TypeChar::Uint, 1) => read_values::<u8, _>(&parsed, data, path, label)?,
        (TypeChar::Uint, 2) => read_values::<u16, _>(&parsed, data, path, label)?,
        (TypeChar::Uint, 4) => read_values::<u32, _>(&parsed, data, path, label)?,
        (TypeChar::Uint, 8) => read_values::<u64, _>(&parsed, data, path, label)?,
        (TypeChar::Int, 1) => read_values::<i8, _>(&parsed, data, path, label)?,
        (TypeChar::Int, 2) => read_values::<i16, _>(&parsed, data, path, label)?,
        (TypeChar::Int, 4) => read_values::<i32, _>(&parsed, data, path, label)?,
        (TypeChar::Int, 8) => read_values::<i64, _>(&parsed, data, path, label)?,
        _ => {
            return Err(format_error(
                path,
                format!("labels must be integers, found dtype {}", parsed.info.dtype),
            ));
        }
    };
    labels
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            usize::try_from(v).map_err(|_| {
                format_error(path, format!("label {i} is {v}, not a non-negative index"))
            })
        })
        .collect()
}

/// Writes an array of shape `shape` whose values `data` are in C order,
/// as little-endian `float32` if `T` is `f32` and `float64` if `T` is `f64`.
///
/// An empty `shape` writes a scalar (one value).
///
/// # Errors
///
/// - [`Error::ShapeMismatch`] if the product of `shape` is not
///   `data.len()`;
/// - [`Error::Io`] if the file cannot be created or written.
pub fn write_array<T: Real>(path: impl AsRef<Path>, shape: &[usize], data: &[T]) -> Result<()> {
    let path = path.as_ref();
    let count = shape
        .iter()
        .try_fold(1_usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| Error::InvalidShape(format!("array shape {shape:?} overflows")))?;
    if count != data.len() {
        return Err(Error::shape(
            "array data length (product of the shape)",
            format!("{count} for shape {shape:?}"),
            data.len(),
        ));
    }
    let file = File::create(path).map_err(|e| io_error(path, e))?;
    let writer = BufWriter::new(file);
    let dims: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
    let written = if T::NAME == "f32" {
        write_values(writer, &dims, "<f4", data.iter().map(|v| v.widen() as f32))
    } else {
        write_values(writer, &dims, "<f8", data.iter().map(|v| v.widen()))
    };
    written.map_err(|e| io_error(path, e))
}

/// Reads a batch of images from a C-order array `[B, C, H, W]`, or
/// `[B, H, W]` read as one channel. A batch of zero images gives an empty
/// vector.
///
/// # Errors
///
/// As [`read_array`], and [`Error::Format`] if the array has another number
/// of dimensions or a zero channel, height or width.
pub fn read_images<T: Real>(path: impl AsRef<Path>) -> Result<Vec<Image<T>>> {
    let path = path.as_ref();
    let (shape, data) = read_array::<T>(path)?;
    let (_, image_shape) = batch_shape(&shape, path)?;
    data.chunks_exact(image_shape.len())
        .map(|chunk| Image::from_slice(image_shape, chunk))
        .collect()
}

/// Reads a training set (without labels) from a C-order array
/// `[N, C, H, W]`, or `[N, H, W]` read as one channel.
///
/// # Errors
///
/// As [`read_images`]; [`Error::EmptyTrainingSet`] if `N = 0`;
/// [`Error::Format`] if a value is NaN or infinite in the file.
pub fn read_training_set<T: Real>(path: impl AsRef<Path>) -> Result<TrainingSet<T>> {
    let path = path.as_ref();
    let (shape, data) = read_array::<T>(path)?;
    let (count, image_shape) = batch_shape(&shape, path)?;
    if count == 0 {
        return Err(Error::EmptyTrainingSet(format!(
            " ({} holds no image)",
            path.display()
        )));
    }
    if let Some(index) = data.iter().position(|v| !v.is_finite()) {
        return Err(format_error(
            path,
            format!(
                "the value at index {index} is {}; a training set must be finite",
                data[index]
            ),
        ));
    }
    TrainingSet::new(image_shape, data, None)
}

/// Writes a batch of images of one shape `C x H x W` as a C-order array
/// `[B, C, H, W]` of `T` (see [`write_array`]).
///
/// # Errors
///
/// [`Error::InvalidParameter`] if `images` is empty (its shape would be
/// unknown); [`Error::ShapeMismatch`] if the images differ in shape;
/// [`Error::Io`] if the file cannot be written.
pub fn write_images<T: Real>(path: impl AsRef<Path>, images: &[Image<T>]) -> Result<()> {
    let first = images
        .first()
        .ok_or_else(|| Error::InvalidParameter("no image to write".into()))?;
    let shape = first.shape();
    let mut data = Vec::with_capacity(images.len() * shape.len());
    for image in images {
        if image.shape() != shape {
            return Err(Error::shape("image shape in a batch", shape, image.shape()));
        }
        data.extend_from_slice(image.as_slice());
    }
    let dims = [images.len(), shape.channels, shape.height, shape.width];
    write_array(path, &dims, &data)
}

/// The image count and image shape of a `[B, C, H, W]` or `[B, H, W]`
/// array.
fn batch_shape(shape: &[usize], path: &Path) -> Result<(usize, Shape)> {
    let (count, channels, height, width) = match *shape {
        [b, c, h, w] => (b, c, h, w),
        [b, h, w] => (b, 1, h, w),
        _ => {
            return Err(format_error(
                path,
                format!("expected an image batch [B, C, H, W] or [B, H, W], found shape {shape:?}"),
            ));
        }
    };
    let image_shape = Shape::new(channels, height, width).map_err(|_| {
        format_error(
            path,
            format!("images of {channels}x{height}x{width} values in shape {shape:?}"),
        )
    })?;
    Ok((count, image_shape))
}

/// A checked header.
struct Parsed {
    info: ArrayInfo,
    header: NpyHeader,
    type_str: TypeStr,
    item_size: usize,
    data_offset: usize,
    data_len: usize,
}

impl Parsed {
    /// Checks that a file of `file_len` bytes holds exactly the data the
    /// header declares after the header.
    fn check_data_len(&self, file_len: u64, path: &Path) -> Result<()> {
        let available = file_len.saturating_sub(self.data_offset as u64);
        let needed = self.data_len as u64;
        let declared = format!(
            "shape {:?} of {} needs {needed} bytes of data",
            self.info.shape, self.info.dtype
        );
        if available < needed {
            return Err(format_error(
                path,
                format!("truncated: {declared}, {available} follow the header"),
            ));
        }
        if available > needed {
            return Err(format_error(
                path,
                format!("{declared}, but {available} follow the header"),
            ));
        }
        Ok(())
    }

    /// The data section of the whole file `bytes`, checked to be exactly as
    /// long as the header declares.
    fn data<'a>(&self, bytes: &'a [u8], path: &Path) -> Result<&'a [u8]> {
        self.check_data_len(bytes.len() as u64, path)?;
        Ok(&bytes[self.data_offset..])
    }
}

/// Decodes a whole file as a `float32` or `float64` array.
fn decode_array<T: Real>(bytes: &[u8], path: &Path) -> Result<(Vec<usize>, Vec<T>)> {
    let parsed = parse(bytes, bytes.len() as u64, path)?;
    if parsed.info.fortran_order {
        return Err(format_error(
            path,
            "the array is in Fortran order; only C order is read \
             (save numpy.ascontiguousarray(a) instead)",
        ));
    }
    let data = parsed.data(bytes, path)?;
    let values = match (parsed.type_str.type_char(), parsed.item_size) {
        (TypeChar::Float, 4) => {
            read_values::<f32, _>(&parsed, data, path, |_, v| Ok(T::narrow(v as f64)))?
        }
        (TypeChar::Float, 8) => read_values::<f64, _>(&parsed, data, path, narrowed::<T>)?,
        _ => {
            return Err(format_error(
                path,
                format!(
                    "dtype {} is not supported; expected float32 (<f4, >f4) or float64 (<f8, >f8)",
                    parsed.info.dtype
                ),
            ));
        }
    };
    Ok((parsed.info.shape, values))
}

/// A `float64` value at `index` (C order) as `T`, rounded to nearest; an
/// error if it is finite but beyond the range of `T`.
fn narrowed<T: Real>(index: usize, value: f64) -> std::result::Result<T, String> {
    let narrow = T::narrow(value);
    if value.is_finite() && !narrow.is_finite() {
        Err(format!(
            "value {value:e} at index {index} exceeds the {} range",
            T::NAME
        ))
    } else {
        Ok(narrow)
    }
}

/// An integer as a label candidate (checked non-negative later).
fn label<V: Into<i128>>(_index: usize, value: V) -> std::result::Result<i128, String> {
    Ok(value.into())
}

/// Reads every value of the data section as `V` and converts it with
/// `convert(index, value)`, whose error is the reason the file is refused.
fn read_values<V: npyz::Deserialize, U>(
    parsed: &Parsed,
    data: &[u8],
    path: &Path,
    convert: impl Fn(usize, V) -> std::result::Result<U, String>,
) -> Result<Vec<U>> {
    let file = NpyFile::with_header(parsed.header.clone(), data);
    let reader = file
        .data::<V>()
        .map_err(|e| format_error(path, format!("dtype {}: {e}", parsed.info.dtype)))?;
    let mut values = Vec::with_capacity(parsed.info.len());
    for (index, value) in reader.enumerate() {
        let value = value.map_err(|e| format_error(path, format!("data: {e}")))?;
        values.push(convert(index, value).map_err(|reason| format_error(path, reason))?);
    }
    Ok(values)
}

/// Writes a C-order array with the given dimensions and type string.
fn write_values<V: npyz::Serialize>(
    writer: BufWriter<File>,
    dims: &[u64],
    type_str: &str,
    values: impl Iterator<Item = V>,
) -> std::io::Result<()> {
    let type_str: TypeStr = type_str.parse().expect("a valid NumPy type string");
    let mut npy = npyz::WriteOptions::new()
        .dtype(DType::Plain(type_str))
        .shape(dims)
        .writer(writer)
        .begin_nd()?;
    for value in values {
        npy.push(&value)?;
    }
    npy.finish()
}

/// Checks the fixed preamble (magic, version, header length) and returns
/// the offset at which the data starts. `bytes` holds at least the first
/// 12 bytes of the file, or the whole file if it is shorter.
fn preamble(bytes: &[u8], file_len: u64, path: &Path) -> Result<usize> {
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(format_error(
            path,
            "not an .npy file: it does not start with \\x93NUMPY",
        ));
    }
    if bytes.len() < 10 {
        return Err(format_error(
            path,
            format!(
                "truncated: {} bytes, too short for an .npy header",
                bytes.len()
            ),
        ));
    }
    let (major, minor) = (bytes[6], bytes[7]);
    let (length_bytes, header_len) = match (major, minor) {
        (1, 0) => (2, u16::from_le_bytes([bytes[8], bytes[9]]) as usize),
        (2, 0) | (3, 0) => {
            if bytes.len() < 12 {
                return Err(format_error(
                    path,
                    format!(
                        "truncated: {} bytes, too short for an .npy header",
                        bytes.len()
                    ),
                ));
            }
            let len = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            (4, len as usize)
        }
        _ => {
            return Err(format_error(
                path,
                format!("unsupported .npy format version {major}.{minor}"),
            ));
        }
    };
    let data_offset = (8_usize + length_bytes).saturating_add(header_len);
    if data_offset as u64 > file_len {
        return Err(format_error(
            path,
            format!("truncated: the header declares {header_len} bytes, the file ends before"),
        ));
    }
    if header_len > MAX_HEADER_LEN {
        return Err(format_error(
            path,
            format!("header of {header_len} bytes; at most {MAX_HEADER_LEN} are accepted"),
        ));
    }
    Ok(data_offset)
}

/// Parses and checks the header. `bytes` starts at the file's start and
/// holds at least the whole header; `file_len` is the length of the file.
fn parse(bytes: &[u8], file_len: u64, path: &Path) -> Result<Parsed> {
    let data_offset = preamble(bytes, file_len, path)?;
    if data_offset > bytes.len() {
        return Err(format_error(path, "truncated header"));
    }
    let header_start = if bytes[6] == 1 { 10 } else { 12 };
    let text = std::str::from_utf8(&bytes[header_start..data_offset])
        .map_err(|_| format_error(path, "the header is not UTF-8 text"))?;
    check_header_text(text).map_err(|reason| format_error(path, reason))?;

    let header = NpyHeader::from_reader(&bytes[..data_offset])
        .map_err(|e| format_error(path, format!("malformed header: {e}")))?;
    let type_str = match header.dtype() {
        DType::Plain(type_str) => type_str,
        other => {
            return Err(format_error(
                path,
                format!("structured dtype {} is not supported", other.descr()),
            ));
        }
    };
    let item_size = type_str
        .num_bytes()
        .filter(|_| !type_str.uses_pickled_array())
        .ok_or_else(|| {
            format_error(
                path,
                format!("dtype {type_str} has no fixed size per value"),
            )
        })?;
    let shape = header
        .shape()
        .iter()
        .map(|&d| usize::try_from(d).ok())
        .collect::<Option<Vec<usize>>>()
        .ok_or_else(|| format_error(path, "a dimension does not fit in memory"))?;
    let data_len = shape
        .iter()
        .try_fold(1_usize, |acc, &d| acc.checked_mul(d))
        .and_then(|count| count.checked_mul(item_size))
        .ok_or_else(|| format_error(path, format!("shape {shape:?} does not fit in memory")))?;
    let info = ArrayInfo {
        shape,
        dtype: type_str.to_string(),
        fortran_order: header.order() == Order::Fortran,
    };
    Ok(Parsed {
        info,
        header,
        type_str,
        item_size,
        data_offset,
        data_len,
    })
}

/// Refuses header texts that the `npyz` parser cannot handle safely: deep
/// nesting, escape sequences (which could hide a key), and shape literals
/// other than tuples of decimal integers or whose element count overflows.
fn check_header_text(text: &str) -> std::result::Result<(), String> {
    if text.contains('\\') {
        return Err("escape sequences in the header are not supported".into());
    }
    let mut depth = 0_usize;
    for c in text.chars() {
        match c {
            '(' | '[' | '{' => {
                depth += 1;
                if depth > MAX_HEADER_DEPTH {
                    return Err("the header nests too deeply".into());
                }
            }
            ')' | ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let mut from = 0;
    while let Some(found) = text[from..].find("shape") {
        let start = from + found;
        from = start + "shape".len();
        let quote = match start.checked_sub(1).map(|i| text.as_bytes()[i]) {
            Some(q @ (b'\'' | b'"')) => q as char,
            _ => continue,
        };
        let rest = &text[from..];
        if !rest.starts_with(quote) {
            continue;
        }
        let Some(rest) = rest
            .trim_start_matches(quote)
            .trim_start()
            .strip_prefix(':')
        else {
            continue;
        };
        let rest = rest.trim_start();
        let close = match rest.chars().next() {
            Some('(') => ')',
            Some('[') => ']',
            _ => continue,
        };
        let Some(end) = rest.find(close) else {
            continue;
        };
        let mut count = 1_u64;
        for item in rest[1..end].split(',').map(str::trim) {
            if item.is_empty() {
                continue;
            }
            let dim: u64 = item
                .parse()
                .map_err(|_| format!("unsupported dimension {item:?} in the shape"))?;
            if dim != 0 {
                count = count
                    .checked_mul(dim)
                    .ok_or_else(|| "the shape's element count overflows".to_string())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A `.npy` file with the given header dictionary and data bytes.
    fn npy_bytes(dict: &str, data: &[u8]) -> Vec<u8> {
        let mut text = dict.to_string();
        while !(10 + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&[1, 0]);
        bytes.extend_from_slice(&(text.len() as u16).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
        bytes.extend_from_slice(data);
        bytes
    }

    fn path() -> &'static Path {
        Path::new("memory.npy")
    }

    fn reason<V: std::fmt::Debug>(result: Result<V>) -> String {
        match result {
            Err(Error::Format { reason, .. }) => reason,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    #[test]
    fn big_endian_float32_is_read() {
        let values = [1.5_f32, -2.25, 3.0, 0.125, 7.0, -0.5];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
        let bytes = npy_bytes(
            "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }",
            &data,
        );
        let (shape, read) = decode_array::<f64>(&bytes, path()).unwrap();
        assert_eq!(shape, vec![2, 3]);
        let expected: Vec<f64> = values.iter().map(|&v| v as f64).collect();
        assert_eq!(read, expected);
    }

    #[test]
    fn float64_rounds_to_nearest_float32() {
        let values = [0.1_f64, 1.0 / 3.0];
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let bytes = npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        let (_, read) = decode_array::<f32>(&bytes, path()).unwrap();
        assert_eq!(read, vec![0.1_f32, 1.0_f32 / 3.0]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let data = [0_u8; 8];
        let fortran = npy_bytes(
            "{'descr': '<f4', 'fortran_order': True, 'shape': (1, 2), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&fortran, path())).contains("Fortran"));
        let ints = npy_bytes(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1,), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&ints, path())).contains("<i8"));
        let short = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&short, path())).contains("truncated"));
        let long = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&long, path())).contains("8 follow"));
        let huge = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (4294967296, 4294967296), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&huge, path())).contains("overflows"));
        let zero_huge = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0, 99999999999, 99999999999), }",
            &[],
        );
        assert!(reason(decode_array::<f32>(&zero_huge, path())).contains("overflows"));
        let hex = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (0x2,), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&hex, path())).contains("0x2"));
        let record = npy_bytes(
            "{'descr': [('a', '<f4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &data,
        );
        assert!(reason(decode_array::<f32>(&record, path())).contains("structured"));
        let nested = npy_bytes(&format!("{}{}", "(".repeat(200), ")".repeat(200)), &[]);
        assert!(reason(decode_array::<f32>(&nested, path())).contains("nests"));
        assert!(reason(decode_array::<f32>(b"PK\x03\x04", path())).contains("not an .npy"));
        let mut version = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        version[6] = 9;
        assert!(reason(decode_array::<f32>(&version, path())).contains("version 9.0"));
    }

    #[test]
    fn every_truncation_is_a_format_error() {
        let data: Vec<u8> = [1.0_f32, 2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = npy_bytes(
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        assert!(decode_array::<f32>(&bytes, path()).is_ok());
        for len in 0..bytes.len() {
            let message = reason(decode_array::<f32>(&bytes[..len], path()));
            assert!(
                message.contains("truncated") || message.contains("not an .npy"),
                "length {len}: {message}"
            );
        }
    }

    #[test]
    fn labels_accept_integer_types_and_refuse_negatives() {
        let bytes = npy_bytes(
            "{'descr': '|u1', 'fortran_order': False, 'shape': (3,), }",
            &[7, 2, 1],
        );
        let dir = std::env::temp_dir().join(format!("npy-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("u1.npy");
        std::fs::write(&file, &bytes).unwrap();
        assert_eq!(read_labels(&file).unwrap(), vec![7, 2, 1]);
        let data: Vec<u8> = [3_i64, -1].iter().flat_map(|v| v.to_be_bytes()).collect();
        let negative = npy_bytes(
            "{'descr': '>i8', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        std::fs::write(&file, &negative).unwrap();
        assert!(reason(read_labels(&file)).contains("label 1 is -1"));
        let data: Vec<u8> = [3_i64, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let two_d = npy_bytes(
            "{'descr': '<i8', 'fortran_order': False, 'shape': (1, 2), }",
            &data,
        );
        std::fs::write(&file, &two_d).unwrap();
        assert!(reason(read_labels(&file)).contains("1-d"));
        let floats = npy_bytes(
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }",
            &data,
        );
        std::fs::write(&file, &floats).unwrap();
        assert!(reason(read_labels(&file)).contains("integers"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_headers_never_panic(
            text in "\\{'descr': '[<>|][fiub][0-9]{1,3}', 'fortran_order': (True|False), \
                     'shape': \\(([0-9]{1,12}, ){0,4}\\), \\}",
            data in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let bytes = npy_bytes(&text, &data);
            let _ = decode_array::<f32>(&bytes, path());
        }

        #[test]
        fn arbitrary_bytes_never_panic(
            tail in proptest::collection::vec(any::<u8>(), 0..128),
            version in 1_u8..4,
        ) {
            let mut bytes = MAGIC.to_vec();
            bytes.extend_from_slice(&[version, 0]);
            bytes.extend_from_slice(&tail);
            let _ = decode_array::<f64>(&bytes, path());
        }
    }
}
