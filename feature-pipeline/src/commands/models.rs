//! `feature-pipeline models register|list|promote|rollback|export|export-hf`: model versions in the
//! registry.
//!
//! Registering stores the model in the artifact store — a GGUF file by its sha256, an HF-layout
//! directory as a tree of files under a manifest (`artifacts/tree.rs`) — and records a model
//! version with its lineage; `--promote` points the `production` alias at it, which is how the
//! inference service learns what to serve. Registering the same file again returns its version.

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::registry::{
    AliasKind, HF_TREE_FORMAT, MODEL_FORMAT_GGUF, MODEL_FORMAT_HF, MODEL_PRODUCTION, NewModelVersion,
};
use engram_shared::storage::Storage;
use serde_json::json;

use crate::config::{ExportHfArgs, ExportModelArgs, ImportAdapterArgs, ModelsCommand, RegisterModelArgs};

/// Runs `models`.
pub async fn run(config: &StorageConfig, command: &ModelsCommand) -> Result<()> {
    let storage = Storage::open(config).await?;
    match command {
        ModelsCommand::Register(args) => register(&storage, args).await,
        ModelsCommand::List(args) => list(&storage, args.json).await,
        ModelsCommand::Promote(args) => promote(&storage, &args.version).await,
        ModelsCommand::Rollback => rollback(&storage).await,
        ModelsCommand::Export(args) => export(&storage, args).await,
        ModelsCommand::ImportAdapter(args) => import_adapter(&storage, config.home(), args).await,
        ModelsCommand::ExportHf(args) => export_hf(args).await,
    }
}

async fn export_hf(args: &ExportHfArgs) -> Result<()> {
    let (gguf, dir) = (args.gguf.clone(), args.dir.clone());
    tokio::task::spawn_blocking(move || engram_shared::generation::hf::export_gguf(&gguf, &dir))
        .await?
        .with_context(|| format!("cannot export {}", args.gguf.display()))?;
    println!(
        "wrote {} (HF layout, f32); register it with `feature-pipeline models register {}`",
        args.dir.display(),
        args.dir.display()
    );
    Ok(())
}

pub async fn register(storage: &Storage, args: &RegisterModelArgs) -> Result<()> {
    let path = &args.path;
    let format = if path.is_dir() {
        MODEL_FORMAT_HF
    } else {
        match path.extension().and_then(|e| e.to_str()) {
            Some("gguf") => MODEL_FORMAT_GGUF,
            _ => anyhow::bail!(
                "{} is neither a .gguf file nor a directory: register a llama-family GGUF (scripts/fetch-models.sh fetches SmolLM2) or an HF-layout model directory",
                path.display()
            ),
        }
    };
    // Refuse what the service could not load, before anything is stored.
    let check = path.clone();
    tokio::task::spawn_blocking(move || {
        engram_shared::generation::Generator::load(&check, engram_shared::generation::GeneratorOptions::default())
    })
    .await?
    .with_context(|| format!("{} cannot be served", path.display()))?;
    let hash = if format == MODEL_FORMAT_HF {
        storage.artifacts.put_dir(HF_TREE_FORMAT, path).await?
    } else {
        storage.artifacts.put_file(path).await?
    };
    let existing = storage
        .registry
        .models()
        .await?
        .into_iter()
        .find(|m| m.spec.artifact_hash == hash);
    let version = match existing {
        Some(model) => {
            println!("model already registered as version {}", model.version);
            model.version
        }
        None => {
            let name = args
                .name
                .clone()
                .unwrap_or_else(|| path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string());
            let registered = storage
                .registry
                .register_model(NewModelVersion {
                    run_id: None,
                    name: name.clone(),
                    format: format.to_string(),
                    artifact_hash: hash.clone(),
                    dataset_version: None,
                    lineage: json!({ "base": name, "note": "base, not fine-tuned", "source_file": path.display().to_string() }),
                })
                .await?;
            println!(
                "registered model version {} ({name}, sha256 {})",
                registered.version,
                &hash[..12]
            );
            registered.version
        }
    };
    if args.promote {
        make_production(storage, version).await?;
    }
    Ok(())
}

