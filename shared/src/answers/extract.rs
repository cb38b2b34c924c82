//! Extractive answers: the reply is the sentence of the sources the question is likeliest to be
//! asked of, cited.
//!
//! A 135M model generating freely starts on a line and copies it, and its first tokens decide
//! which: it quotes the wrong price, or a source's header. Scored whole instead
//! ([`Generator::score_replies`]), every sentence of the sources is a candidate, and the one under
//! which the model finds the user's question likeliest (as the question the sentence answers) is
//! the answer: on `samples/answers.tsv` that answers correctly more than twice as often as
//! generating (README, "Conversations and grounded answers"). The embedder has a say too
//! ([`super::closeness`]): a sentence must be about what was asked. Every reply is then a
//! sentence a note states, word for word, with the source it is from: nothing invented, and the citation is right about where the words are. The `qa` training
//! task's answers are such sentences, cited the same way, or the abstention. What it cannot do is
//! combine two sentences or rephrase: `generate` answers do that.

use crate::embedding::{Embedder, EmbeddingError};
use crate::generation::{ChatMessage, GenerationError, Generator, ReplyScore, Role};
use crate::vectors::SearchHit;

use super::abstain::ABSTENTION;
use super::answer_type::AnswerType;
use super::citations::cite;
use super::closeness::{Closeness, closeness};
use super::names::{all_stated, documents, names};
use super::sentences::sentences;

/// Why no reply could be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The language model failed to score the sentences.
    #[error(transparent)]
    Generation(#[from] GenerationError),
    /// The embedder failed to read them.
    #[error(transparent)]
    Embedding(#[from] EmbeddingError),
}

/// Sentences shorter than this state no answer ("Notes.", "See above.").
const MIN_SENTENCE_CHARS: usize = 12;
/// Sentences longer than this are paragraphs the splitter could not cut, not an answer.
pub const MAX_SENTENCE_CHARS: usize = 300;
/// Most candidate sentences scored per answer, the best sources' first: bounds the work (each is
/// a few dozen tokens run after the prompt).
pub const MAX_CANDIDATES: usize = 64;

/// How the replies are ranked. The service uses the default, [`Scoring::Channel`]; the others
/// are kept to measure against (`eval answers --extract-scoring`, README).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scoring {
    /// How much the question raises each reply's log-probability per token (pointwise mutual
    /// information, against the same prompt with the question left empty).
    Pmi,
    /// Each reply's log-probability per token under the prompt alone: it favours what is easy
    /// to copy (long sentences, lists, whatever the sources open with).
    Likelihood,
    /// The other way round (a noisy channel): the question's log-probability as the one each
    /// sentence answers, the sentence alone in the prompt. Nothing to normalise (the question is
    /// the same for every sentence) and no source's neighbours to copy from. The abstention has
    /// no sentence and is never chosen while a sentence is left: abstaining is left to the
    /// answer type, the sentences' closeness and the relevance threshold.
    #[default]
    Channel,
}

impl std::str::FromStr for Scoring {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "pmi" => Ok(Scoring::Pmi),
            "likelihood" => Ok(Scoring::Likelihood),
            "channel" => Ok(Scoring::Channel),
            other => Err(format!(
                "extract scoring {other:?} is not one of pmi, likelihood, channel"
            )),
        }
    }
}

impl std::fmt::Display for Scoring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Scoring::Pmi => "pmi",
            Scoring::Likelihood => "likelihood",
            Scoring::Channel => "channel",
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
    /// The sentence alone (empty for the abstention).
    pub sentence: String,
    /// Where the sentence stands: its document's title and the headings above it
    /// (`Knife Care > Sharpening`), empty for the abstention.
    pub context: String,
    /// What was retrieved of its document, where the question's names are looked for
    /// ([`super::names::documents`]); empty for the abstention.
    pub document_text: String,
}

/// The chosen reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Extracted {
    /// The reply.
    pub text: String,
    /// The source it quotes (1-based); `None` when the model abstained.
    pub source: Option<usize>,
    /// Its score under the [`Scoring`] used, plus its closeness term (higher is better).
    pub score: f32,
    /// The abstention's score; under [`Scoring::Channel`], which never chooses it, the
    /// question's log-probability per token with no sentence given.
    pub abstention_score: f32,
    /// How many replies were scored (those of the question's answer type close enough to the
    /// question, and the abstention).
    pub candidates: usize,
    /// Every scored candidate (index into the candidates, score with the closeness term), best
    /// first: what `eval answers --json` shows of the choice.
    pub ranked: Vec<(usize, f32)>,
    /// Each candidate's cosine to the question (index as the candidates; `NaN` where not read:
    /// the abstention, a sentence of the wrong type, or all when [`Closeness::OFF`]).
    pub closeness: Vec<f32>,
}

