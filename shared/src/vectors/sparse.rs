//! The lexical half of hybrid retrieval: BM25 as sparse vectors.
//!
//! Dense embeddings find paraphrases but miss rare exact words (an error code, a name, a version
//! number); BM25 finds those. Both backends store a sparse vector per chunk and score a query by
//! dot product, so BM25 is encoded to make that dot product the BM25 score:
//! - a chunk's vector holds, per term, `idf(t) * tf * (k1 + 1) / (tf + k1 * (1 - b + b * len / avglen))`,
//!   with document frequencies counted over the whole index version while it is built (a version is
//!   built once and never changes, so its statistics are exact);
//! - a query's vector holds 1.0 per distinct query term.
//!
//! Terms are lowercase alphanumeric words minus a short English stop-word list, hashed to 32-bit
//! ids (no vocabulary to store or ship; a collision merges two rare terms, which costs little).
//! The query side needs nothing but this code, so the service encodes questions exactly as the
//! pipeline encoded chunks.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// A sparse vector: sorted, distinct indices and their values.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseVector {
    /// Term ids, ascending.
    pub indices: Vec<u32>,
    /// Weights, one per index.
    pub values: Vec<f32>,
}

impl SparseVector {
    /// Whether it has no terms.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// The dot product with another sparse vector.
    pub fn dot(&self, other: &SparseVector) -> f32 {
        let (mut i, mut j, mut sum) = (0, 0, 0.0);
        while i < self.indices.len() && j < other.indices.len() {
            match self.indices[i].cmp(&other.indices[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    sum += self.values[i] * other.values[j];
                    i += 1;
                    j += 1;
                }
            }
        }
        sum
    }
}

const STOP_WORDS: &[&str] = &[
    "a", "about", "an", "and", "are", "as", "at", "be", "but", "by", "can", "do", "does", "for", "from", "had", "has",
    "have", "how", "i", "if", "in", "is", "it", "its", "me", "my", "of", "on", "or", "our", "so", "than", "that",
    "the", "their", "then", "there", "these", "this", "to", "was", "we", "were", "what", "when", "where", "which",
    "who", "why", "will", "with", "you", "your",
];

/// The terms of `text`, in order, stop words removed.
pub fn terms(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !STOP_WORDS.contains(&w.as_str()))
        .collect()
}

/// The 32-bit id of a term (FNV-1a: stable across runs, machines and versions).
pub fn term_id(term: &str) -> u32 {
    let mut hash: u32 = 0x811c9dc5;
    for byte in term.as_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x01000193);
    }
    hash
}

fn term_counts(text: &str) -> (BTreeMap<u32, u32>, usize) {
    let terms = terms(text);
    let mut counts = BTreeMap::new();
    for term in &terms {
        *counts.entry(term_id(term)).or_insert(0) += 1;
    }
    (counts, terms.len())
}

/// A query's sparse vector: 1.0 per distinct term.
pub fn encode_query(text: &str) -> SparseVector {
    let (counts, _) = term_counts(text);
    SparseVector {
        indices: counts.keys().copied().collect(),
        values: vec![1.0; counts.len()],
    }
}

/// BM25's parameters and the corpus statistics of one index version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bm25 {
    /// Term-frequency saturation.
    pub k1: f32,
    /// Length normalisation.
    pub b: f32,
    /// Chunks counted.
    pub documents: u64,
    /// Mean chunk length in terms.
    pub average_length: f32,
    #[serde(skip)]
    document_frequency: HashMap<u32, u32>,
    #[serde(skip)]
    total_length: u64,
}

impl Default for Bm25 {
    fn default() -> Self {
        Self {
            k1: 1.2,
            b: 0.75,
            documents: 0,
            average_length: 0.0,
            document_frequency: HashMap::new(),
            total_length: 0,
        }
    }
}

impl Bm25 {
    /// Counts one chunk's terms into the statistics (first pass over the corpus).
    pub fn observe(&mut self, text: &str) {
        let (counts, length) = term_counts(text);
        for term in counts.keys() {
            *self.document_frequency.entry(*term).or_insert(0) += 1;
        }
        self.documents += 1;
        self.total_length += length as u64;
        self.average_length = self.total_length as f32 / self.documents as f32;
    }

    fn idf(&self, term: u32) -> f32 {
        let df = f64::from(self.document_frequency.get(&term).copied().unwrap_or(0));
        let n = self.documents as f64;
        ((1.0 + (n - df + 0.5) / (df + 0.5)).ln()) as f32
    }

    /// A chunk's sparse vector (second pass, after every chunk was observed).
    pub fn encode_document(&self, text: &str) -> SparseVector {
        let (counts, length) = term_counts(text);
        let average = if self.average_length > 0.0 {
            self.average_length
        } else {
            1.0
        };
        let norm = self.k1 * (1.0 - self.b + self.b * length as f32 / average);
        let mut vector = SparseVector::default();
        for (term, tf) in counts {
            let tf = tf as f32;
            vector.indices.push(term);
            vector.values.push(self.idf(term) * tf * (self.k1 + 1.0) / (tf + norm));
        }
        vector
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rare_terms_outweigh_common_ones() {
        let mut bm25 = Bm25::default();
        let corpus = [
            "the boiler shows error EA 227 when the gas meter trips",
            "the boiler pressure should be 1.5 bar when cold",
            "sourdough needs a warm kitchen and a lively starter",
        ];
        for text in corpus {
            bm25.observe(text);
        }
        let query = encode_query("What does boiler error EA 227 mean?");
        let scores: Vec<f32> = corpus.iter().map(|t| bm25.encode_document(t).dot(&query)).collect();
        assert!(scores[0] > scores[1] && scores[1] > scores[2], "{scores:?}");
        assert_eq!(scores[2], 0.0);
    }

    #[test]
    fn vectors_are_sorted_and_stop_words_dropped() {
        let query = encode_query("The the Rust and rust LIFETIMES");
        assert_eq!(query.indices.len(), 2);
        assert!(query.indices.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(terms("Where is the 28 tram?"), ["28", "tram"]);
    }
}
