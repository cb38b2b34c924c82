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
//! Memory is bounded by the batch size, not the corpus: the documents are streamed from the store
//! twice, once to count BM25's corpus statistics (which every chunk's sparse vector needs) and once
//! to embed and write chunks a batch at a time. Chunking twice costs a small fraction of embedding
//! once. Only the set's document ids are held whole (the set already holds them).
//!
//! Embeddings are reused: a chunk whose id (document, position, text) exists in the newest ready
//! version built with the same model, with the same title, headings and url, takes its stored
//! vector instead of being embedded again (looked up a batch at a time), so a rerun over unchanged
//! documents embeds nothing. Vectors computed by shards (`index --shard i/N`, see `shard.rs`) are
//! fetched per document the same way.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_shared::documents::{DocumentFilter, DocumentStream};
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
use super::shard::Precomputed;

/// Chunks embedded per call (the embedder batches them by its token budget), and ids looked up
/// per reuse query.
const EMBED_BATCH: usize = 64;
/// Points written per upsert.
const WRITE_BATCH: usize = 256;

/// Where the time of a build went.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    /// Whole build.
    pub total: Duration,
    /// Reading and chunking documents (both passes).
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
/// vector in `precomputed` (the shards' work) are not embedded again.
#[allow(clippy::too_many_arguments)] // each is a distinct input of the build; a struct would only rename them
pub async fn build(
    storage: &Storage,
    embedder: Arc<Embedder>,
    chunker: Arc<Chunker>,
    set: &DocumentSet,
    run_id: &str,
    keep: usize,
    precomputed: &Precomputed,
    progress: &ProgressBar,
) -> anyhow::Result<Built> {
    let started = Instant::now();
    let mut timings = Timings::default();

    // Pass 1: BM25's corpus statistics and the counts, keeping no chunk.
    progress.set_prefix("count");
    progress.set_length(set.ids.len() as u64);
    let mut bm25 = Bm25::default();
    let mut counted = 0u64;
    let mut pass = SetChunks::new(storage, chunker.clone(), set, |_| true);
    while let Some((_, chunks)) = pass.next().await? {
        for chunk in &chunks {
            bm25.observe(&embedding_text(chunk));
        }
        counted += chunks.len() as u64;
        progress.inc(1);
    }
    let documents = pass.finish();
    timings.chunking += pass.spent;

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
            chunks: counted,
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
    let version = registered.version as u64;
    storage.vectors.create_version(version, spec).await?;

    // Pass 2: chunk again, and embed and write a batch at a time.
    progress.set_prefix("embed");
    progress.set_position(0);
    progress.set_length(counted);
    let mut writer = Writer {
        storage,
        embedder,
        version,
        reuse_from: reuse_source(storage, &manifest).await?,
        pending: Vec::with_capacity(EMBED_BATCH),
        points: Vec::with_capacity(WRITE_BATCH),
        written: 0,
        embedded: 0,
        truncated: 0,
        timings: Timings::default(),
    };
    let mut pass = SetChunks::new(storage, chunker, set, |_| true);
    while let Some((doc_id, chunks)) = pass.next().await? {
        let from_shards = precomputed.vectors_of(&storage.artifacts, &doc_id).await?;
        for chunk in chunks {
            let text = embedding_text(&chunk);
            let known = from_shards.get(&text_key(&text)).cloned();
            writer.pending.push(Pending { chunk, text, known });
            if writer.pending.len() >= EMBED_BATCH {
                let n = writer.pending.len() as u64;
                writer.embed_pending(&manifest.bm25).await?;
                progress.inc(n);
            }
        }
    }
    pass.finish();
    timings.chunking += pass.spent;
    let n = writer.pending.len() as u64;
    writer.embed_pending(&manifest.bm25).await?;
    progress.inc(n);
    writer.write_points().await?;
    timings.embedding = writer.timings.embedding;
    timings.storage = writer.timings.storage;
    manifest.counts.embedded = writer.embedded;
    manifest.counts.truncated = writer.truncated;
    manifest.counts.reused = writer.written.saturating_sub(writer.embedded);
    if writer.written != counted {
        anyhow::bail!(
            "the documents changed while index version {version} was built ({counted} chunks counted, {} \
             written); it stays unpublished: run `feature-pipeline index` again",
            writer.written
        );
    }

    let write_started = Instant::now();
    storage.vectors.seal(version).await?;
    let stored = storage.vectors.count(version).await?;
    if stored != manifest.counts.chunks {
        anyhow::bail!(
            "index version {version} holds {stored} points but {} chunks were written; it stays unpublished",
            manifest.counts.chunks
        );
    }
    storage
        .registry
        .finish_index_version(version as i64, &serde_json::to_value(&manifest)?)
        .await?;
    // Closed before it goes live, so readers open it in place rather than copy a version this
    // process still holds (an embedded shard is owned by one process at a time).
    storage.vectors.release(version);
    // The one step that publishes: readers switch from the previous version to this one.
    storage.vectors.set_alias(version).await?;
    storage
        .registry
        .set_alias(AliasKind::Index, INDEX_LIVE, version as i64)
        .await?;
    timings.storage += write_started.elapsed();

    let dropped = prune(storage, keep).await?;
    timings.total = started.elapsed();
    Ok(Built {
        version: version as i64,
        manifest,
        timings,
        dropped,
    })
}

/// A chunk waiting for its vector, and the vector a shard computed for it, if one did.
struct Pending {
    chunk: Chunk,
    text: String,
    known: Option<Vec<f32>>,
}

/// Pass 2's state: the batch being embedded and the points waiting to be written.
struct Writer<'a> {
    storage: &'a Storage,
    embedder: Arc<Embedder>,
    version: u64,
    reuse_from: Option<u64>,
    pending: Vec<Pending>,
    points: Vec<ChunkPoint>,
    written: u64,
    embedded: u64,
    truncated: u64,
    timings: Timings,
}

