//! The training forward pass's operations that candle's autograd cannot run as they are.
//!
//! candle 0.11's fused `rms_norm`, `softmax_last_dim` and `rope*` have no backward and silently cut
//! gradients (upstream issues 2168, 3568, 3569), and its matmul backward also computes the weight's
//! gradient, which a frozen projection never needs (a third of the work and a weight-sized buffer
//! each time). Each op here is a candle custom op with its own backward, so `Tensor::backward`
//! still drives the whole pass:
//!
//! - [`Frozen::forward`]: `x · Wᵀ` for a frozen weight; the backward returns only `g · W`;
//! - [`AdaptedProduct`]: the same with its LoRA adapter added, keeping only its output;
//! - [`SwiGlu`]: the MLP's `silu(gate) ∘ up`;
//! - [`CrossEntropy`]: the loss over the vocabulary, keeping only the logits;
//! - [`RmsNorm`]: RMS norm with a frozen scale;
//! - [`Rope`]: rotary embedding in GGUF's interleaved-pair layout; its backward is the inverse
//!   rotation;
//! - [`Attention`]: causal attention with grouped key/value heads over packed sequences (several
//!   examples back to back, none attending to another). It keeps nothing but its inputs and output:
//!   the backward recomputes the probabilities, as flash attention does.
//!
//! They run on the CPU (gemm, as the inference kernels). On another device [`Device::is_cpu`] is
//! false and the model uses candle's own differentiable forms instead (`model.rs`).

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Storage, StorageRef, Tensor, bail,
};
use engram_shared::generation::kernels::{exp_in_place, softmax_in_place};
use engram_shared::generation::llama::rope_angles;
use rayon::prelude::*;

use super::gemm::{View, ViewMut, product};

/// The f32 slice a contiguous CPU tensor's layout covers.
fn contiguous<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        bail!("{op}: expected f32 input, got {:?}", storage.dtype());
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: expected a contiguous input"),
    }
}

/// A tensor's f32 values read in place, without a copy: its storage stays read-locked while held.
/// The backward passes read their saved inputs and the incoming gradient this way.
struct Held<'a> {
    storage: StorageRef<'a>,
    layout: &'a Layout,
}

impl<'a> Held<'a> {
    fn new(tensor: &'a Tensor) -> Self {
        let (storage, layout) = tensor.storage_and_layout();
        Held { storage, layout }
    }

    fn values(&self, op: &str) -> Result<&[f32]> {
        match &*self.storage {
            Storage::Cpu(cpu) => contiguous(cpu, self.layout, op),
            _ => bail!("{op}: expected a tensor on the CPU"),
        }
    }
}

fn matrix_dims(layout: &Layout, op: &str) -> Result<(usize, usize)> {
    match layout.dims() {
        [rows, cols] => Ok((*rows, *cols)),
        dims => bail!("{op}: expected a matrix, got shape {dims:?}"),
    }
}

fn threads() -> usize {
    rayon::current_num_threads()
}

/// A frozen weight matrix `out x in` (row-major): the base model's projections.
#[derive(Debug, Clone)]
pub struct Frozen {
    data: Arc<Vec<f32>>,
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
            rows,
            cols,
        })
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
        &self.data
    }

    /// `x · Wᵀ` for `x` of `n x in`, differentiable in `x` alone.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(FrozenProduct {
            weight: self.clone(),
            transposed: false,
        })
    }

    fn view(&self) -> View<'_> {
        View::rows(&self.data, 0, self.rows, self.cols, self.cols)
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

/// A frozen projection and its LoRA adapter as one op: `y = x·Wᵀ + scale·(x·Aᵀ)·Bᵀ`, with `x`
/// (`n x in`), `A` (`r x in`) and `B` (`out x r`) its arguments.
///
/// Composed from candle's operations, an adapted projection keeps four `n x out` tensors alive
/// until the backward pass (the frozen product, the update, the scaled update, their sum); this op
/// keeps its output alone and recomputes the small `x·Aᵀ` in the backward, which gives
/// `dB = scale·dyᵀ·u`, `du = scale·dy·B`, `dA = duᵀ·x` and `dx = dy·W + du·A` (`u = x·Aᵀ`).
#[derive(Debug, Clone)]
pub struct AdaptedProduct {
    weight: Frozen,
    scale: f32,
}

