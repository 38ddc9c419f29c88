//! Locality: which pixels around an output pixel a machine may look at.
//!
//! A [`Locality`] gives, for each time `t`, a [`Window`]: either the whole
//! image or a rectangular patch of offsets around the output pixel, with
//! optional non-negative weights. Machines read only the window's extents
//! and weights, so new kinds of window (rectangles, weighted or masked
//! patches) need no change to the machines.

use std::fmt::Debug;
use std::sync::Arc;

use crate::error::{Error, Result};

/// A rectangular neighbourhood of offsets around a centre pixel: rows
/// `-up ..= down` and columns `-left ..= right`, each offset `o` with a
/// weight `w_o >= 0` (1 unless given).
///
/// A squared distance over the patch is `sum_o w_o (u(x + o) - v(y + o))^2`.
///
/// # Example
///
/// ```
/// use score_machines::locality::Patch;
/// let patch = Patch::square(5)?;
/// assert_eq!((patch.up(), patch.down(), patch.left(), patch.right()), (2, 2, 2, 2));
/// assert_eq!(patch.height(), 5);
/// assert!(Patch::square(4).is_err());
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct Patch {
    up: usize,
    down: usize,
    left: usize,
    right: usize,
    weights: Option<Arc<[f64]>>,
}

impl Patch {
    /// The `k x k` patch centred on the pixel, `k` odd: offsets
    /// `-r ..= r` on both axes with `r = k / 2`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPatchSide`] if `k` is even or zero.
    pub fn square(side: usize) -> Result<Self> {
        Self::rectangle(side, side)
    }

    /// A centred `height x width` patch, both odd.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPatchSide`] if a side is even or zero.
    pub fn rectangle(height: usize, width: usize) -> Result<Self> {
        for side in [height, width] {
            if side % 2 == 0 {
                return Err(Error::InvalidPatchSide(side));
            }
        }
        Ok(Patch {
            up: height / 2,
            down: height / 2,
            left: width / 2,
            right: width / 2,
            weights: None,
        })
    }

    /// A patch with arbitrary extents around the centre: rows
    /// `-up ..= down`, columns `-left ..= right`.
    pub fn offsets(up: usize, down: usize, left: usize, right: usize) -> Self {
        Patch {
            up,
            down,
            left,
            right,
            weights: None,
        }
    }

    /// The same extents with a weight per offset, row-major over the
    /// `height x width` offsets.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidWindow`] if the count differs from
    /// `height * width` (including a patch whose number of offsets does not
    /// fit in `usize`), a weight is negative or not finite, or all are 0.
    ///
    /// # Example
    ///
    /// ```
    /// use score_machines::locality::Patch;
    /// // A plus-shaped 3x3 window.
    /// let plus = Patch::square(3)?.with_weights(vec![0., 1., 0., 1., 1., 1., 0., 1., 0.])?;
    /// assert!(!plus.is_uniform());
    /// # Ok::<(), score_machines::Error>(())
    /// ```
    pub fn with_weights(mut self, weights: Vec<f64>) -> Result<Self> {
        let height = self
            .up
            .checked_add(self.down)
            .and_then(|n| n.checked_add(1));
        let width = self
            .left
            .checked_add(self.right)
            .and_then(|n| n.checked_add(1));
        let Some(count) = height.zip(width).and_then(|(h, w)| h.checked_mul(w)) else {
            return Err(Error::InvalidWindow(format!(
                "a patch of {} rows by {} columns has more offsets than can be counted",
                self.up as u128 + self.down as u128 + 1,
                self.left as u128 + self.right as u128 + 1
            )));
        };
        if weights.len() != count {
            return Err(Error::InvalidWindow(format!(
                "{} weights for a {}x{} patch",
                weights.len(),
                self.height(),
                self.width()
            )));
        }
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) {
            return Err(Error::InvalidWindow(
                "weights must be finite and non-negative".into(),
            ));
        }
        if weights.iter().all(|&w| w == 0.0) {
            return Err(Error::InvalidWindow("every weight is zero".into()));
        }
        self.weights = if weights.iter().all(|&w| w == 1.0) {
            None
        } else {
            Some(weights.into())
        };
        Ok(self)
    }

    /// Rows above the centre.
    pub fn up(&self) -> usize {
        self.up
    }

    /// Rows below the centre.
    pub fn down(&self) -> usize {
        self.down
    }

    /// Columns left of the centre.
    pub fn left(&self) -> usize {
        self.left
    }

    /// Columns right of the centre.
    pub fn right(&self) -> usize {
        self.right
    }

    /// Number of rows `up + down + 1` (saturating at `usize::MAX`).
    pub fn height(&self) -> usize {
        self.up.saturating_add(self.down).saturating_add(1)
    }

    /// Number of columns `left + right + 1` (saturating at `usize::MAX`).
    pub fn width(&self) -> usize {
        self.left.saturating_add(self.right).saturating_add(1)
    }

    /// The part of the patch within the given extents (each at most the
    /// patch's own), with its weights.
    pub(crate) fn crop(&self, up: usize, down: usize, left: usize, right: usize) -> Patch {
        let weights = self.weights.as_ref().map(|weights| {
            let width = self.width();
            let mut kept = Vec::new();
            for row in self.up - up..=self.up + down {
                kept.extend_from_slice(
                    &weights[row * width + self.left - left..][..left + right + 1],
                );
            }
            kept.into()
        });
        Patch {
            up,
            down,
            left,
            right,
            weights,
        }
    }

    /// Whether every weight is 1.
    pub fn is_uniform(&self) -> bool {
        self.weights.is_none()
    }

    /// The weights, row-major, if not all 1.
    pub fn weights(&self) -> Option<&[f64]> {
        self.weights.as_deref()
    }
}

