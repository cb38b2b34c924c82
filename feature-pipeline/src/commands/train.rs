//! `feature-pipeline train`: fine-tune the SLM on a dataset version and register the result.
//!
//! One pipeline run with one step, `train`: it resolves the dataset and the base model, renders
//! the splits as the service prompts the model, trains LoRA adapters (`train/`), saving a
//! checkpoint every K steps (artifact store, pointer in the registry: a rerun resumes), measures
//! the loss on the validation and test splits before and after, writes the adapter (PEFT), the
//! merged model (HF layout and a GGUF the service serves) and a report with the loss curve, stores
//! them and registers a model version with its lineage. The step cache skips a training whose
//! dataset, base, settings and code are unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use candle_core::{Device, Tensor};
use engram_shared::config::StorageConfig;
use engram_shared::generation::checkpoint::Checkpoint;
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::{
    AliasKind, DatasetVersion, HF_TREE_FORMAT, MODEL_FORMAT_GGUF, MODEL_FORMAT_HF, MODEL_PRODUCTION, ModelVersion,
    NewModelVersion,
};
use engram_shared::storage::Storage;
use indicatif::ProgressBar;
use serde_json::{Value, json};

use crate::commands::eval_model::{self, Candidate};
use crate::commands::inputs::{Tasks, dataset, materialize, system_prompt, tasks};
use crate::config::TrainArgs;
use crate::pipeline::{CODE_VERSION, Run, StepOutput, step_code_version};
use crate::train::examples::{Example, Renderer, Row, mix};
use crate::train::lora::{Adapter, LoraConfig, Projection};
use crate::train::model::Base;
use crate::train::trainer::{self, Observer, Progress, Resume, Schedule, Snapshot, StepRecord};
use crate::train::{merge, peft};

/// The step's name in the registry.
pub const STEP: &str = "train";

/// The tree format of a stored PEFT adapter.
pub const ADAPTER_TREE_FORMAT: &str = "engram-adapter-peft/1";

/// The tree format of a training report (markdown, loss curve, step records).
pub const REPORT_TREE_FORMAT: &str = "engram-train-report/1";

/// What a finished training registered.
#[derive(Debug)]
pub struct Trained {
    /// The new model version (or the one an identical earlier training registered).
    pub model: ModelVersion,
    /// Whether the step cache answered.
    pub cached: bool,
}

/// Runs `train` as its own pipeline run.
pub async fn run(config: &StorageConfig, args: &TrainArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let run = Run::start(&storage.registry, "train", args).await?;
    let result = stage(&storage, config.home(), &run, args).await;
    let trained = run.finish(result).await?;
    print(&trained);
    promote(&storage, args, &trained).await
}

/// Moves `production` as `--promote` or `--promote-if-better` ask.
pub async fn promote(storage: &Storage, args: &TrainArgs, trained: &Trained) -> Result<()> {
    let version = trained.model.version;
    let production = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    if production == Some(version) {
        return Ok(());
    }
    let promote = if args.promote {
        true
    } else if args.promote_if_better {
        let candidate = trained.model.metrics["test_rouge_l"].as_f64();
        let current = trained.model.metrics["production_test_rouge_l"].as_f64();
        match (candidate, current, production) {
            (Some(c), Some(p), Some(_)) if c > p => {
                println!("promote: test ROUGE-L {c:.4} beats production's {p:.4}");
                true
            }
            (Some(c), Some(p), Some(_)) => {
                println!("promote: kept production (test ROUGE-L {p:.4}; the candidate's {c:.4} is not better)");
                false
            }
            (Some(_), _, None) => true,
            _ => {
                println!("promote: kept production (the candidate and production were not both evaluated)");
                false
            }
        }
    } else {
        false
    };
    if promote {
        crate::commands::models::make_production(storage, version).await?;
    }
    Ok(())
}

