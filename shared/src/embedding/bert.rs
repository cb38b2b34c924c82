//! A BERT encoder over a batch of texts packed end to end, without padding.
//!
//! candle's `BertModel` takes a padded `batch x longest` tensor: every text costs as much as the
//! batch's longest, the attention mask is applied to scores that are then thrown away, and each
//! small operation makes a new tensor. Here the batch is one `tokens x hidden` matrix, the texts one
//! after another. The linear layers are single gemm calls over all tokens at once (the bias, or the
//! residual and the bias, are written into the output first and the product accumulated onto them);
//! attention runs per text and per head on that text's rows only, so nothing is masked and nothing
//! is padded; layer norm, GELU and pooling are one pass each, in parallel over tokens.
//!
//! The arithmetic is BERT's, in f32: embeddings (word + position + token type) and layer norm;
//! per layer, scaled dot-product attention, output projection, residual and layer norm, then the
//! GELU (erf) feed-forward, residual and layer norm. The results equal candle's and
//! sentence-transformers' within float rounding (`tests/models.rs`).

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};
use gemm::Parallelism;
use rayon::prelude::*;

use super::EmbeddingError;

type Result<T> = std::result::Result<T, EmbeddingError>;

/// The parts of a BERT `config.json` the encoder needs.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct BertShape {
    /// Hidden size.
    pub hidden_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Feed-forward size.
    pub intermediate_size: usize,
    /// Layer norm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// The feed-forward activation.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}
fn default_act() -> String {
    "gelu".into()
}

/// `y = x Wᵀ + b`, `W` (`out x in`) kept transposed: column `o` of the product is contiguous,
/// so gemm streams `W` as it lies (no packing of the large operand per call, which dominated a
/// short text's embedding) and packs only the few tokens.
struct Linear {
    /// `Wᵀ`, `in x out`, row-major.
    weight_t: Vec<f32>,
    bias: Vec<f32>,
    inputs: usize,
    outputs: usize,
}

impl Linear {
    /// From `W` as stored (`outputs x inputs`, row-major).
    fn new(weight: &[f32], bias: Vec<f32>, inputs: usize, outputs: usize) -> Linear {
        let mut weight_t = vec![0f32; inputs * outputs];
        for (o, row) in weight.chunks_exact(inputs).enumerate() {
            for (i, w) in row.iter().enumerate() {
                weight_t[i * outputs + o] = *w;
            }
        }
        Linear {
            weight_t,
            bias,
            inputs,
            outputs,
        }
    }
}

struct Norm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct Layer {
    /// Query, key and value stacked: one product gives all three (`3 hidden x hidden`).
    qkv: Linear,
    attention_out: Linear,
    attention_norm: Norm,
    up: Linear,
    down: Linear,
    output_norm: Norm,
}

/// A loaded BERT encoder.
pub struct Bert {
    word: Vec<f32>,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embedding_norm: Norm,
    layers: Vec<Layer>,
    hidden: usize,
    heads: usize,
    eps: f32,
    vocab: usize,
    positions: usize,
    types: usize,
}

/// Reads tensors by name, trying the names with and without a `bert.` prefix.
struct Weights<'a> {
    tensors: &'a MmapedSafetensors,
    prefix: &'static str,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self
            .tensors
            .load(&full, &Device::Cpu)
            .map_err(|e| EmbeddingError::Weights(format!("{full}: {e}")))?;
        if tensor.dims() != shape {
            return Err(EmbeddingError::Weights(format!(
                "{full} has shape {:?}, the config implies {shape:?}",
                tensor.dims()
            )));
        }
        Ok(tensor.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn linear(&self, name: &str, outputs: usize, inputs: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            self.get(&format!("{name}.weight"), &[outputs, inputs])?,
            self.get(&format!("{name}.bias"), &[outputs])?,
        ))
    }

    fn norm(&self, name: &str, size: usize) -> Result<Norm> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[size])?,
            bias: self.get(&format!("{name}.bias"), &[size])?,
        })
    }

    fn rows(&self, name: &str, cols: usize) -> Result<(Vec<f32>, usize)> {
        let full = format!("{}{name}", self.prefix);
        let rows = self
            .tensors
            .get(&full)
            .map_err(|e| EmbeddingError::Weights(format!("{full}: {e}")))?
            .shape()
            .first()
            .copied()
            .unwrap_or(0);
        Ok((self.get(name, &[rows, cols])?, rows))
    }
}

