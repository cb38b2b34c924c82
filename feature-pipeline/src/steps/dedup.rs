//! Near-duplicate detection: MinHash signatures with locality-sensitive hashing (LSH) bands.
//!
//! Two documents are near-duplicates when the Jaccard similarity of their sets of word 5-grams
//! ("shingles") is high: a page saved twice with a changed footer, an old draft beside the final
//! version. MinHash turns a shingle set into a fixed signature of `PERMUTATIONS` minima whose
//! agreement rate estimates the Jaccard similarity; LSH splits signatures into `BANDS` bands so that
//! only documents sharing a whole band are compared, which keeps the work linear in the corpus.
//! With 32 bands of 4 rows, pairs at similarity 0.6 meet in some band with probability 0.988
//! and pairs at 0.3 with 0.23; candidates are then checked on their full signature.

use std::collections::{HashMap, HashSet};

use sha2::{Digest, Sha256};

/// Words per shingle.
const SHINGLE: usize = 5;
/// Signature length.
pub const PERMUTATIONS: usize = 128;
/// LSH bands (`PERMUTATIONS / BANDS` rows each).
const BANDS: usize = 32;
const ROWS: usize = PERMUTATIONS / BANDS;

/// A document's MinHash signature.
#[derive(Debug, Clone, PartialEq)]
pub struct Signature(pub Vec<u32>);

/// Normalised words: lowercase alphanumeric runs.
pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A hash of the normalised text, equal for texts that differ only in case, spacing and punctuation.
pub fn exact_key(text: &str) -> String {
    let mut hasher = Sha256::new();
    for word in words(text) {
        hasher.update(word.as_bytes());
        hasher.update(b" ");
    }
    hex::encode(hasher.finalize())
}

fn hash64(bytes: &[u8], seed: u64) -> u64 {
    // FNV-1a over the bytes, then a splitmix64 finaliser mixed with the seed: fast, stable across
    // runs and machines (std's hasher is randomised per process).
    let mut h: u64 = 0xcbf29ce484222325 ^ seed.wrapping_mul(0x9e3779b97f4a7c15);
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58476d1ce4e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d049bb133111eb);
    h ^ (h >> 31)
}

/// The MinHash signature of `text`'s word 5-grams (the whole text when it is shorter).
pub fn signature(text: &str) -> Signature {
    let words = words(text);
    let shingles: HashSet<u64> = if words.len() < SHINGLE {
        std::iter::once(hash64(words.join(" ").as_bytes(), 0)).collect()
    } else {
        words
            .windows(SHINGLE)
            .map(|w| hash64(w.join(" ").as_bytes(), 0))
            .collect()
    };
    let mut minima = vec![u32::MAX; PERMUTATIONS];
    for shingle in shingles {
        for (i, min) in minima.iter_mut().enumerate() {
            // One cheap permutation per row: rehash the shingle's hash with the row's seed.
            let value = (hash64(&shingle.to_le_bytes(), i as u64 + 1) >> 32) as u32;
            if value < *min {
                *min = value;
            }
        }
    }
    Signature(minima)
}

impl Signature {
    /// Estimated Jaccard similarity: the share of positions where the minima agree.
    pub fn similarity(&self, other: &Signature) -> f64 {
        let same = self.0.iter().zip(&other.0).filter(|(a, b)| a == b).count();
        same as f64 / PERMUTATIONS as f64
    }

    fn band_keys(&self) -> impl Iterator<Item = (usize, u64)> + '_ {
        self.0.chunks(ROWS).enumerate().map(|(band, rows)| {
            let bytes: Vec<u8> = rows.iter().flat_map(|r| r.to_le_bytes()).collect();
            (band, hash64(&bytes, band as u64))
        })
    }
}

/// Kept documents, indexed by band, to find near-duplicates of a new one.
#[derive(Default)]
pub struct NearDuplicateIndex {
    signatures: Vec<(String, Signature)>,
    buckets: HashMap<(usize, u64), Vec<usize>>,
}

impl NearDuplicateIndex {
    /// The most similar kept document at or above `threshold`, if any.
    pub fn find(&self, signature: &Signature, threshold: f64) -> Option<(&str, f64)> {
        let mut seen = HashSet::new();
        let mut best: Option<(&str, f64)> = None;
        for key in signature.band_keys() {
            for &index in self.buckets.get(&key).into_iter().flatten() {
                if !seen.insert(index) {
                    continue;
                }
                let (id, other) = &self.signatures[index];
                let similarity = signature.similarity(other);
                if similarity >= threshold && best.is_none_or(|(_, s)| similarity > s) {
                    best = Some((id, similarity));
                }
            }
        }
        best
    }

    /// Adds a kept document.
    pub fn insert(&mut self, id: String, signature: Signature) {
        let index = self.signatures.len();
        for key in signature.band_keys() {
            self.buckets.entry(key).or_default().push(index);
        }
        self.signatures.push((id, signature));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "B-tree indexes in PostgreSQL keep keys sorted so that equality and range \
        queries can find rows in logarithmic time. A composite index on (customer_id, created_at) \
        serves queries that filter on the customer and sort by date, but not queries on the date \
        alone. Partial indexes cover only the rows a query needs, such as unpaid invoices, and stay \
        small. Use EXPLAIN ANALYZE to see whether the planner chooses an index scan, a bitmap scan or \
        a sequential scan, and remember that a low-selectivity index is often ignored on purpose.";

    #[test]
    fn similar_texts_match_and_different_ones_do_not() {
        let edited = TEXT
            .replace("stay \n        small", "remain compact")
            .replace("on purpose", "deliberately");
        let other = "Tomatoes want sixty centimetres between plants, deep watering twice a week and a \
            stake or cage before they flower. Pinch out side shoots on cordon varieties.";
        let a = signature(TEXT);
        assert_eq!(a.similarity(&signature(TEXT)), 1.0);
        assert!(
            a.similarity(&signature(&edited)) > 0.6,
            "{}",
            a.similarity(&signature(&edited))
        );
        assert!(a.similarity(&signature(other)) < 0.1);

        let mut index = NearDuplicateIndex::default();
        index.insert("a".into(), a);
        assert_eq!(index.find(&signature(&edited), 0.6).map(|(id, _)| id), Some("a"));
        assert!(index.find(&signature(other), 0.6).is_none());
    }

    #[test]
    fn exact_key_ignores_case_and_punctuation() {
        assert_eq!(exact_key("Hello, World!"), exact_key("hello world"));
        assert_ne!(exact_key("hello world"), exact_key("hello there"));
    }
}