/// The replies to choose among for the first `sources` of `hits` (those the prompt holds, numbered
/// from 1): each source's sentences citing it, a sentence repeated in an overlapping chunk taken
/// from the better-ranked one, at most [`MAX_CANDIDATES`], then the abstention.
pub fn candidates(hits: &[SearchHit], sources: usize) -> Vec<Candidate> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    let documents = documents(hits);
    'sources: for (i, hit) in hits.iter().take(sources).enumerate() {
        let context = context(&hit.chunk.title, &hit.chunk.heading_path);
        let document_text = &documents[i];
        for sentence in sentences(&hit.chunk.text) {
            if out.len() == MAX_CANDIDATES {
                break 'sources;
            }
            let chars = sentence.chars().count();
            if (MIN_SENTENCE_CHARS..=MAX_SENTENCE_CHARS).contains(&chars) && seen.insert(sentence.clone()) {
                out.push(Candidate {
                    reply: cite(&sentence, i + 1),
                    source: Some(i + 1),
                    sentence,
                    context: context.clone(),
                    document_text: document_text.clone(),
                });
            }
        }
    }
    out.push(Candidate {
        reply: ABSTENTION.to_string(),
        source: None,
        sentence: String::new(),
        context: String::new(),
        document_text: String::new(),
    });
    out
}

/// `Title > Heading > Subheading`: a document's first heading is usually its title again, and is
/// said once.
pub(super) fn context(title: &str, heading_path: &[String]) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in std::iter::once(title).chain(heading_path.iter().map(String::as_str)) {
        let part = part.trim();
        if !part.is_empty() && parts.last().is_none_or(|last| !last.eq_ignore_ascii_case(part)) {
            parts.push(part);
        }
    }
    parts.join(" > ")
}

/// Of `candidates`, the best reply to `messages` (the prompt [`super::prompt::fit`] built) by
/// `scoring` (see [`Scoring`]) and `closeness` (see [`super::closeness`]; with
/// [`Closeness::names`], among sentences whose source states every name the question gives, see
/// [`super::names`]). The first of equals wins.
pub fn choose(
    generator: &Generator,
    embedder: &Embedder,
    messages: &[ChatMessage],
    candidates: &[Candidate],
    scoring: Scoring,
    closeness_rule: Closeness,
) -> Result<Extracted, ExtractError> {
    let question = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map(|m| m.content.clone())
        .unwrap_or_default();
    // Only sentences stating the kind of fact the question asks for (`answer_type`), from a
    // source that names what it names (`names`), and about what it asks (`closeness`); none, and
    // only the abstention is left.
    let wanted = AnswerType::of(&question);
    let asked = if closeness_rule.names {
        names(&question)
    } else {
        Vec::new()
    };
    // Whether each source's document states the names, read once per source, not per sentence.
    let mut named: std::collections::HashMap<usize, bool> = std::collections::HashMap::new();
    let typed: Vec<usize> = (0..candidates.len())
        .filter(|&i| {
            let candidate = &candidates[i];
            let Some(source) = candidate.source else {
                return true;
            };
            wanted.fits(&candidate.sentence)
                && *named
                    .entry(source)
                    .or_insert_with(|| all_stated(&asked, &candidate.document_text))
        })
        .collect();
    let mut near = vec![f32::NAN; candidates.len()];
    if !closeness_rule.is_off() {
        let read: Vec<Candidate> = typed.iter().map(|&i| candidates[i].clone()).collect();
        for (&i, cosine) in typed.iter().zip(closeness(embedder, &question, &read)?) {
            near[i] = cosine;
        }
    }
    let kept: Vec<usize> = typed
        .into_iter()
        .filter(|&i| candidates[i].source.is_none() || closeness_rule.is_off() || near[i] >= closeness_rule.min)
        .collect();
    let chosen: Vec<Candidate> = kept.iter().map(|&i| candidates[i].clone()).collect();
    let bonus: Vec<f32> = kept
        .iter()
        .map(|&i| {
            if near[i].is_nan() {
                0.0
            } else {
                closeness_rule.weight * near[i]
            }
        })
        .collect();
    let mut chosen = if scoring == Scoring::Channel {
        choose_by_channel(generator, &question, &chosen, &bonus)?
    } else {
        choose_by_reply(generator, messages, &chosen, &bonus, scoring)?
    };
    for (index, _) in &mut chosen.ranked {
        *index = kept[*index];
    }
    chosen.closeness = near;
    Ok(chosen)
}

/// Adds each candidate's closeness term to its score per token (the abstention's NaN stays NaN).
fn with_bonus(scores: &mut [ReplyScore], bonus: &[f32]) {
    for (score, bonus) in scores.iter_mut().zip(bonus) {
        // `mean` is log_prob / tokens: the bonus is added per token.
        score.log_prob += bonus * score.tokens as f32;
    }
}