impl AdaptedProduct {
    /// The projection `weight` with an adapter scaled by `scale`.
    pub fn new(weight: Frozen, scale: f32) -> Self {
        AdaptedProduct { weight, scale }
    }

    /// `x·Wᵀ + scale·(x·Aᵀ)·Bᵀ`, differentiable in `x`, `a` and `b`.
    pub fn forward(&self, x: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        x.contiguous()?
            .apply_op3(&a.contiguous()?, &b.contiguous()?, self.clone())
    }

    fn check(&self, n_in: usize, a: (usize, usize), b: (usize, usize)) -> Result<()> {
        let w = &self.weight;
        if n_in != w.cols || a.1 != w.cols || b.0 != w.rows || a.0 != b.1 {
            bail!(
                "adapted-product: x has {n_in} features, A is {a:?}, B is {b:?}, W is {} x {}",
                w.rows,
                w.cols
            );
        }
        Ok(())
    }
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
        let (rank, outputs) = (matrix_dims(l2, self.name())?, matrix_dims(l3, self.name())?);
        self.check(inputs, rank, outputs)?;
        let (r, out) = (rank.0, outputs.0);
        let mut u = vec![0f32; n * r];
        product(
            ViewMut::rows(&mut u, 0, n, r, r),
            View::rows(x, 0, n, inputs, inputs),
            View::rows(a, 0, r, inputs, inputs).t(),
            1.0,
            false,
            threads(),
        );
        let mut y = vec![0f32; n * out];
        product(
            ViewMut::rows(&mut y, 0, n, out, out),
            View::rows(x, 0, n, inputs, inputs),
            self.weight.view().t(),
            1.0,
            false,
            threads(),
        );
        product(
            ViewMut::rows(&mut y, 0, n, out, out),
            View::rows(&u, 0, n, r, r),
            View::rows(b, 0, out, r, r).t(),
            self.scale,
            true,
            threads(),
        );
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
        let (r, out) = (a.dims2()?.0, b.dims2()?.0);
        self.check(inputs, a.dims2()?, b.dims2()?)?;
        let grad = grad.contiguous()?;
        let (hx, ha, hb, hy) = (Held::new(x), Held::new(a), Held::new(b), Held::new(&grad));
        let name = self.name();
        let (xv, av, bv, dy) = (hx.values(name)?, ha.values(name)?, hb.values(name)?, hy.values(name)?);
        if dy.len() != n * out {
            bail!("adapted-product: gradient of {} values for {n} x {out}", dy.len());
        }
        let t = threads();
        let mut u = vec![0f32; n * r];
        product(
            ViewMut::rows(&mut u, 0, n, r, r),
            View::rows(xv, 0, n, inputs, inputs),
            View::rows(av, 0, r, inputs, inputs).t(),
            1.0,
            false,
            t,
        );
        let mut db = vec![0f32; out * r];
        product(
            ViewMut::rows(&mut db, 0, out, r, r),
            View::rows(dy, 0, n, out, out).t(),
            View::rows(&u, 0, n, r, r),
            self.scale,
            false,
            t,
        );
        let mut du = vec![0f32; n * r];
        product(
            ViewMut::rows(&mut du, 0, n, r, r),
            View::rows(dy, 0, n, out, out),
            View::rows(bv, 0, out, r, r),
            self.scale,
            false,
            t,
        );
        let mut da = vec![0f32; r * inputs];
        product(
            ViewMut::rows(&mut da, 0, r, inputs, inputs),
            View::rows(&du, 0, n, r, r).t(),
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
            View::rows(&du, 0, n, r, r),
            View::rows(av, 0, r, inputs, inputs),
            1.0,
            true,
            t,
        );
        let device = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (n, inputs), device)?),
            Some(Tensor::from_vec(da, (r, inputs), device)?),
            Some(Tensor::from_vec(db, (out, r), device)?),
        ))
    }
}

