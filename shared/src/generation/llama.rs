//! A llama-family forward pass over [`kernels::Matrix`]: the model's stored blocks, multiplied with
//! f32 activations (see `kernels/mod.rs` for why), for `WeightFormat::Packed`.
//!
//! The same computation as candle's `quantized_llama` on f32 weights: token embedding, then per layer
//! RMS norm → Q, K, V → interleaved RoPE (ggml's llama convention) → causal attention with grouped
//! key/value heads → output projection → residual, RMS norm → SiLU-gated MLP → residual; a final
//! RMS norm and the output projection (the token embedding when the file ties them). A [`Cache`]
//! holds one generation's keys and values; the weights are shared.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use candle_core::Device;
use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Content;

use super::GenerationError;
use super::kernels::{Activation, Attention, BLOCK, BlockFormat, Kernel, Matrix, PromptAttention, for_each};

type Result<T> = std::result::Result<T, GenerationError>;

struct Layer {
    attn_norm: Vec<f32>,
    q: Matrix,
    k: Matrix,
    v: Matrix,
    o: Matrix,
    ffn_norm: Vec<f32>,
    gate: Matrix,
    up: Matrix,
    down: Matrix,
}

/// The model's weights and shape.
pub struct Llama {
    embedding: Matrix,
    layers: Vec<Layer>,
    norm: Vec<f32>,
    output: Option<Matrix>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
    /// Rotation angles' cos and sin, `positions x head_dim / 2`.
    cos: Vec<f32>,
    sin: Vec<f32>,
    max_positions: usize,
}

/// One generation's keys and values, per layer, `position x kv_dim`.
pub struct Cache {
    keys: Vec<Vec<f32>>,
    values: Vec<Vec<f32>>,
    positions: usize,
}

impl Cache {
    /// Positions held.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// An empty cache with as many layers.
    pub fn empty_like(&self) -> Cache {
        Cache {
            keys: vec![Vec::new(); self.keys.len()],
            values: vec![Vec::new(); self.values.len()],
            positions: 0,
        }
    }

    /// Forgets every position from `positions` on (a prefix stays, to be continued differently).
    pub fn truncate(&mut self, positions: usize) {
        if positions >= self.positions {
            return;
        }
        let row = self.keys.first().map_or(0, |k| k.len() / self.positions.max(1));
        for layer in self.keys.iter_mut().chain(self.values.iter_mut()) {
            layer.truncate(positions * row);
        }
        self.positions = positions;
    }

    /// Makes this cache hold the first `positions` positions of `from`, of the same model.
    pub fn copy_prefix(&mut self, from: &Cache, positions: usize) {
        assert!(
            positions <= from.positions && self.keys.len() == from.keys.len(),
            "a prefix of a cache of the same model"
        );
        let row = from.keys.first().map_or(0, |k| k.len() / from.positions.max(1));
        let layers = self.keys.iter_mut().zip(&from.keys);
        for (to, from) in layers.chain(self.values.iter_mut().zip(&from.values)) {
            to.clear();
            to.extend_from_slice(&from[..positions * row]);
        }
        self.positions = positions;
    }
}

/// The shape of a llama-family model, as its file declares it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Shape {
    /// Transformer blocks.
    pub layers: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention when fewer than `heads`).
    pub kv_heads: usize,
    /// Hidden size.
    pub dim: usize,
    /// RMS norm epsilon.
    pub eps: f32,
    /// RoPE frequency base.
    pub rope_base: f32,
}

/// More layers than any llama-family model has: a header claiming more is damaged.
const MAX_LAYERS: usize = 1024;
/// Wider than any llama-family model.
const MAX_WIDTH: usize = 1 << 16;

