//! Rotary embedding and causal attention with grouped key/value heads, over packed sequences, as
//! one op on the Q, K and V projections side by side.
//!
//! candle's `rope*` and `softmax_last_dim` have no backward, and its composed attention keeps a
//! `heads x len x len` probability tensor (and its softmax's intermediates) per layer until the
//! backward pass. This op keeps its input and output alone: the backward rotates Q and K again,
//! recomputes each head's probabilities one at a time (as flash attention does), and returns the
//! gradient of the un-rotated Q, K and V as one tensor (the rotation's backward is the inverse
//! rotation).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use engram_shared::generation::kernels::softmax_in_place;
use engram_shared::generation::llama::rope_angles;
use rayon::prelude::*;

use super::{Held, contiguous, matrix_dims};
use crate::train::gemm::{View, ViewMut, product};

/// Rotation angles for every position: `cos` and `sin`, `positions x head_dim / 2`, the inference
/// path's ([`rope_angles`]).
#[derive(Debug)]
pub struct RopeTable {
    cos: Vec<f32>,
    sin: Vec<f32>,
    half: usize,
}

impl RopeTable {
    /// Angles for `positions` positions of heads of `head_dim` features, frequency base `base`.
    pub fn new(head_dim: usize, positions: usize, base: f32) -> Self {
        let (cos, sin) = rope_angles(head_dim, positions, base);
        RopeTable {
            cos,
            sin,
            half: head_dim / 2,
        }
    }

    /// Positions the table covers.
    pub fn positions(&self) -> usize {
        self.cos.len() / self.half.max(1)
    }

    /// `cos` and `sin` as `positions x half` tensors on `device` (for candle's own forms).
    pub fn tensors(&self, device: &candle_core::Device) -> Result<(Tensor, Tensor)> {
        let positions = self.positions();
        Ok((
            Tensor::from_slice(&self.cos, (positions, self.half), device)?,
            Tensor::from_slice(&self.sin, (positions, self.half), device)?,
        ))
    }

    /// Rotates every head of `row` in place by position `p`'s angles: pairs `(2i, 2i+1)` of each
    /// head (GGUF's interleaved layout, as the inference path); `inverse` rotates back.
    fn rotate(&self, row: &mut [f32], p: usize, inverse: bool) {
        let half = self.half;
        let cos = &self.cos[p * half..(p + 1) * half];
        let sin = &self.sin[p * half..(p + 1) * half];
        let sign = if inverse { -1.0 } else { 1.0 };
        for head in row.chunks_exact_mut(2 * half) {
            for ((pair, &c), &s) in head.chunks_exact_mut(2).zip(cos).zip(sin) {
                let (a, b, s) = (pair[0], pair[1], sign * s);
                pair[0] = a * c - b * s;
                pair[1] = a * s + b * c;
            }
        }
    }
}

/// One query head `h` (of key/value head `g`) over the segment of `len` rows from `first`.
#[derive(Debug, Clone, Copy)]
struct Slot {
    first: usize,
    len: usize,
    h: usize,
    g: usize,
}

/// Heads of `head_dim` features in rows `stride` apart, the first head of row 0 at `offset`.
#[derive(Clone, Copy)]
struct Heads<'a> {
    data: &'a [f32],
    offset: usize,
    stride: usize,
    head_dim: usize,
}

impl<'a> Heads<'a> {
    /// Head `h` of `rows` rows from `row`, `rows x head_dim`.
    fn view(&self, row: usize, h: usize, rows: usize) -> View<'a> {
        View::rows(
            self.data,
            self.offset + row * self.stride + h * self.head_dim,
            rows,
            self.head_dim,
            self.stride,
        )
    }

    /// Head `h` of row `row`.
    fn at(&self, row: usize, h: usize) -> &'a [f32] {
        let start = self.offset + row * self.stride + h * self.head_dim;
        &self.data[start..start + self.head_dim]
    }
}

/// Rotated Q and K, and V in place: the inputs of one attention pass.
struct Inputs<'a> {
    q: Heads<'a>,
    k: Heads<'a>,
    v: Heads<'a>,
}

/// A thread's two `len x len` score matrices (probabilities and their gradient), reused from task
/// to task without clearing: [`Attention::probabilities`] and the backward pass write every
/// element before they read it (each causal block's product, then the row's future filled with
/// zeros), so a task never sees its predecessor's values. At 512 rows that is 2 MB a task not
/// zeroed and not faulted in again, for each of nine heads and thirty layers.
#[derive(Default)]
struct Scores {
    p: Vec<f32>,
    dp: Vec<f32>,
}

