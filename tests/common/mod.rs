//! Helpers shared by the integration tests.

// Each test binary uses some of them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// A file or folder of the shared data: `None` (after printing
/// `skipped: ...`) if it is absent, unless `SCORE_MACHINES_REQUIRE_DATA=1`,
/// in which case the test fails.
pub fn shared(relative: &str) -> Option<PathBuf> {
    let root = std::env::var_os("SCORE_MACHINES_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let path = root.join(relative);
    if path.exists() {
        return Some(path);
    }
    let reason = format!("{} not found", path.display());
    if std::env::var("SCORE_MACHINES_REQUIRE_DATA").as_deref() == Ok("1") {
        panic!("shared data required: {reason}");
    }
    println!("skipped: {reason}");
    None
}

/// Builds the example `name` with the profile of the tests (`cargo test`
/// has usually built it already, so this finds it fresh) and returns its
/// executable.
pub fn build_example(name: &str) -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    let built = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "--profile", "test", "--example", name])
        .args(["--message-format", "json", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("cargo runs");
    assert!(
        built.status.success(),
        "building the example failed: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let stdout = String::from_utf8(built.stdout).unwrap();
    let line = stdout
        .lines()
        .find(|l| l.contains("\"kind\":[\"example\"]") && l.contains("\"executable\":\""))
        .expect("cargo reports the example's executable");
    let start = line.find("\"executable\":\"").unwrap() + "\"executable\":\"".len();
    let end = start + line[start..].find('"').unwrap();
    PathBuf::from(&line[start..end])
}

/// The shared data folder, if it holds the recorded networks
/// (`cnn-mnist/zeros`) and MNIST; otherwise as [`shared`].
pub fn network_data() -> Option<PathBuf> {
    let networks = shared("cnn-mnist/zeros")?;
    shared("mnist")?;
    networks.parent()?.parent().map(Path::to_path_buf)
}
