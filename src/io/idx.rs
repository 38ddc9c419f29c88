//! IDX files, the format in which MNIST and Fashion-MNIST are distributed.
//!
//! An IDX file is a big-endian header followed by the values:
//!
//! ```text
//! images (idx3-ubyte): magic 0x00000803, count N, rows H, columns W, then N*H*W bytes
//! labels (idx1-ubyte): magic 0x00000801, count N, then N bytes
//! ```
//!
//! A file may be stored raw or gzip-compressed; compression is recognised by
//! the gzip magic bytes `1f 8b` at the start of the file, not by its name.
//! A pixel byte `p` becomes the value `(p / 255 - 0.5) / 0.5` in `[-1, 1]`
//! (see [`byte_to_pixel`]), computed in `f64` and then rounded to the
//! storage type.
//!
//! # Example
//!
//! ```no_run
//! use score_machines::io::idx::{self, Split};
//!
//! // A folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz.
//! let test = idx::read_mnist_dir::<f32>("data/mnist", Split::Test)?;
//! assert_eq!(test.shape().height, 28);
//! // The first 5,000 rows of the train split (or of the test split if the
//! // folder has no train files).
//! let subset = idx::read_mnist_rows::<f32>("data/mnist", 0..5000)?;
//! assert_eq!(subset.len(), 5000);
//! # Ok::<(), score_machines::Error>(())
//! ```

use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use super::{format_error, io_error, read_file};
use crate::error::{Error, Result};
use crate::image::Shape;
use crate::real::Real;
use crate::training::TrainingSet;

/// Magic number of an IDX file of unsigned bytes with 3 dimensions (images).
pub const IMAGES_MAGIC: u32 = 0x0000_0803;

/// Magic number of an IDX file of unsigned bytes with 1 dimension (labels).
pub const LABELS_MAGIC: u32 = 0x0000_0801;

/// The first two bytes of every gzip stream.
const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// The value of a pixel byte: `(p / 255 - 0.5) / 0.5`, which maps 0 to -1
/// and 255 to 1.
///
/// # Example
///
/// ```
/// use score_machines::io::idx::byte_to_pixel;
/// assert_eq!(byte_to_pixel(0), -1.0);
/// assert_eq!(byte_to_pixel(255), 1.0);
/// ```
pub fn byte_to_pixel(p: u8) -> f64 {
    (p as f64 / 255.0 - 0.5) / 0.5
}

/// Which half of the MNIST distribution to read from a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Split {
    /// The training split: `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`.
    Train,
    /// The test split: `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte`.
    Test,
}

impl Split {
    /// File name of the split's images, without the optional `.gz`.
    pub fn images_file(self) -> &'static str {
        match self {
            Split::Train => "train-images-idx3-ubyte",
            Split::Test => "t10k-images-idx3-ubyte",
        }
    }

    /// File name of the split's labels, without the optional `.gz`.
    pub fn labels_file(self) -> &'static str {
        match self {
            Split::Train => "train-labels-idx1-ubyte",
            Split::Test => "t10k-labels-idx1-ubyte",
        }
    }
}

/// Reads an IDX image file (magic `0x00000803`, raw or gzip) as a training
/// set of one-channel images without labels; pixel byte `p` becomes
/// `(p / 255 - 0.5) / 0.5`.
///
/// # Errors
///
/// - [`Error::Io`] if the file cannot be read (for example, it does not
///   exist) or is not a regular file (a folder, device, FIFO or socket);
/// - [`Error::Format`] if it is truncated, its gzip stream is corrupt, its
///   magic number is not `0x00000803`, its header declares zero images or
///   zero-sized images, or the declared dimensions disagree with the number
///   of pixel bytes.
pub fn read_images<T: Real>(path: impl AsRef<Path>) -> Result<TrainingSet<T>> {
    let path = path.as_ref();
    let file = ImageFile::read(path)?;
    file.to_training_set(path, None, None)
}

/// Reads an IDX label file (magic `0x00000801`, raw or gzip): one class
/// label per byte.
///
/// # Errors
///
/// [`Error::Io`] if the file cannot be read or is not a regular file;
/// [`Error::Format`] if it is truncated, its gzip stream is corrupt, its
/// magic number is not `0x00000801`, it declares zero labels, or the declared count disagrees
/// with the number of bytes.
pub fn read_labels(path: impl AsRef<Path>) -> Result<Vec<usize>> {
    let path = path.as_ref();
    let raw = read_file(path)?;
    decode_labels(&raw, path)
}

