//! Liveness, readiness and the model list.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// The process answers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// The served model, or why there is none.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelState {
    /// The model's id (its file or directory name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Its registry version (null when served from `--model`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Why no model is served, and the command that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The live index, or why there is none.
#[derive(Debug, Serialize, ToSchema)]
pub struct IndexState {
    /// Its version.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// The embedding model it was built with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_model: Option<String>,
    /// Why no index is served, and the command that fixes it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Whether the service can answer chat requests, and what it serves.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// A model and a compatible index are loaded, and the stores answer.
    pub ready: bool,
    /// Why not, in one line: the first of the model's, the index's and the stores' problems (absent
    /// when ready), for a probe's log.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The model.
    pub model: ModelState,
    /// The index.
    pub index: IndexState,
    /// Whether the registry and the vector store answered their last check (the reload poll's
    /// reads, and every search).
    pub stores: crate::stores::StoreStates,
    /// Requests waiting for a model thread.
    pub queue_depth: usize,
}

/// One model, in OpenAI's shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelCard {
    /// The model's id.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Always 0 (unknown).
    pub created: u64,
    /// Always `engram`.
    pub owned_by: &'static str,
    /// Its registry version (null when served from `--model`).
    pub version: Option<i64>,
    /// The alias it is served under (`production`), null when served from `--model`.
    pub alias: Option<&'static str>,
}

/// The models served, in OpenAI's list shape (one, or none when not ready).
#[derive(Debug, Serialize, ToSchema)]
pub struct ModelList {
    /// Always `list`.
    pub object: &'static str,
    /// The served model.
    pub data: Vec<ModelCard>,
}

/// The process answers (liveness).
#[utoipa::path(get, path = "/healthz", tag = "ops", responses((status = 200, description = "The process answers", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// 200 only when a model and a compatible index are loaded and the stores answer; otherwise 503
/// with why.
#[utoipa::path(get, path = "/readyz", tag = "ops", responses(
    (status = 200, description = "Ready to answer", body = Readiness),
    (status = 503, description = "Not ready: `model.error`, `index.error` or `stores` says why and what fixes it", body = Readiness),
))]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let served = state.snapshot();
    let model = match &served.model {
        Ok(m) => ModelState {
            id: Some(m.id.clone()),
            version: m.version,
            error: None,
        },
        Err(why) => ModelState {
            id: None,
            version: None,
            error: Some(why.clone()),
        },
    };
    let index = match &served.index {
        Ok(i) => IndexState {
            version: Some(i.version),
            embedding_model: Some(i.manifest.embedding_model.clone()),
            error: None,
        },
        Err(why) => IndexState {
            version: None,
            embedding_model: None,
            error: Some(why.clone()),
        },
    };
    let stores = state.stores.states();
    let reason = served.ready().err().or_else(|| stores.problem());
    let ready = reason.is_none();
    let body = Readiness {
        ready,
        reason,
        model,
        index,
        stores,
        queue_depth: state.engine.queue_depth(),
    };
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

/// The loaded model, in OpenAI's list shape.
#[utoipa::path(get, path = "/v1/models", tag = "chat", responses(
    (status = 200, description = "The served model (an empty list when none is loaded)", body = ModelList),
    (status = 401, description = "A key is required (ENGRAM_API_KEYS is set) and none or a wrong one was sent", body = super::error::ErrorResponse),
))]
pub async fn models(State(state): State<AppState>) -> Json<ModelList> {
    let served = state.snapshot();
    let data = served
        .model
        .as_ref()
        .ok()
        .map(|m| ModelCard {
            id: m.id.clone(),
            object: "model",
            created: 0,
            owned_by: "engram",
            version: m.version,
            alias: m.version.map(|_| "production"),
        })
        .into_iter()
        .collect();
    Json(ModelList { object: "list", data })
}
