//! Aliases: a name that points at one version, moved in a single row write.

use std::fmt;

use sqlx::Row;

use super::Registry;
use crate::time::{millis, now};
use crate::{Error, Result};

/// The model alias the inference service serves.
pub const MODEL_PRODUCTION: &str = "production";
/// The model alias for a candidate under evaluation.
pub const MODEL_STAGING: &str = "staging";
/// The index alias the inference service retrieves from.
pub const INDEX_LIVE: &str = "live";

/// What an alias points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AliasKind {
    /// A model version.
    Model,
    /// An index version.
    Index,
    /// A dataset version.
    Dataset,
}

impl AliasKind {
    fn as_str(&self) -> &'static str {
        match self {
            AliasKind::Model => "model",
            AliasKind::Index => "index",
            AliasKind::Dataset => "dataset",
        }
    }

    fn table(&self) -> &'static str {
        match self {
            AliasKind::Model => "model_versions",
            AliasKind::Index => "index_versions",
            AliasKind::Dataset => "dataset_versions",
        }
    }
}

impl fmt::Display for AliasKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Registry {
    /// Points `name` at `version`. The version must exist; an index version must be `ready`.
    pub async fn set_alias(&self, kind: AliasKind, name: &str, version: i64) -> Result<()> {
        let sql = format!(
            "SELECT {} FROM {} WHERE version = $1",
            status_column(kind),
            kind.table()
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(version)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        let Some(row) = row else {
            return Err(Error::not_found(format!("{kind} version {version}")));
        };
        let status: String = row.try_get(0).map_err(|e| self.err(e))?;
        if status != "ready" {
            return Err(Error::Conflict(format!(
                "{kind} version {version} is {status}, not ready: only a finished version can be made {name}"
            )));
        }
        let moved_at = millis(&now());
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO aliases (kind, name, version, updated_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (kind, name) DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
        )
        .bind(kind.as_str())
        .bind(name)
        .bind(version)
        .bind(moved_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        sqlx::query(
            "INSERT INTO alias_history (seq, kind, name, version, moved_at) \
             SELECT COALESCE(MAX(seq), 0) + 1, $1, $2, $3, $4 FROM alias_history",
        )
        .bind(kind.as_str())
        .bind(name)
        .bind(version)
        .bind(moved_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| self.err(e))?;
        tx.commit().await.map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The versions `name` has pointed at, oldest first (one entry per move).
    pub async fn alias_history(&self, kind: AliasKind, name: &str) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT version FROM alias_history WHERE kind = $1 AND name = $2 ORDER BY seq")
            .bind(kind.as_str())
            .bind(name)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// The version `name` points at, if set.
    pub async fn alias(&self, kind: AliasKind, name: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT version FROM aliases WHERE kind = $1 AND name = $2")
            .bind(kind.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Every alias of `kind`, as (name, version).
    pub async fn aliases(&self, kind: AliasKind) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query("SELECT name, version FROM aliases WHERE kind = $1 ORDER BY name")
            .bind(kind.as_str())
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get(0).map_err(|e| self.err(e))?,
                    r.try_get(1).map_err(|e| self.err(e))?,
                ))
            })
            .collect()
    }
}

/// Only index versions have a build status; other versions are ready once registered.
fn status_column(kind: AliasKind) -> &'static str {
    match kind {
        AliasKind::Index => "status",
        AliasKind::Model | AliasKind::Dataset => "'ready'",
    }
}
