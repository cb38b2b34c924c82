//! Whether the stores the service depends on answer, as the last check found them.
//!
//! The service keeps answering from what it has loaded, but an operator (and Kubernetes' readiness
//! probe) must see when the registry or the vector store stops answering: new versions cannot be
//! picked up, and a vector store that is gone fails every search. The reload poll records the
//! outcome of its reads here every interval, and a failed search records its store's error at once;
//! the next successful read clears it, so the service recovers on its own when the store returns.

use std::sync::RwLock;

use serde::Serialize;
use utoipa::ToSchema;

/// A store that answers or the error it last gave.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct StoreState {
    /// Whether the last read succeeded.
    pub ok: bool,
    /// The last read's error (credentials hidden), when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The registry's and the vector store's states.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct StoreStates {
    /// The model and index registry (the reload poll reads its aliases).
    pub registry: StoreState,
    /// The vector store (searched per request; its alias is polled).
    pub vectors: StoreState,
}

impl StoreStates {
    /// The first failing store's description, if any.
    pub fn problem(&self) -> Option<String> {
        let failing = |name: &str, state: &StoreState| {
            (!state.ok).then(|| format!("the {name} does not answer: {}", state.error.as_deref().unwrap_or("")))
        };
        failing("registry", &self.registry).or_else(|| failing("vector store", &self.vectors))
    }
}

/// Which store a result came from.
#[derive(Debug, Clone, Copy)]
pub enum Store {
    /// The registry.
    Registry,
    /// The vector store.
    Vectors,
}

/// The states, shared by the poll and the request handlers.
#[derive(Debug)]
pub struct StoreHealth {
    states: RwLock<StoreStates>,
}

impl Default for StoreHealth {
    fn default() -> Self {
        let ok = StoreState { ok: true, error: None };
        Self {
            states: RwLock::new(StoreStates {
                registry: ok.clone(),
                vectors: ok,
            }),
        }
    }
}

impl StoreHealth {
    /// Records the outcome of a read from `store`, logging when its state changes.
    pub fn record<T, E: std::fmt::Display>(&self, store: Store, outcome: &Result<T, E>) {
        let next = match outcome {
            Ok(_) => StoreState { ok: true, error: None },
            Err(err) => StoreState {
                ok: false,
                error: Some(engram_shared::error::redact(&err.to_string())),
            },
        };
        let mut states = match self.states.write() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        let slot = match store {
            Store::Registry => &mut states.registry,
            Store::Vectors => &mut states.vectors,
        };
        if slot.ok != next.ok {
            match &next.error {
                Some(error) => tracing::error!(?store, %error, "a store stopped answering: not ready"),
                None => tracing::info!(?store, "the store answers again: ready"),
            }
        }
        *slot = next;
    }

    /// The states now.
    pub fn states(&self) -> StoreStates {
        match self.states.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }
}
