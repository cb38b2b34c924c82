//! Matrix products over a GGUF's stored blocks, with activations kept at (nearly) full precision.
//!
//! candle's quantized CPU kernels (like llama.cpp's) round the activations to 8 bits before each
//! product, which changes SmolLM2's greedy answers; dequantizing the whole model to f32 keeps them
//! but reads 5.5x the bytes per token. These kernels read the stored 4- and 8-bit blocks and
//! dequantize them exactly inside the product, at the memory traffic of the quantized file.
//!
//! Blocks are ggml's: `Q4_1` is 32 weights as an f16 scale `d`, an f16 minimum `m` and 16 bytes of
//! nibbles, each weight `d * q + m`; `Q8_0` is an f16 scale and 32 signed bytes, each weight
//! `d * q`. At load time they are rearranged sixteen rows at a time ([`blocks`]), so that one SIMD
//! register multiplies a pair of columns for sixteen rows at once. With
//! `Σ (d q_i + m) x_i = d Σ q_i x_i + m Σ x_i`, the per-block sums of `x` are computed once per vector.
//!
//! One vector (a decoded token): the vector is rounded to 16-bit integers per block of 32 (error at
//! most 1/65534 of the block's largest value, 256 times finer than 8-bit rounding; greedy answers
//! stay those of f32 weights, `tests/models.rs`), and each block's products are exact sums in 32-bit
//! integers (`vpmaddwd`): with AVX2 ([`avx2`]; AVX-512, [`avx512`], measured no faster here and is
//! chosen by `ENGRAM_KERNEL=avx512`), else plain Rust ([`blocks::group_product`]), chosen at run
//! time. Many vectors (a prompt): weight tiles are
//! dequantized exactly into a cache-sized buffer and multiplied with f32 gemm.
//!
//! Work is split across rayon's threads in whole groups of sixteen rows.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
pub mod blocks;
mod prompt_attention;

use std::sync::OnceLock;

use rayon::prelude::*;

pub use blocks::{Activation, BlockFormat, Blocks, GROUP};
pub use prompt_attention::PromptAttention;

/// Weights per block, for both formats.
pub const BLOCK: usize = 32;

/// A weight matrix of `rows` x `cols`.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// ggml blocks, interleaved sixteen rows at a time.
    Quantized(Blocks),
    /// Plain f32.
    F32 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// `rows * cols` weights, row-major.
        data: Vec<f32>,
    },
}

/// The instruction set a product runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kernel {
    /// AVX-512 F and BW.
    Avx512,
    /// AVX2 with FMA and F16C.
    Avx2,
    /// Plain Rust.
    Portable,
}

impl Kernel {
    /// The kernel for decoding: AVX2 where the CPU has it, else plain Rust. `ENGRAM_KERNEL=
    /// avx512|avx2|portable` picks another the CPU runs. AVX2 is preferred over AVX-512 because it
    /// measured as fast or faster for decoding on the benchmark machine (AMD EPYC, `kernels` and
    /// `generate` rows of docs/BENCHMARKS.md); all give the same bits.
    pub fn best() -> Kernel {
        static BEST: OnceLock<Kernel> = OnceLock::new();
        *BEST.get_or_init(|| {
            let available = Kernel::available();
            let wanted = std::env::var("ENGRAM_KERNEL").ok().and_then(|name| {
                available
                    .iter()
                    .copied()
                    .find(|k| format!("{k:?}").eq_ignore_ascii_case(&name))
            });
            wanted.unwrap_or(if available.contains(&Kernel::Avx2) {
                Kernel::Avx2
            } else {
                available[0]
            })
        })
    }

    /// The widest this CPU runs: the one that dequantizes a prompt's weight tiles.
    pub fn widest() -> Kernel {
        static WIDEST: OnceLock<Kernel> = OnceLock::new();
        *WIDEST.get_or_init(|| Kernel::available()[0])
    }

