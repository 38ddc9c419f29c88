//! `Machine::mosaic` against a brute-force search over every candidate
//! patch: the nearest candidate of each output pixel, its distance and its
//! softmax weight, on random images and on MNIST digits.

mod reference;

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use score_machines::prelude::*;

use reference::{Candidates, Problem};

/// Relative tolerance on distances and weights (the mosaic is `f64`).
const TOLERANCE: f64 = 1e-9;

fn random_set(shape: Shape, count: usize, seed: u64) -> (TrainingSet<f64>, Image<f64>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut values =
        |n: usize| -> Vec<f64> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
    let training = TrainingSet::new(shape, values(count * shape.len()), None).unwrap();
    let query = Image::from_vec(shape, values(shape.len())).unwrap();
    (training, query)
}

fn mosaic_of(
    which: Candidates,
    training: &TrainingSet<f64>,
    side: usize,
    x: &Image<f64>,
    t: f64,
) -> Mosaic {
    let patch = SquarePatch::new(side).unwrap();
    let training = training.clone();
    match which {
        Candidates::SameLocation => Machine::local(training, LegacyCosine, patch)
            .unwrap()
            .mosaic(x, t, None),
        Candidates::Interior => Machine::equivariant_local(training, LegacyCosine, patch)
            .unwrap()
            .mosaic(x, t, None),
        Candidates::Periodic => Machine::equivariant_local_periodic(training, LegacyCosine, patch)
            .unwrap()
            .mosaic(x, t, None),
        Candidates::ZeroPadded => {
            Machine::equivariant_local_zero_padded(training, LegacyCosine, patch)
                .unwrap()
                .mosaic(x, t, None)
        }
    }
    .unwrap()
}

fn close(got: f64, want: f64) -> bool {
    (got - want).abs() <= TOLERANCE * want.abs().max(1.0)
}

/// Checks every tile of `mosaic` against the brute-force candidates;
/// returns how many tiles had a clear nearest candidate (checked for
/// identity, not just distance).
fn check_tiles(
    label: &str,
    mosaic: &Mosaic,
    problem: &Problem,
    side: usize,
    which: Candidates,
) -> usize {
    let beta = 1.0 / (2.0 * problem.noise * problem.noise);
    let lists = reference::all_candidates(problem, side, which);
    assert_eq!(mosaic.tiles().len(), lists.len(), "{label}");
    let mut identified = 0;
    for (position, (tile, list)) in mosaic.tiles().iter().zip(&lists).enumerate() {
        let nearest = list.iter().map(|c| c.2).fold(f64::INFINITY, f64::min);
        assert!(
            close(tile.distance, nearest),
            "{label} pixel {position}: distance {} against {nearest}",
            tile.distance
        );
        // The tile is a real candidate at its distance...
        let own = list
            .iter()
            .find(|c| c.0 == tile.image && c.1 == tile.centre)
            .unwrap_or_else(|| panic!("{label} pixel {position}: {tile:?} is no candidate"));
        assert!(close(own.2, tile.distance), "{label} pixel {position}");
        // ...and, where the nearest is clear, the nearest one.
        let second = list
            .iter()
            .map(|c| c.2)
            .filter(|&d| d > nearest)
            .fold(f64::INFINITY, f64::min);
        let ties = list.iter().filter(|c| c.2 == nearest).count();
        if beta.is_infinite() {
            assert_eq!(tile.ties, ties, "{label} pixel {position}");
        }
        if ties == 1 && second - nearest > 1e-9 * nearest.max(1.0) {
            let want = list.iter().find(|c| c.2 == nearest).unwrap();
            assert_eq!(
                (tile.image, tile.centre),
                (want.0, want.1),
                "{label} pixel {position}"
            );
            identified += 1;
        }
        let weight = if beta.is_infinite() {
            1.0 / ties as f64
        } else {
            let total: f64 = list.iter().map(|c| (-beta * (c.2 - nearest)).exp()).sum();
            (-beta * (tile.distance - nearest)).exp() / total
        };
        assert!(
            close(tile.weight, weight),
            "{label} pixel {position}: weight {} against {weight}",
            tile.weight
        );
    }
    identified
}

