//! Sharded indexing, for corpora too large for one machine's embedding throughput.
//!
//! `index --shard i/N` (one pod of a Kubernetes Indexed Job each) chunks and embeds only the
//! documents whose id hashes to shard `i` of `N`, and stores each document's vectors as an artifact;
//! the shard's output, recorded as step `index-shard` (its config names the shard, the model and the
//! chunker; its input the document set), maps document ids to those artifacts. Shards write nothing
//! else: no index version, no alias. `index --merge-shards N` runs once, waits until all N shards of
//! the current document set are recorded, and then builds the version as an unsharded build would,
//! fetching each document's vectors from its shard's artifact as it reaches the document — so the
//! alias moves once, the content equals an unsharded build's, and neither side holds more than a
//! batch of vectors in memory.

use std::collections::{BTreeMap, HashMap};
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_shared::artifacts::ArtifactStore;
use engram_shared::embedding::Embedder;
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::Registry;
use engram_shared::storage::Storage;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chunk::{Chunker, embedding_text};
use super::filter::DocumentSet;
use super::index::{SetChunks, text_key};
use crate::pipeline::Run;

/// The step's name in the registry.
pub const STEP: &str = "index-shard";
/// The layout of a shard's output; part of the step config, so an older layout is never read.
const LAYOUT: &str = "vectors-per-document";
/// Chunks embedded per call.
const EMBED_BATCH: usize = 64;

/// Shard `index` of `count` (0-based), written `i/N`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Shard {
    /// Which shard.
    pub index: usize,
    /// How many.
    pub count: usize,
}

impl FromStr for Shard {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is not a shard: write i/N with 0 <= i < N, e.g. 0/4");
        let (index, count) = text.split_once('/').ok_or_else(bad)?;
        let index: usize = index.trim().parse().map_err(|_| bad())?;
        let count: usize = count.trim().parse().map_err(|_| bad())?;
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Self { index, count })
    }
}

impl Shard {
    /// Whether document `id` belongs to this shard (by a hash of the id: stable, and even).
    pub fn owns(&self, id: &str) -> bool {
        let digest = sha256_hex(id);
        let value = u64::from_str_radix(&digest[..16], 16).unwrap_or(0);
        (value % self.count as u64) as usize == self.index
    }
}

/// One shard's output: where each of its documents' vectors are.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardVectors {
    /// Document id → the artifact holding its [`DocumentVectors`].
    pub documents: BTreeMap<String, String>,
    /// Chunks embedded.
    pub chunks: u64,
}

/// One document's vectors, by [`text_key`] of the embedded text, in chunk order.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct DocumentVectors {
    /// Text key → vector.
    pub vectors: Vec<(String, Vec<f32>)>,
}

/// The step config of shard `index` of `count`: what the merge looks up.
pub fn config(index: usize, count: usize, embedding_model: &str, chunker: &Value) -> Value {
    json!({
        "shard": index, "shards": count, "embedding_model": embedding_model, "chunker": chunker, "layout": LAYOUT,
    })
}

/// A document being embedded: the vectors it has, and how many of its chunks are still queued.
struct Embedding {
    id: String,
    queued: usize,
    vectors: Vec<(String, Vec<f32>)>,
}

/// Embeds one shard's chunks, storing each document's vectors as soon as all are computed. Chunks
/// of consecutive documents share embedding batches.
pub async fn embed(
    storage: &Storage,
    embedder: Arc<Embedder>,
    chunker: &Arc<Chunker>,
    set: &DocumentSet,
    shard: Shard,
    progress: &ProgressBar,
) -> anyhow::Result<ShardVectors> {
    let mut pass = SetChunks::new(storage, chunker.clone(), set, |id| shard.owns(id));
    progress.set_prefix("embed");
    progress.set_length(pass.wanted() as u64);
    let mut output = ShardVectors::default();
    // Documents with queued chunks, oldest first; `texts` holds (document's place in `open`, text).
    let mut open: Vec<Embedding> = Vec::new();
    let mut texts: Vec<(usize, String)> = Vec::with_capacity(EMBED_BATCH);
    while let Some((id, chunks)) = pass.next().await? {
        open.push(Embedding {
            id,
            queued: chunks.len(),
            vectors: Vec::with_capacity(chunks.len()),
        });
        for chunk in &chunks {
            // The document being read is the last one open (it stays open until its last chunk).
            texts.push((open.len() - 1, embedding_text(chunk)));
            if texts.len() >= EMBED_BATCH {
                embed_batch(&embedder, &mut open, std::mem::take(&mut texts)).await?;
                store_finished(&storage.artifacts, &mut open, &mut texts, &mut output, progress).await?;
            }
        }
        if chunks.is_empty() {
            store_finished(&storage.artifacts, &mut open, &mut texts, &mut output, progress).await?;
        }
    }
    pass.finish();
    embed_batch(&embedder, &mut open, std::mem::take(&mut texts)).await?;
    store_finished(&storage.artifacts, &mut open, &mut texts, &mut output, progress).await?;
    Ok(output)
}