impl Bert {
    /// Reads the encoder from `tensors` (a sentence-transformers or transformers BERT checkpoint).
    pub fn load(tensors: &MmapedSafetensors, shape: &BertShape) -> Result<Self> {
        if shape.hidden_act != "gelu" {
            return Err(EmbeddingError::Weights(format!(
                "hidden_act {:?}: engram's BERT runs \"gelu\" (erf) models",
                shape.hidden_act
            )));
        }
        let (hidden, heads) = (shape.hidden_size, shape.num_attention_heads);
        if heads == 0 || !hidden.is_multiple_of(heads) {
            return Err(EmbeddingError::Weights(format!(
                "{heads} attention heads do not divide the hidden size {hidden}"
            )));
        }
        let prefix = if tensors.get("embeddings.word_embeddings.weight").is_ok() {
            ""
        } else {
            "bert."
        };
        let w = Weights { tensors, prefix };
        let (word, vocab) = w.rows("embeddings.word_embeddings.weight", hidden)?;
        let (position, positions) = w.rows("embeddings.position_embeddings.weight", hidden)?;
        let (token_type, types) = w.rows("embeddings.token_type_embeddings.weight", hidden)?;
        let embedding_norm = w.norm("embeddings.LayerNorm", hidden)?;
        let mut layers = Vec::with_capacity(shape.num_hidden_layers);
        for i in 0..shape.num_hidden_layers {
            let at = |part: &str| format!("encoder.layer.{i}.{part}");
            let (q, k, v) = (
                w.linear(&at("attention.self.query"), hidden, hidden)?,
                w.linear(&at("attention.self.key"), hidden, hidden)?,
                w.linear(&at("attention.self.value"), hidden, hidden)?,
            );
            let linear = |name: &str, outputs: usize, inputs: usize| -> Result<Linear> {
                let (weight, bias) = w.linear(&at(name), outputs, inputs)?;
                Ok(Linear::new(&weight, bias, inputs, outputs))
            };
            let inner = shape.intermediate_size;
            layers.push(Layer {
                qkv: Linear::new(&[q.0, k.0, v.0].concat(), [q.1, k.1, v.1].concat(), hidden, 3 * hidden),
                attention_out: linear("attention.output.dense", hidden, hidden)?,
                attention_norm: w.norm(&at("attention.output.LayerNorm"), hidden)?,
                up: linear("intermediate.dense", inner, hidden)?,
                down: linear("output.dense", hidden, inner)?,
                output_norm: w.norm(&at("output.LayerNorm"), hidden)?,
            });
        }
        Ok(Bert {
            word,
            position,
            token_type,
            embedding_norm,
            layers,
            hidden,
            heads,
            eps: shape.layer_norm_eps as f32,
            vocab,
            positions,
            types,
        })
    }

    /// Positions the model has embeddings for.
    pub fn max_positions(&self) -> usize {
        self.positions
    }

    /// Mean-pooled, L2-normalised vectors of `texts` (token ids and token type ids of each).
    pub fn embed(&self, texts: &[(&[u32], &[u32])]) -> Result<Vec<Vec<f32>>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let h = self.hidden;
        let mut starts = Vec::with_capacity(texts.len() + 1);
        starts.push(0usize);
        for (ids, types) in texts {
            if ids.is_empty() || ids.len() != types.len() || ids.len() > self.positions {
                return Err(EmbeddingError::Tokenizer(format!(
                    "a text of {} tokens ({} type ids) does not fit the model's {} positions",
                    ids.len(),
                    types.len(),
                    self.positions
                )));
            }
            starts.push(starts[starts.len() - 1] + ids.len());
        }
        let tokens = starts[texts.len()];