    /// Those this CPU runs, widest first.
    pub fn available() -> Vec<Kernel> {
        let mut kernels = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            if avx512::available() {
                kernels.push(Kernel::Avx512);
            }
            if avx2::available() {
                kernels.push(Kernel::Avx2);
            }
        }
        kernels.push(Kernel::Portable);
        kernels
    }

    /// Whether this CPU has the kernel's features (cached: one load per call).
    fn runs_here(self) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 => avx512::available(),
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => avx2::available(),
            Kernel::Portable => true,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// A kernel asked for on a CPU without its instructions: a programming error, stopped before
    /// any unsupported instruction runs.
    fn refused(self) -> ! {
        panic!("the {self:?} kernel needs CPU features this machine lacks; use Kernel::available()")
    }

    /// Group `g` of `blocks` times the vector.
    fn group_product(self, blocks: &Blocks, g: usize, x: &Activation) -> [f32; GROUP] {
        match self {
            // SAFETY: the guard checks the CPU's features (a kernel the CPU lacks is refused, never
            // run); the kernel checks the lengths it reads.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if self.runs_here() => unsafe { avx512::group_product(blocks, g, x) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.runs_here() => unsafe { avx2::group_product(blocks, g, x) },
            Kernel::Avx512 | Kernel::Avx2 => self.refused(),
            _ => blocks::group_product(blocks, g, x),
        }
    }

    /// Group `g` of `blocks` times each vector of `xs`, into `out[v]`: the same bits as
    /// [`Kernel::group_product`] gives each vector alone, the group's weights read once.
    fn group_products(self, blocks: &Blocks, g: usize, xs: &[&Activation], out: &mut [[f32; GROUP]]) {
        match self {
            // SAFETY: the guard checks the CPU's features (every AVX-512 CPU has AVX2; all kernels
            // give the same bits, `every_kernel_computes_the_same_integer_block_sums`); the kernel
            // checks the lengths it reads.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 | Kernel::Avx2 if self.runs_here() && avx2::available() => unsafe {
                avx2::group_products_many(blocks, g, xs, out)
            },
            Kernel::Avx512 | Kernel::Avx2 => self.refused(),
            _ => {
                for (x, out) in xs.iter().zip(out.iter_mut()) {
                    *out = blocks::group_product(blocks, g, x);
                }
            }
        }
    }

    fn dequantize_group(self, blocks: &Blocks, g: usize, out: &mut [f32], stride: usize) {
        match self {
            // SAFETY: the guard checks the CPU's features; the function checks `out`'s length.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx512 if self.runs_here() => unsafe { avx512::dequantize_group(blocks, g, out, stride) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 if self.runs_here() => unsafe { avx2::dequantize_group(blocks, g, out, stride) },
            Kernel::Avx512 | Kernel::Avx2 => self.refused(),
            _ => blocks::dequantize_group(blocks, g, out, stride),
        }
    }
}

/// One output slice of a parallel product of several vectors: `outs[v]` receives vector `v`'s
/// rows `first..first + len`.
struct BatchTask<'a> {
    matrix: &'a Matrix,
    first: usize,
    outs: Vec<&'a mut [f32]>,
}

/// One output slice of a parallel product: `out` receives rows `first..first + out.len()`.
struct Task<'a> {
    matrix: &'a Matrix,
    first: usize,
    out: &'a mut [f32],
}

