//! The `qa-distil` step: for the fact-richest sentences of each kept document, the teacher writes
//! the question the sentence answers.
//!
//! Documents are chunked exactly as `index` chunks them (same chunker, same settings), so a row's
//! sources are chunks the service can retrieve. A chunk's *fact sentences* are its sentences and
//! list items that hold a number or a name ([`facts`]) and fit an answer's length; of each
//! document, the `chunks_per_document` chunks whose best fact sentence holds the most facts are
//! asked about, `samples` times each at temperatures spread over a range. The sentence, as the note
//! states it, is the answer: the teacher only writes the question, so an answer can hold no fact
//! its source lacks whatever the teacher is (the local 135M model invents facts in nearly every
//! answer it writes, and follows no longer prompt). Seeds follow from the chunk and the sample
//! number, so with the teacher's response cache a rerun asks nothing twice and a killed run resumes
//! where it stopped.

use std::collections::HashSet;
use std::sync::Arc;

use engram_shared::answers::sentences::sentences;
use engram_shared::documents::{DocumentFilter, DocumentStore};
use engram_shared::generation::{ChatMessage, Role};
use engram_shared::vectors::Chunk;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::facts;
use super::{QaPrompt, QaSettings};
use crate::steps::chunk::Chunker;
use crate::steps::distil::derived_seed;
use crate::steps::filter::DocumentSet;
use crate::teacher::{CachedTeacher, TeacherRequest};

/// The step's name in the registry.
pub const STEP: &str = "qa-distil";

/// Fact sentences shorter than this many characters are not asked about.
const MIN_SENTENCE_CHARS: usize = 20;

/// Chunks in flight at once: the teacher's own concurrency limit paces the calls, this only bounds
/// what waits for it.
const CHUNKS_IN_FLIGHT: usize = 8;

/// One teacher sample for one fact sentence, as parsed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    /// The chunk the sentence is from.
    pub chunk: Chunk,
    /// The fact sentence: the answer.
    pub sentence: String,
    /// Which sample of the chunk (0-based).
    pub sample: usize,
    /// The temperature it was sampled at.
    pub temperature: f64,
    /// The question, or empty when the reply held none.
    pub question: String,
    /// The teacher's reply as written.
    pub reply: String,
}

/// What the step produced: every document's chunks (the pool sources are drawn from) and the
/// teacher's samples.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Asked {
    /// Every chunk of the kept documents, in document order.
    pub chunks: Vec<Chunk>,
    /// The samples, sorted by document, chunk and sample.
    pub candidates: Vec<Candidate>,
}

/// The question in a reply: its text up to the first `?`, without a `Question:` label, quotes or
/// markdown; `None` when there is no `?`.
pub fn parse(reply: &str) -> Option<String> {
    let end = reply.find('?')?;
    let text = reply[..=end].replace("**", "");
    let text = text.trim().trim_start_matches(['"', '\'', '*', '-', ' ']);
    let text = match text.get(..9) {
        Some(label) if label.eq_ignore_ascii_case("question:") => &text[9..],
        _ => text,
    };
    let question = text.split_whitespace().collect::<Vec<_>>().join(" ");
    (!question.is_empty()).then_some(question)
}

/// The fact sentences of a chunk's text, in order: its sentences as the service's extractive
/// answers cut them ([`sentences`]) that hold a fact and are at most `max_chars` long.
pub fn fact_sentences(text: &str, max_chars: usize) -> Vec<String> {
    sentences(text)
        .into_iter()
        .filter(|sentence| {
            (MIN_SENTENCE_CHARS..=max_chars).contains(&sentence.chars().count()) && facts::count(sentence) > 0
        })
        .collect()
}

/// The chunks of one document worth asking about, best first, each with its fact sentence.
pub fn select(chunks: &[Chunk], per_document: usize, max_chars: usize) -> Vec<(&Chunk, String)> {
    let mut scored: Vec<(usize, &Chunk, String)> = chunks
        .iter()
        .filter_map(|c| {
            let mut best: Option<(usize, String)> = None;
            for sentence in fact_sentences(&c.text, max_chars) {
                let n = facts::count(&sentence);
                if best.as_ref().is_none_or(|(m, _)| n > *m) {
                    best = Some((n, sentence));
                }
            }
            best.map(|(n, sentence)| (n, c, sentence))
        })
        .collect();
    scored.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.position.cmp(&b.1.position)));
    scored
        .into_iter()
        .take(per_document)
        .map(|(_, c, sentence)| (c, sentence))
        .collect()
}

fn sample_seed(seed: u64, chunk: &Chunk, k: usize) -> u64 {
    derived_seed(&format!("qa:{seed}:{}:{}:{k}", chunk.doc_id, chunk.position))
}

