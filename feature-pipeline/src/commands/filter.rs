//! `feature-pipeline filter`: choose the documents later stages read, and say what was dropped.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::documents::DocumentFilter;
use engram_shared::storage::Storage;
use serde_json::json;

use crate::config::FilterArgs;
use crate::pipeline::{Run, StepOutput, fingerprint};
use crate::progress;
use crate::steps::filter::{self, STEP};

/// Runs `filter`.
pub async fn run(config: &StorageConfig, args: &FilterArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let run = Run::start(&storage.registry, "filter", args).await?;
    let result = stage(&storage, &run, args, false).await;
    run.finish(result).await
}

/// The filter step inside `run`: with `use_cache`, skipped when the stored documents (ids, content
/// and quality) are what an earlier filter with the same thresholds read; its set stays the latest.
pub async fn stage(storage: &Storage, run: &Run<'_>, args: &FilterArgs, use_cache: bool) -> Result<()> {
    let input_hash = fingerprint(storage.documents.as_ref()).await?;
    if run.cached(STEP, args, &input_hash, use_cache).await?.is_some() {
        return Ok(());
    }
    let result = run
        .step(STEP, args, &input_hash, async {
            let total = storage.documents.count(&DocumentFilter::default()).await?;
            let bar = progress::bar(total, "filter");
            let set = filter::run(storage.documents.as_ref(), args, &bar).await?;
            bar.finish_and_clear();
            // The set is durable before the step is recorded as done.
            let hash = storage.artifacts.put(serde_json::to_vec(&set)?).await?;
            let detail = json!({
                "total": set.total,
                "kept": set.ids.len(),
                "dropped": set.counts(),
                "document_set_hash": set.hash,
                "input_hash": set.input_hash,
            });
            Ok(StepOutput {
                value: (set, hash.clone()),
                hash: Some(hash),
                detail,
            })
        })
        .await;
    result.map(|(set, hash)| {
        if args.json {
            for dropped in &set.dropped {
                println!("{}", serde_json::to_string(dropped).unwrap_or_default());
            }
        }
        eprintln!(
            "filter: kept {} of {} documents (document set {}, artifact {hash})",
            set.ids.len(),
            set.total,
            &set.hash[..12]
        );
        for (reason, count) in set.counts() {
            eprintln!("  dropped {count:>5} {}", json!(reason).as_str().unwrap_or_default());
        }
        if !args.json {
            for dropped in &set.dropped {
                eprintln!("    - {:?} ({}) {}", dropped.title, dropped.url, dropped.detail);
            }
        }
    })
}