impl Matrix {
    /// A matrix of ggml blocks (`rows x cols`, row-major), rearranged for these kernels.
    pub fn from_ggml(format: BlockFormat, rows: usize, cols: usize, ggml: &[u8]) -> Result<Matrix, String> {
        Blocks::from_ggml(format, rows, cols, ggml).map(Matrix::Quantized)
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Quantized(blocks) => blocks.rows,
            Matrix::F32 { rows, .. } => *rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Matrix::Quantized(blocks) => blocks.cols,
            Matrix::F32 { cols, .. } => *cols,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Quantized(blocks) => blocks.bytes(),
            Matrix::F32 { data, .. } => data.len() * 4,
        }
    }

    /// Row `row`, dequantized into `out` (length `cols`).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        match self {
            Matrix::Quantized(blocks) => blocks.row_into(row, out),
            Matrix::F32 { cols, data, .. } => out.copy_from_slice(&data[row * cols..(row + 1) * cols]),
        }
    }

    /// `y = W x` for one vector.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.cols());
        Self::matvec_many(&mut [(self, y)], &Activation::new(x), Kernel::best());
    }

    /// `y_i = W_i x` for several matrices of the same input size, in one parallel pass: a
    /// layer's Q, K and V (or gate and up) share one rounding of `x` and one hand-out to the
    /// threads.
    pub fn matvec_many(products: &mut [(&Matrix, &mut [f32])], x: &Activation, kernel: Kernel) {
        // About four tasks per thread, in whole groups of sixteen rows.
        let rows: usize = products.iter().map(|(m, _)| m.rows()).sum();
        let per_task = (rows / (rayon::current_num_threads() * 4))
            .max(GROUP)
            .next_multiple_of(GROUP);
        let mut tasks = Vec::with_capacity(rows / per_task + products.len());
        for (matrix, y) in products.iter_mut() {
            assert_eq!(x.x.len(), matrix.cols());
            assert_eq!(y.len(), matrix.rows());
            for (i, out) in y.chunks_mut(per_task).enumerate() {
                tasks.push(Task {
                    matrix,
                    first: i * per_task,
                    out,
                });
            }
        }
        for_each(tasks, |task| task.run(x, kernel));
    }

    /// `y_i = W_i x_v` for several matrices and several vectors (one decoded token per sequence of
    /// a batch) in one parallel pass: `y_i` is `xs.len() x rows_i`, row `v` vector `v`'s product.
    /// Each task reads its rows' weights once for every vector, and each vector's product has the
    /// same bits as [`Matrix::matvec_many`] gives it alone with the same kernel.
    pub fn matvec_batch(products: &mut [(&Matrix, &mut [f32])], xs: &[Activation], kernel: Kernel) {
        let vectors = xs.len();
        let rows: usize = products.iter().map(|(m, _)| m.rows()).sum();
        let per_task = (rows / (rayon::current_num_threads() * 4))
            .max(GROUP)
            .next_multiple_of(GROUP);
        let mut tasks = Vec::with_capacity(rows / per_task + products.len());
        for (matrix, y) in products.iter_mut() {
            let rows = matrix.rows();
            assert_eq!(y.len(), vectors * rows, "one row of outputs per vector");
            for x in xs {
                assert_eq!(x.x.len(), matrix.cols());
            }
            let mut slices: Vec<_> = y.chunks_mut(rows).map(|row| row.chunks_mut(per_task)).collect();
            for i in 0..rows.div_ceil(per_task) {
                let outs = slices.iter_mut().filter_map(Iterator::next).collect();
                tasks.push(BatchTask {
                    matrix,
                    first: i * per_task,
                    outs,
                });
            }
        }
        let xs: Vec<&Activation> = xs.iter().collect();
        for_each(tasks, |task| task.run(&xs, kernel));
    }

    /// `Y = X Wᵀ` for `tokens` vectors at once (`x` is `tokens x cols`, `y` is `tokens x rows`).
    ///
    /// The weight rows are cut into tiles of a few groups; each task dequantizes its tile exactly
    /// into a small scratch buffer that stays in cache (column by column, sixteen rows at a time)
    /// and multiplies every token by it with gemm, writing its own columns of `y`. A prompt's tokens
    /// share one pass over the weights, the dequantized copy never goes out to memory, and the tiles
    /// spread over rayon's threads.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) {
        self.matmul_with(x, tokens, y, Kernel::widest());
    }

    fn matmul_with(&self, x: &[f32], tokens: usize, y: &mut [f32], kernel: Kernel) {
        let (rows, cols) = (self.rows(), self.cols());
        assert_eq!(x.len(), tokens * cols);
        assert_eq!(y.len(), tokens * rows);
        if tokens == 1 {
            self.matvec(x, y);
            return;
        }
        // About 64 KiB of f32 weights per tile, whole groups, at least four tiles a thread.
        let threads = rayon::current_num_threads().max(1);
        let tile = (16 * 1024 / cols)
            .min(rows.div_ceil(threads * 4))
            .max(GROUP)
            .next_multiple_of(GROUP);
        let out = SharedOut(y.as_mut_ptr());
        (0..rows.div_ceil(tile)).into_par_iter().for_each_init(
            || vec![0f32; tile * cols],
            |scratch, t| {
                let first = t * tile;
                let count = tile.min(rows - first);
                // The tile's weights and their strides between rows of W and between columns.
                let (weights, row_stride, column_stride): (&[f32], usize, usize) = match self {
                    Matrix::F32 { data, .. } => (&data[first * cols..(first + count) * cols], cols, 1),
                    Matrix::Quantized(blocks) => {
                        for (i, g) in (first / GROUP..(first + count).div_ceil(GROUP)).enumerate() {
                            kernel.dequantize_group(blocks, g, &mut scratch[i * GROUP..], tile);
                        }
                        (&scratch[..], 1, tile)
                    }
                };
                let out = &out;
                // SAFETY: x is tokens x cols and the tile count x cols, row-major; this task writes
                // only columns first..first+count of y (tokens x rows), which no other task writes,
                // and y outlives the parallel loop.
                unsafe {
                    gemm::gemm(
                        tokens,
                        count,
                        cols,
                        out.0.add(first),
                        1,
                        rows as isize,
                        false,
                        x.as_ptr(),
                        1,
                        cols as isize,
                        weights.as_ptr(),
                        row_stride as isize,
                        column_stride as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        gemm::Parallelism::None,
                    );
                }
            },
        );
    }
}

