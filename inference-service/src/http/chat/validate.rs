//! Checking a request: what this model cannot do is refused with a 400 in OpenAI's shape, naming
//! the field; what it can do becomes messages and sampling parameters.

use std::time::{SystemTime, UNIX_EPOCH};

use engram_shared::generation::{ChatMessage, GenerationParams, Role};

use super::types::{ChatRequest, Content, MessageRole, Stop};
use crate::http::error::ApiError;

/// Most stop sequences a request may give.
const MAX_STOP: usize = 4;
/// Longest stop sequence, in bytes.
const MAX_STOP_BYTES: usize = 256;

/// Checks the request and turns it into messages and sampling parameters.
pub fn validate(
    request: &ChatRequest,
    max_completion_tokens: usize,
) -> Result<(Vec<ChatMessage>, GenerationParams), ApiError> {
    if request.n.is_some_and(|n| n != 1) {
        return Err(ApiError::invalid(
            "n",
            "only n=1 is supported: send one request per answer",
        ));
    }
    if request.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return Err(ApiError::invalid("tools", "tools are not supported by this model"));
    }
    if let Some(top_k) = request.retrieval.as_ref().and_then(|r| r.top_k)
        && !(1..=50).contains(&top_k)
    {
        return Err(ApiError::invalid("retrieval", "retrieval.top_k is between 1 and 50"));
    }
    if let Some(min) = request.retrieval.as_ref().and_then(|r| r.min_relevance)
        && !(-1.0..=1.0).contains(&min)
    {
        return Err(ApiError::invalid(
            "retrieval",
            "retrieval.min_relevance is a cosine similarity, between -1 and 1",
        ));
    }
    if request.messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "messages is empty: send at least one user message",
        ));
    }
    let mut messages = Vec::new();
    for message in &request.messages {
        let role = match message.role {
            MessageRole::System | MessageRole::Developer => Role::System,
            MessageRole::User => Role::User,
            MessageRole::Assistant => Role::Assistant,
        };
        let text = match &message.content {
            None => String::new(),
            Some(Content::Text(text)) => text.clone(),
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part["type"].as_str(), part["text"].as_str()) {
                        (Some("text"), Some(part)) => text.push_str(part),
                        (Some("text"), None) => {
                            return Err(ApiError::invalid("messages", "a text content part needs its `text`"));
                        }
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                "only text content is supported: this model reads no images or audio",
                            ));
                        }
                    }
                }
                text
            }
        };
        messages.push(ChatMessage::new(role, text));
    }
    // Answers from sources want little randomness; a client that wants more says so.
    let temperature = request.temperature.unwrap_or(0.2);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid("temperature", "temperature is between 0 and 2"));
    }
    let top_p = request.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p", "top_p is greater than 0 and at most 1"));
    }
    for (name, asked) in [
        ("max_tokens", request.max_tokens),
        ("max_completion_tokens", request.max_completion_tokens),
    ] {
        if asked.is_some_and(|n| n == 0 || n > max_completion_tokens) {
            return Err(ApiError::invalid(
                name,
                format!("{name} is between 1 and {max_completion_tokens} (ENGRAM_MAX_COMPLETION_TOKENS)"),
            ));
        }
    }
    let max_tokens = request
        .max_completion_tokens
        .or(request.max_tokens)
        .unwrap_or(max_completion_tokens.min(256));
    let stop = match &request.stop {
        None => vec![],
        Some(Stop::One(s)) => vec![s.0.clone()],
        Some(Stop::Many(v)) => v.0.iter().map(|s| s.0.clone()).collect(),
    };
    // As OpenAI's API: a few short stop sequences. Each is matched at every generated token, so
    // their number and length are bounded.
    if stop.len() > MAX_STOP || stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid(
            "stop",
            format!("stop holds at most {MAX_STOP} sequences of 1 to {MAX_STOP_BYTES} bytes"),
        ));
    }
    let seed = match request.seed {
        Some(seed) if seed > i64::MAX as u64 => {
            return Err(ApiError::invalid("seed", "seed is between 0 and 2^63-1"));
        }
        Some(seed) => seed,
        None => rand_seed(),
    };
    let params = GenerationParams {
        max_tokens,
        temperature,
        top_p,
        seed,
        stop,
        repetition_penalty: 1.1,
        ignore_eos: request.ignore_eos == Some(true),
        ..GenerationParams::default()
    };
    Ok((messages, params))
}

fn rand_seed() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use engram_tests::fuzz::Fuzz;

    use super::*;

    const VALID: &str = r#"{"model":"engram","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"What did the tickets cost?"}]}],"stream":true,"stream_options":{"include_usage":true},"max_tokens":64,"temperature":0.3,"top_p":0.9,"seed":7,"stop":["\n\n","END"],"retrieval":{"enabled":true,"top_k":4,"filter":{"source":"notion"}}}"#;

    #[test]
    fn fuzz_the_chat_request() {
        let request: ChatRequest = serde_json::from_str(VALID).expect("the valid request parses");
        validate(&request, 512).expect("and validates");
        let too_many: ChatRequest =
            serde_json::from_str(r#"{"messages":[{"role":"user","content":"hi"}],"stop":["a","b","c","d","e"]}"#)
                .unwrap();
        assert!(validate(&too_many, 512).is_err(), "five stop sequences are refused");
        // Regression case: nesting deeper than serde_json's limit is an error, not a stack overflow.
        let deep = format!("{{\"messages\":{}{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(serde_json::from_str::<ChatRequest>(&deep).is_err());
        let cases = Fuzz::from_env("chat-request").run(
            |fuzz| fuzz.mutate(VALID.as_bytes(), VALID.len()),
            |bytes| {
                if let Ok(request) = serde_json::from_slice::<ChatRequest>(bytes) {
                    let _ = validate(&request, 512);
                }
            },
        );
        assert!(cases > 0);
    }
}
