//! The training forward pass of a llama-family model with LoRA adapters.
//!
//! The same computation as the inference path (`engram_shared::generation::llama`): embedding,
//! then per layer RMS norm → Q, K, V → interleaved RoPE → causal attention with grouped key/value
//! heads → output projection → residual, RMS norm → SiLU-gated MLP → residual; a final RMS norm and
//! the output projection. Here every projection also adds its adapter's update, and the pass runs
//! over a [`Batch`] of packed examples (back to back, each attending only to itself).
//!
//! The 49152-wide output projection runs only at the rows whose next token is a label (the
//! answer's), which is where the loss is; prompt rows never reach it.
//!
//! Two forms of each operation: engram's custom ops with their own backward (`ops/`, the CPU
//! path, the default) and candle's differentiable built-ins ([`Path::Candle`]: the path on other
//! devices, and the reference the tests compare the custom ops with).

use std::sync::{Arc, OnceLock};

use candle_core::{D, DType, Device, Result, Tensor, bail};
use engram_shared::generation::llama::{Part, Shape};

use super::lora::{Adapter, Projection};
use super::ops::{AdaptedProduct, Attention, CrossEntropy, Frozen, RmsNorm, RopeTable, SwiGlu};

/// A model's tensors by part (a `Checkpoint`'s), matrices in GGUF's row order.
pub type Tensors = std::collections::BTreeMap<Part, Tensor>;

fn get(tensors: &Tensors, part: Part) -> Result<&Tensor> {
    tensors
        .get(&part)
        .ok_or_else(|| candle_core::Error::Msg(format!("the model lacks {}", part.gguf_name())))
}

/// A matrix's values, rows and columns.
fn matrix(tensors: &Tensors, part: Part) -> Result<(Vec<f32>, usize, usize)> {
    let tensor = get(tensors, part)?;
    let (rows, cols) = tensor.dims2()?;
    Ok((tensor.flatten_all()?.to_vec1::<f32>()?, rows, cols))
}

/// Which implementation of the operations a forward pass uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// engram's custom ops (CPU).
    Custom,
    /// candle's built-in differentiable operations (any device).
    Candle,
}

/// A frozen matrix and, once needed, its copy as a tensor on the model's device.
struct Weight {
    frozen: Frozen,
    tensor: OnceLock<Tensor>,
}

impl Weight {
    fn new(tensors: &Tensors, part: Part) -> Result<Self> {
        let (values, rows, cols) = matrix(tensors, part)?;
        Ok(Weight::of(Frozen::new(values, rows, cols)?))
    }

    fn of(frozen: Frozen) -> Self {
        Weight {
            frozen,
            tensor: OnceLock::new(),
        }
    }

    fn tensor(&self, device: &Device) -> Result<&Tensor> {
        if let Some(t) = self.tensor.get() {
            return Ok(t);
        }
        let t = Tensor::from_slice(self.frozen.data(), (self.frozen.rows(), self.frozen.cols()), device)?;
        Ok(self.tensor.get_or_init(|| t))
    }

    fn forward(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        match path {
            Path::Custom => self.frozen.forward(x),
            Path::Candle => x.matmul(&self.tensor(x.device())?.t()?),
        }
    }
}

struct Norm {
    norm: RmsNorm,
}

impl Norm {
    fn new(tensors: &Tensors, part: Part, eps: f32) -> Result<Self> {
        let weight = get(tensors, part)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(Norm {
            norm: RmsNorm::new(weight, eps),
        })
    }

    fn forward(&self, x: &Tensor, path: Path) -> Result<Tensor> {
        match path {
            Path::Custom => self.norm.forward(x),
            Path::Candle => {
                let weight = Tensor::from_slice(self.norm.weight(), self.norm.weight().len(), x.device())?;
                let r = (x.sqr()?.mean_keepdim(D::Minus1)? + self.norm.eps() as f64)?
                    .sqrt()?
                    .recip()?;
                x.broadcast_mul(&r)?.broadcast_mul(&weight)
            }
        }
    }
}

/// Projections of one input, run side by side as one product over their stacked weights.
struct Stacked {
    members: &'static [Projection],
    weight: Frozen,
}

/// Q, K and V (of the attention's normed input).
const QKV: &[Projection] = &[Projection::Q, Projection::K, Projection::V];
/// Gate and up (of the MLP's normed input).
const GATE_UP: &[Projection] = &[Projection::Gate, Projection::Up];

struct Layer {
    attn_norm: Norm,
    /// All seven, each a view of its rows where it is part of a stack.
    projections: Vec<(Projection, Weight)>,
    qkv: Stacked,
    gate_up: Stacked,
    ffn_norm: Norm,
}

