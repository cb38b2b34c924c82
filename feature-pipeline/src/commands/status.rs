//! `feature-pipeline status`: opens every store and reports what it holds.
//!
//! It is also the quickest check that a configuration works: a wrong or unreachable backend fails
//! here, before any work, with the variable to fix.

use anyhow::Result;
use engram_shared::config::StorageConfig;
use engram_shared::documents::DocumentFilter;
use engram_shared::registry::{AliasKind, INDEX_LIVE, MODEL_PRODUCTION};
use engram_shared::storage::Storage;
use serde_json::json;

use crate::config::StatusArgs;
use crate::steps::filter;

/// Runs `status`.
pub async fn run(config: &StorageConfig, args: &StatusArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let documents = storage.documents.count(&DocumentFilter::default()).await?;
    let index_versions = storage.vectors.versions().await?;
    let index_alias = storage.vectors.alias().await?;
    let runs = storage.registry.runs(1).await?;
    let datasets = storage.registry.datasets().await?.len();
    let models = storage.registry.models().await?.len();
    let production = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    let live = storage.registry.alias(AliasKind::Index, INDEX_LIVE).await?;
    let document_set = filter::latest(&storage.registry, &storage.artifacts).await?;

    let backends: serde_json::Map<_, _> = storage
        .describe()
        .into_iter()
        .map(|(store, backend)| (store.to_string(), json!(backend)))
        .collect();
    let report = json!({
        "home": config.home,
        "backends": backends,
        "documents": documents,
        "document_set": document_set.as_ref().map(|set| json!({ "hash": set.hash, "kept": set.ids.len(), "total": set.total })),
        "index_versions": index_versions,
        "index_alias": index_alias,
        "registry_live_index": live,
        "latest_run": runs.first().map(|r| json!({ "id": r.id, "status": r.status, "started_at": r.started_at })),
        "dataset_versions": datasets,
        "model_versions": models,
        "production_model": production,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("engram storage (home {})", config.home.display());
    for (store, backend) in storage.describe() {
        println!("  {store:<10} {backend}");
    }
    println!("documents         {documents}");
    match &document_set {
        Some(set) => println!(
            "document set      {} kept of {} (filter output {})",
            set.ids.len(),
            set.total,
            &set.hash[..12]
        ),
        None => println!("document set      none (run `feature-pipeline filter`)"),
    }
    let versions: Vec<String> = index_versions.iter().map(|v| format!("v{v}")).collect();
    println!(
        "index versions    {} (live: {})",
        if versions.is_empty() {
            "none".into()
        } else {
            versions.join(", ")
        },
        index_alias.map_or("none".into(), |v| format!("v{v}"))
    );
    println!("dataset versions  {datasets}");
    println!(
        "model versions    {models} (production: {})",
        production.map_or("none".into(), |v| format!("v{v}"))
    );
    match runs.first() {
        Some(run) => println!("latest run        {} {} at {}", run.id, run.status, run.started_at),
        None => println!("latest run        none"),
    }
    Ok(())
}
