//! The chunk step: documents into pieces the embedding model can hold, cut where the text's own
//! structure allows.
//!
//! Input: a stored document. Output: its [`Chunk`]s, each with the document's id, source, title and
//! url, its position, and the path of headings above it. The cutting is `text-splitter`'s markdown
//! splitter, which prefers heading, paragraph, list-item and code-block boundaries and falls back to
//! sentences and words; sizes are counted in the embedding model's own tokens (its tokenizer, special
//! tokens included), with an overlap between consecutive chunks. What gets embedded is the chunk
//! with its context ([`embedding_text`]): title and heading path first, so a chunk saying "bake it
//! for 20 minutes" is still about sourdough.

use std::sync::Arc;

use engram_shared::documents::Document;
use engram_shared::embedding::Embedder;
use engram_shared::vectors::Chunk;
use engram_shared::vectors::manifest::ChunkerSettings;
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter};

/// Counts text in the embedding model's tokens.
struct ModelTokens(Arc<Embedder>);

impl ChunkSizer for ModelTokens {
    fn size(&self, chunk: &str) -> usize {
        // A text the tokenizer rejects cannot be embedded either; oversize it so it is split.
        self.0.count_tokens(chunk).unwrap_or(chunk.len())
    }
}

/// Cuts documents into chunks.
pub struct Chunker {
    splitter: MarkdownSplitter<ModelTokens>,
    settings: ChunkerSettings,
}

impl Chunker {
    /// A chunker sizing chunks to `max_tokens` of `embedder`'s tokens with `overlap_tokens` shared.
    pub fn new(embedder: Arc<Embedder>, max_tokens: usize, overlap_tokens: usize) -> anyhow::Result<Self> {
        if max_tokens > embedder.max_tokens() {
            anyhow::bail!(
                "--chunk-tokens {max_tokens} is over the embedding model's limit of {} tokens",
                embedder.max_tokens()
            );
        }
        let config = ChunkConfig::new(max_tokens)
            .with_overlap(overlap_tokens)
            .map_err(|err| anyhow::anyhow!("--chunk-overlap {overlap_tokens}: {err}"))?
            .with_sizer(ModelTokens(embedder));
        Ok(Self {
            splitter: MarkdownSplitter::new(config),
            settings: ChunkerSettings {
                max_tokens,
                overlap_tokens,
                splitter: format!("text-splitter {} markdown", "0.33"),
            },
        })
    }

    /// The settings, as the index manifest records them.
    pub fn settings(&self) -> &ChunkerSettings {
        &self.settings
    }

    /// The chunks of `document`, in order. A chunk of nothing but headings is left out: the
    /// splitter leaves a heading alone when its section does not fit one chunk, and such a chunk
    /// states nothing its section's chunks do not carry (their heading path, which is embedded
    /// with them), while it takes a place among the few chunks a question retrieves.
    pub fn chunk(&self, document: &Document) -> Vec<Chunk> {
        let headings = headings(&document.content);
        self.splitter
            .chunk_indices(&document.content)
            .filter(|(_, text)| !only_headings(text))
            .enumerate()
            .map(|(position, (offset, text))| Chunk {
                doc_id: document.id.clone(),
                position: position as u32,
                source: document.source,
                title: document.title.clone(),
                url: document.url.clone(),
                heading_path: heading_path(&headings, offset),
                text: text.to_string(),
            })
            .collect()
    }
}

/// A heading: where its line starts, its level and its text.
type Heading = (usize, usize, String);

/// The markdown headings of `text` (ATX style, outside code fences).
fn headings(text: &str) -> Vec<Heading> {
    let mut found = Vec::new();
    let mut offset = 0;
    let mut in_fence = false;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        if trimmed.starts_with("```") || trimmed.starts_with("~~~") {
            in_fence = !in_fence;
        } else if !in_fence {
            let level = trimmed.bytes().take_while(|&b| b == b'#').count();
            if (1..=6).contains(&level) && trimmed[level..].starts_with(' ') {
                found.push((
                    offset,
                    level,
                    trimmed[level..].trim().trim_end_matches('#').trim().to_string(),
                ));
            }
        }
        offset += line.len();
    }
    found
}

/// Whether every line of `text` that holds anything is a markdown heading.
fn only_headings(text: &str) -> bool {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).all(|line| {
        let level = line.bytes().take_while(|&b| b == b'#').count();
        (1..=6).contains(&level) && line[level..].starts_with(' ')
    })
}

/// The headings in force at `offset`: the last heading of each level above it, outermost first.
fn heading_path(headings: &[Heading], offset: usize) -> Vec<String> {
    let mut stack: Vec<(usize, &str)> = Vec::new();
    for (_, level, text) in headings.iter().take_while(|(start, _, _)| *start < offset) {
        while stack.last().is_some_and(|(l, _)| *l >= *level) {
            stack.pop();
        }
        stack.push((*level, text));
    }
    stack.into_iter().map(|(_, text)| text.to_string()).collect()
}

/// What is embedded (and counted by BM25) for a chunk: its title and heading path, then its text.
pub fn embedding_text(chunk: &Chunk) -> String {
    let mut text = chunk.title.clone();
    if !chunk.heading_path.is_empty() {
        text.push_str(" > ");
        text.push_str(&chunk.heading_path.join(" > "));
    }
    text.push_str("\n\n");
    text.push_str(&chunk.text);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chunk_of_headings_alone_is_recognised() {
        assert!(only_headings("## Annual service"));
        assert!(only_headings("# A\n\n## B\n"));
        assert!(!only_headings("## Annual service\n- Costs about £90."));
        assert!(!only_headings("#hashtag"));
        assert!(only_headings(""), "nothing at all states nothing either");
    }

    #[test]
    fn heading_paths_follow_the_outline() {
        let text = "# A\nintro\n## B\nb text\n```\n# not a heading\n```\n### C\nc text\n## D\nd text\n";
        let found = headings(text);
        assert_eq!(
            found.iter().map(|h| h.2.as_str()).collect::<Vec<_>>(),
            ["A", "B", "C", "D"]
        );
        let at = |needle: &str| heading_path(&found, text.find(needle).unwrap());
        assert_eq!(at("intro"), ["A"]);
        assert_eq!(at("c text"), ["A", "B", "C"]);
        assert_eq!(at("d text"), ["A", "D"]);
        assert!(
            at("# A").is_empty(),
            "a chunk starting with a heading carries it in its text"
        );
    }
}
