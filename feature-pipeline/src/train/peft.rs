//! LoRA adapters in PEFT's layout, so `peft.PeftModel.from_pretrained(base, dir)` loads what
//! engram trains, and engram loads what `peft` trains.
//!
//! A directory holds `adapter_config.json` (PEFT's `LoraConfig`) and `adapter_model.safetensors`
//! with `{"format": "pt"}` metadata and PEFT's tensor names,
//! `base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight` (`r x in`) and `lora_B`
//! (`out x r`). engram keeps the query and key projections' rows in GGUF's interleaved-RoPE order;
//! transformers keeps each head's two halves apart, so `B`'s rows of those two projections are
//! permuted on the way out and back (`A` acts on the input and needs no change).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use anyhow::{Context, bail};
use candle_core::{Device, Tensor, Var};
use engram_shared::generation::hf::permute_rows;
use engram_shared::generation::llama::Shape;
use engram_shared::staged_dir::StagedDir;
use serde_json::{Value, json};

use super::lora::{Adapter, LoraConfig, Pair, Projection};

/// The adapter's configuration file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";

fn tensor_name(layer: usize, projection: Projection, matrix: &str) -> String {
    format!(
        "base_model.model.model.layers.{layer}.{}.lora_{matrix}.weight",
        projection.path()
    )
}

/// The heads whose rows a projection's output is split into, where RoPE makes the layouts differ.
fn rope_heads(projection: Projection, shape: &Shape) -> Option<usize> {
    match projection {
        Projection::Q => Some(shape.heads),
        Projection::K => Some(shape.kv_heads),
        _ => None,
    }
}

fn permuted(b: &Tensor, heads: Option<usize>, to_gguf: bool) -> anyhow::Result<Tensor> {
    let Some(heads) = heads else {
        return Ok(b.clone());
    };
    let (rows, cols) = b.dims2()?;
    let data = permute_rows(&b.flatten_all()?.to_vec1::<f32>()?, rows, cols, heads, to_gguf);
    Ok(Tensor::from_vec(data, (rows, cols), b.device())?)
}

/// Writes `adapter` (trained on a model of `shape`) into `dir`, which must not exist or be empty.
/// `base` names the base model in the config (`base_model_name_or_path`).
pub fn save(adapter: &Adapter, shape: &Shape, base: &str, dir: &Path) -> anyhow::Result<()> {
    let staged = StagedDir::new(dir)?;
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for (layer, pairs) in adapter.layers.iter().enumerate() {
        for (&projection, pair) in pairs {
            tensors.insert(tensor_name(layer, projection, "A"), pair.a.as_tensor().clone());
            let b = permuted(pair.b.as_tensor(), rope_heads(projection, shape), false)?;
            tensors.insert(tensor_name(layer, projection, "B"), b);
        }
    }
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(tensors.iter(), Some(metadata), &staged.path().join(WEIGHTS_FILE))
        .context("cannot write the adapter's safetensors")?;
    let config = &adapter.config;
    let targets: Vec<&str> = config.targets.iter().map(|p| p.module()).collect();
    let file = json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base,
        "r": config.rank,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "target_modules": targets,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "use_rslora": false,
        "use_dora": false,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": null,
    });
    std::fs::write(
        staged.path().join(CONFIG_FILE),
        serde_json::to_string_pretty(&file)? + "\n",
    )?;
    staged.commit()?;
    Ok(())
}

/// Reads a PEFT LoRA adapter for a model of `shape` (`layers` blocks) from `dir`.
pub fn load(dir: &Path, shape: &Shape, device: &Device) -> anyhow::Result<Adapter> {
    let config_path = dir.join(CONFIG_FILE);
    let text = std::fs::read_to_string(&config_path)
        .with_context(|| format!("{}: not a PEFT adapter directory", dir.display()))?;
    let file: Value = serde_json::from_str(&text).with_context(|| format!("{}: not JSON", config_path.display()))?;
    let refuse = |what: &str| -> anyhow::Result<Adapter> {
        bail!(
            "{}: {what}; engram reads plain LoRA adapters (PEFT's defaults)",
            config_path.display()
        )
    };
    if file["peft_type"].as_str() != Some("LORA") {
        return refuse("peft_type is not LORA");
    }
    if file["use_rslora"].as_bool() == Some(true) || file["use_dora"].as_bool() == Some(true) {
        return refuse("rsLoRA and DoRA are not supported");
    }
    if file["fan_in_fan_out"].as_bool() == Some(true) {
        return refuse("fan_in_fan_out is set");
    }
    if file["bias"].as_str().is_some_and(|b| b != "none") {
        return refuse("bias is trained");
    }
    let patterns_empty = |key: &str| file[key].as_object().is_none_or(|o| o.is_empty());
    if !patterns_empty("rank_pattern") || !patterns_empty("alpha_pattern") {
        return refuse("rank_pattern/alpha_pattern are set");
    }
    let rank = file["r"].as_u64().context("adapter_config.json lacks r")? as usize;
    let alpha = file["lora_alpha"]
        .as_f64()
        .context("adapter_config.json lacks lora_alpha")?;
    let dropout = file["lora_dropout"].as_f64().unwrap_or(0.0);
    let weights_path = dir.join(WEIGHTS_FILE);
    let tensors = candle_core::safetensors::load(&weights_path, device)
        .with_context(|| format!("cannot read {}", weights_path.display()))?;
    // The modules present decide the targets (target_modules may be a regex in PEFT).
    let mut targets: Vec<Projection> = Projection::ALL
        .into_iter()
        .filter(|&p| tensors.contains_key(&tensor_name(0, p, "A")))
        .collect();
    targets.sort();
    if targets.is_empty() {
        bail!(
            "{}: no LoRA tensors for layer 0 of a llama model (expected names like {})",
            weights_path.display(),
            tensor_name(0, Projection::Q, "A")
        );
    }
    let mut layers = Vec::with_capacity(shape.layers);
    for layer in 0..shape.layers {
        let mut pairs = BTreeMap::new();
        for &projection in &targets {
            let get = |matrix: &str| -> anyhow::Result<Tensor> {
                let name = tensor_name(layer, projection, matrix);
                let t = tensors
                    .get(&name)
                    .with_context(|| format!("{}: missing {name}", weights_path.display()))?;
                Ok(t.to_dtype(candle_core::DType::F32)?)
            };
            let a = get("A")?;
            let b = permuted(&get("B")?, rope_heads(projection, shape), true)?;
            if a.dims2()?.0 != rank || b.dims2()?.1 != rank {
                bail!(
                    "{}: {projection} of layer {layer} has rank {:?}/{:?}, the config says {rank}",
                    weights_path.display(),
                    a.dims(),
                    b.dims()
                );
            }
            pairs.insert(
                projection,
                Pair {
                    a: Var::from_tensor(&a)?,
                    b: Var::from_tensor(&b)?,
                },
            );
        }
        layers.push(pairs);
    }
    Ok(Adapter {
        config: LoraConfig {
            rank,
            alpha,
            dropout,
            targets,
        },
        layers,
    })
}
