//! Extractive answers: the reply is the sentence of the sources that the question makes the model
//! find likeliest, cited, or the abstention when the question makes that likelier.
//!
//! A 135M model generating freely starts on a line and copies it, and its first tokens decide
//! which: it quotes the wrong price, or a source's header. Scored whole instead
//! ([`Generator::score_replies`]), every sentence of the sources is a candidate, and the one the
//! question raises most (against the same prompt with the question left empty) is the answer: on
//! `samples/answers.tsv` that answers correctly far more often than generating (README, "Grounded
//! answers"). Every reply is then a sentence a note states, word for word, with the source it is
//! from: nothing invented, and the citation is right about where the words are. The `qa` training
//! task's answers are such sentences, cited the same way, or the abstention. What it cannot do is
//! combine two sentences or rephrase: `generate` answers do that.

use crate::generation::{ChatMessage, GenerationError, Generator, ReplyScore, Role};
use crate::vectors::SearchHit;

use super::abstain::ABSTENTION;
use super::citations::cite;
use super::sentences::sentences;

/// Sentences shorter than this state no answer ("Notes.", "See above.").
const MIN_SENTENCE_CHARS: usize = 12;
/// Sentences longer than this are paragraphs the splitter could not cut, not an answer.
pub const MAX_SENTENCE_CHARS: usize = 300;
/// Most candidate sentences scored per answer, the best sources' first: bounds the work (each is
/// a few dozen tokens run after the prompt).
pub const MAX_CANDIDATES: usize = 64;

/// How the replies are ranked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// How much the question raises each reply's log-probability per token (pointwise mutual
    /// information): what the service does.
    #[default]
    Pmi,
    /// Each reply's log-probability per token under the prompt alone. Kept to measure against
    /// (`eval answers --extract-scoring likelihood`): it favours what is easy to copy.
    Likelihood,
}

impl std::str::FromStr for Scoring {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pmi" => Ok(Scoring::Pmi),
            "likelihood" => Ok(Scoring::Likelihood),
            other => Err(format!("extract scoring {other:?} is not one of pmi, likelihood")),
        }
    }
}

impl std::fmt::Display for Scoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scoring::Pmi => "pmi",
            Scoring::Likelihood => "likelihood",
        })
    }
}

/// A reply the model may choose.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// The reply as it would be given (the sentence and its citation, or the abstention).
    pub reply: String,
    /// The source it is from (1-based), `None` for the abstention.
    pub source: Option<usize>,
}

/// The chosen reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// The reply.
    pub text: String,
    /// The source it quotes (1-based); `None` when the model abstained.
    pub source: Option<usize>,
    /// Its score: how much the question raised its log-probability, per token (or that
    /// log-probability, under [`Scoring::Likelihood`]).
    pub score: f32,
    /// The abstention's score (it is always a candidate).
    pub abstention_score: f32,
    /// How many replies were scored.
    pub candidates: usize,
}

/// The replies to choose among for the first `sources` of `hits` (those the prompt holds, numbered
/// from 1): each source's sentences citing it, a sentence repeated in an overlapping chunk taken
/// from the better-ranked one, at most [`MAX_CANDIDATES`], then the abstention.
pub fn candidates(hits: &[SearchHit], sources: usize) -> Vec<Candidate> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    'sources: for (i, hit) in hits.iter().take(sources).enumerate() {
        for sentence in sentences(&hit.chunk.text) {
            if out.len() == MAX_CANDIDATES {
                break 'sources;
            }
            let chars = sentence.chars().count();
            if (MIN_SENTENCE_CHARS..=MAX_SENTENCE_CHARS).contains(&chars) && seen.insert(sentence.clone()) {
                out.push(Candidate {
                    reply: cite(&sentence, i + 1),
                    source: Some(i + 1),
                });
            }
        }
    }
    out.push(Candidate {
        reply: ABSTENTION.to_string(),
        source: None,
    });
    out
}

