//! AdamW whose state can be saved and restored.
//!
//! The update is candle_nn's `AdamW` to the last operation (decoupled weight decay, bias-corrected
//! moments; a test checks the two give the same bits), but candle_nn keeps its moments and step
//! count private, and a run resumed from a checkpoint must continue with exactly the optimizer
//! state it stopped with to end with the same adapter as a run never interrupted.

use candle_core::{Result, Tensor, Var};
use candle_nn::ParamsAdamW;

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
