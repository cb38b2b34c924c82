//! How close each candidate sentence is to the question, by the retrieval embedder: the second
//! judge of an extractive answer, beside the language model's noisy channel.
//!
//! The channel ([`super::extract`]) asks the 135M model which sentence the question is likeliest
//! to be asked of, and it is drawn to any sentence of the right form: "What torque do the bottle
//! cage bolts take?" is as likely under "Stem bolts: 5 Nm" as under an answer. The embedder was
//! trained for the opposite strength (what a text is about, not its form), and reading each
//! sentence under its title and headings (`Lisbon trip 2025 > Budget: Total | €1,660`) it tells
//! whether the sentence is about what was asked. So a sentence must be close enough to be a
//! candidate at all ([`Closeness::min`]; none is, and the notes do not say), and among those the
//! channel's score per token is added to [`Closeness::weight`] times the cosine. Measured on
//! `samples/answers.tsv` and `samples/answers-heldout.tsv` (README, "Conversations and grounded
//! answers"): more answers right and more unanswerable questions declined than either alone.

use crate::embedding::{Embedder, EmbeddingError};

use super::extract::Candidate;

/// Default of [`Closeness::weight`]: how many nats per question token one unit of cosine is
/// worth. The measured plateau runs from 5 to 10; 8 is inside it.
pub const DEFAULT_WEIGHT: f32 = 8.0;
/// Default of [`Closeness::min`] (ENGRAM_MIN_SENTENCE_RELEVANCE): a sentence further from the
/// question than this, read under its headings, is not about it.
pub const DEFAULT_MIN: f32 = 0.3;

/// How the sentences' closeness to the question enters the choice of an extractive answer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Closeness {
    /// Added to the model's score per token, times the cosine (0: the model alone decides).
    pub weight: f32,
    /// Sentences below this cosine are not candidates (-1: every sentence is).
    pub min: f32,
    /// Only sentences whose source states every name the question gives are candidates
    /// ([`super::names`]; ENGRAM_NAMES_MUST_MATCH).
    pub names: bool,
}

impl Default for Closeness {
    fn default() -> Self {
        Self {
            weight: DEFAULT_WEIGHT,
            min: DEFAULT_MIN,
            names: true,
        }
    }
}

impl Closeness {
    /// Neither gate nor weight nor names: the model's score alone, as before this module.
    pub const OFF: Closeness = Closeness {
        weight: 0.0,
        min: -1.0,
        names: false,
    };

    /// Whether the embedder need run at all.
    pub fn is_off(&self) -> bool {
        self.weight == 0.0 && self.min <= -1.0
    }
}

/// The text a sentence is embedded as: where it stands, then the sentence (`Knife Care >
/// Sharpening: Find the angle: about 15° per side`).
pub fn read(candidate: &Candidate) -> String {
    if candidate.context.is_empty() {
        candidate.sentence.clone()
    } else {
        format!("{}: {}", candidate.context, candidate.sentence)
    }
}

/// The cosine between `question` and each candidate read under its headings, in order; `NaN` for
/// the abstention (it has no sentence).
pub fn closeness(embedder: &Embedder, question: &str, candidates: &[Candidate]) -> Result<Vec<f32>, EmbeddingError> {
    let sentences: Vec<usize> = (0..candidates.len())
        .filter(|&i| candidates[i].source.is_some())
        .collect();
    let mut out = vec![f32::NAN; candidates.len()];
    if sentences.is_empty() {
        return Ok(out);
    }
    let mut texts = Vec::with_capacity(sentences.len() + 1);
    texts.push(question.to_string());
    texts.extend(sentences.iter().map(|&i| read(&candidates[i])));
    let vectors = embedder.embed(&texts)?.vectors;
    let Some((asked, read)) = vectors.split_first() else {
        return Ok(out); // one vector per text: never empty
    };
    for (&i, vector) in sentences.iter().zip(read) {
        // The embedder's vectors are L2-normalised: the dot product is the cosine.
        out[i] = asked.iter().zip(vector).map(|(a, b)| a * b).sum();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(context: &str, sentence: &str, source: Option<usize>) -> Candidate {
        Candidate {
            reply: sentence.to_string(),
            source,
            sentence: sentence.to_string(),
            context: context.to_string(),
            document_text: String::new(),
        }
    }

    #[test]
    fn a_sentence_is_read_under_where_it_stands() {
        assert_eq!(
            read(&candidate("Knife Care > Sharpening", "About 15° per side.", Some(1))),
            "Knife Care > Sharpening: About 15° per side."
        );
        assert_eq!(
            read(&candidate("", "About 15° per side.", Some(1))),
            "About 15° per side."
        );
    }

    #[test]
    fn off_means_no_gate_and_no_weight() {
        assert!(Closeness::OFF.is_off());
        assert!(!Closeness::default().is_off());
        assert!(
            !Closeness {
                weight: 0.0,
                min: 0.2,
                names: false
            }
            .is_off()
        );
    }
}
