//! `GET /openapi.json`: the API's OpenAPI document, generated from the handlers and types (utoipa)
//! and then made to describe this very server: its configured token limit, and bearer security on
//! the `/v1` routes when API keys are configured. Clients and schemathesis read it.

use axum::body::Bytes;
use axum::http::{HeaderName, header};
use serde_json::{Value, json};
use utoipa::OpenApi;

use super::Limits;
use super::{chat, error, health, search};
use crate::rag;

/// The document as utoipa derives it from the code.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "engram inference-service",
        description = "Retrieval-augmented chat over your notes and saved pages: OpenAI's chat-completions API, with the sources each answer cites.",
        license(name = "Apache-2.0"),
    ),
    paths(
        chat::completions,
        search::search,
        health::models,
        health::healthz,
        health::readyz,
    ),
    components(schemas(
        chat::ChatCompletionChunk,
        chat::TextPart,
        error::ErrorResponse,
        rag::SourceRef,
    )),
    tags(
        (name = "chat", description = "OpenAI-compatible chat"),
        (name = "retrieval", description = "Search without generation"),
        (name = "ops", description = "Probes for orchestrators"),
    )
)]
struct ApiDoc;

/// The document for a server with these limits, with or without API keys.
pub fn document(limits: &Limits, keys: bool) -> Value {
    let mut doc = match serde_json::to_value(ApiDoc::openapi()) {
        Ok(doc) => doc,
        Err(err) => json!({ "error": err.to_string() }),
    };
    let properties = &mut doc["components"]["schemas"]["ChatRequest"]["properties"];
    for name in ["max_tokens", "max_completion_tokens"] {
        if let Some(property) = properties.get_mut(name).and_then(Value::as_object_mut) {
            property.insert("maximum".into(), json!(limits.max_completion_tokens));
        }
    }
    if keys {
        doc["components"]["securitySchemes"] = json!({
            "api_key": { "type": "http", "scheme": "bearer", "description": "A key from ENGRAM_API_KEYS" }
        });
        if let Some(paths) = doc["paths"].as_object_mut() {
            for (path, item) in paths.iter_mut().filter(|(path, _)| path.starts_with("/v1/")) {
                let _ = path;
                if let Some(item) = item.as_object_mut() {
                    for operation in item.values_mut() {
                        operation["security"] = json!([{ "api_key": [] }]);
                    }
                }
            }
        }
    }
    doc
}

/// The response `/openapi.json` answers with, rendered once at start.
pub fn response(limits: &Limits, keys: bool) -> ([(HeaderName, &'static str); 1], Bytes) {
    let body = serde_json::to_vec_pretty(&document(limits, keys)).unwrap_or_default();
    ([(header::CONTENT_TYPE, "application/json")], Bytes::from(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            max_completion_tokens: 64,
            max_prompt_tokens: 1024,
            request_timeout: std::time::Duration::from_secs(5),
        }
    }

    #[test]
    fn the_document_names_every_route_and_this_servers_limit() {
        let doc = document(&limits(), false);
        for path in [
            "/v1/chat/completions",
            "/v1/search",
            "/v1/models",
            "/healthz",
            "/readyz",
        ] {
            assert!(doc["paths"][path].is_object(), "{path} is documented");
        }
        let max = &doc["components"]["schemas"]["ChatRequest"]["properties"]["max_tokens"]["maximum"];
        assert_eq!(max, &json!(64));
        assert!(doc["components"]["securitySchemes"].is_null());
    }

    #[test]
    fn with_keys_every_v1_route_needs_a_bearer_key() {
        let doc = document(&limits(), true);
        assert_eq!(
            doc["paths"]["/v1/search"]["post"]["security"],
            json!([{ "api_key": [] }])
        );
        assert!(doc["paths"]["/healthz"]["get"]["security"].is_null());
    }
}
