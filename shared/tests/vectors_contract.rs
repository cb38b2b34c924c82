//! The vector-index contract: qdrant-edge and the Qdrant server pass this same suite.

mod common;

use std::sync::Arc;

use engram_shared::Error;
use engram_shared::documents::Source;
use engram_shared::vectors::edge::EdgeVectorIndex;
use engram_shared::vectors::hybrid::{self, Fusion, HybridQuery};
use engram_shared::vectors::qdrant::QdrantVectorIndex;
use engram_shared::vectors::sparse::encode_query;
use engram_shared::vectors::{
    Chunk, ChunkFilter, ChunkPoint, Distance, IndexSpec, QueryVector, SearchQuery, SparseVector, VectorIndex,
};

const DIM: usize = 8;
const SPEC: IndexSpec = IndexSpec {
    dimension: DIM,
    distance: Distance::Cosine,
};

/// A unit vector pointing mostly along axis `axis`, slightly tilted by `tilt`.
fn vector(axis: usize, tilt: f32) -> Vec<f32> {
    let mut v = [0.0; DIM];
    v[axis % DIM] = 1.0;
    v[(axis + 1) % DIM] = tilt;
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter().map(|x| x / norm).collect()
}

fn point(doc: usize, position: u32, source: Source, axis: usize, tilt: f32) -> ChunkPoint {
    ChunkPoint {
        chunk: Chunk {
            doc_id: format!("doc-{doc}"),
            position,
            source,
            title: format!("Document {doc}"),
            url: format!("https://example.org/{doc}"),
            heading_path: vec!["Intro".into(), format!("Part {position}")],
            text: format!("chunk {position} of document {doc}"),
        },
        vector: vector(axis, tilt),
        // Lexical terms: the document's own word, a word per position, one of its own, and one all
        // chunks share.
        sparse: encode_query(&format!("word{doc} place{position} chunk{doc}x{position} shared")),
    }
}

fn corpus() -> Vec<ChunkPoint> {
    let mut points = Vec::new();
    for doc in 0..6 {
        let source = if doc % 2 == 0 { Source::Notion } else { Source::Crawl };
        for position in 0..3 {
            points.push(point(doc, position, source, doc, 0.1 * position as f32));
        }
    }
    points
}

fn query(axis: usize, limit: usize, filter: ChunkFilter) -> SearchQuery {
    SearchQuery {
        vector: QueryVector::Dense(vector(axis, 0.0)),
        limit,
        filter,
    }
}

fn lexical(text: &str, limit: usize, filter: ChunkFilter) -> SearchQuery {
    SearchQuery {
        vector: QueryVector::Sparse(encode_query(text)),
        limit,
        filter,
    }
}

/// Builds a complete version: create, upsert, seal.
async fn build(index: &dyn VectorIndex, version: u64, points: Vec<ChunkPoint>) {
    index.create_version(version, SPEC).await.expect("create version");
    index.upsert(version, points).await.expect("upsert");
    index.seal(version).await.expect("seal");
}

async fn a_built_version_finds_the_nearest_chunks(index: &dyn VectorIndex, v: u64) {
    build(index, v, corpus()).await;
    assert_eq!(index.count(v).await.unwrap(), 18);
    let hits = index.search(v, &query(2, 3, ChunkFilter::default())).await.unwrap();
    assert_eq!(hits.len(), 3);
    assert!(hits.iter().all(|h| h.chunk.doc_id == "doc-2"), "{hits:?}");
    assert_eq!(hits[0].chunk.position, 0, "the untilted chunk is nearest");
    assert!(hits[0].score >= hits[1].score && hits[1].score >= hits[2].score);
    let expected = corpus()
        .into_iter()
        .find(|p| p.chunk.doc_id == "doc-2" && p.chunk.position == 0)
        .unwrap();
    assert_eq!(hits[0].chunk, expected.chunk, "payload round-trips");
    assert_eq!(hits[0].id, expected.chunk.id());
}

