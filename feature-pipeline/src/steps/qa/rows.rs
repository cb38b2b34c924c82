//! The `qa-split` step: kept questions become rows in the prompt the service builds, split by
//! document the way the summaries are.
//!
//! A row's sources are its chunk and the chunks closest to its question (embedding cosine, as the
//! index's dense search scores them), `sources` in all, ordered by that closeness, so the chunk sits
//! where retrieval would put it; the answer cites its number. Chunks holding the answer's facts are
//! not used as the other sources (they would answer too, and the citation would be a guess). A
//! seeded share of the questions is also asked over the closest chunks that do not hold the answer
//! (none holding any number it tells, or any name when it tells no number), its own document's
//! other chunks included: the answer is then the service's [`ABSTENTION`]. Those are the sources an
//! unanswerable question meets in service: the retrieval threshold refuses questions off the notes'
//! topics, so what reaches the model is a question on a topic the notes cover whose fact they lack
//! ("what did the fado dinner cost?" over the Lisbon trip's pages). Negatives from other documents
//! only would teach the model to abstain on a change of topic, which is not what it has to tell.
//!
//! Sources come only from documents of the row's own split, so no document's text crosses splits.
//!
//! [`ABSTENTION`]: engram_shared::answers::abstain::ABSTENTION

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use engram_shared::answers::abstain::ABSTENTION;
use engram_shared::answers::citations::cite;
use engram_shared::answers::prompt::{source_text, system_message};
use engram_shared::embedding::Embedder;
use engram_shared::vectors::{Chunk, SearchHit};
use serde::{Deserialize, Serialize};

use super::QaSettings;
use super::check::Pair;
use super::facts;
use crate::steps::chunk::embedding_text;
use crate::steps::distil::derived_seed;
use crate::steps::split::{self, SPLITS, SplitSettings, Splits};

/// The step's name in the registry.
pub const STEP: &str = "qa-split";

/// A source as a row records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaSource {
    /// Its document.
    pub doc_id: String,
    /// The document's title.
    pub title: String,
    /// The document's url.
    pub url: String,
    /// The chunk's position in its document.
    pub position: u32,
    /// The chunk's text.
    pub text: String,
}

/// A row of the `qa` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QaRow {
    /// The system message the service sends with these sources.
    pub system: String,
    /// The question (the user message).
    pub instruction: String,
    /// The answer: the teacher's, citing its source, or the abstention.
    pub answer: String,
    /// Whether the sources hold the answer.
    pub answerable: bool,
    /// The number of the source that answers (from 1), when one does.
    pub cited: Option<usize>,
    /// The document the question is about.
    pub doc_id: String,
    /// Its title.
    pub title: String,
    /// Its source kind (`notion`, `crawl`, `file`).
    pub source: String,
    /// Its url.
    pub url: String,
    /// The sources, numbered from 1 in this order.
    pub sources: Vec<QaSource>,
}

/// The rows per split.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct QaSplits {
    /// Split name → its rows.
    pub rows: BTreeMap<String, Vec<QaRow>>,
    /// Split name → the documents its questions are about.
    pub documents: BTreeMap<String, Vec<String>>,
}

/// Which split each document is in: the summaries' split where the document has summaries, else
/// the split's own seeded rule over the rest (see `split::assign`).
pub fn assignment(summaries: &Splits, doc_ids: &[String], settings: &SplitSettings) -> BTreeMap<String, &'static str> {
    let mut assigned = BTreeMap::new();
    for name in SPLITS {
        for id in summaries.documents.get(name).into_iter().flatten() {
            assigned.insert(id.clone(), name);
        }
    }
    let rest: Vec<String> = doc_ids
        .iter()
        .filter(|id| !assigned.contains_key(*id))
        .cloned()
        .collect();
    assigned.extend(split::assign(&rest, settings));
    assigned
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Whether the answer's share of kept questions is also asked unanswerably (seeded, stable).
fn pick_unanswerable(settings: &QaSettings, pair: &Pair) -> bool {
    let key = format!(
        "unanswerable:{}:{}:{}",
        settings.seed, pair.chunk.doc_id, pair.chunk.position
    );
    let draw = derived_seed(&key) as f64 / (1u64 << 60) as f64;
    draw < settings.unanswerable
}

