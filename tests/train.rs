//! Fine-tuning end to end with the real `feature-pipeline`: a dataset distilled by the local
//! teacher from six sample notes, a small base model registered and promoted, then `train`:
//! the model version it registers (lineage, metrics, exported adapter and merged model), a run
//! SIGKILLed after its first checkpoint that resumes and ends with the adapter of an uninterrupted
//! run, and `--promote-if-better` moving `production` only for a candidate that beats it.
//!
//! The base is SmolLM2's tokenizer and chat template over small random weights (`tiny_model`), so
//! a training takes seconds in a debug build; the real 135M model trains in the quickstart and in
//! `scripts/bench/train.sh`. `tests/python/test_train_client.py` checks the adapter with `peft`
//! and the served fine-tuned model with the `openai` client.

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Stores;
use engram_tests::binary;
use engram_tests::servers::samples;
use serde_json::Value;

fn models_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// A third of the documents are tested (with the small teacher of `common`).
const SPLIT: [&str; 6] = ["--validation", "0.2", "--test", "0.34", "--seed", "3"];

const TRAIN: [&str; 14] = [
    "train",
    "--base",
    "1",
    "--epochs",
    "20",
    "--batch-size",
    "2",
    "--learning-rate",
    "3e-2",
    "--checkpoint-every",
    "1",
    "--threads",
    "1",
    "--eval-max-tokens",
];

