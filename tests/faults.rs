//! Faults: `feature-pipeline run` (extract, filter, dataset, index, train) SIGKILLed at ten random
//! points and rerun after each kill ends with the same documents, dataset rows, index points and
//! trained model as an uninterrupted run; a reader polling the index alias meanwhile never sees a
//! partial index; and the killed runs show as `interrupted`, not `running`.
//!
//! The kill points are drawn from a seeded generator over the uninterrupted run's duration, so they
//! land in every stage (the printed log names the step each kill interrupted). The model is the
//! tiny random base of `common`, so the train stage takes seconds in a debug build.
//!
//! Stores stopped mid-run (PostgreSQL, the MongoDB server, the S3 server) and the service with its
//! registry gone are `tests/python/test_store_faults.py`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::Stores;
use engram_shared::registry::{IndexStatus, Registry};
use engram_shared::vectors::edge::EdgeVectorIndex;
use engram_shared::vectors::{QueryVector, SearchQuery, VectorIndex};
use engram_tests::binary;
use engram_tests::servers::samples;
use rand::{Rng, SeedableRng};
use serde_json::Value;

const KILLS: usize = 10;

/// The whole pipeline, small: six notes, one short summary each, the tiny model trained briefly.
fn config(stores: &Stores) -> String {
    let path = stores.home.path().join("pipeline.toml");
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/SmolLM2-135M-Instruct.Q4_1.gguf");
    std::fs::write(
        &path,
        format!(
            "[extract.files]\npaths = [{notes:?}]\n\n[filter]\n\n\
             [dataset]\nteacher = \"local\"\nteacher_model_path = {model:?}\nsummaries = 1\nmax_tokens = 24\n\
             max_document_chars = 600\nqa_chunks_per_document = 0\nvalidation = 0.2\ntest = 0.34\nseed = 3\n\n\
             [index]\n\n\
             [train]\nbase = \"1\"\nepochs = 3\nbatch_size = 2\nlearning_rate = 3e-2\ncheckpoint_every = 1\n\
             threads = 1\neval_max_tokens = 8\nname = \"tiny-lora\"\n",
            notes = samples().join("notes").display().to_string(),
            model = model.display().to_string(),
        ),
    )
    .expect("write the pipeline config");
    path.display().to_string()
}

/// A fresh home with the tiny base registered and promoted (what `train` starts from).
async fn prepared() -> Stores {
    let stores = Stores::sqlite();
    common::register_tiny_model(&stores).await;
    stores
}

fn run_command(stores: &Stores, config: &str) -> Command {
    let mut command = Command::new(binary("feature-pipeline"));
    command
        .args(["run", "--config", config])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ENGRAM_") || k.starts_with("AWS_")) {
        command.env_remove(key);
    }
    for (key, value) in stores.env() {
        command.env(key, value);
    }
    command
}

/// What a finished home holds, in comparable form.
#[derive(Debug, PartialEq)]
struct Outcome {
    /// Document id → content hash.
    documents: BTreeMap<String, String>,
    /// Dataset versions published, and the latest one's files.
    dataset_versions: usize,
    dataset_files: BTreeMap<String, String>,
    /// Live index version's points: chunk id → (document, position, text).
    points: BTreeMap<String, (String, u32, String)>,
    /// Ready index versions.
    ready_indexes: usize,
    /// The trained model's name, its metrics and its adapter's bytes' hash.
    trained: (String, String, String),
}

