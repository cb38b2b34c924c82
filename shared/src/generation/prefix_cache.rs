//! The keys and values of the last prompt read, for the next prompt that begins the same way.
//!
//! A follow-up question repeats its conversation, and every request starts with the same chat
//! template and instruction. A prompt is read in chunks from position 0, each chunk one pass of
//! the same products; two prompts whose first `k` chunks hold the same tokens compute those chunks
//! identically, bit for bit. So a new prompt may start from a copy of the whole chunks it shares
//! with the last prompt read (read in chunks of the same size) instead of reading them again, and
//! its answer, seeded samples included, is the one it gets reading them. Only whole chunks are
//! reused: a position's keys and values read in another chunk could differ in their last bits
//! (the products' blocking depends on the chunk), and then a sample could too.
//!
//! One entry is kept (the most recent prompt, at most [`MAX_POSITIONS`] of it): a copy in when a
//! prompt has been read, a copy out when a sequence starts reading. A copy is a memcpy of the
//! positions' rows, far cheaper than the products it saves.

use std::sync::Mutex;

use super::llama::Cache;

/// Positions kept of the last prompt (its bytes: this many times `kv_bytes_per_position`).
pub const MAX_POSITIONS: usize = 1024;

/// The last prompt read.
struct Entry {
    tokens: Vec<u32>,
    /// The chunk size it was read in.
    chunk: usize,
    cache: Cache,
}

/// One entry: the last prompt read, its chunk size, and the cache holding its positions.
#[derive(Default)]
pub struct PrefixCache {
    last: Mutex<Option<Entry>>,
}

impl PrefixCache {
    /// Fills `cache` (empty) with the whole chunks of `chunk` tokens that `tokens` shares with
    /// the last prompt read in chunks of that size, leaving at least `keep` of `tokens` to read;
    /// returns how many positions it holds now.
    pub fn restore(&self, tokens: &[u32], chunk: usize, keep: usize, cache: &mut Cache) -> usize {
        let Ok(last) = self.last.lock() else { return 0 };
        let Some(entry) = last.as_ref().filter(|e| e.chunk == chunk && chunk > 0) else {
            return 0;
        };
        let shared = entry
            .tokens
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(keep));
        let whole = shared / chunk * chunk;
        if whole == 0 {
            return 0;
        }
        cache.copy_prefix(&entry.cache, whole);
        whole
    }

    /// Keeps the first positions of a prompt just read in chunks of `chunk` tokens (`tokens`,
    /// all of them in `cache`).
    pub fn store(&self, tokens: &[u32], chunk: usize, cache: &Cache) {
        let read = tokens.len().min(cache.positions());
        if chunk == 0 {
            return;
        }
        // Whole chunks only; a last chunk that took one token more (a prompt never leaves one
        // token alone) is not a whole chunk as another prompt would read it.
        let mut kept = read / chunk * chunk;
        if read - kept == 1 {
            kept = kept.saturating_sub(chunk);
        }
        let kept = kept.min(MAX_POSITIONS / chunk * chunk);
        if kept == 0 {
            return; // not one whole chunk to offer
        }
        let Ok(mut last) = self.last.lock() else { return };
        // Reuses the stored buffers when they are big enough.
        match last.as_mut() {
            Some(entry) => {
                entry.tokens.clear();
                entry.tokens.extend_from_slice(&tokens[..kept]);
                entry.chunk = chunk;
                entry.cache.copy_prefix(cache, kept);
            }
            None => {
                let mut stored = cache.empty_like();
                stored.copy_prefix(cache, kept);
                *last = Some(Entry {
                    tokens: tokens[..kept].to_vec(),
                    chunk,
                    cache: stored,
                });
            }
        }
    }
}
