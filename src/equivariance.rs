//! Equivariance constraints: which candidate patches an output pixel may
//! draw from, and how windows read beyond the image edge.
//!
//! Every constraint here is separable by axis: the candidate centres of the
//! output pixel `x = (row, col)` are `rows(x_row) x cols(x_col)`, each a
//! contiguous range given by [`Equivariance::candidates`].

use std::fmt::Debug;
use std::ops::Range;

/// How a window reads positions outside the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Boundary {
    /// Positions outside the image hold 0.
    Zero,
    /// Indices wrap around modulo the image size.
    Periodic,
}

/// One image axis as seen by a window: the axis length and how far the
/// window reaches before and after its centre.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Axis {
    /// Number of pixels along the axis (`H` or `W`).
    pub len: usize,
    /// Offsets the window reaches before its centre (`r` for a `k x k`
    /// patch).
    pub before: usize,
    /// Offsets the window reaches after its centre.
    pub after: usize,
}

impl Axis {
    /// The centres whose window lies wholly inside the axis:
    /// `before .. len - after` (empty if the window is longer than the axis).
    pub fn interior(&self) -> Range<usize> {
        let end = self.len.saturating_sub(self.after);
        self.before..end.max(self.before)
    }

    /// Whether the window centred on `query` sticks out of the axis.
    pub fn near_edge(&self, query: usize) -> bool {
        query < self.before || query.saturating_add(self.after) >= self.len
    }
}

/// A translation constraint: for each output pixel, the candidate centres
/// `y` whose patches the machine compares with the output pixel's patch.
///
/// # Example
///
/// Mirror of the reference periodic constraint, written as a user would:
///
/// ```
/// use std::ops::Range;
/// use score_machines::equivariance::{Axis, Boundary, Equivariance};
///
/// #[derive(Debug)]
/// struct InteriorOnly;
///
/// impl Equivariance for InteriorOnly {
///     fn boundary(&self) -> Boundary { Boundary::Periodic }
///     fn candidates(&self, axis: Axis, _query: usize) -> Range<usize> { axis.interior() }
/// }
/// let axis = Axis { len: 8, before: 1, after: 1 };
/// assert_eq!(InteriorOnly.candidates(axis, 0), 1..7);
/// ```
pub trait Equivariance: Send + Sync + Debug {
    /// How query and candidate windows read outside the image.
    fn boundary(&self) -> Boundary;

    /// Candidate centre coordinates along `axis` for an output pixel at
    /// coordinate `query`, a sub-range of `0 .. axis.len`.
    fn candidates(&self, axis: Axis, query: usize) -> Range<usize>;
}

impl<E: Equivariance + ?Sized> Equivariance for &E {
    fn boundary(&self) -> Boundary {
        (**self).boundary()
    }
    fn candidates(&self, axis: Axis, query: usize) -> Range<usize> {
        (**self).candidates(axis, query)
    }
}

impl<E: Equivariance + ?Sized> Equivariance for Box<E> {
    fn boundary(&self) -> Boundary {
        (**self).boundary()
    }
    fn candidates(&self, axis: Axis, query: usize) -> Range<usize> {
        (**self).candidates(axis, query)
    }
}

/// No equivariance: each output pixel compares only with the patch at its
/// own location in every training image (the local score, LS; with the
/// whole-image window, the ideal score, IS). Windows are zero-padded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SameLocation;

impl Equivariance for SameLocation {
    fn boundary(&self) -> Boundary {
        Boundary::Zero
    }

    fn candidates(&self, _axis: Axis, query: usize) -> Range<usize> {
        query..query + 1
    }
}

/// Translation equivariance with the reference periodic semantics: the
/// output pixel's window wraps around the image edges, while candidate
/// windows are those lying wholly inside a training image, centres
/// `r <= y < len - r` on each axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodicInterior;

impl Equivariance for PeriodicInterior {
    fn boundary(&self) -> Boundary {
        Boundary::Periodic
    }

    fn candidates(&self, axis: Axis, _query: usize) -> Range<usize> {
        axis.interior()
    }
}

/// Fully periodic translation equivariance: every window wraps, and every
/// centre of every training image is a candidate. With the whole-image
/// window this is the equivariant score (ES): every circular shift of every
/// training image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PeriodicFull;

impl Equivariance for PeriodicFull {
    fn boundary(&self) -> Boundary {
        Boundary::Periodic
    }

    fn candidates(&self, axis: Axis, _query: usize) -> Range<usize> {
        0..axis.len
    }
}

/// Translation equivariance with zero-padding boundaries (bbELS), axis by
/// axis: on an axis where the output pixel's window sticks out of the image,
/// the candidate coordinate equals the query's; elsewhere it ranges over the
/// interior centres `r ..= len - r - 1`. All windows are zero-padded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ZeroPadded;

impl Equivariance for ZeroPadded {
    fn boundary(&self) -> Boundary {
        Boundary::Zero
    }

    fn candidates(&self, axis: Axis, query: usize) -> Range<usize> {
        if axis.near_edge(query) {
            query..query + 1
        } else {
            axis.interior()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_padded_follows_the_spec_axis_rule() {
        let axis = Axis {
            len: 10,
            before: 2,
            after: 2,
        };
        assert_eq!(ZeroPadded.candidates(axis, 0), 0..1);
        assert_eq!(ZeroPadded.candidates(axis, 1), 1..2);
        assert_eq!(ZeroPadded.candidates(axis, 2), 2..8);
        assert_eq!(ZeroPadded.candidates(axis, 7), 2..8);
        assert_eq!(ZeroPadded.candidates(axis, 8), 8..9);
    }

    #[test]
    fn interior_is_empty_when_window_exceeds_axis() {
        let axis = Axis {
            len: 4,
            before: 3,
            after: 3,
        };
        assert!(PeriodicInterior.candidates(axis, 0).is_empty());
    }
}
