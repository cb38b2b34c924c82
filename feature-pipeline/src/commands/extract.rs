//! `feature-pipeline extract notion|crawl|files`: one pipeline run with one extract step.
//!
//! Problems with single items (a file, a page, a URL) are printed and recorded, and the run goes
//! on. An input that cannot be read at all (a missing folder, a corrupt zip) fails the command
//! once everything else is stored, so a scheduler sees it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::documents::{DocumentFilter, DocumentStore};
use engram_shared::hashing::sha256_hex;
use engram_shared::storage::Storage;
use futures::StreamExt;
use serde_json::json;

use crate::config::{CrawlArgs, ExtractCommand, FilesArgs, NotionArgs};
use crate::pipeline::{Run, StepOutput};
use crate::progress;
use crate::steps::explore::CRAWL_STEP;
use crate::steps::extract::crawl::{CrawlOptions, Crawler, normalise};
use crate::steps::extract::egress::Egress;
use crate::steps::extract::notion_api::{self, NotionClient};
use crate::steps::extract::walk;
use crate::steps::extract::{DocumentWriter, ExtractReport, Problem, files, notion_export};
use sha2::{Digest, Sha256};

/// Runs `extract`.
pub async fn run(config: &StorageConfig, command: &ExtractCommand) -> Result<()> {
    let storage = Storage::open(config).await?;
    let (name, settings) = settings(command);
    let run = Run::start(&storage.registry, name, &settings).await?;
    let result = stage(&storage, &run, command, false).await;
    run.finish(result).await
}

/// The step name and settings of an extract command.
fn settings(command: &ExtractCommand) -> (&'static str, serde_json::Value) {
    match command {
        ExtractCommand::Notion(args) if args.api => (
            "extract-notion-api",
            json!({ "database": args.database, "api_url": args.api_url, "interval_ms": args.api_interval_ms }),
        ),
        ExtractCommand::Notion(args) => (
            "extract-notion",
            json!({ "paths": args.paths, "max_bytes": args.limits.max_bytes }),
        ),
        ExtractCommand::Crawl(args) => (
            CRAWL_STEP,
            json!({
                "urls": args.urls, "urls_file": args.urls_file, "from_documents": args.from_documents,
                "concurrency": args.concurrency, "host_delay_ms": args.host_delay_ms,
                "timeout_secs": args.timeout_secs, "retries": args.retries, "user_agent": args.user_agent,
                "max_bytes": args.limits.max_bytes,
            }),
        ),
        ExtractCommand::Files(args) => (
            "extract-files",
            json!({ "paths": args.paths, "max_bytes": args.limits.max_bytes }),
        ),
    }
}

/// A fingerprint of local input files: every file's path and content hash, in a stable order.
/// `None` for inputs that live elsewhere (the web, Notion's API): those are never cached.
fn local_inputs(command: &ExtractCommand) -> Option<String> {
    let paths = match command {
        ExtractCommand::Notion(args) if !args.api => &args.paths,
        ExtractCommand::Files(args) => &args.paths,
        _ => return None,
    };
    let mut entries = Vec::new();
    for path in paths {
        // The same walk the readers make: no symlink loop, no FIFO read.
        for file in walk::walk(path, false).ok()?.files {
            let mut hasher = Sha256::new();
            std::io::copy(&mut walk::open_regular(&file).ok()?, &mut hasher).ok()?;
            entries.push(format!("{}:{}", file.display(), hex::encode(hasher.finalize())));
        }
    }
    entries.sort();
    Some(sha256_hex(entries.join("\n")))
}

