//! The publish step: a dataset version as a directory in Hugging Face `datasets` layout — the
//! `summarize` configuration in `data/<split>.jsonl` (columns `instruction`, `answer`, `doc_id`,
//! `title`, `source`, `url`, `temperature`), the `qa` configuration in `qa/<split>.jsonl` (see
//! `steps/qa/rows.rs` for its columns), and a `README.md` dataset card whose YAML header names the
//! configurations and their splits — stored in the
//! artifact store file by file (content-addressed), under a manifest whose hash is the version's
//! artifact hash, then registered with its lineage.
//!
//! `datasets.load_dataset(<exported dir>)` reads it as it is. An empty split is left out of the
//! files and the card's configs (`datasets` refuses empty data files) and the card says so.

use std::collections::BTreeMap;
use std::path::Path;

use engram_shared::artifacts::ArtifactStore;
use engram_shared::artifacts::tree::{self, Manifest};
use serde::Serialize;
use serde_json::{Value, json};

use super::qa::rows::QaSplits;
use super::split::{SPLITS, Splits};

/// The step's name in the registry.
pub const STEP: &str = "publish";

/// The manifest format written by this build.
pub const FORMAT: &str = "engram-dataset/1";

/// A row as published.
#[derive(Debug, Serialize)]
struct Row<'a> {
    instruction: &'a str,
    answer: &'a str,
    doc_id: &'a str,
    title: &'a str,
    source: &'a str,
    url: &'a str,
    temperature: f64,
}

/// The files of a dataset: path → bytes. `qa` is the second configuration's rows and the prompt
/// file they were asked with.
pub fn files(
    splits: &Splits,
    qa: Option<(&QaSplits, &str)>,
    lineage: &Value,
    stats: &Value,
    prompt_text: &str,
) -> anyhow::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for split in SPLITS {
        let rows = &splits.rows[split];
        if rows.is_empty() {
            continue;
        }
        let mut jsonl = Vec::new();
        for sample in rows {
            let row = Row {
                instruction: &sample.instruction,
                answer: &sample.answer,
                doc_id: &sample.doc_id,
                title: &sample.title,
                source: &sample.source,
                url: &sample.url,
                temperature: sample.temperature,
            };
            serde_json::to_writer(&mut jsonl, &row)?;
            jsonl.push(b'\n');
        }
        files.insert(format!("data/{split}.jsonl"), jsonl);
    }
    if let Some((qa, _)) = qa {
        for split in SPLITS {
            let rows = &qa.rows[split];
            if rows.is_empty() {
                continue;
            }
            let mut jsonl = Vec::new();
            for row in rows {
                serde_json::to_writer(&mut jsonl, row)?;
                jsonl.push(b'\n');
            }
            files.insert(format!("{QA_DIR}/{split}.jsonl"), jsonl);
        }
    }
    files.insert(
        "README.md".into(),
        card(splits, qa, lineage, stats, prompt_text).into_bytes(),
    );
    Ok(files)
}

/// Where the `qa` configuration's files are.
pub const QA_DIR: &str = "qa";

/// A configuration's `data_files` lines and its table of split sizes; the empty splits are left
/// out of the files (`datasets` refuses empty data files).
fn config_lines(dir: &str, sizes: &[(&str, usize, usize)]) -> (String, String, Vec<String>) {
    let mut lines = String::new();
    let mut table = String::from("| split | rows | documents |\n|---|---:|---:|\n");
    let mut empty = Vec::new();
    for (split, rows, documents) in sizes {
        table.push_str(&format!("| {split} | {rows} | {documents} |\n"));
        if *rows == 0 {
            empty.push(split.to_string());
        } else {
            lines.push_str(&format!("  - split: {split}\n    path: {dir}/{split}.jsonl\n"));
        }
    }
    (lines, table, empty)
}