async fn outcome(stores: &Stores) -> Outcome {
    let documents = stores
        .documents()
        .await
        .into_iter()
        .map(|d| (d.id.clone(), d.content_hash.clone()))
        .collect();

    let listed: Value = serde_json::from_str(&stores.ok(&["datasets", "--json"]).await).expect("datasets --json");
    let dataset_versions = listed.as_array().map_or(0, Vec::len);
    let export = stores.home.path().join(format!("export-{}", rand::random::<u32>()));
    stores
        .ok(&["datasets", "export", "latest", &export.display().to_string()])
        .await;
    let mut dataset_files = BTreeMap::new();
    for entry in walk(&export) {
        let name = entry.strip_prefix(&export).unwrap().display().to_string();
        let text = std::fs::read_to_string(&entry).unwrap_or_default();
        // The card names the run that made it; rows and statistics are what must match.
        if name != "README.md" {
            dataset_files.insert(name, text);
        }
    }

    let index = EdgeVectorIndex::open(&stores.home.path().join("vectors")).expect("open the index");
    let live = index.alias().await.expect("alias").expect("a live index");
    let hits = index
        .search(
            live,
            &SearchQuery {
                vector: QueryVector::Dense(vec![1.0; 384]),
                limit: 100_000,
                filter: Default::default(),
            },
        )
        .await
        .expect("search the live index");
    assert_eq!(
        hits.len() as u64,
        index.count(live).await.unwrap(),
        "the search returns every point"
    );
    let points = hits
        .into_iter()
        .map(|h| (h.id.to_string(), (h.chunk.doc_id, h.chunk.position, h.chunk.text)))
        .collect();
    let indexes: Value = serde_json::from_str(&stores.ok(&["indexes", "--json"]).await).unwrap();
    let ready_indexes = indexes["versions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|v| v["status"] == "ready")
        .count();

    let models: Value = serde_json::from_str(&stores.ok(&["models", "list", "--json"]).await).unwrap();
    let models = models.as_array().cloned().unwrap_or_default();
    assert_eq!(models.len(), 2, "the base and one trained version: {models:?}");
    let trained = models.iter().find(|m| m["version"] == 2).expect("model version 2");
    let dir = stores.home.path().join(format!("model-{}", rand::random::<u32>()));
    stores.ok(&["models", "export", "2", &dir.display().to_string()]).await;
    let adapter = std::fs::read(dir.join("adapter/adapter_model.safetensors")).expect("exported adapter");
    let trained = (
        trained["name"].to_string(),
        trained["metrics"]["test_rouge_l"].to_string() + &trained["metrics"]["validation_loss"].to_string(),
        engram_shared::hashing::sha256_hex(&adapter),
    );
    Outcome {
        documents,
        dataset_versions,
        dataset_files,
        points,
        ready_indexes,
        trained,
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Polls the alias like a reader until `stop`: every version it points at is ready in the registry
/// and holds all its chunks. Counts in `seen` the distinct live versions it checked.
async fn watch_alias(home: std::path::PathBuf, stop: Arc<AtomicBool>, seen: Arc<AtomicU64>) {
    let registry = loop {
        if let Ok(registry) = Registry::open_sqlite(&home.join("registry.sqlite")).await {
            break registry;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let index = EdgeVectorIndex::open(&home.join("vectors")).expect("open the index as a reader");
    let mut last = None;
    while !stop.load(Ordering::SeqCst) {
        if let Ok(Some(version)) = index.alias().await
            && last != Some(version)
        {
            let registered = registry
                .index_version(version as i64)
                .await
                .expect("read the registry")
                .unwrap_or_else(|| panic!("the alias points at v{version}, which the registry does not know"));
            assert_eq!(
                registered.status,
                IndexStatus::Ready,
                "the alias points at v{version} before it is ready"
            );
            let chunks = registered.spec.manifest["counts"]["chunks"].as_u64().unwrap();
            let stored = index.count(version).await.expect("count the live version");
            assert_eq!(stored, chunks, "the live v{version} is partial");
            if let Some(previous) = last {
                index.release(previous);
            }
            last = Some(version);
            seen.fetch_add(1, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The step a home's newest run was in (for the log).
async fn last_step(stores: &Stores) -> String {
    let (_, out, _) = stores.pipeline(&["runs", "--json"]).await;
    let runs: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    runs[0]["steps"]
        .as_array()
        .and_then(|steps| steps.last())
        .map(|s| format!("{} ({})", s["step"]["key"]["name"], s["step"]["status"]))
        .unwrap_or_else(|| "before any step".into())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_at_ten_random_points_ends_as_an_uninterrupted_run_would() {
    // The uninterrupted run, timed: the kill points are drawn over its duration.
    let reference = prepared().await;
    let config_a = config(&reference);
    let started = Instant::now();
    let status = run_command(&reference, &config_a).status().expect("run");
    assert!(status.success(), "the uninterrupted run failed");
    let duration = started.elapsed();
    let expected = outcome(&reference).await;

    let stores = prepared().await;
    let config_b = config(&stores);
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(AtomicU64::new(0));
    let watcher = tokio::spawn(watch_alias(
        stores.home.path().to_path_buf(),
        stop.clone(),
        seen.clone(),
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(17);
    let mut kills = 0;
    for attempt in 0..KILLS {
        let delay = duration.mul_f64(rng.random_range(0.05..0.35));
        let mut child = run_command(&stores, &config_b).spawn().expect("start run");
        let deadline = Instant::now() + delay;
        let finished = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break Some(status);
            }
            if Instant::now() >= deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        match finished {
            Some(status) => {
                assert!(status.success(), "run {attempt} failed on its own");
                eprintln!("run {attempt}: finished before its kill at {delay:.1?}");
                break;
            }
            None => {
                child.kill().expect("SIGKILL");
                child.wait().unwrap();
                kills += 1;
                eprintln!(
                    "run {attempt}: SIGKILLed after {delay:.1?} in {}",
                    last_step(&stores).await
                );
            }
        }
    }
    assert!(kills >= 3, "only {kills} runs were killed before one finished");
    let status = run_command(&stores, &config_b).status().expect("final run");
    assert!(status.success(), "the run after the kills failed");
    stop.store(true, Ordering::SeqCst);
    watcher
        .await
        .expect("the alias watcher saw only complete, ready versions");
    assert!(seen.load(Ordering::SeqCst) >= 1, "the watcher saw no live index");

    let got = outcome(&stores).await;
    assert_eq!(got.documents, expected.documents, "documents");
    assert_eq!(got.dataset_versions, expected.dataset_versions, "dataset versions");
    assert_eq!(got.dataset_files, expected.dataset_files, "dataset rows");
    assert_eq!(got.points, expected.points, "index points");
    assert_eq!(got.ready_indexes, expected.ready_indexes, "ready index versions");
    assert_eq!(got.trained, expected.trained, "the trained model");

    // The killed runs are `interrupted` (marked by the runs after them), none stays `running`.
    let runs: Value = serde_json::from_str(&stores.ok(&["runs", "--json"]).await).unwrap();
    let statuses: Vec<&str> = runs
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["run"]["status"].as_str().unwrap_or_default())
        .collect();
    assert!(!statuses.contains(&"running"), "{statuses:?}");
    assert!(statuses.contains(&"interrupted"), "{statuses:?}");
    assert_eq!(statuses[0], "succeeded", "{statuses:?}");
}
