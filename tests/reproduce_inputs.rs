//! The `reproduce` example on unusual inputs: schedule files and network
//! metadata of unexpected form, an output path that cannot be written, a
//! run of the ideal score machine alone and a recording with constant
//! outputs.
#![cfg(feature = "io")]

mod common;

use common::network_data as data;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use score_machines::io::npy;

/// The example's executable, built once with the profile of this test.
fn example() -> &'static Path {
    static EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();
    EXECUTABLE.get_or_init(|| common::build_example("reproduce"))
}

fn scratch(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "score-machines-reproduce-inputs-{}-{name}",
        std::process::id()
    ));
    std::fs::remove_dir_all(&path).ok();
    std::fs::create_dir_all(&path).unwrap();
    path
}

/// A copy of the zeros-padding recording in a scratch folder.
fn copy_network(data: &Path, name: &str) -> PathBuf {
    let dir = scratch(name);
    for entry in std::fs::read_dir(data.join("cnn-mnist/zeros")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
    }
    dir
}

fn run(data: &Path, args: &[&str]) -> Output {
    Command::new(example())
        .args(["--mnist", data.join("mnist").to_str().unwrap()])
        .args(args)
        .output()
        .expect("the example runs")
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_error(output: &Output, expected: &[&str]) {
    let (stdout, stderr) = text(output);
    assert_eq!(output.status.code(), Some(2), "{stdout}{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for part in expected {
        assert!(stderr.contains(part), "expected {part:?} in: {stderr}");
    }
}

#[test]
fn published_schedules_are_read_as_json_by_key() {
    let Some(data) = data() else { return };
    let dir = scratch("published");
    let network = data.join("cnn-mnist/zeros");
    let cases: [(&str, &[&str]); 6] = [
        (
            r#"{"MNIST_ResNet_zeros": null, "note": "x", "CIFAR": [5, 5, 5]}"#,
            &["\"MNIST_ResNet_zeros\" is null, not a list"],
        ),
        (
            r#"{"other": {"MNIST_ResNet_zeros": "x"}, "y": [1, 2]}"#,
            &["has no schedule \"MNIST_ResNet_zeros\""],
        ),
        (
            r#"{"schedules": {"MNIST_ResNet_zeros": [3, 4, 5]}}"#,
            &["holds 4, not an odd patch side"],
        ),
        (
            r#"{"MNIST_ResNet_zeros": [3, -5]}"#,
            &["holds -5, not an odd patch side"],
        ),
        (r#"{"MNIST_ResNet_zeros": [3, 5"#, &["not valid JSON"]),
        (
            r#"{"MNIST_ResNet_zeros": [3, 5, 7]}"#,
            &["3 sides but the network took 20 steps"],
        ),
    ];
    for (index, (json, expected)) in cases.into_iter().enumerate() {
        let file = dir.join(format!("{index}.json"));
        std::fs::write(&file, json).unwrap();
        let output = run(
            &data,
            &[
                "--network",
                network.to_str().unwrap(),
                "--machine",
                "bbels",
                "--scales",
                "published",
                "--published",
                file.to_str().unwrap(),
                "--rows",
                "0..2",
                "--seeds",
                "8..9",
            ],
        );
        assert_error(&output, expected);
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn padding_comes_from_the_model_text_or_the_option() {
    let Some(data) = data() else { return };
    let network = copy_network(&data, "padding");
    let meta = network.join("meta.json");
    // A schedule of the wrong length stops every run right after the line
    // that names the machine.
    let args = |extra: &[&'static str]| {
        let mut args = vec![
            "--network".to_string(),
            network.to_str().unwrap().to_string(),
            "--rows".into(),
            "0..2".into(),
            "--seeds".into(),
            "8..9".into(),
            "--scales".into(),
            "3".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let go = |extra: &[&'static str]| {
        let args = args(extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&data, &args)
    };

    // The phrase elsewhere in the file does not count.
    std::fs::write(
        &meta,
        r#"{"model": "a CNN; zeros padding", "note": "unlike the circular padding one"}"#,
    )
    .unwrap();
    let output = go(&[]);
    assert!(
        text(&output).0.contains("machine bbels"),
        "{:?}",
        text(&output)
    );
    assert_error(&output, &["1 sides"]);

    for (model, which) in [
        ("zeros padding, then circular padding", "both"),
        ("a CNN", "neither"),
    ] {
        std::fs::write(&meta, format!(r#"{{"model": "{model}"}}"#)).unwrap();
        assert_error(&go(&[]), &[which, "--padding zeros or --padding circular"]);
        let output = go(&["--padding", "circular"]);
        assert!(
            text(&output).0.contains("machine els;"),
            "{:?}",
            text(&output)
        );
        assert_error(&output, &["1 sides"]);
    }
    std::fs::write(&meta, "{not json, zeros padding").unwrap();
    assert_error(&go(&[]), &["not valid JSON", "--padding"]);
    assert_error(&go(&["--padding", "reflect"]), &["unknown padding"]);
    std::fs::remove_dir_all(network).ok();
}

#[test]
fn an_unknown_option_is_named_even_last() {
    let Some(data) = data() else { return };
    for args in [
        &["--bogus"][..],
        &["--bogus", "3"],
        &["--seeds", "8..9", "--bogus"],
    ] {
        assert_error(&run(&data, args), &["unknown option --bogus"]);
    }
    assert_error(&run(&data, &["--seeds"]), &["--seeds needs a value"]);
}

#[test]
fn an_unwritable_output_is_refused_before_any_work() {
    let Some(data) = data() else { return };
    // The network does not exist either: the output is checked first.
    let output = run(
        &data,
        &[
            "--network",
            "/nonexistent/recording",
            "--out",
            "/nonexistent/dir/x.png",
        ],
    );
    assert_error(&output, &["--out /nonexistent/dir/x.png", "does not exist"]);
    let folder = scratch("out-folder");
    let output = run(
        &data,
        &[
            "--network",
            "/nonexistent/recording",
            "--out",
            folder.to_str().unwrap(),
        ],
    );
    assert_error(&output, &["not a regular file"]);
    std::fs::remove_dir_all(folder).ok();
}

#[test]
fn the_ideal_machine_alone_prints_one_column_and_one_row() {
    let Some(data) = data() else { return };
    let dir = scratch("is");
    let out = dir.join("is.png");
    let output = run(
        &data,
        &[
            "--network",
            data.join("cnn-mnist/zeros").to_str().unwrap(),
            "--machine",
            "is",
            "--scales",
            "published",
            "--candidates",
            "3",
            "--rows",
            "0..2",
            "--seeds",
            "8..10",
            "--out",
            out.to_str().unwrap(),
        ],
    );
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stdout}{stderr}");
    assert!(!stdout.contains("IS closer"), "{stdout}");
    assert!(stdout.contains("  seed   r IS\n"), "{stdout}");
    let summary: Vec<&str> = stdout.lines().filter(|l| l.starts_with("is ")).collect();
    assert_eq!(summary.len(), 1, "{stdout}");
    assert_eq!(
        stderr.trim(),
        "warning: --machine is uses no scale schedule; ignoring --scales, --candidates"
    );
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn constant_network_outputs_name_the_seed() {
    let Some(data) = data() else { return };
    let network = copy_network(&data, "constant");
    let finals = network.join("final.npy");
    let (shape, values) = npy::read_array::<f32>(&finals).unwrap();
    npy::write_array(&finals, &shape, &vec![0.25_f32; values.len()]).unwrap();
    let output = run(
        &data,
        &[
            "--network",
            network.to_str().unwrap(),
            "--machine",
            "is",
            "--rows",
            "0..2",
            "--seeds",
            "9..11",
        ],
    );
    assert_error(
        &output,
        &["seed 9: the network's final image is constant (every value is 0.25)"],
    );
    std::fs::remove_dir_all(network).ok();
}