/// The SiLU-gated product of the MLP, `silu(gate) ∘ up`, as one op: it keeps its output alone
/// (candle's composed form keeps `silu(gate)` too).
#[derive(Debug, Clone, Copy)]
pub struct SwiGlu;

impl SwiGlu {
    /// `silu(gate) ∘ up`.
    pub fn forward(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu)
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

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (contiguous(s1, l1, self.name())?, contiguous(s2, l2, self.name())?);
        if l1.dims() != l2.dims() {
            bail!("swiglu: gate {:?}, up {:?}", l1.dims(), l2.dims());
        }
        let mut y = vec![0f32; g.len()];
        y.par_chunks_mut(4096)
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)))
            .for_each(|(y, (g, u))| {
                sigmoids(g, y);
                for ((y, &g), &u) in y.iter_mut().zip(g).zip(u) {
                    *y *= g * u;
                }
            });
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (hg, hu, hy) = (Held::new(gate), Held::new(up), Held::new(&grad));
        let (g, u, dy) = (hg.values("swiglu")?, hu.values("swiglu")?, hy.values("swiglu")?);
        if u.len() != g.len() || dy.len() != g.len() {
            bail!("swiglu: gate, up and gradient sizes differ");
        }
        let mut dg = vec![0f32; g.len()];
        let mut du = vec![0f32; g.len()];
        dg.par_chunks_mut(4096)
            .zip(du.par_chunks_mut(4096))
            .zip(g.par_chunks(4096).zip(u.par_chunks(4096)).zip(dy.par_chunks(4096)))
            .for_each(|((dg, du), ((g, u), dy))| {
                sigmoids(g, dg);
                for i in 0..g.len() {
                    let s = dg[i];
                    let silu = g[i] * s;
                    du[i] = dy[i] * silu;
                    dg[i] = dy[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                }
            });
        let (shape, device) = (gate.shape(), gate.device());
        Ok((
            Some(Tensor::from_vec(dg, shape, device)?),
            Some(Tensor::from_vec(du, shape, device)?),
        ))
    }
}

/// The summed cross-entropy of `n x vocab` logits against one target class per row, as one op:
/// candle's `cross_entropy` keeps four vocabulary-wide copies of the logits alive for its backward
/// (the shifted values, their exponentials, the log-softmax, ...); this keeps the logits alone and
/// recomputes the softmax in the backward: `dlogits = g · (softmax − onehot)`.
#[derive(Debug, Clone)]
pub struct CrossEntropy {
    targets: Arc<Vec<u32>>,
}

impl CrossEntropy {
    /// The loss summed over the rows of `logits`, targets `targets` (one per row).
    pub fn sum(logits: &Tensor, targets: Vec<u32>) -> Result<Tensor> {
        logits.contiguous()?.apply_op1(CrossEntropy {
            targets: Arc::new(targets),
        })
    }

    /// Each row's maximum and log-sum-exp.
    /// `e^(v - max)` of each logit of `row` into `out`, and their sum: the softmax's numerators
    /// and denominator. `ln(sum) + max` is the row's log-sum-exp.
    fn shifted_exponentials(row: &[f32], out: &mut [f32]) -> (f32, f32) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        for (o, v) in out.iter_mut().zip(row) {
            *o = v - max;
        }
        exp_in_place(out);
        (max, out.iter().sum())
    }

    fn check(&self, rows: usize, vocab: usize) -> Result<()> {
        if self.targets.len() != rows {
            bail!("cross-entropy: {rows} rows, {} targets", self.targets.len());
        }
        if let Some(t) = self.targets.iter().find(|&&t| t as usize >= vocab) {
            bail!("cross-entropy: target {t} outside the vocabulary of {vocab}");
        }
        Ok(())
    }
}

