//! `POST /v1/chat/completions`: OpenAI's chat completions, retrieval-augmented, streamed or not.
//!
//! The request is checked (what this model cannot do is refused with a 400 in OpenAI's shape), the
//! conversation's standalone question (a follow-up joined to the question it follows) retrieves
//! sources from the live index, and when nothing retrieved is close enough the answer is that the
//! notes do not say, without generating. Otherwise the prompt is built within the context budget
//! (earlier turns dropped oldest first) and the engine generates. Non-streamed answers come back
//! whole; streamed ones as SSE `chat.completion.chunk` lines ending with `data: [DONE]`. Either way
//! the response carries `sources`, the numbered chunks the answer may cite as [1], [2]…, marked
//! `cited` once the answer is known, and `retrieval`, what was searched and how close it came.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engram_shared::answers::{self, abstain, followup, prompt};
use engram_shared::documents::Source;
use engram_shared::generation::{self, ChatMessage, Completion, FinishReason, GenerationParams, Role, Timings};
use engram_shared::vectors::ChunkFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use utoipa::ToSchema;

use super::AppState;
use super::error::{ApiError, ErrorResponse};
use super::json::{ApiJson, object, objects, whole};
use crate::engine::{Event, Job, Refused};
use crate::metrics::Metrics;
use crate::rag::{self, SourceRef};

/// A message's content: text, or content parts of which only text is supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": …}`); images and audio are refused.
    #[schema(value_type = Vec<TextPart>)]
    Parts(Vec<Value>),
}

/// A text content part.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the accepted shape; parts are read as JSON to name what is refused
pub struct TextPart {
    /// Always `text`.
    #[schema(rename = "type", pattern = "^text$")]
    kind: String,
    /// The text.
    text: String,
}

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Instructions (added after the service's own).
    System,
    /// OpenAI's newer name for system.
    Developer,
    /// The person asking.
    User,
    /// Earlier answers.
    Assistant,
}

/// One message of the request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Message {
    /// Who says it.
    pub role: MessageRole,
    /// What it says.
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(StopSequence),
    /// Several.
    Many(StopSequences),
}

/// A stop sequence: matched at every generated token, so it is short.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(min_length = 1, max_length = 256)]
pub struct StopSequence(pub String);

/// Up to four stop sequences, as OpenAI's API allows.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(max_items = 4)]
pub struct StopSequences(pub Vec<StopSequence>);

/// Where retrieved chunks may come from.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceName {
    /// Notion pages.
    Notion,
    /// Crawled web pages.
    Crawl,
    /// Local files.
    File,
}

/// Which chunks qualify for retrieval.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    /// Only chunks of documents from this source.
    pub source: Option<SourceName>,
    /// Only chunks of these documents.
    pub doc_ids: Option<Vec<String>>,
}

impl From<FilterRequest> for ChunkFilter {
    fn from(filter: FilterRequest) -> Self {
        ChunkFilter {
            source: filter.source.map(|s| match s {
                SourceName::Notion => Source::Notion,
                SourceName::Crawl => Source::Crawl,
                SourceName::File => Source::File,
            }),
            doc_ids: filter.doc_ids.unwrap_or_default(),
        }
    }
}

/// Retrieval options (an engram extension of OpenAI's request).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retrieval {
    /// Whether to retrieve at all (default true).
    pub enabled: Option<bool>,
    /// Chunks to retrieve (default ENGRAM_TOP_K).
    #[schema(minimum = 1, maximum = 50)]
    #[serde(default, deserialize_with = "whole")]
    pub top_k: Option<usize>,
    /// Which chunks qualify.
    #[serde(default, deserialize_with = "object")]
    pub filter: Option<FilterRequest>,
    /// Answer that the notes do not say, without generating, when no retrieved chunk is close
    /// enough (default true).
    pub abstain: Option<bool>,
    /// How close the closest chunk must be (cosine similarity) for the model to answer (default
    /// ENGRAM_MIN_RELEVANCE).
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_relevance: Option<f32>,
}

/// Streaming options.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with token usage.
    pub include_usage: Option<bool>,
}

