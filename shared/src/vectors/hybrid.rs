//! Hybrid retrieval: dense and sparse (BM25) results fused by reciprocal rank fusion (RRF).
//!
//! Each backend answers two plain searches, one per named vector; the fusion happens here, so the
//! pipeline's evaluation and the service run the same code on qdrant-edge and on a Qdrant server.
//! RRF scores a chunk by `sum(weight / (k + rank))` over the lists it appears in: it needs no score
//! calibration between cosine similarities and BM25 sums, which live on different scales.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::sparse::{SparseVector, encode_query};
use super::{ChunkFilter, QueryVector, SearchHit, SearchQuery, VectorIndex};
use crate::Result;

/// How the two result lists are fused.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fusion {
    /// RRF's rank constant (60 in the original paper).
    pub k: f32,
    /// Weight of the dense list.
    pub dense_weight: f32,
    /// Weight of the sparse (BM25) list.
    pub sparse_weight: f32,
    /// How many candidates each list contributes, as a multiple of the requested limit.
    pub candidates: usize,
}

impl Default for Fusion {
    fn default() -> Self {
        Self {
            k: 60.0,
            dense_weight: 1.0,
            // Chosen on the sample questions: see the README's retrieval table.
            sparse_weight: 1.5,
            candidates: 4,
        }
    }
}

/// A hybrid query: the question's dense embedding and its text (for BM25).
#[derive(Debug, Clone, PartialEq)]
pub struct HybridQuery {
    /// The question's dense embedding.
    pub dense: Vec<f32>,
    /// The question's BM25 terms.
    pub sparse: SparseVector,
    /// How many hits at most.
    pub limit: usize,
    /// Which chunks qualify.
    pub filter: ChunkFilter,
}

impl HybridQuery {
    /// A query for `text` with its embedding.
    pub fn new(text: &str, dense: Vec<f32>, limit: usize, filter: ChunkFilter) -> Self {
        Self {
            dense,
            sparse: encode_query(text),
            limit,
            filter,
        }
    }
}

/// Fuses ranked lists with weights by RRF and keeps the best `limit`. A hit's score becomes its
/// fused score; ties keep the dense order.
pub fn fuse(lists: Vec<(f32, Vec<SearchHit>)>, k: f32, limit: usize) -> Vec<SearchHit> {
    let mut fused: HashMap<uuid::Uuid, (f32, usize, SearchHit)> = HashMap::new();
    let mut order = 0;
    for (weight, hits) in lists {
        for (rank, hit) in hits.into_iter().enumerate() {
            let contribution = weight / (k + rank as f32 + 1.0);
            order += 1;
            fused
                .entry(hit.id)
                .and_modify(|(score, _, _)| *score += contribution)
                .or_insert((contribution, order, hit));
        }
    }
    let mut hits: Vec<(f32, usize, SearchHit)> = fused.into_values().collect();
    hits.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    hits.into_iter()
        .take(limit)
        .map(|(score, _, mut hit)| {
            hit.score = score;
            hit
        })
        .collect()
}

/// Searches `version` densely and lexically and fuses the two lists.
pub async fn search(
    index: &dyn VectorIndex,
    version: u64,
    query: &HybridQuery,
    fusion: &Fusion,
) -> Result<Vec<SearchHit>> {
    Ok(search_scored(index, version, query, fusion).await?.hits)
}

/// Fused hits, and how close the closest chunk is.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// The fused hits, best first (scores are RRF scores: ranks, not closeness).
    pub hits: Vec<SearchHit>,
    /// The dense similarity of the closest chunk (cosine for a cosine index), `None` when
    /// nothing qualified. Unlike fused scores it says how relevant the best match is at all.
    pub closest: Option<f32>,
}

/// [`search`], keeping the closest dense similarity (what abstention is decided on).
pub async fn search_scored(
    index: &dyn VectorIndex,
    version: u64,
    query: &HybridQuery,
    fusion: &Fusion,
) -> Result<Scored> {
    let candidates = query.limit.max(1) * fusion.candidates.max(1);
    let dense = SearchQuery {
        vector: QueryVector::Dense(query.dense.clone()),
        limit: candidates,
        filter: query.filter.clone(),
    };
    let dense_hits = index.search(version, &dense).await?;
    let closest = dense_hits.iter().map(|hit| hit.score).reduce(f32::max);
    let mut lists = vec![(fusion.dense_weight, dense_hits)];
    if !query.sparse.is_empty() && fusion.sparse_weight > 0.0 {
        let sparse = SearchQuery {
            vector: QueryVector::Sparse(query.sparse.clone()),
            limit: candidates,
            filter: query.filter.clone(),
        };
        lists.push((fusion.sparse_weight, index.search(version, &sparse).await?));
    }
    Ok(Scored {
        hits: fuse(lists, fusion.k, query.limit),
        closest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::Source;
    use crate::vectors::Chunk;

    fn hit(n: u8) -> SearchHit {
        SearchHit {
            id: uuid::Uuid::from_bytes([n; 16]),
            chunk: Chunk {
                doc_id: format!("doc{n}"),
                position: 0,
                source: Source::Notion,
                title: String::new(),
                url: String::new(),
                heading_path: vec![],
                text: String::new(),
            },
            score: 0.0,
        }
    }

    #[test]
    fn a_chunk_in_both_lists_beats_one_on_top_of_one() {
        let dense = vec![hit(1), hit(2), hit(3)];
        let sparse = vec![hit(4), hit(2), hit(5)];
        let fused = fuse(vec![(1.0, dense), (1.0, sparse)], 60.0, 3);
        let ids: Vec<_> = fused.iter().map(|h| h.chunk.doc_id.as_str()).collect();
        assert_eq!(ids, ["doc2", "doc1", "doc4"]);
        assert!((fused[0].score - 2.0 / 62.0).abs() < 1e-6);
    }

    #[test]
    fn weights_shift_the_balance() {
        let fused = fuse(vec![(0.2, vec![hit(1)]), (1.0, vec![hit(2)])], 60.0, 2);
        assert_eq!(fused[0].chunk.doc_id, "doc2");
    }
}
