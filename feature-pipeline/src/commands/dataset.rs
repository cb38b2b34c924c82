//! `feature-pipeline dataset`: distil → quality → split → publish over the latest document set, as
//! one run with four cached steps; `feature-pipeline datasets`: list versions or export one.

use std::sync::Arc;

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::embedding::Embedder;
use engram_shared::hashing::sha256_hex;
use engram_shared::registry::{DatasetVersion, NewDatasetVersion};
use engram_shared::storage::Storage;
use serde_json::{Value, json};

use crate::commands::index::load_embedder;
use crate::config::{DatasetArgs, DatasetsArgs, DatasetsCommand, TeacherArgs, TeacherKind};
use crate::hub;
use crate::pipeline::{CODE_VERSION, Run, StepOutput};
use crate::progress;
use crate::steps::chunk::Chunker;
use crate::steps::distil::{self, DistilSettings, Prompt, Sample};
use crate::steps::filter::{self, DocumentSet};
use crate::steps::publish;
use crate::steps::qa::ask::{self, Asked};
use crate::steps::qa::check::{self, QaChecked};
use crate::steps::qa::rows::{self, QaSplits};
use crate::steps::qa::{self, QaPrompt, QaSettings};
use crate::steps::quality::{self, Checked, QualitySettings};
use crate::steps::split::{self, SplitSettings, Splits};
use crate::teacher::http::{HttpTeacher, HttpTeacherOptions};
use crate::teacher::local::LocalTeacher;
use crate::teacher::{CachedTeacher, Prices, Teacher};

/// Builds the configured teacher, behind the registry's response cache.
pub fn teacher(args: &TeacherArgs, storage: &Storage) -> Result<Arc<CachedTeacher>> {
    let kind = args.teacher.unwrap_or(if args.teacher_url.is_some() {
        TeacherKind::Openai
    } else {
        TeacherKind::Local
    });
    let inner: Arc<dyn Teacher> = match kind {
        TeacherKind::Openai => {
            let url = args.teacher_url.clone().context(
                "the openai teacher needs ENGRAM_TEACHER_URL (--teacher-url), e.g. https://api.openai.com/v1",
            )?;
            let extra_body = match &args.teacher_extra_body {
                Some(text) => Some(
                    serde_json::from_str::<Value>(text)
                        .with_context(|| format!("ENGRAM_TEACHER_EXTRA_BODY is not a JSON object: {text}"))?,
                ),
                None => None,
            };
            if extra_body.as_ref().is_some_and(|v| !v.is_object()) {
                anyhow::bail!(
                    "ENGRAM_TEACHER_EXTRA_BODY must be a JSON object, like {{\"retrieval\": {{\"enabled\": false}}}}"
                );
            }
            Arc::new(HttpTeacher::new(HttpTeacherOptions {
                url,
                model: args.teacher_model.clone(),
                api_key: args.teacher_api_key.clone(),
                retries: args.teacher_retries,
                timeout: std::time::Duration::from_secs(args.teacher_timeout_secs.max(1)),
                backoff: std::time::Duration::from_millis(args.teacher_backoff_ms),
                extra_body,
            })?)
        }
        TeacherKind::Local => Arc::new(LocalTeacher::load(&args.teacher_model_path, args.teacher_weights)?),
    };
    let concurrency = args.teacher_concurrency.unwrap_or(match kind {
        TeacherKind::Openai => 4,
        TeacherKind::Local => 1,
    });
    let prices = Prices {
        prompt: args.teacher_price_prompt,
        completion: args.teacher_price_completion,
    };
    Ok(Arc::new(CachedTeacher::new(
        inner,
        storage.registry.clone(),
        prices,
        concurrency,
    )))
}

/// What `dataset` made.
pub struct Published {
    /// The registered version.
    pub version: DatasetVersion,
    /// Samples the teacher wrote.
    pub distilled: usize,
    /// What quality control dropped.
    pub checked: Checked,
    /// The splits.
    pub splits: Splits,
    /// The `qa` task, unless it was turned off.
    pub qa: Option<QaOutcome>,
    /// Teacher use of this run, when it ran.
    pub spent: Value,
}

