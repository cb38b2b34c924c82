//! The `qa-quality` step: keeps a question only when it is a real question about its fact
//! sentence that the sentence answers, and counts why the others were dropped.
//!
//! Rules, in order (a sample is dropped by the first that fires):
//! - `unparsed`: the reply holds no question (no `?`);
//! - `vague_question`: under four words or over 25, or not opening with a question word;
//! - `meta_question`: it asks about the sentence, the text or the answer, not about the notes;
//! - `copied`: it is the sentence, or holds nearly all of its words;
//! - `leaks_answer`: it already holds every number and name of the sentence (nothing to answer);
//! - `unsupported`: it names a number or a name the chunk and its title do not hold;
//! - `off_topic`: it shares no content word with the sentence and its title, or its embedding is
//!   far from the sentence's (cosine under `min_relevance`);
//! - `duplicate`: the same question as one kept for another chunk of the same document.
//!
//! Of a chunk's samples that pass, the one closest to its sentence is kept.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use engram_shared::embedding::Embedder;
use engram_shared::vectors::Chunk;
use serde::{Deserialize, Serialize};

use super::QaSettings;
use super::ask::Candidate;
use super::facts;

/// The step's name in the registry.
pub const STEP: &str = "qa-quality";

/// Why a sample was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QaRule {
    /// No question in the reply.
    Unparsed,
    /// Too short or long, or not a question.
    VagueQuestion,
    /// About the text, not the notes.
    MetaQuestion,
    /// The sentence itself.
    Copied,
    /// Holds its own answer.
    LeaksAnswer,
    /// A number or name the chunk lacks.
    Unsupported,
    /// Not about the sentence.
    OffTopic,
    /// A question already kept for the document.
    Duplicate,
}

/// Words a question opens with.
const QUESTION_WORDS: [&str; 20] = [
    "what", "which", "who", "whom", "whose", "when", "where", "why", "how", "is", "are", "was", "were", "do", "does",
    "did", "can", "should", "will", "in",
];

/// Words of a question about the text rather than the notes.
const META_WORDS: [&str; 8] = [
    "answer",
    "answers",
    "sentence",
    "passage",
    "text",
    "quiz",
    "question",
    "statement",
];

/// Words too common to show two texts share a topic.
const STOPWORDS: [&str; 24] = [
    "what", "which", "when", "where", "does", "that", "this", "with", "from", "have", "were", "there", "their", "they",
    "about", "into", "your", "much", "many", "long", "after", "before", "been", "will",
];

/// A kept question and answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pair {
    /// The chunk that answers it.
    pub chunk: Chunk,
    /// Which sample it was.
    pub sample: usize,
    /// The question.
    pub question: String,
    /// The answer: the fact sentence (the row adds the chunk's number).
    pub answer: String,
    /// Cosine similarity of the question with the sentence.
    pub relevance: f32,
}

/// A dropped sample.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QaRejected {
    /// Its document.
    pub doc_id: String,
    /// Its chunk's position.
    pub position: u32,
    /// Its sample number.
    pub sample: usize,
    /// The rule that dropped it.
    pub rule: QaRule,
    /// What the rule saw (the missing facts, the measured value).
    pub detail: String,
}

/// What the step kept and dropped.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QaChecked {
    /// One pair per chunk that had a passing sample.
    pub kept: Vec<Pair>,
    /// The dropped samples.
    pub rejected: Vec<QaRejected>,
    /// Samples that passed every rule but lost to a better sample of their chunk.
    pub not_best: usize,
}

impl QaChecked {
    /// Dropped counts per rule.
    pub fn counts(&self) -> BTreeMap<QaRule, usize> {
        let mut counts = BTreeMap::new();
        for rejected in &self.rejected {
            *counts.entry(rejected.rule).or_insert(0) += 1;
        }
        counts
    }
}

fn content_words(text: &str) -> BTreeSet<String> {
    facts::words(text)
        .into_iter()
        .filter(|w| w.chars().count() >= 4 && !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// The rule a sample breaks before the embedding check, if any (with what it saw).
pub fn rule_of(candidate: &Candidate) -> Option<(QaRule, String)> {
    let question = candidate.question.trim();
    if question.is_empty() {
        return Some((QaRule::Unparsed, String::new()));
    }
    let words: Vec<String> = question
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()).to_lowercase())
        .collect();
    if words.len() < 4 || words.len() > 25 || !QUESTION_WORDS.contains(&words[0].as_str()) {
        return Some((QaRule::VagueQuestion, question.to_string()));
    }
    if words.iter().any(|w| META_WORDS.contains(&w.as_str())) {
        return Some((QaRule::MetaQuestion, question.to_string()));
    }
    let sentence = candidate.sentence.as_str();
    let sentence_words = facts::words(sentence);
    let asked = facts::words(question);
    let shared = sentence_words.iter().filter(|w| asked.contains(*w)).count();
    let bare = question.trim_end_matches('?').trim().to_lowercase();
    if sentence.to_lowercase().contains(&bare) || shared * 10 >= sentence_words.len() * 9 {
        return Some((QaRule::Copied, question.to_string()));
    }
    if facts::told(sentence, question).is_empty() {
        return Some((QaRule::LeaksAnswer, question.to_string()));
    }
    let context = format!(
        "{}\n{}\n{}",
        candidate.chunk.title,
        candidate.chunk.heading_path.join("\n"),
        candidate.chunk.text
    );
    let invented = facts::unsupported(question, &context);
    if !invented.is_empty() {
        return Some((QaRule::Unsupported, invented.join(", ")));
    }
    let topic = content_words(&format!("{sentence}\n{}", candidate.chunk.title));
    if content_words(question).is_disjoint(&topic) {
        return Some((QaRule::OffTopic, question.to_string()));
    }
    None
}

