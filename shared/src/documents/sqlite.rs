//! The embedded document store: one SQLite file under `ENGRAM_HOME`, through sqlx.
//!
//! WAL mode and a busy timeout let the pipeline and a second reader share the file. Content,
//! metadata and quality are plain columns so filters run in SQL and reads stream page by page.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous};
use sqlx::{QueryBuilder, Row, Sqlite, SqlitePool};

use super::model::{Document, DocumentFilter, NewDocument, QualityScore, Source, UpsertOutcome, UpsertSummary};
use super::{DocumentStore, DocumentStream, paginate};
use crate::time::{from_millis, millis, now};
use crate::{Error, Result};

const BACKEND: &str = "sqlite";
const PAGE: i64 = 256;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./document-migrations");

/// Documents in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteDocumentStore {
    pool: SqlitePool,
}

impl SqliteDocumentStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| config_error(path, e))?;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| config_error(path, e))?;
        MIGRATOR.run(&pool).await.map_err(|e| config_error(path, e))?;
        Ok(SqliteDocumentStore { pool })
    }

    async fn fetch_page(&self, filter: DocumentFilter, after: Option<String>) -> Result<Vec<Document>> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT * FROM documents WHERE 1 = 1");
        push_filter(&mut query, &filter);
        if let Some(after) = after {
            query.push(" AND id > ").push_bind(after);
        }
        query.push(" ORDER BY id LIMIT ").push_bind(PAGE);
        let rows = query.build().fetch_all(&self.pool).await.map_err(backend)?;
        rows.iter().map(row_to_document).collect()
    }
}

fn config_error(path: &Path, err: impl std::fmt::Display) -> Error {
    Error::Config {
        variable: "ENGRAM_HOME",
        address: path.display().to_string(),
        reason: format!("cannot open the SQLite document store: {err}"),
        hint: "Point ENGRAM_HOME at a writable directory, or set ENGRAM_MONGODB_URI to use MongoDB.".into(),
    }
}

fn backend(err: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, err)
}

fn push_filter(query: &mut QueryBuilder<Sqlite>, filter: &DocumentFilter) {
    if let Some(source) = filter.source {
        query.push(" AND source = ").push_bind(source.as_str());
    }
    if let Some(min) = filter.min_quality {
        query.push(" AND quality_score >= ").push_bind(min);
    }
    if let Some(since) = filter.changed_since {
        query.push(" AND updated_at >= ").push_bind(millis(&since));
    }
}

fn row_to_document(row: &SqliteRow) -> Result<Document> {
    let source: String = row.try_get("source").map_err(backend)?;
    let metadata: String = row.try_get("metadata").map_err(backend)?;
    let score: Option<f64> = row.try_get("quality_score").map_err(backend)?;
    let quality = match score {
        Some(score) => Some(QualityScore {
            score,
            scorer: row
                .try_get::<Option<String>, _>("quality_scorer")
                .map_err(backend)?
                .unwrap_or_default(),
            version: row
                .try_get::<Option<String>, _>("quality_version")
                .map_err(backend)?
                .unwrap_or_default(),
            reason: row.try_get::<Option<String>, _>("quality_reason").map_err(backend)?,
        }),
        None => None,
    };
    Ok(Document {
        id: row.try_get("id").map_err(backend)?,
        source: Source::from_str(&source)?,
        url: row.try_get("url").map_err(backend)?,
        title: row.try_get("title").map_err(backend)?,
        content: row.try_get("content").map_err(backend)?,
        metadata: serde_json::from_str(&metadata).map_err(|e| Error::Corrupt(format!("metadata is not JSON: {e}")))?,
        content_hash: row.try_get("content_hash").map_err(backend)?,
        quality,
        created_at: from_millis(row.try_get("created_at").map_err(backend)?),
        updated_at: from_millis(row.try_get("updated_at").map_err(backend)?),
    })
}

