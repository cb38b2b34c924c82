//! The document as every backend stores it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::hashing::sha256_fields;
use crate::time::Timestamp;
use crate::{Error, Result};

/// Where a document came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A page of a Notion export (or the Notion API).
    Notion,
    /// A web page fetched by the crawler.
    Crawl,
    /// A local markdown, HTML or text file.
    File,
}

impl Source {
    /// The lowercase name stored in every backend.
    pub fn as_str(&self) -> &'static str {
        match self {
            Source::Notion => "notion",
            Source::Crawl => "crawl",
            Source::File => "file",
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Source {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "notion" => Ok(Source::Notion),
            "crawl" => Ok(Source::Crawl),
            "file" => Ok(Source::File),
            other => Err(Error::Invalid(format!(
                "unknown document source {other:?}: expected notion, crawl or file"
            ))),
        }
    }
}

/// A quality score and who gave it, so a later, better scorer can be told apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QualityScore {
    /// The score, 0.0 (junk) to 1.0 (excellent).
    pub score: f64,
    /// The scorer's name, e.g. `heuristic` or `llm-judge`.
    pub scorer: String,
    /// The scorer's version: scores from different versions are not comparable.
    pub version: String,
    /// Why, when the scorer says (the LLM judge gives a one-line reason; the heuristic does not).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A document as extract hands it to the store: no id bookkeeping or timestamps yet.
#[derive(Debug, Clone, PartialEq)]
pub struct NewDocument {
    /// Where it came from.
    pub source: Source,
    /// The page's URL (`https://…`, `notion://…`, `file://…`): with the source, its identity.
    pub url: String,
    /// The title.
    pub title: String,
    /// The content, as markdown.
    pub content: String,
    /// Anything else the extractor knows (Notion id, parent, links, crawl status…); a JSON object.
    pub metadata: serde_json::Value,
    /// A quality score computed at extract time, if any.
    pub quality: Option<QualityScore>,
}

impl NewDocument {
    /// The stable id: a hash of source and url, the same on every run and every machine.
    pub fn id(&self) -> String {
        document_id(self.source, &self.url)
    }

    /// The hash of everything that makes the document what it is. Unchanged hash, unchanged document.
    pub fn content_hash(&self) -> String {
        let metadata = self.metadata.to_string();
        sha256_fields([
            self.title.as_bytes(),
            self.url.as_bytes(),
            self.content.as_bytes(),
            metadata.as_bytes(),
        ])
    }

    /// Checks what the stores rely on: a non-empty url and an object for metadata.
    pub fn validate(&self) -> Result<()> {
        if self.url.trim().is_empty() {
            return Err(Error::Invalid(format!(
                "document {:?} has an empty url; every document needs one (a file:// url for local files)",
                self.title
            )));
        }
        if !self.metadata.is_object() {
            return Err(Error::Invalid(format!(
                "metadata of {} must be a JSON object, got {}",
                self.url, self.metadata
            )));
        }
        Ok(())
    }
}

/// The stable id of the document at `url` from `source`.
pub fn document_id(source: Source, url: &str) -> String {
    sha256_fields([source.as_str().as_bytes(), url.as_bytes()])[..32].to_string()
}

/// A stored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Document {
    /// Stable id (see [`NewDocument::id`]).
    pub id: String,
    /// Where it came from.
    pub source: Source,
    /// Its URL.
    pub url: String,
    /// Its title.
    pub title: String,
    /// Its content, as markdown.
    pub content: String,
    /// Extractor metadata, a JSON object.
    pub metadata: serde_json::Value,
    /// Hash of title, url, content and metadata.
    pub content_hash: String,
    /// The latest quality score, if scored.
    pub quality: Option<QualityScore>,
    /// When it was first stored.
    pub created_at: Timestamp,
    /// When its content last changed.
    pub updated_at: Timestamp,
}

/// Which documents to read. Empty means all.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocumentFilter {
    /// Only this source.
    pub source: Option<Source>,
    /// Only documents scored at least this (unscored documents are excluded when set).
    pub min_quality: Option<f64>,
    /// Only documents whose content changed at or after this time.
    pub changed_since: Option<Timestamp>,
}

/// What one upsert did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpsertOutcome {
    /// A new document.
    Inserted,
    /// An existing document whose content changed.
    Updated,
    /// An existing document with the same content hash: nothing written.
    Unchanged,
}

/// Counts of what a batch of upserts did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UpsertSummary {
    /// New documents.
    pub inserted: u64,
    /// Changed documents.
    pub updated: u64,
    /// Documents already stored as they are.
    pub unchanged: u64,
}

impl UpsertSummary {
    /// Counts one more outcome.
    pub fn add(&mut self, outcome: UpsertOutcome) {
        match outcome {
            UpsertOutcome::Inserted => self.inserted += 1,
            UpsertOutcome::Updated => self.updated += 1,
            UpsertOutcome::Unchanged => self.unchanged += 1,
        }
    }

    /// The outcome of a batch of exactly one upsert.
    pub fn into_single(self) -> UpsertOutcome {
        if self.inserted > 0 {
            UpsertOutcome::Inserted
        } else if self.updated > 0 {
            UpsertOutcome::Updated
        } else {
            UpsertOutcome::Unchanged
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(content: &str) -> NewDocument {
        NewDocument {
            source: Source::Crawl,
            url: "https://example.org/a".into(),
            title: "A".into(),
            content: content.into(),
            metadata: serde_json::json!({}),
            quality: None,
        }
    }

    #[test]
    fn id_depends_on_source_and_url_only() {
        assert_eq!(page("one").id(), page("two").id());
        let mut other = page("one");
        other.source = Source::File;
        assert_ne!(page("one").id(), other.id());
    }

    #[test]
    fn content_hash_follows_content() {
        assert_eq!(page("one").content_hash(), page("one").content_hash());
        assert_ne!(page("one").content_hash(), page("two").content_hash());
    }

    #[test]
    fn metadata_must_be_an_object() {
        let mut doc = page("x");
        doc.metadata = serde_json::json!([1]);
        assert!(doc.validate().is_err());
    }
}