/// Prints what a training registered.
pub fn print(trained: &Trained) {
    let model = &trained.model;
    let lineage = &model.spec.lineage;
    println!(
        "train: model version {} ({}){}, base {}, dataset v{}",
        model.version,
        model.spec.name,
        if trained.cached {
            ", from an identical earlier training"
        } else {
            ""
        },
        lineage["base"].as_str().unwrap_or("?"),
        model.spec.dataset_version.unwrap_or_default()
    );
    let m = &model.metrics;
    for (label, key) in [("validation loss", "validation_loss"), ("test loss", "test_loss")] {
        if let (Some(tuned), Some(base)) = (m[key].as_f64(), m[&format!("base_{key}")].as_f64()) {
            println!("  {label}: {base:.4} (base) -> {tuned:.4} (fine-tuned)");
        }
    }
    if let Some(speed) = lineage["training"]["tokens_per_second"].as_f64() {
        println!(
            "  {} steps, {:.0} tokens/s, {:.0} s",
            lineage["training"]["steps"],
            speed,
            lineage["training"]["seconds"].as_f64().unwrap_or_default()
        );
    }
}

/// The base model, resolved: where its files are, what identifies it, and its registry version.
pub struct BaseModel {
    /// Its files (a GGUF or an HF directory).
    pub path: PathBuf,
    /// Its artifact hash (a registered model) or a hash of its files.
    pub identity: String,
    /// Its registry version, when registered.
    pub version: Option<i64>,
    /// Its name.
    pub name: String,
    /// Whether it is a GGUF file.
    pub gguf: bool,
}

/// Resolves `--base`: a model version, `production`, a GGUF file or an HF directory; `None` is
/// the production model's base (or production itself when it is a base model).
pub async fn base_model(storage: &Storage, home: &Path, spec: Option<&str>) -> Result<BaseModel> {
    let version = match spec {
        None | Some("production") => {
            let production = storage
                .registry
                .alias(AliasKind::Model, MODEL_PRODUCTION)
                .await?
                .context(
                    "no production model to start from: register one (`feature-pipeline models register models/SmolLM2-135M-Instruct.Q4_1.gguf --promote`) or pass --base",
                )?;
            let model = storage
                .registry
                .model(production)
                .await?
                .with_context(|| format!("production names model version {production}, which is not registered"))?;
            // Without --base, a fine-tuned production model is not trained again: its base is.
            match (spec, model.spec.lineage["base_model"].as_i64()) {
                (None, Some(base)) => base,
                _ => production,
            }
        }
        Some(text) if text.trim_start_matches('v').parse::<i64>().is_ok() && !Path::new(text).exists() => {
            text.trim_start_matches('v').parse()?
        }
        Some(path) => {
            let path = PathBuf::from(path);
            if !path.exists() {
                bail!(
                    "--base {}: no such file or directory, and not a model version (see `feature-pipeline models list`)",
                    path.display()
                );
            }
            let identity = if path.is_dir() {
                let mut parts = Vec::new();
                let mut names: Vec<PathBuf> = std::fs::read_dir(&path)?
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .collect();
                names.sort();
                for file in names {
                    parts.push(engram_shared::artifacts::hash_file(&file).await?);
                }
                sha256_hex(parts.join(":"))
            } else {
                engram_shared::artifacts::hash_file(&path).await?
            };
            let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
            return Ok(BaseModel {
                gguf: path.is_file(),
                path,
                identity,
                version: None,
                name,
            });
        }
    };
    let model =
        storage.registry.model(version).await?.with_context(|| {
            format!("model version {version} is not registered (see `feature-pipeline models list`)")
        })?;
    let path = materialize(storage, home, &model).await?;
    Ok(BaseModel {
        gguf: model.spec.format == MODEL_FORMAT_GGUF,
        path,
        identity: model.spec.artifact_hash.clone(),
        version: Some(model.version),
        name: model.spec.name.clone(),
    })
}