/// The extract step inside `run`: with `use_cache`, local inputs whose files are unchanged since a
/// successful extract are skipped.
pub async fn stage(storage: &Storage, run: &Run<'_>, command: &ExtractCommand, use_cache: bool) -> Result<()> {
    let storage = storage.clone();
    let (name, settings) = settings(command);
    // Local files are named by their content; the outside world by the settings that reach it.
    let local = local_inputs(command);
    let input_hash = local.clone().unwrap_or_else(|| sha256_hex(settings.to_string()));
    if local.is_some() && run.cached(name, &settings, &input_hash, use_cache).await?.is_some() {
        return Ok(());
    }
    let result = run
        .step(name, &settings, &input_hash, async {
            let (report, failed_inputs, output_hash) = match command {
                ExtractCommand::Notion(args) if args.api => (notion_from_api(&storage, args).await?, vec![], None),
                ExtractCommand::Notion(args) => {
                    let (report, failed) = notion_from_export(&storage, args).await?;
                    (report, failed, None)
                }
                ExtractCommand::Crawl(args) => {
                    let (report, outcomes) = crawl(&storage, args).await?;
                    let hash = storage.artifacts.put(serde_json::to_vec(&outcomes)?).await?;
                    (report, vec![], Some(hash))
                }
                ExtractCommand::Files(args) => {
                    let (report, failed) = local_files(&storage, args).await?;
                    (report, failed, None)
                }
            };
            let mut detail = report.detail();
            detail["failed_inputs"] = json!(failed_inputs);
            Ok(StepOutput {
                value: (report, failed_inputs),
                hash: output_hash,
                detail,
            })
        })
        .await;
    match result {
        Ok((report, failed_inputs)) => {
            print_report(name, &report, &failed_inputs);
            if failed_inputs.is_empty() {
                Ok(())
            } else {
                Err(anyhow::anyhow!(
                    "{} input(s) could not be read (everything else was stored): {}",
                    failed_inputs.len(),
                    failed_inputs
                        .iter()
                        .map(|p| format!("{}: {}", p.item, p.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                ))
            }
        }
        Err(err) => Err(err),
    }
}

fn print_report(name: &str, report: &ExtractReport, failed_inputs: &[Problem]) {
    println!(
        "{name}: {} documents read: {} new, {} changed, {} unchanged{}",
        report.documents,
        report.inserted,
        report.updated,
        report.unchanged,
        if report.skipped > 0 {
            format!("; {} files skipped (not markdown, HTML or text)", report.skipped)
        } else {
            String::new()
        }
    );
    if !report.problems.is_empty() {
        println!("{} problem(s), the rest was stored:", report.problems.len());
        for problem in &report.problems {
            println!("  - {}: {}", problem.item, problem.reason);
        }
    }
    for problem in failed_inputs {
        println!("  ! {}: {}", problem.item, problem.reason);
    }
}

async fn notion_from_export(storage: &Storage, args: &NotionArgs) -> Result<(ExtractReport, Vec<Problem>)> {
    let mut writer = DocumentWriter::new(storage.documents.clone());
    let mut failed = Vec::new();
    for path in &args.paths {
        let read_path = path.clone();
        let max_bytes = args.limits.max_bytes;
        // Pages arrive one at a time from the reader's thread; the bounded channel holds it back
        // while the store is slower than the reading.
        let (pages, mut arriving) = tokio::sync::mpsc::channel(64);
        let reading = tokio::task::spawn_blocking(move || {
            notion_export::read(&read_path, max_bytes, &mut |document| {
                let _ = pages.blocking_send(document);
            })
        });
        let bar = progress::bar(0, "notion");
        bar.set_message(path.display().to_string());
        while let Some(document) = arriving.recv().await {
            writer.push(document).await?;
            bar.inc(1);
        }
        let export = match reading.await? {
            Ok(export) => export,
            Err(problem) => {
                tracing::error!(item = %problem.item, "{}", problem.reason);
                failed.push(problem);
                bar.finish_and_clear();
                continue;
            }
        };
        tracing::info!(
            pages = export.documents,
            attachments = export.attachments,
            problems = export.problems.len(),
            "notion export read"
        );
        for problem in export.problems {
            writer.problem(problem);
        }
        bar.finish_and_clear();
    }
    Ok((writer.finish().await?, failed))
}

async fn notion_from_api(storage: &Storage, args: &NotionArgs) -> Result<ExtractReport> {
    let token = args.token.as_deref().filter(|t| !t.is_empty()).context(
        "ENGRAM_NOTION_TOKEN is not set: create an internal integration at notion.so/my-integrations, \
         share the database with it, and put its secret in ENGRAM_NOTION_TOKEN",
    )?;
    let database = args.database.as_deref().context("--api needs --database <ID>")?;
    let client = NotionClient::new(&args.api_url, token, Duration::from_millis(args.api_interval_ms))?;
    let bar = progress::bar(0, "notion api");
    let (documents, problems) = notion_api::read_database(&client, database, &bar).await?;
    bar.finish_and_clear();
    let mut writer = DocumentWriter::new(storage.documents.clone());
    for problem in problems {
        writer.problem(problem);
    }
    for document in documents {
        writer.push(document).await?;
    }
    writer.finish().await
}

async fn local_files(storage: &Storage, args: &FilesArgs) -> Result<(ExtractReport, Vec<Problem>)> {
    let mut writer = DocumentWriter::new(storage.documents.clone());
    let mut failed = Vec::new();
    for path in &args.paths {
        let (paths, skipped, problems) = match files::list(path) {
            Ok(found) => found,
            Err(problem) => {
                tracing::error!(item = %problem.item, "{}", problem.reason);
                failed.push(problem);
                continue;
            }
        };
        writer.report.skipped += skipped;
        for problem in problems {
            writer.problem(problem);
        }
        let bar = progress::bar(paths.len() as u64, "files");
        for file in paths {
            bar.set_message(file.display().to_string());
            let max_bytes = args.limits.max_bytes;
            let read = tokio::task::spawn_blocking(move || files::read(&file, max_bytes)).await?;
            match read {
                Ok(document) => writer.push(document).await?,
                Err(problem) => writer.problem(problem),
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
    }
    Ok((writer.finish().await?, failed))
}

/// The web links recorded in stored documents' metadata (`links.web`).
async fn linked_urls(store: &Arc<dyn DocumentStore>) -> Result<BTreeSet<String>> {
    let mut urls = BTreeSet::new();
    let mut documents = store.stream(&DocumentFilter::default());
    while let Some(document) = documents.next().await {
        let document = document?;
        if let Some(links) = document.metadata["links"]["web"].as_array() {
            urls.extend(links.iter().filter_map(|l| l.as_str()).filter_map(normalise));
        }
    }
    Ok(urls)
}

fn read_urls_file(path: &PathBuf) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read --urls-file {}: give a text file with one URL per line",
            path.display()
        )
    })?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(str::to_string)
        .collect())
}

