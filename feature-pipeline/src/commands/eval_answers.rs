//! `feature-pipeline eval answers`: each model answers a question set through the service's path
//! (`engram_shared::answers`: standalone question, retrieval, abstention, prompt), greedily or
//! extractively (`--answer`, the service's ENGRAM_ANSWER_MODE), and
//! the answers are judged (`steps/answer_eval.rs`). Retrieval runs once per question and is shared
//! by every model. The closeness of each question's closest chunk is printed too: it is what the
//! abstention threshold (ENGRAM_MIN_RELEVANCE) is calibrated on.

use anyhow::{Context, Result};
use engram_shared::answers::closeness::Closeness;
use engram_shared::answers::{self, AnswerMode, abstain, citations, extract, names, prompt};
use engram_shared::config::StorageConfig;
use engram_shared::embedding::Embedder;
use engram_shared::generation::{ChatMessage, Flow, GenerationParams, Generator, GeneratorOptions, Role};
use engram_shared::storage::Storage;
use engram_shared::vectors::ChunkFilter;
use engram_shared::vectors::hybrid::Scored;
use serde_json::json;

use crate::commands::eval::live_index;
use crate::commands::eval_model::{candidate, default_models};
use crate::commands::index::load_embedder;
use crate::config::EvalAnswersArgs;
use crate::steps::answer_eval::{
    AnswerMetrics, AnswerQuestion, GivenSource, Judged, answer_metrics, judge, parse_answer_questions,
};

/// One model's answer to one question.
#[derive(Debug, Clone, serde::Serialize)]
struct Answered {
    answer: String,
    /// In extract mode, how much the question raised the chosen reply's log-probability per token
    /// (`extract::Extracted::score`).
    score: Option<f32>,
    /// In extract mode, the same for the abstention.
    abstention_score: Option<f32>,
    /// In extract mode, the best-scored replies, best first, with each one's cosine to the
    /// question (`extract::Extracted::closeness`).
    ranked: Vec<(String, f32, f32)>,
    sources: Vec<GivenSource>,
    judged: Judged,
}

