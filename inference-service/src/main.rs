//! inference-service: engram's online half, up 24/7.
//!
//! It serves the model promoted in the registry and retrieves from the live vector index; it never
//! calls the pipeline. Layout, as in text-embeddings-inference: `http/` is the front, `engine` owns
//! the model threads, `rag` builds prompts from retrieved chunks, `state` loads what is served.

mod config;
mod engine;
mod http;
mod metrics;
mod rag;
mod reload;
mod state;
mod stores;
mod telemetry;

use std::sync::{Arc, RwLock};

use anyhow::{Context, Result};
use engram_shared::embedding::{Embedder, EmbedderOptions};
use engram_shared::registry::{AliasKind, INDEX_LIVE, MODEL_PRODUCTION};
use engram_shared::storage::{self, Storage};

use crate::config::Config;
use crate::engine::Engine;
use crate::http::AppState;
use crate::state::Served;

fn main() -> std::process::ExitCode {
    let config: Config = engram_shared::config::parse_args();
    // Before the runtime: the trace exporter's HTTP client blocks (see telemetry).
    let telemetry = match telemetry::init(&config.log, config.log_format) {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("error: {err:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("start the async runtime")
        .and_then(|runtime| {
            runtime.block_on(async {
                if config.check {
                    check(&config).await
                } else {
                    serve(&config).await
                }
            })
        });
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `--check`: opens the registry and the vector index and reports what the service would serve.
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
    println!("would listen on {}", config.addr);
    config.check_exposure()
}

/// Loads what is served; a missing part is reported as not-ready, not as a start-up failure.
async fn load(config: &Config, storage: &Storage, embedder: &Embedder) -> Served {
    let model = match state::load_model(storage, config.model.as_ref(), &config.storage.home).await {
        Ok(Some(model)) => Ok(Arc::new(model)),
        Ok(None) => Err("no model is promoted: run `feature-pipeline models register models/SmolLM2-135M-Instruct.Q4_1.gguf --promote`".to_string()),
        Err(err) => Err(format!("{err:#}")),
    };
    let index = match state::load_index(storage, embedder).await {
        Ok(Some(index)) => Ok(Arc::new(index)),
        Ok(None) => Err("no live index: run `feature-pipeline index`".to_string()),
        Err(err) => Err(format!("{err:#}")),
    };
    Served { model, index }
}

async fn serve(config: &Config) -> Result<()> {
    // Settings that can be wrong are checked before anything slow is loaded.
    config.check_exposure()?;
    let keys = match &config.api_keys {
        Some(path) => {
            let ring = Arc::new(http::auth::KeyRing::open(path)?);
            let interval = std::time::Duration::from_secs(config.api_keys_reload_secs.max(1));
            tokio::spawn(http::auth::watch(ring.clone(), interval));
            Some(ring)
        }
        None => {
            if config.allow_anonymous && !config.addr.ip().is_loopback() {
                tracing::warn!(addr = %config.addr, "serving without API keys on a network address (ENGRAM_ALLOW_ANONYMOUS)");
            }
            None
        }
    };
    let cors = http::cors(&config.cors_origins)?;
    let storage = Storage::open(&config.storage).await?;
    let dir = config.embedding_model.clone();
    let embedder = tokio::task::spawn_blocking(move || Embedder::load(&dir, EmbedderOptions::default()))
        .await?
        .with_context(|| {
            format!(
                "cannot load the embedding model from {}: run scripts/fetch-models.sh or set ENGRAM_EMBEDDING_MODEL",
                config.embedding_model.display()
            )
        })?;
    let embedder = Arc::new(embedder);
    let served = load(config, &storage, &embedder).await;
    if let Err(why) = served.ready() {
        tracing::warn!("not ready: {why}");
    }
    let metrics = Arc::new(metrics::Metrics::new().context("cannot set up the metrics")?);
    let state = AppState {
        storage,
        embedder,
        engine: Engine::start(config.engine_limits(), Some(metrics.batch_size.clone())),
        served: Arc::new(RwLock::new(Arc::new(served))),
        top_k: config.top_k,
        min_relevance: config.min_relevance,
        answer_mode: config.answer_mode,
        closeness: engram_shared::answers::closeness::Closeness {
            min: config.min_sentence_relevance,
            names: config.names_must_match,
            ..Default::default()
        },
        searches: Arc::new(tokio::sync::Semaphore::new(config.max_searches.max(1))),
        extractions: Arc::new(tokio::sync::Semaphore::new(1)),
        limits: http::Limits {
            max_completion_tokens: config.max_completion_tokens,
            max_prompt_tokens: config.max_prompt_tokens,
            request_timeout: std::time::Duration::from_secs(config.request_timeout_secs.max(1)),
        },
        metrics,
        stores: Arc::new(stores::StoreHealth::default()),
    };
    let interval = std::time::Duration::from_secs(config.reload_interval_secs.max(1));
    tokio::spawn(reload::watch(state.clone(), Arc::new(config.clone()), interval));
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("cannot listen on {} (ENGRAM_ADDR)", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "serving");
    println!("listening on http://{}", listener.local_addr()?);
    // On SIGTERM the server stops accepting and waits for in-flight requests, but only for the
    // grace period: a stuck generation must not keep a rolling update waiting forever.
    let (stopping, mut stopped) = tokio::sync::watch::channel(false);
    let server = axum::serve(listener, http::router(state, keys, cors, config.max_body_bytes)).with_graceful_shutdown(
        async move {
            shutdown().await;
            let _ = stopping.send(true);
        },
    );
    let grace = std::time::Duration::from_secs(config.shutdown_grace_secs);
    let deadline = async move {
        let _ = stopped.wait_for(|stopping| *stopping).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        result = server => {
            result?;
            tracing::info!("stopped");
        }
        () = deadline => {
            tracing::warn!(grace_secs = grace.as_secs(), "in-flight requests did not finish within the grace period; exiting");
        }
    }
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C: the server stops accepting and finishes in-flight requests.
async fn shutdown() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            signal.recv().await;
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing in-flight requests");
}
