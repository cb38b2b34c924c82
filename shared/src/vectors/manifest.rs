//! What an index version was built with, and the check that a reader can use it.
//!
//! The pipeline records an [`IndexManifest`] in the registry with every version it builds. A reader
//! (the inference service, `eval retrieval`) embeds questions with its own model: if that is not
//! the model the chunks were embedded with, similarities are meaningless, so it must refuse the
//! version rather than answer badly. [`IndexManifest::check_embedder`] is that refusal.

use serde::{Deserialize, Serialize};

use super::Distance;
use super::sparse::Bm25;
use crate::{Error, Result};

/// How chunks were cut.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChunkerSettings {
    /// Target chunk size in the embedding model's tokens.
    pub max_tokens: usize,
    /// Tokens shared by consecutive chunks.
    pub overlap_tokens: usize,
    /// The splitter (`text-splitter markdown`).
    pub splitter: String,
}

/// Counts of one build.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildCounts {
    /// Documents indexed.
    pub documents: u64,
    /// Chunks stored.
    pub chunks: u64,
    /// Chunks whose embedding was computed in this build.
    pub embedded: u64,
    /// Chunks whose embedding was reused from an earlier version.
    pub reused: u64,
    /// Chunks cut short by the model's maximum length.
    pub truncated: u64,
}

/// Everything a reader needs to know about an index version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexManifest {
    /// The embedding model's id.
    pub embedding_model: String,
    /// Its dimension.
    pub dimension: usize,
    /// The dense distance.
    pub distance: Distance,
    /// How chunks were cut.
    pub chunker: ChunkerSettings,
    /// BM25 parameters and corpus statistics of the sparse vectors.
    pub bm25: Bm25,
    /// The document set indexed (the filter step's output).
    pub document_set_hash: String,
    /// The pipeline run that built it.
    pub run_id: String,
    /// Counts.
    pub counts: BuildCounts,
}

impl IndexManifest {
    /// Refuses an embedder other than the one the version was built with.
    pub fn check_embedder(&self, model_id: &str, dimension: usize, version: i64) -> Result<()> {
        if self.embedding_model != model_id || self.dimension != dimension {
            return Err(Error::Invalid(format!(
                "index version {version} was built with embedding model {} ({} dimensions), but this process \
                 embeds with {model_id} ({dimension} dimensions): searching it would compare unrelated vectors. \
                 Load {} (or rebuild the index with `feature-pipeline index` using {model_id})",
                self.embedding_model, self.dimension, self.embedding_model
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> IndexManifest {
        IndexManifest {
            embedding_model: "all-MiniLM-L6-v2".into(),
            dimension: 384,
            distance: Distance::Cosine,
            chunker: ChunkerSettings {
                max_tokens: 200,
                overlap_tokens: 30,
                splitter: "text-splitter markdown".into(),
            },
            bm25: Bm25::default(),
            document_set_hash: "d".repeat(64),
            run_id: "run".into(),
            counts: BuildCounts::default(),
        }
    }

    #[test]
    fn a_different_embedding_model_is_refused_by_name() {
        assert!(manifest().check_embedder("all-MiniLM-L6-v2", 384, 3).is_ok());
        let err = manifest()
            .check_embedder("bge-small-en", 384, 3)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("all-MiniLM-L6-v2") && err.contains("bge-small-en") && err.contains("version 3"),
            "{err}"
        );
        assert!(manifest().check_embedder("all-MiniLM-L6-v2", 768, 3).is_err());
        let round_trip: IndexManifest = serde_json::from_value(serde_json::to_value(manifest()).unwrap()).unwrap();
        assert_eq!(round_trip.embedding_model, "all-MiniLM-L6-v2");
    }
}
