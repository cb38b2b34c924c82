//! The engine: the model runs on dedicated threads, fed by a bounded queue.
//!
//! Generation is CPU-bound and long; it must not run on the async runtime's threads, which serve
//! HTTP. The HTTP layer hands the engine a [`Job`] and reads [`Event`]s back from a channel. The
//! queue has a fixed length: when it is full, [`Engine::submit`] refuses at once and the client gets
//! a 429 with `Retry-After` instead of an ever-growing wait. A request is admitted
//! ([`Engine::admit`]) before it does any work (embedding, retrieval, prompt): the [`Admission`]
//! holds one of `workers + queue` places until its generation ends, so excess load is shed before
//! it costs anything. A client that goes away drops its
//! receiver; the worker notices on the next piece of text and stops generating. A panic while
//! generating fails that request ([`Event::Crashed`], a 500) and the thread goes on serving.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use engram_shared::generation::{ChatMessage, Completion, Flow, GenerationError, GenerationParams, Generator};
use tokio::sync::mpsc as async_mpsc;

/// What the engine runs: a language model that generates an answer to messages, piece by piece.
pub trait Model: Send + Sync {
    /// Generates, calling `on_text` with each new piece of text.
    fn generate(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion, GenerationError>;
}

impl Model for Generator {
    fn generate(
        &self,
        messages: &[ChatMessage],
        params: &GenerationParams,
        on_text: &mut dyn FnMut(&str) -> Flow,
    ) -> Result<Completion, GenerationError> {
        Generator::generate(self, messages, params, on_text)
    }
}

/// A place in the engine, taken before a request does any work and given back when its job
/// ends (or when the request ends without one).
#[derive(Debug)]
pub struct Admission(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit); // held, never read

/// One generation to run.
pub struct Job {
    /// Its place in the engine, held until the job ends.
    pub admission: Admission,
    /// The model to run it on (the snapshot the request started with).
    pub generator: Arc<dyn Model>,
    /// The conversation, prompt included.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub params: GenerationParams,
    /// Where the events go.
    pub events: async_mpsc::Sender<Event>,
    /// The request's span (its id): the model thread logs inside it.
    pub span: tracing::Span,
}

/// What a job reports.
#[derive(Debug)]
pub enum Event {
    /// A piece of generated text.
    Text(String),
    /// The generation ended.
    Done(Completion),
    /// The generation failed: the request cannot be answered as asked.
    Failed(String),
    /// The engine failed (a panic while generating): not the request's fault.
    Crashed(String),
}

/// The queue in front of the model threads.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
    places: Arc<tokio::sync::Semaphore>,
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// The queue is full: try again later.
    Busy,
    /// The engine has stopped.
    Stopped,
}

impl Engine {
    /// Starts `workers` model threads behind a queue of `queue` jobs.
    pub fn start(workers: usize, queue: usize) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<Job>(queue);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let waiting = Arc::new(AtomicUsize::new(0));
        for index in 0..workers.max(1) {
            let receiver = receiver.clone();
            let waiting = waiting.clone();
            std::thread::Builder::new()
                .name(format!("engram-model-{index}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(receiver) = receiver.lock() else { return };
                            match receiver.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        waiting.fetch_sub(1, Ordering::SeqCst);
                        let events = job.events.clone();
                        let span = job.span.clone();
                        let _entered = span.enter();
                        if let Err(panic) = catch_unwind(AssertUnwindSafe(|| run(job))) {
                            let why = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_default();
                            tracing::error!(panic = %why, "the model panicked while generating; the request fails, the thread serves on");
                            let _ = events.blocking_send(Event::Crashed(
                                "the model failed on this request (an internal error, logged): retry, and report it if it persists"
                                    .to_string(),
                            ));
                        }
                    }
                })
                .expect("spawn a model thread");
        }
        Self {
            queue: sender,
            waiting,
            places: Arc::new(tokio::sync::Semaphore::new(workers.max(1) + queue)),
        }
    }

    /// Takes a place for a request, or refuses at once when every place is taken (running or
    /// waiting): the caller answers 429 before doing any work.
    pub fn admit(&self) -> Result<Admission, Refused> {
        match self.places.clone().try_acquire_owned() {
            Ok(permit) => Ok(Admission(permit)),
            Err(tokio::sync::TryAcquireError::NoPermits) => Err(Refused::Busy),
            Err(tokio::sync::TryAcquireError::Closed) => Err(Refused::Stopped),
        }
    }

    /// Queues a job, or refuses it at once when the queue is full.
    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        match self.queue.try_send(job) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match err {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Jobs waiting for a model thread.
    pub fn queue_depth(&self) -> usize {
        self.waiting.load(Ordering::SeqCst)
    }
}

