//! The `score` example as a command-line program: its output against the
//! machines called directly, and its handling of bad input.
#![cfg(feature = "io")]

mod common;

mod reference;

use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use npyz::WriterBuilder;
use score_machines::io::npy;
use score_machines::prelude::*;

/// The example's executable, built once with the profile of this test.
fn example() -> &'static Path {
    static EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();
    EXECUTABLE.get_or_init(|| common::build_example("score"))
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("the example runs")
}

/// A fresh folder for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "score-machines-example-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Deterministic values in [-1, 1).
fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count)
        .map(|i| ((i * 7919 + seed * 104_729) % 997) as f32 / 498.5 - 1.0)
        .collect()
}

fn write_labels(path: &Path, labels: &[i64]) {
    let file = BufWriter::new(std::fs::File::create(path).unwrap());
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[labels.len() as u64])
        .writer(file)
        .begin_nd()
        .unwrap();
    writer.extend(labels.iter().copied()).unwrap();
    writer.finish().unwrap();
}

fn arg(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn output_matches_the_machines_called_directly() {
    let dir = scratch("match");
    let shape = Shape::new(2, 5, 6).unwrap();
    let (n, b) = (6, 3);
    let train_values = values(n * shape.len(), 1);
    let input_values: Vec<f32> = values(b * shape.len(), 2).iter().map(|v| 1.3 * v).collect();
    let labels = [0_i64, 1, 1, 0, 2, 1];
    let (train, input, label_file) = (
        dir.join("train.npy"),
        dir.join("input.npy"),
        dir.join("labels.npy"),
    );
    npy::write_array(&train, &[n, 2, 5, 6], &train_values).unwrap();
    npy::write_array(&input, &[b, 2, 5, 6], &input_values).unwrap();
    write_labels(&label_file, &labels);
    let training = TrainingSet::new(
        shape,
        train_values,
        Some(labels.iter().map(|&l| l as usize).collect()),
    )
    .unwrap();
    let inputs: Vec<Image<f32>> = input_values
        .chunks(shape.len())
        .map(|x| Image::from_slice(shape, x).unwrap())
        .collect();

    type Case = (
        Vec<&'static str>,
        f64,
        Box<dyn ScoreFunction<f32>>,
        Prediction,
        Option<usize>,
    );
    let cases: Vec<Case> = vec![
        (
            vec![
                "--machine",
                "bbels",
                "--k",
                "3",
                "--t",
                "0.4",
                "--output",
                "eps",
            ],
            0.4,
            Box::new(
                Machine::equivariant_local_zero_padded(
                    training.clone(),
                    Cosine::default(),
                    SquarePatch::new(3).unwrap(),
                )
                .unwrap(),
            ),
            Prediction::Noise,
            Some(1),
        ),
        (
            vec!["--machine", "is", "--t", "0.7"],
            0.7,
            Box::new(Machine::ideal(training.clone(), LegacyCosine).unwrap()),
            Prediction::Score,
            None,
        ),
        (
            vec!["--machine", "els", "--k=5", "--t=0.3", "--output", "x0"],
            0.3,
            Box::new(
                Machine::equivariant_local(
                    training.clone(),
                    LegacyCosine,
                    SquarePatch::new(5).unwrap(),
                )
                .unwrap(),
            ),
            Prediction::CleanImage,
            None,
        ),
        (
            vec![
                "--machine",
                "ls",
                "--k",
                "3",
                "--t",
                "0.5",
                "--schedule",
                "variance-exploding",
                "--output",
                "x0",
            ],
            0.5,
            Box::new(
                Machine::local(
                    training.clone(),
                    VarianceExploding::default(),
                    SquarePatch::new(3).unwrap(),
                )
                .unwrap(),
            ),
            Prediction::CleanImage,
            None,
        ),
    ];
    for (index, (options, t, machine, target, class)) in cases.into_iter().enumerate() {
        let out = dir.join(format!("out{index}.npy"));
        let mut args = options.clone();
        args.extend([
            "--train",
            arg(&train),
            "--input",
            arg(&input),
            "--out",
            arg(&out),
        ]);
        if class.is_some() {
            args.extend([
                "--schedule",
                "cosine",
                "--class",
                "1",
                "--labels",
                arg(&label_file),
            ]);
        }
        let output = run(&args);
        assert!(
            output.status.success(),
            "{options:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let info = npy::read_info(&out).unwrap();
        assert_eq!(info.shape, vec![b, 2, 5, 6]);
        assert_eq!(info.dtype, "<f4");
        let (_, written) = npy::read_array::<f32>(&out).unwrap();
        let mut largest = 0.0_f32;
        for (x, got) in inputs.iter().zip(written.chunks(shape.len())) {
            let mut expected = Image::zeros(shape);
            machine
                .predict_into(x, t, class, target, &mut expected)
                .unwrap();
            for (g, e) in got.iter().zip(expected.as_slice()) {
                assert!(
                    (g - e).abs() <= 1e-6 * e.abs().max(1.0),
                    "{options:?}: {g} vs {e}"
                );
                largest = largest.max(e.abs());
            }
        }
        assert!(
            largest > 0.1,
            "{options:?}: the output is not trivially zero"
        );
    }

    // The ELS output file against the brute-force reference (docs/machines.md).
    let (_, written) = npy::read_array::<f32>(dir.join("out2.npy")).unwrap();
    for (x, got) in inputs.iter().zip(written.chunks(shape.len())) {
        let problem = reference::Problem::new(&training, x, &LegacyCosine, 0.3);
        let want = reference::equivariant_local(&problem, 5, reference::Rule::Softmax)
            .expect("5x5 patches fit in 5x6 images");
        for (g, w) in got.iter().zip(&want.x0_hat) {
            assert!(
                (*g as f64 - w).abs() <= 1e-4 * w.abs().max(1.0),
                "score example against the reference: {g} vs {w}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_input_exits_with_code_2_and_one_line() {
    let dir = scratch("fail");
    let (train, train64, input, out) = (
        dir.join("train.npy"),
        dir.join("train64.npy"),
        dir.join("input.npy"),
        dir.join("out.npy"),
    );
    npy::write_array(&train, &[2, 1, 4, 4], &values(32, 3)).unwrap();
    let wide: Vec<f64> = values(32, 3).iter().map(|&v| v as f64).collect();
    npy::write_array(&train64, &[2, 1, 4, 4], &wide).unwrap();
    npy::write_array(&input, &[1, 1, 4, 5], &values(20, 4)).unwrap();
    let good_input = dir.join("good-input.npy");
    npy::write_array(&good_input, &[1, 1, 4, 4], &values(16, 4)).unwrap();
    let with = |options: &[&str], train: &Path, input: &Path| -> Vec<String> {
        let files = [
            "--train",
            arg(train),
            "--input",
            arg(input),
            "--out",
            arg(&out),
        ];
        options
            .iter()
            .chain(&files)
            .map(|s| s.to_string())
            .collect()
    };
    let cases = [
        (
            with(
                &["--machine", "ls", "--k", "3", "--t", "0.5"],
                &train64,
                &good_input,
            ),
            "float32",
        ),
        (
            with(
                &["--machine", "ls", "--k", "3", "--t", "0.5"],
                &train,
                &input,
            ),
            "1x4x5",
        ),
        (
            with(&["--machine", "els", "--t", "0.5"], &train, &good_input),
            "--k is required",
        ),
        (
            with(
                &["--machine", "ls", "--k", "4", "--t", "0.5"],
                &train,
                &good_input,
            ),
            "odd",
        ),
        (
            with(&["--machine", "gan", "--t", "0.5"], &train, &good_input),
            "unknown machine",
        ),
        (
            with(
                &["--machine", "is", "--t", "0.5", "--class", "1"],
                &train,
                &good_input,
            ),
            "--class needs --labels",
        ),
        (
            with(
                &["--machine", "is", "--t", "0.5"],
                &dir.join("absent.npy"),
                &good_input,
            ),
            "absent.npy",
        ),
        (
            with(&["--machine", "is", "--t", "2"], &train, &good_input),
            "--t must lie in [0, 1]",
        ),
        (
            with(
                &["--machine", "is", "--t", "0.5", "--bogus"],
                &train,
                &good_input,
            ),
            "--bogus",
        ),
    ];
    for (args, expected) in cases {
        let output = run(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = String::from_utf8(output.stderr).unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!out.exists(), "{args:?} wrote an output");
    }

    let nowhere = dir.join("absent-folder").join("out.npy");
    let output = run(&[
        "--machine",
        "is",
        "--t",
        "0.5",
        "--train",
        arg(&train),
        "--input",
        arg(&good_input),
        "--out",
        arg(&nowhere),
    ]);
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("does not exist"), "{stderr}");

    let help = run(&["--help"]);
    assert!(help.status.success());
    assert!(
        String::from_utf8(help.stdout)
            .unwrap()
            .contains("usage: score")
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
