//! The HTTP front: one module per route group, one state, one error type. The handlers never touch
//! a tensor: they retrieve, build the prompt, and hand the generation to the engine.

pub mod auth;
pub mod chat;
pub mod error;
pub mod health;
pub mod json;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod search;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use engram_shared::embedding::Embedder;
use engram_shared::storage::Storage;
use tower_http::cors::CorsLayer;

use crate::engine::Engine;
use crate::metrics::Metrics;
use crate::state::Served;
use error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The stores (the vector index is searched per request).
    pub storage: Storage,
    /// The question embedder.
    pub embedder: Arc<Embedder>,
    /// The model threads.
    pub engine: Engine,
    /// The current model and index; a request clones the inner `Arc` once and keeps it.
    pub served: Arc<RwLock<Arc<Served>>>,
    /// Default chunks per question.
    pub top_k: usize,
    /// Default closeness below which the service abstains.
    pub min_relevance: f32,
    /// How answers are made by default.
    pub answer_mode: engram_shared::answers::AnswerMode,
    /// How close an extracted sentence must be to the question, and how much that counts.
    pub closeness: engram_shared::answers::closeness::Closeness,
    /// Places for `/v1/search` requests running at once.
    pub searches: Arc<tokio::sync::Semaphore>,
    /// The one place for an extractive answer being scored: each already runs on every core and
    /// holds a prompt's cache, so more at once would only share the cores and multiply the memory;
    /// the others wait in turn, admitted (the engine's places bound how many).
    pub extractions: Arc<tokio::sync::Semaphore>,
    /// Per-request limits.
    pub limits: Limits,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Whether the registry and the vector store answer.
    pub stores: Arc<crate::stores::StoreHealth>,
}

/// What one request may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most completion tokens.
    pub max_completion_tokens: usize,
    /// Most tokens of the client's conversation.
    pub max_prompt_tokens: usize,
    /// Longest a chat request may take.
    pub request_timeout: std::time::Duration,
}

impl AppState {
    /// The answer to a failed search: a 503 naming the vector store when it failed (recorded, so
    /// `/readyz` says so until a read succeeds again), a 500 otherwise.
    pub fn retrieval_failed(&self, err: engram_shared::answers::RetrievalError) -> ApiError {
        match err {
            engram_shared::answers::RetrievalError::Index(err) => {
                let outcome: Result<(), _> = Err(&err);
                self.stores.record(crate::stores::Store::Vectors, &outcome);
                ApiError::unavailable(format!(
                    "the vector store failed ({}); the service retries on its own: retry shortly",
                    engram_shared::error::redact(&err.to_string())
                ))
            }
            other => ApiError::internal(other),
        }
    }

    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<Served> {
        match self.served.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The chat page: plain HTML and JavaScript, no build step.
async fn ui() -> axum::response::Html<&'static str> {
    axum::response::Html(include_str!("ui/index.html"))
}

/// The service's routes. `/v1` needs an API key when keys are configured; health, metrics and the
/// page do not (the page asks for a key and sends it with its API calls).
pub fn router(state: AppState, keys: Option<Arc<auth::KeyRing>>, cors: CorsLayer, max_body_bytes: usize) -> Router {
    let document = openapi::response(&state.limits, keys.is_some());
    let guard = auth::Guard {
        keys,
        metrics: state.metrics.clone(),
    };
    let v1 = Router::new()
        .route("/v1/models", get(health::models))
        .route("/v1/search", post(search::search))
        .route("/v1/chat/completions", post(chat::completions))
        .route_layer(axum::middleware::from_fn_with_state(guard, auth::require));
    Router::new()
        .route("/", get(ui))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(metrics::scrape))
        .route("/openapi.json", get(move || std::future::ready(document)))
        .merge(v1)
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(cors)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn(request_id::tag))
        .with_state(state)
}

/// CORS for the given origins (`*` for any; none: same-origin only).
pub fn cors(origins: &[String]) -> anyhow::Result<CorsLayer> {
    use axum::http::{HeaderValue, Method, header};
    use tower_http::cors::{AllowOrigin, Any};
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    let origins: Vec<&String> = origins.iter().filter(|o| !o.trim().is_empty()).collect();
    if origins.iter().any(|o| o.trim() == "*") {
        return Ok(layer.allow_origin(Any));
    }
    let values = origins
        .iter()
        .map(|o| {
            HeaderValue::from_str(o.trim()).map_err(|_| anyhow::anyhow!("ENGRAM_CORS_ORIGINS: {o:?} is not an origin"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(layer.allow_origin(AllowOrigin::list(values)))
}
