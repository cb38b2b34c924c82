//! `feature-pipeline models register|list|export-hf`: model versions in the registry.
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

use crate::config::{ExportHfArgs, ModelsCommand, RegisterModelArgs};

/// Runs `models`.
pub async fn run(config: &StorageConfig, command: &ModelsCommand) -> Result<()> {
    let storage = Storage::open(config).await?;
    match command {
        ModelsCommand::Register(args) => register(&storage, args).await,
        ModelsCommand::List => list(&storage).await,
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
        storage
            .registry
            .set_alias(AliasKind::Model, MODEL_PRODUCTION, version)
            .await?;
        println!("model version {version} is now {MODEL_PRODUCTION}");
    }
    Ok(())
}

async fn list(storage: &Storage) -> Result<()> {
    let production = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    let models = storage.registry.models().await?;
    println!(
        "{:>8}  {:<10} {:<32} {:<8} sha256",
        "version", "alias", "name", "format"
    );
    for model in &models {
        println!(
            "{:>8}  {:<10} {:<32} {:<8} {}",
            format!("v{}", model.version),
            if Some(model.version) == production {
                MODEL_PRODUCTION
            } else {
                ""
            },
            model.spec.name,
            model.spec.format,
            &model.spec.artifact_hash[..12]
        );
    }
    if models.is_empty() {
        println!(
            "(no model versions: `feature-pipeline models register models/SmolLM2-135M-Instruct.Q4_1.gguf --promote`)"
        );
    }
    Ok(())
}
