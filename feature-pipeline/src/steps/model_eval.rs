//! Model evaluation on a dataset's test split: does the fine-tuned model summarize better than
//! its base?
//!
//! Each distinct test instruction (a document; the split holds several reference summaries of
//! it) is answered once per model, greedily, through the `Generator` with the prompt the service
//! and the training use. Each answer is scored against its document's references: ROUGE-1/2/L
//! F-measure as Python's `rouge-score` computes them (`rouge.rs`), the best over the references
//! (its `score_multi`), then averaged over documents; its length; and the faithfulness cosine the
//! quality step uses (answer vs document embeddings). A paired bootstrap over documents gives a
//! 95% interval of the ROUGE-L difference between two models, which a test split of a few
//! documents needs beside its mean.

use std::collections::BTreeMap;

use engram_shared::embedding::Embedder;
use engram_shared::generation::{ChatMessage, Flow, GenerationParams, Generator, Role};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use super::rouge::{rouge_l, rouge_n};

/// One test document: its instruction and reference summaries.
#[derive(Debug, Clone, PartialEq)]
pub struct TestItem {
    /// The user message (the summarization prompt around the document).
    pub instruction: String,
    /// The teacher's summaries of it.
    pub references: Vec<String>,
}

/// Groups `(instruction, answer)` rows by instruction, in first-seen order.
pub fn items<'a>(rows: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<TestItem> {
    let mut order: Vec<String> = Vec::new();
    let mut references: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (instruction, answer) in rows {
        let entry = references.entry(instruction.to_string()).or_insert_with(|| {
            order.push(instruction.to_string());
            Vec::new()
        });
        entry.push(answer.to_string());
    }
    order
        .into_iter()
        .map(|instruction| TestItem {
            references: references.remove(&instruction).unwrap_or_default(),
            instruction,
        })
        .collect()
}

/// The document inside an instruction: from its `# title` line on (the whole text if it has none).
pub fn document_text(instruction: &str) -> &str {
    if instruction.starts_with("# ") {
        return instruction;
    }
    instruction.find("\n# ").map_or(instruction, |i| &instruction[i + 1..])
}

/// One model's scores on a test split.
#[derive(Debug, Clone, Serialize)]
pub struct ModelScores {
    /// The model's label (name and version).
    pub model: String,
    /// Documents scored.
    pub documents: usize,
    /// Mean ROUGE-1 F.
    pub rouge1: f64,
    /// Mean ROUGE-2 F.
    pub rouge2: f64,
    /// Mean ROUGE-L F.
    pub rouge_l: f64,
    /// Mean answer length in characters.
    pub mean_chars: f64,
    /// Mean cosine between answer and document embeddings.
    pub faithfulness: f64,
    /// Each document's ROUGE-L, in item order (for paired comparisons).
    pub per_document_rouge_l: Vec<f64>,
    /// The answers, in item order.
    pub answers: Vec<String>,
}

/// Answers every item with `generator`, greedily, calling `tick` after each.
pub fn answer_all(
    generator: &Generator,
    system: &str,
    items: &[TestItem],
    max_tokens: usize,
    mut tick: impl FnMut(),
) -> anyhow::Result<Vec<String>> {
    let params = GenerationParams {
        max_tokens,
        temperature: 0.0,
        ..GenerationParams::default()
    };
    let mut answers = Vec::with_capacity(items.len());
    for item in items {
        let messages = [
            ChatMessage::new(Role::System, system),
            ChatMessage::new(Role::User, item.instruction.clone()),
        ];
        let completion = generator.generate(&messages, &params, |_| Flow::Continue)?;
        answers.push(completion.text.trim().to_string());
        tick();
    }
    Ok(answers)
}

