//! Matrix products over a GGUF's stored blocks, with activations kept at (nearly) full precision.
//!
//! candle's quantized CPU kernels (like llama.cpp's) round the activations to 8 bits before each
//! product, which changes SmolLM2's greedy answers; dequantizing the whole model to f32 keeps them
//! but reads 5.5x the bytes per token. These kernels read the stored 4- and 8-bit blocks and
//! dequantize them exactly inside the dot product, at the memory traffic of the quantized file.
//!
//! Blocks are ggml's: `Q4_1` is 32 weights as an f16 scale `d`, an f16 minimum `m` and 16 bytes of
//! nibbles (low nibbles are weights 0..16, high nibbles 16..32), each weight `d * q + m`; `Q8_0` is an
//! f16 scale and 32 signed bytes, each weight `d * q`. With `Σ (d q_i + m) x_i = d Σ q_i x_i + m Σ x_i`,
//! the per-block sums of `x` are computed once per vector and shared by every row.
//!
//! One vector (a decoded token): x86-64 with AVX2/FMA/F16C rounds the vector to 16-bit integers
//! per block of 32 (error at most 1/65534 of the block's largest value, 256 times finer than 8-bit
//! rounding) and multiplies with integer pair-adds, exact in 32 bits: half the shuffle work of
//! converting every weight to f32, which bounds these loops. Greedy answers stay those of f32
//! weights (`tests/models.rs`). Other machines take a portable f32 path. Many vectors (a prompt):
//! weight tiles are dequantized exactly into a cache-sized buffer and multiplied with f32 gemm.
//!
//! Rows are split across rayon's threads; the SIMD path is chosen at run time.

use half::f16;
use rayon::prelude::*;

/// Weights per block, for both formats.
pub const BLOCK: usize = 32;
const Q4_1_BYTES: usize = 20;
const Q8_0_BYTES: usize = 34;

/// A weight matrix of `rows` x `cols`, row-major, in one of the supported layouts.
#[derive(Debug, Clone)]
pub enum Matrix {
    /// ggml Q4_1 blocks.
    Q4_1 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// `rows * cols / 32` blocks of 20 bytes.
        data: Vec<u8>,
    },
    /// ggml Q8_0 blocks.
    Q8_0 {
        /// Output features.
        rows: usize,
        /// Input features (a multiple of 32).
        cols: usize,
        /// `rows * cols / 32` blocks of 34 bytes.
        data: Vec<u8>,
    },
    /// Plain f32.
    F32 {
        /// Output features.
        rows: usize,
        /// Input features.
        cols: usize,
        /// `rows * cols` weights.
        data: Vec<f32>,
    },
}

