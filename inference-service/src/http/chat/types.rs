//! The API's types: the chat-completions request as OpenAI's clients send it (with engram's
//! `retrieval` extension), and the whole and streamed responses (with `sources` and `retrieval`).
//! The OpenAPI document is generated from these.

use engram_shared::documents::Source;
use engram_shared::generation::{Completion, FinishReason};
use engram_shared::vectors::ChunkFilter;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::http::json::{object, objects, whole};
use crate::rag::SourceRef;

/// A message's content: text, or content parts of which only text is supported.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts (`{"type": "text", "text": …}`); images and audio are refused.
    #[schema(value_type = Vec<TextPart>)]
    Parts(Vec<Value>),
}

/// A text content part.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the accepted shape; parts are read as JSON to name what is refused
pub struct TextPart {
    /// Always `text`.
    #[schema(rename = "type", pattern = "^text$")]
    kind: String,
    /// The text.
    text: String,
}

/// Who says a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageRole {
    /// Instructions (added after the service's own).
    System,
    /// OpenAI's newer name for system.
    Developer,
    /// The person asking.
    User,
    /// Earlier answers.
    Assistant,
}

/// One message of the request.
#[derive(Debug, Deserialize, ToSchema)]
pub struct Message {
    /// Who says it.
    pub role: MessageRole,
    /// What it says.
    pub content: Option<Content>,
}

/// `stop`: one string or several.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum Stop {
    /// One stop string.
    One(StopSequence),
    /// Several.
    Many(StopSequences),
}

/// A stop sequence: matched at every generated token, so it is short.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[schema(min_length = 1, max_length = 256)]
pub struct StopSequence(pub String);

/// Up to four stop sequences, as OpenAI's API allows.
#[derive(Debug, Deserialize, ToSchema)]
#[schema(max_items = 4)]
pub struct StopSequences(pub Vec<StopSequence>);

/// Where retrieved chunks may come from.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SourceName {
    /// Notion pages.
    Notion,
    /// Crawled web pages.
    Crawl,
    /// Local files.
    File,
}

/// Which chunks qualify for retrieval.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterRequest {
    /// Only chunks of documents from this source.
    pub source: Option<SourceName>,
    /// Only chunks of these documents.
    pub doc_ids: Option<Vec<String>>,
}

impl From<FilterRequest> for ChunkFilter {
    fn from(filter: FilterRequest) -> Self {
        ChunkFilter {
            source: filter.source.map(|s| match s {
                SourceName::Notion => Source::Notion,
                SourceName::Crawl => Source::Crawl,
                SourceName::File => Source::File,
            }),
            doc_ids: filter.doc_ids.unwrap_or_default(),
        }
    }
}

/// Retrieval options (an engram extension of OpenAI's request).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Retrieval {
    /// Whether to retrieve at all (default true).
    pub enabled: Option<bool>,
    /// Chunks to retrieve (default ENGRAM_TOP_K).
    #[schema(minimum = 1, maximum = 50)]
    #[serde(default, deserialize_with = "whole")]
    pub top_k: Option<usize>,
    /// Which chunks qualify.
    #[serde(default, deserialize_with = "object")]
    pub filter: Option<FilterRequest>,
    /// Answer that the notes do not say, without generating, when no retrieved chunk is close
    /// enough (default true).
    pub abstain: Option<bool>,
    /// How close the closest chunk must be (cosine similarity) for the model to answer (default
    /// ENGRAM_MIN_RELEVANCE).
    #[schema(minimum = -1.0, maximum = 1.0)]
    pub min_relevance: Option<f32>,
    /// How the answer is made from the sources (default ENGRAM_ANSWER_MODE): `generate`, the model
    /// writes it; `extract`, it is the sources' sentence the model judges to answer it, cited, or that
    /// the notes do not say.
    pub answer: Option<AnswerModeName>,
}

/// How an answer is made from the sources.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AnswerModeName {
    /// The model writes the answer.
    Generate,
    /// The answer is the sources' sentence the model judges to answer it, cited, or that the notes do
    /// not say.
    Extract,
}

impl From<AnswerModeName> for engram_shared::answers::AnswerMode {
    fn from(mode: AnswerModeName) -> Self {
        match mode {
            AnswerModeName::Generate => Self::Generate,
            AnswerModeName::Extract => Self::Extract,
        }
    }
}

/// Streaming options.
#[derive(Debug, Deserialize, ToSchema)]
pub struct StreamOptions {
    /// Send a last chunk with token usage.
    pub include_usage: Option<bool>,
}

