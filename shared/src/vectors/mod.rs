//! The vector index: embedded chunks of documents, searched by the inference service.
//!
//! The index is versioned. The pipeline builds a new collection `chunks_v{N}` completely, seals it,
//! and only then moves the alias [`ALIAS`] to it in one step, so a reader never sees a half-built
//! index and a crashed build leaves the previous version live. Published versions are immutable;
//! old ones are kept for rollback until dropped.

pub mod edge;
pub mod hybrid;
pub mod manifest;
pub mod qdrant;
pub mod sparse;

pub use sparse::SparseVector;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::documents::Source;
use crate::hashing::sha256_fields;
use crate::{Error, Result};

/// The alias readers search through.
pub const ALIAS: &str = "chunks";

/// The collection name of index version `version`.
pub fn collection_name(version: u64) -> String {
    format!("chunks_v{version}")
}

/// The version number of a collection name, if it is one of ours.
pub fn parse_collection_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("chunks_v")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How vectors are compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity (what sentence-transformers models are trained for).
    Cosine,
    /// Dot product.
    Dot,
    /// Euclidean distance.
    Euclid,
}

impl Distance {
    /// The lowercase name recorded in the manifest.
    pub fn as_str(&self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::Euclid => "euclid",
        }
    }
}

impl fmt::Display for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Distance {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cosine" => Ok(Distance::Cosine),
            "dot" => Ok(Distance::Dot),
            "euclid" => Ok(Distance::Euclid),
            other => Err(Error::Invalid(format!(
                "unknown distance {other:?}: expected cosine, dot or euclid"
            ))),
        }
    }
}

/// The shape of an index version's vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexSpec {
    /// Dense vector dimension.
    pub dimension: usize,
    /// Dense vector distance.
    pub distance: Distance,
}

/// A piece of a document, as stored beside its vector and returned by search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chunk {
    /// The id of the document it came from.
    pub doc_id: String,
    /// Its position in the document, from 0.
    pub position: u32,
    /// The document's source.
    pub source: Source,
    /// The document's title.
    pub title: String,
    /// The document's url.
    pub url: String,
    /// The headings above the chunk, outermost first.
    pub heading_path: Vec<String>,
    /// The chunk's text.
    pub text: String,
}

impl Chunk {
    /// A stable id: the same chunk of the same document gets the same id in every version.
    pub fn id(&self) -> uuid::Uuid {
        let hash = sha256_fields([
            self.doc_id.as_bytes(),
            &self.position.to_le_bytes(),
            self.text.as_bytes(),
        ]);
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hash[2 * i..2 * i + 2], 16).unwrap_or(0);
        }
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }

    pub(crate) fn to_payload(&self) -> Result<serde_json::Value> {
        serde_json::to_value(self).map_err(|e| Error::Invalid(format!("chunk payload: {e}")))
    }

    pub(crate) fn from_payload(value: serde_json::Value) -> Result<Self> {
        serde_json::from_value(value).map_err(|e| Error::Corrupt(format!("chunk payload: {e}")))
    }
}

/// A chunk with its embedding, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct ChunkPoint {
    /// The chunk.
    pub chunk: Chunk,
    /// Its dense embedding.
    pub vector: Vec<f32>,
    /// Its BM25 sparse vector (see [`sparse`]); may be empty.
    pub sparse: SparseVector,
}

/// Which chunks a search may return. Empty means all.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ChunkFilter {
    /// Only chunks of documents from this source.
    pub source: Option<Source>,
    /// Only chunks of these documents (empty: any document).
    #[serde(default)]
    pub doc_ids: Vec<String>,
}

/// What a search compares chunks with: one of the two named vectors.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryVector {
    /// The query's dense embedding, against the chunks' dense vectors.
    Dense(Vec<f32>),
    /// The query's sparse (BM25) vector, scored by dot product against the chunks' sparse vectors.
    Sparse(SparseVector),
}

/// A search request on one named vector (see [`hybrid`] for both, fused).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchQuery {
    /// What to compare with.
    pub vector: QueryVector,
    /// How many hits at most.
    pub limit: usize,
    /// Which chunks qualify.
    pub filter: ChunkFilter,
}