/// Of `candidates`, the reply to `messages` (the prompt [`super::prompt::fit`] built) that the
/// question makes likeliest: the one whose log-probability per token rises most from the same
/// prompt with the question left empty to the prompt with it (pointwise mutual information
/// between the question and the reply, given the sources). Likelihood alone favours what is
/// easy to copy: long sentences, lists, whatever the sources open with, whatever the question;
/// the rise is what the question does ([`Scoring::Pmi`]). The first of equals wins.
pub fn choose(
    generator: &Generator,
    messages: &[ChatMessage],
    candidates: &[Candidate],
    scoring: Scoring,
) -> Result<Extracted, GenerationError> {
    let replies: Vec<String> = candidates.iter().map(|c| c.reply.clone()).collect();
    let mut scores = generator.score_replies(messages, &replies)?;
    if scoring == Scoring::Pmi {
        let mut unasked = messages.to_vec();
        if let Some(last) = unasked.iter_mut().rev().find(|m| m.role == Role::User) {
            last.content.clear();
        }
        let prior = generator.score_replies(&unasked, &replies)?;
        for (score, prior) in scores.iter_mut().zip(&prior) {
            score.log_prob -= prior.log_prob;
        }
    }
    let best = best(&scores).ok_or_else(|| GenerationError::Request("no reply to choose from".into()))?;
    let abstention_score = candidates
        .iter()
        .zip(&scores)
        .find(|(c, _)| c.source.is_none())
        .map_or(f32::NAN, |(_, s)| s.mean());
    Ok(Extracted {
        text: candidates[best].reply.clone(),
        source: candidates[best].source,
        score: scores[best].mean(),
        abstention_score,
        candidates: candidates.len(),
    })
}

/// The index of the highest score per token (the first of equals; NaN never wins).
fn best(scores: &[ReplyScore]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, score) in scores.iter().enumerate() {
        let mean = score.mean();
        if !mean.is_nan() && best.is_none_or(|(_, b)| mean > b) {
            best = Some((i, mean));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::documents::Source;
    use crate::vectors::Chunk;

    fn hit(text: &str) -> SearchHit {
        SearchHit {
            id: uuid::Uuid::nil(),
            chunk: Chunk {
                doc_id: "d".into(),
                position: 0,
                source: Source::File,
                title: "T".into(),
                url: "file:///t".into(),
                heading_path: vec![],
                text: text.into(),
            },
            score: 1.0,
        }
    }

    #[test]
    fn candidates_are_the_given_sources_sentences_cited_then_the_abstention() {
        let hits = [
            hit("Tickets were €20 each. Ok.\nWe left at 9:30 sharp."),
            hit("We left at 9:30 sharp.\nThe train took 40 minutes."),
            hit("Not given to the model: it did not fit."),
        ];
        let replies: Vec<(String, Option<usize>)> =
            candidates(&hits, 2).into_iter().map(|c| (c.reply, c.source)).collect();
        assert_eq!(
            replies,
            [
                ("Tickets were €20 each [1].".to_string(), Some(1)),
                ("We left at 9:30 sharp [1].".to_string(), Some(1)),
                ("The train took 40 minutes [2].".to_string(), Some(2)),
                (ABSTENTION.to_string(), None),
            ]
        );
        let long: String = (0..200).map(|i| format!("Fact number {i} is here. ")).collect();
        assert_eq!(candidates(&[hit(&long)], 1).len(), MAX_CANDIDATES + 1);
    }

    #[test]
    fn scoring_names_round_trip_and_an_unknown_one_is_refused() {
        for scoring in [Scoring::Pmi, Scoring::Likelihood] {
            assert_eq!(scoring.to_string().parse::<Scoring>(), Ok(scoring));
        }
        assert!("mean".parse::<Scoring>().is_err_and(|e| e.contains("pmi, likelihood")));
    }

    #[test]
    fn the_best_mean_wins_and_nan_never_does() {
        let score = |log_prob: f32, tokens: usize| ReplyScore { log_prob, tokens };
        assert_eq!(best(&[score(-10.0, 5), score(-3.0, 1), score(-4.0, 4)]), Some(2));
        assert_eq!(best(&[score(f32::NAN, 1), score(-9.0, 1)]), Some(1));
        assert_eq!(best(&[score(-1.0, 1), score(-1.0, 1)]), Some(0));
        assert_eq!(best(&[]), None);
    }
}