/// Reads an IDX image file and its label file as one labelled training set.
///
/// # Errors
///
/// As [`read_images`] and [`read_labels`] for each file, and
/// [`Error::Format`] naming the label file if the two files hold different
/// numbers of items.
pub fn read_labelled<T: Real>(
    images: impl AsRef<Path>,
    labels: impl AsRef<Path>,
) -> Result<TrainingSet<T>> {
    let (images, labels) = (images.as_ref(), labels.as_ref());
    let file = ImageFile::read(images)?;
    let labels_vec = read_labels(labels)?;
    file.to_training_set(images, Some((labels.to_path_buf(), labels_vec)), None)
}

/// Reads one split of MNIST (or Fashion-MNIST) from a folder holding the
/// files of the original distribution, each raw or with a `.gz` suffix (the
/// raw file is preferred when both exist). The labels are attached when the
/// split's label file exists; without it the set has no labels.
///
/// # Errors
///
/// [`Error::Io`] if the split's image file is absent or unreadable; as
/// [`read_labelled`] otherwise.
pub fn read_mnist_dir<T: Real>(dir: impl AsRef<Path>, split: Split) -> Result<TrainingSet<T>> {
    let dir = dir.as_ref();
    let images = find(dir, split.images_file()).ok_or_else(|| missing(dir, split))?;
    let file = ImageFile::read(&images)?;
    let labels = split_labels(dir, split)?;
    file.to_training_set(&images, labels, None)
}

/// Reads rows `rows` (image indices, end exclusive) of the train split in a
/// folder, or of the test split if the folder has no train image file, as
/// [`read_mnist_dir`] does; only the requested rows are converted.
///
/// # Errors
///
/// - [`Error::EmptyTrainingSet`] if `rows` is empty;
/// - [`Error::InvalidParameter`] if `rows` reaches past the last image;
/// - as [`read_mnist_dir`] otherwise; [`Error::Io`] if the folder has
///   neither image file (or is a file).
///
/// # Example
///
/// ```no_run
/// use score_machines::io::idx;
/// use score_machines::TrainingSet;
///
/// // The first 1,000 digits, pixels in [-1, 1], with their labels when
/// // the label file is there too.
/// let digits: TrainingSet<f32> = idx::read_mnist_rows("../shared/data/mnist", 0..1000)?;
/// assert_eq!(digits.len(), 1000);
/// # Ok::<(), score_machines::Error>(())
/// ```
pub fn read_mnist_rows<T: Real>(
    dir: impl AsRef<Path>,
    rows: Range<usize>,
) -> Result<TrainingSet<T>> {
    let dir = dir.as_ref();
    if rows.is_empty() {
        return Err(Error::EmptyTrainingSet(format!(
            " (empty row range {}..{})",
            rows.start, rows.end
        )));
    }
    let (split, images) = match find(dir, Split::Train.images_file()) {
        Some(path) => (Split::Train, path),
        None => match find(dir, Split::Test.images_file()) {
            Some(path) => (Split::Test, path),
            None => return Err(missing_both(dir)),
        },
    };
    let file = ImageFile::read(&images)?;
    if rows.end > file.count {
        return Err(Error::InvalidParameter(format!(
            "rows {}..{} requested, but {} holds {} images",
            rows.start,
            rows.end,
            images.display(),
            file.count
        )));
    }
    let labels = split_labels(dir, split)?;
    file.to_training_set(&images, labels, Some(rows))
}

/// `dir/name` if it is a file, else `dir/name.gz` if that is one.
fn find(dir: &Path, name: &str) -> Option<PathBuf> {
    [name.to_string(), format!("{name}.gz")]
        .into_iter()
        .map(|file| dir.join(file))
        .find(|path| path.is_file())
}

/// The error for a split whose image file is absent.
fn missing(dir: &Path, split: Split) -> Error {
    if let Some(error) = not_a_folder(dir) {
        return error;
    }
    let name = split.images_file();
    io_error(
        &dir.join(name),
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("neither {name} nor {name}.gz exists in {}", dir.display()),
        ),
    )
}

/// The error for a path that is a file, not a folder; `None` otherwise.
fn not_a_folder(path: &Path) -> Option<Error> {
    path.is_file().then(|| {
        io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::NotADirectory,
                "this is a file; pass the folder that holds the IDX files",
            ),
        )
    })
}