#[test]
fn tiles_are_the_nearest_candidates_of_a_brute_force_search() {
    let mut identified = 0;
    let mut tiles = 0;
    for (shape, count, seed) in [
        (Shape::new(1, 7, 9).unwrap(), 6, 1),
        (Shape::new(3, 6, 5).unwrap(), 4, 2),
        (Shape::new(1, 8, 8).unwrap(), 40, 3),
    ] {
        let (training, x) = random_set(shape, count, seed);
        for which in [
            Candidates::SameLocation,
            Candidates::Interior,
            Candidates::Periodic,
            Candidates::ZeroPadded,
        ] {
            for side in [1, 3, 5] {
                for t in [0.0, 0.3, 0.7] {
                    let label = format!("{which:?} {shape} N={count} k={side} t={t}");
                    let mosaic = mosaic_of(which, &training, side, &x, t);
                    let problem = Problem::new(&training, &x, &LegacyCosine, t);
                    identified += check_tiles(&label, &mosaic, &problem, side, which);
                    tiles += mosaic.tiles().len();
                }
            }
        }
    }
    // Random images leave almost every nearest candidate clear.
    assert!(
        identified * 10 >= tiles * 9,
        "{identified} of {tiles} identified"
    );
}

/// At `t = 0` the machine predicts the centre of each nearest candidate:
/// the mosaic's image is the prediction.
#[test]
fn at_time_zero_the_mosaic_is_the_prediction() {
    let (training, x) = random_set(Shape::new(2, 7, 8).unwrap(), 9, 5);
    let patch = SquarePatch::new(3).unwrap();
    let els =
        Machine::equivariant_local_zero_padded(training.clone(), LegacyCosine, patch).unwrap();
    let mosaic = els.mosaic(&x, 0.0, None).unwrap();
    assert_eq!(
        mosaic.to_image(&training).unwrap(),
        els.x0_hat(&x, 0.0, None).unwrap()
    );
    assert!(
        mosaic
            .tiles()
            .iter()
            .all(|tile| tile.weight == 1.0 && tile.ties == 1)
    );
    let sources = mosaic.sources();
    assert_eq!(sources.iter().map(|s| s.1).sum::<usize>(), 56);
    assert!(sources.windows(2).all(|w| w[0].1 >= w[1].1));
}

#[test]
fn bad_input_is_an_error() {
    let (training, x) = random_set(Shape::new(1, 5, 5).unwrap(), 3, 6);
    let els =
        Machine::equivariant_local(training.clone(), LegacyCosine, SquarePatch::new(3).unwrap())
            .unwrap();
    let wrong = Image::from_vec(Shape::new(1, 5, 4).unwrap(), vec![0.0; 20]).unwrap();
    assert!(matches!(
        els.mosaic(&wrong, 0.5, None),
        Err(Error::ShapeMismatch { .. })
    ));
    assert!(matches!(
        els.mosaic(&x, 1.5, None),
        Err(Error::InvalidTime { .. })
    ));
    assert!(matches!(
        els.mosaic(&x, 0.5, Some(3)),
        Err(Error::UnknownClass(3))
    ));
    let mut nan = x.clone();
    nan.as_mut_slice()[4] = f64::NAN;
    assert!(els.mosaic(&nan, 0.5, None).is_err());
    let too_big =
        Machine::equivariant_local(training.clone(), LegacyCosine, SquarePatch::new(7).unwrap())
            .unwrap();
    assert!(matches!(
        too_big.mosaic(&x, 0.5, None),
        Err(Error::NoCandidates(_))
    ));

    let mosaic = els.mosaic(&x, 0.5, None).unwrap();
    assert!(mosaic.tile(5, 0).is_none() && mosaic.tile(4, 4).is_some());
    let (other, _) = random_set(Shape::new(1, 4, 5).unwrap(), 3, 7);
    assert!(matches!(
        mosaic.to_image(&other),
        Err(Error::ShapeMismatch { .. })
    ));
    let (fewer, _) = random_set(Shape::new(1, 5, 5).unwrap(), 1, 8);
    if mosaic.tiles().iter().any(|tile| tile.image >= 1) {
        assert!(matches!(
            mosaic.to_image(&fewer),
            Err(Error::InvalidParameter(_))
        ));
    }
}

