//! Retrieval evaluation: did the index find the document a question is about, and how high?
//!
//! Input: questions with the title (or url) of the document that answers each, and for each the
//! ranked documents retrieval returned. Output: hit@1, hit@3, hit@5 (the share of questions whose
//! document is among the first k distinct documents) and the mean reciprocal rank (MRR, over the
//! first 5). A document matches when its url equals the expected text, or its title does, ignoring
//! case and a trailing ` | Site name` on either side (pages differ in whether they carry it).

use serde::Serialize;

/// One question of the set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Question {
    /// What is asked.
    pub question: String,
    /// The title or url of the document that answers it.
    pub expected: String,
}

/// Reads a question set: `question<TAB>expected` per line; `#` comments and blank lines skipped.
pub fn parse_questions(text: &str) -> anyhow::Result<Vec<Question>> {
    let mut questions = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let Some((question, expected)) = line.split_once('\t') else {
            anyhow::bail!(
                "line {}: expected `question<TAB>expected title or url`, found no tab",
                number + 1
            );
        };
        if question.trim().is_empty() || expected.trim().is_empty() || expected.contains('\t') {
            anyhow::bail!(
                "line {}: a question and one expected title or url, separated by one tab",
                number + 1
            );
        }
        questions.push(Question {
            question: question.trim().to_string(),
            expected: expected.trim().to_string(),
        });
    }
    if questions.is_empty() {
        anyhow::bail!("the question file holds no questions");
    }
    Ok(questions)
}

fn normalise(text: &str) -> String {
    let text = text.trim().to_lowercase();
    match text.rsplit_once(" | ") {
        Some((head, _)) => head.trim().to_string(),
        None => text,
    }
}

/// Whether a retrieved document (title, url) is the expected one.
pub fn matches(expected: &str, title: &str, url: &str) -> bool {
    url == expected || normalise(title) == normalise(expected)
}

/// The 1-based rank of the expected document among `ranked` (title, url) documents.
pub fn rank(expected: &str, ranked: &[(String, String)]) -> Option<usize> {
    ranked
        .iter()
        .position(|(title, url)| matches(expected, title, url))
        .map(|i| i + 1)
}

/// The metrics of a set of ranks (`None`: not found in the first 5).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Metrics {
    /// Questions asked.
    pub questions: usize,
    /// Share found first.
    pub hit_at_1: f64,
    /// Share found in the first 3.
    pub hit_at_3: f64,
    /// Share found in the first 5.
    pub hit_at_5: f64,
    /// Mean reciprocal rank over the first 5.
    pub mrr: f64,
}

/// Computes the metrics.
pub fn metrics(ranks: &[Option<usize>]) -> Metrics {
    let n = ranks.len().max(1) as f64;
    let hit = |k: usize| ranks.iter().filter(|r| r.is_some_and(|r| r <= k)).count() as f64 / n;
    Metrics {
        questions: ranks.len(),
        hit_at_1: hit(1),
        hit_at_3: hit(3),
        hit_at_5: hit(5),
        mrr: ranks
            .iter()
            .map(|r| r.filter(|&r| r <= 5).map_or(0.0, |r| 1.0 / r as f64))
            .sum::<f64>()
            / n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_parse_and_bad_lines_are_named() {
        let text = "# comment\nWhere?\tLisbon trip 2025\n\nWhy?\thttps://a.test/x\n";
        let questions = parse_questions(text).unwrap();
        assert_eq!(questions.len(), 2);
        assert_eq!(questions[1].expected, "https://a.test/x");
        let err = parse_questions("a\nno tab here\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
    }

    #[test]
    fn titles_match_without_their_site_suffix() {
        assert!(matches("HNSW explained | Field & Code", "HNSW explained", "http://x"));
        assert!(matches("hnsw explained", "HNSW explained | Field & Code", "http://x"));
        assert!(matches("http://x", "Other", "http://x"));
        assert!(!matches("Tomatoes", "Tomato blight", "http://y"));
    }

    #[test]
    fn metrics_count_hits_and_reciprocal_ranks() {
        let m = metrics(&[Some(1), Some(2), Some(4), None]);
        assert_eq!((m.hit_at_1, m.hit_at_3, m.hit_at_5), (0.25, 0.5, 0.75));
        assert!((m.mrr - (1.0 + 0.5 + 0.25) / 4.0).abs() < 1e-9);
    }
}