/// Upserts one document inside an open transaction.
async fn upsert_in(tx: &mut sqlx::SqliteConnection, document: &NewDocument) -> Result<UpsertOutcome> {
    document.validate()?;
    let id = document.id();
    let hash = document.content_hash();
    let stored: Option<String> = sqlx::query_scalar("SELECT content_hash FROM documents WHERE id = ?")
        .bind(&id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(backend)?;
    if stored.as_deref() == Some(hash.as_str()) {
        return Ok(UpsertOutcome::Unchanged);
    }
    let ts = millis(&now());
    let (score, scorer, version, reason) = match &document.quality {
        Some(q) => (
            Some(q.score),
            Some(q.scorer.as_str()),
            Some(q.version.as_str()),
            q.reason.as_deref(),
        ),
        None => (None, None, None, None),
    };
    let sql = if stored.is_some() {
        "UPDATE documents SET source = ?2, url = ?3, title = ?4, content = ?5, metadata = ?6, content_hash = ?7, \
         quality_score = ?8, quality_scorer = ?9, quality_version = ?10, updated_at = ?11, quality_reason = ?12 \
         WHERE id = ?1"
    } else {
        "INSERT INTO documents (id, source, url, title, content, metadata, content_hash, quality_score, \
         quality_scorer, quality_version, created_at, updated_at, quality_reason) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?11, ?12)"
    };
    sqlx::query(sql)
        .bind(&id)
        .bind(document.source.as_str())
        .bind(&document.url)
        .bind(&document.title)
        .bind(&document.content)
        .bind(document.metadata.to_string())
        .bind(&hash)
        .bind(score)
        .bind(scorer)
        .bind(version)
        .bind(ts)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
    Ok(if stored.is_some() {
        UpsertOutcome::Updated
    } else {
        UpsertOutcome::Inserted
    })
}

#[async_trait]
impl DocumentStore for SqliteDocumentStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn upsert(&self, document: NewDocument) -> Result<UpsertOutcome> {
        Ok(self.upsert_many(vec![document]).await?.into_single())
    }

    async fn upsert_many(&self, documents: Vec<NewDocument>) -> Result<UpsertSummary> {
        let mut summary = UpsertSummary::default();
        // One write transaction per batch: far fewer fsyncs than one per document, and readers
        // never see half a batch. IMMEDIATE takes the write lock up front, so two writers queue on
        // the busy timeout instead of failing on a lock upgrade.
        for batch in documents.chunks(500) {
            let mut conn = self.pool.acquire().await.map_err(backend)?;
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut *conn)
                .await
                .map_err(backend)?;
            let mut outcome = Ok(());
            for document in batch {
                match upsert_in(&mut conn, document).await {
                    Ok(done) => summary.add(done),
                    Err(err) => {
                        outcome = Err(err);
                        break;
                    }
                }
            }
            let end = if outcome.is_ok() { "COMMIT" } else { "ROLLBACK" };
            if let Err(err) = sqlx::query(end).execute(&mut *conn).await {
                // Never hand a connection with an open transaction back to the pool.
                conn.close_on_drop();
                return Err(backend(err));
            }
            outcome?;
        }
        Ok(summary)
    }

    async fn get(&self, id: &str) -> Result<Option<Document>> {
        let row = sqlx::query("SELECT * FROM documents WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?;
        row.as_ref().map(row_to_document).transpose()
    }

    fn stream<'a>(&'a self, filter: &DocumentFilter) -> DocumentStream<'a> {
        let filter = filter.clone();
        paginate(move |after| self.fetch_page(filter.clone(), after))
    }

    async fn count(&self, filter: &DocumentFilter) -> Result<u64> {
        let mut query = QueryBuilder::<Sqlite>::new("SELECT COUNT(*) FROM documents WHERE 1 = 1");
        push_filter(&mut query, filter);
        let count: i64 = query
            .build_query_scalar()
            .fetch_one(&self.pool)
            .await
            .map_err(backend)?;
        Ok(count as u64)
    }

    async fn set_quality(&self, id: &str, score: &QualityScore) -> Result<()> {
        let done = sqlx::query(
            "UPDATE documents SET quality_score = ?, quality_scorer = ?, quality_version = ?, quality_reason = ? \
                 WHERE id = ?",
        )
        .bind(score.score)
        .bind(&score.scorer)
        .bind(&score.version)
        .bind(&score.reason)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("document {id}")));
        }
        Ok(())
    }
}
