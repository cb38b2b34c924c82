//! The products of [`super::blocks`] with AVX2, FMA and F16C: a group's sixteen rows as two
//! 256-bit halves of eight (each run of 64 bytes is two loads of 32), each lane pair one row's pair
//! of columns, multiplied with the vector's pair (broadcast) by `vpmaddwd` into eight 32-bit row
//! sums.

use std::arch::x86_64::*;
use std::sync::OnceLock;

use super::BLOCK;
use super::blocks::{Activation, BlockFormat, Blocks, GROUP};

/// Whether this CPU runs these kernels.
pub fn available() -> bool {
    static AVAILABLE: OnceLock<bool> = OnceLock::new();
    *AVAILABLE.get_or_init(|| {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    })
}

/// Group `g` of `blocks` times the vector.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]); `x` must have `blocks.cols` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group_product(blocks: &Blocks, g: usize, x: &Activation) -> [f32; GROUP] {
    let (quants, scales, mins) = blocks.group(g);
    let count = blocks.blocks();
    let bytes = blocks.format.group_block_bytes();
    debug_assert!(x.values.len() >= count * BLOCK && quants.len() == count * bytes);
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut offset = [_mm256_setzero_ps(); 2];
    let mask = _mm256_set1_epi16(0x0F);
    for b in 0..count {
        // SAFETY (whole loop): block `b` of the group has `bytes` quantized bytes and 16 scales (and
        // minimums); the vector has 32 values (16 pairs) from `b * 32`.
        unsafe {
            let q = quants.as_ptr().add(b * bytes);
            let pairs = x.values.as_ptr().add(b * BLOCK) as *const i32;
            let pair = |p: usize| _mm256_set1_epi32(pairs.add(p).read_unaligned());
            // Run `r`'s words for rows 0..8 (half 0) or 8..16 (half 1).
            let load = |r: usize, half: usize| _mm256_loadu_si256(q.add(64 * r + 32 * half) as *const __m256i);
            let mut dot = [_mm256_setzero_si256(); 2];
            match blocks.format {
                BlockFormat::Q4_1 => {
                    for r in 0..4 {
                        let words = [load(r, 0), load(r, 1)];
                        for n in 0..4 {
                            let p = pair(4 * r + n);
                            for half in 0..2 {
                                let q = match n {
                                    0 => _mm256_and_si256(words[half], mask),
                                    1 => _mm256_and_si256(_mm256_srli_epi16(words[half], 4), mask),
                                    2 => _mm256_and_si256(_mm256_srli_epi16(words[half], 8), mask),
                                    _ => _mm256_srli_epi16(words[half], 12),
                                };
                                dot[half] = _mm256_add_epi32(dot[half], _mm256_madd_epi16(q, p));
                            }
                        }
                    }
                    let sum = _mm256_set1_ps(x.sums[b]);
                    for (half, offset) in offset.iter_mut().enumerate() {
                        let m = _mm256_cvtph_ps(_mm_loadu_si128(
                            mins.as_ptr().add(b * GROUP + 8 * half) as *const __m128i
                        ));
                        *offset = _mm256_fmadd_ps(m, sum, *offset);
                    }
                }
                BlockFormat::Q8_0 => {
                    for r in 0..8 {
                        let (low, high) = (pair(2 * r), pair(2 * r + 1));
                        for (half, dot) in dot.iter_mut().enumerate() {
                            let words = load(r, half);
                            let q0 = _mm256_srai_epi16(_mm256_slli_epi16(words, 8), 8);
                            let q1 = _mm256_srai_epi16(words, 8);
                            let products = _mm256_add_epi32(_mm256_madd_epi16(q0, low), _mm256_madd_epi16(q1, high));
                            *dot = _mm256_add_epi32(*dot, products);
                        }
                    }
                }
            }
            let scale = _mm256_set1_ps(x.scales[b]);
            for half in 0..2 {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(
                    scales.as_ptr().add(b * GROUP + 8 * half) as *const __m128i
                ));
                acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[half]), _mm256_mul_ps(d, scale), acc[half]);
            }
        }
    }
    let mut out = [0f32; GROUP];
    // SAFETY: `out` holds 16 floats.
    unsafe {
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc[0], offset[0]));
        _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_add_ps(acc[1], offset[1]));
    }
    out
}

/// Horizontal sum of eight floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn sum8(v: __m256) -> f32 {
    let high = _mm256_extractf128_ps(v, 1);
    let low = _mm256_castps256_ps128(v);
    let s = _mm_add_ps(low, high);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Dot product of two f32 slices whose length is a multiple of 8.
///
/// # Safety
/// The CPU must have AVX2 and FMA; both slices must have the same length, a multiple of 8.
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
    }
    sum8(_mm256_add_ps(acc0, acc1))
}

/// [`super::blocks::dequantize_group`], compiled for AVX2.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `out` must hold `(cols - 1) * stride + 16` floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dequantize_group(blocks: &Blocks, g: usize, out: &mut [f32], stride: usize) {
    super::blocks::dequantize_group(blocks, g, out, stride)
}

/// `y += a x` for slices whose length is a multiple of 8.
///
/// # Safety
/// The CPU must have AVX2 and FMA; both slices must have the same length, a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let a = _mm256_set1_ps(a);
    for i in (0..x.len()).step_by(8) {
        // SAFETY: `i + 8 <= len` for both slices.
        unsafe {
            let yp = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(
                yp,
                _mm256_fmadd_ps(a, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp)),
            );
        }
    }
}

/// [`super::Attention::run`] compiled for AVX2, its dot products and `y += a x` inlined.
///
/// # Safety
/// The CPU must have AVX2 and FMA; the head size must be a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend(attention: &super::Attention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    attention.run_with(
        scores,
        out,
        // SAFETY: this function's target features; the slices are whole heads (multiples of 8).
        |a, b| unsafe { dot_f32(a, b) },
        // SAFETY: as above.
        |a, x, y| unsafe { axpy(a, x, y) },
    );
}