/// The request body: OpenAI's chat-completions fields this service understands (unknown fields are
/// ignored, as OpenAI does).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The model asked for (the loaded one answers; see `/v1/models`).
    pub model: Option<String>,
    /// The conversation; retrieval searches with its last user message, joined to the question it
    /// follows up on when it is a follow-up. Earlier turns that do not fit are dropped, oldest first.
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature (default 0.2: answers from sources want little randomness).
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Most tokens to generate (OpenAI's older name).
    #[schema(minimum = 1, maximum = 512)]
    #[serde(default, deserialize_with = "whole")]
    pub max_tokens: Option<usize>,
    /// Most tokens to generate (at most ENGRAM_MAX_COMPLETION_TOKENS).
    #[schema(minimum = 1, maximum = 512)]
    #[serde(default, deserialize_with = "whole")]
    pub max_completion_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Sampling seed: the same seed and request give the same answer.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole")]
    pub seed: Option<u64>,
    /// End-user id (logged as given).
    pub user: Option<String>,
    /// Number of choices: only 1.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "whole")]
    pub n: Option<usize>,
    /// Tools: not supported (null or empty).
    #[schema(max_items = 0)]
    pub tools: Option<Vec<Value>>,
    /// Retrieval options.
    #[serde(default, deserialize_with = "object")]
    pub retrieval: Option<Retrieval>,
}

/// Token counts of one answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens of the prompt, retrieved sources included.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

impl From<&Completion> for Usage {
    fn from(completion: &Completion) -> Self {
        Self {
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
            total_tokens: completion.usage.prompt_tokens + completion.usage.completion_tokens,
        }
    }
}

/// The assistant's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer, citing sources as [1], [2]…
    pub content: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// End of turn or a stop string.
    Stop,
    /// max_tokens or the context window was reached.
    Length,
}

impl From<FinishReason> for Finish {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Length => Finish::Length,
            FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
        }
    }
}

/// One choice of a whole answer (there is always exactly one).
#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// 0.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Why it ended.
    pub finish_reason: Finish,
    /// Not computed: always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// A whole answer (`stream` false).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answer.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// The retrieved sources the answer may cite, marked when it does (engram's extension).
    pub sources: Vec<SourceRef>,
    /// What retrieval searched with and found (engram's extension).
    pub retrieval: RetrievalReport,
}

/// What retrieval searched with and how close it came (engram's extension).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RetrievalReport {
    /// The question searched with (empty when nothing was retrieved).
    pub query: String,
    /// Whether the query joins earlier questions to a follow-up.
    pub rewritten: bool,
    /// The closest chunk's cosine similarity, when anything was retrieved.
    pub closest: Option<f32>,
    /// Whether the service answered that the notes do not say, without generating.
    pub abstained: bool,
    /// Earlier turns left out of the prompt for lack of room.
    pub dropped_turns: usize,
}

/// One server-sent event of a streamed answer, as a client's SSE parser sees it.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the stream; the events are written by axum's Sse
pub struct StreamEvent {
    /// A `ChatCompletionChunk` as JSON, an `ErrorResponse` as JSON when generation failed, or
    /// `[DONE]` at the end.
    data: String,
    /// The event type, when the parser reports one (`message`).
    event: Option<String>,
    /// Event id (not sent).
    id: Option<String>,
    /// Reconnection time (not sent).
    retry: Option<u64>,
}

/// What a streamed chunk adds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    /// 0.
    pub index: usize,
    /// What this chunk adds.
    pub delta: Delta,
    /// Set in the last content chunk.
    pub finish_reason: Option<Finish>,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// One server-sent event of a streamed answer (`data: {…}`; the stream ends with `data: [DONE]`).
/// The first carries `sources`; with `stream_options.include_usage` the last carries `usage` and no
/// choices.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same for every chunk of an answer.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// Zero or one choice.
    pub choices: Vec<ChunkChoice>,
    /// In the first chunk: the sources the answer may cite; in the last content chunk (the one
    /// with `finish_reason`) again, with `cited` set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceRef>>,
    /// In the first chunk: what retrieval searched with and found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalReport>,
    /// In the last chunk, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Most stop sequences a request may give.
const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
const MAX_STOP_BYTES: usize = 256;