impl Shape {
    /// Refuses a shape the forward pass cannot run (it would divide by zero or split heads
    /// unevenly): a damaged or hostile file's header, caught before any weight is read.
    pub fn validate(self) -> Result<Self> {
        let Shape {
            layers,
            heads,
            kv_heads,
            dim,
            eps,
            rope_base,
        } = self;
        let problem = if layers == 0 || heads == 0 || kv_heads == 0 || dim == 0 {
            Some(format!(
                "{layers} layers, {heads} heads, {kv_heads} key/value heads, width {dim}: none may be 0"
            ))
        } else if layers > MAX_LAYERS || heads > dim || dim > MAX_WIDTH {
            // Sizes are allocated from these before the tensors that would contradict them are read.
            Some(format!(
                "{layers} layers of width {dim}: over what any llama has (at most {MAX_LAYERS} layers, width {MAX_WIDTH})"
            ))
        } else if !dim.is_multiple_of(heads) || !(dim / heads).is_multiple_of(2) {
            Some(format!("width {dim} does not split into {heads} heads of an even size"))
        } else if !heads.is_multiple_of(kv_heads) {
            Some(format!(
                "{heads} query heads do not share {kv_heads} key/value heads evenly"
            ))
        } else if !(eps.is_finite() && eps > 0.0 && rope_base.is_finite() && rope_base > 0.0) {
            Some(format!(
                "norm epsilon {eps} and RoPE base {rope_base} must be positive numbers"
            ))
        } else {
            None
        };
        match problem {
            Some(problem) => Err(GenerationError::Format(format!(
                "the model's shape is invalid: {problem}"
            ))),
            None => Ok(self),
        }
    }
}

/// One tensor of the model, named independently of the file format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// Token embedding (`vocab x dim`).
    Embedding,
    /// Layer `i`'s attention RMS norm.
    AttnNorm(usize),
    /// Layer `i`'s query projection (rows in GGUF's interleaved-RoPE order).
    Q(usize),
    /// Layer `i`'s key projection (rows in GGUF's interleaved-RoPE order).
    K(usize),
    /// Layer `i`'s value projection.
    V(usize),
    /// Layer `i`'s attention output projection.
    O(usize),
    /// Layer `i`'s MLP RMS norm.
    FfnNorm(usize),
    /// Layer `i`'s MLP gate projection.
    Gate(usize),
    /// Layer `i`'s MLP up projection.
    Up(usize),
    /// Layer `i`'s MLP down projection.
    Down(usize),
    /// The final RMS norm.
    Norm,
    /// The output projection (absent when tied to the embedding).
    Output,
}

impl Part {
    /// Every tensor of a model with `layers` blocks, the output projection last.
    pub fn all(layers: usize) -> Vec<Part> {
        let mut parts = vec![Part::Embedding];
        for i in 0..layers {
            parts.extend([
                Part::AttnNorm(i),
                Part::Q(i),
                Part::K(i),
                Part::V(i),
                Part::O(i),
                Part::FfnNorm(i),
                Part::Gate(i),
                Part::Up(i),
                Part::Down(i),
            ]);
        }
        parts.extend([Part::Norm, Part::Output]);
        parts
    }

    /// The tensor's name in a GGUF file.
    pub fn gguf_name(self) -> String {
        let block = |i: usize, part: &str| format!("blk.{i}.{part}.weight");
        match self {
            Part::Embedding => "token_embd.weight".into(),
            Part::AttnNorm(i) => block(i, "attn_norm"),
            Part::Q(i) => block(i, "attn_q"),
            Part::K(i) => block(i, "attn_k"),
            Part::V(i) => block(i, "attn_v"),
            Part::O(i) => block(i, "attn_output"),
            Part::FfnNorm(i) => block(i, "ffn_norm"),
            Part::Gate(i) => block(i, "ffn_gate"),
            Part::Up(i) => block(i, "ffn_up"),
            Part::Down(i) => block(i, "ffn_down"),
            Part::Norm => "output_norm.weight".into(),
            Part::Output => "output.weight".into(),
        }
    }

