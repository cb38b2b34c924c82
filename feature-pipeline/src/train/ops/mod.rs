//! The training forward pass's operations that candle's autograd cannot run as they are.
//!
//! candle 0.11's fused `rms_norm`, `softmax_last_dim` and `rope*` have no backward and silently cut
//! gradients (upstream issues 2168, 3568, 3569), and its matmul backward also computes the weight's
//! gradient, which a frozen projection never needs (a third of the work and a weight-sized buffer
//! each time). Each op here is a candle custom op with its own backward, so `Tensor::backward`
//! still drives the whole pass:
//!
//! - [`Frozen::forward`] (`product.rs`): `x · Wᵀ` for a frozen weight; the backward returns only
//!   `g · W`;
//! - [`AdaptedProduct`] (`product.rs`): the same with LoRA adapters added, keeping only its output;
//!   one op can also run several projections of the same input side by side (Q, K and V; gate and
//!   up), each with its own adapter;
//! - [`SwiGlu`] (`swiglu.rs`): the MLP's `silu(gate) ∘ up`, from the gate and up projections side
//!   by side;
//! - [`CrossEntropy`] (`cross_entropy.rs`): the loss over the vocabulary, keeping only the logits;
//! - [`RmsNorm`] (`rms_norm.rs`): RMS norm with a frozen scale;
//! - [`Attention`] (`attention.rs`): rotary embedding and causal attention with grouped key/value
//!   heads over packed sequences (several examples back to back, none attending to another), from
//!   the Q, K and V projections side by side. It keeps nothing but its input and output: the
//!   backward recomputes the rotation and the probabilities, as flash attention does.
//!
//! Why side by side: candle's autograd gives every tensor that receives a gradient a zero tensor
//! and sums each contribution into it, on the thread that drives the step. Three projections of
//! one normed input are three contributions to sum, and three more tensors (and two rotations) on
//! the way to attention; one op over the stacked weights is one of each.
//!
//! They run on the CPU (gemm, as the inference kernels). On another device [`Device::is_cpu`] is
//! false and the model uses candle's own differentiable forms instead (`model.rs`).
//!
//! [`Device::is_cpu`]: candle_core::Device::is_cpu

mod attention;
mod cross_entropy;
mod product;
mod rms_norm;
mod swiglu;

pub use attention::{Attention, RopeTable};
pub use cross_entropy::CrossEntropy;
pub use product::{AdaptedProduct, Frozen};
pub use rms_norm::RmsNorm;
pub use swiglu::SwiGlu;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef, Tensor, bail};

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
