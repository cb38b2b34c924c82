//! A fine-tuned model as one set of weights: each adapted projection becomes `W + (alpha/r)·B·A`.
//!
//! The merged model is written twice: in HF layout (f32 safetensors, tokenizer, chat template:
//! what transformers loads) and as a GGUF for the service, whose packed kernels read Q4_1 and Q8_0
//! blocks. The GGUF copies the base file's metadata and every tensor the adapter did not touch as
//! stored; the merged projections are quantized to [`MergedBlocks`].

use std::fs::File;
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::Device;
use candle_core::quantized::gguf_file;
use candle_core::quantized::{GgmlDType, QTensor};
use engram_shared::generation::checkpoint::Checkpoint;

use super::lora::Adapter;

/// The block type of the merged projections in the served GGUF.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MergedBlocks {
    /// The base file's own type for each matrix (Q4_1 for the shipped SmolLM2): smallest and
    /// fastest, but an update smaller than half a quantization step rounds back to the base.
    Base,
    /// 8-bit blocks: 256 levels per block keep small updates (the default).
    Q8_0,
}

/// `checkpoint` with `adapter` merged into its projections.
pub fn merge(checkpoint: &Checkpoint, adapter: &Adapter) -> anyhow::Result<Checkpoint> {
    if adapter.layers.len() != checkpoint.shape.layers {
        bail!(
            "the adapter has {} layers, the model {}",
            adapter.layers.len(),
            checkpoint.shape.layers
        );
    }
    let mut merged = checkpoint.clone();
    for (layer, pairs) in adapter.layers.iter().enumerate() {
        for &projection in pairs.keys() {
            let part = projection.part(layer);
            let Some(update) = adapter.update(layer, projection)? else {
                continue;
            };
            let base = checkpoint.tensor(part)?;
            if base.dims() != update.dims() {
                bail!(
                    "the adapter's {projection} update of layer {layer} is {:?}, the model's matrix {:?}",
                    update.dims(),
                    base.dims()
                );
            }
            merged.tensors.insert(part, (base + update.to_device(base.device())?)?);
        }
    }
    Ok(merged)
}

/// Writes `merged` as a GGUF at `out`, taking metadata and untouched tensors from the base GGUF
/// `base`; the adapted projections' blocks are `blocks`.
pub fn write_gguf(
    base: &Path,
    merged: &Checkpoint,
    adapter: &Adapter,
    blocks: MergedBlocks,
    out: &Path,
) -> anyhow::Result<()> {
    let mut file = File::open(base).with_context(|| format!("cannot open {}", base.display()))?;
    let content = engram_shared::generation::gguf_bounds::read_checked(&mut file)
        .map_err(|reason| anyhow::anyhow!("{}: {reason}", base.display()))?;
    let adapted: std::collections::HashMap<String, engram_shared::generation::llama::Part> = adapter
        .layers
        .iter()
        .enumerate()
        .flat_map(|(layer, pairs)| pairs.keys().map(move |p| (p.part(layer).gguf_name(), p.part(layer))))
        .collect();
    let device = Device::Cpu;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let stored = content.tensor(&mut file, name, &device)?;
        let tensor = match adapted.get(name) {
            Some(part) => {
                let dtype = match blocks {
                    MergedBlocks::Base => stored.dtype(),
                    MergedBlocks::Q8_0 => GgmlDType::Q8_0,
                };
                let weights = merged.tensor(*part)?;
                let cols = weights.dims2()?.1;
                let dtype = if cols.is_multiple_of(dtype.block_size()) {
                    dtype
                } else {
                    GgmlDType::F32
                };
                QTensor::quantize(weights, dtype)?
            }
            None => stored,
        };
        tensors.push((name.clone(), tensor));
    }
    let metadata: Vec<(&str, &gguf_file::Value)> = content.metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    // Written beside the target and renamed into place: never half a file at `out`.
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent)?;
    let staged = tempfile::NamedTempFile::new_in(parent)?;
    {
        let mut writer = std::io::BufWriter::new(staged.as_file());
        gguf_file::write(&mut writer, &metadata, &refs)?;
        std::io::Write::flush(&mut writer)?;
    }
    staged.as_file().sync_all()?;
    staged
        .persist(out)
        .with_context(|| format!("cannot move the GGUF into {}", out.display()))?;
    Ok(())
}
