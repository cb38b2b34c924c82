//! Stores for the end-to-end tests: a temporary ENGRAM_HOME, with MongoDB for documents when given,
//! and the pipeline binary run against them.

#![allow(dead_code)]

use candle_core::{Device, Tensor};
use engram_shared::config::StorageConfig;
use engram_shared::documents::{Document, DocumentFilter};
use engram_shared::generation::checkpoint::Checkpoint;
use engram_shared::generation::llama::{Part, Shape};
use engram_shared::storage::open_documents;
use engram_tests::{run, stderr, stdout};
use futures::StreamExt;

/// Flags of `dataset` that keep the local teacher small, so it answers in seconds.
pub const SMALL_TEACHER: [&str; 10] = [
    "--teacher",
    "local",
    "--summaries",
    "2",
    "--max-tokens",
    "40",
    "--max-document-chars",
    "800",
    "--budget-chars",
    "600",
];

/// Where a test's stores live: a temporary ENGRAM_HOME, with MongoDB for documents when given.
pub struct Stores {
    pub home: tempfile::TempDir,
    pub mongodb: Option<(String, String)>,
}

impl Stores {
    pub fn sqlite() -> Self {
        Self {
            home: tempfile::tempdir().expect("temp home"),
            mongodb: None,
        }
    }

    pub fn mongodb(uri: String) -> Self {
        let database = format!("engram_e2e_{}", std::process::id());
        Self {
            home: tempfile::tempdir().expect("temp home"),
            mongodb: Some((uri, database)),
        }
    }

    pub fn env(&self) -> Vec<(&str, String)> {
        let models = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
        let mut env = vec![
            ("ENGRAM_HOME", self.home.path().display().to_string()),
            // Tests run in tests/: the models are named absolutely.
            (
                "ENGRAM_EMBEDDING_MODEL",
                models.join("all-MiniLM-L6-v2").display().to_string(),
            ),
            (
                "ENGRAM_TEACHER_MODEL_PATH",
                models.join("SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string(),
            ),
        ];
        if let Some((uri, database)) = &self.mongodb {
            env.push(("ENGRAM_MONGODB_URI", uri.clone()));
            env.push(("ENGRAM_MONGODB_DATABASE", database.clone()));
        }
        env
    }

    /// Runs the pipeline; returns (success, stdout, stderr).
    pub async fn pipeline(&self, args: &[&str]) -> (bool, String, String) {
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let env = self.env();
        let env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        let output = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            run("feature-pipeline", &args, &env)
        })
        .await
        .expect("pipeline process");
        (output.status.success(), stdout(&output), stderr(&output))
    }

    /// [`Stores::pipeline`] with owned arguments (for futures that outlive a borrowed slice).
    pub async fn pipeline_owned(&self, args: Vec<String>) -> (bool, String, String) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.pipeline(&args).await
    }

    pub async fn ok(&self, args: &[&str]) -> String {
        let (ok, out, err) = self.pipeline(args).await;
        assert!(ok, "feature-pipeline {args:?} failed:\n{out}\n{err}");
        out
    }

    pub async fn documents(&self) -> Vec<Document> {
        let mut config = StorageConfig::embedded(self.home.path());
        if let Some((uri, database)) = &self.mongodb {
            config.mongodb_uri = Some(uri.clone());
            config.mongodb_database = database.clone();
        }
        let store = open_documents(&config).await.expect("open documents");
        let docs: Vec<_> = store.stream(&DocumentFilter::default()).collect().await;
        docs.into_iter().map(|d| d.expect("document")).collect()
    }
}

/// SmolLM2's tokenizer and template over random weights: 2 layers of 64 features.
pub fn tiny_model(dir: &std::path::Path) {
    let real = Checkpoint::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models")
            .join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        2048,
    )
    .unwrap();
    let vocab = real.vocab_size().unwrap();
    let shape = Shape {
        layers: 2,
        heads: 4,
        kv_heads: 2,
        dim: 64,
        eps: 1e-5,
        rope_base: 10_000.0,
    };
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut random = |n: usize, spread: f32| -> Vec<f32> {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * spread
            })
            .collect()
    };
    let kv = shape.dim / shape.heads * shape.kv_heads;
    let hidden = 128;
    let mut tensors = std::collections::BTreeMap::new();
    for part in Part::all(shape.layers) {
        let (rows, cols) = match part {
            Part::Output => continue,
            Part::Embedding => (vocab, shape.dim),
            Part::Q(_) | Part::O(_) => (shape.dim, shape.dim),
            Part::K(_) | Part::V(_) => (kv, shape.dim),
            Part::Gate(_) | Part::Up(_) => (hidden, shape.dim),
            Part::Down(_) => (shape.dim, hidden),
            Part::AttnNorm(_) | Part::FfnNorm(_) | Part::Norm => {
                tensors.insert(
                    part,
                    Tensor::ones(shape.dim, candle_core::DType::F32, &Device::Cpu).unwrap(),
                );
                continue;
            }
        };
        let data = random(rows * cols, 0.2);
        tensors.insert(part, Tensor::from_vec(data, (rows, cols), &Device::Cpu).unwrap());
    }
    let tiny = Checkpoint { shape, tensors, ..real };
    engram_shared::generation::hf::write(&tiny, dir).unwrap();
}

/// The tiny model of [`tiny_model`], registered as `tiny` and promoted (what `train` starts from).
pub async fn register_tiny_model(stores: &Stores) {
    let tiny = stores.home.path().join("tiny-hf");
    tiny_model(&tiny);
    stores
        .ok(&[
            "models",
            "register",
            &tiny.display().to_string(),
            "--name",
            "tiny",
            "--promote",
        ])
        .await;
}
