//! Which vector instructions the lane kernels run on.
//!
//! Every kernel is written once, generic over eight lanes of `f32` and
//! eight of `f64` ([`super::fast::Vector`], [`super::fast::Wide`]), and
//! compiled three times:
//!
//! | level | `f32` lanes | `f64` lanes | needs |
//! |---|---|---|---|
//! | [`Isa::Portable`] | arrays | arrays | nothing |
//! | [`Isa::Avx2`] | one 256-bit register | two 256-bit registers | AVX2, FMA |
//! | [`Isa::Avx512`] | one 256-bit register | one 512-bit register | AVX-512F, AVX2, FMA |
//!
//! The levels do the same operations lane by lane, so AVX2 and AVX-512
//! give bit-identical results; the portable lanes round the same products
//! without fused multiply-adds.
//!
//! The widest level the CPU supports is used, unless the environment
//! variable `SCORE_MACHINES_SIMD` names a lower one (`portable`, `avx2`
//! or `avx512`; it is read once, and any other value is ignored).

use std::sync::OnceLock;

/// An instruction set for the lane kernels, lowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Isa {
    /// Plain Rust on arrays of eight lanes.
    Portable,
    /// AVX2 and FMA.
    Avx2,
    /// AVX-512F, with AVX2 and FMA.
    Avx512,
}

/// The environment variable that caps the level.
const CAP_VARIABLE: &str = "SCORE_MACHINES_SIMD";

impl Isa {
    /// The level the kernels use: the widest the CPU supports, capped by
    /// `SCORE_MACHINES_SIMD`.
    pub(crate) fn detected() -> Isa {
        static LEVEL: OnceLock<Isa> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            let widest = Isa::widest_supported();
            match std::env::var(CAP_VARIABLE)
                .ok()
                .as_deref()
                .and_then(Isa::parse)
            {
                Some(cap) => cap.min(widest),
                None => widest,
            }
        })
    }

    /// Every level this CPU can run, lowest first.
    #[cfg(test)]
    pub(crate) fn available() -> Vec<Isa> {
        let widest = Isa::widest_supported();
        [Isa::Portable, Isa::Avx2, Isa::Avx512]
            .into_iter()
            .filter(|&isa| isa <= widest)
            .collect()
    }

    /// The level's name, as `SCORE_MACHINES_SIMD` spells it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(name: &str) -> Option<Isa> {
        match name.trim().to_ascii_lowercase().as_str() {
            "portable" => Some(Isa::Portable),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }

    fn widest_supported() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 =
                std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_cap() {
        assert_eq!(Isa::parse("AVX2"), Some(Isa::Avx2));
        assert_eq!(Isa::parse(" portable "), Some(Isa::Portable));
        assert_eq!(Isa::parse("avx512"), Some(Isa::Avx512));
        assert_eq!(Isa::parse("sse"), None);
        assert_eq!(Isa::parse(""), None);
        for isa in [Isa::Portable, Isa::Avx2, Isa::Avx512] {
            assert_eq!(Isa::parse(isa.name()), Some(isa));
        }
        let available = Isa::available();
        assert_eq!(available[0], Isa::Portable);
        assert!(available.contains(&Isa::detected()));
        assert!(available.windows(2).all(|pair| pair[0] < pair[1]));
    }
}

/// Values of eight lanes (`[f32; 8]` or `[f64; 8]`) that may live in an
/// [`Aligned`] buffer: plain floats, for which all-zero bytes are `0.0`.
pub(crate) trait Plain: Copy {}
impl Plain for [f32; 8] {}
impl Plain for [f64; 8] {}

/// A cache line, the unit an [`Aligned`] buffer is allocated in.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A zeroed buffer of `len` values whose first value starts on a cache
/// line (64 bytes), so that no 256-bit load of `[f32; 8]` and no 512-bit
/// load of `[f64; 8]` spans two lines, as it can in a `Vec`, which
/// aligns them to their 4 or 8 bytes only.
pub(crate) struct Aligned<T: Plain> {
    lines: Vec<Line>,
    len: usize,
    marker: std::marker::PhantomData<T>,
}

impl<T: Plain> Aligned<T> {
    /// `len` zero values.
    pub(crate) fn zeros(len: usize) -> Self {
        let bytes = len * std::mem::size_of::<T>();
        Aligned {
            lines: vec![Line([0; 64]); bytes.div_ceil(64)],
            len,
            marker: std::marker::PhantomData,
        }
    }
}

impl<T: Plain> std::ops::Deref for Aligned<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: `T` is an array of eight `f32` or `f64` (`Plain`), whose
        // alignment (4 or 8) divides 64 and for which every bit pattern,
        // zero included, is a value; the lines hold at least `len` of them.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr().cast::<T>(), self.len) }
    }
}

impl<T: Plain> std::ops::DerefMut for Aligned<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in `deref`, and the borrow of `self` is unique.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr().cast::<T>(), self.len) }
    }
}