/// The numbers and words of a chunk's title and text, read once per chunk: every question of the
/// split is checked against every chunk.
struct ChunkFacts {
    numbers: BTreeSet<String>,
    words: BTreeSet<String>,
}

impl ChunkFacts {
    fn of(chunk: &Chunk) -> Self {
        let text = format!("{}\n{}", chunk.title, chunk.text);
        ChunkFacts {
            numbers: facts::numbers(&text),
            words: facts::words(&text),
        }
    }

    /// Whether the chunk holds every fact of the answer that tells `told`.
    fn holds_answer(&self, told: &[String]) -> bool {
        !told.is_empty() && told.iter().all(|f| self.numbers.contains(f) || self.words.contains(f))
    }

    /// Whether the chunk may hold part of an answer that tells `told`: any of its numbers, or any
    /// of its names when it tells no number (a name such as the place of a trip is on every chunk
    /// about it). Stricter than holding the whole answer, since a chunk that overlaps its
    /// neighbour may hold half the answer's sentence.
    fn mentions_answer(&self, told: &[String]) -> bool {
        let told_numbers: Vec<&String> = told
            .iter()
            .filter(|f| f.starts_with(|c: char| c.is_ascii_digit()))
            .collect();
        if told_numbers.is_empty() {
            told.iter().any(|f| self.words.contains(f))
        } else {
            told_numbers.iter().any(|f| self.numbers.contains(*f))
        }
    }
}

fn row(pair: &Pair, chosen: &[&Chunk], answer: String, cited: Option<usize>) -> QaRow {
    let sources_text: String = chosen
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            source_text(
                i + 1,
                &SearchHit {
                    id: chunk.id(),
                    chunk: (*chunk).clone(),
                    score: 0.0,
                },
            )
        })
        .collect();
    QaRow {
        system: system_message(&[], &sources_text),
        instruction: pair.question.clone(),
        answer,
        answerable: cited.is_some(),
        cited,
        doc_id: pair.chunk.doc_id.clone(),
        title: pair.chunk.title.clone(),
        source: pair.chunk.source.as_str().to_string(),
        url: pair.chunk.url.clone(),
        sources: chosen
            .iter()
            .map(|c| QaSource {
                doc_id: c.doc_id.clone(),
                title: c.title.clone(),
                url: c.url.clone(),
                position: c.position,
                text: c.text.clone(),
            })
            .collect(),
    }
}

/// The rows of `pairs`, with sources from `chunks` (`chunk_vectors[i]` embeds `chunks[i]`,
/// `question_vectors[i]` the question of `pairs[i]`), split by `assigned`.
pub fn build(
    pairs: &[Pair],
    question_vectors: &[Vec<f32>],
    chunks: &[Chunk],
    chunk_vectors: &[Vec<f32>],
    assigned: &BTreeMap<String, &'static str>,
    settings: &QaSettings,
) -> QaSplits {
    let mut splits = QaSplits::default();
    for name in SPLITS {
        splits.rows.insert(name.to_string(), Vec::new());
        splits.documents.insert(name.to_string(), Vec::new());
    }
    let mut documents: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    let index: HashMap<(&str, u32), usize> = chunks
        .iter()
        .enumerate()
        .map(|(i, c)| ((c.doc_id.as_str(), c.position), i))
        .collect();
    let chunk_facts: Vec<ChunkFacts> = chunks.iter().map(ChunkFacts::of).collect();
    for (pair, question) in pairs.iter().zip(question_vectors) {
        let Some(&split) = assigned.get(&pair.chunk.doc_id) else {
            continue;
        };
        let Some(&own) = index.get(&(pair.chunk.doc_id.as_str(), pair.chunk.position)) else {
            continue;
        };
        let told = facts::told(&pair.answer, &pair.question);
        // Every other chunk of the split, closest to the question first.
        let mut ranked: Vec<(f32, usize)> = chunks
            .iter()
            .enumerate()
            .filter(|(i, c)| *i != own && assigned.get(&c.doc_id) == Some(&split))
            .map(|(i, _)| (cosine(question, &chunk_vectors[i]), i))
            .collect();
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let rows = splits.rows.entry(split.to_string()).or_default();

        let mut with: Vec<(f32, usize)> = ranked
            .iter()
            .filter(|(_, i)| !chunk_facts[*i].holds_answer(&told))
            .take(settings.sources.saturating_sub(1))
            .copied()
            .collect();
        with.push((cosine(question, &chunk_vectors[own]), own));
        with.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let chosen: Vec<&Chunk> = with.iter().map(|(_, i)| &chunks[*i]).collect();
        let number = with.iter().position(|(_, i)| *i == own).unwrap_or(0) + 1;
        rows.push(row(pair, &chosen, cite(&pair.answer, number), Some(number)));

        // No told fact, no way to know which sources lack the answer: no unanswerable twin.
        if !told.is_empty() && pick_unanswerable(settings, pair) {
            let without: Vec<&Chunk> = ranked
                .iter()
                .filter(|(_, i)| !chunk_facts[*i].mentions_answer(&told))
                .map(|(_, i)| &chunks[*i])
                .take(settings.sources)
                .collect();
            if !without.is_empty() {
                rows.push(row(pair, &without, ABSTENTION.to_string(), None));
            }
        }
        documents.entry(split).or_default().insert(pair.chunk.doc_id.clone());
    }
    for (split, ids) in documents {
        splits.documents.insert(split.to_string(), ids.into_iter().collect());
    }
    splits
}