        // Embeddings: one row per token, in text order.
        let mut x = vec![0f32; tokens * h];
        let mut rows = x.chunks_mut(h);
        for (ids, types) in texts {
            for (position, (&id, &kind)) in ids.iter().zip(types.iter()).enumerate() {
                let (id, kind) = (id as usize, kind as usize);
                if id >= self.vocab || kind >= self.types {
                    return Err(EmbeddingError::Tokenizer(format!(
                        "token {id} (type {kind}) is outside the model's vocabulary of {} ({} types)",
                        self.vocab, self.types
                    )));
                }
                let row = rows.next().expect("one row per token");
                let word = &self.word[id * h..(id + 1) * h];
                let place = &self.position[position * h..(position + 1) * h];
                let kind = &self.token_type[kind * h..(kind + 1) * h];
                for (((r, a), b), c) in row.iter_mut().zip(word).zip(place).zip(kind) {
                    *r = a + b + c;
                }
            }
        }
        layer_norm(&mut x, h, &self.embedding_norm, self.eps);

        let mut qkv = vec![0f32; tokens * 3 * h];
        let mut context = vec![0f32; tokens * h];
        let mut inner = vec![0f32; tokens * self.layers.first().map_or(0, |l| l.up.outputs)];
        for layer in &self.layers {
            linear(&x, tokens, &layer.qkv, None, &mut qkv);
            self.attention(&qkv, &starts, &mut context);
            // x = LN(x + context Woᵀ + bo): the residual is the product's starting value.
            let mut sum = vec![0f32; tokens * h];
            linear(&context, tokens, &layer.attention_out, Some(&x), &mut sum);
            layer_norm(&mut sum, h, &layer.attention_norm, self.eps);
            x = sum;
            linear(&x, tokens, &layer.up, None, &mut inner);
            inner
                .par_chunks_mut(4096)
                .for_each(|part| part.iter_mut().for_each(|v| *v = gelu(*v)));
            let mut sum = vec![0f32; tokens * h];
            linear(&inner, tokens, &layer.down, Some(&x), &mut sum);
            layer_norm(&mut sum, h, &layer.output_norm, self.eps);
            x = sum;
        }