/// The four dataset steps inside `run`.
pub async fn stage(storage: &Storage, run: &Run<'_>, args: &DatasetArgs) -> Result<Published> {
    let use_cache = !args.no_cache;
    let set = filter::latest(&storage.registry, &storage.artifacts)
        .await?
        .context("no document set yet: run `feature-pipeline filter` first (after extract)")?;
    if set.ids.is_empty() {
        anyhow::bail!("the latest document set is empty: extract documents, then run `feature-pipeline filter`");
    }
    let prompt = Prompt::builtin();
    let teacher = teacher(&args.teacher, storage)?;
    let embedder = load_embedder(&args.embedding.embedding_model)?;
    let artifacts = &storage.artifacts;

    // distil
    let distil_settings = DistilSettings {
        summaries: args.summaries.max(1),
        temperature_min: args.temperature_min,
        temperature_max: args.temperature_max,
        budget_chars: args.budget_chars,
        max_tokens: args.max_tokens,
        max_document_chars: args.max_document_chars,
        concurrency: args.concurrency,
        seed: args.seed,
    };
    let distil_config = json!({
        "settings": { "summaries": distil_settings.summaries, "temperature_min": distil_settings.temperature_min,
                      "temperature_max": distil_settings.temperature_max, "budget_chars": distil_settings.budget_chars,
                      "max_tokens": distil_settings.max_tokens, "max_document_chars": distil_settings.max_document_chars,
                      "seed": distil_settings.seed },
        "teacher": teacher.id(),
        "prompt": { "version": prompt.version, "sha256": prompt.hash },
    });
    let input = sha256_hex(format!("{}:{}", set.hash, set.input_hash));
    let (samples, distil_hash): (Vec<Sample>, String) = run
        .json_step(artifacts, distil::STEP, &distil_config, &input, use_cache, async {
            let bar = progress::bar(set.ids.len() as u64, "distil");
            let samples = distil::run(
                storage.documents.as_ref(),
                teacher.clone(),
                &prompt,
                &distil_settings,
                &set,
                &bar,
            )
            .await?;
            bar.finish_and_clear();
            let detail = json!({ "documents": set.ids.len(), "samples": samples.len(), "teacher": teacher.spent() });
            Ok((samples, detail))
        })
        .await?;
    let distilled = samples.len();

    // quality
    let quality_settings = QualitySettings {
        budget_chars: args.budget_chars,
        max_copied: args.max_copied,
        min_faithfulness: args.min_faithfulness,
        max_sibling_similarity: args.max_sibling_similarity,
        judge_min: args.judge.then_some(args.judge_min),
        keep_best: args.keep_best,
    };
    let quality_config = json!({
        "settings": quality_settings,
        "embedding_model": embedder.model_id(),
        "judge": args.judge.then(|| teacher.id().to_string()),
    });
    let (checked, quality_hash): (Checked, String) = run
        .json_step(artifacts, quality::STEP, &quality_config, &distil_hash, use_cache, async {
            let bar = progress::bar(samples.len() as u64, "quality");
            let judge = args.judge.then(|| teacher.clone());
            let checked = quality::run(samples.clone(), &quality_settings, embedder.clone(), judge, &bar).await?;
            bar.finish_and_clear();
            let detail = json!({ "kept": checked.kept.len(), "dropped": checked.counts(), "truncated_sources": checked.truncated_sources });
            Ok((checked, detail))
        })
        .await?;

    // split
    let split_settings = SplitSettings {
        validation: args.validation,
        test: args.test,
        seed: args.seed,
    };
    let (splits, split_hash): (Splits, String) = run
        .json_step(
            artifacts,
            split::STEP,
            &split_settings,
            &quality_hash,
            use_cache,
            async {
                let splits = split::run(checked.kept.clone(), &split_settings);
                let detail = publish::describe(&splits);
                Ok((splits, detail))
            },
        )
        .await?;

    // qa: distil → quality → split (the dataset's second configuration)
    let qa = qa_stage(
        storage,
        run,
        args,
        &teacher,
        &embedder,
        &set,
        &input,
        &splits,
        &split_settings,
        &split_hash,
    )
    .await?;
    let qa_prompt = QaPrompt::builtin();

    // publish
    let lineage = json!({
        "run_id": run.id,
        "code_version": CODE_VERSION,
        "document_set_hash": set.hash,
        "document_set_input_hash": set.input_hash,
        "teacher": teacher.id(),
        "prompt": { "version": prompt.version, "sha256": prompt.hash },
        "embedding_model": embedder.model_id(),
        "config": { "distil": distil_config["settings"], "quality": quality_settings, "split": split_settings },
        "steps": { "distil": distil_hash, "quality": quality_hash, "split": split_hash },
        "qa": qa.as_ref().map(|qa| json!({
            "prompt": { "version": qa_prompt.version, "sha256": qa_prompt.hash },
            "settings": qa.settings,
            "steps": { "distil": qa.ask_hash, "quality": qa.check_hash, "split": qa.split_hash },
        })),
    });
    let mut stats = publish::describe(&splits);
    stats["distilled"] = json!(distilled);
    stats["dropped"] = json!(checked.counts());
    if let Some(qa) = &qa {
        stats["qa"] = publish::describe_qa(&qa.splits);
        stats["qa"]["asked"] = json!(qa.asked);
        stats["qa"]["dropped"] = json!(qa.checked.counts());
    }
    let publish_config = json!({ "format": publish::FORMAT });
    // Without the qa task the input is the split's alone, as before it existed.
    let publish_input = match &qa {
        Some(qa) => sha256_hex(format!("{split_hash}:{}", qa.split_hash)),
        None => split_hash.clone(),
    };
    let version = if let Some(record) = run
        .cached(publish::STEP, &publish_config, &publish_input, use_cache)
        .await?
    {
        let number = record.detail["version"]
            .as_i64()
            .context("the cached publish step names no version; rerun with --no-cache")?;
        storage
            .registry
            .dataset(number)
            .await?
            .with_context(|| format!("dataset version {number} is not in the registry; rerun with --no-cache"))?
    } else {
        run.step(publish::STEP, &publish_config, &publish_input, async {
            let prompt_text = include_str!("../../prompts/summarize-v1.md");
            let qa_files = qa.as_ref().map(|qa| (&qa.splits, qa::PROMPT_TEXT));
            let files = publish::files(&splits, qa_files, &lineage, &stats, prompt_text)?;
            let hash = publish::store(artifacts, &files).await?;
            let version = storage
                .registry
                .register_dataset(NewDatasetVersion {
                    run_id: Some(run.id.clone()),
                    artifact_hash: hash.clone(),
                    document_set_hash: set.hash.clone(),
                    lineage: lineage.clone(),
                    stats: stats.clone(),
                })
                .await?;
            Ok(StepOutput {
                detail: json!({ "version": version.version, "rows": stats["rows"] }),
                hash: Some(hash),
                value: version,
            })
        })
        .await?
    };
    if let Some(repo) = &args.push_hub {
        let token = args
            .hub_token
            .as_deref()
            .context("--push-hub needs a Hub token with write access in ENGRAM_HF_TOKEN")?;
        let url = hub::push(&args.hub_endpoint, token, repo, artifacts, &version).await?;
        eprintln!("dataset: v{} pushed to {url}", version.version);
    }
    Ok(Published {
        version,
        distilled,
        checked,
        splits,
        qa,
        spent: serde_json::to_value(teacher.spent())?,
    })
}