/// The neighbourhood a machine compares at one time step.
#[derive(Clone, Debug, PartialEq)]
pub enum Window {
    /// The whole image: no locality.
    Whole,
    /// A patch of offsets around each output pixel.
    Patch(Patch),
}

impl Window {
    /// The patch that covers the whole image of `len` pixels along one axis
    /// from any centre, as `(before, after)`.
    ///
    /// With zero padding every offset in `-(len - 1) ..= len - 1` is needed;
    /// with periodic boundaries exactly one period, `-(len / 2) ..=
    /// len - 1 - len / 2`, so that each pixel counts once.
    pub(crate) fn whole_extent(len: usize, periodic: bool) -> (usize, usize) {
        if periodic {
            (len / 2, len - 1 - len / 2)
        } else {
            (len - 1, len - 1)
        }
    }
}

/// A rule giving the [`Window`] a machine uses at time `t`.
///
/// # Example
///
/// A locality of one's own: a 3x3 patch at low noise, the whole image above.
///
/// ```
/// use score_machines::locality::{Locality, Patch, Window};
///
/// #[derive(Debug)]
/// struct TwoRegimes;
///
/// impl Locality for TwoRegimes {
///     fn window(&self, t: f64) -> Window {
///         if t < 0.5 { Window::Patch(Patch::square(3).unwrap()) } else { Window::Whole }
///     }
/// }
/// assert_eq!(TwoRegimes.window(0.9), Window::Whole);
/// ```
pub trait Locality: Send + Sync + Debug {
    /// The window at time `t` in `[0, 1]`.
    fn window(&self, t: f64) -> Window;
}

impl<L: Locality + ?Sized> Locality for &L {
    fn window(&self, t: f64) -> Window {
        (**self).window(t)
    }
}

impl<L: Locality + ?Sized> Locality for Box<L> {
    fn window(&self, t: f64) -> Window {
        (**self).window(t)
    }
}

impl<L: Locality + ?Sized> Locality for Arc<L> {
    fn window(&self, t: f64) -> Window {
        (**self).window(t)
    }
}

/// No locality: every output pixel sees the whole image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WholeImage;

impl Locality for WholeImage {
    fn window(&self, _t: f64) -> Window {
        Window::Whole
    }
}

/// The same patch at every time.
impl Locality for Patch {
    fn window(&self, _t: f64) -> Window {
        Window::Patch(self.clone())
    }
}

/// A fixed odd `k x k` patch at every time.
///
/// # Example
///
/// ```
/// use score_machines::locality::{Locality, SquarePatch, Window, Patch};
/// let local = SquarePatch::new(7)?;
/// assert_eq!(local.window(0.3), Window::Patch(Patch::square(7)?));
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct SquarePatch {
    patch: Patch,
}

impl SquarePatch {
    /// A `k x k` patch.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidPatchSide`] if `k` is even or zero.
    pub fn new(side: usize) -> Result<Self> {
        Ok(SquarePatch {
            patch: Patch::square(side)?,
        })
    }

    /// The side `k`.
    pub fn side(&self) -> usize {
        self.patch.height()
    }
}

impl Locality for SquarePatch {
    fn window(&self, _t: f64) -> Window {
        Window::Patch(self.patch.clone())
    }
}

/// A patch side for each of `n` sampler steps: entry `j` (low noise first)
/// is used for `t` in `(j / n, (j + 1) / n]`, and entry 0 also at `t = 0`.
///
/// This is the convention of the published scale schedules: with the
/// `n`-step DDIM sampler, whose steps sit at `t_i = i / n`, entry `j`
/// belongs to the step at `t = (j + 1) / n`.
///
/// # Example
///
/// ```
/// use score_machines::locality::{Locality, ScaleSchedule, Window, Patch};
/// let scales = ScaleSchedule::new(vec![3, 5, 9, 15])?;
/// assert_eq!(scales.side_at(0.25), 3);
/// assert_eq!(scales.side_at(0.30), 5);
/// assert_eq!(scales.side_at(1.0), 15);
/// assert_eq!(scales.window(1.0), Window::Patch(Patch::square(15)?));
/// # Ok::<(), score_machines::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct ScaleSchedule {
    sides: Vec<usize>,
}

impl ScaleSchedule {
    /// One odd patch side per step, low noise first.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidParameter`] if `sides` is empty,
    /// [`Error::InvalidPatchSide`] if a side is even or zero.
    pub fn new(sides: Vec<usize>) -> Result<Self> {
        if sides.is_empty() {
            return Err(Error::InvalidParameter("empty scale schedule".into()));
        }
        if let Some(&side) = sides.iter().find(|&&k| k % 2 == 0) {
            return Err(Error::InvalidPatchSide(side));
        }
        Ok(ScaleSchedule { sides })
    }

    /// The sides, low noise first.
    pub fn sides(&self) -> &[usize] {
        &self.sides
    }

    /// Number of steps `n`.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.sides.len()
    }

    /// Index of the entry used at time `t`: `ceil(t n) - 1`, clamped to
    /// `0 .. n`, with a tolerance of 1e-9 so that `t = i / n` computed in
    /// floating point picks entry `i - 1`.
    pub fn entry_at(&self, t: f64) -> usize {
        let n = self.sides.len();
        let position = (t * n as f64 - 1e-9).ceil();
        if position.is_nan() || position < 1.0 {
            0
        } else {
            (position as usize - 1).min(n - 1)
        }
    }

    /// The patch side used at time `t`.
    pub fn side_at(&self, t: f64) -> usize {
        self.sides[self.entry_at(t)]
    }
}

impl Locality for ScaleSchedule {
    fn window(&self, t: f64) -> Window {
        Window::Patch(Patch::square(self.side_at(t)).expect("sides validated as odd"))
    }
}
