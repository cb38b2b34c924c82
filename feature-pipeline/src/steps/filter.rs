//! The filter step: which documents the later stages (dataset, index) read.
//!
//! Input: every stored document. Output: a [`DocumentSet`], the sorted ids of the documents kept
//! plus every dropped one with its reason, stored in the artifact store by hash and recorded as the
//! `filter` step's output in the registry. Later stages load the latest one ([`latest`]), so their
//! lineage names the exact document set they read, and re-filtering never edits a document.
//!
//! Rules, in order: too short, too long, low quality (the heuristic score, or a better scorer's when
//! one was stored), then exact duplicates (same normalised text) and near-duplicates (MinHash
//! estimate of word 5-gram Jaccard similarity at or above the threshold). Among duplicates the best
//! document stays: highest quality, then longest, then smallest id, so the choice is stable.

use std::collections::{BTreeMap, HashMap};

use engram_shared::artifacts::ArtifactStore;
use engram_shared::documents::{DocumentFilter, DocumentStore};
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::Registry;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::dedup::{self, NearDuplicateIndex, Signature};
use super::extract::markdown::word_count;
use super::score;
use crate::config::FilterArgs;

/// The step's name in the registry.
pub const STEP: &str = "filter";

/// Why a document was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DropReason {
    /// Fewer words than `--min-words`.
    TooShort,
    /// More words than `--max-words`.
    TooLong,
    /// Quality below `--min-quality`.
    LowQuality,
    /// The same text as a better document.
    ExactDuplicate,
    /// Nearly the same text as a better document.
    NearDuplicate,
}

/// One dropped document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dropped {
    /// Its id.
    pub id: String,
    /// Its title.
    pub title: String,
    /// Its url.
    pub url: String,
    /// Why.
    pub reason: DropReason,
    /// The number behind the reason (words, score, similarity and the kept document).
    pub detail: String,
}

/// The documents later stages read: the filter step's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DocumentSet {
    /// sha256 of the kept ids: names this set in lineage.
    pub hash: String,
    /// Kept document ids, sorted.
    pub ids: Vec<String>,
    /// Documents considered.
    pub total: u64,
    /// Dropped documents, with reasons.
    pub dropped: Vec<Dropped>,
    /// The thresholds used.
    pub config: serde_json::Value,
    /// sha256 over the ids and content hashes read: what the step's input was.
    pub input_hash: String,
}

impl DocumentSet {
    /// Dropped counts per reason.
    pub fn counts(&self) -> BTreeMap<DropReason, usize> {
        let mut counts = BTreeMap::new();
        for dropped in &self.dropped {
            *counts.entry(dropped.reason).or_insert(0) += 1;
        }
        counts
    }
}

/// A document that passed the thresholds, waiting for deduplication.
struct Candidate {
    id: String,
    title: String,
    url: String,
    quality: f64,
    words: usize,
    exact: String,
    signature: Signature,
}

/// Runs the filter over every stored document.
pub async fn run(store: &dyn DocumentStore, args: &FilterArgs, progress: &ProgressBar) -> anyhow::Result<DocumentSet> {
    if !(0.0..=1.0).contains(&args.min_quality) || !(0.0..=1.0).contains(&args.near_duplicate) {
        anyhow::bail!("--min-quality and --near-duplicate are between 0 and 1");
    }
    let mut dropped = Vec::new();
    let mut candidates = Vec::new();
    let mut input = String::new();
    let mut total = 0u64;
    let mut documents = store.stream(&DocumentFilter::default());
    while let Some(document) = documents.next().await {
        let document = document?;
        total += 1;
        progress.inc(1);
        input.push_str(&document.id);
        input.push_str(&document.content_hash);
        // A new score (the judge's) changes what is kept, so it is part of the input.
        if let Some(q) = &document.quality {
            input.push_str(&format!("{}{}{}", q.score, q.scorer, q.version));
        }
        let words = word_count(&document.content);
        let (quality, why) = match &document.quality {
            Some(q) => (
                q.score,
                q.reason
                    .as_ref()
                    .filter(|_| q.scorer != score::SCORER)
                    .map(|reason| format!(" ({}: {reason})", q.scorer))
                    .unwrap_or_default(),
            ),
            None => (score::score(&document.title, &document.content).score, String::new()),
        };
        let drop = |reason, detail: String| Dropped {
            id: document.id.clone(),
            title: document.title.clone(),
            url: document.url.clone(),
            reason,
            detail,
        };
        if words < args.min_words {
            dropped.push(drop(
                DropReason::TooShort,
                format!("{words} words < {}", args.min_words),
            ));
        } else if words > args.max_words {
            dropped.push(drop(DropReason::TooLong, format!("{words} words > {}", args.max_words)));
        } else if quality < args.min_quality {
            dropped.push(drop(
                DropReason::LowQuality,
                format!("quality {quality:.3} < {}{why}", args.min_quality),
            ));
        } else {
            candidates.push(Candidate {
                exact: dedup::exact_key(&document.content),
                signature: dedup::signature(&document.content),
                id: document.id,
                title: document.title,
                url: document.url,
                quality,
                words,
            });
        }
    }

    // Best first, so the one kept among duplicates is the best one.
    candidates.sort_by(|a, b| {
        b.quality
            .total_cmp(&a.quality)
            .then(b.words.cmp(&a.words))
            .then(a.id.cmp(&b.id))
    });
    let mut exact: HashMap<String, String> = HashMap::new();
    let mut near = NearDuplicateIndex::default();
    let mut kept = Vec::new();
    for candidate in candidates {
        let drop = |reason, detail| Dropped {
            id: candidate.id.clone(),
            title: candidate.title.clone(),
            url: candidate.url.clone(),
            reason,
            detail,
        };
        if let Some(original) = exact.get(&candidate.exact) {
            dropped.push(drop(DropReason::ExactDuplicate, format!("same text as {original}")));
            continue;
        }
        if let Some((original, similarity)) = near.find(&candidate.signature, args.near_duplicate) {
            dropped.push(drop(
                DropReason::NearDuplicate,
                format!("{similarity:.2} similar to {original}"),
            ));
            continue;
        }
        exact.insert(candidate.exact, candidate.id.clone());
        near.insert(candidate.id.clone(), candidate.signature);
        kept.push(candidate.id);
    }
    kept.sort();
    dropped.sort_by(|a, b| a.reason.cmp(&b.reason).then(a.id.cmp(&b.id)));
    Ok(DocumentSet {
        hash: sha256_hex(kept.join("\n")),
        ids: kept,
        total,
        dropped,
        config: serde_json::to_value(args)?,
        input_hash: sha256_hex(input),
    })
}

/// The document set of the latest successful filter step, if there was one.
pub async fn latest(registry: &Registry, artifacts: &ArtifactStore) -> anyhow::Result<Option<DocumentSet>> {
    let Some(step) = registry.latest_step(STEP).await? else {
        return Ok(None);
    };
    let Some(hash) = step.output_hash else {
        anyhow::bail!(
            "the filter step of run {} recorded no output; run `feature-pipeline filter` again",
            step.run_id
        );
    };
    let bytes = artifacts.get(&hash).await?;
    let set = serde_json::from_slice(&bytes).map_err(|err| {
        anyhow::anyhow!("document set {hash} is not readable ({err}); run `feature-pipeline filter` again")
    })?;
    Ok(Some(set))
}
