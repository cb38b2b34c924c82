//! Matrix–vector products over a GGUF's stored blocks, with activations kept in f32.
//!
//! candle's quantized CPU kernels (like llama.cpp's) quantize the activations to 8 bits before each
//! product, which changes SmolLM2's greedy answers; dequantizing the whole model to f32 keeps them
//! exact but reads 5.5x the bytes per token. These kernels read the stored 4- and 8-bit blocks and
//! dequantize them exactly inside the dot product: the result is the f32 product with the stored
//! weights (up to summation order), at the memory traffic of the quantized file.
//!
//! Blocks are ggml's: `Q4_1` is 32 weights as an f16 scale `d`, an f16 minimum `m` and 16 bytes of
//! nibbles (low nibbles are weights 0..16, high nibbles 16..32), each weight `d * q + m`; `Q8_0` is an
//! f16 scale and 32 signed bytes, each weight `d * q`. With `Σ (d q_i + m) x_i = d Σ q_i x_i + m Σ x_i`,
//! the per-block sums of `x` are computed once per vector and shared by every row.
//!
//! Rows are split across rayon's threads. x86-64 with AVX2 and FMA takes the SIMD path, chosen at run
//! time; other machines take the portable one, which computes the same sums.

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
                                simd::dot4_q4_1(rows, per_row, x, &sums)
                            } else {
                                simd::dot4_q8_0(rows, per_row, x)
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
    /// The matrix is dequantized exactly into an f32 scratch copy (rows in parallel) and multiplied
    /// by gemm through candle: a prompt's tokens share one pass over the weights.
    pub fn matmul(&self, x: &[f32], tokens: usize, y: &mut [f32]) -> candle_core::Result<()> {
        let (rows, cols) = (self.rows(), self.cols());
        if tokens == 1 {
            self.matvec(x, y);
            return Ok(());
        }
        let weights = match self {
            Matrix::F32 { data, .. } => data.clone(),
            _ => {
                let mut weights = vec![0f32; rows * cols];
                weights
                    .par_chunks_mut(cols)
                    .enumerate()
                    .for_each(|(row, out)| self.row_into(row, out));
                weights
            }
        };
        let device = candle_core::Device::Cpu;
        let w = candle_core::Tensor::from_vec(weights, (rows, cols), &device)?;
        let xs = candle_core::Tensor::from_slice(x, (tokens, cols), &device)?;
        let product = xs.matmul(&w.t()?)?;
        y.copy_from_slice(&product.flatten_all()?.to_vec1::<f32>()?);
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

    /// [`dot_q4_1`] for four consecutive rows of `per_row` bytes each.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_q4_1(rows: &[u8], per_row: usize, x: &[f32], sums: &[f32]) -> [f32; 4] {
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut offset = [0f32; 4];
        let blocks = per_row / Q4_1_BYTES;
        for b in 0..blocks {
            // SAFETY (whole loop): `x` has 32 floats from `b * 32`; each row has `blocks` blocks.
            let xp = unsafe { x.as_ptr().add(b * BLOCK) };
            let x0 = unsafe { _mm256_loadu_ps(xp) };
            let x1 = unsafe { _mm256_loadu_ps(xp.add(8)) };
            let x2 = unsafe { _mm256_loadu_ps(xp.add(16)) };
            let x3 = unsafe { _mm256_loadu_ps(xp.add(24)) };
            for r in 0..4 {
                let block = &rows[r * per_row + b * Q4_1_BYTES..r * per_row + (b + 1) * Q4_1_BYTES];
                // Ask for the row's bytes a few cache lines ahead: four rows stream at once.
                _mm_prefetch::<_MM_HINT_T0>(
                    rows.as_ptr().wrapping_add(r * per_row + b * Q4_1_BYTES + 1024) as *const i8
                );
                let (d, m) = unsafe { scales(block) };
                let bytes = unsafe { _mm_loadu_si128(block.as_ptr().add(4) as *const __m128i) };
                let low = _mm_and_si128(bytes, mask);
                let high = _mm_and_si128(_mm_srli_epi16(bytes, 4), mask);
                let q0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(low));
                let q1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(low, 8)));
                let q2 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(high));
                let q3 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(high, 8)));
                let mut s = _mm256_mul_ps(q0, x0);
                s = _mm256_fmadd_ps(q1, x1, s);
                s = _mm256_fmadd_ps(q2, x2, s);
                s = _mm256_fmadd_ps(q3, x3, s);
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d), s, acc[r]);
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

    /// [`dot_q8_0`] for four consecutive rows of `per_row` bytes each.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot4_q8_0(rows: &[u8], per_row: usize, x: &[f32]) -> [f32; 4] {
        let mut acc = [_mm256_setzero_ps(); 4];
        let blocks = per_row / Q8_0_BYTES;
        for b in 0..blocks {
            // SAFETY (whole loop): `x` has 32 floats from `b * 32`; each row has `blocks` blocks.
            let xp = unsafe { x.as_ptr().add(b * BLOCK) };
            let xs = unsafe {
                [
                    _mm256_loadu_ps(xp),
                    _mm256_loadu_ps(xp.add(8)),
                    _mm256_loadu_ps(xp.add(16)),
                    _mm256_loadu_ps(xp.add(24)),
                ]
            };
            for (r, acc) in acc.iter_mut().enumerate() {
                let block = &rows[r * per_row + b * Q8_0_BYTES..r * per_row + (b + 1) * Q8_0_BYTES];
                _mm_prefetch::<_MM_HINT_T0>(
                    rows.as_ptr().wrapping_add(r * per_row + b * Q8_0_BYTES + 1024) as *const i8
                );
                let (d, _) = unsafe { scales(block) };
                let qs = block.as_ptr().wrapping_add(2);
                let mut s = _mm256_setzero_ps();
                for (part, x) in xs.iter().enumerate() {
                    let eight = unsafe { _mm_loadl_epi64(qs.add(part * 8) as *const __m128i) };
                    s = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(eight)), *x, s);
                }
                *acc = _mm256_fmadd_ps(_mm256_set1_ps(d), s, *acc);
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
}
