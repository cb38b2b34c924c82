//! Dataset, model and index versions with their lineage.
//!
//! Version numbers come from a counter row incremented in the insert's transaction, so they stay
//! dense and unique with any number of concurrent writers, on SQLite and PostgreSQL alike.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Registry;
use crate::time::{Timestamp, from_millis, millis, now};
use crate::{Error, Result};

/// A dataset version to register.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewDatasetVersion {
    /// The run that built it.
    pub run_id: Option<String>,
    /// sha256 of the published dataset in the artifact store.
    pub artifact_hash: String,
    /// sha256 over the ids and content hashes of the documents it was made from.
    pub document_set_hash: String,
    /// Teacher, prompt version, config and whatever else made it, as JSON.
    pub lineage: serde_json::Value,
    /// Row counts per split and other statistics, as JSON.
    pub stats: serde_json::Value,
}

/// A registered dataset version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DatasetVersion {
    /// Version number, from 1.
    pub version: i64,
    /// When it was registered.
    pub created_at: Timestamp,
    /// What was registered.
    #[serde(flatten)]
    pub spec: NewDatasetVersion,
}

/// A model stored as one GGUF file.
pub const MODEL_FORMAT_GGUF: &str = "gguf";
/// A model stored as an HF-layout directory (safetensors, config, tokenizer).
pub const MODEL_FORMAT_HF: &str = "hf";
/// The tree format of an HF-layout model's manifest in the artifact store.
pub const HF_TREE_FORMAT: &str = "engram-model-hf/1";

/// A model version to register.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewModelVersion {
    /// The run that trained it (none for a base model registered by hand).
    pub run_id: Option<String>,
    /// A human name, e.g. `SmolLM2-135M-Instruct`.
    pub name: String,
    /// [`MODEL_FORMAT_GGUF`] (one file) or [`MODEL_FORMAT_HF`] (an HF-layout directory, stored
    /// as a tree of artifacts whose manifest is the artifact).
    pub format: String,
    /// sha256 of the model's artifact: the service verifies it before serving.
    pub artifact_hash: String,
    /// The dataset version it was fine-tuned on.
    pub dataset_version: Option<i64>,
    /// Base model, training config, metrics, or "base, not fine-tuned", as JSON.
    pub lineage: serde_json::Value,
}

/// A registered model version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelVersion {
    /// Version number, from 1.
    pub version: i64,
    /// When it was registered.
    pub created_at: Timestamp,
    /// What was registered.
    #[serde(flatten)]
    pub spec: NewModelVersion,
    /// What evaluation measured (`{}` until evaluated).
    pub metrics: serde_json::Value,
}

/// Where an index version's build stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum IndexStatus {
    /// Being written; never served.
    Building,
    /// Complete: the alias may point at it.
    Ready,
    /// Its collection was dropped.
    Dropped,
}

impl IndexStatus {
    fn as_str(&self) -> &'static str {
        match self {
            IndexStatus::Building => "building",
            IndexStatus::Ready => "ready",
            IndexStatus::Dropped => "dropped",
        }
    }
}

impl fmt::Display for IndexStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for IndexStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "building" => IndexStatus::Building,
            "ready" => IndexStatus::Ready,
            "dropped" => IndexStatus::Dropped,
            other => return Err(Error::Corrupt(format!("unknown index status {other:?}"))),
        })
    }
}

/// An index version to begin building.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewIndexVersion {
    /// The run that builds it.
    pub run_id: Option<String>,
    /// The embedding model's id: the service refuses an index built with another model.
    pub embedding_model: String,
    /// The embedding dimension.
    pub dimension: i64,
    /// The distance (`cosine`, `dot`, `euclid`).
    pub distance: String,
    /// Chunker settings, document set hash, counts: the index manifest, as JSON.
    pub manifest: serde_json::Value,
}

/// A registered index version.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct IndexVersion {
    /// Version number, from 1; its collection is `chunks_v{version}`.
    pub version: i64,
    /// When it was registered.
    pub created_at: Timestamp,
    /// Where its build stands.
    pub status: IndexStatus,
    /// The collection in the vector index.
    pub collection: String,
    /// What was registered.
    #[serde(flatten)]
    pub spec: NewIndexVersion,
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(row: &'r AnyRow, column: &str) -> Result<T> {
    row.try_get(column).map_err(|e| Error::backend("registry", e))
}

