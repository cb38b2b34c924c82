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
use crate::steps::{filter, index, shard};

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
    let settings = json!({ "command": "index" });
    let run = Run::start(&storage.registry, "index", &settings).await?;
    let result = stage(&storage, &run, args, false).await;
    run.finish(result).await
}

/// The index step inside `run`: with `use_cache`, skipped when an index was built from the same
/// document set with the same settings (and that version is still ready).
pub async fn stage(storage: &Storage, run: &Run<'_>, args: &IndexArgs, use_cache: bool) -> Result<()> {
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
    let input_hash = engram_shared::hashing::sha256_hex(format!("{}:{}", set.hash, set.input_hash));
    let chunker_settings = serde_json::to_value(chunker.settings())?;
    if let Some(shard) = args.shard {
        let config = shard::config(shard.index, shard.count, embedder.model_id(), &chunker_settings);
        let bar = progress::bar(0, "shard");
        let (chunks, hash) = shard::record(
            storage,
            run,
            &config,
            &input_hash,
            shard::embed(storage, embedder.clone(), &chunker, &set, shard, &bar),
        )
        .await?;
        bar.finish_and_clear();
        println!(
            "index: shard {}/{} embedded {chunks} chunks (artifact {}); when every shard is done, run \
             `feature-pipeline index --merge-shards {}` once",
            shard.index,
            shard.count,
            &hash[..12],
            shard.count
        );
        return Ok(());
    }
    let precomputed = match args.merge_shards {
        Some(count) => {
            let vectors = shard::collect(
                &storage.registry,
                storage,
                count,
                embedder.model_id(),
                &chunker_settings,
                &input_hash,
                std::time::Duration::from_secs(args.wait_secs),
            )
            .await?;
            println!(
                "index: vectors of {} chunks in {} documents from {count} shards",
                vectors.chunks(),
                vectors.documents()
            );
            vectors
        }
        None => shard::Precomputed::default(),
    };
    if let Some(record) = run.cached("index", &settings, &input_hash, use_cache).await? {
        let version = record.detail["version"].as_i64().unwrap_or_default();
        let live = storage.registry.alias(AliasKind::Index, INDEX_LIVE).await?;
        if live == Some(version) {
            println!("index: v{version} is live and current");
            return Ok(());
        }
        eprintln!("index: the cached build v{version} is no longer live; building again");
    }
    let result = run
        .step("index", &settings, &input_hash, async {
            let bar = progress::bar(0, "index");
            let built = index::build(
                storage,
                embedder.clone(),
                chunker.clone(),
                &set,
                &run.id,
                args.keep,
                &precomputed,
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
    result.map(|built| {
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
    })
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
