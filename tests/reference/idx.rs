//! A minimal reader for gzip-compressed IDX image files (the MNIST format),
//! kept apart from the crate's own reader so that the two check each other.
//!
//! Layout after decompression: the magic number `0x00000803` (unsigned
//! bytes, three dimensions), then the image count, rows and columns as
//! big-endian `u32`, then one byte per pixel, image after image, row-major.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use flate2::read::GzDecoder;

/// The first `count` images of an IDX image file, each pixel byte `p`
/// mapped to `(p / 255 - 0.5) / 0.5`, in `[-1, 1]`; with the rows and
/// columns of one image.
///
/// # Panics
///
/// If the file cannot be read, is not an IDX image file, or holds fewer
/// than `count` images.
pub fn read_images(path: &Path, count: usize) -> (usize, usize, Vec<Vec<f64>>) {
    let file = File::open(path).unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
    let mut reader = GzDecoder::new(BufReader::new(file));
    let mut header = [0_u8; 16];
    reader
        .read_exact(&mut header)
        .expect("IDX header of 16 bytes");
    let word = |i: usize| u32::from_be_bytes(header[4 * i..4 * i + 4].try_into().unwrap()) as usize;
    assert_eq!(word(0), 0x0803, "not an IDX file of unsigned-byte images");
    let (available, rows, cols) = (word(1), word(2), word(3));
    assert!(
        count <= available,
        "{count} images asked, {available} stored"
    );
    let mut bytes = vec![0_u8; count * rows * cols];
    reader.read_exact(&mut bytes).expect("IDX pixel data");
    let images = bytes
        .chunks(rows * cols)
        .map(|image| {
            image
                .iter()
                .map(|&p| (p as f64 / 255.0 - 0.5) / 0.5)
                .collect()
        })
        .collect();
    (rows, cols, images)
}
