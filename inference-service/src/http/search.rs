//! `POST /v1/search`: retrieval only, no generation.

use axum::Json;
use axum::extract::State;
use engram_shared::vectors::ChunkFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use super::AppState;
use super::error::ApiError;
use crate::rag;

/// The request.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for.
    pub query: String,
    /// How many chunks.
    pub top_k: Option<usize>,
    /// Which chunks qualify.
    #[serde(default)]
    pub filter: ChunkFilter,
}

/// Searches the live index.
pub async fn search(
    State(state): State<AppState>,
    Json(request): Json<SearchRequest>,
) -> Result<Json<Value>, ApiError> {
    if request.query.trim().is_empty() {
        return Err(ApiError::invalid("query", "query is empty: say what to look for"));
    }
    let top_k = request.top_k.unwrap_or(state.top_k);
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::invalid("top_k", "top_k is between 1 and 100"));
    }
    let served = state.snapshot();
    let index = served
        .index
        .as_ref()
        .map_err(|why| ApiError::unavailable(why.clone()))?;
    let hits = rag::retrieve(
        state.storage.vectors.as_ref(),
        &state.embedder,
        index.version,
        &request.query,
        top_k,
        request.filter,
    )
    .await
    .map_err(ApiError::internal)?;
    let results: Vec<Value> = hits
        .iter()
        .map(|hit| {
            json!({
                "text": hit.chunk.text,
                "score": hit.score,
                "source": { "title": hit.chunk.title, "url": hit.chunk.url, "doc_id": hit.chunk.doc_id, "chunk_id": hit.id.to_string() },
            })
        })
        .collect();
    Ok(Json(json!({ "results": results })))
}