/// Embeds `texts` and hands each vector to its document.
async fn embed_batch(
    embedder: &Arc<Embedder>,
    open: &mut [Embedding],
    texts: Vec<(usize, String)>,
) -> anyhow::Result<()> {
    if texts.is_empty() {
        return Ok(());
    }
    let inputs: Vec<String> = texts.iter().map(|(_, text)| text.clone()).collect();
    let model = embedder.clone();
    let embedded = tokio::task::spawn_blocking(move || model.embed(&inputs)).await??;
    for ((place, text), vector) in texts.into_iter().zip(embedded.vectors) {
        let document = &mut open[place];
        document.vectors.push((text_key(&text), vector));
        document.queued -= 1;
    }
    Ok(())
}

/// Stores the leading documents of `open` whose chunks are all embedded, and renumbers the places
/// of the texts still queued.
async fn store_finished(
    artifacts: &ArtifactStore,
    open: &mut Vec<Embedding>,
    texts: &mut [(usize, String)],
    output: &mut ShardVectors,
    progress: &ProgressBar,
) -> anyhow::Result<()> {
    let finished = open.iter().take_while(|d| d.queued == 0).count();
    for document in open.drain(..finished) {
        let chunks = document.vectors.len() as u64;
        let bytes = serde_json::to_vec(&DocumentVectors {
            vectors: document.vectors,
        })?;
        let hash = artifacts.put(bytes).await?;
        output.documents.insert(document.id, hash);
        output.chunks += chunks;
        progress.inc(1);
    }
    for (place, _) in texts.iter_mut() {
        *place -= finished;
    }
    Ok(())
}

/// The shards' vectors as the merge uses them: fetched one document at a time.
#[derive(Debug, Default)]
pub struct Precomputed {
    by_document: HashMap<String, String>,
    chunks: u64,
}

impl Precomputed {
    /// Documents covered.
    pub fn documents(&self) -> usize {
        self.by_document.len()
    }

    /// Chunks covered.
    pub fn chunks(&self) -> u64 {
        self.chunks
    }

    /// The vectors a shard computed for document `id`, by [`text_key`] (empty when none did).
    pub async fn vectors_of(&self, artifacts: &ArtifactStore, id: &str) -> anyhow::Result<HashMap<String, Vec<f32>>> {
        let Some(hash) = self.by_document.get(id) else {
            return Ok(HashMap::new());
        };
        let bytes = artifacts.get(hash).await?;
        let document: DocumentVectors = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the shard vectors {hash} of document {id} are unreadable ({e})"))?;
        Ok(document.vectors.into_iter().collect())
    }
}

/// Records this shard's vectors as step [`STEP`] of `run`.
pub async fn record(
    storage: &Storage,
    run: &Run<'_>,
    config: &Value,
    input_hash: &str,
    work: impl Future<Output = anyhow::Result<ShardVectors>>,
) -> anyhow::Result<(u64, String)> {
    let (vectors, hash) = run
        .json_step(&storage.artifacts, STEP, config, input_hash, false, async {
            let vectors = work.await?;
            let detail = json!({ "chunks": vectors.chunks, "documents": vectors.documents.len() });
            Ok((vectors, detail))
        })
        .await?;
    Ok((vectors.chunks, hash))
}

/// Waits (up to `wait`) until all `count` shards of `input_hash` are recorded, then loads their
/// vectors.
pub async fn collect(
    registry: &Registry,
    storage: &Storage,
    count: usize,
    embedding_model: &str,
    chunker: &Value,
    input_hash: &str,
    wait: Duration,
) -> anyhow::Result<Precomputed> {
    let started = Instant::now();
    let mut hashes = vec![None; count];
    loop {
        for (index, slot) in hashes.iter_mut().enumerate() {
            if slot.is_some() {
                continue;
            }
            let key = Run::key(STEP, &config(index, count, embedding_model, chunker), input_hash)?;
            if let Some(record) = registry.cached_step(&key).await? {
                *slot = record.output_hash;
            }
        }
        let missing: Vec<usize> = (0..count).filter(|&i| hashes[i].is_none()).collect();
        if missing.is_empty() {
            break;
        }
        if started.elapsed() >= wait {
            anyhow::bail!(
                "shards {missing:?} of {count} have not finished for the current document set after {} s: \
                 run `feature-pipeline index --shard i/{count}` for each (or raise --wait-secs)",
                wait.as_secs()
            );
        }
        tracing::info!(?missing, "waiting for shards");
        tokio::time::sleep(Duration::from_secs(2).min(wait)).await;
    }
    let mut precomputed = Precomputed::default();
    for hash in hashes.into_iter().flatten() {
        let bytes = storage.artifacts.get(&hash).await?;
        let shard: ShardVectors = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("the shard output {hash} is unreadable ({e}); run the shards again"))?;
        precomputed.chunks += shard.chunks;
        precomputed.by_document.extend(shard.documents);
    }
    Ok(precomputed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_parse_and_split_ids_evenly() {
        assert_eq!("1/4".parse::<Shard>().unwrap(), Shard { index: 1, count: 4 });
        for bad in ["4/4", "1", "a/b", "0/0"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
        let shards: Vec<Shard> = (0..4).map(|i| Shard { index: i, count: 4 }).collect();
        let mut sizes = [0usize; 4];
        for n in 0..4000 {
            let id = format!("doc-{n}");
            let owners: Vec<usize> = shards.iter().filter(|s| s.owns(&id)).map(|s| s.index).collect();
            assert_eq!(owners.len(), 1, "each id has one shard");
            sizes[owners[0]] += 1;
        }
        assert!(sizes.iter().all(|&n| (850..1150).contains(&n)), "{sizes:?}");
    }
}