impl Layer {
    fn new(tensors: &Tensors, i: usize, eps: f32) -> Result<Self> {
        let mut projections = Vec::with_capacity(7);
        let mut stack = |members: &'static [Projection]| -> Result<Stacked> {
            let mut parts = Vec::with_capacity(members.len());
            let mut width = None;
            for &p in members {
                let (values, rows, cols) = matrix(tensors, p.part(i))?;
                if width.is_some_and(|w| w != cols) {
                    bail!(
                        "{} takes {cols} inputs, unlike the projections beside it",
                        p.part(i).gguf_name()
                    );
                }
                width = Some(cols);
                parts.push((values, rows));
            }
            let (weight, views) = Frozen::stack(parts, width.unwrap_or(0))?;
            projections.extend(members.iter().copied().zip(views.into_iter().map(Weight::of)));
            Ok(Stacked { members, weight })
        };
        let qkv = stack(QKV)?;
        let gate_up = stack(GATE_UP)?;
        for p in [Projection::O, Projection::Down] {
            projections.push((p, Weight::new(tensors, p.part(i))?));
        }
        Ok(Layer {
            attn_norm: Norm::new(tensors, Part::AttnNorm(i), eps)?,
            projections,
            qkv,
            gate_up,
            ffn_norm: Norm::new(tensors, Part::FfnNorm(i), eps)?,
        })
    }

    fn weight(&self, projection: Projection) -> &Weight {
        &self
            .projections
            .iter()
            .find(|(p, _)| *p == projection)
            .expect("every layer holds all seven projections")
            .1
    }
}

/// The frozen base model.
pub struct Base {
    shape: Shape,
    embedding: Weight,
    layers: Vec<Layer>,
    norm: Norm,
    output: Option<Weight>,
    rope: Arc<RopeTable>,
    device: Device,
}

/// Examples packed back to back for one forward pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Every example's tokens, concatenated.
    pub tokens: Vec<u32>,
    /// Each token's position inside its example.
    pub positions: Vec<usize>,
    /// Each example's `(first row, rows)`.
    pub segments: Vec<(usize, usize)>,
    /// The rows whose next token is a label, and that label.
    pub targets: Vec<(usize, u32)>,
}

impl Batch {
    /// Appends an example whose labels are `tokens[prompt..]`.
    pub fn push(&mut self, tokens: &[u32], prompt: usize) {
        let first = self.tokens.len();
        self.tokens.extend_from_slice(tokens);
        self.positions.extend(0..tokens.len());
        self.segments.push((first, tokens.len()));
        for (i, &label) in tokens.iter().enumerate().skip(prompt.max(1)) {
            self.targets.push((first + i - 1, label));
        }
    }

    /// Label tokens.
    pub fn labels(&self) -> usize {
        self.targets.len()
    }

    /// Each example as a batch of its own: a forward pass over one holds one example's
    /// activations, so memory is bounded by the longest example rather than by the batch.
    pub fn examples(&self) -> Vec<Batch> {
        self.segments
            .iter()
            .map(|&(first, len)| {
                let mut one = Batch::default();
                let labelled: Vec<(usize, u32)> = self
                    .targets
                    .iter()
                    .filter(|(row, _)| (first..first + len).contains(row))
                    .map(|&(row, label)| (row - first, label))
                    .collect();
                one.tokens = self.tokens[first..first + len].to_vec();
                one.positions = self.positions[first..first + len].to_vec();
                one.segments = vec![(0, len)];
                one.targets = labelled;
                one
            })
            .collect()
    }
}

impl Base {
    /// The frozen weights of a model of `shape`, for sequences of at most `max_positions` tokens.
    pub fn new(shape: Shape, tensors: &Tensors, max_positions: usize, device: &Device) -> Result<Self> {
        if shape.heads == 0 || shape.kv_heads == 0 || !shape.heads.is_multiple_of(shape.kv_heads) {
            bail!(
                "{} heads over {} key/value heads is not a llama shape",
                shape.heads,
                shape.kv_heads
            );
        }
        let layers = (0..shape.layers)
            .map(|i| Layer::new(tensors, i, shape.eps))
            .collect::<Result<Vec<_>>>()?;
        let output = match tensors.contains_key(&Part::Output) {
            true => Some(Weight::new(tensors, Part::Output)?),
            false => None,
        };
        let head_dim = shape.dim / shape.heads;
        Ok(Base {
            shape,
            embedding: Weight::new(tensors, Part::Embedding)?,
            layers,
            norm: Norm::new(tensors, Part::Norm, shape.eps)?,
            output,
            rope: Arc::new(RopeTable::new(head_dim, max_positions, shape.rope_base)),
            device: device.clone(),
        })
    }

    /// The model's shape.
    pub fn shape(&self) -> Shape {
        self.shape
    }