impl Matrix {
    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Matrix::Q4_1 { rows, .. } | Matrix::Q8_0 { rows, .. } | Matrix::F32 { rows, .. } => *rows,
        }
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        match self {
            Matrix::Q4_1 { cols, .. } | Matrix::Q8_0 { cols, .. } | Matrix::F32 { cols, .. } => *cols,
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        match self {
            Matrix::Q4_1 { data, .. } | Matrix::Q8_0 { data, .. } => data.len(),
            Matrix::F32 { data, .. } => data.len() * 4,
        }
    }

    /// Row `row`, dequantized into `out` (length `cols`).
    pub fn row_into(&self, row: usize, out: &mut [f32]) {
        match self {
            Matrix::Q4_1 { cols, data, .. } => {
                let per_row = cols / BLOCK * Q4_1_BYTES;
                for (b, block) in data[row * per_row..(row + 1) * per_row]
                    .chunks_exact(Q4_1_BYTES)
                    .enumerate()
                {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
                    for (j, byte) in block[4..].iter().enumerate() {
                        out[b * BLOCK + j] = d * f32::from(byte & 0x0F) + m;
                        out[b * BLOCK + j + 16] = d * f32::from(byte >> 4) + m;
                    }
                }
            }
            Matrix::Q8_0 { cols, data, .. } => {
                let per_row = cols / BLOCK * Q8_0_BYTES;
                for (b, block) in data[row * per_row..(row + 1) * per_row]
                    .chunks_exact(Q8_0_BYTES)
                    .enumerate()
                {
                    let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
                    for (j, &q) in block[2..].iter().enumerate() {
                        out[b * BLOCK + j] = d * f32::from(q as i8);
                    }
                }
            }
            Matrix::F32 { cols, data, .. } => out.copy_from_slice(&data[row * cols..(row + 1) * cols]),
        }
    }

    /// `y = W x` for one vector.
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        debug_assert_eq!(x.len(), self.cols());
        debug_assert_eq!(y.len(), self.rows());
        let sums = block_sums(x);
        #[cfg(target_arch = "x86_64")]
        let (xq, xs) = if simd::available() {
            quantize_i16(x)
        } else {
            (Vec::new(), Vec::new())
        };
        // About four tasks per thread, in whole groups of four rows: even work for small matrices too.
        let rows_per_task = (self.rows() / (rayon::current_num_threads() * 4)).max(16) & !3;
        y.par_chunks_mut(rows_per_task).enumerate().for_each(|(task, out)| {
            let first = task * rows_per_task;
            let mut i = 0;
            // Four rows at a time share each load of x.
            #[cfg(target_arch = "x86_64")]
            if simd::available() {
                let rows4: Option<(&[u8], usize, bool)> = match self {
                    Matrix::Q4_1 { cols, data, .. } => Some((data, cols / BLOCK * Q4_1_BYTES, true)),
                    Matrix::Q8_0 { cols, data, .. } => Some((data, cols / BLOCK * Q8_0_BYTES, false)),
                    Matrix::F32 { .. } => None,
                };
                if let Some((data, per_row, q4)) = rows4 {
                    while i + 4 <= out.len() {
                        let rows = &data[(first + i) * per_row..(first + i + 4) * per_row];
                        // SAFETY: AVX2/FMA/F16C are present; the slice holds four whole rows.
                        let four = unsafe {
                            if q4 {
                                simd::dot4_q4_1_i16(rows, per_row, &xq, &xs, &sums)
                            } else {
                                simd::dot4_q8_0_i16(rows, per_row, &xq, &xs)
                            }
                        };
                        out[i..i + 4].copy_from_slice(&four);
                        i += 4;
                    }
                }
            }
            for (j, value) in out.iter_mut().enumerate().skip(i) {
                *value = self.dot(first + j, x, &sums);
            }
        });
    }

    /// `Y = X Wᵀ` for `tokens` vectors at once (`x` is `tokens x cols`, `y` is `tokens x rows`).
    ///
    /// The weight rows are cut into tiles of a few dozen rows; each task dequantizes its tile
    /// exactly into a small scratch buffer that stays in cache and multiplies every token by it with
    /// gemm, writing its own columns of `y`. A prompt's tokens share one pass over the weights, the
    /// dequantized copy never goes out to memory, and the tiles spread over rayon's threads.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) -> candle_core::Result<()> {
        let (rows, cols) = (self.rows(), self.cols());
        debug_assert_eq!(x.len(), tokens * cols);
        debug_assert_eq!(y.len(), tokens * rows);
        if tokens == 1 {
            self.matvec(x, y);
            return Ok(());
        }
        // About 64 KiB of f32 weights per tile, a multiple of 8 rows, at least four tiles a thread.
        let threads = rayon::current_num_threads().max(1);
        let tile = ((16 * 1024 / cols).min(rows.div_ceil(threads * 4)).max(8) + 7) & !7;
        let out = SharedOut(y.as_mut_ptr());
        (0..rows.div_ceil(tile)).into_par_iter().for_each_init(
            || vec![0f32; tile * cols],
            |scratch, t| {
                let first = t * tile;
                let count = tile.min(rows - first);
                let weights: &[f32] = match self {
                    Matrix::F32 { data, .. } => &data[first * cols..(first + count) * cols],
                    _ => {
                        for (r, row) in scratch.chunks_exact_mut(cols).take(count).enumerate() {
                            self.row_into(first + r, row);
                        }
                        &scratch[..count * cols]
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
                        cols as isize,
                        1,
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
        Ok(())
    }

    fn dot(&self, row: usize, x: &[f32], sums: &[f32]) -> f32 {
        match self {
            Matrix::Q4_1 { cols, data, .. } => {
                let per_row = cols / BLOCK * Q4_1_BYTES;
                dot_q4_1(&data[row * per_row..(row + 1) * per_row], x, sums)
            }
            Matrix::Q8_0 { cols, data, .. } => {
                let per_row = cols / BLOCK * Q8_0_BYTES;
                dot_q8_0(&data[row * per_row..(row + 1) * per_row], x)
            }
            Matrix::F32 { cols, data, .. } => dot_f32(&data[row * cols..(row + 1) * cols], x),
        }
    }
}

/// `x` rounded to 16-bit integers per block of 32, each block scaled so its largest magnitude is
/// 32767: values and scales. The rounding error is at most 1/65534 of the block's largest value.
pub fn quantize_i16(x: &[f32]) -> (Vec<i16>, Vec<f32>) {
    let mut values = Vec::with_capacity(x.len());
    let mut scales = Vec::with_capacity(x.len() / BLOCK);
    for block in x.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if max == 0.0 || !max.is_finite() {
            scales.push(if max.is_finite() { 0.0 } else { f32::NAN });
            values.extend(std::iter::repeat_n(0i16, block.len()));
            continue;
        }
        let inverse = 32767.0 / max;
        scales.push(max / 32767.0);
        values.extend(block.iter().map(|v| (v * inverse).round() as i16));
    }
    (values, scales)
}

/// `y`'s base pointer, shared by tasks that write disjoint columns.
struct SharedOut(*mut f32);
// SAFETY: the tasks of `Matrix::matmul` write disjoint elements through it.
unsafe impl Sync for SharedOut {}

/// Σ x over each block of 32.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks(BLOCK).map(|block| block.iter().sum()).collect()
}

