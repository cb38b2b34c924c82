//! The registry: what was built, from what, and which version is in use.
//!
//! Pipeline runs and their steps (with the hashes the step cache keys on), dataset versions, model
//! versions and index versions with their lineage, and aliases (`production`, `staging` on models,
//! `live` on the index). One set of SQL migrations (`shared/migrations/`) runs on SQLite, the
//! embedded default, and on PostgreSQL; queries go through sqlx's `Any` driver so the same SQL serves
//! both. Promotion is a write here, never a file copy.

mod aliases;
mod checkpoints;
mod responses;
mod runs;
mod versions;

pub use aliases::{AliasKind, INDEX_LIVE, MODEL_PRODUCTION, MODEL_STAGING};
pub use runs::{OpenRun, PipelineRun, RunOwner, RunStatus, StepKey, StepRecord};
pub use versions::{
    DatasetVersion, HF_TREE_FORMAT, IndexStatus, IndexVersion, MODEL_FORMAT_GGUF, MODEL_FORMAT_HF, ModelVersion,
    NewDatasetVersion, NewIndexVersion, NewModelVersion,
};

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::{AnyPool, Executor};

use crate::error::redact;
use crate::{Error, Result};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The registry, on SQLite or PostgreSQL.
#[derive(Debug, Clone)]
pub struct Registry {
    pool: AnyPool,
    backend: &'static str,
}

impl Registry {
    /// Opens (creating if needed) the embedded registry in a SQLite file, in WAL mode with a busy
    /// timeout so the pipeline and the service can use it at the same time.
    pub async fn open_sqlite(path: &Path) -> Result<Self> {
        let fail = |reason: String| Error::Config {
            variable: "ENGRAM_HOME",
            address: path.display().to_string(),
            reason,
            hint: "Point ENGRAM_HOME at a writable directory, or set ENGRAM_DATABASE_URL to use PostgreSQL.".into(),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
        }
        let url = format!("sqlite://{}?mode=rwc", path.display());
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(4)
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    // Per connection: wait for a writer instead of failing with SQLITE_BUSY.
                    conn.execute("PRAGMA busy_timeout = 30000").await?;
                    conn.execute("PRAGMA foreign_keys = ON").await?;
                    conn.execute("PRAGMA synchronous = NORMAL").await?;
                    Ok(())
                })
            })
            .connect(&url)
            .await
            .map_err(|e| fail(format!("cannot open the SQLite registry: {e}")))?;
        // Persistent in the file: every later connection, from any process, is in WAL mode.
        pool.execute("PRAGMA journal_mode = WAL")
            .await
            .map_err(|e| fail(format!("cannot switch the registry to WAL mode: {e}")))?;
        let registry = Registry {
            pool,
            backend: "sqlite",
        };
        registry.migrate().await.map_err(|e| fail(e.to_string()))?;
        Ok(registry)
    }

    /// Connects to PostgreSQL at `url` (from `ENGRAM_DATABASE_URL`) and brings its schema up to date.
    pub async fn connect_postgres(url: &str) -> Result<Self> {
        let fail = |reason: String| {
            Error::Config {
            variable: "ENGRAM_DATABASE_URL",
            address: redact(url),
            reason,
            hint: "Check PostgreSQL is running and the URL's user, password and database are right, or unset ENGRAM_DATABASE_URL to use the embedded SQLite registry.".into(),
        }
        };
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(fail("not a PostgreSQL URL: it must start with postgres://".into()));
        }
        install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| fail(format!("cannot connect: {e}")))?;
        let registry = Registry {
            pool,
            backend: "postgres",
        };
        registry.migrate().await.map_err(|e| fail(e.to_string()))?;
        Ok(registry)
    }

    async fn migrate(&self) -> Result<()> {
        MIGRATOR
            .run(&self.pool)
            .await
            .map_err(|e| Error::backend(self.backend, format!("migrating the registry schema: {e}")))
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    fn err(&self, err: sqlx::Error) -> Error {
        Error::backend(self.backend, err)
    }
}
