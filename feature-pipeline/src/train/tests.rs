//! Tests of the training pass on small random llama models: its gradients against candle's
//! built-in operations and finite differences, its logits against the inference path, PEFT files
//! and merging, and an overfit run whose merged model the `Generator` loads and runs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor, Var};
use engram_shared::generation::checkpoint::Checkpoint;
use engram_shared::generation::kernels::Matrix;
use engram_shared::generation::llama::{Llama, Part, Shape, Source};
use engram_shared::generation::{GenerationError, GenerationParams, Generator, GeneratorOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::examples::Example;
use super::lora::{Adapter, LoraConfig, Projection};
use super::model::{Base, Batch, Path, Tensors};
use super::trainer::{self, Observer, Schedule, Snapshot, StepRecord};

const HIDDEN: usize = 24;

fn tiny_shape() -> Shape {
    Shape {
        layers: 2,
        heads: 4,
        kv_heads: 2,
        dim: 16,
        eps: 1e-5,
        rope_base: 10_000.0,
    }
}

fn random(rng: &mut StdRng, dims: (usize, usize), spread: f32) -> Tensor {
    let data: Vec<f32> = (0..dims.0 * dims.1)
        .map(|_| rng.random_range(-spread..spread))
        .collect();
    Tensor::from_vec(data, dims, &Device::Cpu).unwrap()
}

/// Random weights for a model of `shape` over `vocab` tokens (output tied unless `untied`).
fn random_tensors(shape: Shape, vocab: usize, seed: u64, untied: bool) -> Tensors {
    let mut rng = StdRng::seed_from_u64(seed);
    let kv = shape.dim / shape.heads * shape.kv_heads;
    let mut tensors = BTreeMap::new();
    for part in Part::all(shape.layers) {
        let dims = match part {
            Part::Embedding | Part::Output => (vocab, shape.dim),
            Part::Q(_) | Part::O(_) => (shape.dim, shape.dim),
            Part::K(_) | Part::V(_) => (kv, shape.dim),
            Part::Gate(_) | Part::Up(_) => (HIDDEN, shape.dim),
            Part::Down(_) => (shape.dim, HIDDEN),
            Part::AttnNorm(_) | Part::FfnNorm(_) | Part::Norm => {
                let data: Vec<f32> = (0..shape.dim).map(|_| rng.random_range(0.8..1.2)).collect();
                tensors.insert(part, Tensor::from_vec(data, shape.dim, &Device::Cpu).unwrap());
                continue;
            }
        };
        if part == Part::Output && !untied {
            continue;
        }
        tensors.insert(part, random(&mut rng, dims, 0.5));
    }
    tensors
}

/// An adapter whose `B` matrices are random too (a fresh one has `B = 0`, where `A` gets no gradient).
fn random_adapter(base: &Base, seed: u64) -> Adapter {
    let config = LoraConfig {
        rank: 3,
        alpha: 6.0,
        ..LoraConfig::default()
    };
    let adapter = Adapter::new(
        config,
        base.shape().layers,
        |p| base.projection_shape(p),
        seed,
        &Device::Cpu,
    )
    .unwrap();
    randomize_b(&adapter, seed + 1);
    adapter
}

/// Draws every `B` matrix of `adapter` from `seed`.
fn randomize_b(adapter: &Adapter, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    for pairs in &adapter.layers {
        for pair in pairs.values() {
            let dims = pair.b.as_tensor().dims2().unwrap();
            pair.b.set(&random(&mut rng, dims, 0.3)).unwrap();
        }
    }
}

fn two_examples() -> Batch {
    let mut batch = Batch::default();
    batch.push(&[3, 17, 4, 29, 11, 8, 2], 3);
    batch.push(&[5, 9, 30, 1, 12], 2);
    batch
}

fn values(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Checks the custom path's loss and every adapter gradient against candle's built-in forms, within
/// `tolerance` of the largest gradient value, and that no gradient is cut; returns the matrices
/// compared.
fn assert_matches_candle(base: &Base, adapter: &Adapter, batch: &Batch, tolerance: f32) -> usize {
    let custom = base.loss_sum(adapter, batch, Path::Custom, false).unwrap();
    let candle = base.loss_sum(adapter, batch, Path::Candle, false).unwrap();
    let (lc, lr) = (custom.to_scalar::<f32>().unwrap(), candle.to_scalar::<f32>().unwrap());
    assert!((lc - lr).abs() < 1e-4 * lr.abs().max(1.0), "loss {lc} vs candle's {lr}");
    let (gc, gr) = (custom.backward().unwrap(), candle.backward().unwrap());
    let vars = adapter.vars();
    for var in &vars {
        let a = values(
            gc.get(var.as_tensor())
                .expect("custom path reaches every adapter matrix"),
        );
        let b = values(
            gr.get(var.as_tensor())
                .expect("candle path reaches every adapter matrix"),
        );
        let scale = b.iter().map(|v| v.abs()).fold(1e-3, f32::max);
        assert!(
            max_difference(&a, &b) < tolerance * scale.max(1.0),
            "gradient differs by {} (largest {scale})",
            max_difference(&a, &b)
        );
        assert!(a.iter().any(|v| *v != 0.0), "a gradient is all zero: cut somewhere");
    }
    vars.len()
}

#[test]
fn custom_ops_give_candles_loss_and_lora_gradients() {
    for untied in [false, true] {
        let shape = tiny_shape();
        let tensors = random_tensors(shape, 37, 1, untied);
        let base = Base::new(shape, &tensors, 64, &Device::Cpu).unwrap();
        let adapter = random_adapter(&base, 2);
        let checked = assert_matches_candle(&base, &adapter, &two_examples(), 2e-4);
        assert_eq!(checked, 2 * 7 * shape.layers);
    }
}

#[test]
fn adapters_on_some_projections_give_candles_loss_and_gradients() {
    // Q and V adapted but not K (the stacked product falls back to one product per projection),
    // neither gate nor up (the stack runs frozen), down adapted.
    let shape = tiny_shape();
    let tensors = random_tensors(shape, 37, 21, false);
    let base = Base::new(shape, &tensors, 64, &Device::Cpu).unwrap();
    let config = LoraConfig {
        rank: 2,
        alpha: 4.0,
        targets: vec![Projection::Q, Projection::V, Projection::Down],
        ..LoraConfig::default()
    };
    let adapter = Adapter::new(config, shape.layers, |p| base.projection_shape(p), 22, &Device::Cpu).unwrap();
    randomize_b(&adapter, 23);
    let checked = assert_matches_candle(&base, &adapter, &two_examples(), 2e-4);
    assert_eq!(checked, 2 * 3 * shape.layers);
}

#[test]
fn sequences_longer_than_a_causal_block_give_candles_loss_and_gradients() {
    let shape = tiny_shape();
    let tensors = random_tensors(shape, 37, 12, false);
    let base = Base::new(shape, &tensors, 512, &Device::Cpu).unwrap();
    let adapter = random_adapter(&base, 13);
    let mut batch = Batch::default();
    let long: Vec<u32> = (0..300u32).map(|i| (i * 7 + 3) % 37).collect();
    let other: Vec<u32> = (0..140u32).map(|i| (i * 11 + 5) % 37).collect();
    batch.push(&long, 100);
    batch.push(&other, 20);
    assert_matches_candle(&base, &adapter, &batch, 5e-4);
}

#[test]
fn lora_gradients_match_finite_differences() {
    let shape = tiny_shape();
    let tensors = random_tensors(shape, 37, 3, false);
    let base = Base::new(shape, &tensors, 64, &Device::Cpu).unwrap();
    let adapter = random_adapter(&base, 4);
    let batch = two_examples();
    let loss = |adapter: &Adapter| -> f64 {
        base.loss_sum(adapter, &batch, Path::Custom, false)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    let grads = base
        .loss_sum(&adapter, &batch, Path::Custom, false)
        .unwrap()
        .backward()
        .unwrap();
    let vars = adapter.vars();
    let mut rng = StdRng::seed_from_u64(5);
    for k in 0..12 {
        let var: &Var = &vars[(k * 5) % vars.len()];
        let original = values(var.as_tensor());
        let i = rng.random_range(0..original.len());
        let analytic = values(grads.get(var.as_tensor()).unwrap())[i] as f64;
        let eps = 1e-2f32;
        let nudged = |delta: f32| {
            let mut v = original.clone();
            v[i] += delta;
            var.set(&Tensor::from_vec(v, var.as_tensor().dims(), &Device::Cpu).unwrap())
                .unwrap();
            let l = loss(&adapter);
            var.set(&Tensor::from_vec(original.clone(), var.as_tensor().dims(), &Device::Cpu).unwrap())
                .unwrap();
            l
        };
        let numeric = (nudged(eps) - nudged(-eps)) / (2.0 * eps as f64);
        assert!(
            (numeric - analytic).abs() < 2e-2 * analytic.abs().max(numeric.abs()) + 2e-3,
            "matrix {k}, element {i}: analytic {analytic}, finite differences {numeric}"
        );
    }
}

/// The tensors as the inference path reads a model.
struct MapSource<'a>(&'a Tensors);

impl Source for MapSource<'_> {
    fn has(&self, part: Part) -> bool {
        self.0.contains_key(&part)
    }
    fn matrix(&mut self, part: Part) -> Result<Matrix, GenerationError> {
        let t = &self.0[&part];
        let (rows, cols) = t.dims2()?;
        Ok(Matrix::F32 {
            rows,
            cols,
            data: values(t),
        })
    }
    fn vector(&mut self, part: Part) -> Result<Vec<f32>, GenerationError> {
        Ok(values(&self.0[&part]))
    }
}

#[test]
fn the_training_pass_computes_the_inference_pass_logits() {
    let shape = tiny_shape();
    let tensors = random_tensors(shape, 37, 6, false);
    let base = Base::new(shape, &tensors, 64, &Device::Cpu).unwrap();
    // A fresh adapter (B = 0) leaves the base model as it is.
    let adapter = Adapter::new(
        LoraConfig::default(),
        shape.layers,
        |p| base.projection_shape(p),
        7,
        &Device::Cpu,
    )
    .unwrap();
    let tokens = [3u32, 17, 4, 29, 11, 8];
    let llama = Llama::build(shape, &mut MapSource(&tensors), 64).unwrap();
    let mut cache = llama.cache();
    let want = llama.forward(&tokens, &mut cache).unwrap();
    let batch = Batch {
        tokens: tokens.to_vec(),
        positions: (0..tokens.len()).collect(),
        segments: vec![(0, tokens.len())],
        targets: vec![(tokens.len() - 1, 0)],
    };
    for path in [Path::Custom, Path::Candle] {
        let got = values(&base.logits(&adapter, &batch, path, false).unwrap());
        assert!(
            max_difference(&got, &want) < 1e-4,
            "{path:?}: logits differ from the inference path by {}",
            max_difference(&got, &want)
        );
    }
}

#[test]
fn a_peft_round_trip_and_the_merged_weights_give_the_adapted_logits() {
    let shape = tiny_shape();
    let tensors = random_tensors(shape, 37, 8, false);
    let base = Base::new(shape, &tensors, 64, &Device::Cpu).unwrap();
    let adapter = random_adapter(&base, 9);
    let batch = two_examples();
    let adapted = values(&base.logits(&adapter, &batch, Path::Custom, false).unwrap());

    let dir = tempfile::tempdir().unwrap();
    super::peft::save(&adapter, &shape, "tiny", &dir.path().join("adapter")).unwrap();
    let loaded = super::peft::load(&dir.path().join("adapter"), &shape, &Device::Cpu).unwrap();
    assert_eq!(loaded.config, adapter.config);
    let reloaded = values(&base.logits(&loaded, &batch, Path::Custom, false).unwrap());
    assert_eq!(reloaded, adapted, "PEFT's layout loses nothing");

    let mut merged = tensors.clone();
    for (layer, pairs) in adapter.layers.iter().enumerate() {
        for &projection in pairs.keys() {
            let part = projection.part(layer);
            merged.insert(
                part,
                (&merged[&part] + adapter.update(layer, projection).unwrap().unwrap()).unwrap(),
            );
        }
    }
    let merged_base = Base::new(shape, &merged, 64, &Device::Cpu).unwrap();
    let empty = Adapter {
        config: adapter.config.clone(),
        layers: vec![BTreeMap::new(); shape.layers],
    };
    let got = values(&merged_base.logits(&empty, &batch, Path::Custom, false).unwrap());
    assert!(max_difference(&got, &adapted) < 1e-4);
}

/// The shipped SmolLM2 GGUF (scripts/fetch-models.sh puts it there).
fn smollm2() -> PathBuf {
    let dir = std::env::var_os("ENGRAM_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models"));
    let path = dir.join("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        path.exists(),
        "{} is missing: run scripts/fetch-models.sh",
        path.display()
    );
    path
}

