//! `feature-pipeline eval model`, also run at the end of `train`: the models' summaries of a
//! dataset's test split, scored (`steps/model_eval.rs`), reported (markdown, chart, every answer)
//! and stored on each model version's metrics.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::generation::{Generator, GeneratorOptions};
use engram_shared::registry::{AliasKind, DatasetVersion, MODEL_PRODUCTION, ModelVersion};
use engram_shared::storage::Storage;
use serde_json::{Value, json};

use crate::commands::index::load_embedder;
use crate::commands::inputs::{dataset, materialize, splits, system_prompt};
use crate::config::EvalModelArgs;
use crate::steps::model_eval::{self, ModelScores, TestItem};

/// The tree format of a stored evaluation report.
pub const EVAL_REPORT_TREE_FORMAT: &str = "engram-eval-report/1";

/// A model to evaluate: a registered version or a file.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// How the report names it.
    pub label: String,
    /// Its registry version, when registered.
    pub version: Option<i64>,
    /// Its files.
    pub path: PathBuf,
}

impl Candidate {
    /// A registered version, its files made available locally.
    pub async fn registered(storage: &Storage, home: &Path, model: &ModelVersion) -> Result<Self> {
        Ok(Candidate {
            label: format!("{} v{}", model.spec.name, model.version),
            version: Some(model.version),
            path: materialize(storage, home, model).await?,
        })
    }
}

/// What an evaluation found.
#[derive(Debug)]
pub struct Evaluation {
    /// Each model's scores, in the order asked.
    pub scores: Vec<(Candidate, ModelScores)>,
    /// Each model's metrics as stored on a registered version (an unregistered candidate's for its
    /// caller to store once it is registered).
    pub metrics: Vec<Value>,
    /// The stored report's artifact hash.
    pub report: String,
    /// Documents in the test split.
    pub documents: usize,
}

/// Runs `eval model`.
pub async fn run(config: &StorageConfig, args: &EvalModelArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let home = config.home();
    let dataset = dataset(&storage, &args.dataset).await?;
    let mut candidates = Vec::new();
    let specs = if args.models.is_empty() {
        default_models(&storage).await?
    } else {
        args.models.clone()
    };
    for spec in &specs {
        candidates.push(candidate(&storage, home, spec).await?);
    }
    let evaluation = evaluate(
        &storage,
        home,
        &dataset,
        &candidates,
        args.max_tokens,
        &args.embedding.embedding_model,
    )
    .await?;
    print(&evaluation);
    if let Some(dir) = &args.out {
        storage
            .artifacts
            .get_tree(&evaluation.report, EVAL_REPORT_TREE_FORMAT, dir)
            .await?;
        println!("report written to {}", dir.display());
    }
    Ok(())
}

/// Production, and its base when it is fine-tuned.
pub(crate) async fn default_models(storage: &Storage) -> Result<Vec<String>> {
    let production = storage
        .registry
        .alias(AliasKind::Model, MODEL_PRODUCTION)
        .await?
        .context("no production model: pass --models")?;
    let model = storage
        .registry
        .model(production)
        .await?
        .context("production names a missing model version")?;
    let mut specs = Vec::new();
    if let Some(base) = model.spec.lineage["base_model"].as_i64() {
        specs.push(base.to_string());
    }
    specs.push(production.to_string());
    Ok(specs)
}

pub(crate) async fn candidate(storage: &Storage, home: &Path, spec: &str) -> Result<Candidate> {
    let path = PathBuf::from(spec);
    if path.exists() {
        return Ok(Candidate {
            label: path.display().to_string(),
            version: None,
            path,
        });
    }
    let version = crate::commands::models::resolve_version(storage, spec).await?;
    let model = storage
        .registry
        .model(version)
        .await?
        .with_context(|| format!("model version {version} is not registered"))?;
    Candidate::registered(storage, home, &model).await
}

