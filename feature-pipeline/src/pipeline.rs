//! Runs and steps, as the registry records them.
//!
//! Every command that changes storage is one pipeline run with one or more steps. The registry
//! keeps each step's config and input hashes, its output (an artifact hash) and its counts, so a
//! later stage can find what an earlier one produced (`Registry::latest_step`) and a person can see
//! what happened. A step is recorded as succeeded only after its output is durably stored.
//!
//! A run killed mid-way (SIGKILL, OOM, a lost node) cannot record its own end. So each run records
//! its host and pid and beats a heartbeat; the next run to start marks a `running` run whose
//! process is gone (same host, pid no longer alive) or whose heartbeat stopped [`STALE_AFTER`] ago
//! as `interrupted`, naming the steps it finished (they stay in the step cache: the rerun resumes).
//!
//! The step cache: a step whose name, code version, config hash and input hash match a recorded
//! success is not run again ([`Run::cached`]); the earlier output is reused and the skip is recorded
//! in this run too, so `feature-pipeline runs` shows it.

use engram_shared::artifacts::ArtifactStore;
use engram_shared::hashing::sha256_hex;
use std::time::Duration;

use engram_shared::registry::{OpenRun, Registry, RunOwner, RunStatus, StepKey, StepRecord};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The version of the pipeline's code, recorded with every run.
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The source files whose code decides a step's output, compiled in: a step's code version is the
/// crate version plus a hash of these, so editing a step invalidates its cache entries (and only
/// its own) without a version bump.
fn step_sources(name: &str) -> &'static [&'static str] {
    match name {
        "distil" => &[
            include_str!("steps/distil.rs"),
            include_str!("teacher/mod.rs"),
            include_str!("../prompts/summarize-v1.md"),
        ],
        "quality" => &[include_str!("steps/quality.rs")],
        "qa-distil" => &[
            include_str!("steps/qa/mod.rs"),
            include_str!("steps/qa/ask.rs"),
            include_str!("steps/qa/facts.rs"),
            include_str!("steps/chunk.rs"),
            include_str!("teacher/mod.rs"),
            include_str!("../prompts/qa-v1.md"),
        ],
        "qa-quality" => &[
            include_str!("steps/qa/check.rs"),
            include_str!("steps/qa/facts.rs"),
            include_str!("steps/quality.rs"),
        ],
        "qa-split" => &[
            include_str!("steps/qa/rows.rs"),
            include_str!("steps/qa/facts.rs"),
            include_str!("steps/split.rs"),
            include_str!("../../shared/src/answers/prompt.rs"),
            include_str!("../../shared/src/answers/abstain.rs"),
        ],
        "train" => &[
            include_str!("commands/train.rs"),
            include_str!("train/examples.rs"),
            include_str!("train/gemm.rs"),
            include_str!("train/lora.rs"),
            include_str!("train/merge.rs"),
            include_str!("train/model.rs"),
            include_str!("train/ops/mod.rs"),
            include_str!("train/ops/attention.rs"),
            include_str!("train/ops/cross_entropy.rs"),
            include_str!("train/ops/product.rs"),
            include_str!("train/ops/rms_norm.rs"),
            include_str!("train/ops/swiglu.rs"),
            include_str!("train/optimizer.rs"),
            include_str!("train/peft.rs"),
            include_str!("train/trainer.rs"),
            include_str!("../../shared/src/generation/checkpoint.rs"),
            include_str!("../../shared/src/generation/prompt_tokens.rs"),
            include_str!("../prompts/summarize-v1.md"),
        ],
        "split" => &[include_str!("steps/split.rs")],
        "publish" => &[include_str!("steps/publish.rs"), include_str!("steps/qa/rows.rs")],
        "filter" => &[include_str!("steps/filter.rs"), include_str!("steps/dedup.rs")],
        "explore" => &[include_str!("steps/explore.rs"), include_str!("report.rs")],
        "index" | "index-shard" => &[
            include_str!("steps/index.rs"),
            include_str!("steps/chunk.rs"),
            include_str!("steps/shard.rs"),
        ],
        name if name.starts_with("extract") => &[
            include_str!("steps/extract/mod.rs"),
            include_str!("steps/extract/notion_export.rs"),
            include_str!("steps/extract/files.rs"),
            include_str!("steps/extract/walk.rs"),
            include_str!("steps/extract/markdown.rs"),
            include_str!("steps/extract/html.rs"),
            include_str!("steps/score.rs"),
        ],
        _ => &[],
    }
}

