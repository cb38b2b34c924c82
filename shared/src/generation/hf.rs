//! Llama-family models in Hugging Face's layout: a directory holding `config.json`,
//! `model.safetensors` (or the shards `model.safetensors.index.json` names), `tokenizer.json` and
//! `tokenizer_config.json` (its chat template and special tokens) — what transformers'
//! `save_pretrained` writes, and what a fine-tuning run hands to the registry.
//!
//! Such a model runs on engram's own forward pass (`llama.rs`) with f32 weights, whatever dtype the
//! checkpoint stores (f32, f16 and bf16 convert exactly). transformers keeps each query/key head's
//! two rotary halves apart ("rotate half") where GGUF interleaves them; the rows are permuted at
//! load so one forward pass serves both.
//!
//! [`write`] goes the other way: it writes a [`Checkpoint`] (a GGUF's model dequantized exactly, or
//! a fine-tuned model merged) as such a directory, for transformers, PEFT and the registry.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenizers::Tokenizer;

use super::GenerationError;
use super::checkpoint::Checkpoint;
use super::kernels::Matrix;
use super::llama::{Llama, Part, Shape, Source};
use crate::staged_dir::StagedDir;

type Result<T> = std::result::Result<T, GenerationError>;

/// The architecture this module reads and writes.
const ARCHITECTURE: &str = "LlamaForCausalLM";

fn error(dir: &Path, what: impl std::fmt::Display) -> GenerationError {
    GenerationError::File {
        path: dir.to_path_buf(),
        reason: what.to_string(),
    }
}

/// The parts of `config.json` engram reads.
#[derive(Debug, Deserialize)]
struct Config {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f32,
    #[serde(default = "default_theta")]
    rope_theta: f32,
    #[serde(default)]
    rope_scaling: Option<Value>,
    /// transformers 5 writes RoPE's settings here (`rope_theta`, `rope_type`) instead.
    #[serde(default)]
    rope_parameters: Option<Value>,
    #[serde(default = "default_positions")]
    max_position_embeddings: usize,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    eos_token_id: Option<Value>,
}

fn default_eps() -> f32 {
    1e-6
}
fn default_theta() -> f32 {
    10_000.0
}
fn default_positions() -> usize {
    2048
}

/// A special token in `tokenizer_config.json`: a string or an `AddedToken` object.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TokenName {
    Text(String),
    Object { content: String },
}

impl TokenName {
    fn text(&self) -> &str {
        match self {
            TokenName::Text(text) | TokenName::Object { content: text } => text,
        }
    }
}

/// The parts of `tokenizer_config.json` engram reads.
#[derive(Debug, Default, Deserialize)]
struct TokenizerConfig {
    #[serde(default)]
    chat_template: Option<Value>,
    #[serde(default)]
    bos_token: Option<TokenName>,
    #[serde(default)]
    eos_token: Option<TokenName>,
    #[serde(default)]
    add_bos_token: Option<bool>,
}

/// An HF-layout model, read.
pub struct HfModel {
    /// The weights, ready to run.
    pub llama: Llama,
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// The chat template's source, when the directory has one.
    pub chat_template: Option<String>,
    /// Tokens that end a generation.
    pub eos: Vec<u32>,
    /// The beginning-of-sequence token, when prompts start with one.
    pub bos: Option<u32>,
    /// Positions the model was trained for.
    pub context_length: usize,
}

fn read_json<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Result<Option<T>> {
    let path = dir.join(name);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| error(&path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| error(&path, format!("not the JSON transformers writes: {e}")))
}

/// The safetensors files of a checkpoint: `model.safetensors`, or the shards its index names.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let Some(index) = read_json::<Value>(dir, "model.safetensors.index.json")? else {
        return Err(error(
            dir,
            "no model.safetensors or model.safetensors.index.json: pass a directory written by save_pretrained or `feature-pipeline models export-hf`",
        ));
    };
    let map = index["weight_map"]
        .as_object()
        .ok_or_else(|| error(&dir.join("model.safetensors.index.json"), "it has no weight_map"))?;
    let mut files: Vec<PathBuf> = map
        .values()
        .filter_map(Value::as_str)
        .map(|name| dir.join(name))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Reorders the rows of a query/key projection (or of a LoRA `B` matrix beside one) (`heads` heads of `rows / heads` rows each).
