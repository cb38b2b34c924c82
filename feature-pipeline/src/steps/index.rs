//! The index step: the filtered documents as a new, complete index version, then the alias moves.
//!
//! Input: the latest document set (the filter step's output) and the documents it names. Output: a
//! sealed vector index version `chunks_v{N}` with a dense embedding and a BM25 sparse vector per
//! chunk, its [`IndexManifest`] in the registry, and the alias `chunks` (and the registry's `live`)
//! moved to it; versions beyond `--keep` are dropped afterwards.
//!
//! Order matters for crashes: the version is registered `building`, written, sealed, marked `ready`,
//! and only then does the alias move. A run killed anywhere before that leaves the previous version
//! live; its leftover is dropped by the next build.
//!
//! Embeddings are reused: a chunk whose id (document, position, text) exists in the newest ready
//! version built with the same model, with the same title, headings and url, takes its stored
//! vector instead of being embedded again, so a rerun over unchanged documents embeds nothing.
//! Vectors computed by shards (`index --shard i/N`, see `shard.rs`) are used the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_shared::documents::DocumentFilter;
use engram_shared::embedding::Embedder;
use engram_shared::registry::{AliasKind, INDEX_LIVE, IndexStatus, NewIndexVersion};
use engram_shared::storage::Storage;
use engram_shared::vectors::manifest::{BuildCounts, IndexManifest};
use engram_shared::vectors::sparse::Bm25;
use engram_shared::vectors::{Chunk, ChunkPoint, Distance, IndexSpec};
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::Serialize;

use super::chunk::{Chunker, embedding_text};
use super::filter::DocumentSet;

/// Chunks embedded per call (the embedder batches them by its token budget).
const EMBED_BATCH: usize = 64;
/// Points written per upsert, and ids looked up per reuse query.
const WRITE_BATCH: usize = 256;

/// Where the time of a build went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Whole build.
    pub total: Duration,
    /// Reading and chunking documents.
    pub chunking: Duration,
    /// Computing embeddings.
    pub embedding: Duration,
    /// Looking up reusable embeddings, writing points, sealing.
    pub storage: Duration,
}

/// What a build did.
#[derive(Debug, Clone, Serialize)]
pub struct Built {
    /// The new version.
    pub version: i64,
    /// Its manifest.
    pub manifest: IndexManifest,
    /// Where the time went.
    pub timings: Timings,
    /// Versions dropped after it went live.
    pub dropped: Vec<i64>,
}

/// The key of an embedding computed elsewhere (a shard): the hash of the text embedded.
pub fn text_key(text: &str) -> String {
    engram_shared::hashing::sha256_hex(text)
}

