//! Helpers shared by the integration tests.

use std::path::{Path, PathBuf};

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