    /// `(out, in)` of a projection.
    pub fn projection_shape(&self, projection: Projection) -> (usize, usize) {
        let w = &self.layers[0].weight(projection).frozen;
        (w.rows(), w.cols())
    }

    /// The default path for the device: custom ops on the CPU, candle's forms elsewhere.
    pub fn path(&self) -> Path {
        if self.device.is_cpu() {
            Path::Custom
        } else {
            Path::Candle
        }
    }

    /// The summed cross-entropy of the batch's labels (a scalar; divide by the labels counted).
    pub fn loss_sum(&self, adapter: &Adapter, batch: &Batch, path: Path, training: bool) -> Result<Tensor> {
        let logits = self.logits(adapter, batch, path, training)?;
        let labels: Vec<u32> = batch.targets.iter().map(|&(_, t)| t).collect();
        if path == Path::Custom {
            return CrossEntropy::sum(&logits, labels);
        }
        let count = labels.len();
        let labels = Tensor::from_vec(labels, count, &self.device)?;
        candle_nn::loss::cross_entropy(&logits, &labels)? * count as f64
    }

    /// Logits at the batch's target rows (`targets x vocab`).
    pub fn logits(&self, adapter: &Adapter, batch: &Batch, path: Path, training: bool) -> Result<Tensor> {
        let n = batch.tokens.len();
        if n == 0 || batch.targets.is_empty() {
            bail!("a batch needs tokens and at least one label");
        }
        if let Some(&p) = batch.positions.iter().max()
            && p >= self.rope.positions()
        {
            bail!(
                "an example of {} tokens is longer than the {} positions the run allows",
                p + 1,
                self.rope.positions()
            );
        }
        let Shape {
            dim, heads, kv_heads, ..
        } = self.shape;
        let head_dim = dim / heads;
        let vocab = self.embedding.frozen.rows();
        let table = self.embedding.frozen.data();
        let mut x = Vec::with_capacity(n * dim);
        for &t in &batch.tokens {
            let t = t as usize;
            if t >= vocab {
                bail!("token id {t} is outside the vocabulary of {vocab}");
            }
            x.extend_from_slice(&table[t * dim..(t + 1) * dim]);
        }
        let mut x = Tensor::from_vec(x, (n, dim), &self.device)?;
        let positions = Arc::new(batch.positions.clone());
        let segments = Arc::new(batch.segments.clone());
        let attention = Attention::new(
            segments.clone(),
            positions,
            self.rope.clone(),
            heads,
            kv_heads,
            head_dim,
        );
        let candle_rope = match path {
            Path::Candle => Some(self.candle_rope_tables(&batch.positions)?),
            Path::Custom => None,
        };
        // The adapter's own ops run only without dropout (it drops the adapter's input alone).
        let fused = path == Path::Custom && !(training && adapter.config.dropout > 0.0);
        let scale = adapter.config.scale() as f32;
        // Only the target rows' outputs are read, so the last layer's attention output projection
        // and MLP (and their backward) run on those rows alone.
        let rows: Vec<u32> = batch.targets.iter().map(|&(row, _)| row as u32).collect();
        let rows = Tensor::from_vec(rows, batch.targets.len(), &self.device)?;
        let last = self.layers.len().saturating_sub(1);
        for (i, layer) in self.layers.iter().enumerate() {
            let pairs = adapter.layers.get(i);
            let project = |projection: Projection, input: &Tensor| -> Result<Tensor> {
                let weight = layer.weight(projection);
                if fused && let Some(pair) = pairs.and_then(|p| p.get(&projection)) {
                    return AdaptedProduct::new(weight.frozen.clone(), scale).forward(
                        input,
                        pair.a.as_tensor(),
                        pair.b.as_tensor(),
                    );
                }
                let y = weight.forward(input, path)?;
                match adapter.delta(i, projection, input, training)? {
                    Some(delta) => y + delta,
                    None => Ok(y),
                }
            };
            // A stack's projections side by side (custom path): one op when every member is
            // adapted (or none is), their outputs concatenated otherwise.
            let side_by_side = |stack: &Stacked, input: &Tensor| -> Result<Tensor> {
                let members: Vec<_> = stack
                    .members
                    .iter()
                    .filter_map(|p| pairs.and_then(|l| l.get(p)))
                    .collect();
                if members.is_empty() {
                    return stack.weight.forward(input);
                }
                if fused && members.len() == stack.members.len() {
                    let a: Vec<&Tensor> = members.iter().map(|pair| pair.a.as_tensor()).collect();
                    let b: Vec<&Tensor> = members.iter().map(|pair| pair.b.as_tensor()).collect();
                    let outputs = stack.members.iter().map(|&p| layer.weight(p).frozen.rows()).collect();
                    return AdaptedProduct::stacked(stack.weight.clone(), scale, outputs)?.forward(
                        input,
                        &Tensor::cat(&a, 0)?,
                        &Tensor::cat(&b, 0)?,
                    );
                }
                let parts = stack
                    .members
                    .iter()
                    .map(|&p| project(p, input))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 1)
            };
            let h = layer.attn_norm.forward(&x, path)?;
            let a = match (path, &candle_rope) {
                (Path::Custom, _) => attention.forward(&side_by_side(&layer.qkv, &h)?)?,
                (Path::Candle, Some((cos, sin))) => {
                    let q = candle_rotate(&project(Projection::Q, &h)?, cos, sin, head_dim)?;
                    let k = candle_rotate(&project(Projection::K, &h)?, cos, sin, head_dim)?;
                    let v = project(Projection::V, &h)?;
                    candle_attention(&q, &k, &v, &segments, heads, kv_heads, head_dim)?
                }
                (Path::Candle, None) => unreachable!("candle path tables are built above"),
            };
            let a = if i == last {
                x = x.index_select(&rows, 0)?;
                a.index_select(&rows, 0)?
            } else {
                a
            };
            x = (x + project(Projection::O, &a)?)?;
            let h = layer.ffn_norm.forward(&x, path)?;
            let m = match path {
                Path::Custom => SwiGlu::forward(&side_by_side(&layer.gate_up, &h)?)?,
                Path::Candle => (project(Projection::Gate, &h)?.silu()? * project(Projection::Up, &h)?)?,
            };
            x = (x + project(Projection::Down, &m)?)?;
        }
        let selected = match self.layers.is_empty() {
            true => x.index_select(&rows, 0)?,
            false => x,
        };
        let normed = self.norm.forward(&selected, path)?;
        self.output.as_ref().unwrap_or(&self.embedding).forward(&normed, path)
    }

    /// `cos` and `sin` for each row's position, `n x 1 x half`.
    fn candle_rope_tables(&self, positions: &[usize]) -> Result<(Tensor, Tensor)> {
        let (cos, sin) = self.rope.tensors(&self.device)?;
        let index: Vec<u32> = positions.iter().map(|&p| p as u32).collect();
        let index = Tensor::from_vec(index, positions.len(), &self.device)?;
        Ok((
            cos.index_select(&index, 0)?.unsqueeze(1)?,
            sin.index_select(&index, 0)?.unsqueeze(1)?,
        ))
    }
}

