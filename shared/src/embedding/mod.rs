//! Text embeddings: a BERT-family sentence-transformers model, on CPU.
//!
//! The pipeline embeds chunks and the service embeds questions with the same [`Embedder`], so the
//! vectors meet in the index. It reproduces sentence-transformers: the model's tokenizer truncated
//! at `max_seq_length`, mean pooling over real tokens, L2 normalisation. Texts are batched by a token
//! budget after sorting by length. Two encoders read the same weights (loaded by candle): engram's
//! own packed encoder (`bert.rs`, the default: no padding at all, one gemm per layer over every
//! token) and candle's `BertModel` (padded to each batch's longest text), kept as the reference.

mod batching;
pub mod bert;

use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

pub use batching::plan_batches;

/// Why an embedding model could not be loaded or run.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddingError {
    /// A file of the model directory is missing or unreadable.
    #[error(
        "{path}: {reason}. An embedding model directory holds config.json, model.safetensors and tokenizer.json (run scripts/fetch-models.sh for the default)"
    )]
    Files {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The weights do not make the model the config describes.
    #[error("embedding model weights: {0}. Pass a BERT-family sentence-transformers directory")]
    Weights(String),
    /// candle failed while running the model.
    #[error("embedding model: {0}")]
    Model(#[from] candle_core::Error),
}

type Result<T> = std::result::Result<T, EmbeddingError>;

/// Which encoder runs the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Encoder {
    /// engram's packed encoder (`bert.rs`): texts end to end, no padding.
    #[default]
    Packed,
    /// candle's `BertModel` on padded batches: the reference.
    Candle,
}

/// Tuning of an [`Embedder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EmbedderOptions {
    /// Most tokens (longest length × texts) in one forward pass.
    pub batch_tokens: usize,
    /// The encoder.
    pub encoder: Encoder,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        EmbedderOptions {
            batch_tokens: 8192,
            encoder: Encoder::default(),
        }
    }
}

/// The loaded encoder.
enum Model {
    Packed(bert::Bert),
    Candle(Box<BertModel>),
}

/// Vectors for a list of texts, in the order given.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// One L2-normalised vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Indices of the texts that were longer than the model's limit and were cut.
    pub truncated: Vec<usize>,
}

/// A loaded sentence-embedding model. Load once and share: `embed` takes `&self`.
pub struct Embedder {
    model: Model,
    tokenizer: Tokenizer,
    device: Device,
    model_id: String,
    dimension: usize,
    max_tokens: usize,
    options: EmbedderOptions,
}

