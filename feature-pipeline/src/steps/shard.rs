//! Sharded indexing, for corpora too large for one machine's embedding throughput.
//!
//! `index --shard i/N` (one pod of a Kubernetes Indexed Job each) chunks and embeds only the
//! documents whose id hashes to shard `i` of `N`, and stores the vectors as an artifact recorded as
//! step `index-shard` (its config names the shard, the model and the chunker; its input the document
//! set). Shards write nothing else: no index version, no alias. `index --merge-shards N` runs once,
//! waits until all N shards of the current document set are recorded, and then builds the version
//! as an unsharded build would, taking every vector from the shards — so the alias moves once, and
//! the content equals an unsharded build's.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use engram_shared::embedding::Embedder;
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::Registry;
use engram_shared::storage::Storage;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::chunk::{Chunker, embedding_text};
use super::filter::DocumentSet;
use super::index::{chunk_set, text_key};
use crate::pipeline::Run;

/// The step's name in the registry.
pub const STEP: &str = "index-shard";

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

/// One shard's vectors, by [`text_key`] of the embedded text.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShardVectors {
    /// Text key → vector.
    pub vectors: Vec<(String, Vec<f32>)>,
    /// Documents of the shard.
    pub documents: u64,
}

/// The step config of shard `index` of `count`: what the merge looks up.
pub fn config(index: usize, count: usize, embedding_model: &str, chunker: &Value) -> Value {
    json!({ "shard": index, "shards": count, "embedding_model": embedding_model, "chunker": chunker })
}

/// Embeds one shard's chunks.
pub async fn embed(
    storage: &Storage,
    embedder: Arc<Embedder>,
    chunker: &Arc<Chunker>,
    set: &DocumentSet,
    shard: Shard,
    progress: &ProgressBar,
) -> anyhow::Result<ShardVectors> {
    let (chunks, documents) = chunk_set(storage, chunker, set, |id| shard.owns(id), progress).await?;
    let texts: Vec<String> = chunks.iter().map(embedding_text).collect();
    progress.set_prefix("embed");
    progress.set_position(0);
    progress.set_length(texts.len() as u64);
    let mut vectors = Vec::with_capacity(texts.len());
    for batch in texts.chunks(64) {
        let inputs = batch.to_vec();
        let model = embedder.clone();
        let embedded = tokio::task::spawn_blocking(move || model.embed(&inputs)).await??;
        for (text, vector) in batch.iter().zip(embedded.vectors) {
            vectors.push((text_key(text), vector));
        }
        progress.inc(batch.len() as u64);
    }
    Ok(ShardVectors { vectors, documents })
}

/// Records this shard's vectors as step [`STEP`] of `run`.
pub async fn record(
    storage: &Storage,
    run: &Run<'_>,
    config: &Value,
    input_hash: &str,
    work: impl Future<Output = anyhow::Result<ShardVectors>>,
) -> anyhow::Result<(usize, String)> {
    let (vectors, hash) = run
        .json_step(&storage.artifacts, STEP, config, input_hash, false, async {
            let vectors = work.await?;
            let detail = json!({ "chunks": vectors.vectors.len(), "documents": vectors.documents });
            Ok((vectors, detail))
        })
        .await?;
    Ok((vectors.vectors.len(), hash))
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
) -> anyhow::Result<HashMap<String, Vec<f32>>> {
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
    let mut vectors = HashMap::new();
    for hash in hashes.into_iter().flatten() {
        let bytes = storage.artifacts.get(&hash).await?;
        let shard: ShardVectors = serde_json::from_slice(&bytes)?;
        vectors.extend(shard.vectors);
    }
    Ok(vectors)
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
