//! The scheduler loop: admit, step, retire, on the engine's one thread.
//!
//! Before every step it takes the jobs that arrived, drops those whose clients left, and admits
//! waiting jobs first come, first served, while the batch has room (`max_batch`) and the job's KV
//! reservation fits what is left of the budget. A job that does not fit waits, and so does every
//! job behind it (no job overtakes another, so none starves); one that could never fit, even in an
//! empty batch, fails at once with what to change. With nothing to run the thread sleeps on the
//! queue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};

use super::batch::{Batch, Running};
use super::kv_cache::KvCache;
use super::{CRASHED, Event, Job, Limits, Model, Phase, Queued, Shared, first_line, guarded};

/// A job in the queue, its sequence begun once it reached the front.
struct Waiting<M: Model> {
    job: Job<M>,
    /// Open while it waits (closed when it is admitted or fails).
    queue: tracing::Span,
    begun: Option<(M::Sequence, usize)>,
}

impl<M: Model> From<Queued<M>> for Waiting<M> {
    fn from(Queued { job, queue }: Queued<M>) -> Self {
        Waiting {
            job,
            queue,
            begun: None,
        }
    }
}

pub(super) struct Scheduler<M: Model> {
    jobs: Receiver<Queued<M>>,
    limits: Limits,
    shared: Arc<Shared>,
    batch_size: Option<prometheus::Histogram>,
    waiting: VecDeque<Waiting<M>>,
    batch: Batch<M>,
    kv: KvCache,
}

const MIB: usize = 1 << 20;

impl<M: Model> Scheduler<M> {
    pub(super) fn new(
        jobs: Receiver<Queued<M>>,
        limits: Limits,
        shared: Arc<Shared>,
        batch_size: Option<prometheus::Histogram>,
    ) -> Self {
        Scheduler {
            jobs,
            kv: KvCache::new(limits.kv_cache_bytes),
            limits,
            shared,
            batch_size,
            waiting: VecDeque::new(),
            batch: Batch::new(),
        }
    }

    /// Runs until every [`super::Engine`] handle is gone and nothing is left to generate.
    pub(super) fn run(mut self) {
        while self.receive() {
            self.drop_abandoned();
            self.admit();
            self.publish();
            for size in self.batch.step(self.limits.prefill_chunk) {
                if let Some(histogram) = &self.batch_size {
                    histogram.observe(size as f64);
                }
            }
            let (freed, ended) = self.batch.retire();
            self.kv.release(freed);
            self.publish();
            drop(ended);
        }
    }

    /// What the batch holds, for the metrics: after admission (before the step sends anything)
    /// and after retirement.
    fn publish(&self) {
        self.shared.running.store(self.batch.len(), Ordering::SeqCst);
        self.shared.kv_used.store(self.kv.used(), Ordering::SeqCst);
    }

    /// Takes the jobs that arrived, sleeping for one when there is nothing to do. False when the
    /// engine is gone and nothing is left.
    fn receive(&mut self) -> bool {
        if self.batch.is_empty() && self.waiting.is_empty() {
            match self.jobs.recv() {
                Ok(queued) => self.waiting.push_back(queued.into()),
                Err(_) => return false,
            }
        }
        loop {
            match self.jobs.try_recv() {
                Ok(queued) => self.waiting.push_back(queued.into()),
                Err(TryRecvError::Empty) => return true,
                Err(TryRecvError::Disconnected) => return !(self.batch.is_empty() && self.waiting.is_empty()),
            }
        }
    }

    fn drop_abandoned(&mut self) {
        self.batch.drop_abandoned();
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.job.events.is_closed());
        self.shared
            .waiting
            .fetch_sub(before - self.waiting.len(), Ordering::SeqCst);
    }

    /// Admits waiting jobs, in order, while the batch has room and their KV reservations fit.
    fn admit(&mut self) {
        while self.batch.len() < self.limits.max_batch {
            let Some(front) = self.waiting.front_mut() else { return };
            let begun = match front.begun.take() {
                Some(begun) => Ok(begun),
                None => {
                    let _entered = front.queue.enter();
                    let job = &front.job;
                    match guarded(|| job.generator.begin(&job.messages, &job.params)) {
                        Ok(Ok(sequence)) => {
                            let bytes = job.generator.kv_bytes(&sequence);
                            Ok((sequence, bytes))
                        }
                        Ok(Err(err)) => Err(Event::Failed(first_line(&err))),
                        Err(panic) => {
                            tracing::error!(%panic, "the model panicked starting a generation; the request fails, the engine serves on");
                            Err(Event::Crashed(CRASHED.to_string()))
                        }
                    }
                }
            };
            let (sequence, bytes) = match begun {
                Ok(begun) => begun,
                Err(event) => {
                    self.fail_front(event);
                    continue;
                }
            };
            if bytes > self.kv.capacity() {
                self.fail_front(Event::Failed(format!(
                    "this request needs {} MiB of KV cache (its prompt and max_tokens) and the engine holds {} MiB in all: \
                     lower max_tokens or shorten the conversation (the operator can raise ENGRAM_KV_CACHE_MIB)",
                    bytes.div_ceil(MIB),
                    self.kv.capacity() / MIB
                )));
                continue;
            }
            if !self.kv.try_reserve(bytes) {
                // Waits for running sequences to end; nothing behind it goes first.
                if let Some(front) = self.waiting.front_mut() {
                    front.begun = Some((sequence, bytes));
                }
                return;
            }
            let Some(Waiting { job, queue, .. }) = self.waiting.pop_front() else {
                return;
            };
            drop(queue);
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let phase = Phase::Prefill.span(&job);
            // What is left to read: the prompt, less the positions shared with the last one read.
            phase.record(
                "engram.prefill.tokens",
                crate::telemetry::int(job.generator.prompt_left(&sequence)),
            );
            self.batch.running.push(Running {
                job,
                sequence,
                kv_bytes: bytes,
                done: false,
                phase,
            });
        }
    }

    fn fail_front(&mut self, event: Event) {
        if let Some(Waiting { job, .. }) = self.waiting.pop_front() {
            self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
            let _ = job.events.send(event);
        }
    }
}
