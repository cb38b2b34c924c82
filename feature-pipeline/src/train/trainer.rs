//! The training loop: batches, gradient accumulation, AdamW with a linear schedule and warm-up,
//! checkpoints, and a record of every step.
//!
//! Everything random is derived from the seed and the position in the run (adapter init from the
//! seed, each epoch's batch order from seed and epoch, dropout masks from candle's generator, which
//! is off by default since dropout is 0), so a run resumed from a checkpoint at optimizer step `s`
//! does exactly what the uninterrupted run did after step `s`.

use std::time::Instant;

use candle_core::{Result, Tensor};
use candle_nn::ParamsAdamW;
use serde::{Deserialize, Serialize};

use super::examples::{Example, epoch_batches};
use super::lora::Adapter;
use super::model::{Base, Batch};
use super::optimizer::AdamW;

/// How to train (the LoRA shape lives in the adapter).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub learning_rate: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Fraction of the optimizer steps spent warming the learning rate up from 0.
    pub warmup_ratio: f64,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Examples per batch (one forward pass).
    pub batch_size: usize,
    /// Batches whose gradients add up to one optimizer step.
    pub gradient_accumulation: usize,
    /// Seed of every random draw.
    pub seed: u64,
}

impl Default for Schedule {
    fn default() -> Self {
        Schedule {
            learning_rate: 2e-4,
            weight_decay: 0.01,
            warmup_ratio: 0.1,
            epochs: 3,
            batch_size: 4,
            gradient_accumulation: 1,
            seed: 42,
        }
    }
}

impl Schedule {
    /// Optimizer steps in one epoch of `batches` batches.
    pub fn steps_per_epoch(&self, batches: usize) -> usize {
        batches.div_ceil(self.gradient_accumulation.max(1))
    }

    /// The learning rate of optimizer step `step` (0-based) of `total`: linear warm-up, then
    /// linear decay to zero.
    pub fn learning_rate_at(&self, step: usize, total: usize) -> f64 {
        let warmup = ((total as f64) * self.warmup_ratio).ceil() as usize;
        let lr = self.learning_rate;
        if step < warmup {
            return lr * (step + 1) as f64 / warmup as f64;
        }
        let remaining = total.saturating_sub(warmup).max(1);
        lr * (total.saturating_sub(step)) as f64 / remaining as f64
    }
}

/// One optimizer step, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 1-based optimizer step.
    pub step: usize,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean cross-entropy per label token over the step's batches.
    pub loss: f64,
    /// Learning rate used.
    pub learning_rate: f64,
    /// Tokens the step's forward passes read.
    pub tokens: usize,
    /// Wall time of the step.
    pub seconds: f64,
}

/// Everything a checkpoint holds beyond the adapter's and optimizer's tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Optimizer steps done.
    pub step: usize,
    /// The records of those steps.
    pub records: Vec<StepRecord>,
}

/// What the loop hands to its caller at every checkpoint and at the end.
pub struct Snapshot<'a> {
    /// Steps done and their records.
    pub progress: &'a Progress,
    /// The adapter.
    pub adapter: &'a Adapter,
    /// The optimizer (its moments).
    pub optimizer: &'a AdamW,
}

/// Reports from the loop.
pub trait Observer {
    /// After each optimizer step.
    fn step(&mut self, record: &StepRecord, total_steps: usize);
    /// Every `checkpoint_every` steps (not after the last, which the caller saves as the result).
    fn checkpoint(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()>;
}

/// The state a resumed run starts from.
pub struct Resume {
    /// Steps done and their records.
    pub progress: Progress,
    /// The optimizer's first and second moments, in `Adapter::vars` order.
    pub moments: (Vec<Tensor>, Vec<Tensor>),
}

/// What a finished run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    /// Every step.
    pub progress: Progress,
    /// Optimizer steps of the whole run.
    pub total_steps: usize,
    /// Tokens per second over the steps this process ran.
    pub tokens_per_second: f64,
}