/// The error for a folder with neither split's image file.
fn missing_both(dir: &Path) -> Error {
    if let Some(error) = not_a_folder(dir) {
        return error;
    }
    let (train, test) = (Split::Train.images_file(), Split::Test.images_file());
    io_error(
        dir,
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no MNIST image file: none of {train}, {train}.gz, {test} or {test}.gz \
                 exists in {}",
                dir.display()
            ),
        ),
    )
}

/// The labels of a split, if its label file exists.
fn split_labels(dir: &Path, split: Split) -> Result<Option<(PathBuf, Vec<usize>)>> {
    match find(dir, split.labels_file()) {
        Some(path) => {
            let labels = read_labels(&path)?;
            Ok(Some((path, labels)))
        }
        None => Ok(None),
    }
}

/// The bytes of an image file after its header.
#[derive(Debug)]
struct ImageFile {
    count: usize,
    shape: Shape,
    pixels: Vec<u8>,
}

impl ImageFile {
    fn read(path: &Path) -> Result<Self> {
        let raw = read_file(path)?;
        Self::decode(&raw, path)
    }

    fn decode(raw: &[u8], path: &Path) -> Result<Self> {
        let mut stream = decompressed(raw);
        let mut header = [0_u8; 16];
        read_header(
            &mut stream,
            &mut header,
            IMAGES_MAGIC,
            "an image file",
            path,
        )?;
        let (count, height, width) = (
            be_u32(&header[4..8]),
            be_u32(&header[8..12]),
            be_u32(&header[12..16]),
        );
        if count == 0 {
            return Err(format_error(path, "the header declares zero images"));
        }
        if height == 0 || width == 0 {
            return Err(format_error(
                path,
                format!("the header declares images of {height}x{width} pixels"),
            ));
        }
        let declared = format!("{count} images of {height}x{width} pixels");
        let expected = [count, height, width]
            .iter()
            .try_fold(1_usize, |acc, &d| acc.checked_mul(usize::try_from(d).ok()?))
            .ok_or_else(|| format_error(path, format!("{declared} do not fit in memory")))?;
        let pixels = read_body(stream, expected, &declared, path)?;
        let shape = Shape::new(1, height as usize, width as usize)?;
        Ok(ImageFile {
            count: count as usize,
            shape,
            pixels,
        })
    }

    /// The images (all, or the rows in `rows`, already checked to be in
    /// range) with the labels of `labels` (whose count is checked here).
    fn to_training_set<T: Real>(
        &self,
        path: &Path,
        labels: Option<(PathBuf, Vec<usize>)>,
        rows: Option<Range<usize>>,
    ) -> Result<TrainingSet<T>> {
        let rows = rows.unwrap_or(0..self.count);
        let labels = match labels {
            Some((labels_path, labels)) => {
                if labels.len() != self.count {
                    return Err(format_error(
                        &labels_path,
                        format!(
                            "it holds {} labels, but the image file {} holds {} images",
                            labels.len(),
                            path.display(),
                            self.count
                        ),
                    ));
                }
                Some(labels[rows.clone()].to_vec())
            }
            None => None,
        };
        let table: Vec<T> = (0..=255_u8).map(|p| T::narrow(byte_to_pixel(p))).collect();
        let len = self.shape.len();
        let data = self.pixels[rows.start * len..rows.end * len]
            .iter()
            .map(|&p| table[p as usize])
            .collect();
        TrainingSet::new(self.shape, data, labels)
    }
}

fn decode_labels(raw: &[u8], path: &Path) -> Result<Vec<usize>> {
    let mut stream = decompressed(raw);
    let mut header = [0_u8; 8];
    read_header(&mut stream, &mut header, LABELS_MAGIC, "a label file", path)?;
    let count = be_u32(&header[4..8]);
    if count == 0 {
        return Err(format_error(path, "the header declares zero labels"));
    }
    let declared = format!("{count} labels");
    let expected = usize::try_from(count)
        .map_err(|_| format_error(path, format!("{declared} do not fit in memory")))?;
    let bytes = read_body(stream, expected, &declared, path)?;
    Ok(bytes.into_iter().map(usize::from).collect())
}

/// The file's bytes, decompressed on the fly if they start with the gzip
/// magic.
fn decompressed(raw: &[u8]) -> Box<dyn Read + '_> {
    if raw.starts_with(&GZIP_MAGIC) {
        Box::new(MultiGzDecoder::new(raw))
    } else {
        Box::new(raw)
    }
}

/// A read error inside an in-memory stream: the gzip stream is corrupt or
/// ends early.
fn stream_error(path: &Path, error: std::io::Error) -> Error {
    if error.kind() == std::io::ErrorKind::UnexpectedEof {
        format_error(path, format!("truncated gzip stream ({error})"))
    } else {
        format_error(path, format!("corrupt gzip stream ({error})"))
    }
}

