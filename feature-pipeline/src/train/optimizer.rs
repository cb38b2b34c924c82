//! AdamW whose state can be saved and restored.
//!
//! The update is candle_nn's `AdamW` to the last operation (decoupled weight decay, bias-corrected
//! moments; a test checks the two give the same bits), but candle_nn keeps its moments and step
//! count private, and a run resumed from a checkpoint must continue with exactly the optimizer
//! state it stopped with to end with the same adapter as a run never interrupted.

use candle_core::{CpuStorage, Result, Storage, Tensor, Var};
use candle_nn::ParamsAdamW;
use rayon::prelude::*;

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    vars: Vec<Var>,
    first: Vec<Tensor>,
    second: Vec<Tensor>,
    step: usize,
    params: ParamsAdamW,
}

impl AdamW {
    /// Fresh state for `vars`.
    pub fn new(vars: Vec<Var>, params: ParamsAdamW) -> Result<Self> {
        let first = vars.iter().map(|v| v.zeros_like()).collect::<Result<Vec<_>>>()?;
        let second = first.clone();
        Ok(AdamW {
            vars,
            first,
            second,
            step: 0,
            params,
        })
    }

    /// Sets the learning rate of the next steps.
    pub fn set_learning_rate(&mut self, lr: f64) {
        self.params.lr = lr;
    }