/// Points `production` at `version` (the service picks it up on its next reload) and says so.
pub async fn make_production(storage: &Storage, version: i64) -> Result<()> {
    storage
        .registry
        .set_alias(AliasKind::Model, MODEL_PRODUCTION, version)
        .await?;
    println!("model version {version} is now {MODEL_PRODUCTION}");
    Ok(())
}

/// A model version number from `3`, `v3` or `production`.
pub async fn resolve_version(storage: &Storage, text: &str) -> Result<i64> {
    if text == MODEL_PRODUCTION {
        return storage
            .registry
            .alias(AliasKind::Model, MODEL_PRODUCTION)
            .await?
            .context("no model is in production yet");
    }
    let version: i64 = text.trim_start_matches('v').parse().with_context(|| {
        format!("{text:?} is not a model version: give a number (see `feature-pipeline models list`)")
    })?;
    anyhow::ensure!(
        storage.registry.model(version).await?.is_some(),
        "model version {version} is not registered (see `feature-pipeline models list`)"
    );
    Ok(version)
}

async fn promote(storage: &Storage, version: &str) -> Result<()> {
    make_production(storage, resolve_version(storage, version).await?).await
}

async fn rollback(storage: &Storage) -> Result<()> {
    let current = storage
        .registry
        .alias(AliasKind::Model, MODEL_PRODUCTION)
        .await?
        .context("no model is in production: nothing to roll back")?;
    let history = storage
        .registry
        .alias_history(AliasKind::Model, MODEL_PRODUCTION)
        .await?;
    // The move before the one that set the current version.
    let last = history.iter().rposition(|&v| v == current);
    let previous = last
        .and_then(|i| history[..i].iter().rev().find(|&&v| v != current))
        .copied()
        .context("production has named no other version: nothing to roll back to")?;
    storage
        .registry
        .set_alias(AliasKind::Model, MODEL_PRODUCTION, previous)
        .await?;
    println!("{MODEL_PRODUCTION} rolled back from model version {current} to {previous}");
    Ok(())
}

async fn export(storage: &Storage, args: &ExportModelArgs) -> Result<()> {
    let version = resolve_version(storage, &args.version).await?;
    let model = storage
        .registry
        .model(version)
        .await?
        .with_context(|| format!("model version {version} is not registered"))?;
    let staged = engram_shared::staged_dir::StagedDir::new(&args.dir)?;
    let artifacts = &storage.artifacts;
    if model.spec.format == MODEL_FORMAT_HF {
        artifacts
            .get_tree(&model.spec.artifact_hash, HF_TREE_FORMAT, &staged.path().join("hf"))
            .await?;
    } else {
        artifacts
            .get_to_file(&model.spec.artifact_hash, &staged.path().join("model.gguf"))
            .await?;
    }
    let outputs = &model.spec.lineage["outputs"];
    let trees = [
        ("hf", HF_TREE_FORMAT),
        ("adapter", super::train::ADAPTER_TREE_FORMAT),
        ("report", super::train::REPORT_TREE_FORMAT),
    ];
    for (name, format) in trees {
        let target = staged.path().join(name);
        if let Some(hash) = outputs[name].as_str()
            && !target.exists()
        {
            artifacts.get_tree(hash, format, &target).await?;
        }
    }
    std::fs::write(
        staged.path().join("model-version.json"),
        serde_json::to_string_pretty(&model)? + "\n",
    )?;
    staged.commit()?;
    println!(
        "model version {version} ({}) written to {}",
        model.spec.name,
        args.dir.display()
    );
    Ok(())
}