async fn sparse_search_scores_by_dot_product(index: &dyn VectorIndex, v: u64) {
    let hits = index
        .search(v, &lexical("word3 place1", 4, ChunkFilter::default()))
        .await
        .unwrap();
    assert_eq!(hits[0].chunk.doc_id, "doc-3", "{hits:?}");
    assert_eq!(hits[0].chunk.position, 1, "both terms beat one");
    assert!(
        (hits[0].score - 2.0).abs() < 1e-5,
        "dot product of two shared terms: {}",
        hits[0].score
    );
    assert!(hits[1..].iter().all(|h| (h.score - 1.0).abs() < 1e-5));
    let crawl = ChunkFilter {
        source: Some(Source::Crawl),
        doc_ids: vec![],
    };
    let filtered = index.search(v, &lexical("shared", 50, crawl)).await.unwrap();
    assert!(!filtered.is_empty() && filtered.iter().all(|h| h.chunk.source == Source::Crawl));
    assert!(
        index
            .search(v, &lexical("", 5, ChunkFilter::default()))
            .await
            .unwrap()
            .is_empty(),
        "a query without terms finds nothing"
    );
}

async fn hybrid_search_fuses_both_lists(index: &dyn VectorIndex, v: u64) {
    // Dense points at document 2; the one word points at document 4's chunk 1: both lead the fused list.
    let query = HybridQuery::new("chunk4x1", vector(2, 0.0), 3, ChunkFilter::default());
    let hits = hybrid::search(index, v, &query, &Fusion::default()).await.unwrap();
    let top: Vec<(&str, u32)> = hits
        .iter()
        .map(|h| (h.chunk.doc_id.as_str(), h.chunk.position))
        .collect();
    assert!(
        top[..2].contains(&("doc-2", 0)) && top[..2].contains(&("doc-4", 1)),
        "{top:?}"
    );
    let dense_only = Fusion {
        sparse_weight: 0.0,
        ..Fusion::default()
    };
    let hits = hybrid::search(index, v, &query, &dense_only).await.unwrap();
    assert!(hits.iter().all(|h| h.chunk.doc_id == "doc-2"), "{hits:?}");
}

async fn stored_points_come_back_with_their_vectors(index: &dyn VectorIndex, v: u64) {
    let corpus = corpus();
    let wanted: Vec<_> = corpus
        .iter()
        .take(3)
        .map(|p| p.chunk.id())
        .chain([uuid::Uuid::nil()])
        .collect();
    let mut points = index.get_points(v, &wanted).await.unwrap();
    assert_eq!(points.len(), 3, "unknown ids are left out");
    points.sort_by_key(|p| (p.chunk.doc_id.clone(), p.chunk.position));
    for (got, expected) in points.iter().zip(corpus.iter().take(3)) {
        assert_eq!(got.chunk, expected.chunk);
        let close = got
            .vector
            .iter()
            .zip(&expected.vector)
            .all(|(a, b)| (a - b).abs() < 1e-5);
        assert!(close, "{:?} vs {:?}", got.vector, expected.vector);
        let sorted: SparseVector = expected.sparse.clone();
        assert_eq!(got.sparse, sorted);
    }
}

async fn filters_restrict_by_source_and_document(index: &dyn VectorIndex, v: u64) {
    let crawl_only = ChunkFilter {
        source: Some(Source::Crawl),
        doc_ids: vec![],
    };
    let hits = index.search(v, &query(2, 5, crawl_only)).await.unwrap();
    assert!(!hits.is_empty());
    assert!(hits.iter().all(|h| h.chunk.source == Source::Crawl), "{hits:?}");

    let two_docs = ChunkFilter {
        source: None,
        doc_ids: vec!["doc-4".into(), "doc-5".into()],
    };
    let hits = index.search(v, &query(0, 10, two_docs)).await.unwrap();
    assert_eq!(hits.len(), 6);
    assert!(
        hits.iter()
            .all(|h| h.chunk.doc_id == "doc-4" || h.chunk.doc_id == "doc-5")
    );
}

async fn reupserting_points_is_idempotent_and_versions_are_built_once(index: &dyn VectorIndex, v: u64) {
    index.create_version(v, SPEC).await.unwrap();
    index.upsert(v, corpus()).await.unwrap();
    index.upsert(v, corpus()).await.unwrap();
    assert_eq!(index.count(v).await.unwrap(), 18, "stable chunk ids: no duplicates");

    let wrong = vec![ChunkPoint {
        vector: vec![1.0; DIM + 1],
        ..corpus().remove(0)
    }];
    let refused = index.upsert(v, wrong).await;
    assert!(matches!(refused, Err(Error::Invalid(_))), "got {refused:?}");
    assert_eq!(index.count(v).await.unwrap(), 18);

    let unsealed_alias = index.set_alias(v).await;
    assert!(
        matches!(unsealed_alias, Err(Error::Conflict(_))),
        "an unsealed version cannot go live: {unsealed_alias:?}"
    );
    index.seal(v).await.unwrap();
    let again = index.create_version(v, SPEC).await;
    assert!(matches!(again, Err(Error::Conflict(_))), "got {again:?}");
}