/// Checks `candidates` (sorted by document, chunk and sample).
pub async fn run(
    candidates: Vec<Candidate>,
    settings: &QaSettings,
    embedder: Arc<Embedder>,
) -> anyhow::Result<QaChecked> {
    let mut checked = QaChecked::default();
    let mut passing = Vec::new();
    for candidate in candidates {
        match rule_of(&candidate) {
            Some((rule, detail)) => checked.rejected.push(QaRejected {
                doc_id: candidate.chunk.doc_id.clone(),
                position: candidate.chunk.position,
                sample: candidate.sample,
                rule,
                detail,
            }),
            None => passing.push(candidate),
        }
    }
    let texts: Vec<String> = passing
        .iter()
        .flat_map(|c| [c.question.clone(), c.sentence.clone()])
        .collect();
    let model = embedder.clone();
    let vectors = tokio::task::spawn_blocking(move || model.embed(&texts)).await??.vectors;

    // The best passing sample of each chunk, then one question per document.
    let mut best: BTreeMap<(String, u32), Pair> = BTreeMap::new();
    for (i, candidate) in passing.into_iter().enumerate() {
        let relevance = dot(&vectors[2 * i], &vectors[2 * i + 1]);
        if relevance < settings.min_relevance {
            checked.rejected.push(QaRejected {
                doc_id: candidate.chunk.doc_id.clone(),
                position: candidate.chunk.position,
                sample: candidate.sample,
                rule: QaRule::OffTopic,
                detail: format!("{relevance:.3}: {}", candidate.question),
            });
            continue;
        }
        let key = (candidate.chunk.doc_id.clone(), candidate.chunk.position);
        let pair = Pair {
            answer: candidate.sentence,
            question: candidate.question,
            chunk: candidate.chunk,
            sample: candidate.sample,
            relevance,
        };
        match best.get(&key) {
            Some(kept) if kept.relevance >= pair.relevance => checked.not_best += 1,
            Some(_) => {
                checked.not_best += 1;
                best.insert(key, pair);
            }
            None => {
                best.insert(key, pair);
            }
        }
    }
    let mut asked: HashSet<(String, String)> = HashSet::new();
    for pair in best.into_values() {
        if asked.insert((pair.chunk.doc_id.clone(), pair.question.to_lowercase())) {
            checked.kept.push(pair);
        } else {
            checked.rejected.push(QaRejected {
                doc_id: pair.chunk.doc_id.clone(),
                position: pair.chunk.position,
                sample: pair.sample,
                rule: QaRule::Duplicate,
                detail: pair.question,
            });
        }
    }
    Ok(checked)
}

/// Cosine of two unit vectors.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_shared::documents::Source;

    fn candidate(question: &str) -> Candidate {
        Candidate {
            chunk: Chunk {
                doc_id: "sintra".into(),
                position: 0,
                source: Source::File,
                title: "Trip to Sintra".into(),
                url: "file:///sintra.md".into(),
                heading_path: vec![],
                text: "We took the 9:10 train from Rossio. Tickets for the Pena Palace cost €14 each, and \
                       we bought them online the night before. Lunch was at Piriquita."
                    .into(),
            },
            sentence: "Tickets for the Pena Palace cost €14 each, and we bought them online the night before.".into(),
            sample: 0,
            temperature: 0.0,
            question: question.into(),
            reply: String::new(),
        }
    }

    #[test]
    fn each_rule_fires_on_its_case_and_a_good_question_passes() {
        let rule = |q: &str| rule_of(&candidate(q)).map(|r| r.0);
        assert_eq!(rule("How much did the Pena Palace tickets cost?"), None);
        assert_eq!(rule(""), Some(QaRule::Unparsed));
        assert_eq!(rule("Tickets?"), Some(QaRule::VagueQuestion));
        assert_eq!(rule("Tell me about the tickets?"), Some(QaRule::VagueQuestion));
        assert_eq!(rule("What is the answer to this sentence?"), Some(QaRule::MetaQuestion));
        assert_eq!(
            rule("Did tickets for the Pena Palace cost €14 each, and we bought them online the night before?"),
            Some(QaRule::Copied)
        );
        assert_eq!(rule("Did the Pena Palace tickets cost €14?"), Some(QaRule::LeaksAnswer));
        assert_eq!(
            rule("How much did the tickets cost in Lisbon?"),
            Some(QaRule::Unsupported)
        );
        assert_eq!(
            rule("What is the purpose of writing down events?"),
            Some(QaRule::OffTopic)
        );
    }
}
