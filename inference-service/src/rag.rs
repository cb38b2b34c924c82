//! The sources of an answer as its response lists them.
//!
//! Retrieval, abstention, the prompt and citation reading live in `engram_shared::answers`, where
//! `feature-pipeline eval answers` runs the same code; this module turns the chunks a prompt quoted
//! into what a client shows: a numbered link with the cited snippet, marked when the answer cites it.

use engram_shared::answers::citations;
use engram_shared::vectors::SearchHit;
use serde::Serialize;

/// Longest snippet a source carries, in characters.
pub const SNIPPET_CHARS: usize = 320;

/// A source as the response lists it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceRef {
    /// Its number in the prompt, as cited: [1] is index 1.
    pub index: usize,
    /// The document's title.
    pub title: String,
    /// The document's url.
    pub url: String,
    /// The document's id.
    pub doc_id: String,
    /// The chunk's point id.
    pub chunk_id: String,
    /// Fused retrieval score (a rank fusion: higher is better, not a similarity).
    pub score: f32,
    /// The start of the chunk's text, as quoted to the model (at most 320 characters).
    pub snippet: String,
    /// Whether the answer cites it (`[n]`). Known once the answer is: in a stream, the last
    /// chunk carries the sources again with this set.
    pub cited: bool,
}

/// The first `used` hits as numbered sources, none cited yet.
pub fn source_refs(hits: &[SearchHit], used: usize) -> Vec<SourceRef> {
    hits.iter()
        .take(used)
        .enumerate()
        .map(|(i, hit)| SourceRef {
            index: i + 1,
            title: hit.chunk.title.clone(),
            url: hit.chunk.url.clone(),
            doc_id: hit.chunk.doc_id.clone(),
            chunk_id: hit.id.to_string(),
            score: hit.score,
            snippet: snippet(&hit.chunk.text),
            cited: false,
        })
        .collect()
}

/// Marks the sources `answer` cites.
pub fn mark_cited(sources: &mut [SourceRef], answer: &str) {
    let cited = citations::cited(answer, sources.len());
    for source in sources {
        source.cited = cited.contains(&source.index);
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(SNIPPET_CHARS) {
        None => text.to_string(),
        Some((end, _)) => format!("{}…", text[..end].trim_end()),
    }
}

#[cfg(test)]
mod tests {
    use engram_shared::documents::Source;
    use engram_shared::vectors::Chunk;

    use super::*;

    fn hit(text: &str) -> SearchHit {
        SearchHit {
            id: uuid::Uuid::nil(),
            chunk: Chunk {
                doc_id: "d".into(),
                position: 0,
                source: Source::Notion,
                title: "Lisbon trip".into(),
                url: "https://example.com/lisbon".into(),
                heading_path: vec![],
                text: text.into(),
            },
            score: 0.03,
        }
    }

    #[test]
    fn sources_carry_a_bounded_snippet_and_their_citation() {
        let long = "é".repeat(SNIPPET_CHARS + 10);
        let mut sources = source_refs(&[hit(" Tickets €14. "), hit(&long), hit("unused")], 2);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].snippet, "Tickets €14.");
        assert_eq!(sources[1].snippet.chars().count(), SNIPPET_CHARS + 1);
        assert!(sources[1].snippet.ends_with('…'));
        mark_cited(&mut sources, "They cost €14 [1]. See also [3].");
        assert!(sources[0].cited && !sources[1].cited);
    }
}