fn card(splits: &Splits, qa: Option<(&QaSplits, &str)>, lineage: &Value, stats: &Value, prompt_text: &str) -> String {
    let sizes: Vec<(&str, usize, usize)> = SPLITS
        .iter()
        .map(|s| (*s, splits.rows[*s].len(), splits.documents[*s].len()))
        .collect();
    let (lines, table, empty) = config_lines("data", &sizes);
    let mut configs = format!("- config_name: summarize\n  default: true\n  data_files:\n{lines}");
    let empty_note = |empty: &[String]| {
        if empty.is_empty() {
            String::new()
        } else {
            format!("\nEmpty splits, left out of the files: {}.\n", empty.join(", "))
        }
    };
    let mut body = format!("## `summarize`\n\n{table}{}", empty_note(&empty));
    let mut task_categories = "- summarization\n".to_string();
    if let Some((qa, qa_prompt)) = qa {
        let sizes: Vec<(&str, usize, usize)> = SPLITS
            .iter()
            .map(|s| (*s, qa.rows[*s].len(), qa.documents[*s].len()))
            .collect();
        let (lines, table, empty) = config_lines(QA_DIR, &sizes);
        if !lines.is_empty() {
            configs.push_str(&format!("- config_name: qa\n  data_files:\n{lines}"));
        }
        task_categories.push_str("- question-answering\n");
        body.push_str(&format!(
            "\n## `qa`\n\n\
             Grounded question answering: `datasets.load_dataset(DIR, \"qa\")`. Each row is a question (`instruction`) \
             asked over numbered `sources` (chunks of the corpus, as the assistant retrieves them), the `system` \
             message the assistant sends with them, and the `answer`: the teacher's, citing the source that holds it \
             (`cited`), or, where `answerable` is false, the assistant's \"the notes do not say\". A question's \
             document and its sources' documents are all in its split.\n\n{table}{}\n\
             Question prompt:\n\n```markdown\n{}\n```\n",
            empty_note(&empty),
            qa_prompt.trim()
        ));
    }
    format!(
        "---\nlicense: other\nlanguage:\n- en\ntask_categories:\n{task_categories}pretty_name: engram summaries and grounded answers\n\
         configs:\n{configs}---\n\n\
         # engram dataset\n\n\
         Training data distilled from a personal corpus (notes and saved pages) by engram's feature-pipeline, for \
         fine-tuning its small model. The `summarize` configuration (the default) pairs an `instruction` (the \
         summarization prompt with the document) with an `answer` (the teacher's summary). Splits are **by \
         document**: every row about a document is in the same split, in every configuration.\n\n\
         ## Statistics\n\n{body}\n```json\n{}\n```\n\n\
         ## Lineage\n\n```json\n{}\n```\n\n\
         ## Summarization prompt\n\n```markdown\n{}\n```\n",
        serde_json::to_string_pretty(stats).unwrap_or_default(),
        serde_json::to_string_pretty(lineage).unwrap_or_default(),
        prompt_text.trim()
    )
}

/// Stores `files` and their manifest (`artifacts/tree.rs`); returns the manifest's hash.
pub async fn store(artifacts: &ArtifactStore, files: &BTreeMap<String, Vec<u8>>) -> anyhow::Result<String> {
    let files = files
        .iter()
        .map(|(path, bytes)| (path.clone(), tree::Content::Bytes(bytes.clone())))
        .collect();
    Ok(artifacts.put_tree(FORMAT, &files).await?)
}

/// Reads the manifest `hash` names.
pub async fn manifest(artifacts: &ArtifactStore, hash: &str) -> anyhow::Result<Manifest> {
    Ok(artifacts.tree(hash, FORMAT).await?)
}

/// Writes the dataset `hash` names into `dir`, which must not exist or be empty; an interrupted
/// export leaves no half-written dataset at `dir`.
pub async fn export(artifacts: &ArtifactStore, hash: &str, dir: &Path) -> anyhow::Result<Manifest> {
    Ok(artifacts.get_tree(hash, FORMAT, dir).await?)
}

/// The `qa` configuration's statistics.
pub fn describe_qa(qa: &QaSplits) -> Value {
    let mut rows = serde_json::Map::new();
    let mut documents = serde_json::Map::new();
    let mut unanswerable = serde_json::Map::new();
    for split in SPLITS {
        rows.insert(split.into(), json!(qa.rows[split].len()));
        documents.insert(split.into(), json!(qa.documents[split].len()));
        unanswerable.insert(
            split.into(),
            json!(qa.rows[split].iter().filter(|r| !r.answerable).count()),
        );
    }
    json!({ "rows": rows, "documents": documents, "unanswerable": unanswerable })
}

/// Lineage and statistics as the registry and the card record them.
pub fn describe(splits: &Splits) -> Value {
    let mut rows = serde_json::Map::new();
    let mut documents = serde_json::Map::new();
    let mut answer_chars = Vec::new();
    for split in SPLITS {
        rows.insert(split.into(), json!(splits.rows[split].len()));
        documents.insert(split.into(), json!(splits.documents[split].len()));
        answer_chars.extend(splits.rows[split].iter().map(|s| s.answer.chars().count()));
    }
    answer_chars.sort_unstable();
    let median = answer_chars.get(answer_chars.len() / 2).copied().unwrap_or(0);
    json!({ "rows": rows, "documents": documents, "median_answer_chars": median })
}