/// One search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The chunk's point id.
    pub id: uuid::Uuid,
    /// The chunk.
    pub chunk: Chunk,
    /// Similarity score (higher is closer).
    pub score: f32,
}

/// Where embedded chunks are kept. Every backend passes the same contract suite
/// (`shared/tests/vectors_contract.rs`).
#[async_trait]
pub trait VectorIndex: Send + Sync {
    /// The backend's name (`qdrant-edge`, `qdrant`).
    fn backend(&self) -> &'static str;

    /// Creates the empty collection of `version`. Fails with [`Error::Conflict`] if it exists:
    /// a version is built once.
    async fn create_version(&self, version: u64, spec: IndexSpec) -> Result<()>;

    /// Adds or replaces points in a version being built. Batches internally.
    async fn upsert(&self, version: u64, points: Vec<ChunkPoint>) -> Result<()>;

    /// Makes a finished version durable and immutable; only a sealed version may be aliased.
    async fn seal(&self, version: u64) -> Result<()>;

    /// The nearest chunks to the query in `version`.
    async fn search(&self, version: u64, query: &SearchQuery) -> Result<Vec<SearchHit>>;

    /// The stored points with these ids (dense and sparse vectors included), in no particular
    /// order; ids not in `version` are left out. Lets a new version reuse embeddings.
    async fn get_points(&self, version: u64, ids: &[uuid::Uuid]) -> Result<Vec<ChunkPoint>>;

    /// How many points `version` holds.
    async fn count(&self, version: u64) -> Result<u64>;

    /// The versions that exist, ascending (including unsealed leftovers of crashed builds).
    async fn versions(&self) -> Result<Vec<u64>>;

    /// Points [`ALIAS`] at `version` in one step.
    async fn set_alias(&self, version: u64) -> Result<()>;

    /// The version [`ALIAS`] points at, if any.
    async fn alias(&self) -> Result<Option<u64>>;

    /// Closes what this process holds open for `version` (a reader that no longer serves it);
    /// searching it later opens it again. Nothing to do for a server backend.
    fn release(&self, _version: u64) {}

    /// Deletes a version. Refuses the version the alias points at.
    async fn drop_version(&self, version: u64) -> Result<()>;

    /// Searches the version the alias points at.
    async fn search_live(&self, query: &SearchQuery) -> Result<Vec<SearchHit>> {
        let version = self.alias().await?.ok_or_else(|| {
            Error::not_found(format!(
                "live index (alias {ALIAS:?}); build one with `feature-pipeline index`"
            ))
        })?;
        self.search(version, query).await
    }
}

/// Checks a query's dense vector against the index's dimension.
pub(crate) fn check_query_dimension(vector: &[f32], version: u64, spec: &IndexSpec) -> Result<()> {
    if vector.len() != spec.dimension {
        return Err(Error::Invalid(format!(
            "query vector has {} dimensions; index version {} holds {}",
            vector.len(),
            collection_name(version),
            spec.dimension
        )));
    }
    Ok(())
}

/// Checks a batch of points against the index's dimension before anything is written.
pub(crate) fn check_dimensions(points: &[ChunkPoint], spec: &IndexSpec) -> Result<()> {
    for point in points {
        if point.sparse.indices.len() != point.sparse.values.len() {
            return Err(Error::Invalid(format!(
                "chunk {} of document {} has a sparse vector with {} indices and {} values",
                point.chunk.position,
                point.chunk.doc_id,
                point.sparse.indices.len(),
                point.sparse.values.len()
            )));
        }
        if point.vector.len() != spec.dimension {
            return Err(Error::Invalid(format!(
                "chunk {} of document {} has a {}-dimensional vector; this index version holds {}-dimensional vectors",
                point.chunk.position,
                point.chunk.doc_id,
                point.vector.len(),
                spec.dimension
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collection_names_round_trip() {
        assert_eq!(collection_name(7), "chunks_v7");
        assert_eq!(parse_collection_name("chunks_v7"), Some(7));
        assert_eq!(parse_collection_name("chunks_v"), None);
        assert_eq!(parse_collection_name("chunks_vx"), None);
        assert_eq!(parse_collection_name("other_v1"), None);
    }
}
