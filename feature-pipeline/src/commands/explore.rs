//! `feature-pipeline explore`: the corpus report, as HTML with charts and as a terminal summary.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::documents::DocumentFilter;
use engram_shared::storage::Storage;
use serde_json::json;

use crate::config::ExploreArgs;
use crate::pipeline::{Run, StepOutput, fingerprint};
use crate::steps::explore::{self, percentiles};
use crate::{progress, report};

/// Runs `explore`.
pub async fn run(config: &StorageConfig, args: &ExploreArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let settings = json!({ "out": args.out });
    let run = Run::start(&storage.registry, "explore", &settings).await?;
    let result = stage(&storage, &run, args, &config.home, false).await;
    run.finish(result).await
}

/// The explore step inside `run`: with `use_cache`, skipped when the documents and the latest
/// crawl report are what an earlier report was made from.
pub async fn stage(
    storage: &Storage,
    run: &Run<'_>,
    args: &ExploreArgs,
    home: &std::path::Path,
    use_cache: bool,
) -> Result<()> {
    let settings = json!({ "out": args.out });
    let crawl = storage
        .registry
        .latest_step(explore::CRAWL_STEP)
        .await?
        .and_then(|s| s.output_hash);
    let input_hash = engram_shared::hashing::sha256_hex(format!(
        "{}:{}",
        fingerprint(storage.documents.as_ref()).await?,
        crawl.unwrap_or_default()
    ));
    if let Some(record) = run.cached("explore", &settings, &input_hash, use_cache).await? {
        println!(
            "explore: the report of run {} still holds: {}",
            record.run_id, record.detail["report"]
        );
        return Ok(());
    }
    let dir = args.out.clone().unwrap_or_else(|| home.join("reports").join(&run.id));
    let result = run
        .step("explore", &settings, &input_hash, async {
            let total = storage.documents.count(&DocumentFilter::default()).await?;
            let bar = progress::bar(total, "explore");
            let exploration =
                explore::run(storage.documents.as_ref(), &storage.registry, &storage.artifacts, &bar).await?;
            bar.finish_and_clear();
            let written = {
                let (dir, exploration, run_id) = (dir.clone(), exploration.clone(), run.id.clone());
                tokio::task::spawn_blocking(move || report::write(&dir, &exploration, &run_id)).await??
            };
            let html_hash = storage.artifacts.put(std::fs::read(&written.html)?).await?;
            let mut detail = exploration.summary();
            detail["report"] = json!(written.html);
            detail["report_artifact"] = json!(html_hash);
            Ok(StepOutput {
                value: (exploration, written, html_hash.clone()),
                hash: Some(html_hash),
                detail,
            })
        })
        .await;
    result.map(|(exploration, written, html_hash)| {
        if args.json {
            let mut summary = exploration.summary();
            summary["report"] = json!(written.html);
            summary["charts"] = json!(written.charts);
            summary["report_artifact"] = json!(html_hash);
            println!("{}", serde_json::to_string_pretty(&summary).unwrap_or_default());
        } else {
            print_summary(&exploration);
            println!("report: {} (artifact {html_hash})", written.html.display());
        }
    })
}

fn print_summary(exploration: &explore::Exploration) {
    println!("documents: {}", exploration.total);
    for (source, count) in &exploration.by_source {
        println!("  {source:<8} {count}");
    }
    let words: Vec<f64> = exploration.words.iter().map(|&w| w as f64).collect();
    if let Some(p) = percentiles(&words) {
        println!(
            "words:    min {:.0}  p10 {:.0}  median {:.0}  p90 {:.0}  max {:.0}",
            p.min, p.p10, p.p50, p.p90, p.max
        );
    }
    if let Some(p) = percentiles(&exploration.quality) {
        println!(
            "quality:  min {:.2}  p10 {:.2}  median {:.2}  p90 {:.2}  max {:.2}  ({} unscored)",
            p.min, p.p10, p.p50, p.p90, p.max, exploration.unscored
        );
    }
    if !exploration.judged.is_empty() {
        println!("judged ({} documents; heuristic → judge):", exploration.judged.len());
        for judged in exploration.judged.iter().take(20) {
            println!(
                "  - {}: {:.2} → {:.2} ({})",
                judged.title, judged.heuristic, judged.score, judged.reason
            );
        }
    }
    if !exploration.top_domains.is_empty() {
        let top: Vec<String> = exploration
            .top_domains
            .iter()
            .take(5)
            .map(|(d, n)| format!("{d} ({n})"))
            .collect();
        println!("top domains: {}", top.join(", "));
    }
    if exploration.crawl_run.is_some() {
        println!(
            "latest crawl: {} fetched, {} failed",
            exploration.crawled_ok,
            exploration.failed_crawls.len()
        );
        for failure in exploration.failed_crawls.iter().take(10) {
            println!("  - {}: {}", failure.url, failure.reason.as_deref().unwrap_or(""));
        }
    }
}
