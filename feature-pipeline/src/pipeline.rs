//! Runs and steps, as the registry records them.
//!
//! Every command that changes storage is one pipeline run with one or more steps. The registry
//! keeps each step's config and input hashes, its output (an artifact hash) and its counts, so a
//! later stage can find what an earlier one produced (`Registry::latest_step`) and a person can see
//! what happened. A step is recorded as succeeded only after its output is durably stored.

use engram_shared::hashing::sha256_hex;
use engram_shared::registry::{Registry, RunStatus, StepKey};
use serde::Serialize;

/// The version of the pipeline's code, recorded with every run and step.
pub const CODE_VERSION: &str = env!("CARGO_PKG_VERSION");

/// One pipeline run in progress.
pub struct Run<'a> {
    registry: &'a Registry,
    /// The run's id (a UUID).
    pub id: String,
}

impl<'a> Run<'a> {
    /// Records the start of a run of `command` with `config`.
    pub async fn start(registry: &'a Registry, command: &str, config: &impl Serialize) -> anyhow::Result<Self> {
        let config = serde_json::json!({ "command": command, "config": config });
        let run = registry.start_run(&config, CODE_VERSION).await?;
        tracing::info!(run = %run.id, command, "pipeline run started");
        Ok(Self { registry, id: run.id })
    }

    /// Records the start of step `name` with its config and a hash of what it reads.
    pub async fn start_step(&self, name: &str, config: &impl Serialize, input_hash: &str) -> anyhow::Result<()> {
        let config_text = serde_json::to_string(config)?;
        let key = StepKey {
            name: name.to_string(),
            code_version: CODE_VERSION.to_string(),
            config_hash: sha256_hex(&config_text),
            input_hash: input_hash.to_string(),
        };
        self.registry.start_step(&self.id, &key).await?;
        Ok(())
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
