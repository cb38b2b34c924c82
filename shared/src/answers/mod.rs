//! Answering from the notes: from a conversation to a grounded prompt, and back from the answer to
//! the sources it cites.
//!
//! The service serves this path and `feature-pipeline eval answers` measures it, so both run this
//! code and what is measured is what is served:
//!
//! 1. [`followup`]: the conversation becomes one standalone question (a follow-up is joined to the
//!    question it follows);
//! 2. [`retrieve`]: hybrid search for it, keeping how close the closest chunk is;
//! 3. [`abstain`]: nothing close enough, or ([`names`]) a name the question gives that no source
//!    states, and the answer is that the notes do not say;
//! 4. [`prompt`]: instructions, numbered sources and the conversation, fitted into the window;
//! 5. [`citations`]: which numbered sources the answer cites.

pub mod abstain;
pub mod answer_type;
pub mod citations;
pub mod closeness;
pub mod extract;
pub mod followup;
pub mod names;
pub mod prompt;
pub mod sentences;

use std::sync::Arc;
use tracing::Instrument;

use crate::embedding::{Embedder, EmbeddingError};
use crate::vectors::hybrid::{self, Fusion, HybridQuery, Scored};
use crate::vectors::{ChunkFilter, VectorIndex};

/// How the reply is made from the prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AnswerMode {
    /// The model writes the reply, token by token.
    #[default]
    Generate,
    /// The reply is the sources' sentence the model judges to answer it, or the abstention
    /// ([`extract`]).
    Extract,
}

impl std::str::FromStr for AnswerMode {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "generate" => Ok(AnswerMode::Generate),
            "extract" => Ok(AnswerMode::Extract),
            other => Err(format!("answer mode {other:?} is not one of generate, extract")),
        }
    }
}

impl std::fmt::Display for AnswerMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AnswerMode::Generate => "generate",
            AnswerMode::Extract => "extract",
        })
    }
}

/// Why retrieval failed.
#[derive(Debug, thiserror::Error)]
pub enum RetrievalError {
    /// The question could not be embedded.
    #[error("embedding the question failed: {0}")]
    Embedding(#[from] EmbeddingError),
    /// The embedding thread stopped before answering.
    #[error("the embedding thread stopped: {0}")]
    Thread(String),
    /// The index could not be searched.
    #[error(transparent)]
    Index(#[from] crate::Error),
}

/// Retrieves the best `top_k` chunks for `question` from index `version`, with the closest
/// chunk's similarity (what [`abstain::should_abstain`] decides on).
pub async fn retrieve(
    index: &dyn VectorIndex,
    embedder: &Arc<Embedder>,
    version: u64,
    question: &str,
    top_k: usize,
    filter: ChunkFilter,
) -> Result<Scored, RetrievalError> {
    let model = embedder.clone();
    let text = question.to_string();
    // The query's embedding is its own span, in the GenAI conventions' name and attributes.
    let span = tracing::info_span!(
        "embeddings",
        otel.name = %format!("embeddings {}", embedder.model_id()),
        gen_ai.operation.name = "embeddings",
        gen_ai.request.model = %embedder.model_id(),
    );
    let embeddings = tokio::task::spawn_blocking(move || model.embed(&[text]))
        .instrument(span)
        .await
        .map_err(|e| RetrievalError::Thread(e.to_string()))??;
    let dense = embeddings.vectors.into_iter().next().unwrap_or_default();
    let query = HybridQuery::new(question, dense, top_k, filter);
    Ok(hybrid::search_scored(index, version, &query, &Fusion::default()).await?)
}