impl Scores {
    /// The probabilities alone (the forward pass).
    fn probabilities(&mut self, len: usize) -> &mut [f32] {
        self.p.resize(len * len, 0.0);
        &mut self.p
    }

    /// The probabilities and their gradient (the backward pass).
    fn pair(&mut self, len: usize) -> (&mut [f32], &mut [f32]) {
        self.p.resize(len * len, 0.0);
        self.dp.resize(len * len, 0.0);
        (&mut self.p, &mut self.dp)
    }
}

/// One (segment, query head) task's gradients, `len x d` each: its `dq` rows and its share of its
/// key/value head's `dk`, `dv` rows.
struct HeadGradients {
    first: usize,
    len: usize,
    h: usize,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Query rows are taken this many at a time, each block against only the keys up to its last row:
/// the causal mask's upper triangle is mostly never computed (37% of the products at 512 rows).
const CAUSAL_BLOCK: usize = 128;

/// `(first row, end row)` of each block of query rows.
fn causal_blocks(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len.div_ceil(CAUSAL_BLOCK)).map(move |b| (b * CAUSAL_BLOCK, len.min((b + 1) * CAUSAL_BLOCK)))
}

/// `out = S · R_g` for one segment: `S` a causal `len x len` matrix (probabilities or their
/// gradient, zero above the diagonal), `R_g` head `g` of the segment's rows from `first`, `out`
/// `len x head_dim`; each block of rows against only the rows up to its last.
fn causal_product(s: &[f32], len: usize, r: Heads<'_>, first: usize, g: usize, out: &mut [f32]) {
    let d = r.head_dim;
    for (r0, r1) in causal_blocks(len) {
        product(
            ViewMut::rows(out, r0 * d, r1 - r0, d, d),
            View::rows(s, r0 * len, r1 - r0, r1, len),
            r.view(first, g, r1),
            1.0,
            false,
            1,
        );
    }
}

