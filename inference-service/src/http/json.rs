//! The JSON body extractor of every route: axum's `Json`, with its rejections answered in OpenAI's
//! error shape (a client library reads `error.message`), never as axum's plain-text bodies.

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// A request body parsed as JSON into `T`.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        // Parsed as a JSON value first: the body must be an object (serde would take an array as
        // a tuple of the fields).
        let value = match axum::Json::<serde_json::Value>::from_request(request, state).await {
            Ok(axum::Json(value)) => value,
            Err(rejection) => return Err(rejected(&rejection)),
        };
        if !value.is_object() {
            return Err(ApiError::invalid_body(
                "the body must be a JSON object: see /openapi.json",
            ));
        }
        serde_json::from_value(value).map(Self).map_err(|err| {
            ApiError::invalid_body(format!("the body does not match the API ({err}): see /openapi.json"))
        })
    }
}

fn rejected(rejection: &JsonRejection) -> ApiError {
    let (status, message) = match rejection {
        JsonRejection::MissingJsonContentType(_) => (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be JSON: send `Content-Type: application/json`".to_string(),
        ),
        JsonRejection::JsonSyntaxError(err) => (
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON ({}): check its syntax", err.body_text()),
        ),
        JsonRejection::JsonDataError(err) => (
            StatusCode::BAD_REQUEST,
            format!(
                "the body does not match the API ({}): see /openapi.json",
                err.body_text()
            ),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "the body is larger than this service accepts (ENGRAM_MAX_BODY_BYTES): send less".to_string(),
        ),
        other => (other.status(), format!("cannot read the body: {}", other.body_text())),
    };
    ApiError {
        status,
        message,
        kind: "invalid_request_error",
        param: None,
        retry_after: None,
    }
}

/// For `#[serde(deserialize_with)]` on an optional object field: serde's derived structs also
/// accept a JSON array (as a tuple); the API takes only an object (or null).
pub fn object<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    match Option::<serde_json::Value>::deserialize(deserializer)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(value @ serde_json::Value::Object(_)) => serde_json::from_value(value)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Some(other) => Err(serde::de::Error::custom(format!("expected an object, got {other}"))),
    }
}

/// Like [`object`], for a list of objects.
pub fn objects<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: DeserializeOwned,
{
    use serde::Deserialize;
    let items = Vec::<serde_json::Value>::deserialize(deserializer)?;
    items
        .into_iter()
        .map(|item| match item {
            serde_json::Value::Object(_) => serde_json::from_value(item).map_err(serde::de::Error::custom),
            other => Err(serde::de::Error::custom(format!("expected an object, got {other}"))),
        })
        .collect()
}

/// For `#[serde(deserialize_with)]` on an optional whole-number field: JSON Schema counts `75.0`
/// as the integer 75, and so does the API (serde alone would refuse it).
pub fn whole<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: TryFrom<u64>,
{
    use serde::Deserialize;
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    let value = match (number.as_u64(), number.as_f64()) {
        (Some(value), _) => value,
        (None, Some(float)) if float >= 0.0 && float.fract() == 0.0 && float <= u64::MAX as f64 => float as u64,
        _ => {
            return Err(serde::de::Error::custom(format!(
                "expected a whole number of at least 0, got {number}"
            )));
        }
    };
    T::try_from(value)
        .map(Some)
        .map_err(|_| serde::de::Error::custom(format!("{value} is too large")))
}
