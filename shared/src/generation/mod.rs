//! Text generation: the small language model (a llama-family GGUF, or an HF-layout directory of
//! safetensors) run on CPU.
//!
//! One [`Generator`] is loaded per process and shared by every request: the weights are held once
//! (tensors are reference-counted) and each generation gets its own KV cache. A generation renders
//! the model's chat template, checks the prompt fits the context window, samples with the request's
//! parameters and hands each piece of text to a callback as soon as it is decoded, so the service
//! can stream it and stop when the client goes away.

pub mod chat_template;
pub mod checkpoint;
pub mod gguf_bounds;
pub mod gguf_tokenizer;
pub mod hf;
pub mod kernels;
pub mod llama;
pub mod prefix_cache;
pub mod prompt_tokens;
mod sampling;
pub mod score;
pub mod sequence;
pub mod weights;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

pub use chat_template::ChatTemplate;
pub use prompt_tokens::PromptEncoder;
pub use sampling::GenerationParams;
pub use score::ReplyScore;
pub use sequence::{PREFILL_CHUNK, Sequence, Step};
pub use weights::WeightFormat;

/// Opens a GGUF file and reads its header, refusing anything but the llama family and any tensor
/// that does not lie inside the file ([`gguf_bounds`]).
pub fn open_llama_gguf(path: &Path) -> Result<(File, Content)> {
    let file_error = |reason: String| GenerationError::File {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = File::open(path).map_err(|e| file_error(e.to_string()))?;
    let content = gguf_bounds::read_checked(&mut file).map_err(file_error)?;
    let architecture = content
        .metadata
        .get("general.architecture")
        .and_then(|v| v.to_string().ok())
        .cloned()
        .unwrap_or_default();
    if architecture != "llama" {
        return Err(GenerationError::Format(format!(
            "architecture {architecture:?}: engram runs llama-family GGUF models"
        )));
    }
    Ok((file, content))
}

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
pub enum GenerationError {
    /// The model file is missing or unreadable.
    #[error(
        "{path}: {reason}. Pass a llama-family GGUF file or HF-layout model directory (run scripts/fetch-models.sh for the default SmolLM2)"
    )]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The file is readable but not something engram can run.
    #[error("unsupported model: {0}")]
    Format(String),
    /// The request cannot be served (e.g. the prompt is longer than the context window).
    #[error("{0}")]
    Request(String),
    /// candle failed while running the model.
    #[error("generation failed: {0}")]
    Model(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, GenerationError>;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the assistant.
    System,
    /// The person asking.
    User,
    /// The model's earlier answers.
    Assistant,
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: Role,
    /// What it says.
    pub content: String,
}

impl ChatMessage {
    /// A message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// Why a generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The model ended its turn, or a stop string appeared.
    Stop,
    /// `max_tokens` or the context window was reached.
    Length,
    /// The caller stopped it (e.g. the client disconnected).
    Cancelled,
}

/// Token counts of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Usage {
    /// Tokens of the rendered prompt.
    pub prompt_tokens: usize,
    /// Tokens generated.
    pub completion_tokens: usize,
}

/// Where a generation's time went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Timings {
    /// Reading the prompt, up to the first generated token (time to first token).
    pub prompt: Duration,
    /// Generating every token after the first.
    pub decode: Duration,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The generated text (stop string excluded).
    pub text: String,
    /// Token counts.
    pub usage: Usage,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Where the time went.
    pub timings: Timings,
}

/// What the callback tells the generator after each piece of text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep generating.
    Continue,
    /// Stop now (finish reason `Cancelled`).
    Stop,
}

/// Options for loading a [`Generator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GeneratorOptions {
    /// In-memory weight format.
    pub weights: WeightFormat,
}

/// The forward pass: candle's quantized llama (every format but `packed`), or engram's own over
/// the stored blocks.
enum Model {
    /// candle's model, with the bytes of keys and values one position takes in its cache.
    Candle(ModelWeights, usize),
    Packed(llama::Llama),
}

