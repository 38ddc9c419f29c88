//! The floating-point types the crate works in.

use std::fmt::{Debug, Display};
use std::iter::Sum;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
}

/// A floating-point pixel type: `f32` or `f64`.
///
/// Images and training sets store pixels in this type; machines accumulate
/// distances and softmax sums in `f64` whatever the storage type, so the
/// storage type decides memory and input precision, not the accuracy of the
/// arithmetic. The trait is sealed.
pub trait Real:
    num_traits::Float
    + nalgebra::Scalar
    + Default
    + Debug
    + Display
    + Sum
    + Send
    + Sync
    + sealed::Sealed
    + 'static
{
    /// The name of the type, `"f32"` or `"f64"`.
    const NAME: &'static str;

    /// Converts from `f64`, rounding to nearest (exact for `f64`).
    fn narrow(value: f64) -> Self;

    /// Converts to `f64`, exactly.
    fn widen(self) -> f64;

    /// The slice as `f32`, when `Self` is `f32` (selects the `f32` kernels).
    #[doc(hidden)]
    fn as_f32(values: &[Self]) -> Option<&[f32]>;

    /// The largest worst-case error of a softmax exponent `beta d` that
    /// sliding window sums may cause before a machine over this type sums
    /// distances directly instead (see docs/precision.md).
    #[doc(hidden)]
    const SLIDING_EXPONENT_ERROR: f64;
}

impl Real for f32 {
    const NAME: &'static str = "f32";
    const SLIDING_EXPONENT_ERROR: f64 = 1e-4;

    #[inline]
    fn narrow(value: f64) -> Self {
        value as f32
    }

    #[inline]
    fn widen(self) -> f64 {
        self as f64
    }

    fn as_f32(values: &[Self]) -> Option<&[f32]> {
        Some(values)
    }
}

impl Real for f64 {
    const NAME: &'static str = "f64";
    const SLIDING_EXPONENT_ERROR: f64 = 1e-7;

    #[inline]
    fn narrow(value: f64) -> Self {
        value
    }

    #[inline]
    fn widen(self) -> f64 {
        self
    }

    fn as_f32(_values: &[Self]) -> Option<&[f32]> {
        None
    }
}