/// Interleaved RoPE with candle's differentiable operations.
fn candle_rotate(x: &Tensor, cos: &Tensor, sin: &Tensor, head_dim: usize) -> Result<Tensor> {
    let (n, features) = x.dims2()?;
    let heads = features / head_dim;
    let pairs = x.reshape((n, heads, head_dim / 2, 2))?;
    let a = pairs.narrow(3, 0, 1)?.squeeze(3)?;
    let b = pairs.narrow(3, 1, 1)?.squeeze(3)?;
    let ra = (a.broadcast_mul(cos)? - b.broadcast_mul(sin)?)?;
    let rb = (a.broadcast_mul(sin)? + b.broadcast_mul(cos)?)?;
    Tensor::stack(&[ra, rb], 3)?.reshape((n, features))
}

/// Causal grouped-query attention per segment with candle's differentiable operations.
fn candle_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[(usize, usize)],
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
) -> Result<Tensor> {
    let group = heads / kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outputs = Vec::with_capacity(segments.len());
    for &(first, len) in segments {
        let split = |t: &Tensor, h: usize| -> Result<Tensor> {
            t.narrow(0, first, len)?
                .reshape((len, h, head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let qs = split(q, heads)?;
        let expand = |t: Tensor| -> Result<Tensor> {
            t.unsqueeze(1)?
                .broadcast_as((kv_heads, group, len, head_dim))?
                .reshape((heads, len, head_dim))
        };
        let ks = expand(split(k, kv_heads)?)?;
        let vs = expand(split(v, kv_heads)?)?;
        let scores = (qs.matmul(&ks.t()?)? * scale)?;
        let mask: Vec<f32> = (0..len)
            .flat_map(|i| (0..len).map(move |j| if j <= i { 0.0 } else { f32::NEG_INFINITY }))
            .collect();
        let mask = Tensor::from_vec(mask, (len, len), q.device())?;
        let probabilities = candle_nn::ops::softmax(&scores.broadcast_add(&mask)?, D::Minus1)?;
        let out = probabilities.matmul(&vs)?;
        outputs.push(out.transpose(0, 1)?.reshape((len, heads * head_dim))?);
    }
    Tensor::cat(&outputs, 0)?.to_dtype(DType::F32)
}
