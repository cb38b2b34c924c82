//! Products with a frozen weight: `x · Wᵀ` alone ([`Frozen::forward`]) and with LoRA adapters
//! beside it ([`AdaptedProduct`]). Neither computes a gradient for `W`.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Tensor, bail};

use super::{Held, contiguous, matrix_dims, threads};
use crate::train::gemm::{View, ViewMut, product};

/// A frozen weight matrix `out x in` (row-major): the base model's projections. Several can share
/// one buffer, stacked row-wise ([`Frozen::stack`]), each a view of its rows.
#[derive(Debug, Clone)]
pub struct Frozen {
    data: Arc<Vec<f32>>,
    first_row: usize,
    rows: usize,
    cols: usize,
}

impl Frozen {
    /// Wraps `rows x cols` weights.
    pub fn new(data: Vec<f32>, rows: usize, cols: usize) -> Result<Self> {
        if data.len() != rows * cols {
            bail!("frozen weight: {} values for {rows} x {cols}", data.len());
        }
        Ok(Frozen {
            data: Arc::new(data),
            first_row: 0,
            rows,
            cols,
        })
    }

    /// Matrices of `cols` columns stacked row-wise into one, and a view of each part in order.
    pub fn stack(parts: Vec<(Vec<f32>, usize)>, cols: usize) -> Result<(Frozen, Vec<Frozen>)> {
        let total: usize = parts.iter().map(|(_, rows)| rows).sum();
        let mut data = Vec::with_capacity(total * cols);
        let mut spans = Vec::with_capacity(parts.len());
        for (values, rows) in parts {
            if values.len() != rows * cols {
                bail!("frozen weight: {} values for {rows} x {cols}", values.len());
            }
            spans.push((data.len() / cols.max(1), rows));
            data.extend_from_slice(&values);
        }
        let stacked = Frozen::new(data, total, cols)?;
        let views = spans
            .into_iter()
            .map(|(first_row, rows)| Frozen {
                first_row,
                rows,
                ..stacked.clone()
            })
            .collect();
        Ok((stacked, views))
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input features.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The weights, row-major.
    pub fn data(&self) -> &[f32] {
        &self.data[self.first_row * self.cols..(self.first_row + self.rows) * self.cols]
    }

    /// `x · Wᵀ` for `x` of `n x in`, differentiable in `x` alone.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(FrozenProduct {
            weight: self.clone(),
            transposed: false,
        })
    }

    fn view(&self) -> View<'_> {
        View::rows(self.data(), 0, self.rows, self.cols, self.cols)
    }
}

/// `x · Wᵀ` (or `x · W` when `transposed`, the backward's product).
struct FrozenProduct {
    weight: Frozen,
    transposed: bool,
}

impl CustomOp1 for FrozenProduct {
    fn name(&self) -> &'static str {
        "frozen-product"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let (n, features) = matrix_dims(layout, self.name())?;
        let w = &self.weight;
        let (inputs, outputs, rhs) = if self.transposed {
            (w.rows, w.cols, w.view())
        } else {
            (w.cols, w.rows, w.view().t())
        };
        if features != inputs {
            bail!("frozen-product: input has {features} features, the weight takes {inputs}");
        }
        let mut y = vec![0f32; n * outputs];
        product(
            ViewMut::rows(&mut y, 0, n, outputs, outputs),
            View::rows(x, 0, n, inputs, inputs),
            rhs,
            1.0,
            false,
            threads(),
        );
        Ok((CpuStorage::F32(y), Shape::from((n, outputs))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let back = FrozenProduct {
            weight: self.weight.clone(),
            transposed: !self.transposed,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&back)?))
    }
}

/// Frozen projections of one input side by side, each with its LoRA adapter, as one op:
/// `y = x·Wᵀ + scale·[(x·A₁ᵀ)·B₁ᵀ | (x·A₂ᵀ)·B₂ᵀ | …]`, with `W` the projections' weights stacked
/// row-wise, `x` (`n x in`), `A` the adapters' `A` stacked row-wise (`parts·r x in`) and `B` their
/// `B` stacked row-wise (`out x r`) its arguments. One projection is the plain case.
///
/// Composed from candle's operations, an adapted projection keeps four `n x out` tensors alive
/// until the backward pass (the frozen product, the update, the scaled update, their sum); this op
/// keeps its output alone and recomputes the small `u = x·Aᵀ` in the backward, which gives, per
/// part `i`, `dBᵢ = scale·dyᵢᵀ·uᵢ` and `duᵢ = scale·dyᵢ·Bᵢ`, then `dA = duᵀ·x` and
/// `dx = dy·W + du·A`.
#[derive(Debug, Clone)]
pub struct AdaptedProduct {
    weight: Frozen,
    scale: f32,
    /// Each part's output features, in order; they sum to the weight's rows.
    parts: Arc<Vec<usize>>,
}

impl AdaptedProduct {
    /// The projection `weight` with an adapter scaled by `scale`.
    pub fn new(weight: Frozen, scale: f32) -> Self {
        let parts = Arc::new(vec![weight.rows]);
        AdaptedProduct { weight, scale, parts }
    }

    /// Projections stacked in `weight` (as [`Frozen::stack`] makes it), of `parts` output features
    /// each, every one with an adapter scaled by `scale`.
    pub fn stacked(weight: Frozen, scale: f32, parts: Vec<usize>) -> Result<Self> {
        if parts.is_empty() || parts.iter().sum::<usize>() != weight.rows {
            bail!(
                "adapted-product: parts of {parts:?} outputs for a weight of {} rows",
                weight.rows
            );
        }
        Ok(AdaptedProduct {
            weight,
            scale,
            parts: Arc::new(parts),
        })
    }