/// Runs `eval answers`.
pub async fn run(config: &StorageConfig, args: &EvalAnswersArgs) -> Result<()> {
    let text = std::fs::read_to_string(&args.questions)
        .with_context(|| format!("cannot read the question file {}", args.questions.display()))?;
    let questions = parse_answer_questions(&text).with_context(|| format!("in {}", args.questions.display()))?;
    anyhow::ensure!((1..=50).contains(&args.top_k), "--top-k is between 1 and 50");
    anyhow::ensure!(
        (-1.0..=1.0).contains(&args.min_relevance),
        "--min-relevance is a cosine similarity, between -1 and 1"
    );
    anyhow::ensure!(
        (-1.0..=1.0).contains(&args.min_sentence_relevance),
        "--min-sentence-relevance is a cosine similarity, between -1 and 1"
    );
    anyhow::ensure!(
        args.sentence_weight.is_finite() && args.sentence_weight >= 0.0,
        "--sentence-weight is a weight, 0 or more"
    );
    let storage = Storage::open(config).await?;
    let embedder = load_embedder(&args.embedding.embedding_model)?;
    let version = live_index(&storage, &embedder).await?;
    let mut retrieved = Vec::with_capacity(questions.len());
    for question in &questions {
        let found = answers::retrieve(
            storage.vectors.as_ref(),
            &embedder,
            version,
            &question.question,
            args.top_k,
            ChunkFilter::default(),
        )
        .await?;
        retrieved.push(found);
    }

    let specs = if args.models.is_empty() {
        default_models(&storage).await?
    } else {
        args.models.clone()
    };
    let mut results = Vec::new();
    for spec in &specs {
        let model = candidate(&storage, config.home(), spec).await?;
        let (path, label) = (model.path.clone(), model.label.clone());
        let (asked, found, args_copy) = (questions.clone(), retrieved.clone(), args.clone());
        let embedder = embedder.clone();
        let bar = crate::progress::bar(questions.len() as u64, "answers");
        bar.set_message(label.clone());
        let answered = tokio::task::spawn_blocking(move || -> Result<Vec<Answered>> {
            let generator = Generator::load(&path, GeneratorOptions::default())
                .with_context(|| format!("cannot load {label} from {}", path.display()))?;
            let mut answered = Vec::with_capacity(asked.len());
            for (question, found) in asked.iter().zip(&found) {
                answered.push(answer(&generator, &embedder, question, found, &args_copy)?);
                bar.inc(1);
            }
            bar.finish_and_clear();
            Ok(answered)
        })
        .await??;
        let judged: Vec<Judged> = answered.iter().map(|a| a.judged.clone()).collect();
        let metrics = answer_metrics(&questions, &judged);
        if let Some(version) = model.version {
            let stored = json!({
                "answers_questions": args.questions.display().to_string(),
                "answers_correct": metrics.correct,
                "answers_retrieval_hit": metrics.retrieval_hit,
                "answers_citation_correct": metrics.citation_correct,
                "answers_abstention": metrics.abstention,
                "answers_false_abstention": metrics.false_abstention,
                "answers_min_relevance": args.min_relevance,
                "answers_mode": match args.answer {
                    AnswerMode::Generate => args.answer.to_string(),
                    AnswerMode::Extract => format!("extract ({})", args.extract_scoring),
                },
            });
            storage.registry.add_model_metrics(version, &stored).await?;
        }
        results.push((model.label, metrics, answered));
    }

    if args.json {
        let report = json!({
            "index_version": version,
            "min_relevance": args.min_relevance,
            "answer": args.answer.to_string(),
            "extract_scoring": args.extract_scoring.to_string(),
            "models": results.iter().map(|(label, metrics, answered)| json!({
                "model": label,
                "metrics": metrics,
                "questions": questions.iter().zip(answered).zip(&retrieved).map(|((q, a), found)| json!({
                    "question": q.question,
                    "expected": q.expected,
                    "facts": q.facts,
                    "closest": found.closest,
                    "answer": a.answer,
                    "score": a.score,
                    "abstention_score": a.abstention_score,
                    "ranked": a.ranked,
                    "sources": a.sources,
                    "judged": a.judged,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    print_closeness(&questions, &retrieved, args.min_relevance);
    print_table(
        version,
        &results.iter().map(|(l, m, _)| (l.clone(), *m)).collect::<Vec<_>>(),
    );
    Ok(())
}

/// One answer as the service would give it: generated greedily, or extracted.
fn answer(
    generator: &Generator,
    embedder: &Embedder,
    question: &AnswerQuestion,
    found: &Scored,
    args: &EvalAnswersArgs,
) -> Result<Answered> {
    let given = |used: usize, text: &str| -> Vec<GivenSource> {
        let cited = citations::cited(text, used);
        found
            .hits
            .iter()
            .take(used)
            .enumerate()
            .map(|(i, hit)| GivenSource {
                title: hit.chunk.title.clone(),
                url: hit.chunk.url.clone(),
                cited: cited.contains(&(i + 1)),
            })
            .collect()
    };
    // As the service: too far from the notes, or naming what none of the sources states.
    let declined = if abstain::should_abstain(found.closest, args.min_relevance) {
        Some(abstain::ABSTENTION.to_string())
    } else if args.names_must_match {
        names::stated_nowhere(&question.question, &found.hits).map(|name| abstain::unstated(&name))
    } else {
        None
    };
    if let Some(declined) = declined {
        let sources = given(0, "");
        return Ok(Answered {
            judged: judge(question, &declined, &sources, true),
            answer: declined,
            score: None,
            abstention_score: None,
            ranked: Vec::new(),
            sources,
        });
    }
    let conversation = [ChatMessage::new(Role::User, question.question.clone())];
    let fitted = prompt::fit(generator, &conversation, &found.hits, args.max_tokens, usize::MAX)?;
    let (text, score, abstention_score, ranked) = match args.answer {
        AnswerMode::Generate => {
            let params = GenerationParams {
                max_tokens: args.max_tokens,
                temperature: 0.0,
                repetition_penalty: 1.1, // as the service
                ..GenerationParams::default()
            };
            let completion = generator.generate(&fitted.messages, &params, |_| Flow::Continue)?;
            (completion.text.trim().to_string(), None, None, Vec::new())
        }
        AnswerMode::Extract => {
            let candidates = extract::candidates(&found.hits, fitted.sources);
            let closeness = Closeness {
                weight: args.sentence_weight,
                min: args.min_sentence_relevance,
                names: args.names_must_match,
            };
            let chosen = extract::choose(
                generator,
                embedder,
                &fitted.messages,
                &candidates,
                args.extract_scoring,
                closeness,
            )?;
            let ranked = chosen
                .ranked
                .iter()
                .map(|&(i, score)| (candidates[i].reply.clone(), score, chosen.closeness[i]))
                .collect();
            (chosen.text, Some(chosen.score), Some(chosen.abstention_score), ranked)
        }
    };
    let sources = given(fitted.sources, &text);
    let abstained = abstain::is_abstention(&text);
    Ok(Answered {
        judged: judge(question, &text, &sources, abstained),
        answer: text,
        score,
        abstention_score,
        ranked,
        sources,
    })
}

/// The closest chunk's similarity for answerable and unanswerable questions: where the threshold
/// sits between them.
fn print_closeness(questions: &[AnswerQuestion], retrieved: &[Scored], min_relevance: f32) {
    let closeness = |answerable: bool| -> Vec<f32> {
        let mut values: Vec<f32> = questions
            .iter()
            .zip(retrieved)
            .filter(|(q, _)| q.expected.is_some() == answerable)
            .map(|(_, found)| found.closest.unwrap_or(-1.0))
            .collect();
        values.sort_by(f32::total_cmp);
        values
    };
    for (name, values) in [("answerable", closeness(true)), ("unanswerable", closeness(false))] {
        if values.is_empty() {
            continue;
        }
        let below = values.iter().filter(|v| **v < min_relevance).count();
        println!(
            "closest chunk, {name} ({}): min {:.3}  median {:.3}  max {:.3}; {below} below --min-relevance {min_relevance}",
            values.len(),
            values[0],
            values[values.len() / 2],
            values[values.len() - 1],
        );
    }
}

fn print_table(version: u64, results: &[(String, AnswerMetrics)]) {
    if let Some((_, first)) = results.first() {
        println!(
            "index v{version}: {} answerable, {} unanswerable questions",
            first.answerable, first.unanswerable
        );
    }
    println!(
        "{:<40} {:>9} {:>8} {:>9} {:>9} {:>10}",
        "model", "retrieval", "correct", "citation", "abstains", "false abst"
    );
    for (label, m) in results {
        println!(
            "{:<40} {:>9.3} {:>8.3} {:>9.3} {:>9.3} {:>10.3}",
            label, m.retrieval_hit, m.correct, m.citation_correct, m.abstention, m.false_abstention
        );
    }
}
