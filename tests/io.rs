//! File formats against the shared MNIST data and against damaged copies.
#![cfg(feature = "io")]

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::shared;
use score_machines::io::idx::{self, Split};
use score_machines::io::{npy, png as grid};
use score_machines::{Error, Image, Real, Shape};

/// A fresh empty folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("score-machines-io-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut bytes)
        .unwrap();
    bytes
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn format_reason<V: std::fmt::Debug>(result: score_machines::Result<V>, path: &Path) -> String {
    match result {
        Err(Error::Format { path: p, reason }) => {
            assert_eq!(p, path);
            reason
        }
        other => panic!(
            "expected a format error for {}, got {other:?}",
            path.display()
        ),
    }
}

/// The pixel value of byte `p` in the storage type, `(p / 255 - 0.5) / 0.5`,
/// as the `io::idx` module documentation defines it.
fn spec_pixel<T: Real>(p: u8) -> T {
    T::narrow((p as f64 / 255.0 - 0.5) / 0.5)
}

#[test]
fn mnist_test_images_and_labels() {
    let Some(mnist) = shared("mnist") else { return };
    let images = mnist.join("t10k-images-idx3-ubyte.gz");
    let set = idx::read_images::<f32>(&images).unwrap();
    assert_eq!(set.len(), 10_000);
    assert_eq!(set.shape(), Shape::new(1, 28, 28).unwrap());
    assert!(set.labels().is_none());
    let (lo, hi) = set.channel_range(0);
    assert_eq!((lo, hi), (-1.0, 1.0));
    // Byte values checked with Python's gzip module: image 0 has 185 at
    // (row 7, col 7) and 84 at (7, 6); image 9999 has 18 at (14, 14).
    assert_eq!(set.image(0)[7 * 28 + 7], spec_pixel::<f32>(185));
    assert_eq!(set.image(0)[7 * 28 + 6], spec_pixel::<f32>(84));
    assert_eq!(set.image(9999)[14 * 28 + 14], spec_pixel::<f32>(18));
    assert_eq!(set.image(0)[0], -1.0);

    let labels = idx::read_labels(mnist.join("t10k-labels-idx1-ubyte.gz")).unwrap();
    assert_eq!(labels.len(), 10_000);
    assert_eq!(&labels[..10], &[7, 2, 1, 0, 4, 1, 4, 9, 5, 9]);
    assert!(labels.iter().all(|&l| l < 10));

    let test = idx::read_mnist_dir::<f64>(&mnist, Split::Test).unwrap();
    assert_eq!(test.len(), 10_000);
    assert_eq!(test.labels().unwrap()[0], 7);
    assert_eq!(test.image(9999)[14 * 28 + 14], spec_pixel::<f64>(18));
    assert!(matches!(
        idx::read_mnist_dir::<f32>(&mnist, Split::Train),
        Err(Error::Io { .. })
    ));

    // No train files in the shared folder: rows come from the test split.
    let rows = idx::read_mnist_rows::<f32>(&mnist, 0..5000).unwrap();
    assert_eq!(rows.len(), 5000);
    assert_eq!(rows.labels().unwrap()[..3], [7, 2, 1]);
    assert_eq!(rows.image(0), set.image(0));
    let tail = idx::read_mnist_rows::<f32>(&mnist, 9998..10_000).unwrap();
    assert_eq!(tail.image(1), set.image(9999));
    assert!(matches!(
        idx::read_mnist_rows::<f32>(&mnist, 9990..10_001),
        Err(Error::InvalidParameter(_))
    ));
    assert!(matches!(
        idx::read_mnist_rows::<f32>(&mnist, 5..5),
        Err(Error::EmptyTrainingSet(_))
    ));
}