/// `to_gguf`: from transformers' halves (`i * half + j`) to GGUF's pairs (`2 j + i`); else back.
pub fn permute_rows(data: &[f32], rows: usize, cols: usize, heads: usize, to_gguf: bool) -> Vec<f32> {
    let head_dim = rows / heads;
    let half = head_dim / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..heads {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * head_dim + i * half + j;
                let gguf = h * head_dim + 2 * j + i;
                let (from, to) = if to_gguf { (hf, gguf) } else { (gguf, hf) };
                out[to * cols..(to + 1) * cols].copy_from_slice(&data[from * cols..(from + 1) * cols]);
            }
        }
    }
    out
}

/// A checkpoint's tensors, read from memory-mapped safetensors.
struct HfSource<'a> {
    dir: &'a Path,
    tensors: MmapedSafetensors,
    shape: Shape,
}

impl HfSource<'_> {
    fn tensor(&self, part: Part) -> Result<Tensor> {
        let name = part.hf_name();
        let tensor = self
            .tensors
            .load(&name, &Device::Cpu)
            .map_err(|e| error(self.dir, format!("cannot read tensor {name}: {e}")))?;
        Ok(tensor.to_dtype(DType::F32)?)
    }
}

impl Source for HfSource<'_> {
    fn has(&self, part: Part) -> bool {
        self.tensors.get(&part.hf_name()).is_ok()
    }

    fn matrix(&mut self, part: Part) -> Result<Matrix> {
        let tensor = self.tensor(part)?;
        let (rows, cols) = tensor.dims2().map_err(|_| {
            error(
                self.dir,
                format!("{} is not a matrix: {:?}", part.hf_name(), tensor.dims()),
            )
        })?;
        let mut data = tensor.flatten_all()?.to_vec1::<f32>()?;
        let heads = match part {
            Part::Q(_) => Some(self.shape.heads),
            Part::K(_) => Some(self.shape.kv_heads),
            _ => None,
        };
        if let Some(heads) = heads {
            if !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
                return Err(error(
                    self.dir,
                    format!("{} has {rows} rows, not {heads} heads of an even size", part.hf_name()),
                ));
            }
            data = permute_rows(&data, rows, cols, heads, true);
        }
        Ok(Matrix::F32 { rows, cols, data })
    }

    fn vector(&mut self, part: Part) -> Result<Vec<f32>> {
        Ok(self.tensor(part)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

/// The chat template of `tokenizer_config.json`: a string, or the one named "default" in a list.
fn chat_template(value: &Value) -> Option<String> {
    match value {
        Value::String(source) => Some(source.clone()),
        Value::Array(templates) => templates
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => None,
    }
}

/// An HF-layout directory opened: its shape, tokenizer and special tokens read, its tensors mapped.
pub struct HfDir<'a> {
    source: HfSource<'a>,
    /// The model's shape.
    pub shape: Shape,
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// The chat template's source, when the directory has one.
    pub chat_template: Option<String>,
    /// Tokens that end a generation.
    pub eos: Vec<u32>,
    /// The beginning-of-sequence token, when prompts start with one.
    pub bos: Option<u32>,
    /// Positions the model was trained for (at most the `max_positions` asked for).
    pub context_length: usize,
}

impl HfDir<'_> {
    /// The tensors, read through the same [`Source`] the forward pass is built from.
    pub fn source(&mut self) -> &mut dyn Source {
        &mut self.source
    }
}

