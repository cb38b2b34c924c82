//! Liveness, readiness and the model list.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use serde_json::json;

use super::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: 200 only when a model and a compatible index are loaded; otherwise 503 with why.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let served = state.snapshot();
    let model = served
        .model
        .as_ref()
        .map(|m| json!({ "id": m.id, "version": m.version }));
    let index = served
        .index
        .as_ref()
        .map(|i| json!({ "version": i.version, "embedding_model": i.manifest.embedding_model }));
    let body = json!({
        "ready": served.ready().is_ok(),
        "model": model.as_ref().map_or_else(|why| json!({ "error": why }), Clone::clone),
        "index": index.as_ref().map_or_else(|why| json!({ "error": why }), Clone::clone),
        "queue_depth": state.engine.queue_depth(),
    });
    let status = if served.ready().is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// `GET /v1/models`: the loaded model, OpenAI's list shape.
pub async fn models(State(state): State<AppState>) -> impl IntoResponse {
    let served = state.snapshot();
    let data: Vec<_> = served
        .model
        .as_ref()
        .ok()
        .map(|m| {
            json!({
                "id": m.id,
                "object": "model",
                "created": 0,
                "owned_by": "engram",
                "version": m.version,
                "alias": m.version.map(|_| "production"),
            })
        })
        .into_iter()
        .collect();
    Json(json!({ "object": "list", "data": data }))
}
