//! Causal attention for a chunk of prompt tokens, as matrix products.
//!
//! A decoded token's attention is one query against the cache ([`super::Attention`]); a prompt
//! chunk's is hundreds of queries against the same keys and values, where query-by-query code
//! reloads every key and value row once per query head and token. Here each task takes a block of
//! [`QUERY_BLOCK`] tokens of one query head: their scores against every position they see are one
//! gemm (`Q Kᵀ`, scaled), each row's softmax runs over the positions its token sees (the rest set
//! to zero), and the weighted sum of the values is gemm again, accumulated over fixed blocks of
//! [`POSITION_BLOCK`] positions.
//!
//! The attention itself is laid out so that a token's output does not depend on how the prompt
//! is cut into chunks: its scores are dot products over the head's features alone, its softmax
//! sees exactly its visible positions, and its sum over positions is taken in blocks that start at
//! position 0 whatever the chunk (the blocks' invisible positions weigh exactly zero). The weight
//! products around it may still differ in their last bits between chunk sizes, which is why a
//! reused prompt prefix is reused in whole chunks only (`super::super::prefix_cache`); greedy
//! answers are the same however a prompt is chunked (`tests/models.rs`).

use super::{SharedOut, for_each, softmax_in_place};

/// Tokens per task.
pub const QUERY_BLOCK: usize = 64;

/// Positions per product of the value sum: the blocks start at multiples of this from 0.
pub const POSITION_BLOCK: usize = 64;

/// A prompt chunk's attention: `tokens` queries at positions `start..start + tokens`, each
/// seeing the cache's positions up to its own.
pub struct PromptAttention<'a> {
    /// `tokens x (heads * head_dim)` queries, token `t`'s at `t * heads * head_dim`.
    pub queries: &'a [f32],
    /// Keys of positions `0..start + tokens`, position `p`'s at `p * kv_heads * head_dim`.
    pub keys: &'a [f32],
    /// Values, laid out as the keys.
    pub values: &'a [f32],
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (each shared by `heads / kv_heads` query heads).
    pub kv_heads: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Positions before the chunk.
    pub start: usize,
    /// Tokens in the chunk.
    pub tokens: usize,
    /// Score scale (`1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl PromptAttention<'_> {
    /// Writes every token's heads' outputs into `out` (`tokens x (heads * head_dim)`).
    pub fn run(&self, out: &mut [f32]) {
        let (d, dim, kv_dim) = (self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let seen = self.start + self.tokens;
        // Checked in release builds too: the products below read and write through raw pointers.
        assert!(self.heads > 0 && self.kv_heads > 0 && self.heads.is_multiple_of(self.kv_heads));
        assert_eq!(self.queries.len(), self.tokens * dim, "a query per token and head");
        assert!(self.keys.len() >= seen * kv_dim && self.values.len() >= seen * kv_dim);
        assert_eq!(out.len(), self.tokens * dim, "an output per token and head");
        let group = self.heads / self.kv_heads;
        let blocks = self.tokens.div_ceil(QUERY_BLOCK);
        let tasks: Vec<(usize, usize)> = (0..self.heads)
            .flat_map(|h| (0..blocks).map(move |b| (h, b * QUERY_BLOCK)))
            .collect();
        let shared = SharedOut(out.as_mut_ptr());
        let shared = &shared;
        for_each(tasks, |(head, first)| {
            let rows = QUERY_BLOCK.min(self.tokens - first);
            let kv = head / group;
            // Positions the block's last token sees; every row's scores span them.
            let span = self.start + first + rows;
            let mut scores = vec![0f32; rows * span];
            // SAFETY: the queries of tokens first..first+rows at head `head` lie inside `queries`
            // (row stride `dim`, `d` features); keys of positions 0..span inside `keys` (asserted
            // above, column stride `kv_dim`); `scores` is `rows x span`, row-major.
            unsafe {
                gemm::gemm(
                    rows,
                    span,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    span as isize,
                    false,
                    self.queries.as_ptr().add(first * dim + head * d),
                    1,
                    dim as isize,
                    self.keys.as_ptr().add(kv * d),
                    kv_dim as isize,
                    1,
                    0.0,
                    self.scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for (r, row) in scores.chunks_exact_mut(span).enumerate() {
                let visible = self.start + first + r + 1;
                softmax_in_place(&mut row[..visible]);
                row[visible..].fill(0.0);
            }
            // SAFETY: this task alone writes rows first..first+rows, features head*d..(head+1)*d,
            // of `out` (tasks are distinct (head, block) pairs), which outlives the loop.
            let target = unsafe { shared.0.add(first * dim + head * d) };
            for r in 0..rows {
                // SAFETY: as above: row `r` of this task's slice of `out`.
                unsafe { std::ptr::write_bytes(target.add(r * dim), 0, d) };
            }
            for from in (0..span).step_by(POSITION_BLOCK) {
                let count = POSITION_BLOCK.min(span - from);
                // SAFETY: `scores` columns from..from+count of each row; values of positions
                // from..from+count (inside `values`, asserted above); `target` as above.
                unsafe {
                    gemm::gemm(
                        rows,
                        d,
                        count,
                        target,
                        1,
                        dim as isize,
                        true,
                        scores.as_ptr().add(from),
                        1,
                        span as isize,
                        self.values.as_ptr().add(from * kv_dim + kv * d),
                        1,
                        kv_dim as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            }
        });
    }
}