impl BatchTask<'_> {
    fn run(self, xs: &[&Activation], kernel: Kernel) {
        let BatchTask {
            matrix,
            first,
            mut outs,
        } = self;
        let len = outs.first().map_or(0, |o| o.len());
        match matrix {
            Matrix::Quantized(blocks) => {
                let mut values = vec![[0f32; GROUP]; xs.len()];
                for start in (0..len).step_by(GROUP) {
                    kernel.group_products(blocks, (first + start) / GROUP, xs, &mut values);
                    let count = GROUP.min(len - start);
                    for (out, values) in outs.iter_mut().zip(&values) {
                        out[start..start + count].copy_from_slice(&values[..count]);
                    }
                }
            }
            Matrix::F32 { cols, data, .. } => {
                for (out, x) in outs.iter_mut().zip(xs) {
                    for (i, out) in out.iter_mut().enumerate() {
                        let row = first + i;
                        *out = dot_f32(&data[row * cols..(row + 1) * cols], &x.x);
                    }
                }
            }
        }
    }
}

impl Task<'_> {
    fn run(self, x: &Activation, kernel: Kernel) {
        match self.matrix {
            Matrix::Quantized(blocks) => {
                for (i, out) in self.out.chunks_mut(GROUP).enumerate() {
                    let values = kernel.group_product(blocks, self.first / GROUP + i, x);
                    out.copy_from_slice(&values[..out.len()]);
                }
            }
            Matrix::F32 { cols, data, .. } => {
                for (i, out) in self.out.iter_mut().enumerate() {
                    let row = self.first + i;
                    *out = dot_f32(&data[row * cols..(row + 1) * cols], &x.x);
                }
            }
        }
    }
}

/// Runs `f` on each task: on rayon's threads, or in order on this thread when the pool has one
/// thread (a decoded token's steps are too short to pay for the hand-off).
pub fn for_each<T: Send>(tasks: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if rayon::current_num_threads() == 1 {
        tasks.into_iter().for_each(f);
    } else {
        tasks.into_par_iter().for_each(f);
    }
}

/// `y`'s base pointer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);
// SAFETY: the tasks of `Matrix::matmul` and `PromptAttention::run` write disjoint elements
// through it.
unsafe impl Sync for SharedOut {}

/// Dot product of two f32 slices.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() && a.len().is_multiple_of(8) {
        // SAFETY: the CPU has AVX2 and FMA; the length is a multiple of 8.
        return unsafe { avx2::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Causal attention of one token for the query heads sharing one key/value head: `queries` is
/// `heads x d` (`d` = `head_dim`); row `p` of the keys (values) is `keys[p * stride..][..d]`, for
/// the `visible` positions; `out` (`heads x d`) receives each head's softmax-weighted values.
/// `scores` is scratch. The heads of one task share the key and value rows in cache.
pub struct Attention<'a> {
    /// `heads x head_dim` queries.
    pub queries: &'a [f32],
    /// Keys, row `p` at `p * stride`.
    pub keys: &'a [f32],
    /// Values, row `p` at `p * stride`.
    pub values: &'a [f32],
    /// Floats between consecutive positions' rows.
    pub stride: usize,
    /// Positions seen.
    pub visible: usize,
    /// Features per head.
    pub head_dim: usize,
    /// Score scale (`1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl Attention<'_> {
    /// Writes the heads' outputs into `out` (`heads x head_dim`).
    pub fn run(&self, scores: &mut Vec<f32>, out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if avx2::available() && self.head_dim.is_multiple_of(8) {
            // SAFETY: the CPU has AVX2 and FMA; the head size is a multiple of 8.
            return unsafe { avx2::attend(self, scores, out) };
        }
        self.run_portable(scores, out);
    }

    /// [`Attention::run`] in plain Rust.
    fn run_portable(&self, scores: &mut Vec<f32>, out: &mut [f32]) {
        self.run_with(
            scores,
            out,
            |query, scores| {
                for (p, score) in scores.iter_mut().enumerate() {
                    let key = &self.keys[p * self.stride..][..self.head_dim];
                    *score = query.iter().zip(key).map(|(x, y)| x * y).sum::<f32>() * self.scale;
                }
            },
            softmax,
            |weights, out| {
                out.fill(0.0);
                for (p, w) in weights.iter().enumerate() {
                    for (o, v) in out.iter_mut().zip(&self.values[p * self.stride..][..self.head_dim]) {
                        *o += w * v;
                    }
                }
            },
        );
    }

    /// [`Attention::run`]'s steps, head by head, with the scores of one query against every
    /// visible key, their softmax in place, and the weighted sum of the values, given.
    #[inline(always)]
    fn run_with(
        &self,
        scores: &mut Vec<f32>,
        out: &mut [f32],
        score: impl Fn(&[f32], &mut [f32]),
        softmax: impl Fn(&mut [f32]),
        sum: impl Fn(&[f32], &mut [f32]),
    ) {
        let (d, visible) = (self.head_dim, self.visible);
        scores.clear();
        scores.resize(visible, 0.0);
        for (query, out) in self.queries.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            score(query, scores);
            softmax(scores);
            sum(scores, out);
        }
    }
}