/// Rotary embedding then causal self-attention over packed sequences. The input is `n` rows of
/// `[q | k | v]` (`heads`, `kv_heads` and `kv_heads` heads of `head_dim` features: the Q, K and V
/// projections side by side), `positions` gives each row's position inside its sequence and
/// `segments` each sequence's `(first row, rows)`. A row attends to the rows of its own sequence
/// up to itself. The output is `n x (heads · head_dim)`.
#[derive(Debug, Clone)]
pub struct Attention {
    segments: Arc<Vec<(usize, usize)>>,
    positions: Arc<Vec<usize>>,
    rope: Arc<RopeTable>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Attention of `heads` query heads sharing `kv_heads` key/value heads, rotated by `rope`.
    pub fn new(
        segments: Arc<Vec<(usize, usize)>>,
        positions: Arc<Vec<usize>>,
        rope: Arc<RopeTable>,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Self {
        Attention {
            segments,
            positions,
            rope,
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// The attention output of `[q | k | v]` rows, `n x (heads · head_dim)`.
    pub fn forward(&self, qkv: &Tensor) -> Result<Tensor> {
        qkv.contiguous()?.apply_op1(self.clone())
    }

    /// Features of the query part, of the key (and value) part, and of a whole input row.
    fn widths(&self) -> (usize, usize, usize) {
        let (qc, kc) = (self.heads * self.head_dim, self.kv_heads * self.head_dim);
        (qc, kc, qc + 2 * kc)
    }

    fn check(&self, n: usize, cols: usize) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!("attention: {} heads over {} key/value heads", self.heads, self.kv_heads);
        }
        if self.head_dim != 2 * self.rope.half || self.head_dim == 0 {
            bail!(
                "attention: heads of {} features, rotation table for {}",
                self.head_dim,
                2 * self.rope.half
            );
        }
        if cols != self.widths().2 {
            bail!(
                "attention: rows of {cols} features, expected {} (q, k and v side by side)",
                self.widths().2
            );
        }
        if self.positions.len() != n {
            bail!("attention: {n} rows, {} positions", self.positions.len());
        }
        if let Some(&p) = self.positions.iter().find(|&&p| p >= self.rope.positions()) {
            bail!(
                "attention: position {p} is past the rotation table's {}",
                self.rope.positions()
            );
        }
        let mut next = 0;
        for &(first, len) in self.segments.iter() {
            if first != next {
                bail!("attention: segments must tile the rows in order");
            }
            next = first + len;
        }
        if next != n {
            bail!("attention: segments cover {next} of {n} rows");
        }
        Ok(())
    }

    /// Q and K of every row, rotated: `n x (heads + kv_heads) · head_dim`.
    fn rotated(&self, qkv: &[f32], n: usize) -> Vec<f32> {
        let (qc, kc, w) = self.widths();
        let mut qk = vec![0f32; n * (qc + kc)];
        qk.par_chunks_mut(qc + kc)
            .zip(qkv.par_chunks(w))
            .zip(self.positions.par_iter())
            .for_each(|((out, row), &p)| {
                out.copy_from_slice(&row[..qc + kc]);
                self.rope.rotate(out, p, false);
            });
        qk
    }

    /// The views of the rotated Q and K (`qk`) and of V (inside the input rows `qkv`).
    fn inputs<'a>(&self, qk: &'a [f32], qkv: &'a [f32]) -> Inputs<'a> {
        let (qc, kc, w) = self.widths();
        let d = self.head_dim;
        Inputs {
            q: Heads {
                data: qk,
                offset: 0,
                stride: qc + kc,
                head_dim: d,
            },
            k: Heads {
                data: qk,
                offset: qc,
                stride: qc + kc,
                head_dim: d,
            },
            v: Heads {
                data: qkv,
                offset: qc + kc,
                stride: w,
                head_dim: d,
            },
        }
    }

    /// (segment, query head) tasks: nine a segment balance over the threads where three (one per
    /// key/value head) did not.
    fn tasks(&self) -> Vec<Slot> {
        let group = self.heads / self.kv_heads;
        self.segments
            .iter()
            .flat_map(|&(first, len)| {
                (0..self.heads).map(move |h| Slot {
                    first,
                    len,
                    h,
                    g: h / group,
                })
            })
            .collect()
    }

    /// Writes the causal softmax of `q_h · k_gᵀ · scale` for one segment into `p` (`len x len`).
    fn probabilities(&self, x: &Inputs<'_>, slot: Slot, p: &mut [f32]) {
        let Slot { first, len, h, g } = slot;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        for (r0, r1) in causal_blocks(len) {
            product(
                ViewMut::rows(p, r0 * len, r1 - r0, r1, len),
                x.q.view(first + r0, h, r1 - r0),
                x.k.view(first, g, r1).t(),
                scale,
                false,
                1,
            );
        }
        for (i, row) in p.chunks_exact_mut(len).enumerate() {
            let (seen, future) = row.split_at_mut(i + 1);
            softmax_in_place(seen);
            future.fill(0.0);
        }
    }

    /// One task's gradients of its query head and its share of its key/value head, for the output
    /// gradient `dout` (`n x heads · head_dim`, as `out`).
    fn head_gradients(
        &self,
        x: &Inputs<'_>,
        out: Heads<'_>,
        dout: Heads<'_>,
        slot: Slot,
        scores: &mut Scores,
    ) -> HeadGradients {
        let Slot { first, len, h, g } = slot;
        let d = self.head_dim;
        let scale = 1.0 / (d as f32).sqrt();
        let (p, dp) = scores.pair(len);
        let mut dq = vec![0f32; len * d];
        let mut dk = vec![0f32; len * d];
        let mut dv = vec![0f32; len * d];
        self.probabilities(x, slot, p);
        for (r0, r1) in causal_blocks(len) {
            // dP = dO_h · V_gᵀ
            product(
                ViewMut::rows(dp, r0 * len, r1 - r0, r1, len),
                dout.view(first + r0, h, r1 - r0),
                x.v.view(first, g, r1).t(),
                1.0,
                false,
                1,
            );
        }
        // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale
        for i in 0..len {
            let delta: f32 = dout
                .at(first + i, h)
                .iter()
                .zip(out.at(first + i, h))
                .map(|(a, b)| a * b)
                .sum();
            let (pr, dr) = (&p[i * len..i * len + i + 1], &mut dp[i * len..(i + 1) * len]);
            for (x, &pv) in dr.iter_mut().zip(pr) {
                *x = pv * (*x - delta) * scale;
            }
            dr[i + 1..].fill(0.0);
        }
        // dQ_h = dS · K_g
        causal_product(dp, len, x.k, first, g, &mut dq);
        for (r0, r1) in causal_blocks(len) {
            // dK_g += dSᵀ · Q_h ; dV_g += Pᵀ · dO_h
            product(
                ViewMut::rows(&mut dk, 0, r1, d, d),
                View::rows(dp, r0 * len, r1 - r0, r1, len).t(),
                x.q.view(first + r0, h, r1 - r0),
                1.0,
                true,
                1,
            );
            product(
                ViewMut::rows(&mut dv, 0, r1, d, d),
                View::rows(p, r0 * len, r1 - r0, r1, len).t(),
                dout.view(first + r0, h, r1 - r0),
                1.0,
                true,
                1,
            );
        }
        HeadGradients {
            first,
            len,
            h,
            dq,
            dk,
            dv,
        }
    }
}

impl CustomOp1 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = contiguous(storage, layout, self.name())?;
        let (n, cols) = matrix_dims(layout, self.name())?;
        self.check(n, cols)?;
        let (qc, _, _) = self.widths();
        let d = self.head_dim;
        let qk = self.rotated(qkv, n);
        let x = self.inputs(&qk, qkv);
        let parts: Vec<(Slot, Vec<f32>)> = self
            .tasks()
            .into_par_iter()
            .map_init(Scores::default, |scores, slot| {
                let Slot { first, len, g, .. } = slot;
                let p = scores.probabilities(len);
                self.probabilities(&x, slot, p);
                let mut o = vec![0f32; len * d];
                causal_product(p, len, x.v, first, g, &mut o);
                (slot, o)
            })
            .collect();
        let mut out = vec![0f32; n * qc];
        for (Slot { first, len, h, .. }, o) in parts {
            for i in 0..len {
                out[(first + i) * qc + h * d..(first + i) * qc + (h + 1) * d].copy_from_slice(&o[i * d..(i + 1) * d]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, qc))))
    }

    fn bwd(&self, qkv: &Tensor, out: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, cols) = qkv.dims2()?;
        self.check(n, cols)?;
        let (qc, kc, w) = self.widths();
        let d = self.head_dim;
        let grad = grad.contiguous()?;
        let held = [Held::new(qkv), Held::new(out), Held::new(&grad)];
        let name = self.name();
        let (xv, ov, gv) = (held[0].values(name)?, held[1].values(name)?, held[2].values(name)?);
        if xv.len() != n * w || ov.len() != n * qc || gv.len() != n * qc {
            bail!("{name}: saved tensors and gradient disagree with {n} rows of {w} features");
        }
        let qk = self.rotated(xv, n);
        let x = self.inputs(&qk, xv);
        let heads = |data| Heads {
            data,
            offset: 0,
            stride: qc,
            head_dim: d,
        };
        let (out, dout) = (heads(ov), heads(gv));
        let results: Vec<HeadGradients> = self
            .tasks()
            .into_par_iter()
            .map_init(Scores::default, |scores, slot| {
                self.head_gradients(&x, out, dout, slot, scores)
            })
            .collect();
        // [dq | dk | dv] in rotated space, each key/value head's shares summed, then Q's and K's
        // part rotated back: the gradient of the input rows.
        let group = self.heads / self.kv_heads;
        let mut dx = vec![0f32; n * w];
        for HeadGradients {
            first,
            len,
            h,
            dq,
            dk,
            dv,
        } in results
        {
            let g = h / group;
            for i in 0..len {
                let row = &mut dx[(first + i) * w..(first + i + 1) * w];
                row[h * d..(h + 1) * d].copy_from_slice(&dq[i * d..(i + 1) * d]);
                let (k_row, v_row) = (&dk[i * d..(i + 1) * d], &dv[i * d..(i + 1) * d]);
                for (acc, x) in row[qc + g * d..qc + (g + 1) * d].iter_mut().zip(k_row) {
                    *acc += x;
                }
                for (acc, x) in row[qc + kc + g * d..qc + kc + (g + 1) * d].iter_mut().zip(v_row) {
                    *acc += x;
                }
            }
        }
        dx.par_chunks_mut(w)
            .zip(self.positions.par_iter())
            .for_each(|(row, &p)| self.rope.rotate(&mut row[..qc + kc], p, true));
        Ok(Some(Tensor::from_vec(dx, (n, w), qkv.device())?))
    }
}