struct Quiet(Vec<f64>);

impl Observer for Quiet {
    fn step(&mut self, record: &StepRecord, _total: usize) {
        self.0.push(record.loss);
    }
    fn checkpoint(&mut self, _snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}

#[test]
fn a_few_steps_halve_the_loss_and_the_merged_model_serves() {
    // SmolLM2's tokenizer and template over a tiny random model of its vocabulary.
    let real = Checkpoint::load(&smollm2(), 256).unwrap();
    let shape = Shape {
        dim: 32,
        ..tiny_shape()
    };
    let vocab = real.vocab_size().unwrap();
    let checkpoint = Checkpoint {
        shape,
        tensors: random_tensors(shape, vocab, 10, false),
        ..real
    };
    let renderer = super::examples::Renderer::new(&checkpoint, "You summarize notes.").unwrap();
    let rows = [
        ("Summarize: the train to Sintra left at 9.", "The train left at 9."),
        (
            "Summarize: tickets to Pena Palace cost 20 euros.",
            "Tickets cost 20 euros.",
        ),
    ];
    let examples: Vec<Example> = rows
        .iter()
        .map(|(instruction, answer)| {
            renderer
                .example(&super::examples::Row {
                    system: None,
                    instruction: instruction.to_string(),
                    answer: answer.to_string(),
                })
                .unwrap()
        })
        .collect();
    let base = Base::new(shape, &checkpoint.tensors, 256, &Device::Cpu).unwrap();
    let adapter = Adapter::new(
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            ..LoraConfig::default()
        },
        shape.layers,
        |p| base.projection_shape(p),
        11,
        &Device::Cpu,
    )
    .unwrap();
    let before = trainer::evaluate(&base, &adapter, &examples, 2).unwrap().unwrap();
    let schedule = Schedule {
        learning_rate: 5e-2,
        warmup_ratio: 0.0,
        epochs: 40,
        batch_size: 2,
        ..Schedule::default()
    };
    let mut observer = Quiet(Vec::new());
    let outcome = trainer::train(&base, &adapter, &examples, &schedule, 0, None, &mut observer).unwrap();
    assert_eq!(outcome.total_steps, 40);
    assert_eq!(observer.0.len(), 40);
    let after = trainer::evaluate(&base, &adapter, &examples, 2).unwrap().unwrap();
    assert!(after < before / 2.0, "loss {before} -> {after}: not halved");
    assert!(
        (observer.0[0] - before).abs() < 1e-3 * before,
        "the first step's loss is the untrained loss"
    );

