//! What the service serves right now: the model and the index, loaded together as one snapshot.
//!
//! A request takes the current [`Served`] snapshot (an `Arc`) when it starts and keeps it until it
//! ends, so a later swap never changes a request midway. Loading reads the registry: the model
//! behind the `production` alias (downloaded from the artifact store by its sha256, which the
//! download verifies; an HF-layout model as the directory its manifest describes) unless `--model` names a file, and the vector index's live version with its
//! manifest, which must name the embedding model this process loaded.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use engram_shared::embedding::Embedder;
use engram_shared::generation::{Generator, GeneratorOptions};
use engram_shared::registry::{AliasKind, MODEL_PRODUCTION};
use engram_shared::storage::Storage;
use engram_shared::vectors::VectorIndex;
use engram_shared::vectors::manifest::IndexManifest;

/// A loaded model.
pub struct ServedModel {
    /// Its registry version (none when loaded from `--model`).
    pub version: Option<i64>,
    /// Its id, as `/v1/models` and responses name it.
    pub id: String,
    /// The model.
    pub generator: Arc<Generator>,
}

/// The live index version and what it was built with. When the last request using it ends after a
/// newer version took its place, the vector store is told to release it (the embedded backend
/// closes its shard and removes its private copy), so memory and disk stay bounded across rebuilds.
pub struct ServedIndex {
    /// The version.
    pub version: u64,
    /// Its manifest.
    pub manifest: IndexManifest,
    vectors: Arc<dyn VectorIndex>,
}

impl Drop for ServedIndex {
    fn drop(&mut self) {
        self.vectors.release(self.version);
    }
}

/// What is served now. Either part may be missing; the service then says why it is not ready.
pub struct Served {
    /// The model, or why there is none.
    pub model: Result<Arc<ServedModel>, String>,
    /// The index, or why there is none.
    pub index: Result<Arc<ServedIndex>, String>,
}

impl Served {
    /// Whether chat can be served.
    pub fn ready(&self) -> Result<(), String> {
        self.model.as_ref().map_err(Clone::clone)?;
        self.index.as_ref().map_err(Clone::clone)?;
        Ok(())
    }
}

/// Loads the model: `--model` if given, else the registry's production version.
pub async fn load_model(
    storage: &Storage,
    path: Option<&PathBuf>,
    home: &std::path::Path,
) -> anyhow::Result<Option<ServedModel>> {
    let (file, version, id) = match path {
        Some(path) => (
            path.clone(),
            None,
            path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string(),
        ),
        None => {
            let Some(version) = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await? else {
                return Ok(None);
            };
            let model = storage.registry.model(version).await?.with_context(|| {
                format!("the production alias names model version {version}, which is not registered")
            })?;
            let file = storage.model_files(home, &model).await?;
            (file, Some(version), format!("{}-v{version}", model.spec.name))
        }
    };
    let load = file.clone();
    let generator = tokio::task::spawn_blocking(move || Generator::load(&load, GeneratorOptions::default()))
        .await?
        .with_context(|| format!("cannot load the model {}", file.display()))?;
    Ok(Some(ServedModel {
        version,
        id,
        generator: Arc::new(generator),
    }))
}

/// Finds the live index and checks it was built with `embedder`.
pub async fn load_index(storage: &Storage, embedder: &Embedder) -> anyhow::Result<Option<ServedIndex>> {
    let Some(version) = storage.vectors.alias().await? else {
        return Ok(None);
    };
    let registered = storage
        .registry
        .index_version(version as i64)
        .await?
        .with_context(|| format!("index version {version} is live but not in the registry"))?;
    let manifest: IndexManifest = serde_json::from_value(registered.spec.manifest)
        .with_context(|| format!("the manifest of index version {version} is not readable"))?;
    manifest.check_embedder(embedder.model_id(), embedder.dimension(), version as i64)?;
    // Opened now (off the runtime's threads), not by the first question, and refused here if it
    // cannot be opened.
    storage
        .vectors
        .count(version)
        .await
        .with_context(|| format!("index version {version} cannot be opened"))?;
    Ok(Some(ServedIndex {
        version,
        manifest,
        vectors: storage.vectors.clone(),
    }))
}
