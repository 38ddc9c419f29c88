//! Analytic, training-free score machines for diffusion models.
//!
//! A score machine predicts the clean image `x0hat` from a noisy one as a
//! softmax-weighted average of training pixels, with no learned parameter.
//! Two inductive biases of convolutional networks, locality and translation
//! equivariance, turn the memorising ideal score into the equivariant local
//! score (ELS) machine, whose samples are patch mosaics of the training set
//! and which predicts what a trained convolutional diffusion model generates
//! from the same noise.
//!
//! A machine is built from three parts:
//!
//! - a [`NoiseSchedule`](schedule::NoiseSchedule): `a(t)` and `s(t)`;
//! - a [`Locality`](locality::Locality): the window compared at each time;
//! - an [`Equivariance`](equivariance::Equivariance) constraint: which
//!   candidate patches each output pixel draws from, and the boundary.
//!
//! and implements [`ScoreFunction`], as does any closure wrapped in
//! [`ClosureScore`] (a trained network, say), so that machines and networks
//! are sampled, calibrated and compared through one interface. The
//! [`sampler`] module runs DDIM, DDPM and probability-flow ODE samplers on
//! any of them, with an observer hook at every step.
//!
//! The theory's claim is that these machines predict what a trained
//! network generates. [`reference`](mod@reference) holds a network's recorded reverse
//! trajectories (read from `.npy` files, or recorded here from any score
//! function) and replays them; [`calibrate`] chooses a machine's patch
//! side at every step from the network's own noise predictions; and
//! [`compare`] runs a machine from the network's initial noise and
//! measures how well the final images agree.
//!
//! With the `testing` feature, the module `score_machines::testing` offers
//! proptest strategies for images, training sets, times and schedules,
//! checks of the properties the theory promises (locality, translation
//! equivariance, convexity, consistency of the predictions, permutation
//! invariance, class conditioning) for any score function, and
//! measurements of its receptive field and equivariance error.
//!
//! ```
//! use score_machines::prelude::*;
//!
//! let shape = Shape::new(1, 6, 6)?;
//! let pixels: Vec<f64> = (0..4 * 36).map(|i| ((i * 31) % 9) as f64 / 4.0 - 1.0).collect();
//! let training = TrainingSet::new(shape, pixels, None)?;
//! let ls = Machine::local(training.clone(), LegacyCosine, SquarePatch::new(11)?)?;
//! let is = Machine::ideal(training, LegacyCosine)?;
//! // A local window covering the whole image from every pixel is the ideal score.
//! let x = Image::from_vec(shape, vec![0.2; 36])?;
//! let (a, b) = (ls.x0_hat(&x, 0.6, None)?, is.x0_hat(&x, 0.6, None)?);
//! assert!(a.as_slice().iter().zip(b.as_slice()).all(|(u, v)| (u - v).abs() < 1e-12));
//! # Ok::<(), score_machines::Error>(())
//! ```

#![warn(missing_docs)]

pub mod calibrate;
pub mod compare;
pub mod equivariance;
mod error;
mod image;
#[cfg(feature = "io")]
pub mod io;
pub mod locality;
mod machine;
mod real;
pub mod reference;
pub mod sampler;
pub mod schedule;
pub mod score;
#[cfg(feature = "testing")]
pub mod testing;
mod training;

pub use error::{Error, Result};

/// The README's examples, compiled and run as doc tests.
#[cfg(all(doctest, feature = "io"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
pub use image::{Image, Shape};
pub use machine::{
    EquivariantLocalScore, EquivariantScore, IdealScore, LocalScore, Machine, Mosaic,
    PartialPosterior, Tile, ZeroPaddedEquivariantLocalScore,
};
pub use real::Real;
pub use score::{ClosureScore, Prediction, ScoreFunction};
pub use training::TrainingSet;

/// The items most programs need, for a glob import.
pub mod prelude {
    pub use crate::calibrate::{Calibration, Criterion};
    pub use crate::compare::Comparison;
    pub use crate::equivariance::{
        Equivariance, PeriodicFull, PeriodicInterior, SameLocation, ZeroPadded,
    };
    pub use crate::locality::{Locality, Patch, ScaleSchedule, SquarePatch, WholeImage, Window};
    pub use crate::reference::RecordedTrajectories;
    pub use crate::sampler::{
        Completion, Method, NoObserver, Observer, Sampler, StepRecord, Trajectory, Workspace,
        initial_noise, noised,
    };
    pub use crate::schedule::{
        Cosine, Exponential, LegacyCosine, LinearBeta, NoiseSchedule, VarianceExploding,
    };
    pub use crate::{
        ClosureScore, Error, Image, Machine, Mosaic, PartialPosterior, Prediction, Real,
        ScoreFunction, Shape, TrainingSet,
    };
}
