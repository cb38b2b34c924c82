//! The MLP's SiLU-gated product, `silu(gate) ∘ up`, from the gate and up projections side by side.

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use engram_shared::generation::kernels::exp_in_place;
use rayon::prelude::*;

use super::{Held, contiguous, matrix_dims};

/// Rows handed to a task at a time.
const ROWS_PER_TASK: usize = 4;

/// `silu(gate) ∘ up` of `n x 2f` rows holding `[gate | up]` (the stacked projections' output), as
/// one op: it keeps its output alone (candle's composed form keeps `silu(gate)` too), and its
/// backward returns the gradient of both halves as one tensor.
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    /// `silu(gate) ∘ up` of `[gate | up]` rows, `n x f`.
    pub fn forward(gate_up: &Tensor) -> Result<Tensor> {
        gate_up.contiguous()?.apply_op1(SwiGlu)
    }

    /// The hidden width `f` of rows of `cols` values.
    fn hidden(cols: usize) -> Result<usize> {
        if !cols.is_multiple_of(2) {
            bail!("swiglu: rows of {cols} values are not gate and up halves");
        }
        Ok(cols / 2)
    }
}

/// `sigmoid(g)` of each gate value into `out`, from `e^-|g|` (never overflows) computed in bulk.
fn sigmoids(g: &[f32], out: &mut [f32]) {
    for (o, &g) in out.iter_mut().zip(g) {
        *o = -g.abs();
    }
    exp_in_place(out);
    for (o, &g) in out.iter_mut().zip(g) {
        let r = 1.0 / (1.0 + *o);
        *o = if g >= 0.0 { r } else { *o * r };
    }
}

impl CustomOp1 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let gu = contiguous(storage, layout, self.name())?;
        let (n, cols) = matrix_dims(layout, self.name())?;
        let f = Self::hidden(cols)?;
        let mut y = vec![0f32; n * f];
        y.par_chunks_mut(f * ROWS_PER_TASK)
            .zip(gu.par_chunks(cols * ROWS_PER_TASK))
            .for_each(|(y, gu)| {
                for (y, row) in y.chunks_exact_mut(f).zip(gu.chunks_exact(cols)) {
                    let (g, u) = row.split_at(f);
                    sigmoids(g, y);
                    for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                        *y *= g * u;
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, f))))
    }

    fn bwd(&self, gate_up: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (n, cols) = gate_up.dims2()?;
        let f = Self::hidden(cols)?;
        let grad = grad.contiguous()?;
        let (hx, hy) = (Held::new(gate_up), Held::new(&grad));
        let (gu, dy) = (hx.values(self.name())?, hy.values(self.name())?);
        if gu.len() != n * cols || dy.len() != n * f {
            bail!("swiglu: input and gradient sizes differ");
        }
        let mut d = vec![0f32; n * cols];
        d.par_chunks_mut(cols * ROWS_PER_TASK)
            .zip(
                gu.par_chunks(cols * ROWS_PER_TASK)
                    .zip(dy.par_chunks(f * ROWS_PER_TASK)),
            )
            .for_each(|(d, (gu, dy))| {
                for ((d, row), dy) in d
                    .chunks_exact_mut(cols)
                    .zip(gu.chunks_exact(cols))
                    .zip(dy.chunks_exact(f))
                {
                    let (g, u) = row.split_at(f);
                    let (dg, du) = d.split_at_mut(f);
                    sigmoids(g, dg);
                    for i in 0..f {
                        let s = dg[i];
                        du[i] = dy[i] * g[i] * s;
                        dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                    }
                }
            });
        Ok(Some(Tensor::from_vec(d, (n, cols), gate_up.device())?))
    }
}
