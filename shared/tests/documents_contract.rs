//! The document-store contract: every backend passes this same suite.

mod common;

use engram_shared::Error;
use engram_shared::documents::mongo::MongoDocumentStore;
use engram_shared::documents::sqlite::SqliteDocumentStore;
use engram_shared::documents::{
    DocumentFilter, DocumentStore, NewDocument, QualityScore, Source, UpsertOutcome, UpsertSummary,
};
use futures::TryStreamExt;
use serde_json::json;

fn page(source: Source, n: usize, content: &str) -> NewDocument {
    NewDocument {
        source,
        url: format!("https://example.org/{source}/{n}"),
        title: format!("Page {n}"),
        content: content.to_string(),
        metadata: json!({ "n": n, "tags": ["a", "b"], "nested": { "flag": true, "ratio": 0.5 } }),
        quality: None,
    }
}

async fn all(store: &dyn DocumentStore, filter: DocumentFilter) -> Vec<engram_shared::documents::Document> {
    store.stream(&filter).try_collect().await.expect("stream documents")
}

async fn reupserting_the_same_documents_changes_nothing(store: &dyn DocumentStore) {
    let docs: Vec<_> = (0..3).map(|n| page(Source::Notion, n, "hello")).collect();
    let first = store.upsert_many(docs.clone()).await.expect("first upsert");
    assert_eq!(
        first,
        UpsertSummary {
            inserted: 3,
            updated: 0,
            unchanged: 0
        }
    );
    let before = all(store, DocumentFilter::default()).await;

    let second = store.upsert_many(docs).await.expect("second upsert");
    assert_eq!(
        second,
        UpsertSummary {
            inserted: 0,
            updated: 0,
            unchanged: 3
        }
    );
    let after = all(store, DocumentFilter::default()).await;
    assert_eq!(before, after, "an unchanged re-upsert must not touch stored documents");
    assert_eq!(store.count(&DocumentFilter::default()).await.unwrap(), 3);
}

async fn a_changed_document_is_updated_not_duplicated(store: &dyn DocumentStore) {
    let original = page(Source::Notion, 0, "hello");
    let id = original.id();
    let stored = store.get(&id).await.unwrap().expect("stored");
    let score = QualityScore {
        score: 0.8,
        scorer: "heuristic".into(),
        version: "1".into(),
        reason: None,
    };
    store.set_quality(&id, &score).await.unwrap();

    let changed = page(Source::Notion, 0, "hello, world");
    assert_eq!(store.upsert(changed.clone()).await.unwrap(), UpsertOutcome::Updated);
    assert_eq!(
        store.count(&DocumentFilter::default()).await.unwrap(),
        3,
        "no duplicate"
    );
    let updated = store.get(&id).await.unwrap().expect("still stored");
    assert_eq!(updated.content, "hello, world");
    assert_eq!(updated.content_hash, changed.content_hash());
    assert_eq!(updated.created_at, stored.created_at, "created_at survives an update");
    assert!(updated.updated_at >= stored.updated_at);
    assert_eq!(
        updated.quality, None,
        "a quality score belongs to the content it scored"
    );
}

async fn documents_round_trip_every_field(store: &dyn DocumentStore) {
    let doc = page(
        Source::Crawl,
        7,
        "# Title\n\nSome *markdown* with ünïcödé and \"quotes\".",
    );
    let mut with_score = doc.clone();
    with_score.quality = Some(QualityScore {
        score: 0.25,
        scorer: "heuristic".into(),
        version: "2".into(),
        reason: Some("kept with the document, ünïcödé too".into()),
    });
    assert_eq!(store.upsert(with_score.clone()).await.unwrap(), UpsertOutcome::Inserted);
    let stored = store.get(&doc.id()).await.unwrap().expect("stored");
    assert_eq!(stored.id, doc.id());
    assert_eq!(stored.source, Source::Crawl);
    assert_eq!(stored.url, doc.url);
    assert_eq!(stored.title, doc.title);
    assert_eq!(stored.content, doc.content);
    assert_eq!(stored.metadata, doc.metadata);
    assert_eq!(stored.quality, with_score.quality);
    assert_eq!(stored.created_at, stored.updated_at);
    assert!(store.get("no-such-id").await.unwrap().is_none());
}

async fn quality_updates_touch_only_the_score(store: &dyn DocumentStore) {
    let id = page(Source::Crawl, 7, "").id();
    let before = store.get(&id).await.unwrap().expect("stored");
    let score = QualityScore {
        score: 0.9,
        scorer: "llm-judge".into(),
        version: "1".into(),
        reason: Some("Specific, well-organised notes.".into()),
    };
    store.set_quality(&id, &score).await.unwrap();
    let after = store.get(&id).await.unwrap().expect("stored");
    assert_eq!(after.quality, Some(score.clone()));
    assert_eq!(after.updated_at, before.updated_at, "scoring is not a content change");
    assert_eq!(after.content_hash, before.content_hash);

    let missing = store.set_quality("no-such-id", &score).await;
    assert!(matches!(missing, Err(Error::NotFound { .. })), "got {missing:?}");
}

