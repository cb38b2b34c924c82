//! The teacher: a stronger LLM that writes the summaries the small model learns from.
//!
//! One trait, two backends: any OpenAI-compatible chat endpoint ([`http::HttpTeacher`]), and the
//! local SLM in-process ([`local::LocalTeacher`], the offline default: weak, but it needs nothing).
//! Every call goes through [`CachedTeacher`], which stores each answer in the registry the moment it
//! arrives, keyed by a hash of (teacher, prompt, parameters): a rerun pays nothing twice, and a run
//! killed half-way resumes where it stopped. It also keeps the run's token and cost accounting.

pub mod http;
pub mod local;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use engram_shared::generation::ChatMessage;
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

/// What the teacher is asked.
#[derive(Debug, Clone, Serialize)]
pub struct TeacherRequest {
    /// The conversation (system instructions and the user's request).
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling seed (endpoints that support it give the same answer twice).
    pub seed: u64,
}

/// What the teacher answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherReply {
    /// The answer.
    pub text: String,
    /// Prompt tokens, as the teacher counted them.
    pub prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
}

/// Why a teacher call failed (after its retries).
#[derive(Debug, thiserror::Error)]
pub enum TeacherError {
    /// The endpoint refused the request; retrying would not help.
    #[error("the teacher endpoint answered {status}: {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The endpoint's message.
        message: String,
    },
    /// The endpoint kept failing (5xx, 429, timeouts, connection errors) until retries ran out.
    #[error(
        "the teacher endpoint failed {attempts} times, last: {last}. Check ENGRAM_TEACHER_URL and the endpoint's health, then rerun: answers already received are kept"
    )]
    Exhausted {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The local model failed.
    #[error("the local teacher failed: {0}")]
    Local(String),
    /// The answer could not be read or stored.
    #[error("{0}")]
    Other(String),
}

/// A teacher LLM.
#[async_trait]
pub trait Teacher: Send + Sync {
    /// What identifies its answers: backend and model (part of every cache key).
    fn id(&self) -> &str;
    /// Asks once (with the backend's own retries).
    async fn ask(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError>;
}

/// Tokens, calls and cost of one run's teacher use.
#[derive(Debug, Default)]
pub struct Accounting {
    /// Calls answered by the teacher.
    pub calls: AtomicU64,
    /// Calls answered from the cache.
    pub cached: AtomicU64,
    /// Prompt tokens paid for.
    pub prompt_tokens: AtomicU64,
    /// Completion tokens paid for.
    pub completion_tokens: AtomicU64,
}

/// A snapshot of [`Accounting`], with the cost.
#[derive(Debug, Clone, Serialize)]
pub struct Spent {
    /// Calls answered by the teacher.
    pub calls: u64,
    /// Calls answered from the cache (free).
    pub cached: u64,
    /// Prompt tokens paid for.
    pub prompt_tokens: u64,
    /// Completion tokens paid for.
    pub completion_tokens: u64,
    /// Estimated cost in USD, from the configured prices per million tokens.
    pub cost_usd: f64,
}

/// Prices per million tokens, for the cost estimate.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Prices {
    /// USD per million prompt tokens.
    pub prompt: f64,
    /// USD per million completion tokens.
    pub completion: f64,
}

/// A teacher behind the registry's response cache, with a concurrency limit and accounting.
pub struct CachedTeacher {
    inner: Arc<dyn Teacher>,
    registry: Registry,
    prices: Prices,
    permits: Semaphore,
    /// What this run spent.
    pub accounting: Accounting,
}

impl CachedTeacher {
    /// Wraps `inner`, with at most `concurrency` calls to it in flight (cache reads are not limited).
    pub fn new(inner: Arc<dyn Teacher>, registry: Registry, prices: Prices, concurrency: usize) -> Self {
        Self {
            inner,
            registry,
            prices,
            permits: Semaphore::new(concurrency.max(1)),
            accounting: Accounting::default(),
        }
    }

    /// The teacher's id.
    pub fn id(&self) -> &str {
        self.inner.id()
    }

    /// The cache key of `request`: a hash of the teacher, the prompt and every parameter.
    pub fn key(&self, request: &TeacherRequest) -> String {
        let identity = serde_json::json!({ "teacher": self.inner.id(), "request": request });
        sha256_hex(identity.to_string())
    }

    /// The cached answer, or the teacher's (stored before it is returned).
    pub async fn ask(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
        let key = self.key(request);
        let stored = self
            .registry
            .teacher_response(&key)
            .await
            .map_err(|e| TeacherError::Other(format!("cannot read the teacher cache: {e}")))?;
        if let Some(stored) = stored
            && let Ok(reply) = serde_json::from_str::<TeacherReply>(&stored)
        {
            self.accounting.cached.fetch_add(1, Ordering::Relaxed);
            return Ok(reply);
        }
        let reply = {
            let _permit = self
                .permits
                .acquire()
                .await
                .map_err(|e| TeacherError::Other(e.to_string()))?;
            self.inner.ask(request).await?
        };
        self.accounting.calls.fetch_add(1, Ordering::Relaxed);
        self.accounting
            .prompt_tokens
            .fetch_add(reply.prompt_tokens, Ordering::Relaxed);
        self.accounting
            .completion_tokens
            .fetch_add(reply.completion_tokens, Ordering::Relaxed);
        let text = serde_json::to_string(&reply).map_err(|e| TeacherError::Other(e.to_string()))?;
        self.registry
            .store_teacher_response(&key, self.inner.id(), &text)
            .await
            .map_err(|e| TeacherError::Other(format!("cannot store the teacher's answer: {e}")))?;
        Ok(reply)
    }

    /// What was spent so far.
    pub fn spent(&self) -> Spent {
        let prompt_tokens = self.accounting.prompt_tokens.load(Ordering::Relaxed);
        let completion_tokens = self.accounting.completion_tokens.load(Ordering::Relaxed);
        Spent {
            calls: self.accounting.calls.load(Ordering::Relaxed),
            cached: self.accounting.cached.load(Ordering::Relaxed),
            prompt_tokens,
            completion_tokens,
            cost_usd: (prompt_tokens as f64 * self.prices.prompt + completion_tokens as f64 * self.prices.completion)
                / 1e6,
        }
    }
}