/// Prints the table.
pub fn print(evaluation: &Evaluation) {
    println!(
        "test split: {} documents\n{:<40} {:>8} {:>8} {:>8} {:>8} {:>8}",
        evaluation.documents, "model", "ROUGE-1", "ROUGE-2", "ROUGE-L", "chars", "faithful"
    );
    for (candidate, s) in &evaluation.scores {
        println!(
            "{:<40} {:>8.4} {:>8.4} {:>8.4} {:>8.0} {:>8.3}",
            candidate.label, s.rouge1, s.rouge2, s.rouge_l, s.mean_chars, s.faithfulness
        );
    }
    if let [(first, a), rest @ ..] = evaluation.scores.as_slice() {
        for (other, b) in rest {
            let (mean, lo, hi) =
                model_eval::bootstrap_difference(&b.per_document_rouge_l, &a.per_document_rouge_l, 2000, 7);
            println!(
                "ROUGE-L {} − {}: {mean:+.4} (95% bootstrap interval {lo:+.4} to {hi:+.4})",
                other.label, first.label
            );
        }
    }
}

/// Scores `candidates` on `dataset`'s test split, stores the report, and records each registered
/// candidate's metrics (and returns every candidate's) (`test_rouge_l` and the rest; the first candidate is the reference the
/// others are compared with: `reference_test_rouge_l`, `test_rouge_l_difference_ci95`).
pub async fn evaluate(
    storage: &Storage,
    home: &Path,
    dataset: &DatasetVersion,
    candidates: &[Candidate],
    max_tokens: Option<usize>,
    embedding_model: &Path,
) -> Result<Evaluation> {
    let scratch = tempfile::Builder::new().prefix("eval-").tempdir_in({
        let dir = home.join("cache");
        std::fs::create_dir_all(&dir)?;
        dir
    })?;
    let rows = splits(&storage.artifacts, dataset, scratch.path()).await?;
    let test = &rows["test"];
    anyhow::ensure!(
        !test.is_empty(),
        "dataset v{} has no test split: build the dataset with more documents or a larger --test-share",
        dataset.version
    );
    let items = model_eval::items(test.iter().map(|r| (r.instruction.as_str(), r.answer.as_str())));
    let system = system_prompt(dataset)?;
    let max_tokens = max_tokens
        .or_else(|| {
            dataset.spec.lineage["config"]["distil"]["max_tokens"]
                .as_u64()
                .map(|n| n as usize)
        })
        .unwrap_or(256);
    let embedder = load_embedder(embedding_model)?;
    let mut scores = Vec::new();
    for candidate in candidates {
        let (items, system, path, label) = (
            items.clone(),
            system.clone(),
            candidate.path.clone(),
            candidate.label.clone(),
        );
        let embedder = embedder.clone();
        let bar = crate::progress::bar(items.len() as u64, "eval");
        bar.set_message(label.clone());
        let result = tokio::task::spawn_blocking(move || -> Result<ModelScores> {
            let generator = Generator::load(&path, GeneratorOptions::default())
                .with_context(|| format!("cannot load {label} from {}", path.display()))?;
            let answers = model_eval::answer_all(&generator, &system, &items, max_tokens, || bar.inc(1))?;
            bar.finish_and_clear();
            model_eval::score(&label, &items, &answers, &embedder)
        })
        .await??;
        scores.push((candidate.clone(), result));
    }
    let report = write_report(scratch.path(), dataset, &items, &scores, max_tokens)?;
    let report_hash = storage.artifacts.put_dir(EVAL_REPORT_TREE_FORMAT, &report).await?;
    let reference = scores.first().map(|(_, s)| s.clone());
    let mut metrics_of = Vec::with_capacity(scores.len());
    for (candidate, s) in &scores {
        let mut metrics = json!({
            "eval_dataset_version": dataset.version,
            "test_documents": s.documents,
            "test_rouge1": s.rouge1,
            "test_rouge2": s.rouge2,
            "test_rouge_l": s.rouge_l,
            "test_mean_chars": s.mean_chars,
            "test_faithfulness": s.faithfulness,
            "eval_report": report_hash,
        });
        if let Some(reference) = &reference
            && reference.model != s.model
        {
            let (mean, lo, hi) =
                model_eval::bootstrap_difference(&s.per_document_rouge_l, &reference.per_document_rouge_l, 2000, 7);
            metrics["reference_model"] = json!(reference.model);
            metrics["reference_test_rouge_l"] = json!(reference.rouge_l);
            metrics["test_rouge_l_difference"] = json!(mean);
            metrics["test_rouge_l_difference_ci95"] = json!([lo, hi]);
        }
        if let Some(version) = candidate.version {
            storage.registry.add_model_metrics(version, &metrics).await?;
        }
        metrics_of.push(metrics);
    }
    Ok(Evaluation {
        documents: items.len(),
        scores,
        metrics: metrics_of,
        report: report_hash,
    })
}

