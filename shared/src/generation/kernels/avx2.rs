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
    // Checked in release builds too: the loads below trust these lengths.
    assert!(x.values.len() >= count * BLOCK && x.sums.len() >= count && x.scales.len() >= count);
    assert!(quants.len() == count * bytes && scales.len() >= count * GROUP);
    assert!(blocks.format != BlockFormat::Q4_1 || mins.len() >= count * GROUP);
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

/// Group `g` of `blocks` times each of `V` vectors: the group's weights are loaded and unpacked
/// once for all of them. Each vector's result is computed with the same instructions, in the same
/// order, as [`group_product`] computes it alone, so the bits are the same.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn group_products<const V: usize>(blocks: &Blocks, g: usize, xs: [&Activation; V]) -> [[f32; GROUP]; V] {
    let (quants, scales, mins) = blocks.group(g);
    let count = blocks.blocks();
    let bytes = blocks.format.group_block_bytes();
    // Checked in release builds too: the loads below trust these lengths.
    for x in xs {
        assert!(x.values.len() >= count * BLOCK && x.sums.len() >= count && x.scales.len() >= count);
    }
    assert!(quants.len() == count * bytes && scales.len() >= count * GROUP);
    assert!(blocks.format != BlockFormat::Q4_1 || mins.len() >= count * GROUP);
    let mut acc = [[_mm256_setzero_ps(); 2]; V];
    let mut offset = [[_mm256_setzero_ps(); 2]; V];
    let mask = _mm256_set1_epi16(0x0F);
    for b in 0..count {
        // SAFETY (whole loop): block `b` of the group has `bytes` quantized bytes and 16 scales (and
        // minimums); every vector has 32 values (16 pairs) from `b * 32`.
        unsafe {
            let q = quants.as_ptr().add(b * bytes);
            let pairs: [*const i32; V] = std::array::from_fn(|v| xs[v].values.as_ptr().add(b * BLOCK) as *const i32);
            let pair = |v: usize, p: usize| _mm256_set1_epi32(pairs[v].add(p).read_unaligned());
            let load = |r: usize, half: usize| _mm256_loadu_si256(q.add(64 * r + 32 * half) as *const __m256i);
            let mut dot = [[_mm256_setzero_si256(); 2]; V];
            match blocks.format {
                BlockFormat::Q4_1 => {
                    for r in 0..4 {
                        let words = [load(r, 0), load(r, 1)];
                        let unpacked: [[__m256i; 2]; 4] = std::array::from_fn(|n| {
                            std::array::from_fn(|half| match n {
                                0 => _mm256_and_si256(words[half], mask),
                                1 => _mm256_and_si256(_mm256_srli_epi16(words[half], 4), mask),
                                2 => _mm256_and_si256(_mm256_srli_epi16(words[half], 8), mask),
                                _ => _mm256_srli_epi16(words[half], 12),
                            })
                        });
                        for (v, dot) in dot.iter_mut().enumerate() {
                            for (n, q) in unpacked.iter().enumerate() {
                                let p = pair(v, 4 * r + n);
                                for half in 0..2 {
                                    dot[half] = _mm256_add_epi32(dot[half], _mm256_madd_epi16(q[half], p));
                                }
                            }
                        }
                    }
                    for (v, offset) in offset.iter_mut().enumerate() {
                        let sum = _mm256_set1_ps(xs[v].sums[b]);
                        for (half, offset) in offset.iter_mut().enumerate() {
                            let m = _mm256_cvtph_ps(_mm_loadu_si128(
                                mins.as_ptr().add(b * GROUP + 8 * half) as *const __m128i
                            ));
                            *offset = _mm256_fmadd_ps(m, sum, *offset);
                        }
                    }
                }
                BlockFormat::Q8_0 => {
                    for r in 0..8 {
                        for half in 0..2 {
                            let words = load(r, half);
                            let q0 = _mm256_srai_epi16(_mm256_slli_epi16(words, 8), 8);
                            let q1 = _mm256_srai_epi16(words, 8);
                            for (v, dot) in dot.iter_mut().enumerate() {
                                let (low, high) = (pair(v, 2 * r), pair(v, 2 * r + 1));
                                let products =
                                    _mm256_add_epi32(_mm256_madd_epi16(q0, low), _mm256_madd_epi16(q1, high));
                                dot[half] = _mm256_add_epi32(dot[half], products);
                            }
                        }
                    }
                }
            }
            for half in 0..2 {
                let d = _mm256_cvtph_ps(_mm_loadu_si128(
                    scales.as_ptr().add(b * GROUP + 8 * half) as *const __m128i
                ));
                for (v, acc) in acc.iter_mut().enumerate() {
                    let scale = _mm256_set1_ps(xs[v].scales[b]);
                    acc[half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[v][half]), _mm256_mul_ps(d, scale), acc[half]);
                }
            }
        }
    }
    let mut out = [[0f32; GROUP]; V];
    for (v, out) in out.iter_mut().enumerate() {
        // SAFETY: `out` holds 16 floats.
        unsafe {
            _mm256_storeu_ps(out.as_mut_ptr(), _mm256_add_ps(acc[v][0], offset[v][0]));
            _mm256_storeu_ps(out.as_mut_ptr().add(8), _mm256_add_ps(acc[v][1], offset[v][1]));
        }
    }
    out
}

