//! `feature-pipeline run [--config pipeline.toml]`: every configured stage, in order, as one run.
//!
//! The file names the stages to run and their settings; a table's keys are the stage command's own
//! flags (`min_quality = 0.5` is `--min-quality 0.5`; `paths` are its positional arguments), so the
//! file, the command line and `--help` can never disagree. Stages run in the pipeline's order
//! whatever the file's order: extract (notion, files, crawl) → explore → filter → dataset → index →
//! models → train. Each step consults the step cache: one whose code version, config and input match a
//! recorded success is skipped and says so (`--no-cache` runs everything).
//!
//! Without `--config`: filter, dataset and index over the documents already stored.

use std::path::Path;

use anyhow::{Context, Result};
use clap::Parser;
use engram_shared::config::StorageConfig;
use engram_shared::registry::{AliasKind, MODEL_PRODUCTION};
use engram_shared::storage::Storage;
use serde_json::json;
use toml::{Table, Value};

use crate::commands;
use crate::config::{Command, Config, ExtractCommand, ModelsCommand, RunArgs};
use crate::pipeline::Run;

/// The stages, in the order they run, with the command words that parse their tables.
const STAGES: [(&str, &[&str]); 9] = [
    ("extract.notion", &["extract", "notion"]),
    ("extract.files", &["extract", "files"]),
    ("extract.crawl", &["extract", "crawl"]),
    ("explore", &["explore"]),
    ("filter", &["filter"]),
    ("dataset", &["dataset"]),
    ("index", &["index"]),
    ("models.register", &["models", "register"]),
    ("train", &["train"]),
];

/// One stage's command line from its table: `key = value` → `--key value`, arrays repeat the flag,
/// `true` is a bare flag, `paths` are positional.
fn arguments(stage: &str, words: &[&str], table: &Table) -> Result<Vec<String>> {
    let mut args: Vec<String> = std::iter::once("feature-pipeline")
        .chain(words.iter().copied())
        .map(String::from)
        .collect();
    let mut positional = Vec::new();
    for (key, value) in table {
        let flag = format!("--{}", key.replace('_', "-"));
        let scalar = |value: &Value| -> Result<String> {
            Ok(match value {
                Value::String(s) => s.clone(),
                Value::Integer(i) => i.to_string(),
                Value::Float(f) => f.to_string(),
                Value::Boolean(b) => b.to_string(),
                other => anyhow::bail!("[{stage}] {key}: {other} is not a string, number or boolean"),
            })
        };
        match (key.as_str(), value) {
            ("paths", Value::Array(items)) => {
                for item in items {
                    positional.push(scalar(item)?);
                }
            }
            (_, Value::Boolean(true)) => args.push(flag),
            (_, Value::Boolean(false)) => {}
            (_, Value::Array(items)) => {
                for item in items {
                    args.push(flag.clone());
                    args.push(scalar(item)?);
                }
            }
            (_, Value::Table(_)) => anyhow::bail!("[{stage}] {key}: nested tables are not settings"),
            (_, value) => {
                args.push(flag);
                args.push(scalar(value)?);
            }
        }
    }
    args.extend(positional);
    Ok(args)
}

fn lookup<'t>(table: &'t Table, dotted: &str) -> Option<&'t Table> {
    let mut current = table;
    for part in dotted.split('.') {
        current = current.get(part)?.as_table()?;
    }
    Some(current)
}

/// Reads the file and checks every table names a stage.
fn load(path: &Path) -> Result<Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read the pipeline config {}", path.display()))?;
    let table: Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let known: Vec<&str> = STAGES.iter().map(|(name, _)| *name).collect();
    for (key, value) in &table {
        let inner: Vec<String> = match value.as_table() {
            Some(t) if key == "extract" || key == "models" => t.keys().map(|k| format!("{key}.{k}")).collect(),
            Some(_) => vec![key.clone()],
            None => anyhow::bail!("{}: `{key}` is not a [stage] table", path.display()),
        };
        for name in inner {
            if !known.contains(&name.as_str()) {
                anyhow::bail!(
                    "{}: [{name}] is not a stage; the stages are {}",
                    path.display(),
                    known.join(", ")
                );
            }
        }
    }
    Ok(table)
}

