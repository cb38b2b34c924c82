//! The `qa` task: grounded question answering, the dataset's second configuration.
//!
//! The summaries teach the small model to write about a document; the service asks it something
//! else: answer a question from numbered sources, cite them, and say the notes do not say when they
//! do not. This task teaches that, in the exact prompt the service builds
//! (`engram_shared::answers::prompt::system_message`). Three steps:
//!
//! - [`ask`] (`qa-distil`): the kept documents are chunked as the index chunks them; of the chunks
//!   richest in facts (numbers, names), the sentence holding the most is shown to the teacher, with
//!   a versioned prompt (`prompts/qa-v1.md`), several samples each, for the question it answers;
//!   the sentence is the answer, so no answer holds a fact its chunk lacks;
//! - [`check`] (`qa-quality`): a question is kept only when it is a real question about its
//!   sentence that the sentence answers: vague, meta, copied, leaking, invented and off-topic ones
//!   are dropped and counted; the best surviving sample of a chunk is kept;
//! - [`rows`] (`qa-split`): each kept pair becomes a row whose sources are the chunk and its
//!   nearest neighbours, ordered by closeness to the question as retrieval would, the answer citing
//!   the chunk's number; some questions are also paired with close sources that do not answer them,
//!   and the answer the service gives then ([`ABSTENTION`]). Rows go to the split their document is
//!   in for the summaries, so no document is in two splits of either configuration.
//!
//! [`ABSTENTION`]: engram_shared::answers::abstain::ABSTENTION

pub mod ask;
pub mod check;
pub mod facts;
pub mod rows;

use engram_shared::hashing::sha256_hex;
use serde::Serialize;

use super::distil::prompt_parts;

/// The prompt template the questions are asked with.
#[derive(Debug, Clone, Serialize)]
pub struct QaPrompt {
    /// Its version name (the file's stem), e.g. `qa-v1`.
    pub version: String,
    /// sha256 of the file.
    pub hash: String,
    /// The system message.
    pub system: String,
    /// The user message, with a `{{sentence}}` placeholder.
    pub user: String,
}

/// The prompt file shipped with this build.
pub const PROMPT_TEXT: &str = include_str!("../../../prompts/qa-v1.md");

impl QaPrompt {
    /// The prompt shipped with this build.
    pub fn builtin() -> Self {
        Self::parse("qa-v1", PROMPT_TEXT).expect("the built-in qa prompt has a system and a user part")
    }

    /// Reads a template (see `prompts/qa-v1.md`).
    pub fn parse(version: &str, text: &str) -> anyhow::Result<Self> {
        let (system, user) = prompt_parts(version, text, &["{{sentence}}"])?;
        Ok(Self {
            version: version.to_string(),
            hash: sha256_hex(text),
            system,
            user,
        })
    }

    /// The user message for one fact sentence.
    pub fn instruction(&self, sentence: &str) -> String {
        self.user.replace("{{sentence}}", sentence)
    }
}

/// How the task is built.
#[derive(Debug, Clone, Serialize)]
pub struct QaSettings {
    /// Chunks per document shown to the teacher (the richest in facts); 0 turns the task off.
    pub chunks_per_document: usize,
    /// Samples asked per chunk (the best that passes the checks is kept).
    pub samples: usize,
    /// Lowest sampling temperature (samples spread evenly up to `temperature_max`).
    pub temperature_min: f64,
    /// Highest sampling temperature.
    pub temperature_max: f64,
    /// Most tokens the teacher may write per sample.
    pub max_tokens: usize,
    /// Chunk size, in the embedding model's tokens (the index's setting).
    pub chunk_tokens: usize,
    /// Tokens shared by consecutive chunks (the index's setting).
    pub chunk_overlap: usize,
    /// Longest answer (fact sentence), in characters.
    pub max_answer_chars: usize,
    /// Smallest cosine similarity between a question and its sentence.
    pub min_relevance: f32,
    /// Sources in each row's prompt (the service's `top_k`).
    pub sources: usize,
    /// Share of kept questions also paired with sources that do not answer them.
    pub unanswerable: f64,
    /// Seed of the sampling seeds and of the unanswerable pairs.
    pub seed: u64,
}

impl QaSettings {
    /// The temperature of sample `k` (0-based).
    pub fn temperature(&self, k: usize) -> f64 {
        super::distil::spread(self.temperature_min, self.temperature_max, self.samples, k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_prompt_renders_its_placeholders() {
        let prompt = QaPrompt::builtin();
        let text = prompt.instruction("Opens at 8.");
        assert!(text.contains("Sentence: \"Opens at 8.\"") && !text.contains("{{"));
        assert!(!prompt.system.is_empty());
    }
}
