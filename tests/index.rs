//! The RAG index end to end: the real `feature-pipeline` chunks, embeds (all-MiniLM-L6-v2 on
//! candle) and indexes the sample corpus into qdrant-edge, finds the expected documents for the
//! shipped questions, reuses embeddings on a rerun, survives a build killed before the alias moves,
//! rolls back, and refuses an index built with another embedding model.
//!
//! The Qdrant server backend runs the same operations (sparse and hybrid search, point retrieval,
//! versions, alias) in `shared/tests/vectors_contract.rs` wherever `ENGRAM_QDRANT_URL` is set.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::Stores;
use engram_tests::binary;
use engram_tests::servers::samples;
use serde_json::Value;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2")
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn questions() -> String {
    samples().join("questions.tsv").display().to_string()
}

async fn corpus(stores: &Stores) {
    let site = samples().join("site");
    stores
        .ok(&[
            "extract",
            "notion",
            &samples().join("notion-export").display().to_string(),
        ])
        .await;
    stores
        .ok(&[
            "extract",
            "files",
            &site.join("articles").display().to_string(),
            &site.join("composting-guide.html").display().to_string(),
            &site.join("notes").display().to_string(),
        ])
        .await;
    stores.ok(&["filter"]).await;
}

async fn eval(stores: &Stores, model: &str) -> Value {
    let (ok, out, err) = try_eval(stores, model, &["--json"]).await;
    assert!(ok, "eval retrieval failed:\n{out}\n{err}");
    serde_json::from_str(&out).expect("eval --json")
}

/// `eval retrieval` that may fail: (success, stdout, stderr).
async fn try_eval(stores: &Stores, model: &str, extra: &[&str]) -> (bool, String, String) {
    let questions = questions();
    let mut args = vec![
        "eval",
        "retrieval",
        "--questions",
        &questions,
        "--embedding-model",
        model,
    ];
    args.extend_from_slice(extra);
    stores.pipeline(&args).await
}

async fn indexes(stores: &Stores) -> Value {
    serde_json::from_str(&stores.ok(&["indexes", "--json"]).await).expect("indexes --json")
}

fn number(out: &str, label: &str) -> u64 {
    // "… (325 embedded, 0 reused, …)"
    let before = out.split(label).next().unwrap_or_default();
    before
        .rsplit(|c: char| !c.is_ascii_digit())
        .find(|s| !s.is_empty())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no {label:?} count in:\n{out}"))
}

