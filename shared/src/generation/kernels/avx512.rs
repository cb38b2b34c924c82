//! The products of [`super::blocks`] with AVX-512 (F, BW): a 512-bit register holds a pair of
//! columns for all sixteen rows of a group, and `vpmaddwd` multiplies it with the vector's pair
//! (broadcast) into sixteen 32-bit row sums.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::BLOCK;
use super::blocks::{Activation, BlockFormat, Blocks, GROUP};

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"))
}

/// `acc + Σ pairs of a * b` in 32-bit lanes. (`vpdpwssd` from AVX-512 VNNI does this in one
/// instruction, but measured slower on this benchmark's CPU than the multiply-add and add the
/// compiler chooses for it.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn dpwssd(acc: __m512i, a: __m512i, b: __m512i) -> __m512i {
    _mm512_add_epi32(acc, _mm512_madd_epi16(a, b))
}

/// Nibble `n` (bits `4n..4n+4`) of each 16-bit word.
#[inline]
#[target_feature(enable = "avx512f,avx512bw")]
fn nibble(words: __m512i, n: usize, mask: __m512i) -> __m512i {
    match n {
        0 => _mm512_and_si512(words, mask),
        1 => _mm512_and_si512(_mm512_srli_epi16(words, 4), mask),
        2 => _mm512_and_si512(_mm512_srli_epi16(words, 8), mask),
        _ => _mm512_srli_epi16(words, 12),
    }
}

/// Group `g` of `blocks` times the vector.
///
/// # Safety
/// The CPU must have AVX-512 F and BW ([`available`]); `x` must have `blocks.cols` values and
/// the group must exist.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn group_product(blocks: &Blocks, g: usize, x: &Activation) -> [f32; GROUP] {
    let (quants, scales, mins) = blocks.group(g);
    let count = blocks.blocks();
    let bytes = blocks.format.group_block_bytes();
    // Checked in release builds too: the loads below trust these lengths and the alignment.
    assert!(x.values.len() >= count * BLOCK && x.sums.len() >= count && x.scales.len() >= count);
    assert!(quants.len() == count * bytes && scales.len() >= count * GROUP);
    assert!(blocks.format != BlockFormat::Q4_1 || mins.len() >= count * GROUP);
    assert!(
        (quants.as_ptr() as usize).is_multiple_of(64) && bytes.is_multiple_of(64),
        "aligned 512-bit loads"
    );
    let mut acc = _mm512_setzero_ps();
    let mut offset = _mm512_setzero_ps();
    let mask = _mm512_set1_epi16(0x0F);
    for b in 0..count {
        // SAFETY (whole loop): block `b` of the group has `bytes` quantized bytes and 16 scales (and
        // minimums); the vector has 32 values (16 pairs) from `b * 32`.
        unsafe {
            let q = quants.as_ptr().add(b * bytes);
            let pairs = x.values.as_ptr().add(b * BLOCK) as *const i32;
            let pair = |p: usize| _mm512_set1_epi32(pairs.add(p).read_unaligned());
            let run = |r: usize| _mm512_load_si512(q.add(64 * r) as *const _);
            let mut dot = [_mm512_setzero_si512(); 2];
            match blocks.format {
                BlockFormat::Q4_1 => {
                    for r in 0..4 {
                        let words = run(r);
                        for n in 0..4 {
                            dot[n % 2] = dpwssd(dot[n % 2], nibble(words, n, mask), pair(4 * r + n));
                        }
                    }
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(mins.as_ptr().add(b * GROUP) as *const __m256i));
                    offset = _mm512_fmadd_ps(m, _mm512_set1_ps(x.sums[b]), offset);
                }
                BlockFormat::Q8_0 => {
                    for r in 0..8 {
                        let words = run(r);
                        let low = _mm512_srai_epi16(_mm512_slli_epi16(words, 8), 8);
                        dot[0] = dpwssd(dot[0], low, pair(2 * r));
                        dot[1] = dpwssd(dot[1], _mm512_srai_epi16(words, 8), pair(2 * r + 1));
                    }
                }
            }
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * GROUP) as *const __m256i));
            let sum = _mm512_cvtepi32_ps(_mm512_add_epi32(dot[0], dot[1]));
            acc = _mm512_fmadd_ps(sum, _mm512_mul_ps(d, _mm512_set1_ps(x.scales[b])), acc);
        }
    }
    let mut out = [0f32; GROUP];
    // SAFETY: `out` holds 16 floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), _mm512_add_ps(acc, offset)) };
    out
}