impl Writer<'_> {
    /// Gives every pending chunk its vector (reused, from a shard, or embedded now) and queues its
    /// point, writing when a write batch is full.
    async fn embed_pending(&mut self, bm25: &Bm25) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let mut vectors: Vec<Option<Vec<f32>>> = match self.reuse_from {
            Some(source) => {
                let lookup_started = Instant::now();
                let ids: Vec<uuid::Uuid> = pending.iter().map(|p| p.chunk.id()).collect();
                let mut stored: HashMap<uuid::Uuid, ChunkPoint> = self
                    .storage
                    .vectors
                    .get_points(source, &ids)
                    .await?
                    .into_iter()
                    .map(|point| (point.chunk.id(), point))
                    .collect();
                self.timings.storage += lookup_started.elapsed();
                pending
                    .iter()
                    .zip(&ids)
                    .map(|(p, id)| {
                        stored
                            .remove(id)
                            .filter(|point| point.chunk == p.chunk)
                            .map(|point| point.vector)
                            .or_else(|| p.known.clone())
                    })
                    .collect()
            }
            None => pending.iter().map(|p| p.known.clone()).collect(),
        };
        let missing: Vec<usize> = (0..vectors.len()).filter(|&i| vectors[i].is_none()).collect();
        if !missing.is_empty() {
            let inputs: Vec<String> = missing.iter().map(|&i| pending[i].text.clone()).collect();
            let embed_started = Instant::now();
            let model = self.embedder.clone();
            let embeddings = tokio::task::spawn_blocking(move || model.embed(&inputs)).await??;
            self.timings.embedding += embed_started.elapsed();
            self.truncated += embeddings.truncated.len() as u64;
            self.embedded += missing.len() as u64;
            for (slot, vector) in missing.into_iter().zip(embeddings.vectors) {
                vectors[slot] = Some(vector);
            }
        }
        for (p, vector) in pending.into_iter().zip(vectors) {
            let vector = vector.ok_or_else(|| anyhow::anyhow!("chunk {} has no vector", p.chunk.position))?;
            let sparse = bm25.encode_document(&p.text);
            self.points.push(ChunkPoint {
                chunk: p.chunk,
                vector,
                sparse,
            });
        }
        if self.points.len() >= WRITE_BATCH {
            self.write_points().await?;
        }
        Ok(())
    }

    /// Writes the queued points.
    async fn write_points(&mut self) -> anyhow::Result<()> {
        if self.points.is_empty() {
            return Ok(());
        }
        let write_started = Instant::now();
        let points = std::mem::take(&mut self.points);
        self.written += points.len() as u64;
        self.storage.vectors.upsert(self.version, points).await?;
        self.timings.storage += write_started.elapsed();
        Ok(())
    }
}

/// The documents of a set that a filter accepts (all, or one shard's), streamed from the store and
/// chunked one at a time.
pub struct SetChunks<'a> {
    stream: DocumentStream<'a>,
    wanted: HashSet<&'a str>,
    chunker: Arc<Chunker>,
    documents: u64,
    /// Time spent reading and chunking.
    pub spent: Duration,
}

impl<'a> SetChunks<'a> {
    /// Starts reading `set`'s documents that `owned` accepts.
    pub fn new(
        storage: &'a Storage,
        chunker: Arc<Chunker>,
        set: &'a DocumentSet,
        owned: impl Fn(&str) -> bool,
    ) -> Self {
        Self {
            stream: storage.documents.stream(&DocumentFilter::default()),
            wanted: set.ids.iter().map(String::as_str).filter(|id| owned(id)).collect(),
            chunker,
            documents: 0,
            spent: Duration::ZERO,
        }
    }

    /// How many documents this reader will yield when all are stored.
    pub fn wanted(&self) -> usize {
        self.wanted.len()
    }

    /// The next wanted document's id and chunks, in order.
    pub async fn next(&mut self) -> anyhow::Result<Option<(String, Vec<Chunk>)>> {
        let started = Instant::now();
        while let Some(document) = self.stream.next().await {
            let document = document?;
            if !self.wanted.contains(document.id.as_str()) {
                continue;
            }
            let chunker = self.chunker.clone();
            let id = document.id.clone();
            let chunks = tokio::task::spawn_blocking(move || chunker.chunk(&document)).await?;
            self.documents += 1;
            self.spent += started.elapsed();
            return Ok(Some((id, chunks)));
        }
        self.spent += started.elapsed();
        Ok(None)
    }

    /// The documents read, warning when some of the set are no longer stored.
    pub fn finish(&self) -> u64 {
        let wanted = self.wanted.len() as u64;
        if self.documents < wanted {
            tracing::warn!(
                missing = wanted - self.documents,
                "some documents of the document set are no longer stored; run `feature-pipeline filter` again"
            );
        }
        self.documents
    }
}

/// The newest ready version built with the same embedding model (whose vectors can be reused).
async fn reuse_source(storage: &Storage, manifest: &IndexManifest) -> anyhow::Result<Option<u64>> {
    let existing: HashSet<u64> = storage.vectors.versions().await?.into_iter().collect();
    let source = storage.registry.index_versions().await?.into_iter().find(|v| {
        v.status == IndexStatus::Ready
            && v.spec.embedding_model == manifest.embedding_model
            && v.spec.dimension == manifest.dimension as i64
            && existing.contains(&(v.version as u64))
    });
    if let Some(source) = &source {
        tracing::info!(from = source.version, "embeddings available for reuse");
    }
    Ok(source.map(|v| v.version as u64))
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
