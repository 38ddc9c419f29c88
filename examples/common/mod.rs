//! Helpers shared by the example programs.

use std::fs::OpenOptions;
use std::path::Path;

/// `println!` that leaves quietly when standard output is a closed pipe
/// (`... | head`) and reports other write errors on stderr.
macro_rules! say {
    () => {
        say!("")
    };
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(error) = writeln!(std::io::stdout(), $($arg)*)
            && error.kind() != std::io::ErrorKind::BrokenPipe
        {
            eprintln!("error: cannot write to standard output: {error}");
        }
    }};
}

/// Checks, before any work, that the grid can be written to `out`: its
/// folder exists, and the file either exists as a regular, writable file
/// (left unchanged here) or can be created (and is removed again).
#[allow(dead_code)] // `score` writes no grid.
pub fn check_output(out: &Path) -> Result<(), String> {
    let shown = out.display();
    match std::fs::metadata(out) {
        Ok(metadata) if !metadata.is_file() => {
            Err(format!("--out {shown} exists and is not a regular file"))
        }
        Ok(_) => match OpenOptions::new().append(true).open(out) {
            Ok(_) => Ok(()),
            // Removed meanwhile (by the check of a parallel run with the
            // same --out): as if it had not existed.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => check_creatable(out),
            Err(e) => Err(format!("--out {shown} cannot be written: {e}")),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check_creatable(out),
        Err(e) => Err(format!("--out {shown}: {e}")),
    }
}

/// Checks that `out`, which did not exist, can be created in its folder.
#[allow(dead_code)] // `score` writes no grid.
fn check_creatable(out: &Path) -> Result<(), String> {
    let shown = out.display();
    let folder = match out.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "--out {shown}: the folder {} does not exist",
            folder.display()
        ));
    }
    // Another process may create or remove the file meanwhile (parallel
    // runs with the same --out): that is no error here.
    match OpenOptions::new().write(true).create_new(true).open(out) {
        Ok(_) => match std::fs::remove_file(out) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(format!("--out {shown}: {e}"))
            }
            _ => Ok(()),
        },
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!("--out {shown} cannot be created: {e}")),
    }
}