/// On MNIST digits, with an `f32` training set: the tiles agree with the
/// brute-force search, their distances with the nearest distances of the
/// machine's own `f32` evaluation, and a training digit explains itself.
#[test]
fn mnist_digits_are_explained_by_their_nearest_patches() {
    let Some(path) = reference::data_file("mnist/t10k-images-idx3-ubyte.gz") else {
        return;
    };
    let (rows, cols, digits) = reference::idx::read_images(&path, 61);
    let shape = Shape::new(1, rows, cols).unwrap();
    let pixels: Vec<f32> = digits[..60].concat().iter().map(|&v| v as f32).collect();
    let training = TrainingSet::new(shape, pixels, None).unwrap();
    let t = 0.2;
    let (a, s) = (LegacyCosine.signal(t), LegacyCosine.noise(t));
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let noisy: Vec<f32> = digits[60]
        .iter()
        .map(|&v| (a * v + s * rng.random_range(-1.0..1.0)) as f32)
        .collect();
    let x = Image::from_vec(shape, noisy).unwrap();
    let bbels = Machine::equivariant_local_zero_padded(
        training.clone(),
        LegacyCosine,
        SquarePatch::new(5).unwrap(),
    )
    .unwrap();
    let mosaic = bbels.mosaic(&x, t, None).unwrap();

    let problem = Problem::new(&training, &x, &LegacyCosine, t);
    let identified = check_tiles(
        "MNIST bbELS k=5",
        &mosaic,
        &problem,
        5,
        Candidates::ZeroPadded,
    );
    assert!(identified > 0);

    let posterior = bbels.posterior(&x, t, None).unwrap();
    for (tile, &nearest) in mosaic.tiles().iter().zip(posterior.min_distances()) {
        assert!((tile.distance - nearest).abs() <= 1e-5 * nearest.max(1.0));
    }

    // A training digit is its own nearest patch everywhere (distance 0),
    // though blank windows tie with those of other digits.
    let own = training.to_image(7);
    let mosaic = bbels.mosaic(&own, 0.0, None).unwrap();
    assert!(mosaic.tiles().iter().all(|tile| tile.distance == 0.0));
    // Blank windows tie across digits: each tile's weight is 1 / ties, and
    // only the unique tiles count as sources.
    assert!(
        mosaic
            .tiles()
            .iter()
            .all(|tile| tile.weight == 1.0 / tile.ties as f64)
    );
    assert!(mosaic.tiles().iter().any(|tile| tile.ties > 1));
    let unique = mosaic.tiles().iter().filter(|tile| tile.ties == 1).count();
    assert_eq!(mosaic.sources().iter().map(|s| s.1).sum::<usize>(), unique);
    assert_eq!(mosaic.to_image(&training).unwrap(), own);
    println!(
        "digit 7 explained by {} training digits",
        mosaic.sources().len()
    );
}

/// The mosaic is the same, to the last bit, on one thread and on several.
#[cfg(feature = "parallel")]
#[test]
fn the_mosaic_does_not_depend_on_the_number_of_threads() {
    let (training, x) = random_set(Shape::new(1, 9, 9).unwrap(), 100, 12);
    let els =
        Machine::equivariant_local(training, LegacyCosine, SquarePatch::new(3).unwrap()).unwrap();
    let many = els.mosaic(&x, 0.4, None).unwrap();
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap()
        .install(|| els.mosaic(&x, 0.4, None).unwrap());
    let three = rayon::ThreadPoolBuilder::new()
        .num_threads(3)
        .build()
        .unwrap()
        .install(|| els.mosaic(&x, 0.4, None).unwrap());
    assert_eq!(many, one);
    assert_eq!(many, three);
}
