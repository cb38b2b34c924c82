//! Where each training's newest checkpoint is.
//!
//! Fine-tuning takes minutes to hours; a run killed mid-way (a preempted CronJob pod, a SIGKILL)
//! should lose at most the steps since its last checkpoint. The checkpoint itself is an artifact;
//! this table maps the training's key (a hash of base model, dataset, hyper-parameters and code)
//! to the newest one, so the rerun that finds it resumes there. Writes only move forward.

use sqlx::Row;

use super::Registry;
use crate::time::{millis, now};
use crate::{Error, Result};

impl Registry {
    /// The newest checkpoint of training `key`: `(step, artifact hash)`.
    pub async fn train_checkpoint(&self, key: &str) -> Result<Option<(i64, String)>> {
        let row = sqlx::query("SELECT step, artifact_hash FROM train_checkpoints WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.map(|row| {
            Ok((
                row.try_get::<i64, _>("step")
                    .map_err(|e| Error::backend("registry", e))?,
                row.try_get::<String, _>("artifact_hash")
                    .map_err(|e| Error::backend("registry", e))?,
            ))
        })
        .transpose()
    }

    /// Records checkpoint `artifact_hash` at `step` of training `key`, unless a later one is
    /// recorded already.
    pub async fn save_train_checkpoint(&self, key: &str, step: i64, artifact_hash: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO train_checkpoints (key, step, artifact_hash, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (key) DO UPDATE SET step = excluded.step, artifact_hash = excluded.artifact_hash, \
             updated_at = excluded.updated_at WHERE train_checkpoints.step < excluded.step",
        )
        .bind(key)
        .bind(step)
        .bind(artifact_hash)
        .bind(millis(&now()))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Forgets training `key`'s checkpoints (its model is registered).
    pub async fn clear_train_checkpoint(&self, key: &str) -> Result<()> {
        sqlx::query("DELETE FROM train_checkpoints WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}