impl CustomOp1 for CrossEntropy {
    fn name(&self) -> &'static str {
        "cross-entropy"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let logits = contiguous(storage, layout, self.name())?;
        let (rows, vocab) = matrix_dims(layout, self.name())?;
        self.check(rows, vocab)?;
        let losses: Vec<f32> = logits
            .par_chunks(vocab)
            .zip(self.targets.par_iter())
            .map_init(
                || vec![0f32; vocab],
                |scratch, (row, &t)| {
                    let (max, sum) = Self::shifted_exponentials(row, scratch);
                    max + sum.ln() - row[t as usize]
                },
            )
            .collect();
        Ok((CpuStorage::F32(vec![losses.iter().sum()]), Shape::from(())))
    }

    fn bwd(&self, logits: &Tensor, _loss: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let g = grad.to_scalar::<f32>()?;
        let (rows, vocab) = logits.dims2()?;
        self.check(rows, vocab)?;
        let held = Held::new(logits);
        let values = held.values(self.name())?;
        let mut d = vec![0f32; rows * vocab];
        d.par_chunks_mut(vocab)
            .zip(values.par_chunks(vocab).zip(self.targets.par_iter()))
            .for_each(|(out, (row, &t))| {
                let (_, sum) = Self::shifted_exponentials(row, out);
                let k = g / sum;
                out.iter_mut().for_each(|o| *o *= k);
                out[t as usize] -= g;
            });
        Ok(Some(Tensor::from_vec(d, (rows, vocab), logits.device())?))
    }
}

/// RMS norm over the last dimension with a frozen scale: `y = x / sqrt(mean(x²) + eps) · w`.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Arc<Vec<f32>>,
    eps: f32,
}

impl RmsNorm {
    /// A norm with scale `weight`.
    pub fn new(weight: Vec<f32>, eps: f32) -> Self {
        RmsNorm {
            weight: Arc::new(weight),
            eps,
        }
    }

    /// The scale.
    pub fn weight(&self) -> &[f32] {
        &self.weight
    }

    /// The epsilon.
    pub fn eps(&self) -> f32 {
        self.eps
    }

    /// Normalizes each row of `x` (`n x dim`).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }

    fn inverse_rms(&self, row: &[f32]) -> f32 {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (mean + self.eps).sqrt()
    }
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let (n, dim) = matrix_dims(layout, self.name())?;
        if dim != self.weight.len() {
            bail!("rms-norm: rows of {dim}, scale of {}", self.weight.len());
        }
        let mut y = vec![0f32; n * dim];
        y.par_chunks_mut(dim).zip(x.par_chunks(dim)).for_each(|(out, row)| {
            let r = self.inverse_rms(row);
            for ((o, v), w) in out.iter_mut().zip(row).zip(self.weight.iter()) {
                *o = v * r * w;
            }
        });
        Ok((CpuStorage::F32(y), Shape::from((n, dim))))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(x.apply_op2_no_bwd(
            &grad.contiguous()?,
            &RmsNormBackward(self.clone()),
        )?))
    }
}

/// The gradient of [`RmsNorm`] with respect to its input:
/// `dx = r·(w∘g) − x · r³/dim · Σ (w∘g∘x)`.
struct RmsNormBackward(RmsNorm);

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms-norm-backward"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(s1, l1, self.name())?;
        let g = contiguous(s2, l2, self.name())?;
        let (n, dim) = matrix_dims(l1, self.name())?;
        if l2.dims() != l1.dims() {
            bail!(
                "rms-norm-backward: gradient shape {:?} for input {:?}",
                l2.dims(),
                l1.dims()
            );
        }
        let w = &self.0.weight;
        let mut dx = vec![0f32; n * dim];
        dx.par_chunks_mut(dim)
            .zip(x.par_chunks(dim).zip(g.par_chunks(dim)))
            .for_each(|(out, (row, grad))| {
                let r = self.0.inverse_rms(row);
                let dot: f32 = row.iter().zip(grad).zip(w.iter()).map(|((x, g), w)| x * g * w).sum();
                let k = r * r * r / dim as f32 * dot;
                for (((o, x), g), w) in out.iter_mut().zip(row).zip(grad).zip(w.iter()) {
                    *o = r * w * g - x * k;
                }
            });
        Ok((CpuStorage::F32(dx), Shape::from((n, dim))))
    }
}

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
}