/// What the qa steps made.
pub struct QaOutcome {
    /// The settings.
    pub settings: QaSettings,
    /// Chunks asked about.
    pub asked: usize,
    /// What quality control kept and dropped.
    pub checked: QaChecked,
    /// The rows per split.
    pub splits: QaSplits,
    /// The steps' output hashes.
    pub ask_hash: String,
    /// See `ask_hash`.
    pub check_hash: String,
    /// See `ask_hash`.
    pub split_hash: String,
}

/// The three qa steps, or `None` when `--qa-chunks-per-document` is 0.
#[allow(clippy::too_many_arguments)]
async fn qa_stage(
    storage: &Storage,
    run: &Run<'_>,
    args: &DatasetArgs,
    teacher: &Arc<CachedTeacher>,
    embedder: &Arc<Embedder>,
    set: &DocumentSet,
    input: &str,
    summaries: &Splits,
    split_settings: &SplitSettings,
    summaries_hash: &str,
) -> Result<Option<QaOutcome>> {
    if args.qa_chunks_per_document == 0 {
        return Ok(None);
    }
    let use_cache = !args.no_cache;
    let artifacts = &storage.artifacts;
    let settings = QaSettings {
        chunks_per_document: args.qa_chunks_per_document,
        samples: args.qa_samples.max(1),
        temperature_min: args.qa_temperature_min,
        temperature_max: args.qa_temperature_max,
        max_tokens: args.qa_max_tokens,
        chunk_tokens: args.chunk_tokens,
        chunk_overlap: args.chunk_overlap,
        max_answer_chars: args.qa_max_answer_chars,
        min_relevance: args.qa_min_relevance,
        sources: args.qa_sources.max(1),
        unanswerable: args.qa_unanswerable,
        seed: args.seed,
    };
    let prompt = QaPrompt::builtin();
    let chunker = Chunker::new(embedder.clone(), settings.chunk_tokens, settings.chunk_overlap)?;
    let ask_config = json!({
        "chunks_per_document": settings.chunks_per_document, "samples": settings.samples,
        "temperature_min": settings.temperature_min, "temperature_max": settings.temperature_max,
        "max_tokens": settings.max_tokens, "max_answer_chars": settings.max_answer_chars, "seed": settings.seed,
        "chunker": chunker.settings(),
        "teacher": teacher.id(),
        "prompt": { "version": prompt.version, "sha256": prompt.hash },
    });
    let (asked, ask_hash): (Asked, String) = run
        .json_step(artifacts, ask::STEP, &ask_config, input, use_cache, async {
            let bar = progress::bar(0, "qa questions");
            let asked = ask::run(
                storage.documents.as_ref(),
                teacher.clone(),
                &prompt,
                &settings,
                &chunker,
                set,
                &bar,
            )
            .await?;
            bar.finish_and_clear();
            let detail =
                json!({ "chunks": asked.chunks.len(), "samples": asked.candidates.len(), "teacher": teacher.spent() });
            Ok((asked, detail))
        })
        .await?;
    let check_config = json!({
        "min_relevance": settings.min_relevance,
        "embedding_model": embedder.model_id(),
    });
    let (checked, check_hash): (QaChecked, String) = run
        .json_step(artifacts, check::STEP, &check_config, &ask_hash, use_cache, async {
            let checked = check::run(asked.candidates.clone(), &settings, embedder.clone()).await?;
            let detail =
                json!({ "kept": checked.kept.len(), "dropped": checked.counts(), "not_best": checked.not_best });
            Ok((checked, detail))
        })
        .await?;
    let split_config = json!({
        "sources": settings.sources, "unanswerable": settings.unanswerable, "seed": settings.seed,
        "split": split_settings, "embedding_model": embedder.model_id(),
    });
    let split_input = sha256_hex(format!("{check_hash}:{ask_hash}:{summaries_hash}"));
    let (qa_splits, split_hash): (QaSplits, String) = run
        .json_step(artifacts, rows::STEP, &split_config, &split_input, use_cache, async {
            let qa_splits = rows::run(
                checked.kept.clone(),
                asked.chunks.clone(),
                summaries,
                split_settings,
                &settings,
                embedder.clone(),
            )
            .await?;
            let detail = publish::describe_qa(&qa_splits);
            Ok((qa_splits, detail))
        })
        .await?;
    let asked_chunks = asked
        .candidates
        .iter()
        .map(|c| (c.chunk.doc_id.as_str(), c.chunk.position))
        .collect::<std::collections::HashSet<_>>()
        .len();
    Ok(Some(QaOutcome {
        settings,
        asked: asked_chunks,
        checked,
        splits: qa_splits,
        ask_hash,
        check_hash,
        split_hash,
    }))
}

