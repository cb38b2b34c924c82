//! The document store: every raw document the pipeline extracted, in one standard form.
//!
//! Extract writes here; every later pipeline step reads from here. A document's id is stable (a
//! hash of its source and url), so extracting the same page twice finds the same record, and an
//! upsert whose content hash is unchanged writes nothing. Reads stream: a corpus never has to fit
//! in memory.

mod model;
pub mod mongo;
pub mod sqlite;

pub use model::{
    Document, DocumentFilter, NewDocument, QualityScore, Source, UpsertOutcome, UpsertSummary, document_id,
};

use std::future::Future;

use async_trait::async_trait;
use futures::stream::{self, BoxStream, StreamExt};

use crate::Result;

/// A stream of documents read from a store.
pub type DocumentStream<'a> = BoxStream<'a, Result<Document>>;

/// Where documents are kept. Every backend passes the same contract suite
/// (`shared/tests/documents_contract.rs`).
#[async_trait]
pub trait DocumentStore: Send + Sync {
    /// The backend's name, for logs and messages (`sqlite`, `mongodb`).
    fn backend(&self) -> &'static str;

    /// Inserts or updates one document by its id. A document whose content hash matches the stored
    /// one is left untouched (its timestamps too); a changed one is replaced and loses its quality
    /// score, which belonged to the old content.
    async fn upsert(&self, document: NewDocument) -> Result<UpsertOutcome>;

    /// Upserts many documents, returning how many were inserted, updated and unchanged.
    async fn upsert_many(&self, documents: Vec<NewDocument>) -> Result<UpsertSummary> {
        let mut summary = UpsertSummary::default();
        for document in documents {
            summary.add(self.upsert(document).await?);
        }
        Ok(summary)
    }

    /// One document by id.
    async fn get(&self, id: &str) -> Result<Option<Document>>;

    /// Documents matching `filter`, ordered by id, streamed from the backend.
    fn stream<'a>(&'a self, filter: &DocumentFilter) -> DocumentStream<'a>;

    /// How many documents match `filter`.
    async fn count(&self, filter: &DocumentFilter) -> Result<u64>;

    /// Records a quality score on a document without touching its content or `updated_at`.
    /// Fails with [`crate::Error::NotFound`] when no document has this id.
    async fn set_quality(&self, id: &str, score: &QualityScore) -> Result<()>;
}

/// Turns a "page after this id" query into a stream of documents. Keyset pagination keeps memory
/// bounded by one page and holds no read transaction or cursor open between pages.
pub(crate) fn paginate<'a, F, Fut>(fetch_page: F) -> DocumentStream<'a>
where
    F: Fn(Option<String>) -> Fut + Send + Sync + 'a,
    Fut: Future<Output = Result<Vec<Document>>> + Send + 'a,
{
    struct State {
        after: Option<String>,
        done: bool,
    }
    let start = State {
        after: None,
        done: false,
    };
    let pages = stream::unfold((start, fetch_page), |(mut state, fetch_page)| async move {
        if state.done {
            return None;
        }
        match fetch_page(state.after.take()).await {
            Ok(page) => {
                state.done = page.is_empty();
                state.after = page.last().map(|d| d.id.clone());
                Some((Ok(page), (state, fetch_page)))
            }
            Err(err) => {
                state.done = true;
                Some((Err(err), (state, fetch_page)))
            }
        }
    });
    pages
        .flat_map(|page| match page {
            Ok(docs) => stream::iter(docs.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(err) => stream::iter(vec![Err(err)]),
        })
        .boxed()
}
