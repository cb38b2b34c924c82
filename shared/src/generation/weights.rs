//! How the SLM's weights are held in memory, chosen at load time.
//!
//! A GGUF's stored format is not always the best to run. Conversion dequantizes each matrix (exactly:
//! dequantization reproduces the stored values) and, for a quantized target, quantizes it again, once,
//! while loading.
//!
//! Faithfulness comes first. Quantized CPU kernels (candle's and llama.cpp's alike) also quantize
//! the activations to 8 bits before each matmul, and for SmolLM2-135M that changes greedy answers:
//! "What is the capital of France?" gets "L'Étoile, la Marseillaise…" from candle on Q8_0 or Q4_1
//! weights and "L'Étoile, la Cité…" from llama.cpp on the stored Q4_1 file, while F32 and F16
//! weights answer "The capital of France is Paris.", as transformers does on the same GGUF
//! dequantized. The default therefore keeps the weights exact: `Packed` keeps the stored blocks and
//! dequantizes them inside engram's own kernels, with activations in f32 or, for a decoded token,
//! rounded to 16 bits per block (256 times finer than 8; the f32 answers, tested, at the file's
//! memory); `F32` holds them dequantized; candle's quantized formats stay available where answers
//! may differ.

use std::fmt;
use std::io::Cursor;
use std::str::FromStr;

use candle_core::Device;
use candle_core::quantized::gguf_file::{self, Content};
use candle_core::quantized::{GgmlDType, QTensor};

use super::GenerationError;

/// The in-memory representation of the model's matrices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightFormat {
    /// As stored in the file.
    AsStored,
    /// 8-bit blocks: fast decode; activations are quantized too, which changes answers (see module docs).
    Q8_0,
    /// 4-bit blocks with SIMD kernels: smallest, slower than Q8_0.
    Q4_0,
    /// Half precision.
    F16,
    /// Full precision: exact, the most memory (5.5x a Q4_1 file).
    F32,
    /// The default: the stored Q4_1/Q8_0 blocks, kept packed and dequantized exactly inside
    /// engram's own kernels (`kernels/`, `llama.rs`), activations in f32 or 16-bit blocks: the
    /// f32 answers, at about the file's memory, decoding several times faster than f32.
    #[default]
    Packed,
}

impl WeightFormat {
    fn target(self) -> Option<GgmlDType> {
        match self {
            WeightFormat::AsStored => None,
            WeightFormat::Q8_0 => Some(GgmlDType::Q8_0),
            WeightFormat::Q4_0 => Some(GgmlDType::Q4_0),
            WeightFormat::F16 => Some(GgmlDType::F16),
            WeightFormat::F32 => Some(GgmlDType::F32),
            WeightFormat::Packed => None,
        }
    }
}

impl fmt::Display for WeightFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WeightFormat::AsStored => "as-stored",
            WeightFormat::Q8_0 => "q8_0",
            WeightFormat::Q4_0 => "q4_0",
            WeightFormat::F16 => "f16",
            WeightFormat::F32 => "f32",
            WeightFormat::Packed => "packed",
        })
    }
}

impl FromStr for WeightFormat {
    type Err = GenerationError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "as-stored" | "stored" => WeightFormat::AsStored,
            "q8_0" | "q8" => WeightFormat::Q8_0,
            "q4_0" | "q4" => WeightFormat::Q4_0,
            "f16" => WeightFormat::F16,
            "f32" => WeightFormat::F32,
            "packed" => WeightFormat::Packed,
            other => {
                return Err(GenerationError::Request(format!(
                    "unknown weight format {other:?}: use as-stored, q8_0, q4_0, f16, f32 or packed"
                )));
            }
        })
    }
}

/// True for tensors the conversion should touch: 2-D matrices whose rows fit the target's blocks.
fn convertible(tensor: &QTensor, target: GgmlDType) -> bool {
    let dims = tensor.shape().dims();
    dims.len() == 2 && tensor.dtype() != target && dims[dims.len() - 1].is_multiple_of(target.block_size())
}

/// A GGUF held in memory: its parsed header and a reader over its bytes.
pub type InMemoryGguf = (Content, Cursor<Vec<u8>>);

/// Reads every tensor of `content`, converts matrices to `format`, and returns an in-memory GGUF
/// with the same metadata that candle's loaders read as if it were the file.
pub fn convert<R: std::io::Read + std::io::Seek>(
    content: &Content,
    reader: &mut R,
    format: WeightFormat,
) -> Result<Option<InMemoryGguf>, GenerationError> {
    let Some(target) = format.target() else {
        return Ok(None);
    };
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let tensor = content.tensor(reader, name, &device)?;
        let tensor = if convertible(&tensor, target) {
            QTensor::quantize(&tensor.dequantize(&device)?, target)?
        } else {
            tensor
        };
        tensors.push((name.as_str(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (*n, t)).collect();
    let mut buffer = Cursor::new(Vec::new());
    gguf_file::write(&mut buffer, &metadata, &tensor_refs)?;
    drop(tensors);
    buffer.set_position(0);
    let converted = Content::read(&mut buffer)?;
    Ok(Some((converted, buffer)))
}
