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