/// Vectors multiplied per pass over a group's weights: four keep the unpacked weights and the
/// vectors' running sums in registers.
const VECTORS_PER_PASS: usize = 4;

/// Group `g` of `blocks` times every vector of `xs`, into `out[v]`: several decoded tokens (one
/// per sequence of a batch) read the group from memory once.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn group_products_many(blocks: &Blocks, g: usize, xs: &[&Activation], out: &mut [[f32; GROUP]]) {
    assert_eq!(xs.len(), out.len(), "one output per vector");
    for (xs, out) in xs.chunks(VECTORS_PER_PASS).zip(out.chunks_mut(VECTORS_PER_PASS)) {
        // SAFETY (each arm): this function's target features.
        match *xs {
            [a, b, c, d] => out.copy_from_slice(&unsafe { group_products(blocks, g, [a, b, c, d]) }),
            [a, b, c] => out.copy_from_slice(&unsafe { group_products(blocks, g, [a, b, c]) }),
            [a, b] => out.copy_from_slice(&unsafe { group_products(blocks, g, [a, b]) }),
            [a] => out.copy_from_slice(&unsafe { group_products(blocks, g, [a]) }),
            _ => unreachable!("chunks of at most {VECTORS_PER_PASS}"),
        }
    }
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
    assert!(
        a.len() == b.len() && a.len().is_multiple_of(8),
        "dot_f32 needs equal lengths, multiples of 8"
    );
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
    assert!(
        x.len() == y.len() && x.len().is_multiple_of(8),
        "axpy needs equal lengths, multiples of 8"
    );
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

/// [`super::Attention::run`] with AVX2: for heads of 64 or 128 features, scores for eight
/// positions at a time (eight running sums, one transposing horizontal add) and the weighted sum
/// of the values kept in registers; other sizes use [`dot_f32`] and [`axpy`].
///
/// # Safety
/// The CPU must have AVX2 and FMA; the head size must be a multiple of 8.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn attend(attention: &super::Attention<'_>, scores: &mut Vec<f32>, out: &mut [f32]) {
    match attention.head_dim {
        64 => attention.run_with(
            scores,
            out,
            |query, scores| unsafe { head_scores::<8>(attention, query, scores) },
            |scores| unsafe { softmax(scores) },
            |weights, out| unsafe { head_sum::<8>(attention, weights, out) },
        ),
        128 => attention.run_with(
            scores,
            out,
            |query, scores| unsafe { head_scores::<16>(attention, query, scores) },
            |scores| unsafe { softmax(scores) },
            |weights, out| unsafe { head_sum::<16>(attention, weights, out) },
        ),
        d => attention.run_with(
            scores,
            out,
            // SAFETY (both): this function's target features; whole heads, multiples of 8.
            |query, scores| {
                for (p, score) in scores.iter_mut().enumerate() {
                    let key = &attention.keys[p * attention.stride..][..d];
                    *score = unsafe { dot_f32(query, key) } * attention.scale;
                }
            },
            |scores| unsafe { softmax(scores) },
            |weights, out| {
                out.fill(0.0);
                for (p, &w) in weights.iter().enumerate() {
                    unsafe { axpy(w, &attention.values[p * attention.stride..][..d], out) };
                }
            },
        ),
    }
}

/// `e^x` for eight `x ≤ 0` (softmax's shifted scores): `2^n · p(r)` with `x = n ln 2 + r`,
/// `|r| ≤ ln 2 / 2`, `ln 2` split in two for an exact `r`, and a degree-6 polynomial for `e^r`
/// (relative error about 2e-7, a couple of ulps); below -87 (where `e^x` is under f32's
/// smallest normal) it gives 0.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn exp8(x: __m256) -> __m256 {
    let low = _mm256_set1_ps(-87.0);
    let under = _mm256_cmp_ps(x, low, _CMP_LT_OQ);
    let x = _mm256_max_ps(x, low);
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    // Taylor coefficients 1/k! from k = 6 down, by Horner's rule.
    let mut p = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
    }
    // 2^n through the exponent bits (n ≥ -126 here, so the result stays normal).
    let scale = _mm256_castsi256_ps(_mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    ));
    _mm256_andnot_ps(under, _mm256_mul_ps(p, scale))
}

/// `e^x` in place, eight values at a time by [`exp8`] (values above 88 are taken as 88, where
/// `e^x` nears f32's largest; below -87 the result is 0), the tail by `f32::exp`.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn exp(values: &mut [f32]) {
    let whole = values.len() - values.len() % 8;
    let p = values.as_mut_ptr();
    let high = _mm256_set1_ps(88.0);
    // SAFETY: offsets below `whole` read and write whole runs of eight inside `values`.
    for i in (0..whole).step_by(8) {
        unsafe {
            let x = _mm256_min_ps(_mm256_loadu_ps(p.add(i)), high);
            _mm256_storeu_ps(p.add(i), exp8(x));
        }
    }
    for v in &mut values[whole..] {
        *v = v.min(88.0).exp();
    }
}