/// [`Scoring::Pmi`] and [`Scoring::Likelihood`]: each candidate scored as the reply to the prompt.
fn choose_by_reply(
    generator: &Generator,
    messages: &[ChatMessage],
    candidates: &[Candidate],
    bonus: &[f32],
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
    with_bonus(&mut scores, bonus);
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
        ranked: ranked(&scores),
        closeness: Vec::new(),
    })
}

/// The instruction the channel scores each sentence under, the sentence preceded by where it
/// stands: out of its document a sentence often does not name its subject ("Find the angle: about
/// 15° per side" is about the gyuto only under "Knife Care > Sharpening").
fn channel_prompt(context: &str, sentence: &str) -> ChatMessage {
    let read = if context.is_empty() {
        sentence.to_string()
    } else {
        format!("{context}:\n{sentence}")
    };
    ChatMessage::new(
        Role::User,
        format!("{read}\n\nWrite the question this sentence answers."),
    )
}

/// [`Scoring::Channel`]: each sentence ranked by the question's log-probability as the question
/// it answers. The abstention's score is the question's log-probability with no sentence at all:
/// how much the best sentence raises it over that is how much the sentence explains the question.
fn choose_by_channel(
    generator: &Generator,
    question: &str,
    candidates: &[Candidate],
    bonus: &[f32],
) -> Result<Extracted, GenerationError> {
    let question = question.to_string();
    let mut scores = Vec::with_capacity(candidates.len());
    for candidate in candidates {
        if candidate.source.is_none() {
            scores.push(ReplyScore {
                log_prob: f32::NAN,
                tokens: 1,
            });
            continue;
        }
        let asked = [channel_prompt(&candidate.context, &candidate.sentence)];
        let scored = generator.score_replies(&asked, std::slice::from_ref(&question))?;
        scores.push(scored.first().copied().unwrap_or(ReplyScore {
            log_prob: f32::NAN,
            tokens: 1,
        }));
    }
    with_bonus(&mut scores, bonus);
    // Only worth scoring when some sentence was: it is what the sentence's score is read against.
    let prior = if candidates.iter().any(|c| c.source.is_some()) {
        generator
            .score_replies(&[channel_prompt("", "")], std::slice::from_ref(&question))?
            .first()
            .map_or(f32::NAN, ReplyScore::mean)
    } else {
        f32::NAN
    };
    // No sentence among the sources: the abstention (the last candidate).
    let best = best(&scores)
        .or(candidates.len().checked_sub(1))
        .ok_or_else(|| GenerationError::Request("no reply to choose from".into()))?;
    Ok(Extracted {
        text: candidates[best].reply.clone(),
        source: candidates[best].source,
        score: scores[best].mean(),
        abstention_score: prior,
        candidates: candidates.len(),
        ranked: ranked(&scores),
        closeness: Vec::new(),
    })
}

/// The scored candidates' indices and scores, best first.
fn ranked(scores: &[ReplyScore]) -> Vec<(usize, f32)> {
    let mut ranked: Vec<(usize, f32)> = scores
        .iter()
        .enumerate()
        .map(|(i, s)| (i, s.mean()))
        .filter(|(_, s)| !s.is_nan())
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    ranked
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
    fn a_sentence_is_read_under_its_title_and_headings_said_once() {
        let path = |parts: &[&str]| parts.iter().map(|p| p.to_string()).collect::<Vec<_>>();
        assert_eq!(
            context("Knife Care", &path(&["Knife Care", "Sharpening"])),
            "Knife Care > Sharpening"
        );
        assert_eq!(context("Notes", &[]), "Notes");
        assert_eq!(context(" ", &path(&["A", "", "B"])), "A > B");
        let mut titled = hit("Soak the stone for 10 minutes.");
        titled.chunk.heading_path = path(&["T", "Stones"]);
        let read = candidates(&[titled], 1);
        assert_eq!(read[0].context, "T > Stones");
        assert_eq!(read[1].context, "", "the abstention stands nowhere");
        assert_eq!(
            channel_prompt(&read[0].context, &read[0].sentence).content,
            "T > Stones:\nSoak the stone for 10 minutes.\n\nWrite the question this sentence answers."
        );
    }

    #[test]
    fn scoring_names_round_trip_and_an_unknown_one_is_refused() {
        for scoring in [Scoring::Pmi, Scoring::Likelihood, Scoring::Channel] {
            assert_eq!(scoring.to_string().parse::<Scoring>(), Ok(scoring));
        }
        assert!(
            "mean"
                .parse::<Scoring>()
                .is_err_and(|e| e.contains("pmi, likelihood, channel"))
        );
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
