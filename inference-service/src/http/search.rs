//! `POST /v1/search`: retrieval only, no generation.

use axum::Json;
use axum::extract::State;
use engram_shared::answers;
use engram_shared::vectors::ChunkFilter;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::chat::FilterRequest;
use super::error::{ApiError, ErrorResponse};
use super::json::ApiJson;

/// The request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchRequest {
    /// What to look for.
    #[schema(min_length = 1, pattern = "\\S")]
    pub query: String,
    /// How many chunks (default ENGRAM_TOP_K).
    #[schema(minimum = 1, maximum = 100)]
    #[serde(default, deserialize_with = "super::json::whole")]
    pub top_k: Option<usize>,
    /// Which chunks qualify.
    #[serde(default, deserialize_with = "super::json::object")]
    pub filter: Option<FilterRequest>,
}

/// The document a chunk belongs to.
#[derive(Debug, Serialize, ToSchema)]
pub struct ResultSource {
    /// The document's title.
    pub title: String,
    /// Its url.
    pub url: String,
    /// Its id.
    pub doc_id: String,
    /// The chunk's point id.
    pub chunk_id: String,
}

/// One retrieved chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    /// The chunk's text.
    pub text: String,
    /// Fused retrieval score (higher is better).
    pub score: f32,
    /// Where it comes from.
    pub source: ResultSource,
}

/// The chunks found, best first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResponse {
    /// Best first.
    pub results: Vec<SearchResult>,
}

/// Searches the live index (hybrid: dense and BM25, fused).
#[utoipa::path(
    post,
    path = "/v1/search",
    tag = "retrieval",
    request_body = SearchRequest,
    responses(
        (status = 200, description = "The chunks found, best first", body = SearchResponse),
        (status = 400, description = "The request is invalid: the message says which field and why", body = ErrorResponse),
        (status = 401, description = "A key is required (ENGRAM_API_KEYS is set) and none or a wrong one was sent", body = ErrorResponse),
        (status = 413, description = "The body is larger than ENGRAM_MAX_BODY_BYTES", body = ErrorResponse),
        (status = 415, description = "The body is not declared as JSON", body = ErrorResponse),
        (status = 429, description = "Too many searches at once (ENGRAM_MAX_SEARCHES): retry after `Retry-After` seconds", body = ErrorResponse),
        (status = 503, description = "No index is live yet (see /readyz)", body = ErrorResponse),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<SearchRequest>,
) -> Result<Json<SearchResponse>, ApiError> {
    if request.query.trim().is_empty() {
        return Err(ApiError::invalid("query", "query is empty: say what to look for"));
    }
    let top_k = request.top_k.unwrap_or(state.top_k);
    if !(1..=100).contains(&top_k) {
        return Err(ApiError::invalid("top_k", "top_k is between 1 and 100"));
    }
    // Searches have their own bound, apart from the engine's: they embed and search, no generation.
    let _place = state
        .searches
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::searches_busy())?;
    let served = state.snapshot();
    let index = served
        .index
        .as_ref()
        .map_err(|why| ApiError::unavailable(why.clone()))?;
    let hits = answers::retrieve(
        state.storage.vectors.as_ref(),
        &state.embedder,
        index.version,
        &request.query,
        top_k,
        request.filter.map(ChunkFilter::from).unwrap_or_default(),
    )
    .await
    .map_err(|err| state.retrieval_failed(err))?
    .hits;
    let results = hits
        .into_iter()
        .map(|hit| SearchResult {
            source: ResultSource {
                title: hit.chunk.title,
                url: hit.chunk.url,
                doc_id: hit.chunk.doc_id,
                chunk_id: hit.id.to_string(),
            },
            text: hit.chunk.text,
            score: hit.score,
        })
        .collect();
    Ok(Json(SearchResponse { results }))
}