/// Opens the HF-layout model in `dir`, keeping at most `max_positions` positions.
pub fn open(dir: &Path, max_positions: usize) -> Result<HfDir<'_>> {
    let config: Config = read_json(dir, "config.json")?
        .ok_or_else(|| error(dir, "no config.json: pass a GGUF file or an HF-layout model directory"))?;
    let llama_like =
        config.architectures.iter().any(|a| a == ARCHITECTURE) || config.model_type.as_deref() == Some("llama");
    if !llama_like {
        return Err(GenerationError::Format(format!(
            "{}: architectures {:?} (model_type {:?}): engram runs llama-family models ({ARCHITECTURE})",
            dir.display(),
            config.architectures,
            config.model_type
        )));
    }
    let rope_type = config
        .rope_parameters
        .as_ref()
        .and_then(|p| p.get("rope_type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    if config.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) || rope_type != "default" {
        return Err(GenerationError::Format(format!(
            "{}: rope_scaling is set; engram's llama runs unscaled RoPE only",
            dir.display()
        )));
    }
    if config
        .head_dim
        .is_some_and(|d| d * config.num_attention_heads != config.hidden_size)
    {
        return Err(GenerationError::Format(format!(
            "{}: head_dim x heads differs from hidden_size; engram's llama needs them equal",
            dir.display()
        )));
    }
    let shape = Shape {
        layers: config.num_hidden_layers,
        heads: config.num_attention_heads,
        kv_heads: config.num_key_value_heads.unwrap_or(config.num_attention_heads),
        dim: config.hidden_size,
        eps: config.rms_norm_eps,
        rope_base: config
            .rope_parameters
            .as_ref()
            .and_then(|p| p.get("rope_theta"))
            .and_then(Value::as_f64)
            .map_or(config.rope_theta, |theta| theta as f32),
    }
    .validate()?;
    let files = weight_files(dir)?;
    // SAFETY: the files are mapped read-only; engram never writes a registered model's files, and
    // the tensors are copied out before the mapping is dropped.
    let tensors =
        unsafe { MmapedSafetensors::multi(&files) }.map_err(|e| error(dir, format!("unreadable safetensors: {e}")))?;
    let context_length = config.max_position_embeddings.min(max_positions);
    let source = HfSource { dir, tensors, shape };
    if !config.tie_word_embeddings && !source.has(Part::Output) {
        return Err(error(
            dir,
            "config.json says the output is not tied to the embedding, but lm_head.weight is missing",
        ));
    }

    let tokenizer_path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&tokenizer_path)
        .map_err(|e| error(&tokenizer_path, format!("cannot read the tokenizer: {e}")))?;
    let tokenizer_config: TokenizerConfig = read_json(dir, "tokenizer_config.json")?.unwrap_or_default();
    let mut eos: Vec<u32> = tokenizer_config
        .eos_token
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t.text()))
        .collect();
    let generation: Option<Value> = read_json(dir, "generation_config.json")?;
    for ids in [
        config.eos_token_id.as_ref(),
        generation.as_ref().map(|g| &g["eos_token_id"]),
    ]
    .into_iter()
    .flatten()
    {
        match ids {
            Value::Number(n) => eos.extend(n.as_u64().map(|n| n as u32)),
            Value::Array(list) => eos.extend(list.iter().filter_map(Value::as_u64).map(|n| n as u32)),
            _ => {}
        }
    }
    let bos = tokenizer_config
        .add_bos_token
        .unwrap_or(false)
        .then(|| {
            tokenizer_config
                .bos_token
                .as_ref()
                .and_then(|t| tokenizer.token_to_id(t.text()))
        })
        .flatten();
    Ok(HfDir {
        source,
        shape,
        tokenizer,
        chat_template: tokenizer_config.chat_template.as_ref().and_then(chat_template),
        eos,
        bos,
        context_length,
    })
}

/// Reads the HF-layout model in `dir`, keeping at most `max_positions` positions.
pub fn load(dir: &Path, max_positions: usize) -> Result<HfModel> {
    let mut opened = open(dir, max_positions)?;
    let (shape, context_length) = (opened.shape, opened.context_length);
    let llama = Llama::build(shape, opened.source(), context_length)?;
    let HfDir {
        tokenizer,
        chat_template,
        eos,
        bos,
        context_length,
        ..
    } = opened;
    Ok(HfModel {
        llama,
        tokenizer,
        chat_template,
        eos,
        bos,
        context_length,
    })
}

fn token_text(tokenizer: &Tokenizer, id: Option<u32>) -> Value {
    id.and_then(|id| tokenizer.id_to_token(id))
        .map_or(Value::Null, Value::String)
}

/// Writes the llama-family GGUF at `gguf` as an HF-layout directory `dir` (which must not exist or
/// be empty): the GGUF's weights, dequantized exactly (see [`write`]).
pub fn export_gguf(gguf: &Path, dir: &Path) -> Result<()> {
    let checkpoint = Checkpoint::load(gguf, usize::MAX)?;
    write(&checkpoint, dir)
}

