//! A llama-family model held as f32 tensors, with its tokenizer and chat template: what fine-tuning
//! starts from and what a merged model is written from.
//!
//! The [`Generator`](super::Generator) keeps a model's stored blocks for speed; training needs every
//! weight as a plain f32 matrix. Both read through the same loaders ([`Source`]: a GGUF file's
//! tensors, dequantized exactly, or an HF directory's safetensors), so a fine-tuned model starts
//! from exactly the weights the service runs. Matrices keep GGUF's row order (interleaved RoPE
//! pairs for the query and key projections); [`hf::write`](super::hf::write) permutes them back.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use tokenizers::Tokenizer;

use super::chat_template::CHATML;
use super::kernels::Matrix;
use super::llama::{GgufSource, Part, Shape, Source, gguf_shape};
use super::{GenerationError, gguf_tokenizer, hf};

type Result<T> = std::result::Result<T, GenerationError>;

/// Tokens that end an assistant's turn, in the order they are looked for.
const END_OF_TURN: [&str; 4] = ["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"];

/// A model's weights as f32 tensors and what is needed to prompt it.
#[derive(Clone)]
pub struct Checkpoint {
    /// The model's shape.
    pub shape: Shape,
    /// Every tensor the model has, matrices `rows x cols` in GGUF's row order.
    pub tensors: BTreeMap<Part, Tensor>,
    /// The tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template's source (ChatML when the model ships none).
    pub chat_template: String,
    /// The end-of-sequence token the model declares.
    pub eos: Option<u32>,
    /// The beginning-of-sequence token.
    pub bos: Option<u32>,
    /// Whether prompts start with `bos`.
    pub add_bos: bool,
    /// Positions the model was trained for (at most the `max_positions` asked for).
    pub context_length: usize,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("shape", &self.shape)
            .field("tensors", &self.tensors.len())
            .field("context_length", &self.context_length)
            .finish_non_exhaustive()
    }
}

fn matrix_tensor(matrix: Matrix) -> Result<Tensor> {
    let (rows, cols) = (matrix.rows(), matrix.cols());
    let data = match matrix {
        Matrix::F32 { data, .. } => data,
        quantized => {
            let mut data = vec![0f32; rows * cols];
            for (row, out) in data.chunks_exact_mut(cols).enumerate() {
                quantized.row_into(row, out);
            }
            data
        }
    };
    Ok(Tensor::from_vec(data, (rows, cols), &Device::Cpu)?)
}

fn read_tensors(shape: Shape, source: &mut dyn Source) -> Result<BTreeMap<Part, Tensor>> {
    let mut tensors = BTreeMap::new();
    for part in Part::all(shape.layers) {
        if part == Part::Output && !source.has(part) {
            continue;
        }
        let tensor = if part.is_vector() {
            let data = source.vector(part)?;
            let len = data.len();
            Tensor::from_vec(data, len, &Device::Cpu)?
        } else {
            matrix_tensor(source.matrix(part)?)?
        };
        tensors.insert(part, tensor);
    }
    Ok(tensors)
}

impl Checkpoint {
    /// Reads a llama-family GGUF file or HF-layout directory, keeping at most `max_positions`
    /// positions of context.
    pub fn load(path: &Path, max_positions: usize) -> Result<Self> {
        if path.is_dir() {
            let mut opened = hf::open(path, max_positions)?;
            let tensors = read_tensors(opened.shape, opened.source())?;
            return Ok(Checkpoint {
                shape: opened.shape,
                tensors,
                chat_template: opened.chat_template.clone().unwrap_or_else(|| CHATML.to_string()),
                eos: opened.eos.first().copied(),
                bos: opened.bos,
                add_bos: opened.bos.is_some(),
                context_length: opened.context_length,
                tokenizer: opened.tokenizer,
            });
        }
        let (mut file, content) = super::open_llama_gguf(path)?;
        let shape = gguf_shape(&content)?;
        let (tokenizer, special) = gguf_tokenizer::from_gguf(&content)?;
        let chat_template = content
            .metadata
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok())
            .cloned()
            .unwrap_or_else(|| CHATML.to_string());
        let context_length = content
            .metadata
            .get("llama.context_length")
            .and_then(|v| v.to_u32().ok())
            .map_or(2048, |n| n as usize)
            .min(max_positions);
        let tensors = read_tensors(
            shape,
            &mut GgufSource {
                content: &content,
                file: &mut file,
            },
        )?;
        Ok(Checkpoint {
            shape,
            tensors,
            tokenizer,
            chat_template,
            eos: special.eos,
            bos: special.bos,
            add_bos: special.add_bos,
            context_length,
        })
    }

    /// A tensor the model must have.
    pub fn tensor(&self, part: Part) -> Result<&Tensor> {
        self.tensors
            .get(&part)
            .ok_or_else(|| GenerationError::Format(format!("the model lacks {}", part.gguf_name())))
    }

    /// Whether the output projection is the token embedding.
    pub fn tied(&self) -> bool {
        !self.tensors.contains_key(&Part::Output)
    }

    /// Tokens in the vocabulary (rows of the embedding).
    pub fn vocab_size(&self) -> Result<usize> {
        Ok(self.tensor(Part::Embedding)?.dims2()?.0)
    }

    /// Hidden features of the MLP (rows of the gate projection).
    pub fn intermediate_size(&self) -> Result<usize> {
        Ok(self.tensor(Part::Gate(0))?.dims2()?.0)
    }

    /// The token that ends an assistant's answer: the first of the usual end-of-turn markers the
    /// vocabulary has, else the end-of-sequence token.
    pub fn end_of_turn(&self) -> Result<u32> {
        END_OF_TURN
            .iter()
            .find_map(|t| self.tokenizer.token_to_id(t))
            .or(self.eos)
            .ok_or_else(|| GenerationError::Format("the tokenizer has no end-of-turn or end-of-sequence token".into()))
    }
}
