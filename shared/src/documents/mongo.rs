//! The production document store: a MongoDB `documents` collection through the official driver.
//!
//! A document's stable id is its `_id`; metadata is a sub-document so it can be queried in place.
//! Upserts compare content hashes before writing, so re-extracting an unchanged corpus writes nothing.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{self, Bson, Document as BsonDocument, doc};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection};

use super::model::{Document, DocumentFilter, NewDocument, QualityScore, Source, UpsertOutcome};
use super::{DocumentStore, DocumentStream, paginate};
use crate::error::redact;
use crate::time::{from_millis, millis, now};
use crate::{Error, Result};

const BACKEND: &str = "mongodb";
const PAGE: i64 = 256;

/// Documents in a MongoDB collection.
#[derive(Debug, Clone)]
pub struct MongoDocumentStore {
    collection: Collection<BsonDocument>,
}

impl MongoDocumentStore {
    /// Connects to `uri`, checks the server answers, and ensures the collection's indexes.
    pub async fn connect(uri: &str, database: &str) -> Result<Self> {
        let fail = |reason: String| {
            Error::Config {
            variable: "ENGRAM_MONGODB_URI",
            address: redact(uri),
            reason,
            hint: "Check the MongoDB server is running and reachable, or unset ENGRAM_MONGODB_URI to use the embedded SQLite store.".into(),
        }
        };
        let mut options = ClientOptions::parse(uri)
            .await
            .map_err(|e| fail(format!("not a valid MongoDB connection string: {e}")))?;
        options.server_selection_timeout.get_or_insert(Duration::from_secs(5));
        options.connect_timeout.get_or_insert(Duration::from_secs(5));
        options.app_name.get_or_insert_with(|| "engram".into());
        let client = Client::with_options(options).map_err(|e| fail(e.to_string()))?;
        let db = client.database(database);
        db.run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| fail(format!("no answer from the server: {e}")))?;
        let collection = db.collection::<BsonDocument>("documents");
        for key in ["source", "updated_at"] {
            let index = mongodb::IndexModel::builder().keys(doc! { key: 1 }).build();
            collection.create_index(index).await.map_err(backend)?;
        }
        Ok(MongoDocumentStore { collection })
    }

    async fn fetch_page(&self, filter: DocumentFilter, after: Option<String>) -> Result<Vec<Document>> {
        let mut query = filter_doc(&filter);
        if let Some(after) = after {
            query.insert("_id", doc! { "$gt": after });
        }
        let cursor = self
            .collection
            .find(query)
            .sort(doc! { "_id": 1 })
            .limit(PAGE)
            .await
            .map_err(backend)?;
        let rows: Vec<BsonDocument> = cursor.try_collect().await.map_err(backend)?;
        rows.iter().map(bson_to_document).collect()
    }
}

fn backend(err: impl std::fmt::Display) -> Error {
    Error::backend(BACKEND, err)
}

/// True when a write failed because the `_id` already exists (MongoDB error 11000).
fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    matches!(
        err.kind.as_ref(),
        mongodb::error::ErrorKind::Write(mongodb::error::WriteFailure::WriteError(w)) if w.code == 11000
    )
}

fn filter_doc(filter: &DocumentFilter) -> BsonDocument {
    let mut query = BsonDocument::new();
    if let Some(source) = filter.source {
        query.insert("source", source.as_str());
    }
    if let Some(min) = filter.min_quality {
        query.insert("quality.score", doc! { "$gte": min });
    }
    if let Some(since) = filter.changed_since {
        query.insert(
            "updated_at",
            doc! { "$gte": bson::DateTime::from_millis(millis(&since)) },
        );
    }
    query
}

fn corrupt(field: &str, err: impl std::fmt::Display) -> Error {
    Error::Corrupt(format!("document field {field}: {err}"))
}