/// Checks the request and turns it into messages and sampling parameters.
fn validate(
    request: &ChatRequest,
    max_completion_tokens: usize,
) -> Result<(Vec<ChatMessage>, GenerationParams), ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only n=1 is supported: send one request per answer",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tools are not supported by this model"));
    }
    if let Some(top_k) = request.retrieval.as_ref().and_then(|r| r.top_k)
        && !(1..=50).contains(&top_k)
    {
        return Err(ApiError::invalid("retrieval", "retrieval.top_k is between 1 and 50"));
    }
    if let Some(min) = request.retrieval.as_ref().and_then(|r| r.min_relevance)
        && !(-1.0..=1.0).contains(&min)
    {
        return Err(ApiError::invalid(
            "retrieval",
            "retrieval.min_relevance is a cosine similarity, between -1 and 1",
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: send at least one user message",
        ));
    }
    let mut messages = Vec::new();
    for message in &request.messages {
        let role = match message.role {
            MessageRole::System | MessageRole::Developer => Role::System,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        let text = match &message.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(part)) => text.push_str(part),
                        (Some("text"), None) => {
                            return Err(ApiError::invalid("messages", "a text content part needs its `text`"));
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                "only text content is supported: this model reads no images or audio",
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, text));
    }
    // Answers from sources want little randomness; a client that wants more says so.
    let temperature = request.temperature.unwrap_or(0.2);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", "temperature is between 0 and 2"));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p is greater than 0 and at most 1"));
    }
    for (name, asked) in [
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ] {
        if asked.is_some_and(|n| n == 0 || n > max_completion_tokens) {
            return Err(ApiError::invalid(
                name,
                format!("{name} is between 1 and {max_completion_tokens} (ENGRAM_MAX_COMPLETION_TOKENS)"),
            ));
        }
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(max_completion_tokens.min(256));
    let stop = match &request.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.0.clone()],
        Some(Stop::Many(v)) => v.0.iter().map(|s| s.0.clone()).collect(),
    };
    // As OpenAI's API: a few short stop sequences. Each is matched at every generated token, so
    // their number and length are bounded.
    if stop.len() > MAX_STOP || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!("stop holds at most {MAX_STOP} sequences of 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    let seed = match request.seed {
        Some(seed) if seed > i64::MAX as u64 => {
            return Err(ApiError::invalid("seed", "seed is between 0 and 2^63-1"));
        }
        Some(seed) => seed,
        None => rand_seed(),
    };
    let params = GenerationParams {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        repetition_penalty: 1.1,
        ..GenerationParams::default()
    };
    Ok((messages, params))
}

fn rand_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Answers a chat completion, retrieval-augmented unless `retrieval.enabled` is false.
#[utoipa::path(
    post,
    path = "/v1/chat/completions",
    tag = "chat",
    request_body = ChatRequest,
    responses(
        (status = 200, description = "The answer: JSON, or server-sent `ChatCompletionChunk` events when `stream` is true",
            content(
                (ChatCompletion = "application/json"),
                (StreamEvent = "text/event-stream"),
            )),
        (status = 400, description = "The request is invalid: the message says which field and why", body = ErrorResponse),
        (status = 401, description = "A key is required (ENGRAM_API_KEYS is set) and none or a wrong one was sent", body = ErrorResponse),
        (status = 413, description = "The body is larger than ENGRAM_MAX_BODY_BYTES", body = ErrorResponse),
        (status = 415, description = "The body is not declared as JSON", body = ErrorResponse),
        (status = 429, description = "The request queue is full: retry after `Retry-After` seconds", body = ErrorResponse),
        (status = 503, description = "No model or no index is loaded yet (see /readyz), or no answer in time", body = ErrorResponse),
    )
)]
pub async fn completions(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    tracing::info!(model = ?request.model, user = ?request.user, stream = request.stream, "chat completion");
    let (conversation, params) = validate(&request, state.limits.max_completion_tokens)?;
    let served = state.snapshot();
    let model = served
        .model
        .as_ref()
        .map_err(|why| ApiError::unavailable(why.clone()))?
        .clone();
    let retrieval = request.retrieval.as_ref();
    let standalone = followup::standalone_question(&conversation);
    if standalone.rewritten {
        tracing::info!(query = %standalone.question, "a follow-up is searched with the question it follows");
    }
    let retrieving = retrieval.and_then(|r| r.enabled) != Some(false) && !standalone.question.is_empty();
    let mut report = RetrievalReport::default();
    let hits = if retrieving {
        let index = served
            .index
            .as_ref()
            .map_err(|why| ApiError::unavailable(why.clone()))?;
        let top_k = retrieval.and_then(|r| r.top_k).unwrap_or(state.top_k);
        let filter = retrieval
            .and_then(|r| r.filter.clone())
            .map(ChunkFilter::from)
            .unwrap_or_default();
        let found = answers::retrieve(
            state.storage.vectors.as_ref(),
            &state.embedder,
            index.version,
            &standalone.question,
            top_k,
            filter,
        )
        .await
        .map_err(ApiError::internal)?;
        report.query = standalone.question;
        report.rewritten = standalone.rewritten;
        report.closest = found.closest;
        found.hits
    } else {
        Vec::new()
    };
    let min_relevance = retrieval.and_then(|r| r.min_relevance).unwrap_or(state.min_relevance);
    let abstaining = retrieving
        && retrieval.and_then(|r| r.abstain) != Some(false)
        && abstain::should_abstain(report.closest, min_relevance);
    let (events_tx, events) = mpsc::channel(64);
    let sources = if abstaining {
        tracing::info!(closest = ?report.closest, min_relevance, "nothing close enough: the notes do not say");
        report.abstained = true;
        state.metrics.abstentions.inc();
        abstention(&events_tx);
        Vec::new()
    } else {
        let generator = model.generator.clone();
        let max_tokens = params.max_tokens;
        let max_prompt_tokens = state.limits.max_prompt_tokens;
        let fitted = tokio::task::spawn_blocking(move || {
            prompt::fit(&generator, &conversation, &hits, max_tokens, max_prompt_tokens).map(|p| (p, hits))
        })
        .await
        .map_err(ApiError::internal)?;
        let (fitted, hits) = fitted?;
        report.dropped_turns = fitted.dropped_turns;
        if fitted.dropped_turns > 0 {
            tracing::info!(
                dropped = fitted.dropped_turns,
                "earlier turns left out for lack of room"
            );
        }
        state
            .engine
            .submit(Job {
                generator: model.generator.clone(),
                messages: fitted.messages,
                params,
                events: events_tx,
            })
            .map_err(|refused| match refused {
                Refused::Busy => ApiError::busy(),
                Refused::Stopped => ApiError::unavailable("the service is shutting down"),
            })?;
        rag::source_refs(&hits, fitted.sources)
    };
    let answer = Answer {
        header: Header {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            model: model.id.clone(),
            created: now(),
        },
        sources,
        retrieval: report,
        timeout: state.limits.request_timeout,
        watch: Watch {
            metrics: state.metrics.clone(),
            started,
            stream: request.stream,
            first: false,
        },
    };
    if request.stream {
        let include_usage = request.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
        Ok(answer.stream(events, include_usage).into_response())
    } else {
        answer.whole(events).await.map(IntoResponse::into_response)
    }
}