/// The code version of step `name`: `<crate version>+<hash of its sources>`.
pub fn step_code_version(name: &str) -> String {
    let sources = step_sources(name);
    if sources.is_empty() {
        return CODE_VERSION.to_string();
    }
    let digest = sha256_hex(sources.concat());
    format!("{CODE_VERSION}+{}", &digest[..12])
}

/// How often a run says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(30);

/// A run on another host whose heartbeat is this old is taken for dead.
pub const STALE_AFTER: Duration = Duration::from_secs(10 * 60);

/// One pipeline run in progress.
pub struct Run<'a> {
    registry: &'a Registry,
    /// The run's id (a UUID).
    pub id: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl Drop for Run<'_> {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// This process, as a run's owner.
fn this_process() -> RunOwner {
    RunOwner {
        host: host_name(),
        pid: i64::from(std::process::id()),
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "unknown".into())
}

/// Whether process `pid` exists on this host.
fn alive(pid: i64) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: kill with signal 0 sends nothing; it only checks the process exists. pid > 0, so
    // it names one process, never a group.
    let answer = unsafe { libc::kill(pid, 0) };
    answer == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether the process of open run `run` is gone, judged from this process on this host.
fn is_dead(run: &OpenRun, me: &RunOwner, stale_after: Duration) -> bool {
    let silent = engram_shared::time::now() - run.heartbeat_at;
    let stale = silent.to_std().is_ok_and(|silent| silent > stale_after);
    match &run.owner {
        Some(owner) if owner.host == me.host => owner.pid != me.pid && !alive(owner.pid),
        _ => stale,
    }
}

impl<'a> Run<'a> {
    /// Records the start of a run of `command` with `config`.
    pub async fn start(registry: &'a Registry, command: &str, config: &impl Serialize) -> anyhow::Result<Self> {
        let config = serde_json::json!({ "command": command, "config": config });
        let me = this_process();
        for id in registry
            .interrupt_dead_runs(|run| is_dead(run, &me, STALE_AFTER))
            .await?
        {
            eprintln!("run {id} had stopped without finishing: marked interrupted (see `feature-pipeline runs`)");
        }
        let run = registry.start_owned_run(&config, CODE_VERSION, Some(&me)).await?;
        tracing::info!(run = %run.id, command, "pipeline run started");
        let beating = registry.clone();
        let id = run.id.clone();
        let heartbeat = tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(err) = beating.heartbeat(&id).await {
                    tracing::warn!(run = %id, "heartbeat not recorded: {err}");
                }
            }
        });
        Ok(Self {
            registry,
            id: run.id,
            heartbeat,
        })
    }

    /// The cache key of step `name` with `config` over input `input_hash`.
    pub fn key(name: &str, config: &impl Serialize, input_hash: &str) -> anyhow::Result<StepKey> {
        let config_text = serde_json::to_string(config)?;
        Ok(StepKey {
            name: name.to_string(),
            code_version: step_code_version(name),
            config_hash: sha256_hex(&config_text),
            input_hash: input_hash.to_string(),
        })
    }

    /// Records the start of step `name` with its config and a hash of what it reads.
    pub async fn start_step(&self, name: &str, config: &impl Serialize, input_hash: &str) -> anyhow::Result<()> {
        let key = Self::key(name, config, input_hash)?;
        self.registry.start_step(&self.id, &key).await?;
        Ok(())
    }

    /// The step cache: when `use_cache` is set and a success with the same key is recorded, the
    /// skip is recorded in this run (same output, `cached_from` in its detail), said on stderr, and
    /// the earlier record returned; otherwise `None`, and the caller runs the step.
    pub async fn cached(
        &self,
        name: &str,
        config: &impl Serialize,
        input_hash: &str,
        use_cache: bool,
    ) -> anyhow::Result<Option<StepRecord>> {
        if !use_cache {
            return Ok(None);
        }
        let key = Self::key(name, config, input_hash)?;
        let Some(record) = self.registry.cached_step(&key).await? else {
            return Ok(None);
        };
        self.registry.start_step(&self.id, &key).await?;
        let mut detail = record.detail.clone();
        if let Some(object) = detail.as_object_mut() {
            object.insert("cached_from".into(), serde_json::json!(record.run_id));
        }
        self.registry
            .finish_step(
                &self.id,
                name,
                RunStatus::Succeeded,
                record.output_hash.as_deref(),
                &detail,
                None,
            )
            .await?;
        eprintln!(
            "{name}: skipped: same code, config and input as run {} (--no-cache to force)",
            record.run_id
        );
        Ok(Some(record))
    }

    /// Records that step `name` succeeded, with its output's hash and its counts.
    pub async fn step_succeeded(
        &self,
        name: &str,
        output_hash: Option<&str>,
        detail: &serde_json::Value,
    ) -> anyhow::Result<()> {
        self.registry
            .finish_step(&self.id, name, RunStatus::Succeeded, output_hash, detail, None)
            .await?;
        Ok(())
    }

    /// Records that step `name` failed.
    pub async fn step_failed(&self, name: &str, error: &anyhow::Error) -> anyhow::Result<()> {
        let message = format!("{error:#}");
        self.registry
            .finish_step(
                &self.id,
                name,
                RunStatus::Failed,
                None,
                &serde_json::json!({}),
                Some(&message),
            )
            .await?;
        Ok(())
    }

    /// Records how the run ended and passes its result on.
    pub async fn finish<T>(self, result: anyhow::Result<T>) -> anyhow::Result<T> {
        let (status, error) = match &result {
            Ok(_) => (RunStatus::Succeeded, None),
            Err(err) => (RunStatus::Failed, Some(format!("{err:#}"))),
        };
        if let Err(record_err) = self.registry.finish_run(&self.id, status, error.as_deref()).await {
            tracing::error!(run = %self.id, "could not record the end of the run: {record_err}");
        }
        result
    }

    /// Runs `work` as step `name`: records its start, then its success (with the output hash and
    /// detail `work` returns) or its failure.
    pub async fn step<T, F>(&self, name: &str, config: &impl Serialize, input_hash: &str, work: F) -> anyhow::Result<T>
    where
        F: Future<Output = anyhow::Result<StepOutput<T>>>,
    {
        self.start_step(name, config, input_hash).await?;
        match work.await {
            Ok(output) => {
                self.step_succeeded(name, output.hash.as_deref(), &output.detail)
                    .await?;
                Ok(output.value)
            }
            Err(err) => {
                self.step_failed(name, &err).await?;
                Err(err)
            }
        }
    }
}

