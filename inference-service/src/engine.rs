//! The engine: the model runs on dedicated threads, fed by a bounded queue.
//!
//! Generation is CPU-bound and long; it must not run on the async runtime's threads, which serve
//! HTTP. The HTTP layer hands the engine a [`Job`] and reads [`Event`]s back from a channel. The
//! queue has a fixed length: when it is full, [`Engine::submit`] refuses at once and the client gets
//! a 429 with `Retry-After` instead of an ever-growing wait. A client that goes away drops its
//! receiver; the worker notices on the next piece of text and stops generating.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use engram_shared::generation::{ChatMessage, Completion, Flow, GenerationParams, Generator};
use tokio::sync::mpsc as async_mpsc;

/// One generation to run.
pub struct Job {
    /// The model to run it on (the snapshot the request started with).
    pub generator: Arc<Generator>,
    /// The conversation, prompt included.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub params: GenerationParams,
    /// Where the events go.
    pub events: async_mpsc::Sender<Event>,
}

/// What a job reports.
#[derive(Debug)]
pub enum Event {
    /// A piece of generated text.
    Text(String),
    /// The generation ended.
    Done(Completion),
    /// The generation failed.
    Failed(String),
}

/// The queue in front of the model threads.
#[derive(Clone)]
pub struct Engine {
    queue: SyncSender<Job>,
    waiting: Arc<AtomicUsize>,
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
                        run(job);
                    }
                })
                .expect("spawn a model thread");
        }
        Self { queue: sender, waiting }
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
    let events = job.events;
    if events.is_closed() {
        return; // the client left while the job waited
    }
    let result = job.generator.generate(&job.messages, &job.params, |text| {
        match events.blocking_send(Event::Text(text.to_string())) {
            Ok(()) => Flow::Continue,
            Err(_) => Flow::Stop, // the client went away
        }
    });
    let last = match result {
        Ok(completion) => Event::Done(completion),
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
