//! `feature-pipeline bench-train`: training speed and memory on a fixed workload, for
//! `scripts/bench/train.sh`, which runs the same workload through transformers + peft.
//!
//! The workload: `--steps` optimizer steps (after one warm-up step) of batch 1 over sequences of
//! `--seq-len` seeded random tokens whose last `--answer` tokens carry the loss, LoRA r=16,
//! alpha=16 on all seven projections, AdamW. Prints one JSON line: tokens per second (every
//! token of each sequence, as the peer counts them) and the process's peak RSS.

use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use engram_shared::generation::checkpoint::Checkpoint;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use crate::config::BenchTrainArgs;
use crate::train::examples::Example;
use crate::train::lora::{Adapter, LoraConfig};
use crate::train::model::Base;
use crate::train::trainer::{self, Observer, Schedule, Snapshot, StepRecord};

struct Timings(Vec<StepRecord>);

impl Observer for Timings {
    fn step(&mut self, record: &StepRecord, _total_steps: usize) {
        self.0.push(record.clone());
    }
    fn checkpoint(&mut self, _snapshot: &Snapshot<'_>) -> Result<()> {
        Ok(())
    }
}

/// The process's peak resident set size in bytes (Linux), if known.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Runs `bench-train`.
pub fn run(args: &BenchTrainArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(args.threads).build()?;
    pool.install(|| {
        let checkpoint =
            Checkpoint::load(&args.base, usize::MAX).with_context(|| format!("cannot read {}", args.base.display()))?;
        let vocab = checkpoint.vocab_size()? as u32;
        let base = Base::new(checkpoint.shape, &checkpoint.tensors, args.seq_len, &Device::Cpu)?;
        drop(checkpoint);
        let adapter = Adapter::new(
            LoraConfig::default(),
            base.shape().layers,
            |p| base.projection_shape(p),
            1,
            &Device::Cpu,
        )?;
        let mut rng = StdRng::seed_from_u64(7);
        let examples: Vec<Example> = (0..=args.steps)
            .map(|_| Example {
                tokens: (0..args.seq_len).map(|_| rng.random_range(0..vocab)).collect(),
                prompt: args.seq_len - args.answer.min(args.seq_len - 1),
            })
            .collect();
        let schedule = Schedule {
            epochs: 1,
            batch_size: 1,
            ..Schedule::default()
        };
        let mut timings = Timings(Vec::new());
        let started = Instant::now();
        trainer::train(&base, &adapter, &examples, &schedule, 0, None, &mut timings)?;
        let total = started.elapsed().as_secs_f64();
        // The first step warms caches and allocators up; the rest are timed.
        let timed = &timings.0[1..];
        let seconds: f64 = timed.iter().map(|r| r.seconds).sum();
        let tokens: usize = timed.iter().map(|r| r.tokens).sum();
        println!(
            "{}",
            json!({
                "bench": "train",
                "engine": "engram",
                "threads": args.threads,
                "seq_len": args.seq_len,
                "answer_tokens": args.answer,
                "steps": timed.len(),
                "tokens_per_s": tokens as f64 / seconds,
                "seconds_per_step": seconds / timed.len() as f64,
                "wall_s": total,
                "peak_rss_bytes": peak_rss(),
                "last_loss": timed.last().map(|r| r.loss),
            })
        );
        Ok(())
    })
}