        // Mean over each text's tokens, then L2: sentence-transformers' Pooling + Normalize.
        Ok(starts
            .windows(2)
            .map(|w| {
                let mut mean = vec![0f32; h];
                for row in x[w[0] * h..w[1] * h].chunks_exact(h) {
                    for (m, v) in mean.iter_mut().zip(row) {
                        *m += v;
                    }
                }
                let count = (w[1] - w[0]) as f32;
                mean.iter_mut().for_each(|m| *m /= count);
                let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
                mean.iter_mut().for_each(|m| *m /= norm);
                mean
            })
            .collect())
    }

    /// Scaled dot-product attention of each text over its own tokens, head by head.
    fn attention(&self, qkv: &[f32], starts: &[usize], context: &mut [f32]) {
        let h = self.hidden;
        let head_dim = h / self.heads;
        let scale = 1.0 / (head_dim as f32).sqrt();
        // Each text's rows of `context` are its own: split them off and run texts in parallel.
        let mut parts = Vec::with_capacity(starts.len() - 1);
        let mut rest = context;
        for w in starts.windows(2) {
            let (part, tail) = rest.split_at_mut((w[1] - w[0]) * h);
            parts.push((w[0], w[1] - w[0], part));
            rest = tail;
        }
        parts.into_par_iter().for_each(|(start, len, out)| {
            let mut scores = vec![0f32; len * len];
            let rows = &qkv[start * 3 * h..(start + len) * 3 * h];
            for head in 0..self.heads {
                let q = rows[head * head_dim..].as_ptr();
                let k = rows[h + head * head_dim..].as_ptr();
                let v = rows[2 * h + head * head_dim..].as_ptr();
                let stride = (3 * h) as isize;
                // SAFETY: every index below stays inside `rows` (len rows of 3h) and `scores`/`out`
                // (len x len and len rows of h); the pointers come from live slices.
                unsafe {
                    // scores (len x len) = scale · Q Kᵀ
                    gemm::gemm(
                        len,
                        len,
                        head_dim,
                        scores.as_mut_ptr(),
                        1,
                        len as isize,
                        false,
                        q,
                        1,
                        stride,
                        k,
                        stride,
                        1,
                        0.0,
                        scale,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
                for row in scores.chunks_exact_mut(len) {
                    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let mut total = 0f32;
                    for s in row.iter_mut() {
                        *s = (*s - max).exp();
                        total += *s;
                    }
                    row.iter_mut().for_each(|s| *s /= total);
                }
                // SAFETY: as above; this head's columns of `out` are written, with row stride h.
                unsafe {
                    // out[:, head] (len x head_dim) = P V
                    gemm::gemm(
                        len,
                        head_dim,
                        len,
                        out[head * head_dim..].as_mut_ptr(),
                        1,
                        h as isize,
                        false,
                        scores.as_ptr(),
                        1,
                        len as isize,
                        v,
                        1,
                        stride,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
        });
    }
}

/// `out = x Wᵀ + b (+ residual)` for `tokens` rows of `x`, as one gemm over every token.
fn linear(x: &[f32], tokens: usize, layer: &Linear, residual: Option<&[f32]>, out: &mut [f32]) {
    let (inputs, outputs) = (layer.inputs, layer.outputs);
    assert_eq!(x.len(), tokens * inputs);
    assert_eq!(out.len(), tokens * outputs);
    // The starting value the product is added onto.
    match residual {
        Some(residual) => out
            .par_chunks_mut(outputs)
            .zip(residual.par_chunks(outputs))
            .for_each(|(row, res)| {
                for ((o, r), b) in row.iter_mut().zip(res).zip(&layer.bias) {
                    *o = r + b;
                }
            }),
        None => out
            .par_chunks_mut(outputs)
            .for_each(|row| row.copy_from_slice(&layer.bias)),
    }
    // outᵀ (outputs x tokens) += W (outputs x inputs) · xᵀ (inputs x tokens), with every operand
    // read in place through its strides.
    // SAFETY: x is tokens x inputs, Wᵀ inputs x outputs, out tokens x outputs, all row-major and
    // fully inside their slices.
    unsafe {
        gemm::gemm(
            outputs,
            tokens,
            inputs,
            out.as_mut_ptr(),
            outputs as isize,
            1,
            true,
            layer.weight_t.as_ptr(),
            outputs as isize,
            1,
            x.as_ptr(),
            inputs as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
}

/// Layer norm of each `width`-long row of `x`, in place.
fn layer_norm(x: &mut [f32], width: usize, norm: &Norm, eps: f32) {
    x.par_chunks_mut(width).for_each(|row| {
        let mean = row.iter().sum::<f32>() / width as f32;
        let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / width as f32;
        let scale = 1.0 / (variance + eps).sqrt();
        for ((v, w), b) in row.iter_mut().zip(&norm.weight).zip(&norm.bias) {
            *v = (*v - mean) * scale * w + b;
        }
    });
}

/// BERT's GELU, with erf (not the tanh approximation).
fn gelu(v: f32) -> f32 {
    0.5 * v * (1.0 + libm::erff(v * std::f32::consts::FRAC_1_SQRT_2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gelu_matches_known_values() {
        // GELU(x) = x Φ(x): Φ(1) = 0.841345, Φ(-1) = 0.158655.
        assert!((gelu(1.0) - 0.841_345).abs() < 1e-6);
        assert!((gelu(-1.0) + 0.158_655).abs() < 1e-6);
        assert_eq!(gelu(0.0), 0.0);
    }

    #[test]
    fn layer_norm_centres_and_scales_each_row() {
        let norm = Norm {
            weight: vec![1.0; 4],
            bias: vec![0.5; 4],
        };
        let mut x = vec![1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0];
        layer_norm(&mut x, 4, &norm, 1e-12);
        let row: f32 = x[..4].iter().sum();
        assert!((row - 2.0).abs() < 1e-5, "mean 0 plus bias 0.5 each: {x:?}");
        assert!(
            x[4..].iter().all(|v| (v - 0.5).abs() < 1e-5),
            "a constant row is all bias"
        );
    }

    #[test]
    fn linear_adds_bias_and_residual_to_the_product() {
        // W = [[1, 2], [3, 4], [5, 6]], b = [1, 0, -1]; x = [[1, 1], [0, 2]].
        let layer = Linear::new(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![1.0, 0.0, -1.0], 2, 3);
        let x = [1.0, 1.0, 0.0, 2.0];
        let mut out = vec![0f32; 6];
        linear(&x, 2, &layer, None, &mut out);
        assert_eq!(out, vec![4.0, 7.0, 10.0, 5.0, 8.0, 11.0]);
        let residual = [1.0; 6];
        linear(&x, 2, &layer, Some(&residual), &mut out);
        assert_eq!(out, vec![5.0, 8.0, 11.0, 6.0, 9.0, 12.0]);
    }
}