    let merged = super::merge::merge(&checkpoint, &adapter).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model_dir = dir.path().join("merged");
    engram_shared::generation::hf::write(&merged, &model_dir).unwrap();
    let generator = Generator::load(&model_dir, GeneratorOptions::default()).unwrap();
    let messages = [
        engram_shared::generation::ChatMessage::new(engram_shared::generation::Role::System, "You summarize notes."),
        engram_shared::generation::ChatMessage::new(engram_shared::generation::Role::User, rows[1].0),
    ];
    let params = GenerationParams {
        max_tokens: 1,
        temperature: 0.0,
        repetition_penalty: 1.0,
        ..GenerationParams::default()
    };
    let completion = generator
        .generate(&messages, &params, |_| engram_shared::generation::Flow::Continue)
        .unwrap();
    assert_eq!(completion.usage.completion_tokens, 1);
    // The merged model's greedy token is the adapted training model's argmax after the prompt.
    let prompt = renderer.prompt(None, rows[1].0).unwrap();
    let batch = Batch {
        positions: (0..prompt.len()).collect(),
        segments: vec![(0, prompt.len())],
        targets: vec![(prompt.len() - 1, 0)],
        tokens: prompt,
    };
    let logits = values(&base.logits(&adapter, &batch, Path::Custom, false).unwrap());
    let argmax = (0..logits.len())
        .max_by(|&a, &b| logits[a].total_cmp(&logits[b]))
        .unwrap() as u32;
    assert_eq!(completion.text, generator.decode(&[argmax]).unwrap());
}
