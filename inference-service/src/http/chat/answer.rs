//! Delivering an answer: the engine's events become one whole `chat.completion` or a stream of
//! server-sent `chat.completion.chunk` events; either way the sources are marked with what the
//! answer cites, and time to first token and token counts are recorded.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::response::IntoResponse;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use engram_shared::answers::closeness::Closeness;
use engram_shared::answers::{abstain, extract};
use engram_shared::embedding::Embedder;
use engram_shared::generation::{self, Completion, FinishReason, Timings};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::types::{
    AssistantMessage, ChatCompletion, ChatCompletionChunk, Choice, ChunkChoice, Delta, Finish, RetrievalReport, Usage,
};
use crate::engine::Event;
use crate::http::error::{ApiError, ErrorResponse};
use crate::metrics::Metrics;
use crate::rag::{self, SourceRef};
use crate::telemetry;

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The answer when the notes hold nothing close enough, or nothing naming what the question
/// names (`unstated`): the same events a generation sends, so streamed and whole responses look
/// as they always do.
pub(super) fn abstention(events: &mpsc::UnboundedSender<Event>, unstated: Option<&str>) {
    let text = unstated.map_or_else(|| abstain::ABSTENTION.to_string(), abstain::unstated);
    let _ = events.send(Event::Text(text.clone()));
    let _ = events.send(Event::Done(Completion {
        text,
        usage: generation::Usage {
            prompt_tokens: 0,
            completion_tokens: 0,
        },
        finish_reason: FinishReason::Stop,
        timings: Timings::default(),
    }));
}

/// The extractive answer ([`extract::choose`]), sent as the same events a generation sends. When
/// no sentence states the kind of fact asked for close enough to the question, the answer is the
/// abstention, and counted as one.
pub(super) fn extracted(
    generator: &generation::Generator,
    embedder: &Embedder,
    messages: &[generation::ChatMessage],
    candidates: &[extract::Candidate],
    closeness: Closeness,
    events: &mpsc::UnboundedSender<Event>,
    metrics: &Metrics,
) {
    let started = Instant::now();
    let scoring = extract::Scoring::default();
    let chosen = match extract::choose(generator, embedder, messages, candidates, scoring, closeness) {
        Ok(chosen) => chosen,
        Err(err) => {
            let _ = events.send(Event::Failed(err.to_string()));
            return;
        }
    };
    if chosen.source.is_none() {
        metrics.abstentions.inc();
        tracing::info!(
            "no sentence of the sources states the kind of fact asked for, close to the question: the notes do not say"
        );
    } else {
        tracing::info!(score = chosen.score, source = ?chosen.source, "extracted");
    }
    let usage = generation::Usage {
        prompt_tokens: generator.prompt_tokens(messages).map_or(0, |t| t.len()),
        completion_tokens: generator.encode(&chosen.text).map_or(0, |t| t.len()),
    };
    let _ = events.send(Event::Text(chosen.text.clone()));
    let _ = events.send(Event::Done(Completion {
        text: chosen.text,
        usage,
        finish_reason: FinishReason::Stop,
        timings: Timings {
            prompt: started.elapsed(),
            decode: Duration::ZERO,
        },
    }));
}

/// Records a generation's time to first token, the time between its pieces of text, and its
/// token counts.
pub(super) struct Watch {
    pub(super) metrics: Arc<Metrics>,
    pub(super) started: Instant,
    pub(super) stream: bool,
    /// When the last piece of text arrived (none yet: the next is the first).
    pub(super) last: Option<Instant>,
}

impl Watch {
    fn text(&mut self) {
        let now = Instant::now();
        match self.last {
            None => {
                let label = if self.stream { "true" } else { "false" };
                self.metrics
                    .time_to_first_token
                    .with_label_values(&[label])
                    .observe(now.duration_since(self.started).as_secs_f64());
            }
            Some(last) => self
                .metrics
                .inter_token_latency
                .observe(now.duration_since(last).as_secs_f64()),
        }
        self.last = Some(now);
    }

    /// Counts the tokens, and records them on the request's `chat` span (the current one).
    fn done(&self, completion: &Completion) {
        let span = tracing::Span::current();
        span.record(
            "gen_ai.usage.input_tokens",
            telemetry::int(completion.usage.prompt_tokens),
        );
        span.record(
            "gen_ai.usage.output_tokens",
            telemetry::int(completion.usage.completion_tokens),
        );
        let finish = Finish::from(completion.finish_reason).as_str();
        span.set_attribute(
            "gen_ai.response.finish_reasons",
            opentelemetry::Value::Array(vec![opentelemetry::StringValue::from(finish)].into()),
        );
        self.metrics.prompt_tokens.inc_by(completion.usage.prompt_tokens as u64);
        self.metrics
            .completion_tokens
            .inc_by(completion.usage.completion_tokens as u64);
    }
}

/// What every chunk of one streamed answer repeats.
pub(super) struct Header {
    pub(super) id: String,
    pub(super) model: String,
    pub(super) created: u64,
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
pub(super) struct Answer {
    pub(super) header: Header,
    pub(super) sources: Vec<SourceRef>,
    pub(super) retrieval: RetrievalReport,
    pub(super) timeout: Duration,
    pub(super) watch: Watch,
}

impl Answer {
    pub(super) async fn whole(
        mut self,
        mut events: mpsc::UnboundedReceiver<Event>,
    ) -> Result<Json<ChatCompletion>, ApiError> {
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
                    Event::Crashed(why) => return Err(ApiError::internal(why)),
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

    pub(super) fn stream(self, mut events: mpsc::UnboundedReceiver<Event>, include_usage: bool) -> impl IntoResponse {
        let (out, lines) = mpsc::channel::<Result<SseEvent, Infallible>>(64);
        let Answer {
            header,
            mut sources,
            retrieval,
            timeout,
            mut watch,
        } = self;
        // The stream outlives the handler: it keeps the request's span (and id) for its logs.
        tokio::spawn(
            async move {
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
                            Event::Failed(why) | Event::Crashed(why) => return Some(Err(why)),
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
            }
            .in_current_span(),
        );
        Sse::new(ReceiverStream::new(lines)).keep_alive(KeepAlive::default())
    }
}
