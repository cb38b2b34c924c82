//! Helpers shared by the contract suites: which backends this run can reach, and child processes.
//!
//! A backend that needs a server runs when its test variable is set (`scripts/test.sh` sets them
//! after starting the servers). When it is not set the test prints why it skipped, loudly, unless
//! `ENGRAM_REQUIRE_BACKENDS` names the backend, in which case skipping is a failure.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};

pub use engram_tests::{backend_url, report};

/// Environment variable that turns a test binary into a helper child process.
pub const CHILD_ROLE: &str = "ENGRAM_TEST_CHILD_ROLE";

/// The child role of this process, if it was started as a helper.
pub fn child_role() -> Option<String> {
    std::env::var(CHILD_ROLE).ok()
}

/// Starts this same test binary running only `test_name`, as a helper with `role` and extra env.
pub fn spawn_child(test_name: &str, role: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut command = Command::new(exe);
    command
        .args([test_name, "--exact", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ROLE, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("spawn helper child")
}

/// Reads the child's stdout until a line ending in `marker` appears (libtest prints the test's name
/// on the same line first).
pub fn wait_for_line(child: &mut Child, marker: &str) {
    use std::io::{BufRead, BufReader};
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        let line = line.expect("child stdout");
        if line.trim_end().ends_with(marker) {
            // Keep draining in the background so the child never blocks on a full pipe.
            std::thread::spawn(move || for _ in lines {});
            return;
        }
    }
    panic!("child exited before printing {marker:?}");
}

/// A unique name for a database, collection or bucket prefix used by one test.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}