fn run(job: Job) {
    let Job {
        admission,
        generator,
        messages,
        params,
        events,
        span: _,
    } = job;
    run_generation(&*generator, &messages, &params, events);
    drop(admission); // the place is free once the answer is out
}

fn run_generation(
    generator: &dyn Model,
    messages: &[ChatMessage],
    params: &GenerationParams,
    events: async_mpsc::Sender<Event>,
) {
    if events.is_closed() {
        return; // the client left while the job waited
    }
    let result = generator.generate(messages, params, &mut |text| {
        match events.blocking_send(Event::Text(text.to_string())) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the client went away
        }
    });
    let last = match result {
        Ok(completion) => {
            tracing::info!(
                prompt_tokens = completion.usage.prompt_tokens,
                completion_tokens = completion.usage.completion_tokens,
                finish = ?completion.finish_reason,
                "generated"
            );
            Event::Done(completion)
        }
        // The first line: errors from the model carry a backtrace that is no business of the client.
        Err(err) => Event::Failed(
            err.to_string()
                .lines()
                .next()
                .unwrap_or("generation failed")
                .to_string(),
        ),
    };
    let _ = events.blocking_send(last);
}

#[cfg(test)]
mod tests {
    use engram_shared::generation::{FinishReason, Timings, Usage};

    use super::*;

    /// A stand-in model that panics on the word "panic" and otherwise echoes the question: the
    /// engine's recovery is what is tested, not a model.
    struct Echo;

    impl Model for Echo {
        fn generate(
            &self,
            messages: &[ChatMessage],
            _: &GenerationParams,
            on_text: &mut dyn FnMut(&str) -> Flow,
        ) -> Result<Completion, GenerationError> {
            let text = messages.last().map(|m| m.content.clone()).unwrap_or_default();
            assert!(text != "panic", "a bug in the model");
            on_text(&text);
            Ok(Completion {
                text,
                usage: Usage {
                    prompt_tokens: 1,
                    completion_tokens: 1,
                },
                finish_reason: FinishReason::Stop,
                timings: Timings::default(),
            })
        }
    }

    async fn ask(engine: &Engine, question: &str) -> Vec<Event> {
        let (events, mut received) = async_mpsc::channel(8);
        engine
            .submit(Job {
                admission: engine.admit().expect("a place"),
                generator: Arc::new(Echo),
                messages: vec![ChatMessage::new(engram_shared::generation::Role::User, question)],
                params: GenerationParams::default(),
                events,
                span: tracing::Span::none(),
            })
            .expect("queued");
        let mut all = Vec::new();
        while let Some(event) = received.recv().await {
            all.push(event);
        }
        all
    }

    #[tokio::test]
    async fn a_panic_fails_its_request_and_the_one_thread_serves_the_next() {
        let engine = Engine::start(1, 4);
        let crashed = ask(&engine, "panic").await;
        assert!(
            matches!(crashed.as_slice(), [Event::Crashed(why)] if why.contains("internal error")),
            "{crashed:?}"
        );
        for _ in 0..3 {
            let answered = ask(&engine, "still here?").await;
            assert!(
                matches!(answered.as_slice(), [Event::Text(_), Event::Done(c)] if c.text == "still here?"),
                "{answered:?}"
            );
        }
        assert_eq!(engine.queue_depth(), 0);
    }

    #[tokio::test]
    async fn admission_takes_a_place_per_request_and_refuses_beyond_workers_plus_queue() {
        let engine = Engine::start(1, 2);
        let places: Vec<Admission> = (0..3).map(|_| engine.admit().expect("three places")).collect();
        assert_eq!(
            engine.admit().unwrap_err(),
            Refused::Busy,
            "the fourth is refused before any work"
        );
        drop(places);
        let answered = ask(&engine, "after").await;
        assert!(matches!(answered.last(), Some(Event::Done(_))), "{answered:?}");
        assert!(engine.admit().is_ok(), "a finished job gives its place back");
    }
}