async fn filters_select_by_source_quality_and_change_time(store: &dyn DocumentStore) {
    let notion = DocumentFilter {
        source: Some(Source::Notion),
        ..Default::default()
    };
    assert_eq!(store.count(&notion).await.unwrap(), 3);
    assert!(all(store, notion).await.iter().all(|d| d.source == Source::Notion));

    let good = DocumentFilter {
        min_quality: Some(0.5),
        ..Default::default()
    };
    let good_docs = all(store, good.clone()).await;
    assert_eq!(good_docs.len(), 1, "only the crawl page is scored >= 0.5");
    assert_eq!(store.count(&good).await.unwrap(), 1);

    // Stored times have millisecond precision and `changed_since` includes its own instant: the
    // cutoff falls in a millisecond of its own, after every earlier write and before the new one.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let cutoff = engram_shared::time::now();
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    store.upsert(page(Source::File, 1, "new file")).await.unwrap();
    let recent = DocumentFilter {
        changed_since: Some(cutoff),
        ..Default::default()
    };
    let recent_docs = all(store, recent.clone()).await;
    assert_eq!(recent_docs.len(), 1, "{recent_docs:?}");
    assert_eq!(recent_docs[0].source, Source::File);
    assert_eq!(store.count(&recent).await.unwrap(), 1);
}

async fn streams_return_every_document_once_in_id_order(store: &dyn DocumentStore) {
    // More than a few pages, so pagination is exercised.
    let many: Vec<_> = (100..700).map(|n| page(Source::Crawl, n, "bulk")).collect();
    let summary = store.upsert_many(many).await.unwrap();
    assert_eq!(summary.inserted, 600);
    let docs = all(
        store,
        DocumentFilter {
            source: Some(Source::Crawl),
            ..Default::default()
        },
    )
    .await;
    assert_eq!(docs.len(), 601);
    let ids: Vec<_> = docs.iter().map(|d| d.id.clone()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(ids, sorted, "ids ascending and unique");
}

async fn bad_documents_are_refused_and_nothing_is_written(store: &dyn DocumentStore) {
    let before = store.count(&DocumentFilter::default()).await.unwrap();
    let mut bad = page(Source::File, 99, "x");
    bad.url = "  ".into();
    let refused = store.upsert(bad).await;
    assert!(
        matches!(&refused, Err(Error::Invalid(m)) if m.contains("empty url")),
        "got {refused:?}"
    );
    let mut bad = page(Source::File, 98, "x");
    bad.metadata = json!("not an object");
    assert!(matches!(store.upsert(bad).await, Err(Error::Invalid(_))));
    assert_eq!(store.count(&DocumentFilter::default()).await.unwrap(), before);
}

async fn concurrent_upserts_of_a_new_document_store_it_once(store: &dyn DocumentStore) {
    let before = store.count(&DocumentFilter::default()).await.unwrap();
    let doc = page(Source::File, 4242, "raced");
    let (a, b) = futures::join!(store.upsert(doc.clone()), store.upsert(doc.clone()));
    let mut outcomes = vec![a.unwrap(), b.unwrap()];
    outcomes.sort_by_key(|o| format!("{o:?}"));
    assert_eq!(outcomes, vec![UpsertOutcome::Inserted, UpsertOutcome::Unchanged]);
    assert_eq!(store.count(&DocumentFilter::default()).await.unwrap(), before + 1);
}

async fn document_contract(store: &dyn DocumentStore) {
    println!("document contract: running against {}", store.backend());
    reupserting_the_same_documents_changes_nothing(store).await;
    a_changed_document_is_updated_not_duplicated(store).await;
    documents_round_trip_every_field(store).await;
    quality_updates_touch_only_the_score(store).await;
    filters_select_by_source_quality_and_change_time(store).await;
    streams_return_every_document_once_in_id_order(store).await;
    bad_documents_are_refused_and_nothing_is_written(store).await;
    concurrent_upserts_of_a_new_document_store_it_once(store).await;
    common::report(&format!("PASSED: document contract on {}", store.backend()));
}

#[tokio::test]
async fn sqlite_passes_the_document_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteDocumentStore::open(&dir.path().join("documents.sqlite"))
        .await
        .unwrap();
    document_contract(&store).await;
}

#[tokio::test]
async fn mongodb_passes_the_document_contract() {
    let Some(uri) = common::backend_url("mongodb", "ENGRAM_TEST_MONGODB_URI") else {
        return;
    };
    let database = common::unique_name("engram_test");
    let store = MongoDocumentStore::connect(&uri, &database).await.unwrap();
    document_contract(&store).await;
}