/// Writes `checkpoint` as an HF-layout directory `dir` (which must not exist or be empty): f32
/// `model.safetensors`, `config.json`, `tokenizer.json`, `tokenizer_config.json` with the chat
/// template, and `generation_config.json`. The files are staged beside `dir` and moved into place
/// at the end (`staged_dir.rs`).
pub fn write(checkpoint: &Checkpoint, dir: &Path) -> Result<()> {
    let staged = StagedDir::new(dir).map_err(|e| error(dir, e))?;
    let shape = checkpoint.shape;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (part, tensor) in &checkpoint.tensors {
        let tensor = match part {
            Part::Q(_) | Part::K(_) => {
                let (rows, cols) = tensor.dims2()?;
                let heads = if matches!(part, Part::Q(_)) {
                    shape.heads
                } else {
                    shape.kv_heads
                };
                let data = permute_rows(&tensor.flatten_all()?.to_vec1::<f32>()?, rows, cols, heads, false);
                Tensor::from_vec(data, (rows, cols), &Device::Cpu)?
            }
            _ => tensor.clone(),
        };
        tensors.insert(part.hf_name(), tensor);
    }
    let tokenizer = &checkpoint.tokenizer;
    let context_length = checkpoint.context_length;
    let config = json!({
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": shape.dim,
        "intermediate_size": checkpoint.intermediate_size()?,
        "num_hidden_layers": shape.layers,
        "num_attention_heads": shape.heads,
        "num_key_value_heads": shape.kv_heads,
        "head_dim": shape.dim / shape.heads,
        "hidden_act": "silu",
        "rms_norm_eps": shape.eps,
        "rope_theta": shape.rope_base,
        "rope_scaling": null,
        "max_position_embeddings": context_length,
        "vocab_size": checkpoint.vocab_size()?,
        "tie_word_embeddings": checkpoint.tied(),
        "bos_token_id": checkpoint.bos,
        "eos_token_id": checkpoint.eos,
        "torch_dtype": "float32",
        "attention_bias": false,
        "mlp_bias": false,
    });
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": checkpoint.chat_template,
        "bos_token": token_text(tokenizer, checkpoint.bos),
        "eos_token": token_text(tokenizer, checkpoint.eos),
        "add_bos_token": checkpoint.add_bos,
        "model_max_length": context_length,
        "clean_up_tokenization_spaces": false,
    });
    let generation = json!({ "bos_token_id": checkpoint.bos, "eos_token_id": checkpoint.eos });

    let write_json = |name: &str, value: &Value| -> Result<()> {
        let path = staged.path().join(name);
        let text = serde_json::to_string_pretty(value).map_err(|e| error(&path, e))?;
        std::fs::write(&path, text + "\n").map_err(|e| error(&path, e))
    };
    write_json("config.json", &config)?;
    write_json("tokenizer_config.json", &tokenizer_config)?;
    write_json("generation_config.json", &generation)?;
    let tokenizer_path = staged.path().join("tokenizer.json");
    tokenizer
        .save(&tokenizer_path, true)
        .map_err(|e| error(&tokenizer_path, e))?;
    candle_core::safetensors::save(&tensors, staged.path().join("model.safetensors"))?;
    staged.commit().map_err(|e| error(dir, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_rows_round_trip_between_the_two_rope_layouts() {
        // 2 heads of 4 rows, 3 columns: each row filled with its index.
        let (rows, cols, heads) = (8, 3, 2);
        let data: Vec<f32> = (0..rows).flat_map(|r| vec![r as f32; cols]).collect();
        let gguf = permute_rows(&data, rows, cols, heads, true);
        // Head 0 in transformers' order is [a0 a1 | b0 b1]; GGUF pairs them: a0 b0 a1 b1.
        let order: Vec<f32> = gguf.chunks(cols).map(|r| r[0]).collect();
        assert_eq!(order, vec![0.0, 2.0, 1.0, 3.0, 4.0, 6.0, 5.0, 7.0]);
        assert_eq!(permute_rows(&gguf, rows, cols, heads, false), data);
    }
}
