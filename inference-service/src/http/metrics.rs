//! The metrics' HTTP side: the middleware that counts and times every request by its route
//! template, and `GET /metrics` (Prometheus' text format) with the gauges read at scrape time.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;

/// Middleware: counts and times every request by its route template.
pub async fn track(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state.metrics.record_request(
        &route,
        &method,
        response.status().as_str(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`: the text exposition format.
pub async fn scrape(State(state): State<AppState>) -> Response {
    let served = state.snapshot();
    let model = served
        .model
        .as_ref()
        .ok()
        .map(|m| (m.id.clone(), m.version.map_or("file".to_string(), |v| v.to_string())));
    let index = served
        .index
        .as_ref()
        .ok()
        .map(|i| (i.version.to_string(), i.manifest.embedding_model.clone()));
    let body = state.metrics.render(
        state.engine.load(),
        model.as_ref().map(|(id, version)| (id.as_str(), version.as_str())),
        index
            .as_ref()
            .map(|(version, embedding)| (version.as_str(), embedding.as_str())),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}