/// Reads the header: its magic number must be `magic` and it must be
/// complete (`header.len()` bytes).
fn read_header(
    stream: &mut dyn Read,
    header: &mut [u8],
    magic: u32,
    what: &str,
    path: &Path,
) -> Result<()> {
    let mut filled = 0;
    while filled < header.len() {
        match stream.read(&mut header[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(stream_error(path, e)),
        }
    }
    if filled >= 4 && be_u32(&header[0..4]) != magic {
        return Err(wrong_magic(path, be_u32(&header[0..4]), magic, what));
    }
    if filled < header.len() {
        return Err(format_error(
            path,
            format!(
                "truncated: the header needs {} bytes, the file has {filled}",
                header.len()
            ),
        ));
    }
    Ok(())
}

/// Reads exactly `expected` bytes and checks that nothing follows.
fn read_body(stream: impl Read, expected: usize, declared: &str, path: &Path) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    let limit = (expected as u64).saturating_add(1);
    stream
        .take(limit)
        .read_to_end(&mut body)
        .map_err(|e| stream_error(path, e))?;
    if body.len() < expected {
        return Err(format_error(
            path,
            format!(
                "truncated: the header declares {declared} ({expected} bytes), \
                 only {} bytes follow it",
                body.len()
            ),
        ));
    }
    if body.len() > expected {
        return Err(format_error(
            path,
            format!(
                "the header declares {declared} ({expected} bytes), \
                 but more bytes follow it"
            ),
        ));
    }
    Ok(body)
}

