//! What training and evaluation read from storage: a dataset version's rows, the system prompt it
//! was distilled with, and a registered model's files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use engram_shared::artifacts::ArtifactStore;
use engram_shared::registry::{DatasetVersion, ModelVersion};
use engram_shared::storage::Storage;

use crate::steps::distil::Prompt;
use crate::steps::publish;
use crate::train::examples::Row;

/// The dataset version `spec` names (`latest` or a number).
pub async fn dataset(storage: &Storage, spec: &str) -> Result<DatasetVersion> {
    let versions = storage.registry.datasets().await?;
    let chosen = if spec == "latest" {
        versions.iter().max_by_key(|v| v.version).cloned()
    } else {
        let number: i64 = spec.trim_start_matches('v').parse().with_context(|| {
            format!("--dataset {spec:?} is not a version: give a number (see `feature-pipeline datasets`) or `latest`")
        })?;
        versions.into_iter().find(|v| v.version == number)
    };
    chosen.with_context(|| {
        format!(
            "no dataset version {spec}: build one with `feature-pipeline dataset` (see `feature-pipeline datasets`)"
        )
    })
}

/// A registered model's files under `home/cache/models` (see `Storage::model_files`).
pub async fn materialize(storage: &Storage, home: &Path, model: &ModelVersion) -> Result<PathBuf> {
    Ok(storage.model_files(home, model).await?)
}

/// The rows of each split of a dataset version: its `summarize` configuration's.
pub async fn splits(
    artifacts: &ArtifactStore,
    dataset: &DatasetVersion,
    scratch: &Path,
) -> Result<HashMap<String, Vec<Row>>> {
    Ok(tasks(artifacts, dataset, scratch).await?.summarize)
}

/// The rows of each split of both of a dataset version's tasks.
#[derive(Debug, Default)]
pub struct Tasks {
    /// `summarize` (the `data/` files).
    pub summarize: HashMap<String, Vec<Row>>,
    /// `qa` (the `qa/` files; empty splits for a version made before the task existed).
    pub qa: HashMap<String, Vec<Row>>,
}

/// Reads both tasks of a dataset version.
pub async fn tasks(artifacts: &ArtifactStore, dataset: &DatasetVersion, scratch: &Path) -> Result<Tasks> {
    let dir = scratch.join("dataset");
    publish::export(artifacts, &dataset.spec.artifact_hash, &dir).await?;
    Ok(Tasks {
        summarize: read_rows(&dir.join("data"), dataset)?,
        qa: read_rows(&dir.join(publish::QA_DIR), dataset)?,
    })
}

fn read_rows(dir: &Path, dataset: &DatasetVersion) -> Result<HashMap<String, Vec<Row>>> {
    let mut splits = HashMap::new();
    for split in ["train", "validation", "test"] {
        let path = dir.join(format!("{split}.jsonl"));
        let mut rows = Vec::new();
        if path.exists() {
            let text = std::fs::read_to_string(&path)?;
            for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
                rows.push(serde_json::from_str::<Row>(line).with_context(|| {
                    format!(
                        "dataset v{} {}: row {} is not a dataset row",
                        dataset.version,
                        path.display(),
                        i + 1
                    )
                })?);
            }
        }
        splits.insert(split.to_string(), rows);
    }
    Ok(splits)
}

/// The system message the dataset's prompt version used.
pub fn system_prompt(dataset: &DatasetVersion) -> Result<String> {
    let prompt = Prompt::builtin();
    let wanted = dataset.spec.lineage["prompt"]["version"]
        .as_str()
        .unwrap_or(&prompt.version);
    if wanted != prompt.version {
        bail!(
            "dataset v{} was distilled with prompt {wanted}, which this build does not ship (it has {}): train it with the build that made it, or rebuild the dataset",
            dataset.version,
            prompt.version
        );
    }
    Ok(prompt.system)
}