    /// The tensor's name in a transformers checkpoint (`LlamaForCausalLM`).
    pub fn hf_name(self) -> String {
        let layer = |i: usize, part: &str| format!("model.layers.{i}.{part}.weight");
        match self {
            Part::Embedding => "model.embed_tokens.weight".into(),
            Part::AttnNorm(i) => layer(i, "input_layernorm"),
            Part::Q(i) => layer(i, "self_attn.q_proj"),
            Part::K(i) => layer(i, "self_attn.k_proj"),
            Part::V(i) => layer(i, "self_attn.v_proj"),
            Part::O(i) => layer(i, "self_attn.o_proj"),
            Part::FfnNorm(i) => layer(i, "post_attention_layernorm"),
            Part::Gate(i) => layer(i, "mlp.gate_proj"),
            Part::Up(i) => layer(i, "mlp.up_proj"),
            Part::Down(i) => layer(i, "mlp.down_proj"),
            Part::Norm => "model.norm.weight".into(),
            Part::Output => "lm_head.weight".into(),
        }
    }

    /// Whether the part is a vector (a norm's weight) rather than a matrix.
    pub fn is_vector(self) -> bool {
        matches!(self, Part::AttnNorm(_) | Part::FfnNorm(_) | Part::Norm)
    }
}

/// Where a model's tensors come from: a GGUF file or an HF-layout directory.
pub trait Source {
    /// Whether the model has `part` (only [`Part::Output`] may be missing: tied to the embedding).
    fn has(&self, part: Part) -> bool;
    /// A matrix, in the layout the file keeps it in where the kernels run that layout.
    fn matrix(&mut self, part: Part) -> Result<Matrix>;
    /// A vector, as f32.
    fn vector(&mut self, part: Part) -> Result<Vec<f32>>;
}

fn metadata_u32(content: &Content, key: &str) -> Result<usize> {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_u32().ok())
        .map(|v| v as usize)
        .ok_or_else(|| GenerationError::Format(format!("the GGUF lacks {key}")))
}

fn metadata_f32(content: &Content, key: &str, default: f32) -> f32 {
    content
        .metadata
        .get(key)
        .and_then(|v| v.to_f32().ok())
        .unwrap_or(default)
}

/// The shape a llama-family GGUF declares.
pub fn gguf_shape(content: &Content) -> Result<Shape> {
    let heads = metadata_u32(content, "llama.attention.head_count")?;
    Shape {
        layers: metadata_u32(content, "llama.block_count")?,
        heads,
        kv_heads: metadata_u32(content, "llama.attention.head_count_kv").unwrap_or(heads),
        dim: metadata_u32(content, "llama.embedding_length")?,
        eps: metadata_f32(content, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_base: metadata_f32(content, "llama.rope.freq_base", 10_000.0),
    }
    .validate()
}

/// A GGUF file's tensors: Q4_1 and Q8_0 blocks as stored, anything else dequantized by candle.
pub struct GgufSource<'a> {
    /// The parsed header.
    pub content: &'a Content,
    /// The file it came from.
    pub file: &'a mut File,
}

