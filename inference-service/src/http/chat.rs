//! `POST /v1/chat/completions`: OpenAI's chat completions, retrieval-augmented, streamed or not.
//!
//! The request is checked (what this model cannot do is refused with a 400 in OpenAI's shape), the
//! last user message retrieves sources from the live index, the prompt is built within the context
//! budget, and the engine generates. Non-streamed answers come back whole; streamed ones as SSE
//! `chat.completion.chunk` lines ending with `data: [DONE]`. Either way the response carries
//! `sources` (in the first chunk when streamed), the documents the answer cites as [1], [2]…

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::extract::State;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use engram_shared::generation::{ChatMessage, Completion, FinishReason, GenerationParams, Role};
use engram_shared::vectors::ChunkFilter;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use super::error::ApiError;
use crate::engine::{Event, Job, Refused};
use crate::metrics::Metrics;
use crate::rag::{self, SourceRef};

/// Longest a request may take, queue wait included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// A message's content: text, or parts of which only text is supported.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": …}`; images are refused).
    Parts(Vec<Value>),
}

/// One message of the request.
#[derive(Debug, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What it says.
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// Retrieval options (an engram extension).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retrieval {
    /// Whether to retrieve at all (default true).
    pub enabled: Option<bool>,
    /// Chunks to retrieve.
    pub top_k: Option<usize>,
    /// Which chunks qualify.
    #[serde(default)]
    pub filter: ChunkFilter,
}

/// The request body (OpenAI's fields this service understands; others are ignored as OpenAI does).
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The model asked for (the loaded one answers; see `/v1/models`).
    pub model: Option<String>,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<Value>,
    /// Sampling temperature, 0 to 2.
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    pub top_p: Option<f64>,
    /// Most tokens to generate (legacy name).
    pub max_tokens: Option<usize>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Sampling seed.
    pub seed: Option<u64>,
    /// End-user id (logged only as given; no effect).
    pub user: Option<String>,
    /// Number of choices: only 1.
    pub n: Option<usize>,
    /// Tools: not supported.
    pub tools: Option<Value>,
    /// Retrieval options.
    pub retrieval: Option<Retrieval>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

