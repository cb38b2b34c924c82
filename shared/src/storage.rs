//! Opens every store from one [`StorageConfig`]: the one place that chooses backends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Result;
use crate::artifacts::ArtifactStore;
use crate::config::StorageConfig;
use crate::documents::DocumentStore;
use crate::documents::mongo::MongoDocumentStore;
use crate::documents::sqlite::SqliteDocumentStore;
use crate::registry::{HF_TREE_FORMAT, MODEL_FORMAT_HF, ModelVersion, Registry};
use crate::vectors::VectorIndex;
use crate::vectors::edge::EdgeVectorIndex;
use crate::vectors::qdrant::QdrantVectorIndex;

/// All four stores, opened and checked.
#[derive(Clone)]
pub struct Storage {
    /// Raw documents.
    pub documents: Arc<dyn DocumentStore>,
    /// Embedded chunks, versioned.
    pub vectors: Arc<dyn VectorIndex>,
    /// Runs, versions, lineage and aliases.
    pub registry: Registry,
    /// Content-addressed files.
    pub artifacts: ArtifactStore,
}

impl Storage {
    /// Opens every store the config names. Fails fast, naming the variable whose backend failed.
    pub async fn open(config: &StorageConfig) -> Result<Self> {
        Ok(Storage {
            registry: open_registry(config).await?,
            documents: open_documents(config).await?,
            vectors: open_vectors(config).await?,
            artifacts: open_artifacts(config).await?,
        })
    }

    /// A registered model's files, downloaded once into `home/cache/models` (verified against the
    /// artifact hash, and in place only whole): a GGUF file or an HF-layout directory.
    pub async fn model_files(&self, home: &Path, model: &ModelVersion) -> Result<PathBuf> {
        let file = home
            .join("cache")
            .join("models")
            .join(format!("{}.{}", model.spec.artifact_hash, model.spec.format));
        if !file.exists() {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| crate::Error::Invalid(format!("cannot create {}: {e}", dir.display())))?;
            }
            if model.spec.format == MODEL_FORMAT_HF {
                self.artifacts
                    .get_tree(&model.spec.artifact_hash, HF_TREE_FORMAT, &file)
                    .await?;
            } else {
                self.artifacts.get_to_file(&model.spec.artifact_hash, &file).await?;
            }
        }
        Ok(file)
    }

    /// One line per store: which backend serves it.
    pub fn describe(&self) -> Vec<(&'static str, &'static str)> {
        vec![
            ("documents", self.documents.backend()),
            ("vectors", self.vectors.backend()),
            ("registry", self.registry.backend()),
            ("artifacts", self.artifacts.backend()),
        ]
    }
}

/// The document store: MongoDB when `ENGRAM_MONGODB_URI` is set, else SQLite under `ENGRAM_HOME`.
pub async fn open_documents(config: &StorageConfig) -> Result<Arc<dyn DocumentStore>> {
    Ok(match &config.mongodb_uri {
        Some(uri) => Arc::new(MongoDocumentStore::connect(uri, &config.mongodb_database).await?),
        None => Arc::new(SqliteDocumentStore::open(&config.documents_path()).await?),
    })
}

/// The vector index: a Qdrant server when `ENGRAM_QDRANT_URL` is set, else qdrant-edge under `ENGRAM_HOME`.
pub async fn open_vectors(config: &StorageConfig) -> Result<Arc<dyn VectorIndex>> {
    Ok(match &config.qdrant_url {
        Some(url) => Arc::new(QdrantVectorIndex::connect(url, config.qdrant_api_key.as_deref()).await?),
        None => Arc::new(EdgeVectorIndex::open(&config.vectors_path())?),
    })
}

/// The registry: PostgreSQL when `ENGRAM_DATABASE_URL` is set, else SQLite under `ENGRAM_HOME`.
pub async fn open_registry(config: &StorageConfig) -> Result<Registry> {
    match &config.database_url {
        Some(url) => Registry::connect_postgres(url).await,
        None => Registry::open_sqlite(&config.registry_path()).await,
    }
}

/// The artifact store: S3 when `ENGRAM_ARTIFACTS_URL` is set, else a directory under `ENGRAM_HOME`.
pub async fn open_artifacts(config: &StorageConfig) -> Result<ArtifactStore> {
    match &config.artifacts_url {
        Some(url) => ArtifactStore::s3(url).await,
        None => ArtifactStore::local(&config.artifacts_path()),
    }
}