/// Runs `dataset`.
pub async fn run(config: &StorageConfig, args: &DatasetArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let settings = json!({ "summaries": args.summaries, "teacher": args.teacher.teacher, "seed": args.seed });
    let run = Run::start(&storage.registry, "dataset", &settings).await?;
    let result = stage(&storage, &run, args).await.map(|published| print(&published));
    run.finish(result).await
}

/// Prints what `dataset` made.
pub fn print(published: &Published) {
    let v = &published.version;
    println!(
        "dataset: v{} ({}) from {} summaries: {} kept",
        v.version,
        &v.spec.artifact_hash[..12],
        published.distilled,
        published.checked.kept.len()
    );
    for (rule, count) in published.checked.counts() {
        println!("  dropped {count:>5} {}", json!(rule).as_str().unwrap_or_default());
    }
    for name in split::SPLITS {
        println!(
            "  {name:<10} {:>5} rows from {:>4} documents",
            published.splits.rows[name].len(),
            published.splits.documents[name].len()
        );
    }
    if let Some(qa) = &published.qa {
        println!(
            "qa: {} chunks asked about, {} questions kept",
            qa.asked,
            qa.checked.kept.len()
        );
        for (rule, count) in qa.checked.counts() {
            println!("  dropped {count:>5} {}", json!(rule).as_str().unwrap_or_default());
        }
        for name in split::SPLITS {
            let rows = &qa.splits.rows[name];
            println!(
                "  {name:<10} {:>5} rows ({} unanswerable) from {:>4} documents",
                rows.len(),
                rows.iter().filter(|r| !r.answerable).count(),
                qa.splits.documents[name].len()
            );
        }
    }
    println!("teacher: {}", published.spent);
    println!("export it: feature-pipeline datasets export {} <DIR>", v.version);
}

