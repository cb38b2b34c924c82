//! The keys and values of the last prompt read, for the next prompt that begins the same way.
//!
//! Every request the service answers starts with the same chat template and instruction (about a
//! hundred tokens), and a follow-up question repeats its conversation. A prompt's keys and values
//! at a position depend only on the tokens up to it, and a chunk's positions come out with the same
//! bits however the prompt is cut into chunks (`tests/models.rs`), so a new sequence may start from
//! a copy of the positions it shares with the last prompt read instead of reading them again.
//!
//! One entry is kept (the most recent prompt, at most [`MAX_POSITIONS`] of it): a copy in, when a
//! prompt has been read, and a copy out, when a sequence begins with at least [`MIN_SHARED`] of
//! its tokens. Copying is a memcpy of the positions' rows, far cheaper than the products it saves.

use std::sync::Mutex;

use super::llama::Cache;

/// Fewer shared tokens than this are read again: the copy is not worth its bookkeeping.
pub const MIN_SHARED: usize = 32;

/// Positions kept of the last prompt (its bytes: this many times `kv_bytes_per_position`).
pub const MAX_POSITIONS: usize = 1024;

/// The last prompt read: its tokens and the cache holding their positions.
#[derive(Default)]
pub struct PrefixCache {
    last: Mutex<Option<(Vec<u32>, Cache)>>,
}

impl PrefixCache {
    /// Fills `cache` (empty) with the positions `tokens` shares with the last prompt read, leaving
    /// at least `keep` of `tokens` to read; returns how many positions it holds now.
    pub fn restore(&self, tokens: &[u32], keep: usize, cache: &mut Cache) -> usize {
        let Ok(last) = self.last.lock() else { return 0 };
        let Some((cached, stored)) = last.as_ref() else {
            return 0;
        };
        let shared = cached
            .iter()
            .zip(tokens)
            .take_while(|(a, b)| a == b)
            .count()
            .min(tokens.len().saturating_sub(keep));
        if shared < MIN_SHARED {
            return 0;
        }
        cache.copy_prefix(stored, shared);
        shared
    }

    /// Keeps the first positions of a prompt just read (`tokens`, all of them in `cache`).
    pub fn store(&self, tokens: &[u32], cache: &Cache) {
        let kept = tokens.len().min(MAX_POSITIONS).min(cache.positions());
        if kept < MIN_SHARED {
            return;
        }
        let Ok(mut last) = self.last.lock() else { return };
        // Reuses the stored buffers when they are big enough.
        match last.as_mut() {
            Some((cached, stored)) => {
                cached.clear();
                cached.extend_from_slice(&tokens[..kept]);
                stored.copy_prefix(cache, kept);
            }
            None => {
                let mut stored = cache.empty_like();
                stored.copy_prefix(cache, kept);
                *last = Some((tokens[..kept].to_vec(), stored));
            }
        }
    }
}