fn bson_to_document(row: &BsonDocument) -> Result<Document> {
    let text = |field: &str| row.get_str(field).map(str::to_string).map_err(|e| corrupt(field, e));
    let date = |field: &str| {
        row.get_datetime(field)
            .map(|d| from_millis(d.timestamp_millis()))
            .map_err(|e| corrupt(field, e))
    };
    let metadata = match row.get("metadata") {
        Some(value) => value.clone().into_relaxed_extjson(),
        None => serde_json::json!({}),
    };
    let quality = match row.get_document("quality") {
        Ok(q) => Some(QualityScore {
            score: q.get_f64("score").map_err(|e| corrupt("quality.score", e))?,
            scorer: q.get_str("scorer").unwrap_or_default().to_string(),
            version: q.get_str("version").unwrap_or_default().to_string(),
            reason: q.get_str("reason").ok().map(str::to_string),
        }),
        Err(_) => None,
    };
    Ok(Document {
        id: text("_id")?,
        source: Source::from_str(&text("source")?)?,
        url: text("url")?,
        title: text("title")?,
        content: text("content")?,
        metadata,
        content_hash: text("content_hash")?,
        quality,
        created_at: date("created_at")?,
        updated_at: date("updated_at")?,
    })
}

fn quality_bson(score: &QualityScore) -> BsonDocument {
    let mut quality = doc! { "score": score.score, "scorer": &score.scorer, "version": &score.version };
    if let Some(reason) = &score.reason {
        quality.insert("reason", reason);
    }
    quality
}

#[async_trait]
impl DocumentStore for MongoDocumentStore {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn upsert(&self, document: NewDocument) -> Result<UpsertOutcome> {
        document.validate()?;
        let id = document.id();
        let hash = document.content_hash();
        let metadata = bson::to_bson(&document.metadata).map_err(|e| Error::Invalid(e.to_string()))?;
        let ts = bson::DateTime::from_millis(millis(&now()));
        let mut fields = doc! {
            "source": document.source.as_str(),
            "url": &document.url,
            "title": &document.title,
            "content": &document.content,
            "metadata": metadata,
            "content_hash": &hash,
            "quality": document.quality.as_ref().map(quality_bson).map(Bson::Document).unwrap_or(Bson::Null),
            "updated_at": ts,
        };
        fields.insert("_id", &id);
        // Two attempts: if another writer inserts the same id between our read and our insert,
        // the second pass sees its document and updates (or leaves) it instead of failing.
        for attempt in 0..2 {
            let stored = self
                .collection
                .find_one(doc! { "_id": &id })
                .projection(doc! { "content_hash": 1, "created_at": 1 })
                .await
                .map_err(backend)?;
            match stored {
                Some(stored) if stored.get_str("content_hash").ok() == Some(hash.as_str()) => {
                    return Ok(UpsertOutcome::Unchanged);
                }
                Some(stored) => {
                    let created = stored.get_datetime("created_at").copied().unwrap_or(ts);
                    fields.insert("created_at", created);
                    self.collection
                        .replace_one(doc! { "_id": &id }, fields)
                        .await
                        .map_err(backend)?;
                    return Ok(UpsertOutcome::Updated);
                }
                None => {
                    fields.insert("created_at", ts);
                    match self.collection.insert_one(fields.clone()).await {
                        Ok(_) => return Ok(UpsertOutcome::Inserted),
                        Err(e) if attempt == 0 && is_duplicate_key(&e) => continue,
                        Err(e) => return Err(backend(e)),
                    }
                }
            }
        }
        Err(Error::Conflict(format!(
            "document {id} kept changing while it was being written; retry the upsert"
        )))
    }

    async fn get(&self, id: &str) -> Result<Option<Document>> {
        let row = self.collection.find_one(doc! { "_id": id }).await.map_err(backend)?;
        row.as_ref().map(bson_to_document).transpose()
    }

    fn stream<'a>(&'a self, filter: &DocumentFilter) -> DocumentStream<'a> {
        let filter = filter.clone();
        paginate(move |after| self.fetch_page(filter.clone(), after))
    }

    async fn count(&self, filter: &DocumentFilter) -> Result<u64> {
        self.collection
            .count_documents(filter_doc(filter))
            .await
            .map_err(backend)
    }

    async fn set_quality(&self, id: &str, score: &QualityScore) -> Result<()> {
        let done = self
            .collection
            .update_one(doc! { "_id": id }, doc! { "$set": { "quality": quality_bson(score) } })
            .await
            .map_err(backend)?;
        if done.matched_count == 0 {
            return Err(Error::not_found(format!("document {id}")));
        }
        Ok(())
    }
}
