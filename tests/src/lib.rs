//! Helpers for engram's end-to-end tests: find and run the real binaries.
//!
//! The binaries are built by `cargo build --workspace --bins` (which `scripts/test.sh` runs first)
//! into the same target directory as the test executables.

pub mod fuzz;
pub mod servers;

use std::path::PathBuf;
use std::process::{Command, Output};

/// The path of a workspace binary (`feature-pipeline`, `inference-service`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: build the binaries first with `cargo build --workspace --bins` (scripts/test.sh does)",
        path.display()
    );
    path
}

/// Runs a binary with `args` and `env` (on top of a clean `ENGRAM_*`-free environment).
pub fn run(name: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(binary(name));
    command.args(args);
    for (key, _) in std::env::vars() {
        if key.starts_with("ENGRAM_") || key.starts_with("AWS_") {
            command.env_remove(key);
        }
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("run binary")
}

/// Standard error as text.
pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Standard output as text.
pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The value of `variable`, or `None` after printing (and reporting, see [`report`]) why the tests
/// for `backend` are skipped. Panics instead when `ENGRAM_REQUIRE_BACKENDS` lists `backend`
/// (`scripts/test.sh` sets it for the servers it started).
pub fn backend_url(backend: &str, variable: &str) -> Option<String> {
    match std::env::var(variable) {
        Ok(value) if !value.is_empty() => Some(value),
        _ => {
            let required = std::env::var("ENGRAM_REQUIRE_BACKENDS").unwrap_or_default();
            if required.split(',').any(|b| b.trim() == backend) {
                panic!("{backend} is required (ENGRAM_REQUIRE_BACKENDS) but {variable} is not set");
            }
            report(&format!(
                "SKIPPED: {backend} tests: {variable} is not set, so no {backend} server is known to this run"
            ));
            None
        }
    }
}

/// Prints `line` and appends it to the file named by `ENGRAM_TEST_REPORT`, which `scripts/test.sh`
/// shows at the end so a run says which suites ran against which backend and which were skipped.
pub fn report(line: &str) {
    eprintln!("{line}");
    if let Ok(path) = std::env::var("ENGRAM_TEST_REPORT") {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(path) {
            let _ = writeln!(file, "{line}");
        }
    }
}
