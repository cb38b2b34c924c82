//! `feature-pipeline eval retrieval`: hit@k and MRR of the live index over a question set (and the
//! dispatch of `eval`'s other commands).

use anyhow::{Context, Result};
use engram_shared::config::StorageConfig;
use engram_shared::embedding::Embedder;
use engram_shared::storage::Storage;
use engram_shared::vectors::hybrid::{self, Fusion, HybridQuery};
use engram_shared::vectors::manifest::IndexManifest;
use engram_shared::vectors::{ChunkFilter, SearchHit};
use serde_json::json;

use crate::commands::index::load_embedder;
use crate::config::{EvalCommand, EvalRetrievalArgs, RetrievalMode};
use crate::steps::eval::{metrics, parse_questions, rank};

/// Chunks retrieved per question; enough to find five distinct documents.
const CHUNKS: usize = 25;

/// Runs `eval`.
pub async fn run(config: &StorageConfig, command: &EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Retrieval(args) => retrieval(config, args).await,
        EvalCommand::Model(args) => super::eval_model::run(config, args).await,
        EvalCommand::Answers(args) => super::eval_answers::run(config, args).await,
    }
}

/// The distinct documents of `hits`, in rank order, as (title, url).
fn documents(hits: &[SearchHit]) -> Vec<(String, String)> {
    let mut seen = std::collections::HashSet::new();
    hits.iter()
        .filter(|hit| seen.insert(hit.chunk.doc_id.clone()))
        .map(|hit| (hit.chunk.title.clone(), hit.chunk.url.clone()))
        .take(5)
        .collect()
}

/// The live index version, checked to have been built with `embedder`.
pub(crate) async fn live_index(storage: &Storage, embedder: &Embedder) -> Result<u64> {
    let version = storage
        .vectors
        .alias()
        .await?
        .context("no live index: run `feature-pipeline index` first")?;
    let registered = storage
        .registry
        .index_version(version as i64)
        .await?
        .with_context(|| format!("index version {version} is live but not in the registry"))?;
    let manifest: IndexManifest = serde_json::from_value(registered.spec.manifest.clone())
        .with_context(|| format!("the manifest of index version {version} is not readable"))?;
    manifest.check_embedder(embedder.model_id(), embedder.dimension(), version as i64)?;
    Ok(version)
}

async fn retrieval(config: &StorageConfig, args: &EvalRetrievalArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| format!("cannot read the question file {}", args.questions.display()))?;
    let questions = parse_questions(&text).with_context(|| format!("in {}", args.questions.display()))?;
    let storage = Storage::open(config).await?;
    let embedder = load_embedder(&args.embedding.embedding_model)?;
    let version = live_index(&storage, &embedder).await?;

    let texts: Vec<&str> = questions.iter().map(|q| q.question.as_str()).collect();
    let model = embedder.clone();
    let owned: Vec<String> = texts.iter().map(|t| t.to_string()).collect();
    let embeddings = tokio::task::spawn_blocking(move || model.embed(&owned)).await??;
    let fusion = match args.mode {
        RetrievalMode::Hybrid => Fusion {
            k: args.rrf_k,
            dense_weight: args.dense_weight,
            sparse_weight: args.sparse_weight,
            ..Fusion::default()
        },
        RetrievalMode::Dense => Fusion {
            sparse_weight: 0.0,
            ..Fusion::default()
        },
        RetrievalMode::Sparse => Fusion {
            dense_weight: 0.0,
            ..Fusion::default()
        },
    };
    let mut ranks = Vec::new();
    let mut rows = Vec::new();
    for (question, dense) in questions.iter().zip(embeddings.vectors) {
        let query = HybridQuery::new(&question.question, dense, CHUNKS, ChunkFilter::default());
        let hits = hybrid::search(storage.vectors.as_ref(), version, &query, &fusion).await?;
        let found = documents(&hits);
        let position = rank(&question.expected, &found);
        ranks.push(position);
        rows.push(json!({
            "question": question.question,
            "expected": question.expected,
            "rank": position,
            "top": found.first().map(|(title, _)| title),
        }));
    }
    let metrics = metrics(&ranks);
    if args.json {
        let report =
            json!({ "version": version, "mode": args.mode, "fusion": fusion, "metrics": metrics, "questions": rows });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for row in &rows {
        let mark = match row["rank"].as_u64() {
            Some(1) => "  1".to_string(),
            Some(r) => format!("{r:>3}"),
            None => "  -".to_string(),
        };
        println!(
            "{mark}  {}  (expected {})",
            row["question"].as_str().unwrap_or(""),
            row["expected"].as_str().unwrap_or("")
        );
    }
    println!(
        "index v{version}, {:?} retrieval, {} questions: hit@1 {:.3}  hit@3 {:.3}  hit@5 {:.3}  MRR {:.3}",
        args.mode, metrics.questions, metrics.hit_at_1, metrics.hit_at_3, metrics.hit_at_5, metrics.mrr
    );
    Ok(())
}
