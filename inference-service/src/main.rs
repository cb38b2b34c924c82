//! inference-service: engram's online half, up 24/7.
//!
//! It serves the model promoted in the registry and retrieves from the live vector index; it never
//! calls the pipeline. This first cut opens the stores the service will read and reports what it
//! would serve; the HTTP server itself is the inference-service issue's work (see README).

mod config;

use anyhow::Result;
use clap::Parser;
use engram_shared::registry::{AliasKind, INDEX_LIVE, MODEL_PRODUCTION};
use engram_shared::storage;

use crate::config::Config;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log).unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match check(&config).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Opens the registry and the vector index and reports what the service would serve.
async fn check(config: &Config) -> Result<()> {
    let registry = storage::open_registry(&config.storage).await?;
    let vectors = storage::open_vectors(&config.storage).await?;
    let model = registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    let index = vectors.alias().await?;
    let live = registry.alias(AliasKind::Index, INDEX_LIVE).await?;
    println!("registry: {} | vector index: {}", registry.backend(), vectors.backend());
    match model {
        Some(v) => println!("production model: version {v}"),
        None => println!("production model: none (register one with `feature-pipeline models register --promote`)"),
    }
    match (index, live) {
        (Some(v), _) => println!("live index: chunks_v{v}"),
        (None, Some(v)) => println!("live index: registry names v{v} but the vector index has no alias"),
        (None, None) => println!("live index: none (build one with `feature-pipeline index`)"),
    }
    println!("would listen on {} once serving lands", config.addr);
    Ok(())
}