/// Builds a new index version from `set` and makes it live. Chunks whose embedding text has a
/// vector in `precomputed` (by [`text_key`]; the shards' work) are not embedded again.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the build; a struct would only rename them
pub async fn build(
    storage: &Storage,
    embedder: Arc<Embedder>,
    chunker: Arc<Chunker>,
    set: &DocumentSet,
    run_id: &str,
    keep: usize,
    precomputed: &HashMap<String, Vec<f32>>,
    progress: &ProgressBar,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let mut timings = Timings::default();

    let (chunks, documents) = chunk_set(storage, &chunker, set, |_| true, progress).await?;
    let mut bm25 = Bm25::default();
    let texts: Vec<String> = chunks.iter().map(embedding_text).collect();
    for text in &texts {
        bm25.observe(text);
    }
    timings.chunking = started.elapsed();

    let spec = IndexSpec {
        dimension: embedder.dimension(),
        distance: Distance::Cosine,
    };
    let mut manifest = IndexManifest {
        embedding_model: embedder.model_id().to_string(),
        dimension: spec.dimension,
        distance: spec.distance,
        chunker: chunker.settings().clone(),
        bm25,
        document_set_hash: set.hash.clone(),
        run_id: run_id.to_string(),
        counts: BuildCounts {
            documents,
            chunks: chunks.len() as u64,
            ..BuildCounts::default()
        },
    };
    let registered = storage
        .registry
        .begin_index_version(NewIndexVersion {
            run_id: Some(run_id.to_string()),
            embedding_model: manifest.embedding_model.clone(),
            dimension: spec.dimension as i64,
            distance: spec.distance.to_string(),
            manifest: serde_json::to_value(&manifest)?,
        })
        .await?;
    let version = registered.version;
    storage.vectors.create_version(version as u64, spec).await?;

    // Embeddings to reuse from the newest ready version built with the same model.
    let storage_started = Instant::now();
    let reusable = reusable_vectors(storage, &manifest, &chunks).await?;
    timings.storage += storage_started.elapsed();

    progress.set_prefix("embed");
    progress.set_position(0);
    progress.set_length(chunks.len() as u64);
    let mut points = Vec::with_capacity(WRITE_BATCH);
    for (batch_chunks, batch_texts) in chunks.chunks(EMBED_BATCH).zip(texts.chunks(EMBED_BATCH)) {
        let mut vectors: Vec<Option<Vec<f32>>> = batch_chunks
            .iter()
            .zip(batch_texts)
            .map(|(chunk, text)| {
                reusable
                    .get(&chunk.id())
                    .filter(|(stored, _)| stored == chunk)
                    .map(|(_, v)| v.clone())
                    .or_else(|| precomputed.get(&text_key(text)).cloned())
            })
            .collect();
        let missing: Vec<usize> = (0..vectors.len()).filter(|&i| vectors[i].is_none()).collect();
        if !missing.is_empty() {
            let inputs: Vec<String> = missing.iter().map(|&i| batch_texts[i].clone()).collect();
            let embed_started = Instant::now();
            let model = embedder.clone();
            let embeddings = tokio::task::spawn_blocking(move || model.embed(&inputs)).await??;
            timings.embedding += embed_started.elapsed();
            manifest.counts.truncated += embeddings.truncated.len() as u64;
            manifest.counts.embedded += missing.len() as u64;
            for (slot, vector) in missing.into_iter().zip(embeddings.vectors) {
                vectors[slot] = Some(vector);
            }
        }
        for ((chunk, text), vector) in batch_chunks.iter().zip(batch_texts).zip(vectors) {
            let vector = vector.ok_or_else(|| anyhow::anyhow!("chunk {} has no vector", chunk.position))?;
            points.push(ChunkPoint {
                chunk: chunk.clone(),
                vector,
                sparse: manifest.bm25.encode_document(text),
            });
        }
        if points.len() >= WRITE_BATCH {
            let write_started = Instant::now();
            storage
                .vectors
                .upsert(version as u64, std::mem::take(&mut points))
                .await?;
            timings.storage += write_started.elapsed();
        }
        progress.inc(batch_chunks.len() as u64);
    }
    manifest.counts.reused = manifest.counts.chunks - manifest.counts.embedded;
    let write_started = Instant::now();
    if !points.is_empty() {
        storage.vectors.upsert(version as u64, points).await?;
    }
    storage.vectors.seal(version as u64).await?;
    let stored = storage.vectors.count(version as u64).await?;
    if stored != manifest.counts.chunks {
        anyhow::bail!(
            "index version {version} holds {stored} points but {} chunks were written; it stays unpublished",
            manifest.counts.chunks
        );
    }
    storage
        .registry
        .finish_index_version(version, &serde_json::to_value(&manifest)?)
        .await?;
    // The one step that publishes: readers switch from the previous version to this one.
    storage.vectors.set_alias(version as u64).await?;
    storage
        .registry
        .set_alias(AliasKind::Index, INDEX_LIVE, version)
        .await?;
    timings.storage += write_started.elapsed();

    let dropped = prune(storage, keep).await?;
    timings.total = started.elapsed();
    Ok(Built {
        version,
        manifest,
        timings,
        dropped,
    })
}

/// Chunks the documents of `set` that `owned` accepts (all, or one shard's), read once, streamed
/// from the store. Returns the chunks and the number of documents read.
pub async fn chunk_set(
    storage: &Storage,
    chunker: &Arc<Chunker>,
    set: &DocumentSet,
    owned: impl Fn(&str) -> bool,
    progress: &ProgressBar,
) -> anyhow::Result<(Vec<Chunk>, u64)> {
    let wanted: HashSet<&str> = set.ids.iter().map(String::as_str).filter(|id| owned(id)).collect();
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut documents = 0u64;
    progress.set_length(wanted.len() as u64);
    progress.set_prefix("chunk");
    let mut stream = storage.documents.stream(&DocumentFilter::default());
    while let Some(document) = stream.next().await {
        let document = document?;
        if !wanted.contains(document.id.as_str()) {
            continue;
        }
        let chunker = chunker.clone();
        let mut pieces = tokio::task::spawn_blocking(move || chunker.chunk(&document)).await?;
        chunks.append(&mut pieces);
        documents += 1;
        progress.inc(1);
    }
    if documents < wanted.len() as u64 {
        tracing::warn!(
            missing = wanted.len() as u64 - documents,
            "some documents of the document set are no longer stored; run `feature-pipeline filter` again"
        );
    }
    Ok((chunks, documents))
}