/// A loaded language model, shared across requests.
pub struct Generator {
    model: Model,
    tokenizer: Tokenizer,
    prompts: PromptEncoder,
    template: ChatTemplate,
    stop_tokens: Vec<u32>,
    bos: Option<u32>,
    context_length: usize,
    model_id: String,
    device: Device,
    /// The last prompt's keys and values, for prompts that begin the same way (packed only);
    /// `None` when reuse is turned off ([`Generator::without_prefix_reuse`]).
    prefixes: Option<prefix_cache::PrefixCache>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("model_id", &self.model_id)
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

impl Generator {
    /// Loads a llama-family model: a GGUF file, its weights converted to `options.weights`, or an
    /// HF-layout directory (`hf.rs`), run with f32 weights.
    pub fn load(path: &Path, options: GeneratorOptions) -> Result<Self> {
        if path.is_dir() {
            return Self::load_hf(path, options);
        }
        let (mut file, content) = open_llama_gguf(path)?;
        let (tokenizer, special) = gguf_tokenizer::from_gguf(&content)?;
        let template_source = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| chat_template::CHATML.to_string());
        let template = ChatTemplate::new(&template_source)?;
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(MAX_SEQ_LEN, |n| (n as usize).min(MAX_SEQ_LEN));
        let device = Device::Cpu;
        let model = if options.weights == WeightFormat::Packed {
            Model::Packed(llama::Llama::load(&content, &mut file, context_length)?)
        } else {
            // candle keeps f32 keys and values for every layer.
            let shape = llama::gguf_shape(&content)?;
            let kv_bytes = shape.layers * 2 * shape.dim / shape.heads * shape.kv_heads * std::mem::size_of::<f32>();
            let weights = match weights::convert(&content, &mut file, options.weights)? {
                Some((converted, mut buffer)) => ModelWeights::from_gguf(converted, &mut buffer, &device)?,
                None => ModelWeights::from_gguf(content, &mut file, &device)?,
            };
            Model::Candle(weights, kv_bytes)
        };
        Ok(Self::assemble(
            model,
            tokenizer,
            template,
            special.eos.into_iter().collect(),
            special.add_bos.then_some(special.bos).flatten(),
            context_length,
            path,
        ))
    }

    fn load_hf(dir: &Path, options: GeneratorOptions) -> Result<Self> {
        if !matches!(options.weights, WeightFormat::Packed | WeightFormat::F32) {
            return Err(GenerationError::Request(format!(
                "weight format {} applies to GGUF files; an HF-layout directory runs as f32 (use packed or f32)",
                options.weights
            )));
        }
        let model = hf::load(dir, MAX_SEQ_LEN)?;
        let template = ChatTemplate::new(model.chat_template.as_deref().unwrap_or(chat_template::CHATML))?;
        Ok(Self::assemble(
            Model::Packed(model.llama),
            model.tokenizer,
            template,
            model.eos,
            model.bos,
            model.context_length,
            dir,
        ))
    }

    fn assemble(
        model: Model,
        tokenizer: Tokenizer,
        template: ChatTemplate,
        mut stop_tokens: Vec<u32>,
        bos: Option<u32>,
        context_length: usize,
        path: &Path,
    ) -> Self {
        for end_of_turn in ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "</s>"] {
            if let Some(id) = tokenizer.token_to_id(end_of_turn) {
                stop_tokens.push(id);
            }
        }
        stop_tokens.sort_unstable();
        stop_tokens.dedup();
        let name = if path.is_dir() {
            path.file_name()
        } else {
            path.file_stem()
        };
        let model_id = name.map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Generator {
            model,
            prompts: PromptEncoder::new(tokenizer.clone()),
            tokenizer,
            template,
            stop_tokens,
            bos,
            context_length,
            model_id,
            device: Device::Cpu,
            prefixes: Some(prefix_cache::PrefixCache::default()),
        }
    }

    /// The same generator, reading every prompt whole from its first token (for measuring what
    /// the reuse of a shared prompt prefix saves; answers are the same either way).
    pub fn without_prefix_reuse(mut self) -> Self {
        self.prefixes = None;
        self
    }

    /// The model's id (the file's stem).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The most tokens (prompt plus answer) one generation may hold.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Bytes of keys and values one position of a generation holds: what a sequence reserves
    /// per position of its prompt and budget ([`Sequence::positions_needed`]).
    pub fn kv_bytes_per_position(&self) -> usize {
        match &self.model {
            Model::Candle(_, bytes) => *bytes,
            Model::Packed(llama) => llama.kv_bytes_per_position(),
        }
    }

    /// The tokenizer, e.g. to count tokens when packing a prompt.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` with special tokens recognised, no BOS added: for text the template
    /// wrote. A chat's prompt is [`Generator::prompt_tokens`].
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| GenerationError::Format(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of token ids.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, false)
            .map_err(|e| GenerationError::Format(e.to_string()))
    }

    /// The prompt the chat template makes of `messages`.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String> {
        self.template.render(messages)
    }

    /// The token ids the model is given for `messages` (BOS first where the model wants one).
    /// Only the template's own markers are control tokens: a `<|im_start|>` written in a message
    /// or a document stays text ([`prompt_tokens`]).
    pub fn prompt_tokens(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let mut tokens: Vec<u32> = self.bos.into_iter().collect();
        tokens.extend(self.prompts.encode(&self.template, messages)?);
        Ok(tokens)
    }
}