fn json(row: &AnyRow, column: &str) -> Result<serde_json::Value> {
    serde_json::from_str(&get::<String>(row, column)?).map_err(|e| Error::Corrupt(format!("{column} is not JSON: {e}")))
}

impl Registry {
    /// Runs `insert` (which must bind the version as `$1`) with the next version number of `table`,
    /// taken from `version_counters` in the same transaction: a crash before commit hands out nothing.
    async fn allocate<F>(&self, table: &str, insert: F) -> Result<i64>
    where
        F: FnOnce(i64) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments>,
    {
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        let next: i64 =
            sqlx::query_scalar("UPDATE version_counters SET last = last + 1 WHERE name = $1 RETURNING last")
                .bind(table)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| self.err(e))?;
        insert(next).execute(&mut *tx).await.map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(next)
    }

    /// Registers a dataset version and returns it with its number.
    pub async fn register_dataset(&self, spec: NewDatasetVersion) -> Result<DatasetVersion> {
        let created_at = now();
        let (lineage, stats) = (spec.lineage.to_string(), spec.stats.to_string());
        let version = self
            .allocate("dataset_versions", |version| {
                sqlx::query(
                    "INSERT INTO dataset_versions (version, created_at, run_id, artifact_hash, document_set_hash, lineage, stats) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(version)
                .bind(millis(&created_at))
                .bind(spec.run_id.clone())
                .bind(spec.artifact_hash.clone())
                .bind(spec.document_set_hash.clone())
                .bind(lineage.clone())
                .bind(stats.clone())
            })
            .await?;
        Ok(DatasetVersion {
            version,
            created_at,
            spec,
        })
    }

    /// One dataset version.
    pub async fn dataset(&self, version: i64) -> Result<Option<DatasetVersion>> {
        let row = sqlx::query("SELECT * FROM dataset_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_dataset).transpose()
    }

    /// Every dataset version, newest first.
    pub async fn datasets(&self) -> Result<Vec<DatasetVersion>> {
        let rows = sqlx::query("SELECT * FROM dataset_versions ORDER BY version DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_dataset).collect()
    }

    /// Registers a model version and returns it with its number.
    pub async fn register_model(&self, spec: NewModelVersion) -> Result<ModelVersion> {
        let created_at = now();
        let lineage = spec.lineage.to_string();
        let version = self
            .allocate("model_versions", |version| {
                sqlx::query(
                    "INSERT INTO model_versions (version, created_at, run_id, name, format, artifact_hash, dataset_version, lineage) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(version)
                .bind(millis(&created_at))
                .bind(spec.run_id.clone())
                .bind(spec.name.clone())
                .bind(spec.format.clone())
                .bind(spec.artifact_hash.clone())
                .bind(spec.dataset_version)
                .bind(lineage.clone())
            })
            .await?;
        Ok(ModelVersion {
            version,
            created_at,
            spec,
            metrics: serde_json::json!({}),
        })
    }

    /// Merges `metrics` into model version `version`'s metrics (keys given replace stored ones).
    pub async fn add_model_metrics(&self, version: i64, metrics: &serde_json::Value) -> Result<()> {
        let Some(model) = self.model(version).await? else {
            return Err(Error::Corrupt(format!("model version {version} is not registered")));
        };
        let mut merged = model.metrics;
        if let (Some(stored), Some(new)) = (merged.as_object_mut(), metrics.as_object()) {
            for (key, value) in new {
                stored.insert(key.clone(), value.clone());
            }
        }
        sqlx::query("UPDATE model_versions SET metrics = $1 WHERE version = $2")
            .bind(merged.to_string())
            .bind(version)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// One model version.
    pub async fn model(&self, version: i64) -> Result<Option<ModelVersion>> {
        let row = sqlx::query("SELECT * FROM model_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_model).transpose()
    }

    /// Every model version, newest first.
    pub async fn models(&self) -> Result<Vec<ModelVersion>> {
        let rows = sqlx::query("SELECT * FROM model_versions ORDER BY version DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_model).collect()
    }

    /// Allocates the next index version, recorded as `building`. Its collection is
    /// `chunks_v{version}`; nothing may serve it until [`Registry::finish_index_version`].
    pub async fn begin_index_version(&self, spec: NewIndexVersion) -> Result<IndexVersion> {
        let created_at = now();
        let manifest = spec.manifest.to_string();
        let version = self
            .allocate("index_versions", |version| {
                sqlx::query(
                    "INSERT INTO index_versions (version, created_at, run_id, status, collection, embedding_model, dimension, distance, manifest) \
                     VALUES ($1, $2, $3, 'building', $4, $5, $6, $7, $8)",
                )
                .bind(version)
                .bind(millis(&created_at))
                .bind(spec.run_id.clone())
                .bind(crate::vectors::collection_name(version as u64))
                .bind(spec.embedding_model.clone())
                .bind(spec.dimension)
                .bind(spec.distance.clone())
                .bind(manifest.clone())
            })
            .await?;
        Ok(IndexVersion {
            version,
            created_at,
            status: IndexStatus::Building,
            collection: crate::vectors::collection_name(version as u64),
            spec,
        })
    }

    /// Marks an index version `ready` with its final manifest (counts known only at the end).
    pub async fn finish_index_version(&self, version: i64, manifest: &serde_json::Value) -> Result<()> {
        self.update_index(version, IndexStatus::Ready, Some(manifest)).await
    }

    /// Marks an index version dropped (its collection is gone).
    pub async fn mark_index_dropped(&self, version: i64) -> Result<()> {
        self.update_index(version, IndexStatus::Dropped, None).await
    }

    async fn update_index(
        &self,
        version: i64,
        status: IndexStatus,
        manifest: Option<&serde_json::Value>,
    ) -> Result<()> {
        let done =
            sqlx::query("UPDATE index_versions SET status = $1, manifest = COALESCE($2, manifest) WHERE version = $3")
                .bind(status.as_str())
                .bind(manifest.map(|m| m.to_string()))
                .bind(version)
                .execute(&self.pool)
                .await
                .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("index version {version}")));
        }
        Ok(())
    }

    /// One index version.
    pub async fn index_version(&self, version: i64) -> Result<Option<IndexVersion>> {
        let row = sqlx::query("SELECT * FROM index_versions WHERE version = $1")
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_index).transpose()
    }

    /// Every index version, newest first.
    pub async fn index_versions(&self) -> Result<Vec<IndexVersion>> {
        let rows = sqlx::query("SELECT * FROM index_versions ORDER BY version DESC")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_index).collect()
    }
}

fn row_to_dataset(row: &AnyRow) -> Result<DatasetVersion> {
    Ok(DatasetVersion {
        version: get(row, "version")?,
        created_at: from_millis(get(row, "created_at")?),
        spec: NewDatasetVersion {
            run_id: get(row, "run_id")?,
            artifact_hash: get(row, "artifact_hash")?,
            document_set_hash: get(row, "document_set_hash")?,
            lineage: json(row, "lineage")?,
            stats: json(row, "stats")?,
        },
    })
}

fn row_to_model(row: &AnyRow) -> Result<ModelVersion> {
    Ok(ModelVersion {
        version: get(row, "version")?,
        created_at: from_millis(get(row, "created_at")?),
        spec: NewModelVersion {
            run_id: get(row, "run_id")?,
            name: get(row, "name")?,
            format: get(row, "format")?,
            artifact_hash: get(row, "artifact_hash")?,
            dataset_version: get(row, "dataset_version")?,
            lineage: json(row, "lineage")?,
        },
        metrics: json(row, "metrics")?,
    })
}

fn row_to_index(row: &AnyRow) -> Result<IndexVersion> {
    Ok(IndexVersion {
        version: get(row, "version")?,
        created_at: from_millis(get(row, "created_at")?),
        status: get::<String>(row, "status")?.parse()?,
        collection: get(row, "collection")?,
        spec: NewIndexVersion {
            run_id: get(row, "run_id")?,
            embedding_model: get(row, "embedding_model")?,
            dimension: get(row, "dimension")?,
            distance: get(row, "distance")?,
            manifest: json(row, "manifest")?,
        },
    })
}