fn be_u32(bytes: &[u8]) -> u32 {
    u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn wrong_magic(path: &Path, found: u32, expected: u32, what: &str) -> Error {
    let hint = match found {
        IMAGES_MAGIC => " (this is an image file)",
        LABELS_MAGIC => " (this is a label file)",
        _ if found >> 16 == 0x1f8b => " (a gzip stream)",
        _ => "",
    };
    format_error(
        path,
        format!("wrong magic number 0x{found:08x}{hint}: {what} starts with 0x{expected:08x}"),
    )
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;
    use proptest::prelude::*;

    use super::*;

    fn idx_images(count: u32, height: u32, width: u32, pixels: &[u8]) -> Vec<u8> {
        let mut bytes = IMAGES_MAGIC.to_be_bytes().to_vec();
        for d in [count, height, width] {
            bytes.extend_from_slice(&d.to_be_bytes());
        }
        bytes.extend_from_slice(pixels);
        bytes
    }

    fn idx_labels(labels: &[u8]) -> Vec<u8> {
        let mut bytes = LABELS_MAGIC.to_be_bytes().to_vec();
        bytes.extend_from_slice(&(labels.len() as u32).to_be_bytes());
        bytes.extend_from_slice(labels);
        bytes
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        let pixels: Vec<u8> = (0..3 * 2 * 4).map(|i| (i * 11) as u8).collect();
        idx_images(3, 2, 4, &pixels)
    }

    fn reason(result: Result<impl std::fmt::Debug>) -> String {
        match result {
            Err(Error::Format { reason, .. }) => reason,
            other => panic!("expected a format error, got {other:?}"),
        }
    }

    fn path() -> &'static Path {
        Path::new("memory.idx")
    }

    #[test]
    fn raw_and_gzip_decode_to_the_same_pixels() {
        let raw = sample();
        for bytes in [raw.clone(), gzip(&raw)] {
            let file = ImageFile::decode(&bytes, path()).unwrap();
            let set: TrainingSet<f64> = file.to_training_set(path(), None, None).unwrap();
            assert_eq!(set.len(), 3);
            assert_eq!(set.shape(), Shape::new(1, 2, 4).unwrap());
            for (i, &v) in set.as_slice().iter().enumerate() {
                assert_eq!(v, byte_to_pixel((i * 11) as u8));
            }
        }
    }

    #[test]
    fn pixel_map_is_the_spec_formula() {
        assert_eq!(byte_to_pixel(0), -1.0);
        assert_eq!(byte_to_pixel(255), 1.0);
        assert_eq!(byte_to_pixel(51), (51.0 / 255.0 - 0.5) / 0.5);
        let table: Vec<f32> = (0..=255).map(|p| f32::narrow(byte_to_pixel(p))).collect();
        assert!(table.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn rows_select_a_slice_with_their_labels() {
        let file = ImageFile::decode(&sample(), path()).unwrap();
        let labels = Some((PathBuf::from("l"), vec![4, 5, 6]));
        let set: TrainingSet<f32> = file.to_training_set(path(), labels, Some(1..3)).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.labels(), Some(&[5, 6][..]));
        assert_eq!(set.image(0)[0], f32::narrow(byte_to_pixel(88)));
    }

    #[test]
    fn label_count_must_match_image_count() {
        let file = ImageFile::decode(&sample(), path()).unwrap();
        let labels = Some((PathBuf::from("labels.idx"), vec![1, 2]));
        let message = reason(file.to_training_set::<f32>(path(), labels, None));
        assert!(
            message.contains("2 labels") && message.contains("3 images"),
            "{message}"
        );
    }

    #[test]
    fn labels_decode_raw_and_gzip() {
        let raw = idx_labels(&[7, 2, 1, 0]);
        assert_eq!(decode_labels(&raw, path()).unwrap(), vec![7, 2, 1, 0]);
        assert_eq!(
            decode_labels(&gzip(&raw), path()).unwrap(),
            vec![7, 2, 1, 0]
        );
    }

    #[test]
    fn every_truncation_is_a_format_error() {
        let raw = sample();
        for len in 0..raw.len() {
            let message = reason(ImageFile::decode(&raw[..len], path()));
            assert!(message.contains("truncated"), "length {len}: {message}");
        }
        let compressed = gzip(&raw);
        for len in 2..compressed.len() {
            let result = ImageFile::decode(&compressed[..len], path());
            assert!(
                matches!(result, Err(Error::Format { .. })),
                "gzip length {len}"
            );
        }
        let labels = idx_labels(&[1, 2, 3]);
        for len in 0..labels.len() {
            let message = reason(decode_labels(&labels[..len], path()));
            assert!(message.contains("truncated"), "length {len}: {message}");
        }
    }

    #[test]
    fn wrong_magic_names_both_numbers() {
        let message = reason(ImageFile::decode(&idx_labels(&[1, 2]), path()));
        assert!(message.contains("0x00000801") && message.contains("0x00000803"));
        assert!(message.contains("label file"), "{message}");
        let message = reason(decode_labels(&sample(), path()));
        assert!(message.contains("image file"), "{message}");
        let mut signed = sample();
        signed[2] = 0x09;
        let message = reason(ImageFile::decode(&signed, path()));
        assert!(message.contains("0x00000903"), "{message}");
    }

    #[test]
    fn dimensions_must_agree_with_the_data() {
        let pixels = vec![0_u8; 24];
        let message = reason(ImageFile::decode(&idx_images(4, 2, 4, &pixels), path()));
        assert!(message.contains("truncated") && message.contains("32 bytes"));
        let message = reason(ImageFile::decode(&idx_images(2, 2, 4, &pixels), path()));
        assert!(message.contains("more bytes follow"), "{message}");
        let message = reason(ImageFile::decode(&idx_images(0, 2, 4, &[]), path()));
        assert!(message.contains("zero images"), "{message}");
        let message = reason(ImageFile::decode(&idx_images(1, 0, 4, &[]), path()));
        assert!(message.contains("0x4"), "{message}");
        let huge = idx_images(u32::MAX, u32::MAX, u32::MAX, &pixels);
        assert!(matches!(
            ImageFile::decode(&huge, path()),
            Err(Error::Format { .. })
        ));
        let message = reason(decode_labels(&idx_labels(&[]), path()));
        assert!(message.contains("zero labels"), "{message}");
    }

    #[test]
    fn garbage_after_gzip_magic_is_a_format_error() {
        let message = reason(ImageFile::decode(
            &[0x1f, 0x8b, 0, 1, 2, 3, 4, 5, 6, 7],
            path(),
        ));
        assert!(message.contains("gzip"), "{message}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = ImageFile::decode(&bytes, path());
            let _ = decode_labels(&bytes, path());
        }

        #[test]
        fn garbled_files_never_panic(
            position in 0_usize..40,
            value in any::<u8>(),
            cut in 0_usize..48,
            compress in any::<bool>(),
        ) {
            let mut bytes = sample();
            let position = position % bytes.len();
            bytes[position] = value;
            bytes.truncate(bytes.len() - cut % bytes.len());
            let bytes = if compress { gzip(&bytes) } else { bytes };
            if let Ok(file) = ImageFile::decode(&bytes, path()) {
                prop_assert_eq!(file.pixels.len(), file.count * file.shape.len());
            }
            let _ = decode_labels(&bytes, path());
        }
    }
}
