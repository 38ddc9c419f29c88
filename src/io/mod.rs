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
//!
//! Readers open only regular files: a folder, a device such as
//! `/dev/zero`, a FIFO or a socket gives [`Error::Io`] (kind
//! `InvalidInput`, "not a regular file") before anything is read, so that
//! no reader blocks on a pipe or reads an endless stream. A reader never
//! reads more bytes than the file's length when it was opened.

use std::fs::File;
use std::io::Read;
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

/// [`Error::Io`] for a path that exists but is not a regular file.
fn not_regular(path: &Path) -> Error {
    io_error(
        path,
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file (a folder, device, FIFO or socket cannot be read)",
        ),
    )
}

/// Opens a regular file for reading and returns it with its length in
/// bytes.
///
/// The path is checked before it is opened, since opening a FIFO blocks
/// until a writer appears, and the opened file is checked again.
fn open_regular(path: &Path) -> Result<(File, u64)> {
    let metadata = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !metadata.is_file() {
        return Err(not_regular(path));
    }
    let file = File::open(path).map_err(|e| io_error(path, e))?;
    let metadata = file.metadata().map_err(|e| io_error(path, e))?;
    if !metadata.is_file() {
        return Err(not_regular(path));
    }
    Ok((file, metadata.len()))
}

/// The whole content of a regular file, at most as many bytes as its
/// length when it was opened.
fn read_file(path: &Path) -> Result<Vec<u8>> {
    let (file, len) = open_regular(path)?;
    let mut bytes = Vec::new();
    let capacity = usize::try_from(len).unwrap_or(usize::MAX);
    bytes.try_reserve_exact(capacity).map_err(|_| {
        io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::OutOfMemory,
                format!("the file holds {len} bytes, more than fit in memory"),
            ),
        )
    })?;
    file.take(len)
        .read_to_end(&mut bytes)
        .map_err(|e| io_error(path, e))?;
    Ok(bytes)
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// The error kind of a failed read.
    fn io_kind(result: Result<Vec<u8>>) -> std::io::ErrorKind {
        match result {
            Err(Error::Io { source, .. }) => source.kind(),
            other => panic!("expected an I/O error, got {other:?}"),
        }
    }

    #[test]
    fn devices_and_folders_are_not_read() {
        for path in ["/dev/zero", "/dev/null", "/"] {
            let path = Path::new(path);
            if path.exists() {
                assert_eq!(
                    io_kind(read_file(path)),
                    std::io::ErrorKind::InvalidInput,
                    "{}",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let path = std::env::temp_dir().join(format!("io-read-file-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        let bytes = read_file(&path);
        std::fs::remove_file(&path).ok();
        assert_eq!(bytes.unwrap(), b"abc");
    }
}
