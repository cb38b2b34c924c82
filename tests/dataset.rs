//! The summarization dataset end to end, with the real `feature-pipeline` and the local teacher
//! (SmolLM2 in-process) over six sample notes: distil → quality → split → publish, the step cache
//! (a second run skips every step), a distillation killed half-way that resumes without asking the
//! teacher twice, the split by document, the export, a push to a recording Hub endpoint, and
//! `feature-pipeline run` over a pipeline config.
//!
//! Python's `datasets` loading a published version is `tests/python/test_dataset_client.py`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Stores;
use engram_shared::registry::Registry;
use engram_tests::binary;
use engram_tests::servers::samples;
use serde_json::Value;

use common::SMALL_TEACHER as TEACHER;
const TEACHER_ID: &str = "local:SmolLM2-135M-Instruct.Q4_1:packed";

fn model() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../models/SmolLM2-135M-Instruct.Q4_1.gguf")
        .display()
        .to_string()
}

/// `dataset` with the small teacher; the `qa` task is off unless `extra` sets it.
fn dataset_args(extra: &[&str]) -> Vec<String> {
    let mut args = vec!["dataset".to_string(), "--teacher-model-path".into(), model()];
    args.extend(TEACHER.iter().map(|a| a.to_string()));
    if !extra.contains(&"--qa-chunks-per-document") {
        args.extend(["--qa-chunks-per-document".to_string(), "0".to_string()]);
    }
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

async fn notes(stores: &Stores) {
    stores
        .ok(&["extract", "files", &samples().join("notes").display().to_string()])
        .await;
    stores.ok(&["filter"]).await;
}

async fn dataset(stores: &Stores, extra: &[&str]) -> (String, String) {
    let args = dataset_args(extra);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (ok, out, err) = stores.pipeline(&args).await;
    assert!(ok, "dataset failed:\n{out}\n{err}");
    (out, err)
}

async fn versions(stores: &Stores) -> Vec<Value> {
    let out = stores.ok(&["datasets", "--json"]).await;
    serde_json::from_str::<Value>(&out)
        .expect("datasets --json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// The exported dataset's rows, by split.
fn read_export(dir: &Path) -> BTreeMap<String, Vec<Value>> {
    let mut splits = BTreeMap::new();
    for entry in std::fs::read_dir(dir.join("data")).expect("data/").flatten() {
        let name = entry
            .file_name()
            .to_string_lossy()
            .trim_end_matches(".jsonl")
            .to_string();
        let rows = std::fs::read_to_string(entry.path())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("a JSON row"))
            .collect();
        splits.insert(name, rows);
    }
    splits
}

/// A Hub stand-in on 127.0.0.1 that records what it is sent.
async fn recording_hub() -> (String, Arc<Mutex<Vec<(String, String, String)>>>) {
    use axum::Router;
    use axum::http::{HeaderMap, Uri};
    use axum::routing::post;
    let seen: Arc<Mutex<Vec<(String, String, String)>>> = Arc::default();
    let record = seen.clone();
    let app = Router::new().fallback(post(move |uri: Uri, headers: HeaderMap, body: String| {
        let record = record.clone();
        async move {
            let auth = headers
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            record.lock().unwrap().push((uri.path().to_string(), auth, body));
            axum::Json(serde_json::json!({ "url": "ok" }))
        }
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{address}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dataset_is_distilled_checked_split_by_document_published_and_cached() {
    let stores = Stores::sqlite();
    notes(&stores).await;
    let (out, _) = dataset(&stores, &[]).await;
    assert!(out.contains("dataset: v1"), "{out}");

    let listed = versions(&stores).await;
    assert_eq!(listed.len(), 1);
    let lineage = &listed[0]["lineage"];
    assert_eq!(lineage["teacher"], TEACHER_ID);
    assert_eq!(lineage["prompt"]["version"], "summarize-v1");
    assert!(lineage["document_set_hash"].as_str().is_some_and(|h| h.len() == 64));
    assert!(lineage["run_id"].is_string() && lineage["config"]["distil"]["summaries"] == 2);
    let stats = &listed[0]["stats"];
    assert_eq!(stats["distilled"], 12, "6 notes, 2 summaries each: {stats}");

    // The export is the dataset: rows match the stats, and no document is in two splits.
    let dir = stores.home.path().join("export");
    stores
        .ok(&["datasets", "export", "latest", &dir.display().to_string()])
        .await;
    let splits = read_export(&dir);
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let mut total = 0;
    for (split, rows) in &splits {
        assert_eq!(stats["rows"][split].as_u64(), Some(rows.len() as u64), "{split}");
        total += rows.len();
        for row in rows {
            for column in ["instruction", "answer", "doc_id", "title", "source"] {
                assert!(row[column].as_str().is_some_and(|v| !v.is_empty()), "{column} in {row}");
            }
            let doc = row["doc_id"].as_str().unwrap().to_string();
            let first = owner.entry(doc.clone()).or_insert_with(|| split.clone());
            assert_eq!(first, split, "document {doc} is in two splits");
        }
    }
    assert!(total > 0, "quality control kept something: {stats}");
    let card = std::fs::read_to_string(dir.join("README.md")).unwrap();
    assert!(card.contains("configs:") && card.contains("summarize-v1") && card.contains(TEACHER_ID));
    let (ok, _, err) = stores
        .pipeline(&["datasets", "export", "latest", &dir.display().to_string()])
        .await;
    assert!(!ok && err.contains("not empty"), "an export never overwrites: {err}");

    // A second run skips every step and registers nothing new.
    let (out, err) = dataset(&stores, &[]).await;
    for step in ["distil", "quality", "split", "publish"] {
        assert!(err.contains(&format!("{step}: skipped")), "{step} not skipped:\n{err}");
    }
    assert!(out.contains("dataset: v1"), "{out}");
    assert_eq!(versions(&stores).await.len(), 1);

    // --push-hub: one repo creation, one commit carrying every file (pushed from the cache).
    let (hub, seen) = recording_hub().await;
    let args = dataset_args(&["--push-hub", "someone/engram-notes", "--hub-endpoint", &hub]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut env = stores.env();
    env.push(("ENGRAM_HF_TOKEN", "hf_test_token".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let output = engram_tests::run("feature-pipeline", &args, &env);
    assert!(output.status.success(), "{}", engram_tests::stderr(&output));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "/api/repos/create");
    assert!(seen[0].2.contains("\"type\":\"dataset\"") && seen[0].2.contains("engram-notes"));
    assert_eq!(seen[1].0, "/api/datasets/someone/engram-notes/commit/main");
    assert_eq!(seen[1].1, "Bearer hf_test_token");
    let lines: Vec<Value> = seen[1].2.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines[0]["key"], "header");
    let pushed: BTreeSet<String> = lines[1..]
        .iter()
        .map(|l| l["value"]["path"].as_str().unwrap().to_string())
        .collect();
    let mut exported: BTreeSet<String> = splits.keys().map(|s| format!("data/{s}.jsonl")).collect();
    exported.insert("README.md".into());
    assert_eq!(pushed, exported);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_distillation_killed_half_way_resumes_without_asking_twice() {
    let stores = Stores::sqlite();
    notes(&stores).await;
    let registry = Registry::open_sqlite(&stores.home.path().join("registry.sqlite"))
        .await
        .unwrap();
    let args = dataset_args(&["--teacher-concurrency", "1", "--concurrency", "1"]);
    let mut command = std::process::Command::new(binary("feature-pipeline"));
    command
        .args(&args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("ENGRAM_") || k.starts_with("AWS_")) {
        command.env_remove(key);
    }
    for (key, value) in stores.env() {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("start dataset");
    let deadline = Instant::now() + Duration::from_secs(600);
    let answered = loop {
        let answered = registry.teacher_responses(TEACHER_ID).await.unwrap();
        if answered >= 3 {
            break answered;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it could be killed"
        );
        assert!(Instant::now() < deadline, "the teacher answered nothing in 600 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    let kept = registry.teacher_responses(TEACHER_ID).await.unwrap();
    assert!(
        kept >= answered && kept < 12,
        "killed half-way: {kept} of 12 answers stored"
    );
    assert!(
        versions(&stores).await.is_empty(),
        "nothing was published by the killed run"
    );

    dataset(&stores, &[]).await;
    let runs: Value = serde_json::from_str(&stores.ok(&["runs", "--json"]).await).unwrap();
    let last = &runs[0];
    assert_eq!(last["run"]["status"], "succeeded", "{last}");
    let distil = last["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"]["key"]["name"] == "distil")
        .expect("a distil step");
    let spent = &distil["step"]["detail"]["teacher"];
    assert_eq!(spent["cached"].as_u64(), Some(kept), "{spent}");
    assert_eq!(
        spent["calls"].as_u64(),
        Some(12 - kept),
        "only the missing answers were asked: {spent}"
    );
    assert_eq!(registry.teacher_responses(TEACHER_ID).await.unwrap(), 12);
    let listed = versions(&stores).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["stats"]["distilled"], 12, "no duplicates");
}

#[tokio::test(flavor = "multi_thread")]
async fn run_executes_the_configured_stages_and_a_second_run_skips_them() {
    let stores = Stores::sqlite();
    let config = stores.home.path().join("pipeline.toml");
    std::fs::write(
        &config,
        format!(
            "[extract.files]\npaths = [{notes:?}]\n\n[filter]\n\n[dataset]\nteacher = \"local\"\nteacher_model_path = {model:?}\n\
             summaries = 1\nmax_tokens = 24\nmax_document_chars = 600\nqa_chunks_per_document = 0\n\n[index]\n",
            notes = samples().join("notes").display().to_string(),
            model = model(),
        ),
    )
    .unwrap();
    let config = config.display().to_string();
    let (ok, out, err) = stores.pipeline(&["run", "--config", &config]).await;
    assert!(ok, "run failed:\n{out}\n{err}");
    assert!(
        out.contains("dataset: v1") && out.contains("index: v1 is live"),
        "{out}"
    );
    let (ok, out, err) = stores.pipeline(&["run", "--config", &config]).await;
    assert!(ok, "second run failed:\n{out}\n{err}");
    for step in [
        "extract-files",
        "filter",
        "distil",
        "quality",
        "split",
        "publish",
        "index",
    ] {
        assert!(err.contains(&format!("{step}: skipped")), "{step} not skipped:\n{err}");
    }
    let runs: Value = serde_json::from_str(&stores.ok(&["runs", "--json"]).await).unwrap();
    let steps = runs[0]["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 7, "{steps:?}");
    assert!(steps.iter().all(|s| s["cached"] == true), "{steps:?}");
    assert_eq!(runs[0]["run"]["config"]["command"], "run");

    // A typo in the config is named before anything runs.
    let bad = stores.home.path().join("bad.toml");
    std::fs::write(&bad, "[filter]\nmin_qualty = 0.3\n").unwrap();
    let (ok, _, err) = stores.pipeline(&["run", "--config", &bad.display().to_string()]).await;
    assert!(!ok && err.contains("[filter]") && err.contains("min-qualty"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_judge_scores_the_uncertain_documents_once_and_filter_and_explore_use_its_scores() {
    let stores = Stores::sqlite();
    stores
        .ok(&["extract", "files", &samples().join("notes").display().to_string()])
        .await;
    let judge = |band: &'static str| {
        vec![
            "score".to_string(),
            "--judge".into(),
            "--judge-band".into(),
            band.into(),
            "--teacher".into(),
            "local".into(),
            "--teacher-model-path".into(),
            model(),
        ]
    };
    // A band no heuristic score falls in: nothing is judged.
    let (ok, out, err) = stores.pipeline_owned(judge("0,0.01")).await;
    assert!(
        ok && out.contains("judge (judge-v1/") && out.contains(": 0 documents"),
        "{out}\n{err}"
    );
    // The whole scale: every document is asked about.
    let (ok, out, err) = stores.pipeline_owned(judge("0,1")).await;
    assert!(ok, "{out}\n{err}");
    let documents = stores.documents().await;
    let judged: Vec<_> = documents
        .iter()
        .filter_map(|d| d.quality.as_ref().filter(|q| q.scorer == "llm-judge").map(|q| (d, q)))
        .collect();
    assert!(!judged.is_empty(), "the local judge rated some notes: {out}");
    for (document, quality) in &judged {
        assert_eq!(quality.version, format!("judge-v1/{TEACHER_ID}"));
        assert!(
            [0.0, 0.25, 0.5, 0.75, 1.0].contains(&quality.score),
            "{}",
            quality.score
        );
        assert!(
            quality.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "{}",
            document.title
        );
    }
    let registry = Registry::open_sqlite(&stores.home.path().join("registry.sqlite"))
        .await
        .unwrap();
    let asked = registry.teacher_responses(TEACHER_ID).await.unwrap();
    assert_eq!(asked, 6, "one question per note");

    // A rerun asks nothing: every document is judged by this prompt and teacher already.
    let (ok, out, _) = stores.pipeline_owned(judge("0,1")).await;
    assert!(ok && out.contains(": 0 documents"), "{out}");
    assert_eq!(registry.teacher_responses(TEACHER_ID).await.unwrap(), 6);

    // filter uses the judge's score, and says so when it drops a document for it.
    let threshold = judged.iter().map(|(_, q)| q.score).fold(0.0, f64::max) + 0.01;
    let threshold = format!("{:.2}", threshold.min(1.0));
    let (ok, out, err) = stores.pipeline(&["filter", "--min-quality", &threshold]).await;
    assert!(
        ok && err.contains("llm-judge: "),
        "a drop names the judge and its reason: {out}\n{err}"
    );
    // explore shows both scores.
    let out = stores.ok(&["explore"]).await;
    assert!(out.contains("heuristic → judge"), "{out}");
    let report = out
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .and_then(|l| l.split_whitespace().next())
        .expect("a report path");
    let html = std::fs::read_to_string(report).unwrap();
    assert!(html.contains("<h2>Judged documents</h2>"), "{report}");
}