/// Runs `datasets`.
pub async fn datasets(config: &StorageConfig, args: &DatasetsArgs) -> Result<()> {
    let storage = Storage::open(config).await?;
    let versions = storage.registry.datasets().await?;
    if let Some(DatasetsCommand::Export { version, dir }) = &args.command {
        let chosen = if version == "latest" {
            versions.last().cloned()
        } else {
            let number: i64 = version.trim_start_matches('v').parse().with_context(|| {
                format!("{version:?} is not a version: give a number (see `feature-pipeline datasets`) or `latest`")
            })?;
            versions.iter().find(|v| v.version == number).cloned()
        };
        let chosen =
            chosen.with_context(|| format!("no dataset version {version}: see `feature-pipeline datasets`"))?;
        let manifest = publish::export(&storage.artifacts, &chosen.spec.artifact_hash, dir).await?;
        println!(
            "datasets: v{} written to {} ({} files); load it with datasets.load_dataset({:?})",
            chosen.version,
            dir.display(),
            manifest.files.len(),
            dir.display().to_string()
        );
        return Ok(());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&versions)?);
        return Ok(());
    }
    println!(
        "{:>7}  {:<12} {:>6} {:>6} {:>6}  {:<36} {:<14} created",
        "version", "artifact", "train", "valid", "test", "teacher", "prompt"
    );
    for v in &versions {
        let rows = &v.spec.stats["rows"];
        println!(
            "{:>7}  {:<12} {:>6} {:>6} {:>6}  {:<36} {:<14} {}",
            format!("v{}", v.version),
            &v.spec.artifact_hash[..12],
            rows["train"],
            rows["validation"],
            rows["test"],
            v.spec.lineage["teacher"].as_str().unwrap_or("-"),
            v.spec.lineage["prompt"]["version"].as_str().unwrap_or("-"),
            v.created_at
        );
    }
    if versions.is_empty() {
        println!("(no dataset versions yet: run `feature-pipeline dataset`)");
    }
    Ok(())
}