fn usage(completion: &Completion) -> Value {
    json!({
        "prompt_tokens": completion.usage.prompt_tokens,
        "completion_tokens": completion.usage.completion_tokens,
        "total_tokens": completion.usage.prompt_tokens + completion.usage.completion_tokens,
    })
}

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
    if request.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(ApiError::invalid("tools", "tools are not supported by this model"));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: send at least one user message",
        ));
    }
    let mut messages = Vec::new();
    for message in &request.messages {
        let role = match message.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => {
                return Err(ApiError::invalid(
                    "messages",
                    format!("role {other:?} is not supported: use system, user or assistant"),
                ));
            }
        };
        let text = match &message.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match part["type"].as_str() {
                        Some("text") => text.push_str(part["text"].as_str().unwrap_or_default()),
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
    if messages.last().is_none_or(|m| m.role != Role::User) {
        return Err(ApiError::invalid(
            "messages",
            "the last message must be the user's question",
        ));
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
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(max_completion_tokens.min(256));
    if max_tokens == 0 || max_tokens > max_completion_tokens {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens is between 1 and {max_completion_tokens} (ENGRAM_MAX_COMPLETION_TOKENS)"),
        ));
    }
    let stop = match &request.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.clone()],
        Some(Stop::Many(v)) if v.len() <= 4 => v.clone(),
        Some(Stop::Many(_)) => return Err(ApiError::invalid("stop", "at most 4 stop strings")),
    };
    let params = GenerationParams {
        max_tokens,
        temperature,
        top_p,
        seed: request.seed.unwrap_or_else(rand_seed),
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

/// Handles a chat completion.
pub async fn completions(
    State(state): State<AppState>,
    Json(request): Json<ChatRequest>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    tracing::info!(model = ?request.model, user = ?request.user, stream = request.stream, "chat completion");
    let (conversation, params) = validate(&request, state.max_completion_tokens)?;
    let served = state.snapshot();
    let model = served
        .model
        .as_ref()
        .map_err(|why| ApiError::unavailable(why.clone()))?
        .clone();
    let retrieval = request.retrieval.as_ref();
    let (messages, sources) = if retrieval.and_then(|r| r.enabled) == Some(false) {
        (conversation, Vec::new())
    } else {
        let index = served
            .index
            .as_ref()
            .map_err(|why| ApiError::unavailable(why.clone()))?;
        let top_k = retrieval.and_then(|r| r.top_k).unwrap_or(state.top_k);
        if !(1..=50).contains(&top_k) {
            return Err(ApiError::invalid("retrieval", "retrieval.top_k is between 1 and 50"));
        }
        let filter = retrieval.map(|r| r.filter.clone()).unwrap_or_default();
        let question = conversation.last().map(|m| m.content.clone()).unwrap_or_default();
        let hits = rag::retrieve(
            state.storage.vectors.as_ref(),
            &state.embedder,
            index.version,
            &question,
            top_k,
            filter,
        )
        .await
        .map_err(ApiError::internal)?;
        let generator = model.generator.clone();
        let max_tokens = params.max_tokens;
        tokio::task::spawn_blocking(move || rag::augment(&generator, &conversation, &hits, max_tokens))
            .await
            .map_err(ApiError::internal)?
            .map_err(ApiError::internal)?
    };
    let (events_tx, events) = mpsc::channel(64);
    state
        .engine
        .submit(Job {
            generator: model.generator.clone(),
            messages,
            params,
            events: events_tx,
        })
        .map_err(|refused| match refused {
            Refused::Busy => ApiError::busy(),
            Refused::Stopped => ApiError::unavailable("the service is shutting down"),
        })?;
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o["include_usage"].as_bool())
        == Some(true);
    let watch = Watch {
        metrics: state.metrics.clone(),
        started,
        stream: request.stream,
        first: false,
    };
    if request.stream {
        Ok(stream(id, model.id.clone(), sources, events, include_usage, watch).into_response())
    } else {
        whole(id, &model.id, sources, events, watch)
            .await
            .map(IntoResponse::into_response)
    }
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

async fn whole(
    id: String,
    model: &str,
    sources: Vec<SourceRef>,
    mut events: mpsc::Receiver<Event>,
    mut watch: Watch,
) -> Result<Json<Value>, ApiError> {
    let completion = tokio::time::timeout(REQUEST_TIMEOUT, async {
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
    .map_err(|_| ApiError::unavailable(format!("no answer within {} s", REQUEST_TIMEOUT.as_secs())))??;
    Ok(Json(json!({
        "id": id,
        "object": "chat.completion",
        "created": now(),
        "model": model,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": completion.text },
            "finish_reason": finish_reason(completion.finish_reason),
            "logprobs": null,
        }],
        "usage": usage(&completion),
        "sources": sources,
    })))
}

fn stream(
    id: String,
    model: String,
    sources: Vec<SourceRef>,
    mut events: mpsc::Receiver<Event>,
    include_usage: bool,
    mut watch: Watch,
) -> impl IntoResponse {
    let (out, lines) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
    let created = now();
    let chunk = move |delta: Value, finish: Option<&str>| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{ "index": 0, "delta": delta, "finish_reason": finish, "logprobs": null }],
        })
    };
    tokio::spawn(async move {
        let send = |value: Value| SseEvent::default().data(value.to_string());
        let mut first = chunk(json!({ "role": "assistant", "content": "" }), None);
        first["sources"] = json!(sources);
        if out.send(Ok(send(first))).await.is_err() {
            return;
        }
        let forwarded = tokio::time::timeout(REQUEST_TIMEOUT, async {
            while let Some(event) = events.recv().await {
                match event {
                    Event::Text(text) => {
                        watch.text();
                        if out
                            .send(Ok(send(chunk(json!({ "content": text }), None))))
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
        match forwarded {
            Ok(Some(Ok(completion))) => {
                let _ = out
                    .send(Ok(send(chunk(
                        json!({}),
                        Some(finish_reason(completion.finish_reason)),
                    ))))
                    .await;
                if include_usage {
                    let mut last = chunk(json!({}), None);
                    last["choices"] = json!([]);
                    last["usage"] = usage(&completion);
                    let _ = out.send(Ok(send(last))).await;
                }
            }
            Ok(Some(Err(why))) => {
                let error = json!({ "error": { "message": why, "type": "server_error", "param": null, "code": null } });
                let _ = out.send(Ok(send(error))).await;
            }
            Ok(None) => return,
            Err(_) => {
                let error = json!({ "error": { "message": "no answer in time", "type": "server_error", "param": null, "code": null } });
                let _ = out.send(Ok(send(error))).await;
            }
        }
        let _ = out.send(Ok(SseEvent::default().data("[DONE]"))).await;
    });
    Sse::new(ReceiverStream::new(lines)).keep_alive(KeepAlive::default())
}