/// The request body: OpenAI's chat-completions fields this service understands (unknown fields are
/// ignored, as OpenAI does).
#[derive(Debug, Deserialize, ToSchema)]
pub struct ChatRequest {
    /// The model asked for (the loaded one answers; see `/v1/models`).
    pub model: Option<String>,
    /// The conversation; retrieval searches with its last user message, joined to the question it
    /// follows up on when it is a follow-up. Earlier turns that do not fit are dropped, oldest first.
    #[schema(min_items = 1)]
    #[serde(deserialize_with = "objects")]
    pub messages: Vec<Message>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    #[serde(default, deserialize_with = "object")]
    pub stream_options: Option<StreamOptions>,
    /// Sampling temperature (default 0.2: answers from sources want little randomness).
    #[schema(minimum = 0.0, maximum = 2.0)]
    pub temperature: Option<f64>,
    /// Nucleus sampling.
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub top_p: Option<f64>,
    /// Most tokens to generate (OpenAI's older name).
    #[schema(minimum = 1, maximum = 512)]
    #[serde(default, deserialize_with = "whole")]
    pub max_tokens: Option<usize>,
    /// Most tokens to generate (at most ENGRAM_MAX_COMPLETION_TOKENS).
    #[schema(minimum = 1, maximum = 512)]
    #[serde(default, deserialize_with = "whole")]
    pub max_completion_tokens: Option<usize>,
    /// Stop strings.
    pub stop: Option<Stop>,
    /// Sampling seed: the same seed and request give the same answer.
    #[schema(minimum = 0, maximum = 9_223_372_036_854_775_807_i64)]
    #[serde(default, deserialize_with = "whole")]
    pub seed: Option<u64>,
    /// End-user id (logged as given).
    pub user: Option<String>,
    /// Number of choices: only 1.
    #[schema(minimum = 1, maximum = 1)]
    #[serde(default, deserialize_with = "whole")]
    pub n: Option<usize>,
    /// Tools: not supported (null or empty).
    #[schema(max_items = 0)]
    pub tools: Option<Vec<Value>>,
    /// Retrieval options.
    #[serde(default, deserialize_with = "object")]
    pub retrieval: Option<Retrieval>,
    /// Keep generating past the model's end of turn, to `max_tokens` (an extension, as in
    /// llama.cpp's server and vLLM: benchmarks need a fixed number of tokens).
    #[serde(default)]
    pub ignore_eos: Option<bool>,
}

/// Token counts of one answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// Tokens of the prompt, retrieved sources included.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
    /// Both.
    pub total_tokens: usize,
}

impl From<&Completion> for Usage {
    fn from(completion: &Completion) -> Self {
        Self {
            prompt_tokens: completion.usage.prompt_tokens,
            completion_tokens: completion.usage.completion_tokens,
            total_tokens: completion.usage.prompt_tokens + completion.usage.completion_tokens,
        }
    }
}

/// The assistant's message.
#[derive(Debug, Serialize, ToSchema)]
pub struct AssistantMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// The answer, citing sources as [1], [2]…
    pub content: String,
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Finish {
    /// End of turn or a stop string.
    Stop,
    /// max_tokens or the context window was reached.
    Length,
}

impl Finish {
    /// The name the API (and the GenAI conventions' `gen_ai.response.finish_reasons`) uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
        }
    }
}

impl From<FinishReason> for Finish {
    fn from(reason: FinishReason) -> Self {
        match reason {
            FinishReason::Length => Finish::Length,
            FinishReason::Stop | FinishReason::Cancelled => Finish::Stop,
        }
    }
}

/// One choice of a whole answer (there is always exactly one).
#[derive(Debug, Serialize, ToSchema)]
pub struct Choice {
    /// 0.
    pub index: usize,
    /// The answer.
    pub message: AssistantMessage,
    /// Why it ended.
    pub finish_reason: Finish,
    /// Not computed: always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// A whole answer (`stream` false).
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletion {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The answer.
    pub choices: Vec<Choice>,
    /// Token counts.
    pub usage: Usage,
    /// The retrieved sources the answer may cite, marked when it does (engram's extension).
    pub sources: Vec<SourceRef>,
    /// What retrieval searched with and found (engram's extension).
    pub retrieval: RetrievalReport,
}

/// What retrieval searched with and how close it came (engram's extension).
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct RetrievalReport {
    /// The question searched with (empty when nothing was retrieved).
    pub query: String,
    /// Whether the query joins earlier questions to a follow-up.
    pub rewritten: bool,
    /// The closest chunk's cosine similarity, when anything was retrieved.
    pub closest: Option<f32>,
    /// Whether the service answered that the notes do not say, without generating.
    pub abstained: bool,
    /// A name the question gives that no retrieved source states, when that is why it abstained
    /// (`Wi-Fi` in "What is the Wi-Fi password?").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unstated: Option<String>,
    /// Earlier turns left out of the prompt for lack of room.
    pub dropped_turns: usize,
}

/// One server-sent event of a streamed answer, as a client's SSE parser sees it.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // documents the stream; the events are written by axum's Sse
pub struct StreamEvent {
    /// A `ChatCompletionChunk` as JSON, an `ErrorResponse` as JSON when generation failed, or
    /// `[DONE]` at the end.
    data: String,
    /// The event type, when the parser reports one (`message`).
    event: Option<String>,
    /// Event id (not sent).
    id: Option<String>,
    /// Reconnection time (not sent).
    retry: Option<u64>,
}

/// What a streamed chunk adds.
#[derive(Debug, Serialize, ToSchema)]
pub struct Delta {
    /// `assistant`, in the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// More text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// One choice of a streamed chunk.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChunkChoice {
    /// 0.
    pub index: usize,
    /// What this chunk adds.
    pub delta: Delta,
    /// Set in the last content chunk.
    pub finish_reason: Option<Finish>,
    /// Always null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
}

/// One server-sent event of a streamed answer (`data: {…}`; the stream ends with `data: [DONE]`).
/// The first carries `sources`; with `stream_options.include_usage` the last carries `usage` and no
/// choices.
#[derive(Debug, Serialize, ToSchema)]
pub struct ChatCompletionChunk {
    /// The same for every chunk of an answer.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// Zero or one choice.
    pub choices: Vec<ChunkChoice>,
    /// In the first chunk: the sources the answer may cite; in the last content chunk (the one
    /// with `finish_reason`) again, with `cited` set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sources: Option<Vec<SourceRef>>,
    /// In the first chunk: what retrieval searched with and found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retrieval: Option<RetrievalReport>,
    /// In the last chunk, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
}
