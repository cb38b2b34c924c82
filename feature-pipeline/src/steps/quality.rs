//! The quality step: drops summaries that would teach the student the wrong thing, and counts why.
//!
//! Rules, in order (a summary is dropped by the first that fires):
//! - `empty`: nothing, or under 20 characters;
//! - `over_budget`: longer than the character budget the prompt asked for;
//! - `copied`: mostly lifted from the source (the share of its word 8-grams found in the source);
//! - `unfaithful`: its embedding is far from the source's (cosine below a threshold): it talks
//!   about something else;
//! - `near_duplicate`: almost the same words (3-gram Jaccard) as a kept summary of the same document;
//! - `judge` (optional): the teacher, asked to rate faithfulness and coverage from 1 to 5, scored it
//!   below the minimum;
//! - `not_best` (optional): its document kept more summaries than `keep_best`, and it is not among
//!   the most faithful of them. Best-of-n selection is what makes a teacher's samples better than
//!   its typical answer: with the base model as its own teacher, a dataset of every sample that
//!   passes teaches the student what it already does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use engram_shared::embedding::Embedder;
use engram_shared::generation::{ChatMessage, Role};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::distil::Sample;
use crate::teacher::{CachedTeacher, TeacherRequest};

/// The step's name in the registry.
pub const STEP: &str = "quality";

/// Why a summary was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// Empty or nearly.
    Empty,
    /// Over the character budget.
    OverBudget,
    /// Copied from the source.
    Copied,
    /// Not about the source.
    Unfaithful,
    /// Near-duplicate of a sibling.
    NearDuplicate,
    /// Scored low by the judge.
    Judge,
    /// Passed, but its document has more faithful summaries than `keep_best` allows.
    NotBest,
}

/// Thresholds.
#[derive(Debug, Clone, Serialize)]
pub struct QualitySettings {
    /// The character budget (from the distil settings).
    pub budget_chars: usize,
    /// Largest share of the summary's word 8-grams that may appear in the source.
    pub max_copied: f64,
    /// Smallest cosine similarity between summary and source embeddings.
    pub min_faithfulness: f32,
    /// Largest word-3-gram Jaccard similarity with a kept sibling.
    pub max_sibling_similarity: f64,
    /// Ask the teacher to score each summary, and drop those under this score (1–5).
    pub judge_min: Option<u8>,
    /// Keep at most this many summaries per document (those that passed every rule), the most
    /// faithful first. (Left out of the step's recorded settings when unset, so datasets made
    /// before the setting existed keep their step keys.)
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keep_best: Option<usize>,
}

/// A dropped summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Rejected {
    /// Its document.
    pub doc_id: String,
    /// Its number.
    pub sample: usize,
    /// The rule that dropped it.
    pub rule: Rule,
    /// The measured value.
    pub value: f64,
}

/// What the step kept and dropped.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Checked {
    /// The summaries that passed, in input order.
    pub kept: Vec<Sample>,
    /// The others.
    pub rejected: Vec<Rejected>,
    /// Sources longer than the embedding model reads (their faithfulness is judged on the start).
    pub truncated_sources: usize,
}

