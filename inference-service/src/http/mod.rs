//! The HTTP front: one module per route group, one state, one error type. The handlers never touch
//! a tensor: they retrieve, build the prompt, and hand the generation to the engine.

pub mod chat;
pub mod error;
pub mod health;
pub mod search;

use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use engram_shared::embedding::Embedder;
use engram_shared::storage::Storage;

use crate::engine::Engine;
use crate::metrics::{self, Metrics};
use crate::state::Served;

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
    /// Cap on completion tokens.
    pub max_completion_tokens: usize,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
}

impl AppState {
    /// The snapshot a request works with from start to end.
    pub fn snapshot(&self) -> Arc<Served> {
        match self.served.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}

/// The service's routes.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/models", get(health::models))
        .route("/v1/search", post(search::search))
        .route("/v1/chat/completions", post(chat::completions))
        .route("/metrics", get(metrics::scrape))
        .layer(axum::middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .with_state(state)
}