async fn ask_chunk(
    teacher: &CachedTeacher,
    prompt: &QaPrompt,
    settings: &QaSettings,
    chunk: Chunk,
    sentence: String,
) -> anyhow::Result<Vec<Candidate>> {
    let messages = vec![
        ChatMessage::new(Role::System, prompt.system.clone()),
        ChatMessage::new(Role::User, prompt.instruction(&sentence)),
    ];
    let mut candidates = Vec::with_capacity(settings.samples);
    for k in 0..settings.samples {
        let request = TeacherRequest {
            messages: messages.clone(),
            temperature: settings.temperature(k),
            max_tokens: settings.max_tokens,
            seed: sample_seed(settings.seed, &chunk, k),
        };
        let reply = teacher.ask(&request).await.map_err(|e| {
            anyhow::anyhow!(
                "document {:?} ({}), chunk {}, question {k}: {e}",
                chunk.title,
                chunk.doc_id,
                chunk.position
            )
        })?;
        candidates.push(Candidate {
            chunk: chunk.clone(),
            sentence: sentence.clone(),
            sample: k,
            temperature: request.temperature,
            question: parse(&reply.text).unwrap_or_default(),
            reply: reply.text.trim().to_string(),
        });
    }
    Ok(candidates)
}

/// Chunks every document of `set` and asks the teacher about the selected chunks.
pub async fn run(
    documents: &dyn DocumentStore,
    teacher: Arc<CachedTeacher>,
    prompt: &QaPrompt,
    settings: &QaSettings,
    chunker: &Chunker,
    set: &DocumentSet,
    progress: &ProgressBar,
) -> anyhow::Result<Asked> {
    let wanted: HashSet<&str> = set.ids.iter().map(String::as_str).collect();
    let mut chunks = Vec::new();
    let mut asked = Vec::new();
    let mut stream = documents.stream(&DocumentFilter::default());
    while let Some(document) = stream.next().await {
        let document = document?;
        if !wanted.contains(document.id.as_str()) {
            continue;
        }
        let pieces = chunker.chunk(&document);
        asked.extend(
            select(&pieces, settings.chunks_per_document, settings.max_answer_chars)
                .into_iter()
                .map(|(c, sentence)| (c.clone(), sentence)),
        );
        chunks.extend(pieces);
    }
    drop(stream);
    chunks.sort_by(|a, b| (a.doc_id.as_str(), a.position).cmp(&(b.doc_id.as_str(), b.position)));
    progress.set_length(asked.len() as u64);
    let mut results = futures::stream::iter(asked.into_iter().map(|(chunk, sentence)| {
        let teacher = teacher.clone();
        async move { ask_chunk(&teacher, prompt, settings, chunk, sentence).await }
    }))
    .buffer_unordered(CHUNKS_IN_FLIGHT);
    let mut candidates = Vec::new();
    while let Some(result) = results.next().await {
        candidates.extend(result?);
        progress.inc(1);
    }
    candidates.sort_by(|a, b| {
        (a.chunk.doc_id.as_str(), a.chunk.position, a.sample).cmp(&(
            b.chunk.doc_id.as_str(),
            b.chunk.position,
            b.sample,
        ))
    });
    Ok(Asked { chunks, candidates })
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_shared::documents::Source;

    fn chunk(position: u32, text: &str) -> Chunk {
        Chunk {
            doc_id: "d".into(),
            position,
            source: Source::File,
            title: "T".into(),
            url: "file:///t".into(),
            heading_path: vec![],
            text: text.into(),
        }
    }

    #[test]
    fn the_question_is_read_up_to_its_question_mark() {
        assert_eq!(
            parse("What is the price of tickets?"),
            Some("What is the price of tickets?".into())
        );
        assert_eq!(
            parse("**Question:** How long does the\ndal simmer? It simmers for 25 minutes."),
            Some("How long does the dal simmer?".into())
        );
        assert_eq!(parse("\"When does it open?\""), Some("When does it open?".into()));
        assert_eq!(parse("The answer is 7:30."), None);
    }

    #[test]
    fn fact_sentences_leave_out_code_headings_short_rows_and_plain_sentences() {
        let text = "# Prices\n- Stem steerer bolts: 5 Nm\nWe went early. Pena at 09:30 was empty. it was nice\n\
                    | a | 1 |\n```\nlet x = 42;\n```\n2. Simmer the lentils for 25 minutes.";
        assert_eq!(
            fact_sentences(text, 300),
            [
                "Stem steerer bolts: 5 Nm",
                "Pena at 09:30 was empty.",
                "Simmer the lentils for 25 minutes."
            ]
        );
        assert!(fact_sentences(text, 24).iter().all(|s| s.chars().count() <= 24));
    }

    #[test]
    fn the_fact_richest_chunks_are_asked_about() {
        let chunks = vec![
            chunk(0, "plain text only, nothing to ask about here at all"),
            chunk(1, "We paid 14 euros in Sintra at 9:30 for the tickets."),
            chunk(2, "It cost 3 euros for a coffee and a cake."),
            chunk(3, "short 5"),
        ];
        let picked: Vec<u32> = select(&chunks, 2, 300).iter().map(|(c, _)| c.position).collect();
        assert_eq!(picked, [1, 2], "no facts: never; too short: never");
        assert_eq!(
            select(&chunks, 2, 300)[0].1,
            "We paid 14 euros in Sintra at 9:30 for the tickets."
        );
        assert_eq!(select(&chunks, 0, 300).len(), 0);
    }
}