fn write_report(
    scratch: &Path,
    dataset: &DatasetVersion,
    items: &[TestItem],
    scores: &[(Candidate, ModelScores)],
    max_tokens: usize,
) -> Result<PathBuf> {
    use std::fmt::Write as _;
    let dir = scratch.join("report");
    std::fs::create_dir_all(&dir)?;
    let labels: Vec<String> = scores.iter().map(|(c, _)| c.label.clone()).collect();
    let series: Vec<(&str, Vec<f64>)> = vec![
        ("ROUGE-1", scores.iter().map(|(_, s)| s.rouge1).collect()),
        ("ROUGE-2", scores.iter().map(|(_, s)| s.rouge2).collect()),
        ("ROUGE-L", scores.iter().map(|(_, s)| s.rouge_l).collect()),
    ];
    crate::report::grouped_bars(
        &dir.join("rouge.png"),
        &format!("Test split of dataset v{} ({} documents)", dataset.version, items.len()),
        &labels,
        &series,
    )?;
    let mut text = format!(
        "# Model evaluation\n\nDataset v{}, test split: {} documents ({} reference summaries). Greedy \
         answers, at most {max_tokens} tokens. ROUGE F-measures as Python's rouge-score computes them \
         (stemmed; best over a document's references), faithfulness as the quality step's cosine.\n\n\
         ![ROUGE](rouge.png)\n\n| model | ROUGE-1 | ROUGE-2 | ROUGE-L | mean chars | faithfulness |\n|---|---:|---:|---:|---:|---:|\n",
        dataset.version,
        items.len(),
        items.iter().map(|i| i.references.len()).sum::<usize>()
    );
    for (c, s) in scores {
        let _ = writeln!(
            text,
            "| {} | {:.4} | {:.4} | {:.4} | {:.0} | {:.3} |",
            c.label, s.rouge1, s.rouge2, s.rouge_l, s.mean_chars, s.faithfulness
        );
    }
    if let [(first, a), rest @ ..] = scores {
        for (other, b) in rest {
            let (mean, lo, hi) =
                model_eval::bootstrap_difference(&b.per_document_rouge_l, &a.per_document_rouge_l, 2000, 7);
            let _ = writeln!(
                text,
                "\nROUGE-L of {} minus {}: {mean:+.4}, 95% paired-bootstrap interval [{lo:+.4}, {hi:+.4}] over {} documents.",
                other.label,
                first.label,
                items.len()
            );
        }
    }
    std::fs::write(dir.join("README.md"), text)?;
    let answers: Vec<Value> = items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            json!({
                "instruction": item.instruction,
                "references": item.references,
                "answers": scores.iter().map(|(c, s)| json!({ "model": c.label, "answer": s.answers[i], "rouge_l": s.per_document_rouge_l[i] })).collect::<Vec<_>>(),
            })
        })
        .collect();
    std::fs::write(dir.join("answers.json"), serde_json::to_string_pretty(&answers)? + "\n")?;
    Ok(dir)
}