    /// Updates each variable with its gradient (`grads[i]` for `vars[i]`; `None` leaves it).
    pub fn step(&mut self, grads: &[Option<Tensor>]) -> Result<()> {
        if grads.len() != self.vars.len() {
            candle_core::bail!("{} gradients for {} variables", grads.len(), self.vars.len());
        }
        self.step += 1;
        let ParamsAdamW {
            lr,
            beta1,
            beta2,
            eps,
            weight_decay,
        } = self.params;
        let scale_m = 1f64 / (1f64 - beta1.powi(self.step as i32));
        let scale_v = 1f64 / (1f64 - beta2.powi(self.step as i32));
        let constants = Constants {
            beta1: beta1 as f32,
            one_minus_beta1: (1.0 - beta1) as f32,
            beta2: beta2 as f32,
            one_minus_beta2: (1.0 - beta2) as f32,
            scale_m: scale_m as f32,
            scale_v: scale_v as f32,
            decay: (1f64 - lr * weight_decay) as f32,
            eps: eps as f32,
            lr: lr as f32,
        };
        let on_cpu = self.vars.iter().all(|v| v.device().is_cpu());
        if on_cpu {
            // One pass per variable, the variables in parallel: composed from candle's operations
            // the update is fourteen single-threaded passes (every adapter matrix is under candle's
            // threshold for parallel element-wise work), each allocating.
            self.vars
                .par_iter()
                .zip(self.first.par_iter_mut().zip(self.second.par_iter_mut()))
                .zip(grads.par_iter())
                .try_for_each(|((var, (m, v)), g)| -> Result<()> {
                    let Some(g) = g else { return Ok(()) };
                    let (next_theta, next_m, next_v) = update(var, g, m, v, &constants)?;
                    let (dims, device) = (var.dims(), var.device());
                    var.set(&Tensor::from_vec(next_theta, dims, device)?)?;
                    *m = Tensor::from_vec(next_m, dims, device)?;
                    *v = Tensor::from_vec(next_v, dims, device)?;
                    Ok(())
                })?;
            return Ok(());
        }
        for (i, grad) in grads.iter().enumerate() {
            let Some(g) = grad else { continue };
            let theta = &self.vars[i];
            let next_m = ((&self.first[i] * beta1)? + (g * (1.0 - beta1))?)?;
            let next_v = ((&self.second[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let m_hat = (&next_m * scale_m)?;
            let v_hat = (&next_v * scale_v)?;
            let next_theta = (theta.as_tensor() * (1f64 - lr * weight_decay))?;
            let adjusted = (m_hat / (v_hat.sqrt()? + eps)?)?;
            let next_theta = (next_theta - (adjusted * lr)?)?;
            self.first[i] = next_m;
            self.second[i] = next_v;
            theta.set(&next_theta)?;
        }
        Ok(())
    }

    /// The moments, in the variables' order: `(first, second)`.
    pub fn moments(&self) -> (&[Tensor], &[Tensor]) {
        (&self.first, &self.second)
    }

    /// Restores the state a checkpoint saved.
    pub fn restore(&mut self, step: usize, first: Vec<Tensor>, second: Vec<Tensor>) -> Result<()> {
        if first.len() != self.vars.len() || second.len() != self.vars.len() {
            candle_core::bail!("the checkpoint's optimizer state does not match the adapter");
        }
        for ((v, m), s) in self.vars.iter().zip(&first).zip(&second) {
            if m.dims() != v.dims() || s.dims() != v.dims() {
                candle_core::bail!("the checkpoint's optimizer moments do not match the adapter's shapes");
            }
        }
        self.step = step;
        self.first = first;
        self.second = second;
        Ok(())
    }
}

/// AdamW's constants for one step, as `f32`: candle casts each scalar to the tensor's type.
struct Constants {
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    scale_m: f32,
    scale_v: f32,
    decay: f32,
    eps: f32,
    lr: f32,
}

/// The f32 values of a contiguous CPU tensor, read in place.
fn with_values<T>(tensor: &Tensor, f: impl FnOnce(&[f32]) -> Result<T>) -> Result<T> {
    let (storage, layout) = tensor.storage_and_layout();
    let (Storage::Cpu(CpuStorage::F32(data)), Some((start, end))) = (&*storage, layout.contiguous_offsets()) else {
        candle_core::bail!("adamw: expected a contiguous f32 tensor on the CPU");
    };
    f(&data[start..end])
}

/// One variable's next values and moments. The same operations as the composed form, in the same
/// order and precision, so the results are the same bits: candle's scalar product is
/// `v * mul + add` (an affine map, here with `add` zero, which is kept: `-0 + 0` is `+0`).
fn update(theta: &Var, g: &Tensor, m: &Tensor, v: &Tensor, c: &Constants) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let affine = |x: f32, mul: f32| x * mul + 0.0;
    let g = g.contiguous()?;
    with_values(theta.as_tensor(), |theta| {
        with_values(&g, |g| {
            with_values(m, |m| {
                with_values(v, |v| {
                    let n = theta.len();
                    if g.len() != n || m.len() != n || v.len() != n {
                        candle_core::bail!("adamw: a gradient or moment does not match its variable");
                    }
                    let (mut next_theta, mut next_m, mut next_v) =
                        (Vec::with_capacity(n), Vec::with_capacity(n), Vec::with_capacity(n));
                    for i in 0..n {
                        let m1 = affine(m[i], c.beta1) + affine(g[i], c.one_minus_beta1);
                        let v1 = affine(v[i], c.beta2) + affine(g[i] * g[i], c.one_minus_beta2);
                        let (m_hat, v_hat) = (affine(m1, c.scale_m), affine(v1, c.scale_v));
                        let decayed = affine(theta[i], c.decay);
                        let adjusted = m_hat / (v_hat.sqrt() * 1.0 + c.eps);
                        next_theta.push(decayed - affine(adjusted, c.lr));
                        next_m.push(m1);
                        next_v.push(v1);
                    }
                    Ok((next_theta, next_m, next_v))
                })
            })
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use candle_nn::Optimizer;

    #[test]
    fn updates_equal_candle_nn_adamw_bit_for_bit() {
        let device = Device::Cpu;
        let init = Tensor::new(&[[0.5f32, -1.5], [2.0, 0.25]], &device).unwrap();
        let ours = Var::from_tensor(&init).unwrap();
        let theirs = Var::from_tensor(&init).unwrap();
        let params = ParamsAdamW {
            lr: 0.01,
            weight_decay: 0.1,
            ..ParamsAdamW::default()
        };
        let mut mine = AdamW::new(vec![ours.clone()], params.clone()).unwrap();
        let mut reference = candle_nn::AdamW::new(vec![theirs.clone()], params).unwrap();
        for step in 0..5 {
            let lr = 0.01 / (step + 1) as f64;
            mine.set_learning_rate(lr);
            reference.set_learning_rate(lr);
            let loss_ours = (ours.as_tensor().sqr().unwrap() * (step as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            let loss_theirs = (theirs.as_tensor().sqr().unwrap() * (step as f64 + 1.0))
                .unwrap()
                .sum_all()
                .unwrap();
            let grads = loss_ours.backward().unwrap();
            mine.step(&[grads.get(ours.as_tensor()).cloned()]).unwrap();
            reference.backward_step(&loss_theirs).unwrap();
        }
        let a = ours.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = theirs.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        assert_ne!(a, init.flatten_all().unwrap().to_vec1::<f32>().unwrap());
    }
}
