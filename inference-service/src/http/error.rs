//! The one error type of the HTTP layer, shaped as OpenAI's error body so clients can read it.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// What went wrong and what to do.
    pub message: String,
    /// OpenAI's error type (`invalid_request_error`, `server_error`, …).
    pub kind: &'static str,
    /// The offending parameter, if one.
    pub param: Option<&'static str>,
    /// Seconds after which to retry (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// A 400 about `param`.
    pub fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: Some(param),
            retry_after: None,
        }
    }

    /// A 400 about the body as a whole.
    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            retry_after: None,
        }
    }

    /// A 429: the queue is full.
    pub fn busy() -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            message: "the model is busy: every slot of the request queue is taken; retry shortly".into(),
            kind: "rate_limit_error",
            param: None,
            retry_after: Some(1),
        }
    }

    /// A 429 for searches: every search place is taken.
    pub fn searches_busy() -> Self {
        Self {
            message: "too many searches at once (ENGRAM_MAX_SEARCHES): retry shortly".into(),
            ..Self::busy()
        }
    }

    /// A 503: not ready to serve this (no model, no index).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            kind: "server_error",
            param: None,
            retry_after: Some(5),
        }
    }

    /// A 500: logged in full, answered in general terms.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        tracing::error!("request failed: {err}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: "the request failed inside the service; see its log".into(),
            kind: "server_error",
            param: None,
            retry_after: None,
        }
    }
}

/// OpenAI's error body.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// What went wrong and what to do.
    pub message: String,
    /// `invalid_request_error`, `authentication_error`, `rate_limit_error` or `server_error`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if one.
    pub param: Option<String>,
    /// Always null.
    pub code: Option<String>,
}

impl ErrorResponse {
    /// An error body.
    pub fn new(message: impl Into<String>, kind: &str, param: Option<&str>) -> Self {
        Self {
            error: ErrorDetail {
                message: message.into(),
                kind: kind.to_string(),
                param: param.map(str::to_string),
                code: None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorResponse::new(self.message, self.kind, self.param);
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after
            && let Ok(value) = HeaderValue::from_str(&seconds.to_string())
        {
            response.headers_mut().insert(header::RETRY_AFTER, value);
        }
        response
    }
}