async fn the_alias_moves_in_one_step_and_guards_the_live_version(index: &dyn VectorIndex, v1: u64, v2: u64) {
    assert_eq!(index.alias().await.unwrap(), None);
    assert!(matches!(
        index.search_live(&query(0, 1, ChunkFilter::default())).await,
        Err(Error::NotFound { .. })
    ));
    index.set_alias(v1).await.unwrap();
    assert_eq!(index.alias().await.unwrap(), Some(v1));
    let live = index.search_live(&query(1, 1, ChunkFilter::default())).await.unwrap();
    assert_eq!(live[0].chunk.doc_id, "doc-1");

    index.set_alias(v2).await.unwrap();
    assert_eq!(index.alias().await.unwrap(), Some(v2));
    let refused = index.drop_version(v2).await;
    assert!(
        matches!(refused, Err(Error::Conflict(_))),
        "the live version cannot be dropped: {refused:?}"
    );
    index.drop_version(v1).await.unwrap();
    assert!(!index.versions().await.unwrap().contains(&v1));
    assert!(index.versions().await.unwrap().contains(&v2));
    assert!(matches!(index.set_alias(v1).await, Err(Error::NotFound { .. })));
    assert!(matches!(index.drop_version(v1).await, Err(Error::NotFound { .. })));
}

async fn vector_contract(index: &dyn VectorIndex, base: u64) {
    println!("vector contract: running against {}", index.backend());
    a_built_version_finds_the_nearest_chunks(index, base + 1).await;
    filters_restrict_by_source_and_document(index, base + 1).await;
    sparse_search_scores_by_dot_product(index, base + 1).await;
    hybrid_search_fuses_both_lists(index, base + 1).await;
    stored_points_come_back_with_their_vectors(index, base + 1).await;
    reupserting_points_is_idempotent_and_versions_are_built_once(index, base + 2).await;
    the_alias_moves_in_one_step_and_guards_the_live_version(index, base + 1, base + 2).await;
    common::report(&format!("PASSED: vector contract on {}", index.backend()));
}

/// Which backend a helper child opens, from the parent's environment.
async fn open_for_child() -> Arc<dyn VectorIndex> {
    match std::env::var("ENGRAM_TEST_CHILD_QDRANT").ok() {
        Some(url) => Arc::new(QdrantVectorIndex::connect(&url, None).await.unwrap()),
        None => Arc::new(EdgeVectorIndex::open(std::env::var("ENGRAM_TEST_CHILD_DIR").unwrap().as_ref()).unwrap()),
    }
}

/// Helper child: starts building version `ENGRAM_TEST_CHILD_VERSION`, says so, and waits to be killed.
#[tokio::test]
async fn child_builds_a_version_until_killed() {
    if common::child_role().as_deref() != Some("build-until-killed") {
        return; // Only meaningful as a child of the crash test below.
    }
    let index = open_for_child().await;
    let version: u64 = std::env::var("ENGRAM_TEST_CHILD_VERSION").unwrap().parse().unwrap();
    index.create_version(version, SPEC).await.unwrap();
    index.upsert(version, corpus()[..9].to_vec()).await.unwrap();
    println!("HALF-BUILT");
    tokio::time::sleep(std::time::Duration::from_secs(600)).await;
}

/// A build killed before the alias moves leaves the previous version live and searchable, and the
/// next build goes on with a fresh version.
async fn a_killed_build_leaves_the_previous_version_live(index: &dyn VectorIndex, env: Vec<(&str, String)>, base: u64) {
    build(index, base + 1, corpus()).await;
    index.set_alias(base + 1).await.unwrap();

    let mut env = env;
    env.push(("ENGRAM_TEST_CHILD_VERSION", (base + 2).to_string()));
    let mut child = common::spawn_child("child_builds_a_version_until_killed", "build-until-killed", &env);
    common::wait_for_line(&mut child, "HALF-BUILT");
    child.kill().expect("SIGKILL the builder");
    child.wait().unwrap();

    assert_eq!(index.alias().await.unwrap(), Some(base + 1), "the alias never moved");
    let live = index.search_live(&query(3, 1, ChunkFilter::default())).await.unwrap();
    assert_eq!(live[0].chunk.doc_id, "doc-3");
    assert!(
        index.versions().await.unwrap().contains(&(base + 2)),
        "the leftover is visible"
    );
    assert!(
        matches!(index.set_alias(base + 2).await, Err(Error::Conflict(_))),
        "and cannot go live"
    );

    index.drop_version(base + 2).await.expect("the leftover can be dropped");
    build(index, base + 3, corpus()).await;
    index.set_alias(base + 3).await.unwrap();
    assert_eq!(index.count(base + 3).await.unwrap(), 18);
    common::report(&format!(
        "PASSED: {}: a build killed before the alias moved left the previous version live",
        index.backend()
    ));
}