fn device(name: &str) -> Result<Device> {
    match name {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Device::new_cuda(0).map_err(|e| {
            anyhow::anyhow!("--device cuda: {e}. Build feature-pipeline with `--features cuda` on a machine with the CUDA toolkit, or use --device cpu")
        }),
        other => bail!("--device {other:?}: use cpu or cuda"),
    }
}

/// The training's settings as recorded (and hashed for the step cache and checkpoints).
fn settings(args: &TrainArgs, lora: &LoraConfig, schedule: &Schedule) -> Value {
    json!({
        "lora": lora,
        "schedule": schedule,
        "max_seq_len": args.max_seq_len,
        "merged_blocks": args.merged_blocks,
        "qa_share": args.qa_share,
    })
}

fn lora_config(args: &TrainArgs) -> Result<LoraConfig> {
    let mut targets = args
        .targets
        .iter()
        .map(|t| t.parse::<Projection>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    targets.sort();
    targets.dedup();
    if targets.is_empty() || args.rank == 0 {
        bail!("--targets needs at least one projection and --rank at least 1");
    }
    if !(0.0..1.0).contains(&args.dropout) {
        bail!("--dropout {} must be in [0, 1)", args.dropout);
    }
    Ok(LoraConfig {
        rank: args.rank,
        alpha: args.alpha,
        dropout: args.dropout,
        targets,
    })
}

/// A checkpoint as stored: adapter and moments as safetensors, progress in its metadata.
fn encode_checkpoint(snapshot: &Snapshot<'_>) -> Result<Vec<u8>> {
    let mut tensors: Vec<(String, Tensor)> = snapshot
        .adapter
        .named()
        .into_iter()
        .map(|(n, t)| (format!("adapter.{n}"), t))
        .collect();
    let (first, second) = snapshot.optimizer.moments();
    for (i, (m, v)) in first.iter().zip(second).enumerate() {
        tensors.push((format!("m.{i:05}"), m.clone()));
        tensors.push((format!("v.{i:05}"), v.clone()));
    }
    let metadata = HashMap::from([("progress".to_string(), serde_json::to_string(snapshot.progress)?)]);
    Ok(safetensors::serialize(
        tensors.iter().map(|(n, t)| (n.as_str(), t)),
        Some(metadata),
    )?)
}

fn decode_checkpoint(bytes: &[u8], adapter: &Adapter) -> Result<Resume> {
    let (_, metadata) = safetensors::SafeTensors::read_metadata(bytes)?;
    let progress: Progress = serde_json::from_str(
        metadata
            .metadata()
            .as_ref()
            .and_then(|m| m.get("progress"))
            .context("the checkpoint has no progress record")?,
    )?;
    let tensors = candle_core::safetensors::load_buffer(bytes, adapter_device(adapter))?;
    let named: HashMap<String, Tensor> = tensors
        .iter()
        .filter_map(|(k, v)| k.strip_prefix("adapter.").map(|n| (n.to_string(), v.clone())))
        .collect();
    adapter.set_named(&named)?;
    let count = adapter.vars().len();
    let moment = |prefix: &str| -> Result<Vec<Tensor>> {
        (0..count)
            .map(|i| {
                tensors
                    .get(&format!("{prefix}.{i:05}"))
                    .cloned()
                    .with_context(|| format!("the checkpoint lacks optimizer moment {prefix}.{i}"))
            })
            .collect()
    };
    Ok(Resume {
        progress,
        moments: (moment("m")?, moment("v")?),
    })
}

fn adapter_device(adapter: &Adapter) -> &Device {
    adapter
        .layers
        .first()
        .and_then(|l| l.values().next())
        .map_or(&Device::Cpu, |p| p.a.device())
}

/// Draws the progress bar and saves checkpoints.
struct Reporter {
    bar: ProgressBar,
    storage: Storage,
    key: String,
    handle: tokio::runtime::Handle,
    tokens: usize,
    seconds: f64,
}

impl Observer for Reporter {
    fn step(&mut self, record: &StepRecord, total_steps: usize) {
        self.tokens += record.tokens;
        self.seconds += record.seconds;
        self.bar.set_length(total_steps as u64);
        self.bar.set_position(record.step as u64);
        self.bar.set_message(format!(
            "loss {:.4}  {:.0} tok/s  lr {:.2e}",
            record.loss,
            self.tokens as f64 / self.seconds.max(1e-9),
            record.learning_rate
        ));
        tracing::debug!(step = record.step, loss = record.loss, "train step");
    }

    fn checkpoint(&mut self, snapshot: &Snapshot<'_>) -> anyhow::Result<()> {
        let bytes = encode_checkpoint(snapshot)?;
        let step = snapshot.progress.step as i64;
        self.handle.block_on(async {
            let hash = self.storage.artifacts.put(bytes).await?;
            self.storage
                .registry
                .save_train_checkpoint(&self.key, step, &hash)
                .await?;
            anyhow::Ok(())
        })?;
        // Said on stderr even where the bar is hidden (not a terminal): operators and tests watch it.
        self.bar.suspend(|| eprintln!("train: checkpoint at step {step}"));
        Ok(())
    }
}

/// The `train` step inside `run`.
pub async fn stage(storage: &Storage, home: &Path, run: &Run<'_>, args: &TrainArgs) -> Result<Trained> {
    let dataset = dataset(storage, &args.dataset).await?;
    let base = base_model(storage, home, args.base.as_deref()).await?;
    let lora = lora_config(args)?;
    let schedule = Schedule {
        learning_rate: args.learning_rate,
        weight_decay: args.weight_decay,
        warmup_ratio: args.warmup_ratio,
        epochs: args.epochs.max(1),
        batch_size: args.batch_size.max(1),
        gradient_accumulation: args.gradient_accumulation.max(1),
        seed: args.seed,
    };
    let settings = settings(args, &lora, &schedule);
    let input = sha256_hex(format!("{}:{}", dataset.spec.artifact_hash, base.identity));
    if let Some(record) = run.cached(STEP, &settings, &input, !args.no_cache).await? {
        let version = record.detail["model_version"]
            .as_i64()
            .context("the cached train step names no model version; rerun with --no-cache")?;
        let model = storage
            .registry
            .model(version)
            .await?
            .with_context(|| format!("model version {version} is not in the registry; rerun with --no-cache"))?;
        return Ok(Trained { model, cached: true });
    }
    let key = Run::key(STEP, &settings, &input)?;
    let checkpoint_key = sha256_hex(format!(
        "{}:{}:{}:{}",
        key.name, key.code_version, key.config_hash, key.input_hash
    ));
    run.step(STEP, &settings, &input, async {
        let scratch = tempfile::Builder::new()
            .prefix("train-")
            .tempdir_in(ensure_dir(&home.join("cache"))?)?;
        let tasks = tasks(&storage.artifacts, &dataset, scratch.path()).await?;
        let system = system_prompt(&dataset)?;
        let resume_from = storage.registry.train_checkpoint(&checkpoint_key).await?;
        let resume_bytes = match &resume_from {
            Some((step, hash)) => {
                eprintln!("train: resuming from the checkpoint at step {step}");
                Some(storage.artifacts.get(hash).await?)
            }
            None => None,
        };
        let device = device(&args.device)?;
        let threads = args.threads;
        let reporter = Reporter {
            bar: crate::progress::bar(0, "train"),
            storage: storage.clone(),
            key: checkpoint_key.clone(),
            handle: tokio::runtime::Handle::current(),
            tokens: 0,
            seconds: 0.0,
        };
        let job = TrainJob {
            base_path: base.path.clone(),
            base_gguf: base.gguf,
            base_label: base.name.clone(),
            max_seq_len: args.max_seq_len,
            lora: lora.clone(),
            schedule: schedule.clone(),
            checkpoint_every: args.checkpoint_every,
            merged_blocks: args.merged_blocks,
            system,
            tasks,
            qa_share: args.qa_share,
            out: scratch.path().join("out"),
            device,
            resume: resume_bytes.map(|b| b.to_vec()),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("train-{i}"))
            .build()?;
        let outcome = tokio::task::spawn_blocking(move || {
            let mut reporter = reporter;
            let result = pool.install(|| job.run(&mut reporter));
            reporter.bar.finish_and_clear();
            result
        })
        .await??;

        // Store the outputs, then register.
        let out = scratch.path().join("out");
        let artifacts = &storage.artifacts;
        let hf_hash = artifacts.put_dir(HF_TREE_FORMAT, &out.join("merged")).await?;
        let adapter_hash = artifacts.put_dir(ADAPTER_TREE_FORMAT, &out.join("adapter")).await?;
        let report_hash = artifacts.put_dir(REPORT_TREE_FORMAT, &out.join("report")).await?;
        let (format, artifact_hash) = if base.gguf {
            (MODEL_FORMAT_GGUF, artifacts.put_file(&out.join("model.gguf")).await?)
        } else {
            (MODEL_FORMAT_HF, hf_hash.clone())
        };
        let training = &outcome.summary;
        let lineage = json!({
            "base": base.name,
            "base_model": base.version,
            "base_artifact": base.identity,
            "dataset_version": dataset.version,
            "dataset_artifact": dataset.spec.artifact_hash,
            "hyperparameters": settings,
            "code_version": step_code_version(STEP),
            "crate_version": CODE_VERSION,
            "run_id": run.id,
            "training": training,
            "outputs": { "hf": hf_hash, "adapter": adapter_hash, "report": report_hash },
        });
        let name = args.name.clone().unwrap_or_else(|| format!("{}-lora", base.name));
        // Evaluated before it is registered: a failed evaluation registers nothing, and the rerun
        // resumes from the last checkpoint.
        let served = if base.gguf {
            out.join("model.gguf")
        } else {
            out.join("merged")
        };
        let evaluation =
            evaluate_against_base_and_production(storage, home, &dataset, &base, &name, &served, args).await?;
        let model = storage
            .registry
            .register_model(NewModelVersion {
                run_id: Some(run.id.clone()),
                name,
                format: format.to_string(),
                artifact_hash,
                dataset_version: Some(dataset.version),
                lineage,
            })
            .await?;
        storage
            .registry
            .add_model_metrics(model.version, &outcome.metrics)
            .await?;
        if let Some(evaluation) = &evaluation {
            storage.registry.add_model_metrics(model.version, evaluation).await?;
        }
        storage.registry.clear_train_checkpoint(&checkpoint_key).await?;
        if let Some(dir) = &args.out {
            copy_dir(&out, dir)?;
            eprintln!("train: outputs written to {}", dir.display());
        }
        let model = storage
            .registry
            .model(model.version)
            .await?
            .context("the model version just registered is missing")?;
        Ok(StepOutput {
            detail: json!({ "model_version": model.version, "steps": training["steps"], "metrics": model.metrics }),
            hash: Some(report_hash),
            value: Trained { model, cached: false },
        })
    })
    .await
}

/// Scores the base, the new model (its files at `served`, not registered yet) and the production
/// model (when it is neither) on the test split; returns the metrics to record on the new version,
/// `base_test_rouge_l` and `production_test_rouge_l` among them. A dataset without a test split
/// is said and skipped: nothing to compare, so `--promote-if-better` will not promote.
async fn evaluate_against_base_and_production(
    storage: &Storage,
    home: &Path,
    dataset: &DatasetVersion,
    base: &BaseModel,
    name: &str,
    served: &Path,
    args: &TrainArgs,
) -> Result<Option<Value>> {
    if dataset.spec.stats["rows"]["test"].as_u64() == Some(0) {
        eprintln!(
            "train: dataset v{} has no test split; the model is not evaluated (build the dataset with --test)",
            dataset.version
        );
        return Ok(None);
    }
    let base_candidate = Candidate {
        label: match base.version {
            Some(v) => format!("{} v{v}", base.name),
            None => base.name.clone(),
        },
        version: base.version,
        path: base.path.clone(),
    };
    let new_model = Candidate {
        label: format!("{name} (new)"),
        version: None,
        path: served.to_path_buf(),
    };
    let mut candidates = vec![base_candidate, new_model];
    let production = storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await?;
    if let Some(p) = production
        && Some(p) != base.version
        && let Some(current) = storage.registry.model(p).await?
    {
        candidates.push(Candidate::registered(storage, home, &current).await?);
    }
    let evaluation = eval_model::evaluate(
        storage,
        home,
        dataset,
        &candidates,
        args.eval_max_tokens,
        &args.embedding.embedding_model,
    )
    .await?;
    eval_model::print(&evaluation);
    let rouge = |i: usize| evaluation.scores.get(i).map(|(_, s)| s.rouge_l);
    let production_score = match production {
        Some(p) if Some(p) == base.version => rouge(0),
        Some(_) => rouge(2),
        None => None,
    };
    let mut metrics = evaluation.metrics.get(1).cloned().unwrap_or_else(|| json!({}));
    metrics["base_test_rouge_l"] = json!(rouge(0));
    metrics["production_test_rouge_l"] = json!(production_score);
    Ok(Some(metrics))
}

fn ensure_dir(dir: &Path) -> Result<&Path> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

/// Copies the directory `from` into the new directory `to`, staged (all or nothing).
fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    let staged = engram_shared::staged_dir::StagedDir::new(to)?;
    let mut pending = vec![PathBuf::new()];
    while let Some(relative) = pending.pop() {
        for entry in std::fs::read_dir(from.join(&relative))? {
            let entry = entry?;
            let rel = relative.join(entry.file_name());
            if entry.file_type()?.is_dir() {
                std::fs::create_dir_all(staged.path().join(&rel))?;
                pending.push(rel);
            } else {
                std::fs::copy(entry.path(), staged.path().join(&rel))?;
            }
        }
    }
    staged.commit()?;
    Ok(())
}