async fn crawl(
    storage: &Storage,
    args: &CrawlArgs,
) -> Result<(ExtractReport, Vec<crate::steps::extract::crawl::CrawlOutcome>)> {
    if args.concurrency == 0 {
        anyhow::bail!("--concurrency must be at least 1");
    }
    if !(args.timeout_secs > 0.0 && args.timeout_secs.is_finite()) {
        anyhow::bail!("--timeout-secs must be a positive number of seconds");
    }
    let mut urls: BTreeSet<String> = BTreeSet::new();
    let mut given: Vec<String> = args.urls.clone();
    if let Some(file) = &args.urls_file {
        given.extend(read_urls_file(file)?);
    }
    let mut writer = DocumentWriter::new(storage.documents.clone());
    for url in &given {
        match normalise(url) {
            Some(url) => {
                urls.insert(url);
            }
            None => writer.problem(Problem::new(url, "not a URL: give an absolute http(s) URL")),
        }
    }
    if given.is_empty() || args.from_documents {
        urls.extend(linked_urls(&storage.documents).await?);
    }
    if urls.is_empty() {
        println!("nothing to crawl: no URL given and no stored document links to the web");
    }
    let crawler = Crawler::new(CrawlOptions {
        host_delay: Duration::from_millis(args.host_delay_ms),
        timeout: Duration::from_secs_f64(args.timeout_secs),
        retries: args.retries,
        user_agent: args.user_agent.clone(),
        max_bytes: args.limits.max_bytes,
        proxy: args.proxy.clone(),
        egress: Egress {
            allow_private: args.allow_private_hosts,
            exempt: Vec::new(),
        },
    })?;
    let bar = progress::bar(urls.len() as u64, "crawl");
    let mut fetches = futures::stream::iter(urls)
        .map(|url| {
            let crawler = &crawler;
            async move { crawler.fetch(&url).await }
        })
        .buffer_unordered(args.concurrency);
    let mut outcomes = Vec::new();
    while let Some((outcome, document)) = fetches.next().await {
        bar.set_message(outcome.url.clone());
        bar.inc(1);
        if let Some(document) = document {
            writer.push(document).await?;
        } else if let Some(reason) = &outcome.reason {
            writer.problem(Problem::new(&outcome.url, reason.clone()));
        }
        outcomes.push(outcome);
    }
    bar.finish_and_clear();
    outcomes.sort_by(|a, b| a.url.cmp(&b.url));
    Ok((writer.finish().await?, outcomes))
}
