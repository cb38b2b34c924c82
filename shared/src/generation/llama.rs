//! A llama-family forward pass over [`kernels::Matrix`]: the model's stored blocks, multiplied with
//! f32 activations (see `kernels.rs` for why), for `WeightFormat::Packed`.
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
use super::kernels::{Matrix, dot_f32};

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

fn matrix(content: &Content, file: &mut File, name: &str) -> Result<Matrix> {
    let info = content
        .tensor_infos
        .get(name)
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
    Ok(match info.ggml_dtype {
        GgmlDType::Q4_1 if cols % 32 == 0 => Matrix::Q4_1 {
            rows,
            cols,
            data: raw(rows * cols / 32 * 20, file)?,
        },
        GgmlDType::Q8_0 if cols % 32 == 0 => Matrix::Q8_0 {
            rows,
            cols,
            data: raw(rows * cols / 32 * 34, file)?,
        },
        _ => {
            // Any other type: dequantized once, exactly, by candle.
            let tensor = content.tensor(file, name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
            Matrix::F32 {
                rows,
                cols,
                data: tensor.flatten_all()?.to_vec1::<f32>()?,
            }
        }
    })
}

fn vector(content: &Content, file: &mut File, name: &str) -> Result<Vec<f32>> {
    let tensor = content.tensor(file, name, &Device::Cpu)?.dequantize(&Device::Cpu)?;
    Ok(tensor.flatten_all()?.to_vec1::<f32>()?)
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
        let layers_count = metadata_u32(content, "llama.block_count")?;
        let heads = metadata_u32(content, "llama.attention.head_count")?;
        let kv_heads = metadata_u32(content, "llama.attention.head_count_kv").unwrap_or(heads);
        let dim = metadata_u32(content, "llama.embedding_length")?;
        let head_dim = dim / heads;
        let eps = metadata_f32(content, "llama.attention.layer_norm_rms_epsilon", 1e-5);
        let base = metadata_f32(content, "llama.rope.freq_base", 10_000.0);
        let embedding = matrix(content, file, "token_embd.weight")?;
        let mut layers = Vec::with_capacity(layers_count);
        for i in 0..layers_count {
            let name = |part: &str| format!("blk.{i}.{part}.weight");
            layers.push(Layer {
                attn_norm: vector(content, file, &name("attn_norm"))?,
                q: matrix(content, file, &name("attn_q"))?,
                k: matrix(content, file, &name("attn_k"))?,
                v: matrix(content, file, &name("attn_v"))?,
                o: matrix(content, file, &name("attn_output"))?,
                ffn_norm: vector(content, file, &name("ffn_norm"))?,
                gate: matrix(content, file, &name("ffn_gate"))?,
                up: matrix(content, file, &name("ffn_up"))?,
                down: matrix(content, file, &name("ffn_down"))?,
            });
        }
        let norm = vector(content, file, "output_norm.weight")?;
        let output = if content.tensor_infos.contains_key("output.weight") {
            Some(matrix(content, file, "output.weight")?)
        } else {
            None
        };
        // The angles as candle computes them (f32 throughout), so both paths rotate alike.
        let half = head_dim / 2;
        let theta: Vec<f32> = (0..head_dim)
            .step_by(2)
            .map(|i| 1f32 / base.powf(i as f32 / head_dim as f32))
            .collect();
        let mut cos = Vec::with_capacity(max_positions * half);
        let mut sin = Vec::with_capacity(max_positions * half);
        for position in 0..max_positions {
            for t in &theta {
                let angle = position as f32 * t;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
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
        Cache {
            keys: vec![Vec::new(); self.layers.len()],
            values: vec![Vec::new(); self.layers.len()],
            positions: 0,
        }
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
    /// The pass runs on a thread of rayon's pool, so the 200-odd parallel products of a token are
    /// shared out among the pool's threads without waking the caller's thread for each one.
    pub fn forward(&self, tokens: &[u32], cache: &mut Cache) -> Result<Vec<f32>> {
        rayon::scope(|_| self.forward_in_pool(tokens, cache))
    }

    fn forward_in_pool(&self, tokens: &[u32], cache: &mut Cache) -> Result<Vec<f32>> {
        let n = tokens.len();
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
            layer.q.matmul(&h, n, &mut q)?;
            layer.k.matmul(&h, n, &mut k)?;
            layer.v.matmul(&h, n, &mut v)?;
            for t in 0..n {
                self.rotate(&mut q[t * dim..(t + 1) * dim], self.heads, start + t);
                self.rotate(&mut k[t * kv_dim..(t + 1) * kv_dim], self.kv_heads, start + t);
            }
            keys.extend_from_slice(&k);
            values.extend_from_slice(&v);
            // Causal attention: token t sees positions 0..=start+t.
            let mut scores = Vec::with_capacity(start + n);
            for t in 0..n {
                let visible = start + t + 1;
                for head in 0..self.heads {
                    let kv = head / group;
                    let query = &q[t * dim + head * self.head_dim..t * dim + (head + 1) * self.head_dim];
                    scores.clear();
                    for p in 0..visible {
                        let key = &keys[p * kv_dim + kv * self.head_dim..p * kv_dim + (kv + 1) * self.head_dim];
                        scores.push(dot_f32(query, key) * scale);
                    }
                    let max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0f32;
                    for s in scores.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    let out = &mut attended[t * dim + head * self.head_dim..t * dim + (head + 1) * self.head_dim];
                    out.fill(0.0);
                    for (p, s) in scores.iter().enumerate() {
                        let weight = s / total;
                        let value = &values[p * kv_dim + kv * self.head_dim..p * kv_dim + (kv + 1) * self.head_dim];
                        for (o, v) in out.iter_mut().zip(value) {
                            *o += weight * v;
                        }
                    }
                }
            }
            layer.o.matmul(&attended, n, &mut projected)?;
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
            layer.gate.matmul(&h, n, &mut gate)?;
            layer.up.matmul(&h, n, &mut up)?;
            for (g, u) in gate.iter_mut().zip(&up) {
                *g = *g / (1.0 + (-*g).exp()) * u;
            }
            layer.down.matmul(&gate, n, &mut projected)?;
            for (x, p) in x.iter_mut().zip(&projected) {
                *x += p;
            }
        }
        cache.positions += n;
        let last = &x[(n - 1) * dim..n * dim];
        let mut normed = vec![0f32; dim];
        rms_norm(last, &self.norm, self.eps, &mut normed);
        let output = self.output.as_ref().unwrap_or(&self.embedding);
        let mut logits = vec![0f32; output.rows()];
        output.matvec(&normed, &mut logits);
        Ok(logits)
    }
}