    /// `x·Wᵀ` plus each part's scaled update, differentiable in `x`, `a` and `b`.
    pub fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, self.clone())
    }

    /// Checks the arguments' shapes and returns the rank.
    fn check(&self, n_in: usize, a: (usize, usize), b: (usize, usize)) -> Result<usize> {
        let w = &self.weight;
        let rank = b.1;
        if n_in != w.cols || a.1 != w.cols || b.0 != w.rows || a.0 != rank * self.parts.len() || rank == 0 {
            bail!(
                "adapted-product: x has {n_in} features, A is {a:?}, B is {b:?}, W is {} x {} in {} parts",
                w.rows,
                w.cols,
                self.parts.len()
            );
        }
        Ok(rank)
    }

    /// Each part's `(index, first output row, output rows)`.
    fn spans(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.parts
            .iter()
            .scan(0, |first, &rows| {
                let at = *first;
                *first += rows;
                Some((at, rows))
            })
            .enumerate()
            .map(|(i, (first, rows))| (i, first, rows))
    }
}

/// `u = x·Aᵀ` (`n x ranks`) for `x` of `n x inputs` and `A` of `ranks x inputs`: the adapters'
/// low-rank projection of the input, computed in the forward pass and again in the backward.
fn low_rank(x: &[f32], a: &[f32], n: usize, inputs: usize, ranks: usize) -> Vec<f32> {
    let mut u = vec![0f32; n * ranks];
    product(
        ViewMut::rows(&mut u, 0, n, ranks, ranks),
        View::rows(x, 0, n, inputs, inputs),
        View::rows(a, 0, ranks, inputs, inputs).t(),
        1.0,
        false,
        threads(),
    );
    u
}

impl CustomOp3 for AdaptedProduct {
    fn name(&self) -> &'static str {
        "adapted-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (
            contiguous(s1, l1, self.name())?,
            contiguous(s2, l2, self.name())?,
            contiguous(s3, l3, self.name())?,
        );
        let (n, inputs) = matrix_dims(l1, self.name())?;
        let r = self.check(inputs, matrix_dims(l2, self.name())?, matrix_dims(l3, self.name())?)?;
        let (ranks, out) = (r * self.parts.len(), self.weight.rows);
        let t = threads();
        let u = low_rank(x, a, n, inputs, ranks);
        let mut y = vec![0f32; n * out];
        product(
            ViewMut::rows(&mut y, 0, n, out, out),
            View::rows(x, 0, n, inputs, inputs),
            self.weight.view().t(),
            1.0,
            false,
            t,
        );
        for (i, first, rows) in self.spans() {
            product(
                ViewMut::rows(&mut y, first, n, rows, out),
                View::rows(&u, i * r, n, r, ranks),
                View::rows(b, first * r, rows, r, r).t(),
                self.scale,
                true,
                t,
            );
        }
        Ok((CpuStorage::F32(y), Shape::from((n, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _y: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, inputs) = x.dims2()?;
        let r = self.check(inputs, a.dims2()?, b.dims2()?)?;
        let (ranks, out) = (r * self.parts.len(), self.weight.rows);
        let grad = grad.contiguous()?;
        let (hx, ha, hb, hy) = (Held::new(x), Held::new(a), Held::new(b), Held::new(&grad));
        let name = self.name();
        let (xv, av, bv, dy) = (hx.values(name)?, ha.values(name)?, hb.values(name)?, hy.values(name)?);
        if dy.len() != n * out {
            bail!("adapted-product: gradient of {} values for {n} x {out}", dy.len());
        }
        let t = threads();
        let u = low_rank(xv, av, n, inputs, ranks);
        let mut db = vec![0f32; out * r];
        let mut du = vec![0f32; n * ranks];
        for (i, first, rows) in self.spans() {
            product(
                ViewMut::rows(&mut db, first * r, rows, r, r),
                View::rows(dy, first, n, rows, out).t(),
                View::rows(&u, i * r, n, r, ranks),
                self.scale,
                false,
                t,
            );
            product(
                ViewMut::rows(&mut du, i * r, n, r, ranks),
                View::rows(dy, first, n, rows, out),
                View::rows(bv, first * r, rows, r, r),
                self.scale,
                false,
                t,
            );
        }
        let mut da = vec![0f32; ranks * inputs];
        product(
            ViewMut::rows(&mut da, 0, ranks, inputs, inputs),
            View::rows(&du, 0, n, ranks, ranks).t(),
            View::rows(xv, 0, n, inputs, inputs),
            1.0,
            false,
            t,
        );
        let mut dx = vec![0f32; n * inputs];
        product(
            ViewMut::rows(&mut dx, 0, n, inputs, inputs),
            View::rows(dy, 0, n, out, out),
            self.weight.view(),
            1.0,
            false,
            t,
        );
        product(
            ViewMut::rows(&mut dx, 0, n, inputs, inputs),
            View::rows(&du, 0, n, ranks, ranks),
            View::rows(av, 0, ranks, inputs, inputs),
            1.0,
            true,
            t,
        );
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, inputs), device)?),
            Some(Tensor::from_vec(da, (ranks, inputs), device)?),
            Some(Tensor::from_vec(db, (out, r), device)?),
        ))
    }
}
