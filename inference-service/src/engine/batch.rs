//! The running batch and one step of it.
//!
//! A step reads one chunk of one prompt (the oldest sequence still reading its prompt, so prompts
//! are served first come, first served, and chunk boundaries depend on the sequence alone), then
//! decodes one token for every sequence past its prompt: one call, one pass over the weights, per
//! model (two models run side by side only while a newly promoted one takes over). Every piece of
//! text goes to its client as soon as the step makes it.

use std::sync::Arc;

use engram_shared::generation::{GenerationError, Step};

use super::{CRASHED, Event, Job, Model, Phase, first_line, guarded};

/// A sequence in the batch, with its job's place and KV reservation.
pub(super) struct Running<M: Model> {
    pub(super) job: Job<M>,
    pub(super) sequence: M::Sequence,
    pub(super) kv_bytes: usize,
    /// Ended (answered, failed, or its client left): leaves the batch after the step.
    pub(super) done: bool,
    /// Its `prefill` span while it reads its prompt, then its `decode` span.
    pub(super) phase: tracing::Span,
}

/// The sequences being generated.
pub(super) struct Batch<M: Model> {
    pub(super) running: Vec<Running<M>>,
}

/// What a model call gave one sequence: its step, the model's error, or a panic's message.
type Outcome = Result<Result<Step, String>, String>;

impl<M: Model> Batch<M> {
    pub(super) fn new() -> Self {
        Batch { running: Vec::new() }
    }

    pub(super) fn len(&self) -> usize {
        self.running.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.running.is_empty()
    }

    /// Marks the sequences whose clients went away: their places are freed after this step.
    pub(super) fn drop_abandoned(&mut self) {
        for running in &mut self.running {
            if running.job.events.is_closed() {
                running.done = true;
            }
        }
    }

    /// One step: a chunk of the oldest waiting prompt, then a token for every other sequence.
    /// Returns how many sequences each decode call ran.
    pub(super) fn step(&mut self, prefill_chunk: usize) -> Vec<usize> {
        let reading = |r: &Running<M>| !r.done && r.job.generator.prompt_left(&r.sequence) > 0;
        if let Some(i) = self.running.iter().position(reading) {
            let running = &mut self.running[i];
            let generator = running.job.generator.clone();
            let outcome = running.phase.in_scope(|| {
                guarded(|| generator.prefill(&mut running.sequence, prefill_chunk))
                    .map(|r| r.map_err(|e| first_line(&e)))
            });
            if matches!(outcome, Ok(Ok(_))) && generator.prompt_left(&running.sequence) == 0 {
                // The prompt is read (and its first token sampled): the prefill span ends, and
                // the decode span begins, before the first token is delivered.
                drop(std::mem::replace(&mut running.phase, tracing::Span::none()));
                running.phase = Phase::Decode.span(&running.job);
            }
            deliver(running, outcome);
        }
        let decoding = |r: &Running<M>| !r.done && r.job.generator.prompt_left(&r.sequence) == 0;
        let mut models: Vec<Arc<M>> = Vec::new();
        for running in self.running.iter().filter(|r| decoding(r)) {
            if !models.iter().any(|m| Arc::ptr_eq(m, &running.job.generator)) {
                models.push(running.job.generator.clone());
            }
        }
        let mut sizes = Vec::with_capacity(models.len());
        for model in models {
            let (members, mut sequences): (Vec<usize>, Vec<&mut M::Sequence>) = self
                .running
                .iter_mut()
                .enumerate()
                .filter(|(_, r)| decoding(r) && Arc::ptr_eq(&r.job.generator, &model))
                .map(|(i, r)| (i, &mut r.sequence))
                .unzip();
            sizes.push(members.len());
            let outcome: Result<Result<Vec<Step>, GenerationError>, String> = guarded(|| model.decode(&mut sequences));
            drop(sequences);
            match outcome {
                Ok(Ok(steps)) if steps.len() == members.len() => {
                    for (i, step) in members.into_iter().zip(steps) {
                        deliver(&mut self.running[i], Ok(Ok(step)));
                    }
                }
                Ok(Ok(steps)) => {
                    let why = format!(
                        "the model returned {} steps for {} sequences",
                        steps.len(),
                        members.len()
                    );
                    for i in members {
                        deliver(&mut self.running[i], Err(why.clone()));
                    }
                }
                Ok(Err(err)) => {
                    let why = first_line(&err);
                    for i in members {
                        deliver(&mut self.running[i], Ok(Err(why.clone())));
                    }
                }
                Err(panic) => {
                    for i in members {
                        deliver(&mut self.running[i], Err(panic.clone()));
                    }
                }
            }
        }
        sizes
    }

    /// Takes the ended sequences out of the batch (the rest keep their order); returns the KV
    /// bytes they reserved and the sequences themselves. Dropping those ends their jobs (their
    /// clients see their event channels close, their places go back), so the caller drops them
    /// only after the counters say they are gone.
    pub(super) fn retire(&mut self) -> (usize, Vec<Running<M>>) {
        let (ended, running): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running).into_iter().partition(|r| r.done);
        self.running = running;
        (ended.iter().map(|r| r.kv_bytes).sum(), ended)
    }
}

/// Hands a step's outcome to the sequence's client. The sequence's span ends before the client
/// hears that it ended, so the request's own span (which ends on that news) outlives it.
fn deliver<M: Model>(running: &mut Running<M>, outcome: Outcome) {
    let last = {
        let _entered = running.phase.enter();
        let events = &running.job.events;
        match outcome {
            Ok(Ok(step)) => {
                if !step.text.is_empty() && events.send(Event::Text(step.text)).is_err() {
                    running.done = true; // the client went away
                    return;
                }
                step.completion.map(|completion| {
                    running.phase.record(
                        "gen_ai.usage.output_tokens",
                        crate::telemetry::int(completion.usage.completion_tokens),
                    );
                    tracing::info!(
                        prompt_tokens = completion.usage.prompt_tokens,
                        completion_tokens = completion.usage.completion_tokens,
                        finish = ?completion.finish_reason,
                        "generated"
                    );
                    Event::Done(completion)
                })
            }
            Ok(Err(why)) => Some(Event::Failed(why)),
            Err(panic) => {
                tracing::error!(%panic, "the model panicked while generating; the request fails, the engine serves on");
                Some(Event::Crashed(CRASHED.to_string()))
            }
        }
    };
    if let Some(event) = last {
        drop(std::mem::replace(&mut running.phase, tracing::Span::none()));
        let _ = running.job.events.send(event);
        running.done = true;
    }
}
