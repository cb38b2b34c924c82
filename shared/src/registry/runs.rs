//! Pipeline runs and their steps, and the step cache that lets a rerun skip finished work.
//!
//! A step is keyed by what it is (name, code version), how it was configured (config hash) and what
//! it read (input hash). A success with the same key means the step's output is already stored: the
//! pipeline records the success only after that output is durable, so a crash never leaves a cache
//! entry pointing at nothing.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::Registry;
use crate::hashing::sha256_hex;
use crate::time::{Timestamp, from_millis, millis, now};
use crate::{Error, Result};

/// Where a run or step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Started, not finished.
    Running,
    /// Finished and its outputs are stored.
    Succeeded,
    /// Stopped on an error.
    Failed,
    /// A step skipped because the step cache had its output.
    Cached,
    /// Its process stopped without finishing it (killed, crashed, the machine lost): marked so by
    /// a later run ([`Registry::interrupt_dead_runs`]); the steps it finished stay cached.
    Interrupted,
}

impl RunStatus {
    fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cached => "cached",
            RunStatus::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RunStatus {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cached" => RunStatus::Cached,
            "interrupted" => RunStatus::Interrupted,
            other => return Err(Error::Corrupt(format!("unknown run status {other:?}"))),
        })
    }
}

/// A pipeline run as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PipelineRun {
    /// Run id (a UUID).
    pub id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// When it started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// The pipeline's code version.
    pub code_version: String,
    /// sha256 of the config.
    pub config_hash: String,
    /// The config, as JSON.
    pub config: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
}

/// The process running a run, so that a later run can tell whether it is still alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunOwner {
    /// The host's name (a pod's name on Kubernetes).
    pub host: String,
    /// The process id on that host.
    pub pid: i64,
}

/// A run still marked `running`, with what says whether its process lives.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenRun {
    /// The run's id.
    pub id: String,
    /// Who ran it (runs recorded before owners were kept have none).
    pub owner: Option<RunOwner>,
    /// When it last said it was alive (its start, before its first heartbeat).
    pub heartbeat_at: Timestamp,
}

/// What identifies a step's work for the step cache.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepKey {
    /// The step's name (`extract`, `index`, …).
    pub name: String,
    /// The code version of the step.
    pub code_version: String,
    /// sha256 of the step's config.
    pub config_hash: String,
    /// sha256 of the step's inputs.
    pub input_hash: String,
}

/// A recorded step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRecord {
    /// The run it belongs to.
    pub run_id: String,
    /// Its cache key.
    pub key: StepKey,
    /// Where it stands.
    pub status: RunStatus,
    /// When it started.
    pub started_at: Timestamp,
    /// When it finished.
    pub finished_at: Option<Timestamp>,
    /// sha256 of what it produced.
    pub output_hash: Option<String>,
    /// Counts and notes the step reported, as JSON.
    pub detail: serde_json::Value,
    /// Why it failed.
    pub error: Option<String>,
}

fn json_column(row: &AnyRow, column: &str) -> Result<serde_json::Value> {
    let text: String = row.try_get(column).map_err(|e| Error::backend("registry", e))?;
    serde_json::from_str(&text).map_err(|e| Error::Corrupt(format!("{column} is not JSON: {e}")))
}

fn get<'r, T: sqlx::Decode<'r, sqlx::Any> + sqlx::Type<sqlx::Any>>(row: &'r AnyRow, column: &str) -> Result<T> {
    row.try_get(column).map_err(|e| Error::backend("registry", e))
}

fn row_to_run(row: &AnyRow) -> Result<PipelineRun> {
    Ok(PipelineRun {
        id: get(row, "id")?,
        status: get::<String>(row, "status")?.parse()?,
        started_at: from_millis(get(row, "started_at")?),
        finished_at: get::<Option<i64>>(row, "finished_at")?.map(from_millis),
        code_version: get(row, "code_version")?,
        config_hash: get(row, "config_hash")?,
        config: json_column(row, "config")?,
        error: get(row, "error")?,
    })
}

fn row_to_step(row: &AnyRow) -> Result<StepRecord> {
    Ok(StepRecord {
        run_id: get(row, "run_id")?,
        key: StepKey {
            name: get(row, "name")?,
            code_version: get(row, "code_version")?,
            config_hash: get(row, "config_hash")?,
            input_hash: get(row, "input_hash")?,
        },
        status: get::<String>(row, "status")?.parse()?,
        started_at: from_millis(get(row, "started_at")?),
        finished_at: get::<Option<i64>>(row, "finished_at")?.map(from_millis),
        output_hash: get(row, "output_hash")?,
        detail: json_column(row, "detail")?,
        error: get(row, "error")?,
    })
}

