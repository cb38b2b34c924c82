//! The loss: cross-entropy over the vocabulary, summed over the rows that carry a label.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, bail};
use engram_shared::generation::kernels::exp_in_place;
use rayon::prelude::*;

use super::{Held, contiguous, matrix_dims};

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
