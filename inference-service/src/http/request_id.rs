//! Every request gets an id: the client's `x-request-id` when it sends a sane one, else a new
//! one. The id is returned in the response's `x-request-id` and is a field of the request's
//! tracing span, so every log line written while serving it (JSON logs carry span fields) can be
//! found with it.
//!
//! The span is the request's OpenTelemetry server span (see [`crate::telemetry`]): named
//! `{method} {route}`, with the HTTP semantic conventions' attributes, and a child of the caller's
//! span when the request carries a W3C `traceparent`.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the id, both ways.
pub const HEADER: &str = "x-request-id";

/// Longest id taken from a client.
const MAX_LEN: usize = 128;

/// Middleware: tags the request with its id, serves it inside a span named `request`.
///
/// Added with `Router::layer`, it runs inside routing, so the matched route template is known
/// (`{method}` alone for a path no route matched, as the conventions say).
pub async fn tag(request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(HEADER)
        .and_then(|value| value.to_str().ok())
        .filter(|id| acceptable(id))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let method = request.method().as_str().to_string();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string());
    let name = match &route {
        Some(route) => format!("{method} {route}"),
        None => method.clone(),
    };
    let span = tracing::info_span!(
        "request",
        otel.name = %name,
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        request_id = %id,
        http.request.method = %method,
        http.route = route.as_deref(),
        url.path = %request.uri().path(),
        http.response.status_code = tracing::field::Empty,
    );
    // Errors here are "no OpenTelemetry layer installed": then there is nothing to join.
    let _ = span.set_parent(crate::telemetry::caller_context(request.headers()));
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(HEADER, value);
    }
    response
}

/// A client's id is kept when it is short printable ASCII (it goes into logs and a header).
fn acceptable(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_LEN && id.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_printable_ids_are_taken_from_clients() {
        assert!(acceptable("req-42_ABC.def"));
        assert!(!acceptable(""));
        assert!(!acceptable("has space"));
        assert!(!acceptable("line\nbreak"));
        assert!(!acceptable(&"x".repeat(MAX_LEN + 1)));
    }
}