/// [`super::softmax`] eight scores at a time: the maximum, `e^(s - max)` by [`exp8`], the total
/// in eight running sums added in a fixed order, and the division.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn softmax(scores: &mut [f32]) {
    let n = scores.len();
    let whole = n - n % 8;
    let p = scores.as_mut_ptr();
    let mut max8 = _mm256_set1_ps(f32::NEG_INFINITY);
    // SAFETY (all loops): offsets below `whole` read and write whole runs of eight inside `scores`.
    for i in (0..whole).step_by(8) {
        max8 = _mm256_max_ps(max8, unsafe { _mm256_loadu_ps(p.add(i)) });
    }
    let mut lanes = [0f32; 8];
    unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), max8) };
    let max = lanes
        .iter()
        .chain(&scores[whole..])
        .copied()
        .fold(f32::NEG_INFINITY, f32::max);
    let shift = _mm256_set1_ps(max);
    let mut total8 = _mm256_setzero_ps();
    for i in (0..whole).step_by(8) {
        unsafe {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), shift));
            _mm256_storeu_ps(p.add(i), e);
            total8 = _mm256_add_ps(total8, e);
        }
    }
    let mut total = sum8(total8);
    for s in &mut scores[whole..] {
        *s = (*s - max).exp();
        total += *s;
    }
    let total8 = _mm256_set1_ps(total);
    for i in (0..whole).step_by(8) {
        unsafe { _mm256_storeu_ps(p.add(i), _mm256_div_ps(_mm256_loadu_ps(p.add(i)), total8)) };
    }
    for s in &mut scores[whole..] {
        *s /= total;
    }
}

/// One query (`8 * N` features) against every visible key, eight positions at a time.
///
/// # Safety
/// AVX2 and FMA; `query` has `8 * N` values and each key row as many.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn head_scores<const N: usize>(attention: &super::Attention<'_>, query: &[f32], scores: &mut [f32]) {
    let d = 8 * N;
    assert_eq!(query.len(), d, "a query of the head's size");
    let key = |p: usize| &attention.keys[p * attention.stride..][..d];
    let visible = scores.len();
    let scale = _mm256_set1_ps(attention.scale);
    let mut p0 = 0;
    while p0 + 8 <= visible {
        let mut acc = [_mm256_setzero_ps(); 8];
        for i in 0..N {
            // SAFETY: `query` and every key row have `8 * N` floats.
            let q = unsafe { _mm256_loadu_ps(query.as_ptr().add(8 * i)) };
            for (j, acc) in acc.iter_mut().enumerate() {
                *acc = _mm256_fmadd_ps(q, unsafe { _mm256_loadu_ps(key(p0 + j).as_ptr().add(8 * i)) }, *acc);
            }
        }
        // Eight horizontal sums at once: lane j of the result is position p0 + j's.
        let t0 = _mm256_hadd_ps(acc[0], acc[1]);
        let t1 = _mm256_hadd_ps(acc[2], acc[3]);
        let t2 = _mm256_hadd_ps(acc[4], acc[5]);
        let t3 = _mm256_hadd_ps(acc[6], acc[7]);
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        let sums = _mm256_add_ps(
            _mm256_permute2f128_ps(u0, u1, 0x20),
            _mm256_permute2f128_ps(u0, u1, 0x31),
        );
        // SAFETY: `p0 + 8 <= scores.len()`.
        unsafe { _mm256_storeu_ps(scores.as_mut_ptr().add(p0), _mm256_mul_ps(sums, scale)) };
        p0 += 8;
    }
    for (p, score) in scores.iter_mut().enumerate().skip(p0) {
        // SAFETY: as above.
        *score = unsafe { dot_f32(query, key(p)) } * attention.scale;
    }
}

/// `out = Σ_p weights[p] · value_p` for one head (`8 * N` features), the sum in registers.
///
/// # Safety
/// AVX2 and FMA; `out` and each value row have `8 * N` floats.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn head_sum<const N: usize>(attention: &super::Attention<'_>, weights: &[f32], out: &mut [f32]) {
    assert_eq!(out.len(), 8 * N, "an output of the head's size");
    let mut acc = [_mm256_setzero_ps(); N];
    for (p, &w) in weights.iter().enumerate() {
        let w = _mm256_set1_ps(w);
        let value = &attention.values[p * attention.stride..][..8 * N];
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY: the row has `8 * N` floats.
            *acc = _mm256_fmadd_ps(w, unsafe { _mm256_loadu_ps(value.as_ptr().add(8 * i)) }, *acc);
        }
    }
    for (i, acc) in acc.iter().enumerate() {
        // SAFETY: `out` has `8 * N` floats.
        unsafe { _mm256_storeu_ps(out.as_mut_ptr().add(8 * i), *acc) };
    }
}
