//! A small mutation fuzzer for readers of input from outside (model files, Notion zips, HTML pages,
//! chat requests): each case is a valid input with a few bytes changed, a boundary value planted
//! or a tail cut off, run on its own thread; a panic or a case that takes longer than its limit
//! (a hang) fails the test, with the case written to the temp folder.
//!
//! It is not coverage-guided (cargo-fuzz needs a nightly toolchain this project's machines lack),
//! so it makes up in volume: each target runs for `ENGRAM_FUZZ_SECS` seconds (default 10;
//! `scripts/test.sh` keeps the default, a long run is the same test with a larger value), from the
//! seed `ENGRAM_FUZZ_SEED` (default: the clock), printed so that a failure replays.

use std::sync::mpsc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// One fuzz target's run.
pub struct Fuzz {
    name: String,
    seed: u64,
    rng: StdRng,
    deadline: Instant,
    /// Longest one case may take.
    pub limit: Duration,
}

impl Fuzz {
    /// A run of target `name`, its length and seed from the environment.
    pub fn from_env(name: &str) -> Self {
        let seed = std::env::var("ENGRAM_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(7, |d| d.as_nanos() as u64)
            });
        let seconds: f64 = std::env::var("ENGRAM_FUZZ_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(10.0);
        println!("fuzz {name}: seed {seed}, {seconds} s (ENGRAM_FUZZ_SEED, ENGRAM_FUZZ_SECS)");
        Fuzz {
            name: name.to_string(),
            seed,
            rng: StdRng::seed_from_u64(seed),
            deadline: Instant::now() + Duration::from_secs_f64(seconds),
            limit: Duration::from_secs(20),
        }
    }

    /// The run's random numbers, for targets that build their own cases.
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    /// A mutated copy of `valid`; most changes fall in its first `hot` bytes (a header).
    pub fn mutate(&mut self, valid: &[u8], hot: usize) -> Vec<u8> {
        let rng = &mut self.rng;
        let mut bytes = valid.to_vec();
        if bytes.is_empty() {
            return (0..rng.random_range(1..64)).map(|_| rng.random()).collect();
        }
        let hot = hot.clamp(1, bytes.len());
        match rng.random_range(0..10) {
            0 => bytes.truncate(rng.random_range(0..valid.len())),
            1 | 2 if bytes.len() >= 8 => {
                let at = rng.random_range(0..hot.min(bytes.len() - 8).max(1));
                let value: u64 = match rng.random_range(0..5) {
                    0 => 0,
                    1 => u32::MAX as u64,
                    2 => u64::MAX,
                    3 => 1 << 63,
                    _ => rng.random_range(0..1 << 20),
                };
                let width = if rng.random_bool(0.5) { 4 } else { 8 };
                bytes[at..at + width].copy_from_slice(&value.to_le_bytes()[..width]);
            }
            3 => {
                // A stretch repeated: nesting, long runs.
                let start = rng.random_range(0..bytes.len());
                let end = (start + rng.random_range(1..64)).min(bytes.len());
                let piece = bytes[start..end].to_vec();
                let times = rng.random_range(2..2000);
                let tail = bytes.split_off(end);
                for _ in 0..times {
                    bytes.extend_from_slice(&piece);
                }
                bytes.extend(tail);
            }
            _ => {
                for _ in 0..rng.random_range(1..=16) {
                    let end = if rng.random_bool(0.85) { hot } else { bytes.len() };
                    let at = rng.random_range(0..end);
                    bytes[at] = match rng.random_range(0..4) {
                        0 => 0,
                        1 => 0xFF,
                        _ => rng.random(),
                    };
                }
            }
        }
        bytes
    }

    /// Whether the run has time left.
    pub fn running(&self) -> bool {
        Instant::now() < self.deadline
    }

    /// Runs `case` on `input` on its own thread; fails the test on a panic or a hang, keeping
    /// the input.
    pub fn check<F>(&self, number: usize, input: Vec<u8>, case: F)
    where
        F: FnOnce(&[u8]) + Send + 'static,
    {
        // Kept before it runs: a case that aborts the process (an allocation failure, a stack
        // overflow) leaves its input behind.
        let path = std::env::temp_dir().join(format!("engram-fuzz-{}-{}-current", self.name, self.seed));
        let _ = std::fs::write(&path, &input);
        let (sent, received) = mpsc::channel();
        let kept = input.clone();
        std::thread::spawn(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&input)));
            let _ = sent.send(outcome.map_err(|panic| {
                panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into())
            }));
        });
        let why = match received.recv_timeout(self.limit) {
            Ok(Ok(())) => {
                let _ = std::fs::remove_file(&path);
                return;
            }
            Ok(Err(panic)) => format!("panicked: {panic}"),
            Err(_) => format!("no answer within {:?}: a hang", self.limit),
        };
        let path = std::env::temp_dir().join(format!("engram-fuzz-{}-{}-{number}", self.name, self.seed));
        let _ = std::fs::write(&path, &kept);
        panic!(
            "fuzz {}: case {number} (seed {}) {why}; the input is kept at {}",
            self.name,
            self.seed,
            path.display()
        );
    }

    /// Runs cases made by `make` until the time is up; returns how many ran.
    pub fn run<M, F>(mut self, mut make: M, case: F) -> usize
    where
        M: FnMut(&mut Fuzz) -> Vec<u8>,
        F: Fn(&[u8]) + Send + Sync + Clone + 'static,
    {
        let mut cases = 0;
        while self.running() {
            let input = make(&mut self);
            let case = case.clone();
            self.check(cases, input, move |bytes| case(bytes));
            cases += 1;
        }
        println!("fuzz {}: {cases} cases, no panic, no hang", self.name);
        cases
    }
}