/// Embeds the questions and the chunks, then [`build`]s the rows.
pub async fn run(
    pairs: Vec<Pair>,
    chunks: Vec<Chunk>,
    summaries: &Splits,
    split_settings: &SplitSettings,
    settings: &QaSettings,
    embedder: Arc<Embedder>,
) -> anyhow::Result<QaSplits> {
    let mut doc_ids: Vec<String> = pairs.iter().map(|p| p.chunk.doc_id.clone()).collect();
    doc_ids.sort();
    doc_ids.dedup();
    let assigned = assignment(summaries, &doc_ids, split_settings);
    let questions: Vec<String> = pairs.iter().map(|p| p.question.clone()).collect();
    let texts: Vec<String> = chunks.iter().map(embedding_text).collect();
    let (question_vectors, chunk_vectors) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((embedder.embed(&questions)?.vectors, embedder.embed(&texts)?.vectors))
    })
    .await??;
    Ok(build(
        &pairs,
        &question_vectors,
        &chunks,
        &chunk_vectors,
        &assigned,
        settings,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use engram_shared::documents::Source;

    fn chunk(doc: &str, position: u32, text: &str) -> Chunk {
        Chunk {
            doc_id: doc.into(),
            position,
            source: Source::File,
            title: doc.into(),
            url: format!("file:///{doc}"),
            heading_path: vec![],
            text: text.into(),
        }
    }

    fn settings(unanswerable: f64) -> QaSettings {
        QaSettings {
            chunks_per_document: 2,
            samples: 1,
            temperature_min: 0.3,
            temperature_max: 0.3,
            max_tokens: 96,
            chunk_tokens: 96,
            chunk_overlap: 16,
            max_answer_chars: 200,
            min_relevance: 0.45,
            sources: 3,
            unanswerable,
            seed: 7,
        }
    }

    #[test]
    fn the_answer_cites_its_chunk_among_the_closest_others_and_abstains_without_it() {
        let chunks = vec![
            chunk("sintra", 0, "Tickets cost €14."),
            chunk("sintra", 1, "We paid €14 again."),
            chunk("dal", 0, "Simmer for 25 minutes."),
            chunk("bread", 0, "Bake at 230 degrees."),
            chunk("test-doc", 0, "Only in the test split."),
            chunk("sintra", 2, "The Moorish Castle walls are up the hill."),
        ];
        // Unit vectors on three axes: the question is closest to dal, then sintra 0, then bread.
        let v = |x: f32, y: f32, z: f32| {
            let n = (x * x + y * y + z * z).sqrt();
            vec![x / n, y / n, z / n]
        };
        let chunk_vectors = vec![
            v(0.8, 0.6, 0.0),
            v(0.8, 0.6, 0.0),
            v(1.0, 0.0, 0.0),
            v(0.0, 1.0, 0.2),
            v(1.0, 0.0, 0.0),
            v(0.0, 0.5, 1.0),
        ];
        let pair = rows_pair(&chunks);
        let assigned: BTreeMap<String, &'static str> = [
            ("sintra", "train"),
            ("dal", "train"),
            ("bread", "train"),
            ("test-doc", "test"),
        ]
        .iter()
        .map(|(d, s)| (d.to_string(), *s))
        .collect();
        let splits = build(
            &[pair],
            &[v(1.0, 0.1, 0.0)],
            &chunks,
            &chunk_vectors,
            &assigned,
            &settings(1.0),
        );
        let rows = &splits.rows["train"];
        assert_eq!(rows.len(), 2, "one answerable row and its unanswerable twin");
        let answered = &rows[0];
        let order: Vec<&str> = answered.sources.iter().map(|s| s.doc_id.as_str()).collect();
        assert_eq!(
            order,
            ["dal", "sintra", "bread"],
            "sintra 1 holds €14 too and is left out"
        );
        assert_eq!(answered.cited, Some(2));
        assert_eq!(answered.answer, "They cost €14 [2].");
        assert!(answered.system.contains("Source 2: sintra (file:///sintra)") && answered.system.contains("Sources:"));
        let abstained = &rows[1];
        assert_eq!((abstained.answerable, abstained.answer.as_str()), (false, ABSTENTION));
        let without: Vec<(&str, u32)> = abstained
            .sources
            .iter()
            .map(|s| (s.doc_id.as_str(), s.position))
            .collect();
        assert_eq!(
            without,
            [("dal", 0), ("bread", 0), ("sintra", 2)],
            "the closest chunks without €14, its own document's included"
        );
        assert!(
            rows.iter().flat_map(|r| &r.sources).all(|s| s.doc_id != "test-doc"),
            "no text from another split"
        );
        assert_eq!(splits.documents["train"], ["sintra"]);
        let none = build(
            &[rows_pair(&chunks)],
            &[v(1.0, 0.1, 0.0)],
            &chunks,
            &chunk_vectors,
            &assigned,
            &settings(0.0),
        );
        assert_eq!(none.rows["train"].len(), 1, "no unanswerable twin at share 0");
    }

    fn rows_pair(chunks: &[Chunk]) -> Pair {
        Pair {
            chunk: chunks[0].clone(),
            sample: 0,
            question: "How much did the tickets cost in Sintra?".into(),
            answer: "They cost €14.".into(),
            relevance: 0.8,
        }
    }

    #[test]
    fn documents_keep_their_summary_split_and_the_rest_are_assigned_by_seed() {
        let mut summaries = Splits::default();
        summaries.documents.insert("test".into(), vec!["a".into()]);
        summaries.documents.insert("train".into(), vec!["b".into()]);
        let settings = SplitSettings {
            validation: 0.0,
            test: 0.0,
            seed: 1,
        };
        let ids: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let assigned = assignment(&summaries, &ids, &settings);
        assert_eq!(assigned["a"], "test");
        assert_eq!(assigned["b"], "train");
        assert_eq!(assigned["c"], "train");
        assert_eq!(cite("At 9:10", 3), "At 9:10 [3]");
    }

    #[test]
    fn a_chunk_mentions_the_answer_by_a_told_number_else_by_a_told_name() {
        let told = |answer: &str, question: &str| facts::told(answer, question);
        let castle = ChunkFacts::of(&chunk("sintra", 0, "Tickets for the Castle were sold out at 9:30."));
        assert!(castle.mentions_answer(&told("We got there at 9:30.", "When?")));
        assert!(
            !castle.mentions_answer(&told("In Sintra the Castle opened at 10:00.", "When?")),
            "names are not enough when a number is told"
        );
        assert!(castle.mentions_answer(&told("We went with Maria and the Castle guide.", "Who?")));
        assert!(!castle.mentions_answer(&told("We went with Maria.", "Who?")));
        assert!(castle.holds_answer(&told("Sold out at 9:30.", "When?")));
        assert!(!castle.holds_answer(&told("Sold out at 9:30 with Maria.", "When?")));
        assert!(
            !castle.holds_answer(&[]),
            "an answer that tells nothing is held by no chunk"
        );
    }
}
