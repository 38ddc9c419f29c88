//! A score function that claims a 3 x 3 window but reads one pixel beyond
//! it, caught by the locality check, shrunk by proptest to a minimal
//! counterexample, and measured. See docs/testing.md.
//!
//! Run with `cargo run --example broken_score` (the crate's tests and
//! examples turn on its `testing` feature).

use std::cell::RefCell;

use proptest::test_runner::{Config, RngAlgorithm, TestError, TestRng, TestRunner};
use score_machines::equivariance::Boundary;
use score_machines::locality::Patch;
use score_machines::prelude::*;
use score_machines::testing::*;

const USAGE: &str = "\
usage: broken_score

Checks the locality of a score function that claims a 3 x 3 window but
reads two columns to the right, under proptest with a fixed seed. Prints
the first failing input, the minimal counterexample proptest shrinks it to,
the verdict on it, and the function's effective receptive field.

  --help, -h  print this message";

/// A "denoiser" whose output pixel `(r, c)` is its input plus half of the
/// input two columns to the right, when there is one.
fn peeking_denoiser() -> impl ScoreFunction<f64> {
    ClosureScore::new(
        LegacyCosine,
        Prediction::CleanImage,
        None,
        |x: &Image<f64>, _t: f64, _class: Option<usize>| {
            let shape = x.shape();
            let mut out = x.clone();
            for c in 0..shape.channels {
                for r in 0..shape.height {
                    for col in 0..shape.width.saturating_sub(2) {
                        out.set(c, r, col, x.get(c, r, col) + 0.5 * x.get(c, r, col + 2));
                    }
                }
            }
            Ok(out)
        },
    )
}

fn locality(x: &Image<f64>, t: f64) -> score_machines::Result<Verdict> {
    check_locality(
        &peeking_denoiser(),
        Query::new(x, t),
        &Patch::square(3)?,
        Boundary::Zero,
        &Perturbation::default(),
        1e-9,
    )
}

fn main() -> score_machines::Result<()> {
    if let Some(arg) = std::env::args_os().nth(1) {
        if arg == "--help" || arg == "-h" {
            println!("{USAGE}");
            return Ok(());
        }
        eprintln!(
            "error: unknown argument {:?}; broken_score takes no options (see --help)",
            arg.to_string_lossy()
        );
        std::process::exit(2);
    }
    let config = Config {
        cases: 64,
        failure_persistence: None,
        ..Config::default()
    };
    let mut runner =
        TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha));
    let strategy = (
        images::<f64>(shapes(1..=3, 1..=8, 1..=8), -1.0..=1.0),
        times(),
    );
    // Every input the runner tries: its shape, its time and, if it failed,
    // the verdict.
    let tried: RefCell<Vec<(Shape, f64, Option<String>)>> = RefCell::new(Vec::new());
    let result = runner.run(&strategy, |(x, t)| {
        let verdict = locality(&x, t)?;
        let failure = (!verdict.passed()).then(|| verdict.to_string());
        tried.borrow_mut().push((x.shape(), t, failure));
        verdict.into_test_result()?;
        Ok(())
    });
    let tried = tried.into_inner();
    if let Some(first) = tried.iter().position(|(_, _, failure)| failure.is_some()) {
        let (shape, t, failure) = &tried[first];
        println!(
            "first failure: input {} of {}, shape {shape}, t = {t}",
            first + 1,
            tried.len()
        );
        println!("  {}", failure.as_deref().unwrap_or_default());
        let shrinks = &tried[first + 1..];
        let failing = shrinks.iter().filter(|(_, _, f)| f.is_some()).count();
        println!(
            "shrinking tried {} inputs, {failing} of them failing",
            shrinks.len()
        );
    }

    match result {
        Err(TestError::Fail(reason, (x, t))) => {
            println!("failure: {reason}");
            println!("minimal input: shape {}, t = {t}", x.shape());
            println!("  pixels {:?}", x.as_slice());
            let verdict = locality(&x, t)?;
            println!("verdict on the minimal input: {verdict}");
            if let Some(worst) = &verdict.worst {
                println!("  worst: {worst:#?}");
            }
        }
        other => println!("no counterexample: {other:?}"),
    }

    let shape = Shape::new(1, 6, 6)?;
    let x = Image::from_vec(shape, (0..36).map(|i| (i % 5) as f64 / 2.0 - 1.0).collect())?;
    let field = effective_receptive_field(&peeking_denoiser(), &x, 0.5, 1e-9)?;
    println!("effective receptive field on a 6 x 6 image: {field}");
    Ok(())
}