impl Registry {
    /// Records the start of a run and returns it.
    pub async fn start_run(&self, config: &serde_json::Value, code_version: &str) -> Result<PipelineRun> {
        self.start_owned_run(config, code_version, None).await
    }

    /// Records the start of a run by `owner` (whose liveness later runs check) and returns it.
    pub async fn start_owned_run(
        &self,
        config: &serde_json::Value,
        code_version: &str,
        owner: Option<&RunOwner>,
    ) -> Result<PipelineRun> {
        let config_text = config.to_string();
        let run = PipelineRun {
            id: uuid::Uuid::new_v4().to_string(),
            status: RunStatus::Running,
            started_at: now(),
            finished_at: None,
            code_version: code_version.to_string(),
            config_hash: sha256_hex(&config_text),
            config: config.clone(),
            error: None,
        };
        sqlx::query(
            "INSERT INTO pipeline_runs (id, status, started_at, code_version, config_hash, config, host, pid, heartbeat_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&run.id)
        .bind(run.status.as_str())
        .bind(millis(&run.started_at))
        .bind(&run.code_version)
        .bind(&run.config_hash)
        .bind(&config_text)
        .bind(owner.map(|o| o.host.clone()))
        .bind(owner.map(|o| o.pid))
        .bind(millis(&run.started_at))
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(run)
    }

    /// Records how a run ended.
    pub async fn finish_run(&self, run_id: &str, status: RunStatus, error: Option<&str>) -> Result<()> {
        let done = sqlx::query("UPDATE pipeline_runs SET status = $1, finished_at = $2, error = $3 WHERE id = $4")
            .bind(status.as_str())
            .bind(millis(&now()))
            .bind(error)
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("pipeline run {run_id}")));
        }
        Ok(())
    }

    /// Says that run `run_id` is alive (its process calls this every little while).
    pub async fn heartbeat(&self, run_id: &str) -> Result<()> {
        sqlx::query("UPDATE pipeline_runs SET heartbeat_at = $1 WHERE id = $2 AND status = 'running'")
            .bind(millis(&now()))
            .bind(run_id)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Runs still marked `running`, oldest first.
    pub async fn open_runs(&self) -> Result<Vec<OpenRun>> {
        let rows = sqlx::query(
            "SELECT id, host, pid, started_at, heartbeat_at FROM pipeline_runs WHERE status = 'running' ORDER BY started_at, id",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        rows.iter()
            .map(|row| {
                let host: Option<String> = get(row, "host")?;
                let pid: Option<i64> = get(row, "pid")?;
                let beat: Option<i64> = get(row, "heartbeat_at")?;
                Ok(OpenRun {
                    id: get(row, "id")?,
                    owner: host.zip(pid).map(|(host, pid)| RunOwner { host, pid }),
                    heartbeat_at: from_millis(beat.unwrap_or(get(row, "started_at")?)),
                })
            })
            .collect()
    }

    /// Marks the open runs that `dead` says are gone as `interrupted`, with the steps they
    /// finished named in their error; their unfinished steps become `interrupted` too. Returns
    /// the runs marked. A run is only marked while still `running`, so two callers cannot both
    /// mark one, and a run that finishes meanwhile keeps its own ending.
    pub async fn interrupt_dead_runs(&self, dead: impl Fn(&OpenRun) -> bool) -> Result<Vec<String>> {
        let mut marked = Vec::new();
        for run in self.open_runs().await?.into_iter().filter(|run| dead(run)) {
            let steps = self.steps(&run.id).await?;
            let finished: Vec<&str> = steps
                .iter()
                .filter(|s| matches!(s.status, RunStatus::Succeeded | RunStatus::Cached))
                .map(|s| s.key.name.as_str())
                .collect();
            let unfinished: Vec<&str> = steps
                .iter()
                .filter(|s| s.status == RunStatus::Running)
                .map(|s| s.key.name.as_str())
                .collect();
            let error = format!(
                "interrupted: the process stopped without finishing (last alive {}); finished steps: {}; unfinished: {}",
                run.heartbeat_at.to_rfc3339(),
                if finished.is_empty() {
                    "none".to_string()
                } else {
                    finished.join(", ")
                },
                if unfinished.is_empty() {
                    "none".to_string()
                } else {
                    unfinished.join(", ")
                },
            );
            let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
            let done = sqlx::query(
                "UPDATE pipeline_runs SET status = 'interrupted', finished_at = $1, error = $2 WHERE id = $3 AND status = 'running'",
            )
            .bind(millis(&run.heartbeat_at))
            .bind(&error)
            .bind(&run.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            sqlx::query(
                "UPDATE pipeline_steps SET status = 'interrupted', error = $1 WHERE run_id = $2 AND status = 'running'",
            )
            .bind("interrupted: the run's process stopped during this step")
            .bind(&run.id)
            .execute(&mut *tx)
            .await
            .map_err(|e| self.err(e))?;
            tx.commit().await.map_err(|e| self.err(e))?;
            if done.rows_affected() > 0 {
                marked.push(run.id);
            }
        }
        Ok(marked)
    }

    /// One run.
    pub async fn run(&self, run_id: &str) -> Result<Option<PipelineRun>> {
        let row = sqlx::query("SELECT * FROM pipeline_runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_run).transpose()
    }

    /// The latest `limit` runs, newest first.
    pub async fn runs(&self, limit: i64) -> Result<Vec<PipelineRun>> {
        let rows = sqlx::query("SELECT * FROM pipeline_runs ORDER BY started_at DESC, id LIMIT $1")
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_run).collect()
    }

    /// Records that a step of `run_id` started. Starting a step again (a retry within the run)
    /// replaces the earlier record.
    pub async fn start_step(&self, run_id: &str, key: &StepKey) -> Result<()> {
        sqlx::query(
            "INSERT INTO pipeline_steps (run_id, name, status, started_at, code_version, config_hash, input_hash, detail) \
             VALUES ($1, $2, 'running', $3, $4, $5, $6, '{}') \
             ON CONFLICT (run_id, name) DO UPDATE SET status = 'running', started_at = excluded.started_at, \
             finished_at = NULL, code_version = excluded.code_version, config_hash = excluded.config_hash, \
             input_hash = excluded.input_hash, output_hash = NULL, detail = '{}', error = NULL",
        )
        .bind(run_id)
        .bind(&key.name)
        .bind(millis(&now()))
        .bind(&key.code_version)
        .bind(&key.config_hash)
        .bind(&key.input_hash)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records how a step ended. Call with `Succeeded` only once the step's output is durably stored:
    /// that record is what lets a later run skip the step.
    pub async fn finish_step(
        &self,
        run_id: &str,
        name: &str,
        status: RunStatus,
        output_hash: Option<&str>,
        detail: &serde_json::Value,
        error: Option<&str>,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE pipeline_steps SET status = $1, finished_at = $2, output_hash = $3, detail = $4, error = $5 \
             WHERE run_id = $6 AND name = $7",
        )
        .bind(status.as_str())
        .bind(millis(&now()))
        .bind(output_hash)
        .bind(detail.to_string())
        .bind(error)
        .bind(run_id)
        .bind(name)
        .execute(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        if done.rows_affected() == 0 {
            return Err(Error::not_found(format!("step {name} of run {run_id}")));
        }
        Ok(())
    }

    /// The latest successful step with exactly this key, if any: its output can be reused.
    pub async fn cached_step(&self, key: &StepKey) -> Result<Option<StepRecord>> {
        let row = sqlx::query(
            "SELECT * FROM pipeline_steps WHERE name = $1 AND code_version = $2 AND config_hash = $3 \
             AND input_hash = $4 AND status = 'succeeded' ORDER BY finished_at DESC LIMIT 1",
        )
        .bind(&key.name)
        .bind(&key.code_version)
        .bind(&key.config_hash)
        .bind(&key.input_hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_step).transpose()
    }

    /// The most recent successful step called `name`, in any run: how a later stage finds what an
    /// earlier one produced (the filter's document set, the crawl's report).
    pub async fn latest_step(&self, name: &str) -> Result<Option<StepRecord>> {
        let row = sqlx::query(
            "SELECT * FROM pipeline_steps WHERE name = $1 AND status = 'succeeded' \
             ORDER BY finished_at DESC, run_id LIMIT 1",
        )
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| self.err(e))?;
        row.as_ref().map(row_to_step).transpose()
    }

    /// The steps of a run, in the order they started.
    pub async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>> {
        let rows = sqlx::query("SELECT * FROM pipeline_steps WHERE run_id = $1 ORDER BY started_at, name")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        rows.iter().map(row_to_step).collect()
    }
}
