//! Hot reload: a newly promoted model or a newly live index is served without a restart.
//!
//! A task polls the registry's `production` alias and the vector index's alias. When either moved,
//! the new model (or index) is loaded beside the old one, a new [`Served`] snapshot is built from
//! the new part and the unchanged part, and the snapshot is swapped in one write. Requests that
//! started before keep the `Arc` of the old snapshot and finish on it; the old model is freed when
//! the last of them ends. A load that fails keeps the old snapshot and is retried next poll.

use std::sync::Arc;
use std::time::Duration;

use engram_shared::registry::{AliasKind, MODEL_PRODUCTION};

use crate::config::Config;
use crate::http::AppState;
use crate::state::{self, Served};
use crate::stores::Store;

/// What the snapshot was loaded from, to notice a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Marks {
    model: Option<i64>,
    index: Option<u64>,
}

/// Reads both aliases, recording whether each store answered.
async fn marks(state: &AppState) -> anyhow::Result<Marks> {
    let model = state.storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await;
    state.stores.record(Store::Registry, &model);
    let index = state.storage.vectors.alias().await;
    state.stores.record(Store::Vectors, &index);
    Ok(Marks {
        model: model?,
        index: index?,
    })
}

fn served_marks(served: &Served) -> Marks {
    Marks {
        model: served.model.as_ref().ok().and_then(|m| m.version),
        index: served.index.as_ref().ok().map(|i| i.version),
    }
}

/// Polls every `interval` until the process ends.
pub async fn watch(state: AppState, config: Arc<Config>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Err(err) = reload_once(&state, &config).await {
            tracing::warn!("reload check failed, serving what is loaded: {err:#}");
        }
    }
}

/// Loads and swaps in whatever changed. Returns whether anything was swapped.
pub async fn reload_once(state: &AppState, config: &Config) -> anyhow::Result<bool> {
    let current = state.snapshot();
    let now = marks(state).await?;
    let was = served_marks(&current);
    // A model given with --model is pinned: only the index follows the registry.
    let model_changed = config.model.is_none() && now.model != was.model;
    let index_changed = now.index != was.index;
    if !model_changed && !index_changed {
        return Ok(false);
    }
    let model = if model_changed {
        match state::load_model(&state.storage, None, &config.storage.home).await {
            Ok(Some(model)) => {
                tracing::info!(version = ?model.version, "loaded newly promoted model");
                Ok(Arc::new(model))
            }
            Ok(None) => current.model.clone(),
            Err(err) => {
                tracing::warn!("could not load the promoted model, keeping the current one: {err:#}");
                current.model.clone()
            }
        }
    } else {
        current.model.clone()
    };
    let index = if index_changed {
        match state::load_index(&state.storage, &state.embedder).await {
            Ok(Some(index)) => {
                tracing::info!(version = index.version, "switched to the newly live index");
                Ok(Arc::new(index))
            }
            Ok(None) => current.index.clone(),
            Err(err) => {
                tracing::warn!("refusing the new live index, keeping the current one: {err:#}");
                current.index.clone()
            }
        }
    } else {
        current.index.clone()
    };
    let next = Arc::new(Served { model, index });
    match state.served.write() {
        Ok(mut guard) => *guard = next,
        Err(poisoned) => *poisoned.into_inner() = next,
    }
    Ok(true)
}
