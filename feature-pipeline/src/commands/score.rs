//! `feature-pipeline score`: recompute the heuristic quality score of stored documents, and with
//! `--judge` have the teacher judge the uncertain ones (`steps/judge.rs`).
//!
//! Extract scores every document as it stores it; this command is for after the heuristic
//! changed (a new `score::VERSION`) or with `--all` to redo every one. Scores from another scorer
//! (the LLM judge) are kept unless `--all` is given. The judge is asked about documents whose
//! heuristic score is in `--judge-band` and that its current prompt and teacher have not judged.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::documents::DocumentFilter;
use engram_shared::storage::Storage;
use futures::StreamExt;
use serde_json::json;

use crate::config::ScoreArgs;
use crate::pipeline::{Run, StepOutput};
use crate::progress;
use crate::steps::judge::{self, JudgePrompt};
use crate::steps::score;

/// Runs `score`.
pub async fn run(config: &StorageConfig, args: &ScoreArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    anyhow::ensure!(
        args.judge_band.len() == 2
            && (0.0..=1.0).contains(&args.judge_band[0])
            && (0.0..=1.0).contains(&args.judge_band[1])
            && args.judge_band[0] <= args.judge_band[1],
        "--judge-band is `low,high` with 0 <= low <= high <= 1, e.g. 0.3,0.7"
    );
    let band = (args.judge_band[0], args.judge_band[1]);
    let teacher = if args.judge {
        Some(crate::commands::dataset::teacher(&args.teacher, &storage)?)
    } else {
        None
    };
    let prompt = JudgePrompt::builtin();
    let judge_version = teacher.as_ref().map(|t| format!("{}/{}", prompt.version, t.id()));
    let settings = json!({
        "all": args.all, "scorer": score::SCORER, "version": score::VERSION,
        "judge": judge_version, "judge_band": [band.0, band.1],
    });
    let run = Run::start(&storage.registry, "score", &settings).await?;
    let result = run
        .step("score", &settings, "", async {
            let total = storage.documents.count(&DocumentFilter::default()).await?;
            let bar = progress::bar(total, "score");
            let (mut rescored, mut kept, mut judged, mut unreadable) = (0u64, 0u64, 0u64, 0u64);
            let mut ratings = [0u64; 5];
            let mut verdicts = Vec::new();
            let mut documents = storage.documents.stream(&DocumentFilter::default());
            while let Some(document) = documents.next().await {
                let document = document?;
                bar.inc(1);
                let current = document
                    .quality
                    .as_ref()
                    .is_some_and(|q| q.scorer != score::SCORER || q.version == score::VERSION);
                let rescore = !current || args.all;
                if !rescore && teacher.is_none() {
                    kept += 1;
                    continue;
                }
                let heuristic = score::score(&document.title, &document.content).quality();
                if rescore {
                    storage.documents.set_quality(&document.id, &heuristic).await?;
                    rescored += 1;
                } else {
                    kept += 1;
                }
                let (Some(teacher), Some(version)) = (&teacher, &judge_version) else {
                    continue;
                };
                let judged_now = document
                    .quality
                    .as_ref()
                    .is_some_and(|q| q.scorer == judge::SCORER && &q.version == version);
                if !judge::uncertain(heuristic.score, band) || (judged_now && !args.all) {
                    continue;
                }
                bar.set_message(document.title.clone());
                let reply = teacher.ask(&prompt.request(&document.title, &document.content)).await?;
                match judge::parse_verdict(&reply.text) {
                    Some(verdict) => {
                        let quality = verdict.quality(&prompt.version, teacher.id());
                        storage.documents.set_quality(&document.id, &quality).await?;
                        ratings[usize::from(verdict.rating - 1)] += 1;
                        judged += 1;
                        verdicts.push(json!({
                            "title": document.title, "url": document.url, "heuristic": heuristic.score,
                            "rating": verdict.rating, "score": quality.score, "reason": verdict.reason,
                        }));
                    }
                    None => {
                        unreadable += 1;
                        tracing::warn!(title = %document.title, answer = %reply.text, "the judge gave no rating 1-5: the heuristic score stays");
                    }
                }
            }
            bar.finish_and_clear();
            let spent = teacher.as_ref().map(|t| t.spent());
            Ok(StepOutput {
                value: (rescored, kept, judged, unreadable),
                hash: None,
                detail: json!({
                    "rescored": rescored, "kept": kept, "judged": judged, "unreadable": unreadable,
                    "ratings_1_to_5": ratings, "verdicts": verdicts, "teacher": spent,
                }),
            })
        })
        .await;
    let result = result.map(|(rescored, kept, judged, unreadable)| {
        println!(
            "score: {rescored} documents scored by {} v{}, {kept} already current",
            score::SCORER,
            score::VERSION
        );
        if let Some(version) = &judge_version {
            println!(
                "judge ({version}): {judged} documents with a heuristic score in {:.2}..={:.2} rated, {unreadable} answers without a rating (heuristic kept)",
                band.0, band.1
            );
        }
    });
    run.finish(result).await
}