/// What a step hands back to be recorded.
pub struct StepOutput<T> {
    /// The step's result, for the command to print.
    pub value: T,
    /// The hash of the stored output (an artifact), if it stored one.
    pub hash: Option<String>,
    /// Counts and notes, as JSON.
    pub detail: serde_json::Value,
}

impl Run<'_> {
    /// A step whose output is a JSON value stored as an artifact: reused from the step cache when
    /// an identical step succeeded before, else computed by `work` (which returns the value and its
    /// counts), stored, and only then recorded as succeeded. Returns the value and its artifact hash.
    pub async fn json_step<T, F>(
        &self,
        artifacts: &ArtifactStore,
        name: &str,
        config: &impl Serialize,
        input_hash: &str,
        use_cache: bool,
        work: F,
    ) -> anyhow::Result<(T, String)>
    where
        T: Serialize + DeserializeOwned,
        F: Future<Output = anyhow::Result<(T, serde_json::Value)>>,
    {
        if let Some(record) = self.cached(name, config, input_hash, use_cache).await?
            && let Some(hash) = record.output_hash
        {
            let bytes = artifacts.get(&hash).await?;
            let value = serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("the cached output {hash} of step {name} is unreadable ({e}); rerun with --no-cache")
            })?;
            return Ok((value, hash));
        }
        self.step(name, config, input_hash, async {
            let (value, detail) = work.await?;
            let hash = artifacts.put(serde_json::to_vec(&value)?).await?;
            Ok(StepOutput {
                value: (value, hash.clone()),
                hash: Some(hash),
                detail,
            })
        })
        .await
    }
}

/// A fingerprint of the stored documents: every id with its content hash and quality score. Steps
/// that read the whole store (explore, filter) use it as their input hash.
pub async fn fingerprint(documents: &dyn engram_shared::documents::DocumentStore) -> anyhow::Result<String> {
    use futures::StreamExt;
    let mut entries = Vec::new();
    let mut stream = documents.stream(&engram_shared::documents::DocumentFilter::default());
    while let Some(document) = stream.next().await {
        let document = document?;
        let quality = document
            .quality
            .map(|q| format!("{}@{}", q.score, q.version))
            .unwrap_or_default();
        entries.push(format!("{}:{}:{quality}", document.id, document.content_hash));
    }
    entries.sort();
    Ok(sha256_hex(entries.join("\n")))
}