/// The CPU-bound part of a training, run on a blocking thread inside its rayon pool.
struct TrainJob {
    base_path: PathBuf,
    base_gguf: bool,
    base_label: String,
    max_seq_len: usize,
    lora: LoraConfig,
    schedule: Schedule,
    checkpoint_every: usize,
    merged_blocks: merge::MergedBlocks,
    system: String,
    tasks: Tasks,
    qa_share: Option<f64>,
    out: PathBuf,
    device: Device,
    resume: Option<Vec<u8>>,
}

/// What a job hands back.
struct JobOutcome {
    summary: Value,
    metrics: Value,
}

impl TrainJob {
    fn run(self, reporter: &mut Reporter) -> Result<JobOutcome> {
        let started = std::time::Instant::now();
        let checkpoint = Checkpoint::load(&self.base_path, usize::MAX)
            .with_context(|| format!("cannot read the base model {}", self.base_path.display()))?;
        let max_len = self.max_seq_len.min(checkpoint.context_length);
        let renderer = Renderer::new(&checkpoint, &self.system)?;
        let mut too_long = serde_json::Map::new();
        let mut render = |task: &str, splits: &HashMap<String, Vec<Row>>| -> Result<HashMap<String, Vec<Example>>> {
            let mut rendered = HashMap::new();
            for split in ["train", "validation", "test"] {
                let rows = splits.get(split).map(Vec::as_slice).unwrap_or_default();
                let r = renderer.render_all(rows, max_len)?;
                too_long.insert(format!("{task}/{split}"), json!(r.too_long));
                if r.too_long > 0 {
                    reporter.bar.suspend(|| {
                        eprintln!(
                            "train: {} of {} {task} {split} rows are longer than {max_len} tokens and are left out (--max-seq-len)",
                            r.too_long,
                            rows.len()
                        )
                    });
                }
                rendered.insert(split.to_string(), r.examples);
            }
            Ok(rendered)
        };
        let rendered = render("summarize", &self.tasks.summarize)?;
        let qa = render("qa", &self.tasks.qa)?;
        let mixed = mix(&rendered["train"], &qa["train"], self.qa_share, self.schedule.seed);
        let train: &[Example] = &mixed;
        let base = Base::new(checkpoint.shape, &checkpoint.tensors, max_len, &self.device)?;
        drop(checkpoint);
        let shape = base.shape();
        let adapter = Adapter::new(
            self.lora.clone(),
            shape.layers,
            |p| base.projection_shape(p),
            self.schedule.seed,
            &self.device,
        )?;
        let batch = self.schedule.batch_size;
        let evaluate = |adapter: &Adapter, split: &str| -> Result<Option<f64>> {
            Ok(trainer::evaluate(&base, adapter, &rendered[split], batch)?)
        };
        let untrained = Adapter {
            config: self.lora.clone(),
            layers: vec![Default::default(); shape.layers],
        };
        let base_validation = evaluate(&untrained, "validation")?;
        let base_test = evaluate(&untrained, "test")?;
        let evaluate_qa =
            |adapter: &Adapter| -> Result<Option<f64>> { Ok(trainer::evaluate(&base, adapter, &qa["test"], batch)?) };
        let base_qa_test = evaluate_qa(&untrained)?;
        let resume = match &self.resume {
            Some(bytes) => Some(decode_checkpoint(bytes, &adapter)?),
            None => None,
        };
        let outcome = trainer::train(
            &base,
            &adapter,
            train,
            &self.schedule,
            self.checkpoint_every,
            resume,
            reporter,
        )?;
        let validation = evaluate(&adapter, "validation")?;
        let test = evaluate(&adapter, "test")?;
        let qa_test = evaluate_qa(&adapter)?;

        // Outputs: adapter, merged model (HF and GGUF), report.
        std::fs::create_dir_all(&self.out)?;
        peft::save(&adapter, &shape, &self.base_label, &self.out.join("adapter"))?;
        // The base is read again for the merge rather than kept through training: holding the f32
        // checkpoint beside the training copy would double the weights' memory for the whole run.
        drop(base);
        let checkpoint = Checkpoint::load(&self.base_path, usize::MAX)?;
        let merged = merge::merge(&checkpoint, &adapter)?;
        drop(checkpoint);
        engram_shared::generation::hf::write(&merged, &self.out.join("merged"))?;
        if self.base_gguf {
            merge::write_gguf(
                &self.base_path,
                &merged,
                &adapter,
                self.merged_blocks,
                &self.out.join("model.gguf"),
            )?;
        }
        let records = &outcome.progress.records;
        let summary = json!({
            "steps": outcome.total_steps,
            "examples": {
                "train": train.len(), "validation": rendered["validation"].len(), "test": rendered["test"].len(),
                "train_summarize": rendered["train"].len(), "train_qa": qa["train"].len(), "qa_test": qa["test"].len(),
            },
            "qa_share": self.qa_share,
            "too_long": too_long,
            "label_tokens": train.iter().map(Example::labels).sum::<usize>(),
            "trainable_parameters": adapter.parameters(),
            "tokens_per_second": outcome.tokens_per_second,
            "seconds": started.elapsed().as_secs_f64(),
            "first_loss": records.first().map(|r| r.loss),
            "last_loss": records.last().map(|r| r.loss),
            "threads": rayon::current_num_threads(),
            "device": format!("{:?}", self.device),
        });
        let metrics = json!({
            "validation_loss": validation,
            "base_validation_loss": base_validation,
            "test_loss": test,
            "base_test_loss": base_test,
            "qa_test_loss": qa_test,
            "base_qa_test_loss": base_qa_test,
        });
        crate::train::report::write(&self.out.join("report"), records, &summary, &metrics)?;
        Ok(JobOutcome { summary, metrics })
    }
}