fn dot_q4_1(blocks: &[u8], x: &[f32], sums: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: the CPU has AVX2 and FMA (checked above); the slices hold whole blocks.
        return unsafe { simd::dot_q4_1(blocks, x, sums) };
    }
    let mut total = 0f32;
    for (b, block) in blocks.chunks_exact(Q4_1_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let m = f16::from_le_bytes([block[2], block[3]]).to_f32();
        let xs = &x[b * BLOCK..(b + 1) * BLOCK];
        let mut sum = 0f32;
        for (j, byte) in block[4..].iter().enumerate() {
            sum += f32::from(byte & 0x0F) * xs[j] + f32::from(byte >> 4) * xs[j + 16];
        }
        total += d * sum + m * sums[b];
    }
    total
}

fn dot_q8_0(blocks: &[u8], x: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() {
        // SAFETY: as above.
        return unsafe { simd::dot_q8_0(blocks, x) };
    }
    let mut total = 0f32;
    for (b, block) in blocks.chunks_exact(Q8_0_BYTES).enumerate() {
        let d = f16::from_le_bytes([block[0], block[1]]).to_f32();
        let xs = &x[b * BLOCK..(b + 1) * BLOCK];
        let sum: f32 = block[2..].iter().zip(xs).map(|(&q, x)| f32::from(q as i8) * x).sum();
        total += d * sum;
    }
    total
}

