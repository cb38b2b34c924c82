//! The OpenAI-compatible teacher: `POST {ENGRAM_TEACHER_URL}/chat/completions`.
//!
//! A 429 waits out `Retry-After` (or backs off), 5xx
//! answers, timeouts and connection errors back off exponentially with jitter, up to `retries`
//! times; any other 4xx fails at once with the endpoint's message, since asking again would not help.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::{Value, json};

use super::{Teacher, TeacherError, TeacherReply, TeacherRequest};
use crate::retry::{backoff, retry_after};

/// How to reach the endpoint.
#[derive(Debug, Clone)]
pub struct HttpTeacherOptions {
    /// The API base, e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8080/v1`.
    pub url: String,
    /// The model to ask for.
    pub model: String,
    /// Bearer key, if the endpoint needs one.
    pub api_key: Option<String>,
    /// Retries after the first attempt.
    pub retries: u32,
    /// Timeout of one attempt.
    pub timeout: Duration,
    /// First backoff; doubled per retry.
    pub backoff: Duration,
    /// Fields merged into every request body (endpoint-specific options).
    pub extra_body: Option<Value>,
}

/// A teacher behind an OpenAI-compatible chat endpoint.
pub struct HttpTeacher {
    client: reqwest::Client,
    options: HttpTeacherOptions,
    id: String,
}

impl HttpTeacher {
    /// A teacher for `options`.
    pub fn new(options: HttpTeacherOptions) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(options.timeout)
            .user_agent(concat!("engram-feature-pipeline/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let id = format!("openai:{}", options.model);
        Ok(Self { client, options, id })
    }

    fn body(&self, request: &TeacherRequest) -> Value {
        let mut body = json!({
            "model": self.options.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "seed": request.seed,
            "stream": false,
        });
        if let (Some(extra), Some(body)) = (
            self.options.extra_body.as_ref().and_then(Value::as_object),
            body.as_object_mut(),
        ) {
            for (key, value) in extra {
                body.insert(key.clone(), value.clone());
            }
        }
        body
    }
}

fn reply(body: &Value) -> Option<TeacherReply> {
    let text = body["choices"][0]["message"]["content"].as_str()?.to_string();
    Some(TeacherReply {
        text,
        prompt_tokens: body["usage"]["prompt_tokens"].as_u64().unwrap_or(0),
        completion_tokens: body["usage"]["completion_tokens"].as_u64().unwrap_or(0),
    })
}

#[async_trait]
impl Teacher for HttpTeacher {
    fn id(&self) -> &str {
        &self.id
    }

    async fn ask(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
        let url = format!("{}/chat/completions", self.options.url.trim_end_matches('/'));
        let body = self.body(request);
        let mut last = String::new();
        let attempts = self.options.retries + 1;
        for attempt in 1..=attempts {
            let mut call = self.client.post(&url).json(&body);
            if let Some(key) = &self.options.api_key {
                call = call.bearer_auth(key);
            }
            let wait = match call.send().await {
                Ok(response) if response.status().is_success() => {
                    let value: Value = match response.json().await {
                        Ok(value) => value,
                        Err(err) => {
                            last = format!("unreadable answer: {err}");
                            tokio::time::sleep(backoff(attempt, self.options.backoff)).await;
                            continue;
                        }
                    };
                    return reply(&value).ok_or_else(|| TeacherError::Refused {
                        status: 200,
                        message: format!("the answer has no choices[0].message.content: {value}"),
                    });
                }
                Ok(response) => {
                    let status = response.status();
                    let asked = retry_after(&response, Duration::from_secs(120));
                    let text = response.text().await.unwrap_or_default();
                    let message = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or(text);
                    if status.as_u16() != 429 && !status.is_server_error() && status.as_u16() != 408 {
                        return Err(TeacherError::Refused {
                            status: status.as_u16(),
                            message,
                        });
                    }
                    last = format!("{status}: {message}");
                    asked.unwrap_or_else(|| backoff(attempt, self.options.backoff))
                }
                Err(err) if err.is_timeout() => {
                    last = format!("no answer within {} s", self.options.timeout.as_secs());
                    backoff(attempt, self.options.backoff)
                }
                Err(err) => {
                    last = engram_shared::error::redact(&format!("cannot reach {url}: {err}"));
                    backoff(attempt, self.options.backoff)
                }
            };
            tracing::warn!(
                attempt,
                attempts,
                wait_ms = wait.as_millis() as u64,
                "teacher call failed: {last}"
            );
            if attempt < attempts {
                tokio::time::sleep(wait).await;
            }
        }
        Err(TeacherError::Exhausted { attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use engram_shared::generation::{ChatMessage, Role};

    use super::*;

    /// A local endpoint that answers the n-th request with `script[n]`.
    async fn endpoint(script: Vec<&'static str>) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let app = Router::new().route(
            "/v1/chat/completions",
            post(move |body: axum::Json<Value>| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let step = script.get(n).copied().unwrap_or("ok");
                async move {
                    match step {
                        "429" => (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "0")], "slow down").into_response(),
                        "503" => (StatusCode::SERVICE_UNAVAILABLE, "overloaded").into_response(),
                        "400" => (
                            StatusCode::BAD_REQUEST,
                            axum::Json(json!({ "error": { "message": "model not found" } })),
                        )
                            .into_response(),
                        "slow" => {
                            tokio::time::sleep(Duration::from_secs(3)).await;
                            "late".into_response()
                        }
                        _ => axum::Json(json!({
                            "choices": [{ "message": { "role": "assistant", "content": format!("summary at {}", body["temperature"]) } }],
                            "usage": { "prompt_tokens": 11, "completion_tokens": 3 },
                        }))
                        .into_response(),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/v1"), calls)
    }

    fn teacher(url: String, retries: u32) -> HttpTeacher {
        HttpTeacher::new(HttpTeacherOptions {
            url,
            model: "teacher-model".into(),
            api_key: Some("secret".into()),
            retries,
            timeout: Duration::from_millis(500),
            backoff: Duration::from_millis(10),
            extra_body: Some(json!({ "retrieval": { "enabled": false } })),
        })
        .unwrap()
    }

    fn request() -> TeacherRequest {
        TeacherRequest {
            messages: vec![ChatMessage::new(Role::User, "summarize this")],
            temperature: 0.5,
            max_tokens: 16,
            seed: 1,
        }
    }

    #[tokio::test]
    async fn rate_limits_server_errors_and_timeouts_are_retried() {
        let (url, calls) = endpoint(vec!["429", "503", "slow", "ok"]).await;
        let reply = teacher(url, 5).ask(&request()).await.unwrap();
        assert_eq!(reply.text, "summary at 0.5");
        assert_eq!((reply.prompt_tokens, reply.completion_tokens), (11, 3));
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn a_refusal_is_not_retried_and_retries_run_out() {
        let (url, calls) = endpoint(vec!["400"]).await;
        let err = teacher(url, 5).ask(&request()).await.unwrap_err();
        assert!(
            matches!(&err, TeacherError::Refused { status: 400, message } if message == "model not found"),
            "{err}"
        );
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (url, calls) = endpoint(vec!["503", "503", "503"]).await;
        let err = teacher(url, 2).ask(&request()).await.unwrap_err();
        assert!(matches!(err, TeacherError::Exhausted { attempts: 3, .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn extra_fields_are_merged_into_the_body() {
        let body = teacher("http://127.0.0.1:9/v1".into(), 0).body(&request());
        assert_eq!(body["retrieval"]["enabled"], false);
        assert_eq!(body["model"], "teacher-model");
        assert_eq!(body["messages"][0]["role"], "user");
    }
}