/// Group `g`, dequantized column by column as [`super::blocks::dequantize_group`] does: each
/// unpacked register's 32 sixteen-bit lanes (row `r`'s pair in lanes `2r, 2r+1`) are split into
/// the pair's two columns by one permutation, converted and scaled sixteen rows at a time.
///
/// # Safety
/// The CPU must have AVX-512 F and BW ([`available`]); `out` must hold
/// `(cols - 1) * stride + 16` floats.
#[target_feature(enable = "avx512f,avx512bw")]
pub unsafe fn dequantize_group(blocks: &Blocks, g: usize, out: &mut [f32], stride: usize) {
    let (quants, scales, mins) = blocks.group(g);
    let bytes = blocks.format.group_block_bytes();
    assert!(out.len() >= (blocks.cols - 1) * stride + GROUP);
    let mask = _mm512_set1_epi16(0x0F);
    // Even lanes first, then odd: column 2c's sixteen rows, then column 2c + 1's.
    let split = _mm512_set_epi16(
        31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1, 30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4,
        2, 0,
    );
    let o = out.as_mut_ptr();
    for b in 0..blocks.blocks() {
        // SAFETY (whole loop): block `b` has `bytes` quantized bytes and 16 scales (and minimums);
        // every column written is below `cols`, so inside `out` (asserted above).
        unsafe {
            let q = quants.as_ptr().add(b * bytes);
            let d = _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(b * GROUP) as *const __m256i));
            // Writes a register of 32 lanes as columns `k` and `k + 1`: `d * q + m`.
            let columns = |lanes: __m512i, k: usize, m: __m512, signed: bool| {
                let split = _mm512_permutexvar_epi16(split, lanes);
                for (i, half) in [_mm512_castsi512_si256(split), _mm512_extracti64x4_epi64(split, 1)]
                    .into_iter()
                    .enumerate()
                {
                    let wide = if signed {
                        _mm512_cvtepi16_epi32(half)
                    } else {
                        _mm512_cvtepu16_epi32(half)
                    };
                    // Multiplied, then added: the same rounding as `Blocks::row_into`.
                    let values = _mm512_add_ps(_mm512_mul_ps(d, _mm512_cvtepi32_ps(wide)), m);
                    _mm512_storeu_ps(o.add((b * BLOCK + k + i) * stride), values);
                }
            };
            match blocks.format {
                BlockFormat::Q4_1 => {
                    let m = _mm512_cvtph_ps(_mm256_loadu_si256(mins.as_ptr().add(b * GROUP) as *const __m256i));
                    for r in 0..4 {
                        let words = _mm512_loadu_si512(q.add(64 * r) as *const _);
                        for n in 0..4 {
                            columns(nibble(words, n, mask), 2 * (4 * r + n), m, false);
                        }
                    }
                }
                BlockFormat::Q8_0 => {
                    for r in 0..8 {
                        let words = _mm512_loadu_si512(q.add(64 * r) as *const _);
                        let low = _mm512_srai_epi16(_mm512_slli_epi16(words, 8), 8);
                        columns(low, 2 * (2 * r), _mm512_setzero_ps(), true);
                        columns(_mm512_srai_epi16(words, 8), 2 * (2 * r + 1), _mm512_setzero_ps(), true);
                    }
                }
            }
        }
    }
}
