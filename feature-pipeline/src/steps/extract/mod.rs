//! The extract step: raw sources in, documents in the document store out.
//!
//! Each source has its own reader (`notion_export`, `notion_api`, `crawl`, `files`); all of them
//! hand `NewDocument`s to a [`DocumentWriter`], which scores each one (`steps::score`) and upserts
//! them in batches. Ids are stable (source + url) and unchanged content is not rewritten, so running
//! extract again over the same input writes nothing. A bad item (an unreadable file, a failed URL)
//! is reported as a [`Problem`] and the rest goes on; what is already stored is never touched by a
//! failure, because every batch is one transaction (SQLite) or a set of idempotent upserts (MongoDB).

pub mod crawl;
pub mod egress;
pub mod files;
pub mod html;
pub mod html_nesting;
pub mod markdown;
pub mod notion_api;
pub mod notion_blocks;
pub mod notion_export;
pub mod robots;
pub mod walk;

#[cfg(test)]
mod fuzz_tests;

use std::sync::Arc;

use engram_shared::documents::{DocumentStore, NewDocument, UpsertSummary};
use serde::Serialize;

use super::score;

/// Documents are written in batches of this many: one transaction each on SQLite.
const BATCH: usize = 64;

/// An input that could not be read, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Problem {
    /// The file, page or URL.
    pub item: String,
    /// What went wrong and what to do about it.
    pub reason: String,
}

impl Problem {
    /// A problem with `item`.
    pub fn new(item: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            reason: reason.into(),
        }
    }
}

/// What one extract did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExtractReport {
    /// Documents read from the source.
    pub documents: u64,
    /// New documents stored.
    pub inserted: u64,
    /// Stored documents whose content changed.
    pub updated: u64,
    /// Documents already stored as they are (nothing written).
    pub unchanged: u64,
    /// Items skipped on purpose (unsupported file types), not errors.
    pub skipped: u64,
    /// Items that could not be read.
    pub problems: Vec<Problem>,
}

impl ExtractReport {
    /// Adds a batch's upsert counts.
    fn add(&mut self, summary: UpsertSummary) {
        self.inserted += summary.inserted;
        self.updated += summary.updated;
        self.unchanged += summary.unchanged;
    }

    /// The report as the registry's step detail (counts, and problems up to a bound).
    pub fn detail(&self) -> serde_json::Value {
        serde_json::json!({
            "documents": self.documents,
            "inserted": self.inserted,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "skipped": self.skipped,
            "problems": self.problems.len(),
            "first_problems": self.problems.iter().take(50).collect::<Vec<_>>(),
        })
    }
}

/// Scores documents and writes them to the store in batches.
pub struct DocumentWriter {
    store: Arc<dyn DocumentStore>,
    pending: Vec<NewDocument>,
    /// What was written so far.
    pub report: ExtractReport,
}

impl DocumentWriter {
    /// A writer into `store`.
    pub fn new(store: Arc<dyn DocumentStore>) -> Self {
        Self {
            store,
            pending: Vec::with_capacity(BATCH),
            report: ExtractReport::default(),
        }
    }

    /// Queues one document (scoring it), writing a batch when one is full.
    pub async fn push(&mut self, mut document: NewDocument) -> anyhow::Result<()> {
        if let Err(err) = document.validate() {
            self.report.problems.push(Problem::new(&document.url, err.to_string()));
            return Ok(());
        }
        document.quality = Some(score::score(&document.title, &document.content).quality());
        self.report.documents += 1;
        self.pending.push(document);
        if self.pending.len() >= BATCH {
            self.flush().await?;
        }
        Ok(())
    }

    /// Notes a problem with one item.
    pub fn problem(&mut self, problem: Problem) {
        tracing::warn!(item = %problem.item, "{}", problem.reason);
        self.report.problems.push(problem);
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.pending);
        let summary = self.store.upsert_many(batch).await?;
        self.report.add(summary);
        Ok(())
    }

    /// Writes what is queued and returns the report.
    pub async fn finish(mut self) -> anyhow::Result<ExtractReport> {
        self.flush().await?;
        Ok(self.report)
    }
}

/// Decodes file or page bytes as UTF-8, or says what to do.
pub fn utf8(bytes: Vec<u8>, what: &str) -> Result<String, Problem> {
    String::from_utf8(bytes).map_err(|err| {
        Problem::new(
            what,
            format!(
                "not valid UTF-8 (invalid byte at offset {}): convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) and extract again",
                err.utf8_error().valid_up_to()
            ),
        )
    })
}

/// The message for an item over the size limit.
pub fn too_large(size: u64, limit: u64) -> String {
    format!(
        "{:.1} MiB is over the {:.1} MiB limit: raise --max-bytes (ENGRAM_MAX_DOCUMENT_BYTES) to read it",
        size as f64 / 1048576.0,
        limit as f64 / 1048576.0
    )
}