/// Keeps freed memory in the process for the next step instead of handing it back to the kernel.
///
/// Every step allocates and frees the same few hundred megabytes of activations; with glibc's
/// defaults, buffers over its adaptive threshold are mapped fresh each time, and the kernel zeroing
/// those pages cost 12% of a step (perf, 2 threads). A fixed 32 MiB threshold (glibc's largest)
/// and a high trim threshold let the heap serve them again.
fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; any value is valid to pass (it returns 0 to
    // refuse one), and it locks the allocator itself.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// Trains `adapter` on `examples`.
pub fn train(
    base: &Base,
    adapter: &Adapter,
    examples: &[Example],
    schedule: &Schedule,
    checkpoint_every: usize,
    resume: Option<Resume>,
    observer: &mut dyn Observer,
) -> anyhow::Result<Outcome> {
    reuse_freed_memory();
    if examples.is_empty() {
        anyhow::bail!("no training examples: the dataset's train split is empty or every row is too long");
    }
    let vars = adapter.vars();
    let mut optimizer = AdamW::new(
        vars.clone(),
        ParamsAdamW {
            lr: schedule.learning_rate,
            weight_decay: schedule.weight_decay,
            ..ParamsAdamW::default()
        },
    )?;
    let batches_per_epoch = examples.len().div_ceil(schedule.batch_size.max(1));
    let steps_per_epoch = schedule.steps_per_epoch(batches_per_epoch);
    let total_steps = steps_per_epoch * schedule.epochs;
    let mut progress = Progress {
        step: 0,
        records: Vec::new(),
    };
    if let Some(resume) = resume {
        optimizer.restore(resume.progress.step, resume.moments.0, resume.moments.1)?;
        progress = resume.progress;
    }
    let path = base.path();
    let accumulation = schedule.gradient_accumulation.max(1);
    let (mut tokens_seen, started) = (0usize, Instant::now());
    for epoch in 0..schedule.epochs {
        let batches = epoch_batches(examples, schedule.batch_size, schedule.seed, epoch);
        for (index, group) in batches.chunks(accumulation).enumerate() {
            let step = epoch * steps_per_epoch + index;
            if step < progress.step {
                continue;
            }
            let step_started = Instant::now();
            let labels: usize = group.iter().map(Batch::labels).sum();
            let mut sums: Vec<Option<Tensor>> = vec![None; vars.len()];
            let (mut loss, mut tokens) = (0f64, 0usize);
            for batch in group.iter().flat_map(Batch::examples) {
                let batch = &batch;
                let sum = base.loss_sum(adapter, batch, path, true)?;
                let scaled = (&sum / labels as f64)?;
                let grads = scaled.backward()?;
                loss += sum.to_scalar::<f32>()? as f64;
                tokens += batch.tokens.len();
                for (slot, var) in sums.iter_mut().zip(&vars) {
                    if let Some(g) = grads.get(var.as_tensor()) {
                        *slot = Some(match slot.take() {
                            Some(acc) => (acc + g)?,
                            None => g.clone(),
                        });
                    }
                }
            }
            let lr = schedule.learning_rate_at(step, total_steps);
            optimizer.set_learning_rate(lr);
            optimizer.step(&sums)?;
            let record = StepRecord {
                step: step + 1,
                epoch,
                loss: loss / labels.max(1) as f64,
                learning_rate: lr,
                tokens,
                seconds: step_started.elapsed().as_secs_f64(),
            };
            tokens_seen += tokens;
            progress.step = step + 1;
            progress.records.push(record.clone());
            observer.step(&record, total_steps);
            if checkpoint_every > 0 && progress.step.is_multiple_of(checkpoint_every) && progress.step < total_steps {
                observer.checkpoint(&Snapshot {
                    progress: &progress,
                    adapter,
                    optimizer: &optimizer,
                })?;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Outcome {
        progress,
        total_steps,
        tokens_per_second: if seconds > 0.0 {
            tokens_seen as f64 / seconds
        } else {
            0.0
        },
    })
}

/// The mean loss per label token of `examples` (no gradients), e.g. on the validation split.
pub fn evaluate(base: &Base, adapter: &Adapter, examples: &[Example], batch_size: usize) -> Result<Option<f64>> {
    let (mut sum, mut labels) = (0f64, 0usize);
    for batch in epoch_batches(examples, batch_size, 0, 0)
        .iter()
        .flat_map(Batch::examples)
    {
        let loss = base.loss_sum(adapter, &batch, base.path(), false)?;
        sum += loss.to_scalar::<f32>()? as f64;
        labels += batch.labels();
    }
    Ok((labels > 0).then(|| sum / labels as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_warms_up_then_decays_to_zero() {
        let schedule = Schedule {
            learning_rate: 1.0,
            warmup_ratio: 0.2,
            ..Schedule::default()
        };
        let lrs: Vec<f64> = (0..10).map(|s| schedule.learning_rate_at(s, 10)).collect();
        assert_eq!(lrs[0], 0.5);
        assert_eq!(lrs[1], 1.0);
        assert!(lrs[2..].windows(2).all(|w| w[1] < w[0]));
        assert!(lrs[9] > 0.0 && lrs[9] <= 0.125);
    }
}
