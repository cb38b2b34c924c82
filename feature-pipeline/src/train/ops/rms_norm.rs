//! RMS norm with a frozen scale, differentiable in its input (candle's fused `rms_norm` has no
//! backward).

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

use super::{contiguous, matrix_dims};

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