/// Stored chunks and vectors of the newest ready version with the same embedding model, by id.
async fn reusable_vectors(
    storage: &Storage,
    manifest: &IndexManifest,
    chunks: &[Chunk],
) -> anyhow::Result<HashMap<uuid::Uuid, (Chunk, Vec<f32>)>> {
    let existing: HashSet<u64> = storage.vectors.versions().await?.into_iter().collect();
    let source = storage.registry.index_versions().await?.into_iter().find(|v| {
        v.status == IndexStatus::Ready
            && v.spec.embedding_model == manifest.embedding_model
            && v.spec.dimension == manifest.dimension as i64
            && existing.contains(&(v.version as u64))
    });
    let mut reusable = HashMap::new();
    let Some(source) = source else {
        return Ok(reusable);
    };
    let ids: Vec<uuid::Uuid> = chunks.iter().map(Chunk::id).collect();
    for batch in ids.chunks(WRITE_BATCH) {
        for point in storage.vectors.get_points(source.version as u64, batch).await? {
            reusable.insert(point.chunk.id(), (point.chunk, point.vector));
        }
    }
    tracing::info!(
        from = source.version,
        found = reusable.len(),
        "embeddings available for reuse"
    );
    Ok(reusable)
}

/// Drops ready versions beyond the newest `keep` (never the live one) and leftovers of builds that
/// never finished. Returns the versions dropped.
pub async fn prune(storage: &Storage, keep: usize) -> anyhow::Result<Vec<i64>> {
    let live = storage.vectors.alias().await?.map(|v| v as i64);
    let existing: HashSet<u64> = storage.vectors.versions().await?.into_iter().collect();
    let mut dropped = Vec::new();
    let mut ready_seen = 0;
    // Newest first.
    for version in storage.registry.index_versions().await? {
        let is_live = Some(version.version) == live;
        let drop = match version.status {
            IndexStatus::Ready => {
                ready_seen += 1;
                ready_seen > keep && !is_live
            }
            // A build that is not the newest record and never finished was interrupted.
            IndexStatus::Building => !is_live && Some(version.version) < live,
            IndexStatus::Dropped => false,
        };
        if !drop {
            continue;
        }
        if existing.contains(&(version.version as u64)) {
            storage.vectors.drop_version(version.version as u64).await?;
        }
        storage.registry.mark_index_dropped(version.version).await?;
        dropped.push(version.version);
    }
    Ok(dropped)
}

/// Moves the alias back to the newest ready version older than the live one (or to `to`).
pub async fn rollback(storage: &Storage, to: Option<i64>) -> anyhow::Result<(Option<i64>, i64)> {
    let live = storage.vectors.alias().await?.map(|v| v as i64);
    let versions = storage.registry.index_versions().await?;
    let target = match to {
        Some(to) => versions.iter().find(|v| v.version == to).ok_or_else(|| {
            anyhow::anyhow!("index version {to} does not exist; `feature-pipeline indexes` lists them")
        })?,
        None => versions
            .iter()
            .find(|v| v.status == IndexStatus::Ready && live.is_none_or(|live| v.version < live))
            .ok_or_else(|| anyhow::anyhow!("there is no earlier ready index version to roll back to"))?,
    };
    if target.status != IndexStatus::Ready {
        anyhow::bail!(
            "index version {} is {}, not ready: only a finished version can go live",
            target.version,
            target.status
        );
    }
    storage.vectors.set_alias(target.version as u64).await?;
    storage
        .registry
        .set_alias(AliasKind::Index, INDEX_LIVE, target.version)
        .await?;
    Ok((live, target.version))
}
