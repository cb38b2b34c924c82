//! The engine: one scheduler thread runs every generation, continuously batched.
//!
//! Generation is CPU-bound and long; it must not run on the async runtime's threads, which serve
//! HTTP. The HTTP layer hands the engine a [`Job`] and reads [`Event`]s back from a channel.
//!
//! Decoding a token is bound by reading the weights, so sequences decoded together read them once:
//! the scheduler ([`scheduler`]) admits waiting jobs at every step, first come first served, up to
//! `max_batch` sequences and a KV-cache budget ([`kv_cache`]); each step ([`batch`]) reads one
//! chunk of one waiting prompt, then decodes one token for every running sequence in one pass over
//! the weights. A sequence's tokens do not depend on what else is in the batch (greedy answers are
//! those it gets alone, seeded samples too), and a long prompt costs the running streams one chunk
//! per step, not the whole prompt.
//!
//! Back-pressure comes before work: a request takes a place ([`Engine::admit`], one of
//! `max_batch + max_queue`) before it embeds or retrieves anything, and is refused at once, for a
//! 429 with `Retry-After`, when every place is taken. A client that goes away drops its receiver;
//! its sequence leaves the batch at the next step and frees its place and its KV cache. A panic in
//! the model fails the requests of that call ([`Event::Crashed`], a 500) and the engine serves on.

mod batch;
pub mod kv_cache;
mod scheduler;
#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};

use engram_shared::generation::{
    ChatMessage, Completion, GenerationError, GenerationParams, Generator, Sequence, Step,
};
use tokio::sync::mpsc as async_mpsc;

/// What the engine runs: a language model whose generations advance in steps, many at a time.
pub trait Model: Send + Sync + 'static {
    /// One generation's state between steps.
    type Sequence: Send;

    /// Starts a generation (renders and encodes the prompt; the model reads nothing yet).
    fn begin(&self, messages: &[ChatMessage], params: &GenerationParams) -> Result<Self::Sequence, GenerationError>;

    /// Bytes of KV cache the sequence can come to hold (its prompt and its token budget).
    fn kv_bytes(&self, sequence: &Self::Sequence) -> usize;

    /// Prompt tokens the model has not read yet.
    fn prompt_left(&self, sequence: &Self::Sequence) -> usize;

    /// Reads up to `chunk` more prompt tokens; the last chunk samples the first token.
    fn prefill(&self, sequence: &mut Self::Sequence, chunk: usize) -> Result<Step, GenerationError>;

    /// Decodes one token for each sequence (all past their prompts), together.
    fn decode(&self, sequences: &mut [&mut Self::Sequence]) -> Result<Vec<Step>, GenerationError>;
}

impl Model for Generator {
    type Sequence = Sequence;

    fn begin(&self, messages: &[ChatMessage], params: &GenerationParams) -> Result<Sequence, GenerationError> {
        Generator::begin(self, messages, params)
    }

    fn kv_bytes(&self, sequence: &Sequence) -> usize {
        sequence.positions_needed() * self.kv_bytes_per_position()
    }

    fn prompt_left(&self, sequence: &Sequence) -> usize {
        sequence.prompt_left()
    }

    fn prefill(&self, sequence: &mut Sequence, chunk: usize) -> Result<Step, GenerationError> {
        Generator::prefill(self, sequence, chunk)
    }

    fn decode(&self, sequences: &mut [&mut Sequence]) -> Result<Vec<Step>, GenerationError> {
        self.decode_batch(sequences)
    }
}

/// How much the engine runs at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most requests waiting for a place in the batch; beyond them requests get 429.
    pub max_queue: usize,
    /// Bytes of keys and values all running sequences may reserve together.
    pub kv_cache_bytes: usize,
    /// Prompt tokens read per step.
    pub prefill_chunk: usize,
}

/// A place in the engine, taken before a request does any work and given back when its job
/// ends (or when the request ends without one).
#[derive(Debug)]
pub struct Admission(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit); // held, never read

/// One generation to run.
pub struct Job<M: Model = Generator> {
    /// Its place in the engine, held until the job ends (dropped with it, never read).
    #[allow(dead_code)]
    pub admission: Admission,
    /// The model to run it on (the snapshot the request started with).
    pub generator: Arc<M>,
    /// The conversation, prompt included.
    pub messages: Vec<ChatMessage>,
    /// Sampling parameters.
    pub params: GenerationParams,
    /// Where the events go. Unbounded so that a slow reader never stalls the batch: a request
    /// sends at most its `max_tokens` pieces.
    pub events: async_mpsc::UnboundedSender<Event>,
    /// The model's name, for the phases' span names.
    pub model: String,
    /// The request's span (its id): the engine's phase spans are its children.
    pub span: tracing::Span,
}

/// A job on its way to the scheduler, its `queue` span open since it was submitted.
struct Queued<M: Model> {
    job: Job<M>,
    queue: tracing::Span,
}