/// Rotary embedding of `n x (heads · head_dim)` rows, pairs `(2i, 2i+1)` of each head rotated by
/// the angle of the row's position (GGUF's layout, as the inference path).
#[derive(Debug, Clone)]
pub struct Rope {
    table: Arc<RopeTable>,
    positions: Arc<Vec<usize>>,
    head_dim: usize,
    inverse: bool,
}

impl Rope {
    /// Rotation of rows at `positions` (one per row) for heads of `head_dim` features.
    pub fn new(table: Arc<RopeTable>, positions: Arc<Vec<usize>>, head_dim: usize) -> Self {
        Rope {
            table,
            positions,
            head_dim,
            inverse: false,
        }
    }

    /// Rotates `x`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op1(self.clone())
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = contiguous(storage, layout, self.name())?;
        let (n, features) = matrix_dims(layout, self.name())?;
        let half = self.table.half;
        if self.head_dim != 2 * half || !features.is_multiple_of(self.head_dim) {
            bail!("rope: rows of {features} features are not heads of {}", 2 * half);
        }
        if self.positions.len() != n {
            bail!("rope: {n} rows, {} positions", self.positions.len());
        }
        if let Some(&p) = self.positions.iter().find(|&&p| p >= self.table.positions()) {
            bail!("rope: position {p} is past the table's {}", self.table.positions());
        }
        let sign = if self.inverse { -1.0 } else { 1.0 };
        let mut y = vec![0f32; n * features];
        y.par_chunks_mut(features)
            .zip(x.par_chunks(features))
            .zip(self.positions.par_iter())
            .for_each(|((out, row), &p)| {
                let cos = &self.table.cos[p * half..(p + 1) * half];
                let sin = &self.table.sin[p * half..(p + 1) * half];
                for (o, head) in out.chunks_exact_mut(self.head_dim).zip(row.chunks_exact(self.head_dim)) {
                    for i in 0..half {
                        let (a, b) = (head[2 * i], head[2 * i + 1]);
                        let s = sign * sin[i];
                        o[2 * i] = a * cos[i] - b * s;
                        o[2 * i + 1] = a * s + b * cos[i];
                    }
                }
            });
        Ok((CpuStorage::F32(y), Shape::from((n, features))))
    }

    fn bwd(&self, _x: &Tensor, _y: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope {
            inverse: !self.inverse,
            ..self.clone()
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
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

/// Causal self-attention over packed sequences: `q` is `n x (heads · head_dim)`, `k` and `v` are
/// `n x (kv_heads · head_dim)`, and `segments` lists each sequence's `(first row, rows)`. A row
/// attends to the rows of its own sequence up to itself.
#[derive(Debug, Clone)]
pub struct Attention {
    segments: Arc<Vec<(usize, usize)>>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    /// Attention of `heads` query heads sharing `kv_heads` key/value heads.
    pub fn new(segments: Arc<Vec<(usize, usize)>>, heads: usize, kv_heads: usize, head_dim: usize) -> Self {
        Attention {
            segments,
            heads,
            kv_heads,
            head_dim,
        }
    }

    /// The attention output, `n x (heads · head_dim)`.
    pub fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, self.clone())
    }

    fn check(&self, n: usize, q_cols: usize, kv_cols: usize) -> Result<()> {
        if self.kv_heads == 0 || !self.heads.is_multiple_of(self.kv_heads) {
            bail!("attention: {} heads over {} key/value heads", self.heads, self.kv_heads);
        }
        if q_cols != self.heads * self.head_dim || kv_cols != self.kv_heads * self.head_dim {
            bail!("attention: query rows of {q_cols}, key/value rows of {kv_cols} features");
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

    /// Writes the causal softmax of `q_h · k_gᵀ · scale` for one segment into `p` (`len x len`).
    fn probabilities(&self, q: &[f32], k: &[f32], slot: Slot, p: &mut [f32]) {
        let Slot { first, len, h, g } = slot;
        let (d, qc, kc) = (self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let scale = 1.0 / (d as f32).sqrt();
        for (r0, r1) in causal_blocks(len) {
            product(
                ViewMut::rows(p, r0 * len, r1 - r0, r1, len),
                View::rows(q, (first + r0) * qc + h * d, r1 - r0, d, qc),
                View::rows(k, first * kc + g * d, r1, d, kc).t(),
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

    /// The gradients of `q`, `k` and `v` for the output gradient `dout`.
    fn backward(
        &self,
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        dout: &[f32],
        n: usize,
    ) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
        let (d, qc, kc) = (self.head_dim, self.heads * self.head_dim, self.kv_heads * self.head_dim);
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (d as f32).sqrt();
        // One task per (segment, query head), each with its own dk/dv rows, summed per key/value
        // head afterwards: nine tasks balance over the threads where three (one per key/value
        // head) did not.
        let tasks: Vec<(usize, usize, usize)> = self
            .segments
            .iter()
            .flat_map(|&(first, len)| (0..self.heads).map(move |h| (first, len, h)))
            .collect();
        let results: Vec<HeadGradients> = tasks
            .into_par_iter()
            .map_init(Scores::default, |scores, (first, len, h)| {
                let g = h / group;
                let (p, dp) = scores.pair(len);
                let mut dq = vec![0f32; len * d];
                let mut dk = vec![0f32; len * d];
                let mut dv = vec![0f32; len * d];
                self.probabilities(q, k, Slot { first, len, h, g }, p);
                for (r0, r1) in causal_blocks(len) {
                    // dP = dO_h · V_gᵀ
                    product(
                        ViewMut::rows(dp, r0 * len, r1 - r0, r1, len),
                        View::rows(dout, (first + r0) * qc + h * d, r1 - r0, d, qc),
                        View::rows(v, first * kc + g * d, r1, d, kc).t(),
                        1.0,
                        false,
                        1,
                    );
                }
                // dS = P ∘ (dP − rowsum(dO ∘ O)) · scale
                for i in 0..len {
                    let row = (first + i) * qc + h * d;
                    let delta: f32 = dout[row..row + d]
                        .iter()
                        .zip(&out[row..row + d])
                        .map(|(a, b)| a * b)
                        .sum();
                    let (pr, dr) = (&p[i * len..i * len + i + 1], &mut dp[i * len..(i + 1) * len]);
                    for (x, &pv) in dr.iter_mut().zip(pr) {
                        *x = pv * (*x - delta) * scale;
                    }
                    dr[i + 1..].fill(0.0);
                }
                for (r0, r1) in causal_blocks(len) {
                    // dQ_h = dS · K_g
                    product(
                        ViewMut::rows(&mut dq, r0 * d, r1 - r0, d, d),
                        View::rows(dp, r0 * len, r1 - r0, r1, len),
                        View::rows(k, first * kc + g * d, r1, d, kc),
                        1.0,
                        false,
                        1,
                    );
                    // dK_g += dSᵀ · Q_h ; dV_g += Pᵀ · dO_h
                    product(
                        ViewMut::rows(&mut dk, 0, r1, d, d),
                        View::rows(dp, r0 * len, r1 - r0, r1, len).t(),
                        View::rows(q, (first + r0) * qc + h * d, r1 - r0, d, qc),
                        1.0,
                        true,
                        1,
                    );
                    product(
                        ViewMut::rows(&mut dv, 0, r1, d, d),
                        View::rows(p, r0 * len, r1 - r0, r1, len).t(),
                        View::rows(dout, (first + r0) * qc + h * d, r1 - r0, d, qc),
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
            })
            .collect();
        let (mut dq, mut dk, mut dv) = (vec![0f32; n * qc], vec![0f32; n * kc], vec![0f32; n * kc]);
        for HeadGradients {
            first,
            len,
            h,
            dq: q_part,
            dk: k_part,
            dv: v_part,
        } in results
        {
            let g = h / group;
            for i in 0..len {
                let row = first + i;
                dq[row * qc + h * d..row * qc + (h + 1) * d].copy_from_slice(&q_part[i * d..(i + 1) * d]);
                let (k_row, v_row) = (&k_part[i * d..(i + 1) * d], &v_part[i * d..(i + 1) * d]);
                for (acc, x) in dk[row * kc + g * d..row * kc + (g + 1) * d].iter_mut().zip(k_row) {
                    *acc += x;
                }
                for (acc, x) in dv[row * kc + g * d..row * kc + (g + 1) * d].iter_mut().zip(v_row) {
                    *acc += x;
                }
            }
        }
        (dq, dk, dv)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "causal-attention"
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
        let (q, k, v) = (
            contiguous(s1, l1, self.name())?,
            contiguous(s2, l2, self.name())?,
            contiguous(s3, l3, self.name())?,
        );
        let (n, qc) = matrix_dims(l1, self.name())?;
        let (kn, kc) = matrix_dims(l2, self.name())?;
        if kn != n || l3.dims() != l2.dims() {
            bail!("attention: q {:?}, k {:?}, v {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        self.check(n, qc, kc)?;
        let d = self.head_dim;
        let group = self.heads / self.kv_heads;
        let tasks: Vec<(usize, usize, usize)> = self
            .segments
            .iter()
            .flat_map(|&(first, len)| (0..self.heads).map(move |h| (first, len, h)))
            .collect();
        let parts: Vec<(usize, usize, usize, Vec<f32>)> = tasks
            .into_par_iter()
            .map_init(Scores::default, |scores, (first, len, h)| {
                let g = h / group;
                let p = scores.probabilities(len);
                self.probabilities(q, k, Slot { first, len, h, g }, p);
                let mut o = vec![0f32; len * d];
                for (r0, r1) in causal_blocks(len) {
                    product(
                        ViewMut::rows(&mut o, r0 * d, r1 - r0, d, d),
                        View::rows(p, r0 * len, r1 - r0, r1, len),
                        View::rows(v, first * kc + g * d, r1, d, kc),
                        1.0,
                        false,
                        1,
                    );
                }
                (first, len, h, o)
            })
            .collect();
        let mut out = vec![0f32; n * qc];
        for (first, len, h, o) in parts {
            for i in 0..len {
                out[(first + i) * qc + h * d..(first + i) * qc + (h + 1) * d].copy_from_slice(&o[i * d..(i + 1) * d]);
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((n, qc))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (n, qc) = q.dims2()?;
        let kc = k.dims2()?.1;
        let grad = grad.contiguous()?;
        let held = [
            Held::new(q),
            Held::new(k),
            Held::new(v),
            Held::new(out),
            Held::new(&grad),
        ];
        let name = self.name();
        let (qv, kv, vv, ov, gv) = (
            held[0].values(name)?,
            held[1].values(name)?,
            held[2].values(name)?,
            held[3].values(name)?,
            held[4].values(name)?,
        );
        if qv.len() != n * qc || kv.len() != n * kc || vv.len() != n * kc || ov.len() != n * qc || gv.len() != n * qc {
            bail!("{name}: saved tensors and gradient disagree with q {n} x {qc}, k/v {n} x {kc}");
        }
        let (dq, dk, dv) = self.backward(qv, kv, vv, ov, gv, n);
        let device = q.device();
        Ok((
            Some(Tensor::from_vec(dq, (n, qc), device)?),
            Some(Tensor::from_vec(dk, (n, kc), device)?),
            Some(Tensor::from_vec(dv, (n, kc), device)?),
        ))
    }
}