/// Dot product of two f32 slices.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if simd::available() && a.len().is_multiple_of(8) {
        // SAFETY: as above; the length is a multiple of 8.
        return unsafe { simd::dot_f32(a, b) };
    }
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;
    use std::sync::OnceLock;

    use super::{BLOCK, Q4_1_BYTES, Q8_0_BYTES};

    pub fn available() -> bool {
        static AVAILABLE: OnceLock<bool> = OnceLock::new();
        *AVAILABLE.get_or_init(|| {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
        })
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn sum8(v: __m256) -> f32 {
        let high = _mm256_extractf128_ps(v, 1);
        let low = _mm256_castps256_ps128(v);
        let s = _mm_add_ps(low, high);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// The two f16 values at the start of a block, as f32 (F16C).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn scales(block: &[u8]) -> (f32, f32) {
        // SAFETY: a block has at least 4 bytes.
        let packed = unsafe { (block.as_ptr() as *const u32).read_unaligned() };
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(packed as i32));
        (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_shuffle_ps(both, both, 1)))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(blocks: &[u8], x: &[f32], sums: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offset = 0f32;
        let mask = _mm_set1_epi8(0x0F);
        for (b, block) in blocks.chunks_exact(Q4_1_BYTES).enumerate() {
            let (d, m) = unsafe { scales(block) };
            // SAFETY (whole function): `block` has 20 bytes, `x` has 32 floats from `b * 32`.
            let bytes = unsafe { _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i) };
            let low = _mm_and_si128(bytes, mask);
            let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
            let xp = unsafe { x.as_ptr().add(b * BLOCK) };
            let q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low));
            let q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8)));
            let q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high));
            let q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8)));
            let mut s = unsafe { _mm256_mul_ps(q0, _mm256_loadu_ps(xp)) };
            s = unsafe { _mm256_fmadd_ps(q1, _mm256_loadu_ps(xp.add(8)), s) };
            s = unsafe { _mm256_fmadd_ps(q2, _mm256_loadu_ps(xp.add(16)), s) };
            s = unsafe { _mm256_fmadd_ps(q3, _mm256_loadu_ps(xp.add(24)), s) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
            offset += m * sums[b];
        }
        unsafe { sum8(acc) + offset }
    }

    /// Four consecutive rows of Q4_1 blocks (`per_row` bytes each) times the vector rounded to 16
    /// bits per block (`xq`, `xs`: values and scales, see [`super::quantize_i16`]): a block's 16
    /// bytes widen to 16-bit lanes in one shuffle, the nibbles are masked and shifted out, and they
    /// multiply-add with the vector in pairs (`vpmaddwd`, exact in 32-bit integers). `m Σx` uses
    /// the unrounded sums. Each row's bytes are prefetched 1 KiB ahead: four rows stream at once.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_q4_1_i16(rows: &[u8], per_row: usize, xq: &[i16], xs: &[f32], sums: &[f32]) -> [f32; 4] {
        let mask = _mm256_set1_epi16(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offset = [0f32; 4];
        let blocks = per_row / Q4_1_BYTES;
        for b in 0..blocks {
            // SAFETY (whole loop): `xq` has 32 values from `b * 32`; each row has `blocks` blocks.
            let xp = unsafe { xq.as_ptr().add(b * BLOCK) };
            let x0 = unsafe { _mm256_loadu_si256(xp as *const __m256i) };
            let x1 = unsafe { _mm256_loadu_si256(xp.add(16) as *const __m256i) };
            let scale = xs[b];
            for r in 0..4 {
                let at = r * per_row + b * Q4_1_BYTES;
                let block = &rows[at..at + Q4_1_BYTES];
                _mm_prefetch::<_MM_HINT_T0>(rows.as_ptr().wrapping_add(at + 1024) as *const i8);
                let (d, m) = unsafe { scales(block) };
                let bytes = unsafe { _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i) };
                let wide = _mm256_cvtepu8_epi16(bytes);
                let low = _mm256_and_si256(wide, mask);
                let high = _mm256_srli_epi16(wide, 4);
                let p = _mm256_add_epi32(_mm256_madd_epi16(low, x0), _mm256_madd_epi16(high, x1));
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), _mm256_cvtepi32_ps(p), acc[r]);
                offset[r] += m * sums[b];
            }
        }
        unsafe {
            [
                sum8(acc[0]) + offset[0],
                sum8(acc[1]) + offset[1],
                sum8(acc[2]) + offset[2],
                sum8(acc[3]) + offset[3],
            ]
        }
    }

    /// Four consecutive rows of Q8_0 blocks times the vector rounded to 16 bits, as
    /// [`dot4_q4_1_i16`].
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_q8_0_i16(rows: &[u8], per_row: usize, xq: &[i16], xs: &[f32]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let blocks = per_row / Q8_0_BYTES;
        for (b, &scale) in xs.iter().enumerate().take(blocks) {
            // SAFETY (whole loop): `xq` has 32 values from `b * 32`; each row has `blocks` blocks.
            let xp = unsafe { xq.as_ptr().add(b * BLOCK) };
            let x0 = unsafe { _mm256_loadu_si256(xp as *const __m256i) };
            let x1 = unsafe { _mm256_loadu_si256(xp.add(16) as *const __m256i) };
            for (r, acc) in acc.iter_mut().enumerate() {
                let at = r * per_row + b * Q8_0_BYTES;
                let block = &rows[at..at + Q8_0_BYTES];
                _mm_prefetch::<_MM_HINT_T0>(rows.as_ptr().wrapping_add(at + 1024) as *const i8);
                let (d, _) = unsafe { scales(block) };
                let q0 = unsafe { _mm_loadu_si128(block.as_ptr().add(2) as *const __m128i) };
                let q1 = unsafe { _mm_loadu_si128(block.as_ptr().add(18) as *const __m128i) };
                let p = _mm256_add_epi32(
                    _mm256_madd_epi16(_mm256_cvtepi8_epi16(q0), x0),
                    _mm256_madd_epi16(_mm256_cvtepi8_epi16(q1), x1),
                );
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scale), _mm256_cvtepi32_ps(p), *acc);
            }
        }
        unsafe { [sum8(acc[0]), sum8(acc[1]), sum8(acc[2]), sum8(acc[3])] }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q8_0(blocks: &[u8], x: &[f32]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (b, block) in blocks.chunks_exact(Q8_0_BYTES).enumerate() {
            let (d, _) = unsafe { scales(block) };
            // SAFETY: `block` has 34 bytes, `x` has 32 floats from `b * 32`.
            let qs = block.as_ptr().wrapping_add(2);
            let xp = unsafe { x.as_ptr().add(b * BLOCK) };
            let mut s = _mm256_setzero_ps();
            for part in 0..4 {
                let eight = unsafe { _mm_loadl_epi64(qs.add(part * 8) as *const __m128i) };
                let q = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight));
                s = unsafe { _mm256_fmadd_ps(q, _mm256_loadu_ps(xp.add(part * 8)), s) };
            }
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc);
        }
        unsafe { sum8(acc) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let n = a.len();
        let mut i = 0;
        // SAFETY: `a` and `b` have `n` floats, `n` a multiple of 8.
        unsafe {
            while i + 16 <= n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
                acc1 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                    _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                    acc1,
                );
                i += 16;
            }
            while i < n {
                acc0 = _mm256_fmadd_ps(
                    _mm256_loadu_ps(a.as_ptr().add(i)),
                    _mm256_loadu_ps(b.as_ptr().add(i)),
                    acc0,
                );
                i += 8;
            }
            sum8(_mm256_add_ps(acc0, acc1))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q4_1_block(d: f32, m: f32, qs: &[u8; 32]) -> Vec<u8> {
        let mut block = Vec::with_capacity(Q4_1_BYTES);
        block.extend(f16::from_f32(d).to_le_bytes());
        block.extend(f16::from_f32(m).to_le_bytes());
        for j in 0..16 {
            block.push(qs[j] | (qs[j + 16] << 4));
        }
        block
    }

    fn q8_0_block(d: f32, qs: &[i8; 32]) -> Vec<u8> {
        let mut block = Vec::with_capacity(Q8_0_BYTES);
        block.extend(f16::from_f32(d).to_le_bytes());
        block.extend(qs.iter().map(|&q| q as u8));
        block
    }

    /// Rows of the test matrices: a group of four and a rest.
    const ROWS: usize = 6;

    /// A 6 x 64 matrix in each layout, with its f32 values.
    fn matrices() -> Vec<(Matrix, Vec<f32>)> {
        let (rows, cols) = (ROWS, 64);
        let mut q4 = Vec::new();
        let mut q4_values = Vec::new();
        let mut q8 = Vec::new();
        let mut q8_values = Vec::new();
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                let (d, m) = (0.25 * (r + 1) as f32, -0.5 * b as f32);
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
            (Matrix::Q4_1 { rows, cols, data: q4 }, q4_values),
            (Matrix::Q8_0 { rows, cols, data: q8 }, q8_values),
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

    #[test]
    fn products_equal_the_f32_product_with_the_dequantized_weights() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 13 % 17) as f32 - 8.0) * 0.125).collect();
        for (matrix, values) in matrices() {
            let mut row = vec![0f32; 64];
            for r in 0..ROWS {
                matrix.row_into(r, &mut row);
                assert_eq!(row, values[r * 64..(r + 1) * 64], "{matrix:?} row {r}");
            }
            let expected: Vec<f32> = (0..ROWS)
                .map(|r| values[r * 64..(r + 1) * 64].iter().zip(&x).map(|(w, x)| w * x).sum())
                .collect();
            let mut y = vec![0f32; ROWS];
            matrix.matvec(&x, &mut y);
            for (got, want) in y.iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
            }
            // Two vectors at once give the same as one at a time.
            let xs: Vec<f32> = x.iter().chain(x.iter().rev()).copied().collect();
            let mut ys = vec![0f32; 2 * ROWS];
            matrix.matmul(&xs, 2, &mut ys).unwrap();
            for (got, want) in ys[..ROWS].iter().zip(&expected) {
                assert!((got - want).abs() <= 1e-4 * want.abs().max(1.0), "{got} vs {want}");
            }
        }
    }

    #[test]
    fn a_tiled_product_over_many_rows_equals_one_vector_at_a_time() {
        // 37 rows (tiles of 8 and a short last one), 64 columns, three tokens.
        let (rows, cols, tokens) = (37, 64, 3);
        let mut data = Vec::new();
        for r in 0..rows {
            for b in 0..cols / BLOCK {
                let qs: [u8; 32] = std::array::from_fn(|j| ((r * 7 + b * 5 + j * 3) % 16) as u8);
                data.extend(q4_1_block(0.01 * (r % 5 + 1) as f32, -0.05 * b as f32, &qs));
            }
        }
        let matrix = Matrix::Q4_1 { rows, cols, data };
        let x: Vec<f32> = (0..tokens * cols)
            .map(|i| ((i * 29 % 23) as f32 - 11.0) * 0.1)
            .collect();
        let mut y = vec![0f32; tokens * rows];
        matrix.matmul(&x, tokens, &mut y).unwrap();
        for t in 0..tokens {
            let mut one = vec![0f32; rows];
            matrix.matvec(&x[t * cols..(t + 1) * cols], &mut one);
            for (got, want) in y[t * rows..(t + 1) * rows].iter().zip(&one) {
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "token {t}: {got} vs {want}"
                );
            }
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
        let (values, scales) = quantize_i16(&x);
        assert_eq!(scales[0], 0.0);
        assert!(values[..32].iter().all(|&v| v == 0));
        for (b, block) in x.chunks(BLOCK).enumerate().skip(1) {
            let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(
                values[b * BLOCK..(b + 1) * BLOCK].iter().map(|v| v.abs()).max(),
                Some(32767)
            );
            for (j, v) in block.iter().enumerate() {
                let back = f32::from(values[b * BLOCK + j]) * scales[b];
                assert!((back - v).abs() <= max / 65534.0 * 1.001, "{v} came back as {back}");
            }
        }
    }
}