async fn models(stores: &Stores) -> Vec<Value> {
    let out = stores.ok(&["models", "list", "--json"]).await;
    serde_json::from_str::<Value>(&out)
        .expect("models list --json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn model(models: &[Value], version: i64) -> Value {
    models
        .iter()
        .find(|m| m["version"] == version)
        .cloned()
        .unwrap_or_else(|| panic!("no model version {version} in {models:?}"))
}

fn production(models: &[Value]) -> i64 {
    models
        .iter()
        .find(|m| {
            m["aliases"]
                .as_array()
                .is_some_and(|a| a.iter().any(|n| n == "production"))
        })
        .and_then(|m| m["version"].as_i64())
        .expect("a production model")
}

async fn export(stores: &Stores, version: i64, name: &str) -> PathBuf {
    let dir = stores.home.path().join(name);
    stores
        .ok(&["models", "export", &version.to_string(), &dir.display().to_string()])
        .await;
    dir
}

/// Runs `train` until it reports its first checkpoint, then SIGKILLs it.
fn train_killed_after_a_checkpoint(stores: &Stores, args: &[&str]) {
    let mut command = Command::new(binary("feature-pipeline"));
    command.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    for (key, value) in stores.env() {
        command.env(key, value);
    }
    let mut child = command.spawn().expect("feature-pipeline starts");
    let stderr = child.stderr.take().expect("stderr");
    let mut seen = Vec::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.expect("stderr line");
        let checkpoint = line.contains("train: checkpoint at step");
        seen.push(line);
        if checkpoint {
            child.kill().expect("SIGKILL");
            break;
        }
    }
    let status = child.wait().expect("wait");
    assert!(
        !status.success(),
        "the run should have been killed after a checkpoint, but it ended: {seen:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_training_registers_resumes_after_sigkill_and_promotes_only_a_better_model() {
    let stores = Stores::sqlite();
    stores
        .ok(&["extract", "files", &samples().join("notes").display().to_string()])
        .await;
    stores.ok(&["filter"]).await;
    let dataset: Vec<&str> = std::iter::once("dataset")
        .chain(common::SMALL_TEACHER)
        .chain(SPLIT)
        .chain(["--qa-chunks-per-document", "0"])
        .collect();
    stores.ok(&dataset).await;
    common::register_tiny_model(&stores).await;

    // An uninterrupted training, promoted only if it beats production (the random base).
    let mut train: Vec<&str> = TRAIN.to_vec();
    train.extend(["24", "--name", "tiny-lora"]);
    let mut first = train.clone();
    first.push("--promote-if-better");
    let (ok, out, err) = stores.pipeline(&first).await;
    assert!(ok, "train failed:\n{out}\n{err}");
    assert!(out.contains("train: model version 2 (tiny-lora)"), "{out}");
    let listed = models(&stores).await;
    let trained = model(&listed, 2);
    assert_eq!(trained["lineage"]["base_model"], 1);
    assert_eq!(trained["lineage"]["dataset_version"], 1);
    assert_eq!(trained["lineage"]["details"]["hyperparameters"]["lora"]["rank"], 16);
    let metrics = &trained["metrics"];
    for key in [
        "test_rouge_l",
        "base_test_rouge_l",
        "validation_loss",
        "base_validation_loss",
    ] {
        assert!(metrics[key].is_number(), "{key} missing from {metrics}");
    }
    let (tuned, base) = (
        metrics["test_rouge_l"].as_f64().unwrap(),
        metrics["base_test_rouge_l"].as_f64().unwrap(),
    );
    assert!(
        metrics["validation_loss"].as_f64() < metrics["base_validation_loss"].as_f64(),
        "training lowered no validation loss: {metrics}"
    );
    assert!(
        tuned > base,
        "the fine-tuned tiny model should beat its random base: {metrics}"
    );
    assert_eq!(production(&listed), 2, "a better model is promoted: {out}");

    // The export holds the served GGUF-less HF model, the PEFT adapter and the report.
    let a = export(&stores, 2, "uninterrupted").await;
    for file in [
        "hf/model.safetensors",
        "hf/config.json",
        "adapter/adapter_config.json",
        "adapter/adapter_model.safetensors",
        "report/loss.png",
        "report/README.md",
        "model-version.json",
    ] {
        assert!(a.join(file).is_file(), "{file} missing from the export");
    }

    // The same training again (--no-cache), killed after its first checkpoint, then rerun: it
    // resumes and ends with the same adapter, bit for bit.
    let mut again = train.clone();
    again.push("--no-cache");
    train_killed_after_a_checkpoint(&stores, &again);
    let (ok, out, err) = stores.pipeline(&again).await;
    assert!(ok, "the rerun failed:\n{out}\n{err}");
    assert!(err.contains("train: resuming from the checkpoint at step"), "{err}");
    // The killed run is not left `running`: the rerun marked it interrupted, naming its step.
    assert!(err.contains("marked interrupted"), "{err}");
    let runs: serde_json::Value = serde_json::from_str(&stores.ok(&["runs", "--json"]).await).expect("runs --json");
    let interrupted: Vec<&serde_json::Value> = runs
        .as_array()
        .expect("runs")
        .iter()
        .filter(|r| r["run"]["status"] == "interrupted")
        .collect();
    assert_eq!(interrupted.len(), 1, "{runs:#}");
    assert!(
        interrupted[0]["run"]["error"]
            .as_str()
            .unwrap_or_default()
            .contains("unfinished: train"),
        "{:#}",
        interrupted[0]
    );
    assert!(
        runs.as_array()
            .expect("runs")
            .iter()
            .all(|r| r["run"]["status"] != "running"),
        "{runs:#}"
    );
    let b = export(&stores, 3, "resumed").await;
    let weights = |dir: &Path| std::fs::read(dir.join("adapter/adapter_model.safetensors")).unwrap();
    assert!(
        weights(&a) == weights(&b),
        "the resumed run's adapter differs from the uninterrupted run's"
    );

    // With a much better model in production, a new candidate is not promoted; by hand it is,
    // and rollback undoes that.
    let smollm2 = models_dir().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    stores
        .ok(&["models", "register", &smollm2.display().to_string(), "--promote"])
        .await;
    let mut weaker = train.clone();
    weaker.extend(["--no-cache", "--seed", "5", "--promote-if-better"]);
    let (ok, out, err) = stores.pipeline(&weaker).await;
    assert!(ok, "train failed:\n{out}\n{err}");
    assert!(out.contains("promote: kept production"), "{out}");
    let listed = models(&stores).await;
    assert_eq!(production(&listed), 4, "SmolLM2 stays in production");
    let candidate = model(&listed, 5);
    assert!(
        candidate["metrics"]["production_test_rouge_l"].as_f64() > candidate["metrics"]["test_rouge_l"].as_f64(),
        "{candidate}"
    );
    stores.ok(&["models", "promote", "5"]).await;
    assert_eq!(production(&models(&stores).await), 5);
    stores.ok(&["models", "rollback"]).await;
    assert_eq!(production(&models(&stores).await), 4);
}
