//! The `reproduce` example as a command-line program: a small run on the
//! shared CNN recording, and its handling of bad input.
#![cfg(feature = "io")]

mod common;

use common::network_data as data;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The example's executable, built once with the profile of this test.
fn example() -> &'static Path {
    static EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();
    EXECUTABLE.get_or_init(|| common::build_example("reproduce"))
}

fn run(args: &[&str]) -> Output {
    Command::new(example())
        .args(args)
        .output()
        .expect("the example runs")
}

fn out_file(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "score-machines-reproduce-example-{}-{name}.png",
        std::process::id()
    ))
}

/// Width and height from a PNG's header chunk.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"));
    let word = |at: usize| u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
    (word(16), word(20))
}

#[test]
fn small_calibrated_run_prints_a_table_and_writes_the_grid() {
    let Some(data) = data() else { return };
    let out = out_file("calibrated");
    let network = data.join("cnn-mnist/zeros");
    let output = run(&[
        "--network",
        network.to_str().unwrap(),
        "--rows",
        "0..3",
        "--candidates",
        "5,3",
        "--calibrate-seeds",
        "0..1",
        "--seeds",
        "8..10",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("machine bbels"), "{stdout}");
    assert!(
        stdout
            .contains("calibrated on trajectories 0..1 with training rows 0..3 over sides [3, 5]"),
        "{stdout}"
    );
    assert!(stdout.contains("fraction beating IS"), "{stdout}");
    let schedule = stdout
        .lines()
        .find(|l| l.starts_with("scale schedule"))
        .expect("a schedule line");
    assert_eq!(schedule.matches(", ").count(), 19, "{schedule}");
    // Two seeds of three images in a grid of nine columns of 28 * 3 pixels.
    assert_eq!(png_size(&out), (9 * 84 + 10 * 2, 84 + 2 * 2));
    std::fs::remove_file(out).ok();
}

/// With standard output closed (`reproduce ... | head -1`), the run
/// finishes quietly instead of panicking on its next line.
#[test]
fn a_closed_standard_output_is_not_a_panic() {
    let Some(data) = data() else { return };
    let out = out_file("closed-stdout");
    let network = data.join("cnn-mnist/zeros");
    let mut child = Command::new(example())
        .args([
            "--network",
            network.to_str().unwrap(),
            "--rows",
            "0..3",
            "--candidates",
            "3",
            "--calibrate-seeds",
            "0..1",
            "--seeds",
            "8..9",
            "--out",
            out.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the example starts");
    // Close the reading end before the program prints anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().expect("the example runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    std::fs::remove_file(out).ok();
}

#[test]
fn published_schedule_is_read_for_the_network_padding() {
    let Some(data) = data() else { return };
    let out = out_file("published");
    let network = data.join("cnn-mnist/circular");
    let output = run(&[
        "--network",
        network.to_str().unwrap(),
        "--scales",
        "published",
        "--rows",
        "0..2",
        "--seeds",
        "31..32",
        "--out",
        out.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("machine els;"), "{stdout}");
    assert!(stdout.contains("published schedule MNIST_ResNet_circular"));
    assert!(stdout.contains(
        "scale schedule (low noise first): [3, 3, 5, 5, 5, 7, 7, 9, 9, 9, 11, 11, 11, 11, 9, 9, 7, 7, 3, 3]"
    ));
    std::fs::remove_file(out).ok();
}

#[test]
fn bad_input_exits_with_code_2_and_one_line() {
    let Some(data) = data() else { return };
    let network = data.join("cnn-mnist/zeros");
    let network = network.to_str().unwrap();
    let cases: [(&[&str], &str); 8] = [
        (&["--machine", "nn"], "unknown machine"),
        (&["--rows", "5..2"], "--rows 5..2 is empty"),
        (&["--seeds", "4..12"], "overlap"),
        (
            &["--seeds", "30..40"],
            "outside the 32 recorded trajectories",
        ),
        (&["--network", "/nonexistent/recording"], "times.npy"),
        (&["--network", network, "--scales", "3,5"], "2 sides"),
        (&["--criterion", "best"], "unknown criterion"),
        (&["--candidates"], "needs a value"),
    ];
    for (args, expected) in cases {
        let output = run(args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}