impl std::fmt::Debug for Embedder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Embedder")
            .field("model_id", &self.model_id)
            .field("dimension", &self.dimension)
            .field("max_tokens", &self.max_tokens)
            .finish()
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| EmbeddingError::Files {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn json(path: &Path) -> Result<serde_json::Value> {
    serde_json::from_str(&read(path)?).map_err(|e| EmbeddingError::Files {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })
}

impl Embedder {
    /// Loads an HF-layout directory (config.json, model.safetensors, tokenizer.json and, when present,
    /// sentence-transformers' sentence_bert_config.json for the maximum sequence length).
    pub fn load(dir: &Path, options: EmbedderOptions) -> Result<Self> {
        let config_path = dir.join("config.json");
        let config: BertConfig = serde_json::from_str(&read(&config_path)?).map_err(|e| EmbeddingError::Files {
            path: config_path.clone(),
            reason: format!("not a BERT config: {e}"),
        })?;
        let config_json = json(&config_path)?;
        let dimension = config_json["hidden_size"].as_u64().unwrap_or(0) as usize;
        let positions = config_json["max_position_embeddings"].as_u64().unwrap_or(512) as usize;
        let st_config = dir.join("sentence_bert_config.json");
        let max_tokens = if st_config.exists() {
            json(&st_config)?["max_seq_length"]
                .as_u64()
                .map(|n| n as usize)
                .unwrap_or(positions)
        } else {
            positions
        }
        .min(positions);

        let tokenizer_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tokenizer_path).map_err(|e| EmbeddingError::Files {
            path: tokenizer_path.clone(),
            reason: e.to_string(),
        })?;
        // The file's own padding and truncation settings are for another use; batches are padded here.
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_tokens,
                ..Default::default()
            }))
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;

        let weights = dir.join("model.safetensors");
        if !weights.exists() {
            return Err(EmbeddingError::Files {
                path: weights,
                reason: "missing".into(),
            });
        }
        let device = Device::Cpu;
        let model = match options.encoder {
            Encoder::Packed => {
                let shape: bert::BertShape =
                    serde_json::from_value(config_json.clone()).map_err(|e| EmbeddingError::Files {
                        path: config_path.clone(),
                        reason: format!("not a BERT config: {e}"),
                    })?;
                // SAFETY: the weights file is memory-mapped read-only; engram never writes model
                // files in place, and the encoder copies the tensors out.
                let tensors = unsafe { MmapedSafetensors::new(&weights)? };
                Model::Packed(bert::Bert::load(&tensors, &shape)?)
            }
            Encoder::Candle => {
                // SAFETY: as above.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
                Model::Candle(Box::new(BertModel::load(vb, &config).or_else(|_| {
                    // Some exports prefix every tensor with the architecture name.
                    // SAFETY: as above.
                    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &device)? };
                    BertModel::load(vb.pp("bert"), &config)
                })?))
            }
        };
        let model_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "embedding-model".into());
        Ok(Embedder {
            model,
            tokenizer,
            device,
            model_id,
            dimension,
            max_tokens,
            options,
        })
    }

    /// The model's id, recorded in the index manifest (the directory's name).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// The vectors' dimension.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// The most tokens of a text the model reads; longer texts are truncated.
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }

    /// How many model tokens `text` has (before truncation), e.g. for sizing chunks.
    pub fn count_tokens(&self, text: &str) -> Result<usize> {
        let encoding = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        Ok(encoding.len() + encoding.get_overflowing().iter().map(|o| o.len()).sum::<usize>())
    }

    /// Embeds `texts`, returning one normalised vector per text in the same order.
    pub fn embed<S: AsRef<str> + Sync>(&self, texts: &[S]) -> Result<Embeddings> {
        let encodings: Vec<Encoding> = texts
            .iter()
            .map(|t| self.tokenizer.encode(t.as_ref(), true))
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| EmbeddingError::Tokenizer(e.to_string()))?;
        let truncated: Vec<usize> = encodings
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.get_overflowing().is_empty())
            .map(|(i, _)| i)
            .collect();
        if !truncated.is_empty() {
            tracing::debug!(
                count = truncated.len(),
                max_tokens = self.max_tokens,
                "texts truncated to the model's limit"
            );
        }
        let lengths: Vec<usize> = encodings.iter().map(|e| e.len()).collect();
        let mut vectors = vec![Vec::new(); texts.len()];
        for batch in plan_batches(&lengths, self.options.batch_tokens) {
            let batch_encodings: Vec<&Encoding> = batch.iter().map(|&i| &encodings[i]).collect();
            for (i, vector) in batch.iter().zip(self.forward(&batch_encodings)?) {
                vectors[*i] = vector;
            }
        }
        Ok(Embeddings { vectors, truncated })
    }

    /// Runs one batch and pools it.
    fn forward(&self, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>> {
        match &self.model {
            Model::Packed(bert) => {
                let texts: Vec<(&[u32], &[u32])> = batch.iter().map(|e| (e.get_ids(), e.get_type_ids())).collect();
                bert.embed(&texts)
            }
            Model::Candle(model) => self.forward_padded(model, batch),
        }
    }

    /// Runs one batch padded to its longest text through candle's `BertModel`, and pools it.
    fn forward_padded(&self, model: &BertModel, batch: &[&Encoding]) -> Result<Vec<Vec<f32>>> {
        let width = batch.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(batch.len() * width);
        let mut types = Vec::with_capacity(batch.len() * width);
        let mut mask = Vec::with_capacity(batch.len() * width);
        for encoding in batch {
            let pad = width - encoding.len();
            ids.extend(encoding.get_ids().iter().copied().chain(std::iter::repeat_n(0, pad)));
            types.extend(
                encoding
                    .get_type_ids()
                    .iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, pad)),
            );
            mask.extend(std::iter::repeat_n(1u32, encoding.len()).chain(std::iter::repeat_n(0, pad)));
        }
        let shape = (batch.len(), width);
        let ids = Tensor::from_vec(ids, shape, &self.device)?;
        let types = Tensor::from_vec(types, shape, &self.device)?;
        let mask = Tensor::from_vec(mask, shape, &self.device)?;
        let hidden = model.forward(&ids, &types, Some(&mask))?;
        // Mean over real tokens, then L2: what sentence-transformers' Pooling + Normalize do.
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
        let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
        let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
        let mean = summed.broadcast_div(&counts)?;
        let norms = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
        Ok(mean.broadcast_div(&norms)?.to_vec2::<f32>()?)
    }
}