fn mean(values: impl IntoIterator<Item = f64>) -> f64 {
    let (sum, n) = values.into_iter().fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

fn best(references: &[String], score: impl Fn(&str) -> f64) -> f64 {
    references.iter().map(|r| score(r)).fold(0.0, f64::max)
}

/// Scores `answers` (one per item) against the items' references.
pub fn score(model: &str, items: &[TestItem], answers: &[String], embedder: &Embedder) -> anyhow::Result<ModelScores> {
    anyhow::ensure!(items.len() == answers.len(), "one answer per test document");
    let mut r1 = Vec::new();
    let mut r2 = Vec::new();
    let mut rl = Vec::new();
    for (item, answer) in items.iter().zip(answers) {
        r1.push(best(&item.references, |r| rouge_n(r, answer, 1).fmeasure));
        r2.push(best(&item.references, |r| rouge_n(r, answer, 2).fmeasure));
        rl.push(best(&item.references, |r| rouge_l(r, answer).fmeasure));
    }
    let documents: Vec<&str> = items.iter().map(|i| document_text(&i.instruction)).collect();
    let faithfulness = if items.is_empty() {
        0.0
    } else {
        let docs = embedder.embed(&documents)?;
        let said = embedder.embed(answers)?;
        mean(
            docs.vectors
                .iter()
                .zip(&said.vectors)
                .map(|(a, b)| a.iter().zip(b).map(|(x, y)| f64::from(x * y)).sum::<f64>()),
        )
    };
    Ok(ModelScores {
        model: model.to_string(),
        documents: items.len(),
        rouge1: mean(r1),
        rouge2: mean(r2),
        rouge_l: mean(rl.iter().copied()),
        mean_chars: mean(answers.iter().map(|a| a.chars().count() as f64)),
        faithfulness,
        per_document_rouge_l: rl,
        answers: answers.to_vec(),
    })
}

/// The mean difference `a − b` over paired values and a 95% paired-bootstrap interval of it
/// (`resamples` draws of the documents with replacement, seeded).
pub fn bootstrap_difference(a: &[f64], b: &[f64], resamples: usize, seed: u64) -> (f64, f64, f64) {
    let n = a.len().min(b.len());
    if n == 0 {
        return (0.0, 0.0, 0.0);
    }
    let diffs: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let observed = mean(diffs.iter().copied());
    let mut rng = StdRng::seed_from_u64(seed);
    let mut means: Vec<f64> = (0..resamples.max(1))
        .map(|_| mean((0..n).map(|_| diffs[rng.random_range(0..n)])))
        .collect();
    means.sort_by(f64::total_cmp);
    let at = |q: f64| means[((q * (means.len() - 1) as f64).round() as usize).min(means.len() - 1)];
    (observed, at(0.025), at(0.975))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_group_by_instruction_in_order() {
        let grouped = items([("b", "1"), ("a", "2"), ("b", "3")]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].instruction, "b");
        assert_eq!(grouped[0].references, vec!["1", "3"]);
        assert_eq!(grouped[1].references, vec!["2"]);
    }

    #[test]
    fn the_document_starts_at_its_title() {
        let instruction = "Summarize in 800 characters.\nKeep names.\n\n# Trip\n\nWe took the train.";
        assert_eq!(document_text(instruction), "# Trip\n\nWe took the train.");
        assert_eq!(document_text("no title here"), "no title here");
    }

    #[test]
    fn the_bootstrap_interval_holds_the_mean_and_narrows_with_agreement() {
        let a = [0.5, 0.6, 0.7, 0.4, 0.55];
        let b = [0.3, 0.5, 0.6, 0.35, 0.5];
        let (mean, lo, hi) = bootstrap_difference(&a, &b, 2000, 1);
        assert!((mean - 0.1).abs() < 1e-12);
        assert!(lo <= mean && mean <= hi && lo > 0.0, "{lo} {mean} {hi}");
        let (m, l, h) = bootstrap_difference(&a, &a, 500, 1);
        assert_eq!((m, l, h), (0.0, 0.0, 0.0));
    }
}