/// Runs `run`.
pub async fn run(config: &StorageConfig, args: &RunArgs) -> Result<()> {
    let table = match &args.config {
        Some(path) => load(path)?,
        None => "[filter]\n[dataset]\n[index]\n".parse::<Table>()?,
    };
    // Every stage's settings are parsed before anything runs: a typo fails at once.
    let mut planned = Vec::new();
    for (name, words) in STAGES {
        if let Some(stage) = lookup(&table, name) {
            let argv = arguments(name, words, stage)?;
            let parsed =
                Config::try_parse_from(&argv).map_err(|e| anyhow::anyhow!("[{name}] in the pipeline config: {e}"))?;
            planned.push((name, parsed.command));
        }
    }
    if planned.is_empty() {
        anyhow::bail!("the pipeline config names no stage; see deploy/pipeline.toml");
    }
    let storage = Storage::open(config).await?;
    let names: Vec<&str> = planned.iter().map(|(name, _)| *name).collect();
    let run = Run::start(
        &storage.registry,
        "run",
        &json!({ "stages": names, "config": args.config }),
    )
    .await?;
    eprintln!("run {}: {}", run.id, names.join(" → "));
    let use_cache = !args.no_cache;
    let result = stages(&storage, &run, config, planned, use_cache).await;
    run.finish(result).await
}

async fn stages(
    storage: &Storage,
    run: &Run<'_>,
    config: &StorageConfig,
    planned: Vec<(&str, Command)>,
    use_cache: bool,
) -> Result<()> {
    for (name, command) in planned {
        eprintln!("── {name}");
        match command {
            Command::Extract(extract) => {
                if matches!(&extract, ExtractCommand::Crawl(_)) && use_cache {
                    eprintln!("{name}: the web is never cached; crawling");
                }
                commands::extract::stage(storage, run, &extract, use_cache).await?
            }
            Command::Explore(args) => commands::explore::stage(storage, run, &args, &config.home, use_cache).await?,
            Command::Filter(args) => commands::filter::stage(storage, run, &args, use_cache).await?,
            Command::Dataset(mut args) => {
                args.no_cache |= !use_cache;
                let published = commands::dataset::stage(storage, run, &args).await?;
                commands::dataset::print(&published);
            }
            Command::Index(args) => commands::index::stage(storage, run, &args, use_cache).await?,
            Command::Models(ModelsCommand::Register(args)) => {
                // The base model bootstraps an empty registry; it never replaces a promoted model.
                match storage.registry.alias(AliasKind::Model, MODEL_PRODUCTION).await? {
                    Some(version) if args.promote => {
                        eprintln!("{name}: version {version} is in production already; not replacing it");
                    }
                    _ => commands::models::register(storage, &args).await?,
                }
            }
            Command::Train(mut args) => {
                args.no_cache |= !use_cache;
                let trained = commands::train::stage(storage, &config.home, run, &args).await?;
                commands::train::print(&trained);
                commands::train::promote(storage, &args, &trained).await?;
            }
            other => anyhow::bail!("[{name}] is not a pipeline stage: {other:?}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_becomes_the_stage_command_line() {
        let table: Table = "min_quality = 0.5\njson = true\npaths = [\"a\", \"b\"]\nurl = [\"x\", \"y\"]"
            .parse()
            .unwrap();
        let argv = arguments("filter", &["filter"], &table).unwrap();
        assert_eq!(
            argv,
            [
                "feature-pipeline",
                "filter",
                "--json",
                "--min-quality",
                "0.5",
                "--url",
                "x",
                "--url",
                "y",
                "a",
                "b"
            ]
        );
        let parsed = Config::try_parse_from(["feature-pipeline", "filter", "--min-quality", "0.7"]).unwrap();
        assert!(matches!(parsed.command, Command::Filter(args) if (args.min_quality - 0.7).abs() < 1e-9));
    }

    #[test]
    fn unknown_stages_and_settings_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipeline.toml");
        std::fs::write(&path, "[filterr]\n").unwrap();
        assert!(
            load(&path)
                .unwrap_err()
                .to_string()
                .contains("[filterr] is not a stage")
        );
        std::fs::write(&path, "[extract.notion]\npaths = [\"x\"]\n[filter]\nmin_qualty = 1\n").unwrap();
        let table = load(&path).unwrap();
        let argv = arguments("filter", &["filter"], lookup(&table, "filter").unwrap()).unwrap();
        assert!(Config::try_parse_from(&argv).is_err());
    }
}
