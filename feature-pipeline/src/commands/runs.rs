//! `feature-pipeline runs`: what the pipeline did — each run with its status, steps and durations,
//! and which steps were skipped by the step cache.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::registry::StepRecord;
use engram_shared::storage::Storage;
use engram_shared::time::Timestamp;
use serde_json::json;

use crate::config::RunsArgs;

fn seconds(start: &Timestamp, end: Option<&Timestamp>) -> Option<f64> {
    end.map(|end| (end.timestamp_millis() - start.timestamp_millis()) as f64 / 1000.0)
}

fn step_line(step: &StepRecord) -> String {
    let took = seconds(&step.started_at, step.finished_at.as_ref()).map_or("-".into(), |s| format!("{s:.1} s"));
    let note = if let Some(from) = step.detail["cached_from"].as_str() {
        format!("skipped (cached from run {})", &from[..8.min(from.len())])
    } else if let Some(error) = &step.error {
        error.lines().next().unwrap_or_default().to_string()
    } else {
        String::new()
    };
    format!(
        "    {:<16} {:<10} {:>9}  {note}",
        step.key.name,
        step.status.to_string(),
        took
    )
}

/// Runs `runs`.
pub async fn run(config: &StorageConfig, args: &RunsArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let runs = storage.registry.runs(args.limit.max(1)).await?;
    let mut listed = Vec::new();
    for run in runs {
        let steps = storage.registry.steps(&run.id).await?;
        listed.push((run, steps));
    }
    if args.json {
        let rows: Vec<_> = listed
            .iter()
            .map(|(run, steps)| {
                json!({
                    "run": run,
                    "seconds": seconds(&run.started_at, run.finished_at.as_ref()),
                    "steps": steps.iter().map(|s| json!({
                        "step": s,
                        "seconds": seconds(&s.started_at, s.finished_at.as_ref()),
                        "cached": s.detail.get("cached_from").is_some(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    if listed.is_empty() {
        println!("(no runs yet: try `feature-pipeline run`)");
    }
    for (run, steps) in &listed {
        let took = seconds(&run.started_at, run.finished_at.as_ref()).map_or("running".into(), |s| format!("{s:.1} s"));
        println!(
            "{}  {:<10} {:<10} {:>9}  {}",
            run.started_at.format("%Y-%m-%d %H:%M:%S"),
            run.config["command"].as_str().unwrap_or("-"),
            run.status.to_string(),
            took,
            run.id
        );
        if let Some(error) = &run.error {
            println!("    error: {}", error.lines().next().unwrap_or_default());
        }
        for step in steps {
            println!("{}", step_line(step));
        }
    }
    Ok(())
}