/// The answer when the notes hold nothing close enough: the same events a generation sends, so
/// streamed and whole responses look as they always do.
fn abstention(events: &mpsc::Sender<Event>) {
    let text = abstain::ABSTENTION.to_string();
    // The channel is new and holds 64 events: both fit.
    let _ = events.try_send(Event::Text(text.clone()));
    let _ = events.try_send(Event::Done(Completion {
        text,
        usage: generation::Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        },
        finish_reason: FinishReason::Stop,
        timings: Timings::default(),
    }));
}

/// Records a generation's time to first token and token counts.
struct Watch {
    metrics: Arc<Metrics>,
    started: Instant,
    stream: bool,
    first: bool,
}

impl Watch {
    fn text(&mut self) {
        if !self.first {
            self.first = true;
            let label = if self.stream { "true" } else { "false" };
            self.metrics
                .time_to_first_token
                .with_label_values(&[label])
                .observe(self.started.elapsed().as_secs_f64());
        }
    }

    fn done(&self, completion: &Completion) {
        self.metrics.prompt_tokens.inc_by(completion.usage.prompt_tokens as u64);
        self.metrics
            .completion_tokens
            .inc_by(completion.usage.completion_tokens as u64);
    }
}

/// What every chunk of one streamed answer repeats.
struct Header {
    id: String,
    model: String,
    created: u64,
}

impl Header {
    fn chunk(&self, delta: Delta, finish_reason: Option<Finish>) -> ChatCompletionChunk {
        ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                finish_reason,
                logprobs: None,
            }],
            sources: None,
            retrieval: None,
            usage: None,
        }
    }
}

/// An answer under way: what its response carries besides the generated text.
struct Answer {
    header: Header,
    sources: Vec<SourceRef>,
    retrieval: RetrievalReport,
    timeout: Duration,
    watch: Watch,
}