async fn index_the_sample_corpus(stores: Stores) {
    let model = model_dir().display().to_string();
    corpus(&stores).await;
    let (ok, _, err) = try_eval(&stores, &model, &[]).await;
    assert!(
        !ok && err.contains("feature-pipeline index"),
        "no index yet is named:\n{err}"
    );

    // First build: everything embedded; the shipped questions find their documents.
    let out = stores.ok(&["index", "--embedding-model", &model]).await;
    let chunks = number(&out, " chunks of");
    assert!(chunks > 100, "{out}");
    assert_eq!(number(&out, " embedded"), chunks, "{out}");
    assert!(out.contains("chunks/s"), "throughput is printed:\n{out}");
    let first = eval(&stores, &model).await;
    let hit_at_5 = first["metrics"]["hit_at_5"].as_f64().unwrap();
    assert!(hit_at_5 >= 0.9, "hit@5 {hit_at_5}: {first:#}");

    // A rerun embeds nothing and makes an identical version.
    let out = stores.ok(&["index", "--embedding-model", &model]).await;
    assert_eq!(number(&out, " embedded"), 0, "{out}");
    assert_eq!(number(&out, " reused"), chunks, "{out}");
    let second = eval(&stores, &model).await;
    assert_eq!(second["version"], 2);
    assert_eq!(first["questions"], second["questions"], "same content, same answers");

    // A build killed before the alias moves leaves version 2 live; the next build clears it up.
    let mut child = std::process::Command::new(binary("feature-pipeline"));
    child.args([
        "index",
        "--embedding-model",
        &model,
        "--chunk-tokens",
        "160",
        "--chunk-overlap",
        "32",
    ]);
    for (key, value) in stores.env() {
        child.env(key, value);
    }
    child.env("ENGRAM_LOG", "error").stdout(std::process::Stdio::null());
    let mut child = child.spawn().expect("start index");
    let building = stores.home.path().join("vectors/chunks_v3");
    let started = Instant::now();
    while !building.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the build ended before it could be killed"
        );
        assert!(started.elapsed() < Duration::from_secs(120), "version 3 never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    child.kill().expect("kill the build");
    child.wait().unwrap();
    let listed = indexes(&stores).await;
    assert_eq!(listed["live"], 2, "{listed:#}");
    assert_eq!(listed["versions"][0]["status"], "building");
    assert_eq!(
        eval(&stores, &model).await["questions"],
        first["questions"],
        "readers still get version 2"
    );

    // Rollback moves the alias to the previous ready version; --keep drops the rest.
    let out = stores.ok(&["index", "--rollback"]).await;
    assert!(out.contains("from v2 to v1"), "{out}");
    let out = stores.ok(&["index", "--embedding-model", &model, "--keep", "1"]).await;
    assert_eq!(number(&out, " embedded"), 0, "{out}");
    assert!(out.contains("dropped old versions"), "{out}");
    let listed = indexes(&stores).await;
    assert_eq!(listed["live"], 4, "{listed:#}");
    let statuses: Vec<(u64, String)> = listed["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_u64().unwrap(),
                v["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (4, "ready".into()),
            (3, "dropped".into()),
            (2, "dropped".into()),
            (1, "dropped".into())
        ]
    );

    // A reader with another embedding model is refused, naming both models.
    let other = tempfile::tempdir().unwrap();
    let other_model = other.path().join("other-embedder");
    copy_dir(&model_dir(), &other_model);
    let (ok, _, err) = try_eval(&stores, &other_model.display().to_string(), &[]).await;
    assert!(!ok, "a different embedding model must be refused");
    assert!(
        err.contains("all-MiniLM-L6-v2") && err.contains("other-embedder"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sample_corpus_into_qdrant_edge() {
    index_the_sample_corpus(Stores::sqlite()).await;
}

/// Every point of the live version: id → (chunk, vector). A dense search with the point count as
/// its limit returns them all; their vectors are then read by id.
async fn live_points(
    stores: &Stores,
) -> std::collections::BTreeMap<uuid::Uuid, (engram_shared::vectors::Chunk, Vec<f32>)> {
    use engram_shared::vectors::{ChunkFilter, QueryVector, SearchQuery};
    let config = engram_shared::config::StorageConfig::embedded(stores.home.path());
    let vectors = engram_shared::storage::open_vectors(&config).await.unwrap();
    let version = vectors.alias().await.unwrap().expect("a live version");
    let count = vectors.count(version).await.unwrap() as usize;
    let mut probe = vec![0.0f32; 384];
    probe[0] = 1.0;
    let query = SearchQuery {
        vector: QueryVector::Dense(probe),
        limit: count,
        filter: ChunkFilter::default(),
    };
    let ids: Vec<uuid::Uuid> = vectors
        .search(version, &query)
        .await
        .unwrap()
        .iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(ids.len(), count, "the search returned every point");
    vectors
        .get_points(version, &ids)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.chunk.id(), (p.chunk, p.vector)))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_shard_processes_and_a_merge_build_the_same_index_as_one_run() {
    let model = model_dir().display().to_string();
    let notes = samples().join("notes").display().to_string();
    let whole = Stores::sqlite();
    whole.ok(&["extract", "files", &notes]).await;
    whole.ok(&["filter"]).await;
    whole.ok(&["index", "--embedding-model", &model]).await;

    let sharded = Stores::sqlite();
    sharded.ok(&["extract", "files", &notes]).await;
    sharded.ok(&["filter"]).await;
    // The merge waits for the shards, which run as three processes at once.
    let merge_args = [
        "index",
        "--embedding-model",
        &model,
        "--merge-shards",
        "3",
        "--wait-secs",
        "300",
    ];
    let shard_names: Vec<String> = (0..3).map(|i| format!("{i}/3")).collect();
    let (merged, shards) = tokio::join!(
        sharded.pipeline(&merge_args),
        futures::future::join_all(shard_names.iter().map(|shard| sharded.pipeline_owned(vec![
            "index".into(),
            "--embedding-model".into(),
            model.clone(),
            "--shard".into(),
            shard.clone()
        ]))),
    );
    for (ok, out, err) in &shards {
        assert!(ok, "a shard failed:\n{out}\n{err}");
        assert!(out.contains("when every shard is done"), "{out}");
    }
    let (ok, out, err) = merged;
    assert!(ok, "the merge failed:\n{out}\n{err}");
    assert_eq!(
        number(&out, " embedded"),
        0,
        "the merge embedded nothing itself:\n{out}"
    );

    let (expected, got) = (live_points(&whole).await, live_points(&sharded).await);
    assert!(!expected.is_empty());
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same chunks"
    );
    for (id, (chunk, vector)) in &expected {
        let (other_chunk, other_vector) = &got[id];
        assert_eq!(chunk, other_chunk);
        let gap = vector
            .iter()
            .zip(other_vector)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(gap < 1e-4, "chunk {id}: vectors differ by {gap}");
    }
    let indexes: Value = serde_json::from_str(&sharded.ok(&["indexes", "--json"]).await).unwrap();
    assert_eq!(
        indexes["versions"].as_array().unwrap().len(),
        1,
        "the alias moved once: {indexes}"
    );

    // A merge whose shards never ran says which are missing.
    let (ok, _, err) = sharded
        .pipeline(&["index", "--embedding-model", &model, "--merge-shards", "4"])
        .await;
    assert!(!ok && err.contains("shards [0, 1, 2, 3] of 4"), "{err}");
}