async fn import_adapter(storage: &Storage, home: &std::path::Path, args: &ImportAdapterArgs) -> Result<()> {
    let base = super::train::base_model(storage, home, Some(&args.base)).await?;
    let scratch = tempfile::tempdir_in(home)?;
    let out = scratch.path().join("merged");
    let (adapter_dir, base_path, gguf, blocks) =
        (args.adapter.clone(), base.path.clone(), base.gguf, args.merged_blocks);
    let gguf_out = scratch.path().join("model.gguf");
    let (out_dir, gguf_path) = (out.clone(), gguf_out.clone());
    let config = tokio::task::spawn_blocking(move || -> Result<serde_json::Value> {
        let checkpoint = engram_shared::generation::checkpoint::Checkpoint::load(&base_path, usize::MAX)?;
        let adapter = crate::train::peft::load(&adapter_dir, &checkpoint.shape, &candle_core::Device::Cpu)?;
        let merged = crate::train::merge::merge(&checkpoint, &adapter)?;
        engram_shared::generation::hf::write(&merged, &out_dir)?;
        if gguf {
            crate::train::merge::write_gguf(&base_path, &merged, &adapter, blocks, &gguf_path)?;
        }
        Ok(serde_json::to_value(&adapter.config)?)
    })
    .await?
    .with_context(|| {
        format!(
            "cannot merge the adapter {} into {}",
            args.adapter.display(),
            base.path.display()
        )
    })?;
    let adapter_hash = storage
        .artifacts
        .put_dir(super::train::ADAPTER_TREE_FORMAT, &args.adapter)
        .await?;
    let hf_hash = storage.artifacts.put_dir(HF_TREE_FORMAT, &out).await?;
    let (format, hash) = if gguf {
        (MODEL_FORMAT_GGUF, storage.artifacts.put_file(&gguf_out).await?)
    } else {
        (MODEL_FORMAT_HF, hf_hash.clone())
    };
    let name = args.name.clone().unwrap_or_else(|| {
        args.adapter
            .file_name()
            .and_then(|s| s.to_str())
            .unwrap_or("adapter")
            .to_string()
    });
    let registered = storage
        .registry
        .register_model(NewModelVersion {
            run_id: None,
            name: name.clone(),
            format: format.to_string(),
            artifact_hash: hash,
            dataset_version: None,
            lineage: json!({
                "base": base.name,
                "base_model": base.version,
                "base_artifact": base.identity,
                "note": "a PEFT adapter imported and merged",
                "adapter_source": args.adapter.display().to_string(),
                "hyperparameters": { "lora": config },
                "outputs": { "hf": hf_hash, "adapter": adapter_hash },
            }),
        })
        .await?;
    println!(
        "registered model version {} ({name}): the adapter merged into {}",
        registered.version, base.name
    );
    Ok(())
}

async fn list(storage: &Storage, as_json: bool) -> Result<()> {
    let production = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    let models = storage.registry.models().await?;
    if as_json {
        let aliases = storage.registry.aliases(AliasKind::Model).await?;
        let list: Vec<serde_json::Value> = models
            .iter()
            .map(|m| {
                let names: Vec<&str> = aliases
                    .iter()
                    .filter(|(_, v)| *v == m.version)
                    .map(|(n, _)| n.as_str())
                    .collect();
                json!({
                    "version": m.version,
                    "name": m.spec.name,
                    "aliases": names,
                    "format": m.spec.format,
                    "artifact_hash": m.spec.artifact_hash,
                    "created_at": m.created_at,
                    "run_id": m.spec.run_id,
                    "dataset_version": m.spec.dataset_version,
                    "lineage": {
                        "base_model": m.spec.lineage.get("base_model").cloned().unwrap_or(serde_json::Value::Null),
                        "dataset_version": m.spec.dataset_version,
                        "details": m.spec.lineage,
                    },
                    "metrics": m.metrics,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    println!(
        "{:>8}  {:<10} {:<32} {:<8} {:<12} {:>7} {:>9}  base",
        "version", "alias", "name", "format", "sha256", "dataset", "ROUGE-L"
    );
    for model in &models {
        let rouge = model.metrics["test_rouge_l"]
            .as_f64()
            .map_or("-".to_string(), |r| format!("{r:.4}"));
        println!(
            "{:>8}  {:<10} {:<32} {:<8} {:<12} {:>7} {:>9}  {}",
            format!("v{}", model.version),
            if Some(model.version) == production {
                MODEL_PRODUCTION
            } else {
                ""
            },
            model.spec.name,
            model.spec.format,
            &model.spec.artifact_hash[..12],
            model.spec.dataset_version.map_or("-".to_string(), |d| format!("v{d}")),
            rouge,
            model.spec.lineage["base_model"]
                .as_i64()
                .map_or("-".to_string(), |b| format!("v{b}")),
        );
    }
    if models.is_empty() {
        println!(
            "(no model versions: `feature-pipeline models register models/SmolLM2-135M-Instruct.Q4_1.gguf --promote`)"
        );
    }
    Ok(())
}