#[tokio::test]
async fn qdrant_edge_passes_the_vector_contract() {
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeVectorIndex::open(dir.path()).unwrap();
    vector_contract(&index, 0).await;
}

#[tokio::test]
async fn qdrant_edge_survives_a_killed_build() {
    if common::child_role().is_some() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let index = EdgeVectorIndex::open(dir.path()).unwrap();
    let env = vec![("ENGRAM_TEST_CHILD_DIR", dir.path().display().to_string())];
    a_killed_build_leaves_the_previous_version_live(&index, env, 0).await;
}

#[tokio::test]
async fn qdrant_edge_versions_are_readable_from_a_second_process() {
    if common::child_role().is_some() {
        return;
    }
    // This process keeps version 1 open; a second handle (as another process would) still reads it.
    let dir = tempfile::tempdir().unwrap();
    let writer = EdgeVectorIndex::open(dir.path()).unwrap();
    build(&writer, 1, corpus()).await;
    writer.set_alias(1).await.unwrap();
    let _held = writer.search_live(&query(0, 1, ChunkFilter::default())).await.unwrap();
    let reader = EdgeVectorIndex::open(dir.path()).unwrap();
    let hits = reader.search_live(&query(4, 2, ChunkFilter::default())).await.unwrap();
    assert_eq!(hits[0].chunk.doc_id, "doc-4");
    assert!(
        matches!(reader.upsert(1, corpus()).await, Err(Error::Conflict(_))),
        "sealed versions are immutable"
    );

    // The reader's private copy is locked: a third process starting up leaves it alone, and only
    // copies whose process is gone are removed.
    let readers = dir.path().join(".readers");
    let copies = || {
        std::fs::read_dir(&readers)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".lock"))
            .collect::<Vec<_>>()
    };
    assert_eq!(copies().len(), 1, "the reader reads a private copy");
    std::fs::create_dir(readers.join("chunks_v1-99999-dead")).unwrap();
    std::fs::write(readers.join("chunks_v1-99999-dead.lock"), b"").unwrap();
    std::fs::create_dir(readers.join("chunks_v1-legacy")).unwrap();
    let third = EdgeVectorIndex::open(dir.path()).unwrap();
    assert_eq!(copies().len(), 1, "only the abandoned copies went: {:?}", copies());
    let hits = reader.search_live(&query(4, 2, ChunkFilter::default())).await.unwrap();
    assert_eq!(hits[0].chunk.doc_id, "doc-4", "the live reader's copy is intact");

    // A reader that no longer serves the version releases it: the copy goes.
    reader.release(1);
    assert!(copies().is_empty(), "{:?}", copies());
    assert!(
        std::fs::read_dir(&readers).unwrap().next().is_none(),
        "lock files go too"
    );
    drop(third);
}

/// Qdrant collections are global to the server: each run uses version numbers no other run uses.
fn qdrant_base() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    (nanos % 1_000_000_000) as u64 * 10
}

async fn clear_qdrant_alias(url: &str) {
    // The alias is global to the server: start from none, as the suite expects.
    let client = qdrant_client::Qdrant::from_url(url).build().unwrap();
    let _ = client.delete_alias(engram_shared::vectors::ALIAS).await;
}

/// One test for the server, so the two halves never race for its one global alias.
#[tokio::test]
async fn qdrant_server_passes_the_vector_contract() {
    if common::child_role().is_some() {
        return;
    }
    let Some(url) = common::backend_url("qdrant", "ENGRAM_QDRANT_URL") else {
        return;
    };
    let index = QdrantVectorIndex::connect(&url, None).await.unwrap();
    clear_qdrant_alias(&url).await;
    vector_contract(&index, qdrant_base()).await;
    clear_qdrant_alias(&url).await;
    let env = vec![("ENGRAM_TEST_CHILD_QDRANT", url.clone())];
    a_killed_build_leaves_the_previous_version_live(&index, env, qdrant_base()).await;
}