impl Source for GgufSource<'_> {
    fn has(&self, part: Part) -> bool {
        self.content.tensor_infos.contains_key(&part.gguf_name())
    }

    fn matrix(&mut self, part: Part) -> Result<Matrix> {
        let name = part.gguf_name();
        let (content, file) = (self.content, &mut *self.file);
        let info = content
            .tensor_infos
            .get(&name)
            .ok_or_else(|| GenerationError::Format(format!("the GGUF lacks tensor {name}")))?;
        let dims = info.shape.dims();
        let (rows, cols) = match dims {
            [rows, cols] => (*rows, *cols),
            _ => return Err(GenerationError::Format(format!("{name} is not a matrix: {dims:?}"))),
        };
        let raw = |bytes: usize, file: &mut File| -> Result<Vec<u8>> {
            let mut data = vec![0u8; bytes];
            file.seek(SeekFrom::Start(content.tensor_data_offset + info.offset))
                .and_then(|_| file.read_exact(&mut data))
                .map_err(|e| GenerationError::Format(format!("cannot read {name}: {e}")))?;
            Ok(data)
        };
        let format = match info.ggml_dtype {
            GgmlDType::Q4_1 => Some(BlockFormat::Q4_1),
            GgmlDType::Q8_0 => Some(BlockFormat::Q8_0),
            _ => None,
        };
        Ok(match format {
            Some(format) if cols % BLOCK == 0 => {
                let data = raw(rows * cols / BLOCK * format.ggml_block_bytes(), file)?;
                Matrix::from_ggml(format, rows, cols, &data)
                    .map_err(|e| GenerationError::Format(format!("{name}: {e}")))?
            }
            _ => {
                // Any other type: dequantized once, exactly, by candle.
                let tensor = content.tensor(file, &name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
                Matrix::F32 {
                    rows,
                    cols,
                    data: tensor.flatten_all()?.to_vec1::<f32>()?,
                }
            }
        })
    }

    fn vector(&mut self, part: Part) -> Result<Vec<f32>> {
        let tensor = self
            .content
            .tensor(self.file, &part.gguf_name(), &Device::Cpu)?
            .dequantize(&Device::Cpu)?;
        Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// Refuses a model whose tensors do not fit `shape` (a truncated or mislabelled checkpoint) before
/// it can index out of bounds while generating.
fn check_shapes(
    shape: &Shape,
    embedding: &Matrix,
    layers: &[Layer],
    norm: &[f32],
    output: Option<&Matrix>,
) -> Result<()> {
    let dim = shape.dim;
    let kv_dim = dim / shape.heads * shape.kv_heads;
    let mismatch = |part: Part, found: String, wanted: String| {
        Err(GenerationError::Format(format!(
            "{} is {found}, but the model's shape needs {wanted}",
            part.gguf_name()
        )))
    };
    let matrix = |part: Part, m: &Matrix, rows: Option<usize>, cols: usize| {
        if rows.is_some_and(|r| r != m.rows()) || m.cols() != cols {
            let wanted = rows.map_or(format!("? x {cols}"), |r| format!("{r} x {cols}"));
            return mismatch(part, format!("{} x {}", m.rows(), m.cols()), wanted);
        }
        Ok(())
    };
    let vector = |part: Part, v: &[f32]| {
        if v.len() != dim {
            return mismatch(part, format!("{} long", v.len()), format!("{dim}"));
        }
        Ok(())
    };
    matrix(Part::Embedding, embedding, None, dim)?;
    for (i, layer) in layers.iter().enumerate() {
        let hidden = layer.gate.rows();
        vector(Part::AttnNorm(i), &layer.attn_norm)?;
        matrix(Part::Q(i), &layer.q, Some(dim), dim)?;
        matrix(Part::K(i), &layer.k, Some(kv_dim), dim)?;
        matrix(Part::V(i), &layer.v, Some(kv_dim), dim)?;
        matrix(Part::O(i), &layer.o, Some(dim), dim)?;
        vector(Part::FfnNorm(i), &layer.ffn_norm)?;
        matrix(Part::Gate(i), &layer.gate, Some(hidden), dim)?;
        matrix(Part::Up(i), &layer.up, Some(hidden), dim)?;
        matrix(Part::Down(i), &layer.down, Some(dim), hidden)?;
    }
    vector(Part::Norm, norm)?;
    if let Some(output) = output {
        matrix(Part::Output, output, None, dim)?;
    }
    Ok(())
}

/// `n` vectors `x` times several matrices of the same input size. One vector (a decoded token) is
/// rounded once and all the products share one parallel pass; a prompt runs each as a tiled matmul.
fn project(x: &[f32], n: usize, products: &mut [(&Matrix, &mut [f32])]) {
    if n == 1 {
        Matrix::matvec_many(products, &Activation::new(x), Kernel::best());
    } else {
        for (matrix, y) in products.iter_mut() {
            matrix.matmul(x, n, y);
        }
    }
}

/// One vector per generation of a batch (`x` is `n x cols`) times several matrices, each
/// vector's product the bits [`project`] gives it alone.
fn project_batch(x: &[f32], n: usize, products: &mut [(&Matrix, &mut [f32])]) {
    if n == 1 {
        project(x, 1, products);
        return;
    }
    let cols = x.len() / n;
    let xs: Vec<Activation> = x.chunks_exact(cols).map(Activation::new).collect();
    Matrix::matvec_batch(products, &xs, Kernel::best());
}

/// RoPE's rotation angles for `positions` positions of heads of `head_dim` features: `cos` and
/// `sin`, `positions x head_dim / 2`, computed as candle computes them (f32 throughout), so every
/// path (candle's, the packed one, training's) rotates alike.
pub fn rope_angles(head_dim: usize, positions: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let half = head_dim / 2;
    let theta: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let mut cos = Vec::with_capacity(positions * half);
    let mut sin = Vec::with_capacity(positions * half);
    for position in 0..positions {
        for t in &theta {
            let angle = position as f32 * t;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let mean = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let scale = 1.0 / (mean + eps).sqrt();
    for ((o, v), w) in out.iter_mut().zip(x).zip(weight) {
        *o = v * scale * w;
    }
}

impl Llama {
    /// Reads the weights of a llama-family GGUF, keeping Q4_1 and Q8_0 blocks as stored.
    pub fn load(content: &Content, file: &mut File, max_positions: usize) -> Result<Self> {
        let shape = gguf_shape(content)?;
        Self::build(shape, &mut GgufSource { content, file }, max_positions)
    }

    /// Reads a model of `shape` from `source`.
    pub fn build(shape: Shape, source: &mut dyn Source, max_positions: usize) -> Result<Self> {
        let Shape {
            layers: layers_count,
            heads,
            kv_heads,
            dim,
            eps,
            rope_base: base,
        } = shape;
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || !dim.is_multiple_of(heads) {
            return Err(GenerationError::Format(format!(
                "{heads} attention heads with {kv_heads} key/value heads over {dim} features is not a llama shape"
            )));
        }
        let head_dim = dim / heads;
        let embedding = source.matrix(Part::Embedding)?;
        let mut layers = Vec::with_capacity(layers_count);
        for i in 0..layers_count {
            layers.push(Layer {
                attn_norm: source.vector(Part::AttnNorm(i))?,
                q: source.matrix(Part::Q(i))?,
                k: source.matrix(Part::K(i))?,
                v: source.matrix(Part::V(i))?,
                o: source.matrix(Part::O(i))?,
                ffn_norm: source.vector(Part::FfnNorm(i))?,
                gate: source.matrix(Part::Gate(i))?,
                up: source.matrix(Part::Up(i))?,
                down: source.matrix(Part::Down(i))?,
            });
        }
        let norm = source.vector(Part::Norm)?;
        let output = if source.has(Part::Output) {
            Some(source.matrix(Part::Output)?)
        } else {
            None
        };
        check_shapes(&shape, &embedding, &layers, &norm, output.as_ref())?;
        let (cos, sin) = rope_angles(head_dim, max_positions, base);
        Ok(Self {
            embedding,
            layers,
            norm,
            output,
            heads,
            kv_heads,
            head_dim,
            eps,
            cos,
            sin,
            max_positions,
        })
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> usize {
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down]
                    .iter()
                    .map(|m| m.bytes())
                    .sum::<usize>()
            })
            .sum();
        layers + self.embedding.bytes() + self.output.as_ref().map_or(0, Matrix::bytes)
    }

    /// An empty cache for one generation.
    pub fn cache(&self) -> Cache {
        self.cache_for(0)
    }

    /// An empty cache for one generation, its room for `positions` positions taken at once (the
    /// engine reserves a sequence's keys and values when it admits it).
    pub fn cache_for(&self, positions: usize) -> Cache {
        let room = positions.min(self.max_positions) * self.kv_heads * self.head_dim;
        Cache {
            keys: (0..self.layers.len()).map(|_| Vec::with_capacity(room)).collect(),
            values: (0..self.layers.len()).map(|_| Vec::with_capacity(room)).collect(),
            positions: 0,
        }
    }

    /// Bytes of keys and values one position of a generation holds (f32, every layer).
    pub fn kv_bytes_per_position(&self) -> usize {
        self.layers.len() * 2 * self.kv_heads * self.head_dim * std::mem::size_of::<f32>()
    }

    fn rotate(&self, x: &mut [f32], heads: usize, position: usize) {
        let half = self.head_dim / 2;
        let (cos, sin) = (
            &self.cos[position * half..(position + 1) * half],
            &self.sin[position * half..(position + 1) * half],
        );
        for head in x.chunks_exact_mut(self.head_dim).take(heads) {
            for i in 0..half {
                let (a, b) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = a * cos[i] - b * sin[i];
                head[2 * i + 1] = a * sin[i] + b * cos[i];
            }
        }
    }

    /// Runs `tokens` after the cache's positions; returns the logits of the last one.
    ///
    /// The pass runs on a thread of rayon's pool, so the 200-odd parallel steps of a token are
    /// shared out among the pool's threads without waking the caller's thread for each one. With a
    /// pool of one thread, a decoded token runs on the caller, every step in order.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Vec<f32>> {
        if tokens.len() == 1 && rayon::current_num_threads() == 1 {
            return self.forward_in_pool(tokens, cache, false);
        }
        rayon::scope(|_| self.forward_in_pool(tokens, cache, false))
    }

    /// Runs `tokens` after the cache's positions, like [`Llama::forward`], and returns every
    /// token's logits (`tokens.len() x vocabulary`, row by row): what scoring a given text needs.
    pub fn forward_all(&self, tokens: &[u32], cache: &mut Cache) -> Result<Vec<f32>> {
        rayon::scope(|_| self.forward_in_pool(tokens, cache, true))
    }

    /// Runs one token for each of several generations, each after its own cache's positions;
    /// returns each one's logits.
    ///
    /// This is a decode step of a batch: every weight block is read once for all the tokens
    /// ([`Matrix::matvec_batch`]), attention runs per generation over its own cache, and each
    /// generation's logits have the same bits as [`Llama::forward`] of its token alone.
    pub fn forward_batch(&self, tokens: &[u32], caches: &mut [&mut Cache]) -> Result<Vec<Vec<f32>>> {
        if rayon::current_num_threads() == 1 {
            return self.forward_batch_in_pool(tokens, caches);
        }
        rayon::scope(|_| self.forward_batch_in_pool(tokens, caches))
    }

    fn forward_batch_in_pool(&self, tokens: &[u32], caches: &mut [&mut Cache]) -> Result<Vec<Vec<f32>>> {
        let n = tokens.len();
        assert_eq!(n, caches.len(), "one cache per token");
        if n == 0 {
            return Ok(Vec::new());
        }
        let dim = self.embedding.cols();
        let kv_dim = self.kv_heads * self.head_dim;
        let (heads, head_dim) = (self.heads, self.head_dim);
        let group = heads / self.kv_heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let mut x = vec![0f32; n * dim];
        for (s, (&token, cache)) in tokens.iter().zip(caches.iter()).enumerate() {
            if cache.positions + 1 > self.max_positions {
                return Err(GenerationError::Request(format!(
                    "{} positions exceed the model's {}",
                    cache.positions + 1,
                    self.max_positions
                )));
            }
            if token as usize >= self.embedding.rows() {
                return Err(GenerationError::Request(format!(
                    "token {token} is outside the vocabulary"
                )));
            }
            self.embedding.row_into(token as usize, &mut x[s * dim..(s + 1) * dim]);
        }
        let positions: Vec<usize> = caches.iter().map(|c| c.positions).collect();
        let norm_each = |x: &[f32], weight: &[f32], out: &mut [f32]| {
            for (x, out) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
                rms_norm(x, weight, self.eps, out);
            }
        };
        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attended = vec![0f32; n * dim];
        let mut projected = vec![0f32; n * dim];
        for (l, layer) in self.layers.iter().enumerate() {
            norm_each(&x, &layer.attn_norm, &mut h);
            project_batch(&h, n, &mut [(&layer.q, &mut q), (&layer.k, &mut k), (&layer.v, &mut v)]);
            for (s, cache) in caches.iter_mut().enumerate() {
                self.rotate(&mut q[s * dim..(s + 1) * dim], heads, positions[s]);
                self.rotate(&mut k[s * kv_dim..(s + 1) * kv_dim], self.kv_heads, positions[s]);
                cache.keys[l].extend_from_slice(&k[s * kv_dim..(s + 1) * kv_dim]);
                cache.values[l].extend_from_slice(&v[s * kv_dim..(s + 1) * kv_dim]);
            }
            // One task per (generation, key/value head), for the query heads sharing it (each key
            // and value row read once for them, as a prompt's tasks do; a head's output does not
            // depend on the heads beside it). A token decoded alone has one task per query head
            // instead, to keep every thread busy.
            let caches = &*caches;
            let q = &q[..];
            let per_task = if n == 1 { 1 } else { group };
            let tasks: Vec<(usize, &mut [f32])> = attended.chunks_mut(per_task * head_dim).enumerate().collect();
            for_each(tasks, |(i, out)| {
                let (s, head) = (i / (heads / per_task), i % (heads / per_task) * per_task);
                let kv = head / group;
                let attention = Attention {
                    queries: &q[s * dim + head * head_dim..][..per_task * head_dim],
                    keys: &caches[s].keys[l][kv * head_dim..],
                    values: &caches[s].values[l][kv * head_dim..],
                    stride: kv_dim,
                    visible: positions[s] + 1,
                    head_dim,
                    scale,
                };
                attention.run(&mut Vec::with_capacity(positions[s] + 1), out);
            });
            project_batch(&attended, n, &mut [(&layer.o, &mut projected)]);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
            norm_each(&x, &layer.ffn_norm, &mut h);
            let hidden = layer.gate.rows();
            let mut gate = vec![0f32; n * hidden];
            let mut up = vec![0f32; n * hidden];
            project_batch(&h, n, &mut [(&layer.gate, &mut gate), (&layer.up, &mut up)]);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            project_batch(&gate, n, &mut [(&layer.down, &mut projected)]);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
        }
        for cache in caches.iter_mut() {
            cache.positions += 1;
        }
        norm_each(&x, &self.norm, &mut h);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let vocab = output.rows();
        let mut logits = vec![0f32; n * vocab];
        project_batch(&h, n, &mut [(output, &mut logits)]);
        Ok(logits.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
    }

    fn forward_in_pool(&self, tokens: &[u32], cache: &mut Cache, every_row: bool) -> Result<Vec<f32>> {
        let n = tokens.len();
        if n == 0 {
            return Err(GenerationError::Request("nothing to run: no tokens".into()));
        }
        let start = cache.positions;
        if start + n > self.max_positions {
            return Err(GenerationError::Request(format!(
                "{} positions exceed the model's {}",
                start + n,
                self.max_positions
            )));
        }
        let dim = self.embedding.cols();
        let kv_dim = self.kv_heads * self.head_dim;
        let group = self.heads / self.kv_heads;
        let scale = 1.0 / (self.head_dim as f32).sqrt();
        let mut x = vec![0f32; n * dim];
        for (t, &token) in tokens.iter().enumerate() {
            if token as usize >= self.embedding.rows() {
                return Err(GenerationError::Request(format!(
                    "token {token} is outside the vocabulary"
                )));
            }
            self.embedding.row_into(token as usize, &mut x[t * dim..(t + 1) * dim]);
        }
        let mut h = vec![0f32; n * dim];
        let mut q = vec![0f32; n * dim];
        let mut k = vec![0f32; n * kv_dim];
        let mut v = vec![0f32; n * kv_dim];
        let mut attended = vec![0f32; n * dim];
        let mut projected = vec![0f32; n * dim];
        for (layer, (keys, values)) in self
            .layers
            .iter()
            .zip(cache.keys.iter_mut().zip(cache.values.iter_mut()))
        {
            for t in 0..n {
                rms_norm(
                    &x[t * dim..(t + 1) * dim],
                    &layer.attn_norm,
                    self.eps,
                    &mut h[t * dim..(t + 1) * dim],
                );
            }
            project(&h, n, &mut [(&layer.q, &mut q), (&layer.k, &mut k), (&layer.v, &mut v)]);
            for t in 0..n {
                self.rotate(&mut q[t * dim..(t + 1) * dim], self.heads, start + t);
                self.rotate(&mut k[t * kv_dim..(t + 1) * kv_dim], self.kv_heads, start + t);
            }
            keys.extend_from_slice(&k);
            values.extend_from_slice(&v);
            // Causal attention: token t sees positions 0..=start+t. A prompt chunk's is matrix
            // products over blocks of tokens (`PromptAttention`); a decoded token's tasks are
            // single query heads, to keep every thread busy. Each task writes its own slice of
            // `attended`.
            let (keys, values, q) = (&keys[..], &values[..], &q[..]);
            let head_dim = self.head_dim;
            if n > 1 {
                PromptAttention {
                    queries: q,
                    keys,
                    values,
                    heads: self.heads,
                    kv_heads: self.kv_heads,
                    head_dim,
                    start,
                    tokens: n,
                    scale,
                }
                .run(&mut attended);
            } else {
                let tasks: Vec<(usize, &mut [f32])> = attended.chunks_mut(head_dim).enumerate().collect();
                for_each(tasks, |(head, out)| {
                    let kv = head / group;
                    let attention = Attention {
                        queries: &q[head * head_dim..][..head_dim],
                        keys: &keys[kv * head_dim..],
                        values: &values[kv * head_dim..],
                        stride: kv_dim,
                        visible: start + 1,
                        head_dim,
                        scale,
                    };
                    attention.run(&mut Vec::with_capacity(start + 1), out);
                });
            }
            project(&attended, n, &mut [(&layer.o, &mut projected)]);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
            for t in 0..n {
                rms_norm(
                    &x[t * dim..(t + 1) * dim],
                    &layer.ffn_norm,
                    self.eps,
                    &mut h[t * dim..(t + 1) * dim],
                );
            }
            let hidden = layer.gate.rows();
            let mut gate = vec![0f32; n * hidden];
            let mut up = vec![0f32; n * hidden];
            project(&h, n, &mut [(&layer.gate, &mut gate), (&layer.up, &mut up)]);
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            project(&gate, n, &mut [(&layer.down, &mut projected)]);
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
        }
        cache.positions += n;
        let first = if every_row { 0 } else { n - 1 };
        let rows = n - first;
        let mut normed = vec![0f32; rows * dim];
        for (x, out) in x[first * dim..].chunks_exact(dim).zip(normed.chunks_exact_mut(dim)) {
            rms_norm(x, &self.norm, self.eps, out);
        }
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let mut logits = vec![0f32; rows * output.rows()];
        project(&normed, rows, &mut [(output, &mut logits)]);
        Ok(logits)
    }
}