/// A job's phase in the engine: waiting for a place in the batch, reading its prompt, or
/// generating. Each is a span under the request's span, named `{phase} {model}` in the pattern of
/// the GenAI semantic conventions (which name no server-side phases; see `crate::telemetry`).
#[derive(Debug, Clone, Copy)]
enum Phase {
    Queue,
    Prefill,
    Decode,
}

impl Phase {
    fn span<M: Model>(self, job: &Job<M>) -> tracing::Span {
        let parent = &job.span;
        let model = job.model.as_str();
        let empty = tracing::field::Empty;
        match self {
            Phase::Queue => tracing::info_span!(parent: parent, "queue",
                otel.name = %format!("queue {model}"), gen_ai.operation.name = "queue", gen_ai.request.model = %model),
            Phase::Prefill => tracing::info_span!(parent: parent, "prefill",
                otel.name = %format!("prefill {model}"), gen_ai.operation.name = "prefill", gen_ai.request.model = %model,
                engram.prefill.tokens = empty),
            Phase::Decode => tracing::info_span!(parent: parent, "decode",
                otel.name = %format!("decode {model}"), gen_ai.operation.name = "decode", gen_ai.request.model = %model,
                gen_ai.usage.output_tokens = empty),
        }
    }
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

/// What the engine holds now, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Load {
    /// Requests waiting for a place in the batch.
    pub waiting: usize,
    /// Sequences in the batch.
    pub running: usize,
    /// KV-cache bytes the running sequences reserve.
    pub kv_cache_used_bytes: usize,
    /// The KV-cache budget.
    pub kv_cache_capacity_bytes: usize,
}

/// Counters the scheduler writes and the metrics read.
#[derive(Debug, Default)]
struct Shared {
    waiting: AtomicUsize,
    running: AtomicUsize,
    kv_used: AtomicUsize,
}

/// The queue in front of the scheduler.
pub struct Engine<M: Model = Generator> {
    jobs: SyncSender<Queued<M>>,
    shared: Arc<Shared>,
    places: Arc<tokio::sync::Semaphore>,
    limits: Limits,
}

impl<M: Model> Clone for Engine<M> {
    fn clone(&self) -> Self {
        Engine {
            jobs: self.jobs.clone(),
            shared: self.shared.clone(),
            places: self.places.clone(),
            limits: self.limits,
        }
    }
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Every place is taken: try again later.
    Busy,
    /// The engine has stopped.
    Stopped,
}

impl<M: Model> Engine<M> {
    /// Starts the scheduler thread. `batch_size`, when given, observes how many sequences each
    /// decode step ran.
    pub fn start(limits: Limits, batch_size: Option<prometheus::Histogram>) -> Self {
        let limits = Limits {
            max_batch: limits.max_batch.max(1),
            prefill_chunk: limits.prefill_chunk.max(1),
            ..limits
        };
        let places = limits.max_batch + limits.max_queue;
        // Every admitted request fits in the channel: only admission refuses.
        let (jobs, receiver) = mpsc::sync_channel::<Queued<M>>(places);
        let shared = Arc::new(Shared::default());
        let scheduler = scheduler::Scheduler::new(receiver, limits, shared.clone(), batch_size);
        std::thread::Builder::new()
            .name("engram-engine".into())
            .spawn(move || scheduler.run())
            .expect("spawn the engine's thread");
        Self {
            jobs,
            shared,
            places: Arc::new(tokio::sync::Semaphore::new(places)),
            limits,
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

    /// Queues a job (it holds its place already).
    pub fn submit(&self, job: Job<M>) -> Result<(), Refused> {
        self.shared.waiting.fetch_add(1, Ordering::SeqCst);
        let queue = Phase::Queue.span(&job);
        match self.jobs.try_send(Queued { job, queue }) {
            Ok(()) => Ok(()),
            Err(err) => {
                self.shared.waiting.fetch_sub(1, Ordering::SeqCst);
                Err(match err {
                    TrySendError::Full(_) => Refused::Busy,
                    TrySendError::Disconnected(_) => Refused::Stopped,
                })
            }
        }
    }

    /// Jobs waiting for a place in the batch.
    pub fn queue_depth(&self) -> usize {
        self.shared.waiting.load(Ordering::SeqCst)
    }

    /// What the engine holds now.
    pub fn load(&self) -> Load {
        Load {
            waiting: self.queue_depth(),
            running: self.shared.running.load(Ordering::SeqCst),
            kv_cache_used_bytes: self.shared.kv_used.load(Ordering::SeqCst),
            kv_cache_capacity_bytes: self.limits.kv_cache_bytes,
        }
    }
}

/// The first line of a model error: errors from candle carry a backtrace that is no business of
/// the client.
fn first_line(err: &GenerationError) -> String {
    err.to_string()
        .lines()
        .next()
        .unwrap_or("generation failed")
        .to_string()
}

/// Runs `f`, turning a panic into its message.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default()
    })
}

/// What a client is told when the model panicked on its request.
const CRASHED: &str =
    "the model failed on this request (an internal error, logged): retry, and report it if it persists";
