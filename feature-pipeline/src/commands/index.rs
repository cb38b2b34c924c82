//! `feature-pipeline index` (build or roll back) and `feature-pipeline indexes` (list).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::embedding::{Embedder, EmbedderOptions};
use engram_shared::registry::{AliasKind, INDEX_LIVE};
use engram_shared::storage::Storage;
use serde_json::json;

use crate::config::{IndexArgs, IndexesArgs};
use crate::pipeline::{Run, StepOutput};
use crate::progress;
use crate::steps::chunk::Chunker;
use crate::steps::{filter, index};

/// Loads the embedding model, saying what to do when it is missing.
pub fn load_embedder(dir: &Path) -> Result<Arc<Embedder>> {
    let embedder = Embedder::load(dir, EmbedderOptions::default()).with_context(|| {
        format!(
            "cannot load the embedding model from {}: run scripts/fetch-models.sh, or point \
             ENGRAM_EMBEDDING_MODEL (--embedding-model) at a BERT-family model directory",
            dir.display()
        )
    })?;
    Ok(Arc::new(embedder))
}

/// Runs `index`.
pub async fn run(config: &StorageConfig, args: &IndexArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    if args.rollback {
        let (from, to) = index::rollback(&storage, args.to).await?;
        println!(
            "index: live version moved from {} to v{to}",
            from.map_or("none".into(), |v| format!("v{v}"))
        );
        return Ok(());
    }
    let set = filter::latest(&storage.registry, &storage.artifacts)
        .await?
        .context("no document set yet: run `feature-pipeline filter` first (after extract)")?;
    let embedder = load_embedder(&args.embedding.embedding_model)?;
    let chunker = Arc::new(Chunker::new(embedder.clone(), args.chunk_tokens, args.chunk_overlap)?);
    let settings = json!({
        "embedding_model": embedder.model_id(),
        "chunker": chunker.settings(),
        "keep": args.keep,
    });
    let run = Run::start(&storage.registry, "index", &settings).await?;
    let result = run
        .step("index", &settings, &set.hash, async {
            let bar = progress::bar(0, "index");
            let built = index::build(
                &storage,
                embedder.clone(),
                chunker.clone(),
                &set,
                &run.id,
                args.keep,
                &bar,
            )
            .await?;
            bar.finish_and_clear();
            let mut detail = serde_json::to_value(&built.manifest)?;
            detail["version"] = json!(built.version);
            detail["dropped"] = json!(built.dropped);
            detail["seconds"] = json!({
                "total": built.timings.total.as_secs_f64(),
                "chunking": built.timings.chunking.as_secs_f64(),
                "embedding": built.timings.embedding.as_secs_f64(),
                "storage": built.timings.storage.as_secs_f64(),
            });
            let hash = engram_shared::hashing::sha256_hex(serde_json::to_vec(&built.manifest)?);
            Ok(StepOutput {
                value: built,
                hash: Some(hash),
                detail,
            })
        })
        .await;
    let result = result.map(|built| {
        let counts = &built.manifest.counts;
        let t = &built.timings;
        let total = t.total.as_secs_f64();
        println!(
            "index: v{} is live: {} chunks of {} documents ({} embedded, {} reused, {} truncated)",
            built.version, counts.chunks, counts.documents, counts.embedded, counts.reused, counts.truncated
        );
        println!(
            "throughput: {:.1} chunks/s end to end; time {:.2} s = chunking {:.2} s + embedding {:.2} s ({:.0}%) + storage {:.2} s",
            counts.chunks as f64 / total.max(1e-9),
            total,
            t.chunking.as_secs_f64(),
            t.embedding.as_secs_f64(),
            100.0 * t.embedding.as_secs_f64() / total.max(1e-9),
            t.storage.as_secs_f64(),
        );
        if counts.embedded > 0 {
            println!(
                "pipeline overhead over pure embedding: {:.0}%",
                100.0 * (total - t.embedding.as_secs_f64()) / t.embedding.as_secs_f64().max(1e-9)
            );
        }
        if !built.dropped.is_empty() {
            let dropped: Vec<String> = built.dropped.iter().map(|v| format!("v{v}")).collect();
            println!("dropped old versions: {}", dropped.join(", "));
        }
    });
    run.finish(result).await
}

/// Runs `indexes`.
pub async fn list(config: &StorageConfig, args: &IndexesArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let versions = storage.registry.index_versions().await?;
    let live = storage.registry.alias(AliasKind::Index, INDEX_LIVE).await?;
    let physical = storage.vectors.alias().await?.map(|v| v as i64);
    if args.json {
        let rows: Vec<_> = versions
            .iter()
            .map(|v| {
                json!({
                    "version": v.version,
                    "status": v.status,
                    "live": Some(v.version) == physical,
                    "created_at": v.created_at,
                    "embedding_model": v.spec.embedding_model,
                    "chunks": v.spec.manifest["counts"]["chunks"],
                    "documents": v.spec.manifest["counts"]["documents"],
                    "run_id": v.spec.run_id,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({ "live": physical, "versions": rows }))?
        );
        return Ok(());
    }
    if live != physical {
        println!(
            "note: the registry says v{} is live but the vector index alias points at {}; \
             the vector index alias is what readers use",
            live.unwrap_or_default(),
            physical.map_or("nothing".into(), |v| format!("v{v}"))
        );
    }
    println!(
        "{:>8}  {:<9} {:<5} {:>7} {:>9}  {:<24} created",
        "version", "status", "live", "chunks", "documents", "embedding model"
    );
    for v in &versions {
        println!(
            "{:>8}  {:<9} {:<5} {:>7} {:>9}  {:<24} {}",
            format!("v{}", v.version),
            v.status.to_string(),
            if Some(v.version) == physical { "*" } else { "" },
            v.spec.manifest["counts"]["chunks"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            v.spec.manifest["counts"]["documents"]
                .as_u64()
                .map_or("-".into(), |n| n.to_string()),
            v.spec.embedding_model,
            v.created_at,
        );
    }
    if versions.is_empty() {
        println!("(no index versions yet: run `feature-pipeline index`)");
    }
    Ok(())
}
