//! File formats: IDX (the MNIST distribution format), NumPy `.npy` arrays
//! and PNG image grids.
//!
//! This module exists with the `io` cargo feature, which is on by default.
//!
//! - [`idx`] reads MNIST and Fashion-MNIST image and label files, raw or
//!   gzip-compressed, mapping a pixel byte `p` to `(p / 255 - 0.5) / 0.5`
//!   in `[-1, 1]`;
//! - [`npy`] reads and writes C-order `.npy` arrays of `float32` or
//!   `float64` (with the `npyz` crate), and reads integer label arrays;
//! - [`png`] draws a batch of images as one 8-bit PNG grid (with the `png`
//!   crate).
//!
//! Every reader checks what it reads: a missing file gives
//! [`Error::Io`] with the path, and a file whose content is not what its
//! format requires gives [`Error::Format`] with the path and the problem
//! (truncated, wrong magic number, dimensions that disagree with the data
//! length, unsupported element type). No byte sequence makes a reader
//! panic.

use std::path::Path;

use crate::error::{Error, Result};

pub mod idx;
pub mod npy;
pub mod png;

/// [`Error::Io`] for `path`.
fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// [`Error::Format`] for `path`.
fn format_error(path: &Path, reason: impl Into<String>) -> Error {
    Error::Format {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The whole content of a file.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|source| io_error(path, source))
}
