//! `feature-pipeline score`: recompute the heuristic quality score of stored documents.
//!
//! Extract scores every document as it stores it; this command is for after the heuristic
//! changed (a new `score::VERSION`) or with `--all` to redo every one. Scores from another scorer
//! (an LLM judge) are kept unless `--all` is given.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::documents::DocumentFilter;
use engram_shared::storage::Storage;
use futures::StreamExt;
use serde_json::json;

use crate::config::ScoreArgs;
use crate::pipeline::{Run, StepOutput};
use crate::progress;
use crate::steps::score;

/// Runs `score`.
pub async fn run(config: &StorageConfig, args: &ScoreArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let settings = json!({ "all": args.all, "scorer": score::SCORER, "version": score::VERSION });
    let run = Run::start(&storage.registry, "score", &settings).await?;
    let result = run
        .step("score", &settings, "", async {
            let total = storage.documents.count(&DocumentFilter::default()).await?;
            let bar = progress::bar(total, "score");
            let (mut rescored, mut kept) = (0u64, 0u64);
            let mut documents = storage.documents.stream(&DocumentFilter::default());
            while let Some(document) = documents.next().await {
                let document = document?;
                bar.inc(1);
                let current = document
                    .quality
                    .as_ref()
                    .is_some_and(|q| q.scorer != score::SCORER || q.version == score::VERSION);
                if current && !args.all {
                    kept += 1;
                    continue;
                }
                let quality = score::score(&document.title, &document.content).quality();
                storage.documents.set_quality(&document.id, &quality).await?;
                rescored += 1;
            }
            bar.finish_and_clear();
            Ok(StepOutput {
                value: (rescored, kept),
                hash: None,
                detail: json!({ "rescored": rescored, "kept": kept }),
            })
        })
        .await;
    let result = result.map(|(rescored, kept)| {
        println!(
            "score: {rescored} documents scored by {} v{}, {kept} already current",
            score::SCORER,
            score::VERSION
        );
    });
    run.finish(result).await
}
