//! The crate's error type.

use std::path::PathBuf;

/// Everything that can go wrong when building or evaluating a machine,
/// sampling, or reading and writing files.
///
/// Every public function that can fail on bad input returns this type; none
/// of them panics on bad input.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Two shapes that must agree do not.
    #[error("shape mismatch: {what}: expected {expected}, got {found}")]
    ShapeMismatch {
        /// What was being checked.
        what: &'static str,
        /// The shape that was required.
        expected: String,
        /// The shape that was given.
        found: String,
    },

    /// A shape with a zero dimension, or a buffer whose length does not fit it.
    #[error("invalid shape: {0}")]
    InvalidShape(String),

    /// A training set (or a class of it) with no images.
    #[error("empty training set{0}")]
    EmptyTrainingSet(String),

    /// A patch side that is even or zero.
    #[error("patch side must be odd and at least 1, got {0}")]
    InvalidPatchSide(usize),

    /// A window with no pixel, or a weight that is negative or not finite.
    #[error("invalid window: {0}")]
    InvalidWindow(String),

    /// No candidate patch exists for some output pixel (for example a patch
    /// larger than the image under the reference periodic semantics).
    #[error("no candidate patch: {0}")]
    NoCandidates(String),

    /// A time outside `[0, 1]`, or a time at which the requested quantity is
    /// undefined (the score at a time where `s(t) = 0`).
    #[error("invalid time t = {}: {reason}", CompactTime(*.t))]
    InvalidTime {
        /// The time given.
        t: f64,
        /// Why it is not allowed.
        reason: &'static str,
    },

    /// A NaN or infinite value where finite numbers are required.
    #[error("non-finite value in {0}")]
    NonFinite(&'static str),

    /// A class label that no training image carries, or a class requested
    /// from a training set without labels.
    #[error("unknown class {0}")]
    UnknownClass(usize),

    /// A parameter outside its allowed range.
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),

    /// A file that cannot be opened, read, created or written.
    #[error("cannot access {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// A file whose content is not what its format requires.
    #[error("malformed file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A time for messages: plain decimals for `0` and for magnitudes from
/// `1e-4` to below `1e16`, scientific notation otherwise, so that an
/// extreme value prints in a few characters.
struct CompactTime(f64);

impl std::fmt::Display for CompactTime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let t = self.0;
        if t == 0.0 || !t.is_finite() || (1e-4..1e16).contains(&t.abs()) {
            write!(f, "{t}")
        } else {
            write!(f, "{t:e}")
        }
    }
}

impl Error {
    pub(crate) fn shape(what: &'static str, expected: impl ToString, found: impl ToString) -> Self {
        Error::ShapeMismatch {
            what,
            expected: expected.to_string(),
            found: found.to_string(),
        }
    }
}
