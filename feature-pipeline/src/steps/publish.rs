//! The publish step: a dataset version as a directory in Hugging Face `datasets` layout —
//! `data/<split>.jsonl` (columns `instruction`, `answer`, `doc_id`, `title`, `source`, `url`,
//! `temperature`) and a `README.md` dataset card whose YAML header names the splits — stored in the
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

/// The files of a dataset: path → bytes.
pub fn files(
    splits: &Splits,
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
    files.insert(
        "README.md".into(),
        card(splits, lineage, stats, prompt_text).into_bytes(),
    );
    Ok(files)
}

fn card(splits: &Splits, lineage: &Value, stats: &Value, prompt_text: &str) -> String {
    let mut configs = String::new();
    let mut table = String::from("| split | rows | documents |\n|---|---:|---:|\n");
    let mut empty = Vec::new();
    for split in SPLITS {
        let rows = splits.rows[split].len();
        table.push_str(&format!("| {split} | {rows} | {} |\n", splits.documents[split].len()));
        if rows == 0 {
            empty.push(split);
        } else {
            configs.push_str(&format!("  - split: {split}\n    path: data/{split}.jsonl\n"));
        }
    }
    let empty_note = if empty.is_empty() {
        String::new()
    } else {
        format!("\nEmpty splits, left out of the files: {}.\n", empty.join(", "))
    };
    format!(
        "---\nlicense: other\nlanguage:\n- en\ntask_categories:\n- summarization\npretty_name: engram summaries\n\
         configs:\n- config_name: default\n  data_files:\n{configs}---\n\n\
         # engram summaries\n\n\
         Summaries of a personal corpus (notes and saved pages), distilled from a teacher LLM by engram's \
         feature-pipeline, for fine-tuning its small model. Each row pairs an `instruction` (the summarization \
         prompt with the document) with an `answer` (the teacher's summary). Splits are **by document**: every \
         summary of a document is in the same split.\n\n\
         ## Statistics\n\n{table}{empty_note}\n```json\n{}\n```\n\n\
         ## Lineage\n\n```json\n{}\n```\n\n\
         ## Prompt\n\n```markdown\n{}\n```\n",
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