/// `e^x` for each value, in place, with AVX2 where the CPU has it: the training pass's softmax,
/// SiLU and cross-entropy take over a hundred million exponentials a step, which `f32::exp` takes
/// one at a time. Relative error about 2e-7; values above 88 give `e^88`.
pub fn exp_in_place(values: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::exp(values) };
    }
    for v in values.iter_mut() {
        *v = v.min(88.0).exp();
    }
}

/// Scores into attention weights, in place, with AVX2 where the CPU has it.
pub fn softmax_in_place(scores: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::available() {
        // SAFETY: the CPU has AVX2 and FMA.
        return unsafe { avx2::softmax(scores) };
    }
    softmax(scores);
}

/// Scores into attention weights, in place: `exp(s - max) / Σ exp(s - max)`.
fn softmax(scores: &mut [f32]) {
    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut total = 0f32;
    for s in scores.iter_mut() {
        *s = (*s - max).exp();
        total += *s;
    }
    for s in scores.iter_mut() {
        *s /= total;
    }
}

#[cfg(test)]
mod tests {
    use half::f16;

    use super::*;

    fn q4_1_block(d: f32, m: f32, qs: &[u8; 32]) -> Vec<u8> {
        let mut block = Vec::with_capacity(20);
        block.extend(f16::from_f32(d).to_le_bytes());
        block.extend(f16::from_f32(m).to_le_bytes());
        for j in 0..16 {
            block.push(qs[j] | (qs[j + 16] << 4));
        }
        block
    }

    fn q8_0_block(d: f32, qs: &[i8; 32]) -> Vec<u8> {
        let mut block = Vec::with_capacity(34);
        block.extend(f16::from_f32(d).to_le_bytes());
        block.extend(qs.iter().map(|&q| q as u8));
        block
    }