impl Answer {
    async fn whole(mut self, mut events: mpsc::Receiver<Event>) -> Result<Json<ChatCompletion>, ApiError> {
        let watch = &mut self.watch;
        let completion = tokio::time::timeout(self.timeout, async {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Text(_) => watch.text(),
                    Event::Done(completion) => {
                        watch.done(&completion);
                        return Ok(completion);
                    }
                    Event::Failed(why) => return Err(ApiError::invalid("messages", why)),
                }
            }
            Err(ApiError::internal("the model thread ended without an answer"))
        })
        .await
        .map_err(|_| {
            ApiError::unavailable(format!(
                "no answer within {} s (ENGRAM_REQUEST_TIMEOUT_SECS): ask for fewer tokens or retry later",
                self.timeout.as_secs()
            ))
        })??;
        rag::mark_cited(&mut self.sources, &completion.text);
        Ok(Json(ChatCompletion {
            id: self.header.id,
            object: "chat.completion",
            created: self.header.created,
            model: self.header.model,
            choices: vec![Choice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content: completion.text.clone(),
                },
                finish_reason: completion.finish_reason.into(),
                logprobs: None,
            }],
            usage: Usage::from(&completion),
            sources: self.sources,
            retrieval: self.retrieval,
        }))
    }

    fn stream(self, mut events: mpsc::Receiver<Event>, include_usage: bool) -> impl IntoResponse {
        let (out, lines) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        let Answer {
            header,
            mut sources,
            retrieval,
            timeout,
            mut watch,
        } = self;
        tokio::spawn(async move {
            let send = |value: &ChatCompletionChunk| {
                SseEvent::default().data(serde_json::to_string(value).unwrap_or_default())
            };
            let text = |content: Option<String>| Delta { role: None, content };
            let mut first = header.chunk(
                Delta {
                    role: Some("assistant"),
                    content: Some(String::new()),
                },
                None,
            );
            first.sources = Some(sources.clone());
            first.retrieval = Some(retrieval);
            if out.send(Ok(send(&first))).await.is_err() {
                return;
            }
            let forwarded = tokio::time::timeout(timeout, async {
                while let Some(event) = events.recv().await {
                    match event {
                        Event::Text(piece) => {
                            watch.text();
                            if out
                                .send(Ok(send(&header.chunk(text(Some(piece)), None))))
                                .await
                                .is_err()
                            {
                                return None; // the client left: dropping `events` stops the model
                            }
                        }
                        Event::Done(completion) => {
                            watch.done(&completion);
                            return Some(Ok(completion));
                        }
                        Event::Failed(why) => return Some(Err(why)),
                    }
                }
                Some(Err("the model thread ended without an answer".to_string()))
            })
            .await;
            let failure = match forwarded {
                Ok(Some(Ok(completion))) => {
                    let mut last = header.chunk(text(None), Some(completion.finish_reason.into()));
                    rag::mark_cited(&mut sources, &completion.text);
                    last.sources = Some(sources);
                    let _ = out.send(Ok(send(&last))).await;
                    if include_usage {
                        let mut usage = header.chunk(text(None), None);
                        usage.choices.clear();
                        usage.usage = Some(Usage::from(&completion));
                        let _ = out.send(Ok(send(&usage))).await;
                    }
                    None
                }
                Ok(Some(Err(why))) => Some(why),
                Ok(None) => return,
                Err(_) => Some(format!(
                    "no answer within {} s (ENGRAM_REQUEST_TIMEOUT_SECS)",
                    timeout.as_secs()
                )),
            };
            if let Some(why) = failure {
                let error = ErrorResponse::new(why, "server_error", None);
                let data = serde_json::to_string(&error).unwrap_or_default();
                let _ = out.send(Ok(SseEvent::default().data(data))).await;
            }
            let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
        });
        Sse::new(ReceiverStream::new(lines)).keep_alive(KeepAlive::default())
    }
}

impl From<prompt::PromptError> for ApiError {
    fn from(err: prompt::PromptError) -> Self {
        match err {
            prompt::PromptError::Model(err) => ApiError::internal(err),
            other => ApiError::invalid("messages", other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use engram_tests::fuzz::Fuzz;

    use super::*;

    const VALID: &str = r#"{"model":"engram","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"What did the tickets cost?"}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"temperature":0.3,"top_p":0.9,"seed":7,"stop":["\n\n","END"],"retrieval":{"enabled":true,"top_k":4,"filter":{"source":"notion"}}}"#;

    #[test]
    fn fuzz_the_chat_request() {
        let request: ChatRequest = serde_json::from_str(VALID).expect("the valid request parses");
        validate(&request, 512).expect("and validates");
        let too_many: ChatRequest =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#)
                .unwrap();
        assert!(validate(&too_many, 512).is_err(), "five stop sequences are refused");
        // Regression case: nesting deeper than serde_json's limit is an error, not a stack overflow.
        let deep = format!("{{\"messages\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(serde_json::from_str::<ChatRequest>(&deep).is_err());
        let cases = Fuzz::from_env("chat-request").run(
            |fuzz| fuzz.mutate(VALID.as_bytes(), VALID.len()),
            |bytes| {
                if let Ok(request) = serde_json::from_slice::<ChatRequest>(bytes) {
                    let _ = validate(&request, 512);
                }
            },
        );
        assert!(cases > 0);
    }
}