impl Checked {
    /// Dropped counts per rule.
    pub fn counts(&self) -> BTreeMap<Rule, usize> {
        let mut counts = BTreeMap::new();
        for rejected in &self.rejected {
            *counts.entry(rejected.rule).or_insert(0) += 1;
        }
        counts
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

fn grams(words: &[String], n: usize) -> HashSet<String> {
    words.windows(n).map(|w| w.join(" ")).collect()
}

/// Share of `summary`'s word 8-grams that occur in `source` (0 when it has none).
pub fn copied_share(summary: &str, source: &str) -> f64 {
    let summary = grams(&words(summary), 8);
    if summary.is_empty() {
        return 0.0;
    }
    let source = grams(&words(source), 8);
    summary.iter().filter(|g| source.contains(*g)).count() as f64 / summary.len() as f64
}

/// Jaccard similarity of two texts' word 3-grams.
pub fn similarity(a: &str, b: &str) -> f64 {
    let (a, b) = (grams(&words(a), 3), grams(&words(b), 3));
    if a.is_empty() && b.is_empty() {
        return 1.0;
    }
    a.intersection(&b).count() as f64 / a.union(&b).count() as f64
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The judge's question.
fn judge_request(sample: &Sample) -> TeacherRequest {
    let question = format!(
        "Rate the summary of the document below from 1 (wrong or useless) to 5 (faithful and complete). \
         Reply with the digit only.\n\n## Document\n{}\n\n## Summary\n{}",
        sample.source_text, sample.answer
    );
    TeacherRequest {
        messages: vec![
            ChatMessage::new(Role::System, "You grade summaries strictly and reply with one digit."),
            ChatMessage::new(Role::User, question),
        ],
        temperature: 0.0,
        max_tokens: 4,
        seed: 0,
    }
}

/// Checks `samples` (sorted by document, then number).
pub async fn run(
    samples: Vec<Sample>,
    settings: &QualitySettings,
    embedder: Arc<Embedder>,
    judge: Option<Arc<CachedTeacher>>,
    progress: &ProgressBar,
) -> anyhow::Result<Checked> {
    progress.set_length(samples.len() as u64);
    // One embedding per distinct source, one per summary.
    let mut source_index: HashMap<String, usize> = HashMap::new();
    let mut sources: Vec<String> = Vec::new();
    for sample in &samples {
        source_index.entry(sample.doc_id.clone()).or_insert_with(|| {
            sources.push(format!("{}\n\n{}", sample.title, sample.source_text));
            sources.len() - 1
        });
    }
    let answers: Vec<String> = samples.iter().map(|s| s.answer.clone()).collect();
    let model = embedder.clone();
    let (source_vectors, answer_vectors, truncated_sources) = tokio::task::spawn_blocking(move || {
        let sources = model.embed(&sources)?;
        let answers = model.embed(&answers)?;
        anyhow::Ok((sources.vectors, answers.vectors, sources.truncated.len()))
    })
    .await??;

    let mut kept: Vec<Sample> = Vec::new();
    let mut kept_faithfulness: Vec<f32> = Vec::new();
    let mut rejected = Vec::new();
    for (i, sample) in samples.into_iter().enumerate() {
        progress.inc(1);
        let chars = sample.answer.chars().count();
        let faithfulness = cosine(&answer_vectors[i], &source_vectors[source_index[&sample.doc_id]]);
        let verdict = if chars < 20 {
            Some((Rule::Empty, chars as f64))
        } else if chars > settings.budget_chars {
            Some((Rule::OverBudget, chars as f64))
        } else {
            // The prompt shows the title as a heading above the text: copying it counts too.
            let shown = format!("{}\n{}", sample.title, sample.source_text);
            let copied = copied_share(&sample.answer, &shown);
            let sibling = kept
                .iter()
                .filter(|k| k.doc_id == sample.doc_id)
                .map(|k| similarity(&k.answer, &sample.answer))
                .fold(0.0, f64::max);
            if copied > settings.max_copied {
                Some((Rule::Copied, copied))
            } else if faithfulness < settings.min_faithfulness {
                Some((Rule::Unfaithful, f64::from(faithfulness)))
            } else if sibling > settings.max_sibling_similarity {
                Some((Rule::NearDuplicate, sibling))
            } else {
                None
            }
        };
        let verdict = match (verdict, &judge, settings.judge_min) {
            (None, Some(judge), Some(min)) => {
                let reply = judge.ask(&judge_request(&sample)).await?;
                let score = reply.text.chars().find_map(|c| c.to_digit(10)).unwrap_or(0) as u8;
                (score < min).then_some((Rule::Judge, f64::from(score)))
            }
            (verdict, _, _) => verdict,
        };
        match verdict {
            Some((rule, value)) => rejected.push(Rejected {
                doc_id: sample.doc_id.clone(),
                sample: sample.sample,
                rule,
                value,
            }),
            None => {
                kept_faithfulness.push(faithfulness);
                kept.push(sample);
            }
        }
    }
    if let Some(limit) = settings.keep_best {
        (kept, rejected) = keep_best(kept, &kept_faithfulness, rejected, limit);
    }
    Ok(Checked {
        kept,
        rejected,
        truncated_sources,
    })
}

/// Of each document's `kept` summaries, the `limit` most faithful (ties: the lower sample number),
/// in input order; the others join `rejected` as `not_best`.
fn keep_best(
    kept: Vec<Sample>,
    faithfulness: &[f32],
    mut rejected: Vec<Rejected>,
    limit: usize,
) -> (Vec<Sample>, Vec<Rejected>) {
    let mut by_document: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, sample) in kept.iter().enumerate() {
        by_document.entry(sample.doc_id.as_str()).or_default().push(i);
    }
    let mut chosen = vec![false; kept.len()];
    for indices in by_document.values_mut() {
        indices.sort_by(|&a, &b| {
            faithfulness[b]
                .total_cmp(&faithfulness[a])
                .then(kept[a].sample.cmp(&kept[b].sample))
        });
        for &i in indices.iter().take(limit) {
            chosen[i] = true;
        }
    }
    let mut best = Vec::with_capacity(kept.len());
    for (i, sample) in kept.into_iter().enumerate() {
        if chosen[i] {
            best.push(sample);
        } else {
            rejected.push(Rejected {
                doc_id: sample.doc_id.clone(),
                sample: sample.sample,
                rule: Rule::NotBest,
                value: f64::from(faithfulness[i]),
            });
        }
    }
    (best, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::teacher::{Prices, Teacher, TeacherError, TeacherReply};

    /// A stand-in for the judge LLM: scores by a rule it states, so the test knows the answers.
    struct StrictJudge;

    #[async_trait::async_trait]
    impl Teacher for StrictJudge {
        fn id(&self) -> &str {
            "test:judge"
        }

        async fn ask(&self, request: &TeacherRequest) -> Result<TeacherReply, TeacherError> {
            let question = &request.messages[1].content;
            let summary = question.split("## Summary").nth(1).unwrap_or_default();
            let text = if summary.contains("Pena palace") { "5" } else { "2" };
            Ok(TeacherReply {
                text: text.into(),
                prompt_tokens: 1,
                completion_tokens: 1,
            })
        }
    }

    fn sample(k: usize, answer: &str) -> Sample {
        Sample {
            doc_id: "doc".into(),
            title: "Trip to Sintra".into(),
            source: "file".into(),
            url: "file:///sintra.md".into(),
            sample: k,
            temperature: 0.5,
            instruction: "summarize".into(),
            answer: answer.into(),
            source_text: "We took the early train from Lisbon Rossio to Sintra and walked up to the Pena \
                          palace before noon. Lunch was at a small place near the station."
                .into(),
        }
    }

    #[tokio::test]
    async fn every_rule_fires_on_its_own_case_and_the_judge_scores_the_rest() {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/all-MiniLM-L6-v2");
        if !models.exists() {
            panic!("{} is missing: run scripts/fetch-models.sh", models.display());
        }
        let embedder = Arc::new(Embedder::load(&models, Default::default()).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let registry = engram_shared::registry::Registry::open_sqlite(&dir.path().join("r.sqlite"))
            .await
            .unwrap();
        let judge = Arc::new(CachedTeacher::new(
            Arc::new(StrictJudge),
            registry,
            Prices::default(),
            1,
        ));
        let samples = vec![
            sample(0, "Too short"),
            sample(1, &"A day trip to Sintra by train. ".repeat(40)),
            sample(
                2,
                "We took the early train from Lisbon Rossio to Sintra and walked up to the Pena palace",
            ),
            sample(
                3,
                "Quarterly revenue grew in the semiconductor segment while margins fell.",
            ),
            sample(
                4,
                "## Trip to Sintra\nAn early train from Lisbon, then a morning walk up to the Pena palace.",
            ),
            sample(
                5,
                "## Trip to Sintra\nAn early train from Lisbon, then a morning walk up to the Pena palace!",
            ),
            sample(
                6,
                "## Trip to Sintra\nBy train from Lisbon to Sintra; lunch near the station afterwards.",
            ),
        ];
        let settings = QualitySettings {
            budget_chars: 400,
            max_copied: 0.7,
            min_faithfulness: 0.45,
            max_sibling_similarity: 0.85,
            judge_min: Some(3),
            keep_best: None,
        };
        let checked = run(
            samples,
            &settings,
            embedder,
            Some(judge.clone()),
            &ProgressBar::hidden(),
        )
        .await
        .unwrap();
        let rules: Vec<(usize, Rule)> = checked.rejected.iter().map(|r| (r.sample, r.rule)).collect();
        assert_eq!(
            rules,
            vec![
                (0, Rule::Empty),
                (1, Rule::OverBudget),
                (2, Rule::Copied),
                (3, Rule::Unfaithful),
                (5, Rule::NearDuplicate),
                (6, Rule::Judge),
            ]
        );
        assert_eq!(checked.kept.iter().map(|s| s.sample).collect::<Vec<_>>(), vec![4]);
        assert_eq!(
            judge.spent().calls,
            2,
            "the judge sees only what passed the other rules"
        );
    }

    #[test]
    fn keep_best_keeps_each_documents_most_faithful_summaries_in_order() {
        let mut kept = vec![sample(0, "a"), sample(1, "b"), sample(2, "c"), sample(3, "d")];
        kept[3].doc_id = "other".into();
        let (best, rejected) = keep_best(kept, &[0.5, 0.7, 0.7, 0.1], Vec::new(), 2);
        let kept: Vec<(&str, usize)> = best.iter().map(|s| (s.doc_id.as_str(), s.sample)).collect();
        assert_eq!(kept, vec![("doc", 1), ("doc", 2), ("other", 3)]);
        assert_eq!(rejected.len(), 1);
        assert_eq!((rejected[0].sample, rejected[0].rule), (0, Rule::NotBest));
        assert!((rejected[0].value - 0.5).abs() < 1e-6);
        let (one, _) = keep_best(vec![sample(0, "a"), sample(1, "b")], &[0.6, 0.6], Vec::new(), 1);
        assert_eq!(one[0].sample, 0, "a tie goes to the lower sample number");
    }

    #[test]
    fn copying_and_similarity_are_measured_on_words() {
        let source =
            "We took the early train from Lisbon Rossio to Sintra and walked up to the Pena palace before noon";
        assert!(copied_share(source, source) > 0.99);
        assert_eq!(
            copied_share("A day trip to Sintra by train, with a morning walk to Pena.", source),
            0.0
        );
        assert!(similarity("the cat sat on the mat", "the cat sat on the mat") > 0.99);
        assert!(similarity("the cat sat on the mat", "a dog ran in the park") < 0.01);
    }
}
