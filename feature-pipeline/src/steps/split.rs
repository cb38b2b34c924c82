//! The split step: train, validation and test **by document**. All summaries of a document land in
//! one split, so the test set measures summaries of documents the student never saw in training.
//! (Splitting by sample, as the seed's reference course does, leaks a document's other summaries.)
//!
//! Documents are ordered by a seeded hash of their id and cut at the configured fractions: the same
//! documents and seed give the same splits on every rerun, whatever order they were read in. With
//! three or more documents, validation and test get at least one each.

use std::collections::BTreeMap;

use engram_shared::hashing::sha256_hex;
use serde::{Deserialize, Serialize};

use super::distil::Sample;

/// The step's name in the registry.
pub const STEP: &str = "split";

/// The three splits, in the order they are written.
pub const SPLITS: [&str; 3] = ["train", "validation", "test"];

/// How to split.
#[derive(Debug, Clone, Serialize)]
pub struct SplitSettings {
    /// Share of documents for validation.
    pub validation: f64,
    /// Share of documents for test.
    pub test: f64,
    /// Seed of the document order.
    pub seed: u64,
}

/// Rows per split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Splits {
    /// Split name → its samples.
    pub rows: BTreeMap<String, Vec<Sample>>,
    /// Split name → its document ids.
    pub documents: BTreeMap<String, Vec<String>>,
}

/// Which split each document goes to.
pub fn assign(doc_ids: &[String], settings: &SplitSettings) -> BTreeMap<String, &'static str> {
    let mut ordered: Vec<(String, &String)> = doc_ids
        .iter()
        .map(|id| (sha256_hex(format!("{}:{id}", settings.seed)), id))
        .collect();
    ordered.sort();
    ordered.dedup_by(|a, b| a.1 == b.1);
    let n = ordered.len();
    let share = |fraction: f64| {
        let count = (n as f64 * fraction).round() as usize;
        if n >= 3 && fraction > 0.0 { count.max(1) } else { count }
    };
    let test = share(settings.test);
    let validation = share(settings.validation).min(n.saturating_sub(test));
    ordered
        .into_iter()
        .enumerate()
        .map(|(rank, (_, id))| {
            let split = if rank < test {
                "test"
            } else if rank < test + validation {
                "validation"
            } else {
                "train"
            };
            (id.clone(), split)
        })
        .collect()
}

/// Splits `samples` by document.
pub fn run(samples: Vec<Sample>, settings: &SplitSettings) -> Splits {
    let mut ids: Vec<String> = samples.iter().map(|s| s.doc_id.clone()).collect();
    ids.sort();
    ids.dedup();
    let assignment = assign(&ids, settings);
    let mut splits = Splits::default();
    for name in SPLITS {
        splits.rows.insert(name.to_string(), Vec::new());
        splits.documents.insert(name.to_string(), Vec::new());
    }
    for (id, split) in &assignment {
        splits.documents.entry(split.to_string()).or_default().push(id.clone());
    }
    for sample in samples {
        let split = assignment.get(&sample.doc_id).copied().unwrap_or("train");
        splits.rows.entry(split.to_string()).or_default().push(sample);
    }
    splits
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(doc: &str, k: usize) -> Sample {
        Sample {
            doc_id: doc.into(),
            title: doc.into(),
            source: "file".into(),
            url: format!("file:///{doc}"),
            sample: k,
            temperature: 0.5,
            instruction: "summarize".into(),
            answer: "summary".into(),
            source_text: String::new(),
        }
    }

    #[test]
    fn no_document_is_in_two_splits_and_reruns_agree() {
        let settings = SplitSettings {
            validation: 0.1,
            test: 0.1,
            seed: 42,
        };
        let samples: Vec<Sample> = (0..30)
            .flat_map(|d| (0..4).map(move |k| sample(&format!("doc{d}"), k)))
            .collect();
        let splits = run(samples.clone(), &settings);
        let mut seen = std::collections::HashMap::new();
        for (split, rows) in &splits.rows {
            for row in rows {
                let first = seen.entry(row.doc_id.clone()).or_insert(split.clone());
                assert_eq!(first, split, "{} is in two splits", row.doc_id);
            }
        }
        assert_eq!(splits.documents["test"].len(), 3);
        assert_eq!(splits.documents["validation"].len(), 3);
        assert_eq!(splits.rows["train"].len(), 24 * 4);
        let mut reversed = samples;
        reversed.reverse();
        assert_eq!(
            run(reversed, &settings).documents,
            splits.documents,
            "order does not matter"
        );
        let three = run((0..3).map(|d| sample(&format!("d{d}"), 0)).collect(), &settings);
        assert!(SPLITS.iter().all(|s| three.documents[*s].len() == 1));
    }
}