#[test]
fn damaged_idx_files_give_the_right_errors() {
    let Some(mnist) = shared("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let dir = scratch("damaged");
    let raw = gunzip(&mnist);
    assert_eq!(raw.len(), 7_840_016);

    let missing = dir.join("absent-idx3-ubyte");
    match idx::read_images::<f32>(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected an I/O error, got {other:?}"),
    }

    let file = dir.join("images");
    for len in [0, 3, 15, 16, 17, 1000, raw.len() - 1] {
        std::fs::write(&file, &raw[..len]).unwrap();
        let reason = format_reason(idx::read_images::<f32>(&file), &file);
        assert!(reason.contains("truncated"), "length {len}: {reason}");
    }
    let compressed = gzip(&raw);
    for len in [10, 100, compressed.len() / 2, compressed.len() - 4] {
        std::fs::write(&file, &compressed[..len]).unwrap();
        format_reason(idx::read_images::<f32>(&file), &file);
    }

    let mut wrong_magic = raw[..16 + 784].to_vec();
    wrong_magic[3] = 0x01;
    std::fs::write(&file, &wrong_magic).unwrap();
    let reason = format_reason(idx::read_images::<f32>(&file), &file);
    assert!(reason.contains("magic"), "{reason}");

    let mut wrong_dims = raw[..16 + 2 * 784].to_vec();
    wrong_dims[4..8].copy_from_slice(&3_u32.to_be_bytes());
    std::fs::write(&file, &wrong_dims).unwrap();
    let reason = format_reason(idx::read_images::<f32>(&file), &file);
    assert!(reason.contains("3 images of 28x28"), "{reason}");
    wrong_dims[4..8].copy_from_slice(&1_u32.to_be_bytes());
    std::fs::write(&file, &wrong_dims).unwrap();
    let reason = format_reason(idx::read_images::<f32>(&file), &file);
    assert!(reason.contains("more bytes follow"), "{reason}");
    let mut zero = raw[..16].to_vec();
    zero[4..8].copy_from_slice(&0_u32.to_be_bytes());
    std::fs::write(&file, &zero).unwrap();
    let reason = format_reason(idx::read_images::<f32>(&file), &file);
    assert!(reason.contains("zero images"), "{reason}");

    // A label file whose count disagrees with the image file.
    let mut images = raw[..16 + 3 * 784].to_vec();
    images[4..8].copy_from_slice(&3_u32.to_be_bytes());
    std::fs::write(&file, &images).unwrap();
    let labels = dir.join("labels");
    let mut label_bytes = 0x0000_0801_u32.to_be_bytes().to_vec();
    label_bytes.extend_from_slice(&2_u32.to_be_bytes());
    label_bytes.extend_from_slice(&[7, 2]);
    std::fs::write(&labels, gzip(&label_bytes)).unwrap();
    let reason = format_reason(idx::read_labelled::<f32>(&file, &labels), &labels);
    assert!(
        reason.contains("2 labels") && reason.contains("3 images"),
        "{reason}"
    );
    label_bytes[4..8].copy_from_slice(&3_u32.to_be_bytes());
    label_bytes.push(1);
    std::fs::write(&labels, &label_bytes).unwrap();
    let set = idx::read_labelled::<f32>(&file, &labels).unwrap();
    assert_eq!(set.labels(), Some(&[7, 2, 1][..]));

    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn folder_without_labels_gives_unlabelled_raw_split() {
    let Some(mnist) = shared("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let dir = scratch("folder");
    let raw = gunzip(&mnist);
    let mut head = raw[..16 + 100 * 784].to_vec();
    head[4..8].copy_from_slice(&100_u32.to_be_bytes());
    std::fs::write(dir.join(Split::Test.images_file()), &head).unwrap();
    let set = idx::read_mnist_dir::<f32>(&dir, Split::Test).unwrap();
    assert_eq!(set.len(), 100);
    assert!(set.labels().is_none());
    assert_eq!(set.image(0)[7 * 28 + 7], spec_pixel::<f32>(185));

    // With train files present, rows come from the train split.
    std::fs::write(
        dir.join("train-images-idx3-ubyte.gz"),
        gzip(&head[..16 + 100 * 784]),
    )
    .unwrap();
    let rows = idx::read_mnist_rows::<f64>(&dir, 1..3).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows.image(0),
        idx::read_images::<f64>(dir.join(Split::Test.images_file()))
            .unwrap()
            .image(1)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A folder with no MNIST image file is an `Error::Io` naming both splits'
/// files.
#[test]
fn a_folder_without_mnist_names_both_splits() {
    let dir = scratch("no-mnist");
    let error = idx::read_mnist_rows::<f32>(&dir, 0..1).unwrap_err();
    assert!(matches!(error, Error::Io { .. }), "{error:?}");
    let message = error.to_string();
    for file in [
        "train-images-idx3-ubyte",
        "train-images-idx3-ubyte.gz",
        "t10k-images-idx3-ubyte",
        "t10k-images-idx3-ubyte.gz",
    ] {
        assert!(message.contains(file), "{message}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn npy_round_trips_in_both_precisions() {
    let dir = scratch("npy");
    let shape = [2, 3, 4];
    let values: Vec<f64> = (0..24).map(|i| (i as f64 - 11.5) / 7.0).collect();
    let f64_file = dir.join("f64.npy");
    npy::write_array(&f64_file, &shape, &values).unwrap();
    let info = npy::read_info(&f64_file).unwrap();
    assert_eq!(info.shape, shape);
    assert!(info.is_float64() && !info.fortran_order);
    assert_eq!(
        npy::read_array::<f64>(&f64_file).unwrap(),
        (shape.to_vec(), values.clone())
    );

    let narrow: Vec<f32> = values.iter().map(|&v| v as f32).collect();
    let f32_file = dir.join("f32.npy");
    npy::write_array(&f32_file, &shape, &narrow).unwrap();
    assert_eq!(npy::read_info(&f32_file).unwrap().dtype, "<f4");
    assert_eq!(npy::read_array::<f32>(&f32_file).unwrap().1, narrow);
    let widened: Vec<f64> = narrow.iter().map(|&v| v as f64).collect();
    assert_eq!(npy::read_array::<f64>(&f32_file).unwrap().1, widened);
    // float64 read as f32 rounds to nearest.
    assert_eq!(npy::read_array::<f32>(&f64_file).unwrap().1, narrow);

    // Images: [B, C, H, W], and [B, H, W] read as one channel.
    let image_shape = Shape::new(2, 3, 2).unwrap();
    let images: Vec<Image<f32>> = (0..3)
        .map(|b| {
            let data = (0..12).map(|i| (b * 12 + i) as f32 * 0.25).collect();
            Image::from_vec(image_shape, data).unwrap()
        })
        .collect();
    let batch = dir.join("batch.npy");
    npy::write_images(&batch, &images).unwrap();
    assert_eq!(npy::read_info(&batch).unwrap().shape, vec![3, 2, 3, 2]);
    assert_eq!(npy::read_images::<f32>(&batch).unwrap(), images);
    let set = npy::read_training_set::<f64>(&batch).unwrap();
    assert_eq!((set.len(), set.shape()), (3, image_shape));
    assert_eq!(set.image(2)[11], 35.0 * 0.25);
    let gray = npy::read_images::<f32>(&f32_file).unwrap();
    assert_eq!(gray.len(), 2);
    assert_eq!(gray[1].shape(), Shape::new(1, 3, 4).unwrap());

    // Errors.
    assert!(matches!(
        npy::write_array(dir.join("bad.npy"), &[2, 2], &[1.0_f32; 3]),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        npy::read_array::<f32>(dir.join("absent.npy")),
        Err(Error::Io { .. })
    ));
    let flat = dir.join("flat.npy");
    npy::write_array(&flat, &[5], &[1.0_f32; 5]).unwrap();
    let reason = format_reason(npy::read_images::<f32>(&flat), &flat);
    assert!(reason.contains("[5]"), "{reason}");
    let empty = dir.join("empty.npy");
    npy::write_array::<f32>(&empty, &[0, 1, 2, 2], &[]).unwrap();
    assert!(npy::read_images::<f32>(&empty).unwrap().is_empty());
    assert!(matches!(
        npy::read_training_set::<f32>(&empty),
        Err(Error::EmptyTrainingSet(_))
    ));
    let nan = dir.join("nan.npy");
    npy::write_array(&nan, &[1, 1, 1, 2], &[0.0_f32, f32::NAN]).unwrap();
    let reason = format_reason(npy::read_training_set::<f32>(&nan), &nan);
    assert!(reason.contains("NaN"), "{reason}");
    let bytes = std::fs::read(&f32_file).unwrap();
    for len in [0, 5, 9, 40, bytes.len() - 1] {
        std::fs::write(&nan, &bytes[..len]).unwrap();
        let reason = format_reason(npy::read_array::<f32>(&nan), &nan);
        assert!(reason.contains("truncated"), "length {len}: {reason}");
        let reason = format_reason(npy::read_info(&nan), &nan);
        assert!(reason.contains("truncated"), "length {len}: {reason}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn recorded_network_outputs_read_as_images() {
    let Some(file) = shared("cnn-mnist/zeros/final.npy") else {
        return;
    };
    let info = npy::read_info(&file).unwrap();
    assert_eq!(info.shape, vec![32, 1, 28, 28]);
    assert_eq!(info.dtype, "<f4");
    let images = npy::read_images::<f32>(&file).unwrap();
    assert_eq!(images.len(), 32);
    // Values checked with Python's struct module.
    assert_eq!(images[0].get(0, 0, 0), -1.003_732_1);
    assert_eq!(images[5].get(0, 14, 14), 0.909_816_5);
}

#[test]
fn png_grid_of_digits_keeps_the_bytes() {
    let Some(mnist) = shared("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let dir = scratch("png");
    let raw = gunzip(&mnist);
    let set = idx::read_mnist_rows::<f32>(mnist.parent().unwrap(), 0..6).unwrap();
    let images: Vec<Image<f32>> = (0..set.len()).map(|i| set.to_image(i)).collect();
    let options = grid::GridOptions {
        columns: Some(3),
        scale: 2,
        padding: 2,
        ..grid::GridOptions::default()
    };
    let file = dir.join("grid.png");
    grid::write_grid(&file, &images, &options).unwrap();

    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&file).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Grayscale);
    let (width, height) = (info.width as usize, info.height as usize);
    assert_eq!((width, height), (3 * 56 + 4 * 2, 2 * 56 + 3 * 2));
    // With the range (-1, 1), every drawn pixel is the original byte.
    for index in [0, 4] {
        let (top, left) = (2 + (index / 3) * 58, 2 + (index % 3) * 58);
        for row in 0..28 {
            for col in 0..28 {
                let byte = raw[16 + index * 784 + row * 28 + col];
                for (dy, dx) in [(0, 0), (1, 1)] {
                    let y = top + 2 * row + dy;
                    let x = left + 2 * col + dx;
                    assert_eq!(buf[y * width + x], byte, "image {index} ({row}, {col})");
                }
            }
        }
    }
    assert_eq!(buf[0], 128);
    assert_eq!(buf[(height - 1) * width + width - 1], 128);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The kind of the I/O error a reader gives for `path`.
fn io_kind<V: std::fmt::Debug>(
    result: score_machines::Result<V>,
    path: &Path,
) -> std::io::ErrorKind {
    match result {
        Err(Error::Io { path: p, source }) => {
            assert_eq!(p, path);
            source.kind()
        }
        other => panic!(
            "expected an I/O error for {}, got {other:?}",
            path.display()
        ),
    }
}

/// Every reader on one path, each giving an [`Error::Io`] of `kind`.
fn every_reader_refuses(path: &Path, kind: std::io::ErrorKind) {
    assert_eq!(io_kind(npy::read_array::<f32>(path), path), kind);
    assert_eq!(io_kind(npy::read_info(path), path), kind);
    assert_eq!(io_kind(npy::read_labels(path), path), kind);
    assert_eq!(io_kind(npy::read_images::<f32>(path), path), kind);
    assert_eq!(io_kind(npy::read_training_set::<f32>(path), path), kind);
    assert_eq!(io_kind(idx::read_images::<f32>(path), path), kind);
    assert_eq!(io_kind(idx::read_labels(path), path), kind);
}

#[test]
fn readers_refuse_devices_and_folders() {
    let folder = scratch("not-a-file");
    every_reader_refuses(&folder, std::io::ErrorKind::InvalidInput);
    // An endless device: without the check every reader would read until
    // memory runs out.
    let zero = Path::new("/dev/zero");
    if zero.exists() {
        every_reader_refuses(zero, std::io::ErrorKind::InvalidInput);
    }
    every_reader_refuses(&folder.join("absent.npy"), std::io::ErrorKind::NotFound);
    std::fs::remove_dir_all(&folder).ok();
}

#[cfg(unix)]
#[test]
fn readers_refuse_a_fifo_without_blocking() {
    let folder = scratch("fifo");
    let fifo = folder.join("pipe");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|status| status.success()) {
        println!("skipped: mkfifo is not available");
        return;
    }
    // Opening a FIFO for reading blocks until a writer opens it, so the
    // readers run on another thread; a reader that opens the FIFO never
    // reports, and the test fails instead of hanging.
    let (sender, receiver) = std::sync::mpsc::channel();
    let path = fifo.clone();
    std::thread::spawn(move || {
        every_reader_refuses(&path, std::io::ErrorKind::InvalidInput);
        sender.send(()).ok();
    });
    let finished = receiver.recv_timeout(std::time::Duration::from_secs(60));
    std::fs::remove_dir_all(&folder).ok();
    assert!(finished.is_ok(), "a reader blocked on a FIFO or panicked");
}