    /// A `rows x cols` matrix in each layout, with its f32 values.
    fn matrices(rows: usize, cols: usize) -> Vec<(Matrix, Vec<f32>)> {
        let mut q4 = Vec::new();
        let mut q4_values = Vec::new();
        let mut q8 = Vec::new();
        let mut q8_values = Vec::new();
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                let (d, m) = (0.25 * (r % 7 + 1) as f32, -0.5 * b as f32);
                let qs: [u8; 32] = std::array::from_fn(|j| ((j * 7 + r * 3 + b) % 16) as u8);
                q4.extend(q4_1_block(d, m, &qs));
                q4_values.extend(qs.iter().map(|&q| d * f32::from(q) + m));
                let qs: [i8; 32] = std::array::from_fn(|j| ((j * 9 + r * 5 + b) % 256) as u8 as i8);
                q8.extend(q8_0_block(d, &qs));
                q8_values.extend(qs.iter().map(|&q| d * f32::from(q)));
            }
        }
        let f32_values: Vec<f32> = (0..rows * cols).map(|i| (i as f32 * 0.37).sin()).collect();
        vec![
            (
                Matrix::from_ggml(BlockFormat::Q4_1, rows, cols, &q4).unwrap(),
                q4_values,
            ),
            (
                Matrix::from_ggml(BlockFormat::Q8_0, rows, cols, &q8).unwrap(),
                q8_values,
            ),
            (
                Matrix::F32 {
                    rows,
                    cols,
                    data: f32_values.clone(),
                },
                f32_values,
            ),
        ]
    }

    fn close(got: &[f32], want: &[f32], what: &str) {
        within(got, want, &vec![0.0; want.len()], what);
    }

    /// `got` equals `want` up to `slack` per row, plus f32 summation error.
    fn within(got: &[f32], want: &[f32], slack: &[f32], what: &str) {
        for (i, ((g, w), s)) in got.iter().zip(want).zip(slack).enumerate() {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs().max(1.0) + s,
                "{what}, row {i}: {g} vs {w}"
            );
        }
    }

    /// Per row, the most that rounding `x` to 16 bits per block can move `W x`:
    /// `Σ_blocks Σ |w| · max|x| / 65534`.
    fn rounding_bound(values: &[f32], x: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows)
            .map(|r| {
                x.chunks(BLOCK)
                    .enumerate()
                    .map(|(b, block)| {
                        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let weights = &values[r * cols + b * BLOCK..r * cols + (b + 1) * BLOCK];
                        weights.iter().map(|w| w.abs()).sum::<f32>() * max / 65534.0 * 1.01
                    })
                    .sum()
            })
            .collect()
    }

    #[test]
    fn bulk_exponentials_match_f32_exp_to_a_few_ulps() {
        // 1003 values: whole runs of eight and a tail, from far below f32's range to above it.
        let xs: Vec<f32> = (0..1003).map(|i| -120.0 + i as f32 * 0.23).collect();
        let mut ys = xs.clone();
        exp_in_place(&mut ys);
        for (&x, &y) in xs.iter().zip(&ys) {
            let want = x.min(88.0).exp();
            if x < -87.0 {
                assert!(y < 1e-37, "e^{x} = {y}");
            } else {
                assert!((y - want).abs() <= 1e-6 * want, "e^{x}: {y} against {want}");
            }
        }
        assert!(ys.iter().all(|y| y.is_finite()));
    }

    #[test]
    fn products_equal_the_f32_product_with_the_dequantized_weights_on_every_kernel() {
        // 37 rows: two whole groups of sixteen and a padded one.
        let (rows, cols) = (37, 96);
        let x: Vec<f32> = (0..cols).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.125).collect();
        let prepared = Activation::new(&x);
        for (matrix, values) in matrices(rows, cols) {
            let mut row = vec![0f32; cols];
            for r in 0..rows {
                matrix.row_into(r, &mut row);
                assert_eq!(row, values[r * cols..(r + 1) * cols], "{matrix:?} row {r}");
            }
            let expected: Vec<f32> = (0..rows)
                .map(|r| {
                    values[r * cols..(r + 1) * cols]
                        .iter()
                        .zip(&x)
                        .map(|(w, x)| w * x)
                        .sum()
                })
                .collect();
            let slack = match matrix {
                Matrix::Quantized(_) => rounding_bound(&values, &x, rows, cols),
                Matrix::F32 { .. } => vec![0.0; rows],
            };
            let name = match &matrix {
                Matrix::Quantized(blocks) => format!("{:?}", blocks.format),
                Matrix::F32 { .. } => "f32".to_string(),
            };
            for kernel in Kernel::available() {
                let mut y = vec![0f32; rows];
                Matrix::matvec_many(&mut [(&matrix, &mut y)], &prepared, kernel);
                within(&y, &expected, &slack, &format!("{kernel:?} {name}"));
            }
            let mut y = vec![0f32; rows];
            matrix.matvec(&x, &mut y);
            within(&y, &expected, &slack, "matvec");
            // Two vectors at once give the same as one at a time.
            let xs: Vec<f32> = x.iter().chain(x.iter().rev()).copied().collect();
            for kernel in Kernel::available() {
                let mut ys = vec![0f32; 2 * rows];
                matrix.matmul_with(&xs, 2, &mut ys, kernel);
                close(&ys[..rows], &expected, &format!("{kernel:?} matmul {name}"));
            }
        }
    }

    #[test]
    fn every_kernel_computes_the_same_integer_block_sums() {
        // Extreme values: the largest nibbles and bytes against ±32767.
        let (rows, cols) = (16, 64);
        let mut q4 = Vec::new();
        let mut q8 = Vec::new();
        for r in 0..rows {
            for _ in 0..cols / BLOCK {
                let qs: [u8; 32] = std::array::from_fn(|j| if (j + r) % 3 == 0 { 15 } else { (j % 16) as u8 });
                q4.extend(q4_1_block(1.0, 0.0, &qs));
                let qs: [i8; 32] = std::array::from_fn(|j| if (j + r) % 2 == 0 { -128 } else { 127 });
                q8.extend(q8_0_block(1.0, &qs));
            }
        }
        let x: Vec<f32> = (0..cols).map(|i| if i % 3 == 0 { -1.0 } else { 1.0 }).collect();
        let prepared = Activation::new(&x);
        for matrix in [
            Matrix::from_ggml(BlockFormat::Q4_1, rows, cols, &q4).unwrap(),
            Matrix::from_ggml(BlockFormat::Q8_0, rows, cols, &q8).unwrap(),
        ] {
            let mut reference = vec![0f32; rows];
            Matrix::matvec_many(&mut [(&matrix, &mut reference)], &prepared, Kernel::Portable);
            for kernel in Kernel::available() {
                let mut y = vec![0f32; rows];
                Matrix::matvec_many(&mut [(&matrix, &mut y)], &prepared, kernel);
                assert_eq!(y, reference, "{kernel:?}");
            }
        }
    }

    #[test]
    fn a_batch_of_vectors_gives_each_the_bits_it_gets_alone_on_every_kernel() {
        // 37 rows (a padded last group), up to nine vectors (two passes of four and a rest).
        let (rows, cols) = (37, 96);
        for vectors in [1, 2, 3, 4, 5, 9] {
            let xs: Vec<Activation> = (0..vectors)
                .map(|v| {
                    let x: Vec<f32> = (0..cols)
                        .map(|i| (((i * 13 + v * 7) % 17) as f32 - 8.0) * 0.125 * (v + 1) as f32)
                        .collect();
                    Activation::new(&x)
                })
                .collect();
            for ((first, _), (second, _)) in matrices(rows, cols).iter().zip(&matrices(24, cols)) {
                for kernel in Kernel::available() {
                    let (mut y1, mut y2) = (vec![0f32; vectors * rows], vec![0f32; vectors * 24]);
                    Matrix::matvec_batch(&mut [(first, &mut y1), (second, &mut y2)], &xs, kernel);
                    for (v, x) in xs.iter().enumerate() {
                        let (mut z1, mut z2) = (vec![0f32; rows], vec![0f32; 24]);
                        Matrix::matvec_many(&mut [(first, &mut z1), (second, &mut z2)], x, kernel);
                        assert_eq!(
                            y1[v * rows..(v + 1) * rows],
                            z1,
                            "{kernel:?}, {vectors} vectors, vector {v}"
                        );
                        assert_eq!(
                            y2[v * 24..(v + 1) * 24],
                            z2,
                            "{kernel:?}, {vectors} vectors, vector {v}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn several_matrices_in_one_pass_equal_each_alone() {
        let (a, b) = (matrices(40, 64), matrices(24, 64));
        let x: Vec<f32> = (0..64).map(|i| (i as f32 * 0.7).cos()).collect();
        let prepared = Activation::new(&x);
        for ((first, _), (second, _)) in a.iter().zip(&b) {
            let (mut y1, mut y2) = (vec![0f32; 40], vec![0f32; 24]);
            Matrix::matvec_many(&mut [(first, &mut y1), (second, &mut y2)], &prepared, Kernel::best());
            let (mut z1, mut z2) = (vec![0f32; 40], vec![0f32; 24]);
            first.matvec(&x, &mut z1);
            second.matvec(&x, &mut z2);
            assert_eq!((y1, y2), (z1, z2));
        }
    }

    #[test]
    fn a_tiled_product_over_many_rows_equals_one_vector_at_a_time() {
        // 37 rows (tiles of 16 and a short last one), 64 columns, three tokens.
        let (cols, tokens) = (64, 3);
        for (matrix, values) in matrices(37, cols) {
            let rows = matrix.rows();
            let x: Vec<f32> = (0..tokens * cols)
                .map(|i| ((i * 29 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let mut y = vec![0f32; tokens * rows];
            matrix.matmul(&x, tokens, &mut y);
            for t in 0..tokens {
                let mut one = vec![0f32; rows];
                matrix.matvec(&x[t * cols..(t + 1) * cols], &mut one);
                let vector = &x[t * cols..(t + 1) * cols];
                let slack = match matrix {
                    Matrix::Quantized(_) => rounding_bound(&values, vector, rows, cols),
                    Matrix::F32 { .. } => vec![0.0; rows],
                };
                within(&y[t * rows..(t + 1) * rows], &one, &slack, &format!("token {t}"));
            }
        }
    }

    #[test]
    fn attention_of_a_head_group_equals_the_softmax_formula_head_by_head() {
        // Three query heads share key/value head 1 of 2, 13 positions (eight at a time and a
        // rest): head sizes with their own code (64) and without (16).
        for d in [16, 64] {
            attention_case(d);
        }
    }

    fn attention_case(d: usize) {
        let (heads, stride, visible) = (3, 2 * d, 13);
        let queries: Vec<f32> = (0..heads * d).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect();
        let keys: Vec<f32> = (0..visible * stride)
            .map(|i| ((i * 5 % 13) as f32 - 6.0) * 0.07)
            .collect();
        let values: Vec<f32> = (0..visible * stride)
            .map(|i| ((i * 3 % 17) as f32 - 8.0) * 0.05)
            .collect();
        let scale = 0.25;
        let attention = |queries| Attention {
            queries,
            keys: &keys[d..],
            values: &values[d..],
            stride,
            visible,
            head_dim: d,
            scale,
        };
        let mut out = vec![0f32; heads * d];
        attention(&queries).run(&mut Vec::new(), &mut out);
        // The plain-Rust steps agree with whichever ran (the SIMD ones where the CPU has them).
        let mut portable = vec![0f32; heads * d];
        attention(&queries).run_portable(&mut Vec::new(), &mut portable);
        for (a, b) in portable.iter().zip(&out) {
            assert!((a - b).abs() < 1e-6, "plain {a} vs {b}");
        }
        for h in 0..heads {
            let q = &queries[h * d..(h + 1) * d];
            let scores: Vec<f64> = (0..visible)
                .map(|p| {
                    let k = &keys[p * stride + d..p * stride + 2 * d];
                    q.iter().zip(k).map(|(a, b)| f64::from(a * b)).sum::<f64>() * f64::from(scale)
                })
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for j in 0..d {
                let want: f64 = (0..visible)
                    .map(|p| (scores[p] - max).exp() / total * f64::from(values[p * stride + d + j]))
                    .sum();
                let got = out[h * d + j];
                assert!(
                    (f64::from(got) - want).abs() < 1e-5,
                    "head {h}, feature {j}: {got} vs {want}"
                );
            }
            // One head alone gives the same as within its group.
            let mut alone = vec![0f32; d];
            attention(q).run(&mut Vec::new(), &mut alone);
            assert_eq!(alone, out[h * d..(h + 1) * d]);
        }
    }

    #[test]
    fn sixteen_bit_rounding_is_within_its_bound_and_keeps_zero_blocks_zero() {
        let x: Vec<f32> = (0..96)
            .map(|i| {
                if i < 32 {
                    0.0
                } else {
                    ((i * 37 % 101) as f32 - 50.0) * 0.013
                }
            })
            .collect();
        let prepared = Activation::new(&x);
        assert_eq!(prepared.scales[0], 0.0);
        assert!(prepared.values[..32].iter().all(|&v| v == 0));
        for (b, block) in x.chunks(BLOCK).enumerate().skip(1) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            let values = &prepared.values[b * BLOCK..(b + 1) * BLOCK];
            assert_eq!(values.iter().map(|v| v.abs()).max(), Some(32767));
            assert!((prepared.sums[b] - block.iter().sum::<f32>()).abs() < 1e-6);
            for (j, v) in block.iter().enumerate() {
                let back = f32::from(values[j]) * prepared.scales[b];
                assert!((back - v).abs() <= max / 65534.0 * 1.001, "{v} came back as {back}");
            }
        }
    }

    #[test]
    fn stored_blocks_of_the_wrong_size_are_refused() {
        let error = Matrix::from_ggml(BlockFormat::Q4_1, 2, 64, &[0u8; 79]).unwrap_err();
        assert!(error.contains("take 80 bytes, the tensor has 79"), "{error}");
        let error = Matrix::from_ggml(BlockFormat::Q8_0, 2, 48, &[0u8; 68]).unwrap_err();
        assert!(error.contains("not a multiple of the block size"), "{error}");
    }
}
