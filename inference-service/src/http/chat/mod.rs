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
//!
//! One file per job: [`types`] (the API's shapes), [`validate`] (the checks), [`answer`] (whole
//! and streamed delivery), and the handler here.

mod answer;
mod types;
mod validate;

use std::time::Instant;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use engram_shared::answers::closeness::Closeness;
use engram_shared::answers::{self, AnswerMode, abstain, extract, followup, names, prompt};
use engram_shared::generation::Role;
use engram_shared::vectors::ChunkFilter;
use tokio::sync::mpsc;
use tracing::Instrument;

pub use types::*;

use super::AppState;
use super::error::{ApiError, ErrorResponse};
use super::json::ApiJson;
use crate::engine::{Job, Refused};
use crate::{rag, telemetry};
use answer::{Answer, Header, Watch, abstention, extracted, now};
use validate::validate;

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
    // A place in the engine first: when it is full the answer is 429 before any work is done.
    let admission = state.engine.admit().map_err(refused)?;
    let served = state.snapshot();
    let model = served
        .model
        .as_ref()
        .map_err(|why| ApiError::unavailable(why.clone()))?
        .clone();
    // The rest runs in the request's `chat {model}` span (GenAI conventions; see telemetry).
    let span = tracing::info_span!(
        "chat",
        otel.name = %format!("chat {}", model.id),
        gen_ai.operation.name = "chat",
        gen_ai.provider.name = "engram",
        gen_ai.request.model = %model.id,
        gen_ai.request.max_tokens = telemetry::int(params.max_tokens),
        gen_ai.request.temperature = params.temperature,
        gen_ai.usage.input_tokens = tracing::field::Empty,
        gen_ai.usage.output_tokens = tracing::field::Empty,
    );
    // Retrieves, fits the prompt and hands the job to the engine; then delivers the answer.
    let answer: Result<Response, ApiError> = async move {
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
            let source = format!("index-v{}", index.version);
            let searching = tracing::info_span!(
                "retrieval",
                otel.name = %format!("retrieval {source}"),
                gen_ai.operation.name = "retrieval",
                gen_ai.data_source.id = %source,
                gen_ai.request.top_k = telemetry::int(top_k),
            );
            let found = answers::retrieve(
                state.storage.vectors.as_ref(),
                &state.embedder,
                index.version,
                &standalone.question,
                top_k,
                filter,
            )
            .instrument(searching)
            .await
            .map_err(|err| state.retrieval_failed(err))?;
            report.query = standalone.question;
            report.rewritten = standalone.rewritten;
            report.closest = found.closest;
            found.hits
        } else {
            Vec::new()
        };
        let min_relevance = retrieval.and_then(|r| r.min_relevance).unwrap_or(state.min_relevance);
        let may_abstain = retrieving && retrieval.and_then(|r| r.abstain) != Some(false);
        let far = may_abstain && abstain::should_abstain(report.closest, min_relevance);
        if may_abstain && !far && state.closeness.names {
            // The last question's own names, when it gives any: a follow-up searched with the
            // question it follows ("what about Lisbon?") is not asking for that one's names.
            let last = conversation
                .iter()
                .rev()
                .find(|m| m.role == Role::User)
                .map_or("", |m| m.content.as_str());
            let named = if names::names(last).is_empty() { &report.query } else { last };
            report.unstated = names::stated_nowhere(named, &hits);
        }
        let abstaining = far || report.unstated.is_some();
        let (events_tx, events) = mpsc::unbounded_channel();
        let sources = if abstaining {
            if far {
                tracing::info!(closest = ?report.closest, min_relevance, "nothing close enough: the notes do not say");
            } else {
                tracing::info!(name = ?report.unstated, "no source names what the question names: the notes do not say");
            }
            report.abstained = true;
            state.metrics.abstentions.inc();
            abstention(&events_tx, report.unstated.as_deref());
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
            let mode = retrieval
                .and_then(|r| r.answer)
                .map_or(state.answer_mode, AnswerMode::from);
            if mode == AnswerMode::Extract && fitted.sources > 0 {
                let candidates = extract::candidates(&hits, fitted.sources);
                let generator = model.generator.clone();
                let span = tracing::info_span!("extract", candidates = candidates.len());
                let messages = fitted.messages;
                let extractions = state.extractions.clone();
                let metrics = state.metrics.clone();
                // `retrieval.abstain: false` lets a sentence answer without the question's names.
                let closeness = Closeness {
                    names: state.closeness.names && retrieval.and_then(|r| r.abstain) != Some(false),
                    ..state.closeness
                };
                let embedder = state.embedder.clone();
                // Scored on a blocking thread, the engine's place held until the answer is known;
                // one extraction at a time (`AppState::extractions`), the others waiting admitted.
                tokio::spawn(async move {
                    let Ok(_turn) = extractions.acquire_owned().await else {
                        return;
                    };
                    let scored = tokio::task::spawn_blocking(move || {
                        let _admission = admission;
                        let _entered = span.enter();
                        if events_tx.is_closed() {
                            return; // the client left (or timed out) while it waited its turn
                        }
                        extracted(
                            &generator,
                            &embedder,
                            &messages,
                            &candidates,
                            closeness,
                            &events_tx,
                            &metrics,
                        );
                    });
                    if let Err(err) = scored.await {
                        tracing::error!(error = %err, "an extraction panicked");
                    }
                });
            } else {
                state
                    .engine
                    .submit(Job {
                        admission,
                        model: model.id.clone(),
                        generator: model.generator.clone(),
                        messages: fitted.messages,
                        params,
                        events: events_tx,
                        span: tracing::Span::current(),
                    })
                    .map_err(refused)?;
            }
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
                last: None,
            },
        };
        if request.stream {
            let include_usage = request.stream_options.as_ref().and_then(|o| o.include_usage) == Some(true);
            Ok(answer.stream(events, include_usage).into_response())
        } else {
            answer.whole(events).await.map(IntoResponse::into_response)
        }
    }
    .instrument(span)
    .await;
    answer
}

fn refused(why: Refused) -> ApiError {
    match why {
        Refused::Busy => ApiError::busy(),
        Refused::Stopped => ApiError::unavailable("the service is shutting down"),
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
