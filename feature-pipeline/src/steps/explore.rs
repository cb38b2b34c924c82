//! The explore step: what the corpus looks like before anything is filtered or learned from it.
//!
//! Input: every stored document, and the latest crawl report. Output: an [`Exploration`] (counts
//! per source, content-length and quality distributions, top domains, languages, failed crawls),
//! which `report.rs` draws as an HTML report with PNG charts and the command prints as a summary.

use std::collections::{BTreeMap, HashMap};

use engram_shared::artifacts::ArtifactStore;
use engram_shared::documents::{DocumentFilter, DocumentStore};
use engram_shared::registry::Registry;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::Serialize;

use super::extract::crawl::CrawlOutcome;
use super::extract::markdown::word_count;
use super::score;

/// The registry step whose output is the crawl report.
pub const CRAWL_STEP: &str = "extract-crawl";

/// Upper bounds of the content-length histogram's bins, in words (the last bin is open).
pub const LENGTH_BINS: &[usize] = &[10, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

/// What the corpus looks like.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Exploration {
    /// Documents stored.
    pub total: u64,
    /// Documents per source.
    pub by_source: BTreeMap<String, u64>,
    /// Words per document.
    pub words: Vec<usize>,
    /// Quality score per scored document.
    pub quality: Vec<f64>,
    /// Documents without a score.
    pub unscored: u64,
    /// Scorers seen, with counts (`heuristic v1`, …).
    pub scorers: BTreeMap<String, u64>,
    /// Documents another scorer (the judge) scored, with the heuristic's score beside it.
    pub judged: Vec<JudgedDocument>,
    /// Web domains of crawled pages, most documents first.
    pub top_domains: Vec<(String, u64)>,
    /// Detected languages, most documents first.
    pub languages: Vec<(String, u64)>,
    /// Failed URLs of the latest crawl.
    pub failed_crawls: Vec<CrawlOutcome>,
    /// URLs the latest crawl fetched successfully.
    pub crawled_ok: u64,
    /// The run whose crawl report this is.
    pub crawl_run: Option<String>,
}

/// A document scored by the judge, beside what the heuristic says.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JudgedDocument {
    /// Its title.
    pub title: String,
    /// The heuristic's score.
    pub heuristic: f64,
    /// The stored (judge's) score.
    pub score: f64,
    /// Who scored it: `llm-judge v…`.
    pub scorer: String,
    /// The judge's reason.
    pub reason: String,
}

/// Summary numbers of a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Smallest.
    pub min: f64,
    /// 10th percentile.
    pub p10: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// Largest.
    pub max: f64,
}

/// Percentiles of `values` (nearest rank), or `None` when empty.
pub fn percentiles(values: &[f64]) -> Option<Percentiles> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let at = |p: f64| sorted[((p * (sorted.len() - 1) as f64).round() as usize).min(sorted.len() - 1)];
    Some(Percentiles {
        min: sorted[0],
        p10: at(0.1),
        p50: at(0.5),
        p90: at(0.9),
        max: sorted[sorted.len() - 1],
    })
}

impl Exploration {
    /// Counts of documents per content-length bin (`LENGTH_BINS`, plus the open last bin).
    pub fn length_histogram(&self) -> Vec<u64> {
        let mut counts = vec![0u64; LENGTH_BINS.len() + 1];
        for &words in &self.words {
            let bin = LENGTH_BINS
                .iter()
                .position(|&upper| words < upper)
                .unwrap_or(LENGTH_BINS.len());
            counts[bin] += 1;
        }
        counts
    }

    /// Counts of scored documents per tenth of the quality scale.
    pub fn quality_histogram(&self) -> Vec<u64> {
        let mut counts = vec![0u64; 10];
        for &q in &self.quality {
            counts[((q * 10.0).floor() as usize).min(9)] += 1;
        }
        counts
    }

    /// Labels of the length bins.
    pub fn length_labels() -> Vec<String> {
        let mut labels = Vec::new();
        let mut lower = 0;
        for &upper in LENGTH_BINS {
            labels.push(format!("{lower}-{}", upper - 1));
            lower = upper;
        }
        labels.push(format!("{lower}+"));
        labels
    }

    /// Summary numbers as JSON, for the registry and `--json`.
    pub fn summary(&self) -> serde_json::Value {
        let words: Vec<f64> = self.words.iter().map(|&w| w as f64).collect();
        serde_json::json!({
            "documents": self.total,
            "by_source": self.by_source,
            "words": percentiles(&words),
            "quality": percentiles(&self.quality),
            "unscored": self.unscored,
            "scorers": self.scorers,
            "judged": self.judged.len(),
            "top_domains": self.top_domains.iter().take(10).collect::<Vec<_>>(),
            "languages": self.languages.iter().take(10).collect::<Vec<_>>(),
            "crawl": {
                "run": self.crawl_run,
                "ok": self.crawled_ok,
                "failed": self.failed_crawls.len(),
            },
        })
    }
}

fn ranked(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut ranked: Vec<_> = counts.into_iter().collect();
    ranked.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    ranked
}

/// Reads the corpus and the latest crawl report.
pub async fn run(
    store: &dyn DocumentStore,
    registry: &Registry,
    artifacts: &ArtifactStore,
    progress: &ProgressBar,
) -> anyhow::Result<Exploration> {
    let mut exploration = Exploration::default();
    let mut domains: HashMap<String, u64> = HashMap::new();
    let mut languages: HashMap<String, u64> = HashMap::new();
    let mut documents = store.stream(&DocumentFilter::default());
    while let Some(document) = documents.next().await {
        let document = document?;
        progress.inc(1);
        exploration.total += 1;
        *exploration.by_source.entry(document.source.to_string()).or_default() += 1;
        let signals = score::score(&document.title, &document.content);
        exploration.words.push(word_count(&document.content));
        match &document.quality {
            Some(q) => {
                exploration.quality.push(q.score);
                if q.scorer != score::SCORER {
                    exploration.judged.push(JudgedDocument {
                        title: document.title.clone(),
                        heuristic: signals.score,
                        score: q.score,
                        scorer: format!("{} v{}", q.scorer, q.version),
                        reason: q.reason.clone().unwrap_or_default(),
                    });
                }
                *exploration
                    .scorers
                    .entry(format!("{} v{}", q.scorer, q.version))
                    .or_default() += 1;
            }
            None => exploration.unscored += 1,
        }
        *languages
            .entry(signals.language.unwrap_or_else(|| "unknown".into()))
            .or_default() += 1;
        if let Ok(url) = url::Url::parse(&document.url)
            && matches!(url.scheme(), "http" | "https")
            && document.source.as_str() == "crawl"
            && let Some(host) = url.host_str()
        {
            *domains.entry(host.to_string()).or_default() += 1;
        }
    }
    exploration.top_domains = ranked(domains);
    exploration.languages = ranked(languages);

    if let Some(step) = registry.latest_step(CRAWL_STEP).await?
        && let Some(hash) = &step.output_hash
    {
        let bytes = artifacts.get(hash).await?;
        let outcomes: Vec<CrawlOutcome> = serde_json::from_slice(&bytes)?;
        exploration.crawled_ok = outcomes.iter().filter(|o| o.ok).count() as u64;
        exploration.failed_crawls = outcomes.into_iter().filter(|o| !o.ok).collect();
        exploration.crawl_run = Some(step.run_id);
    }
    Ok(exploration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_bin_every_document() {
        let exploration = Exploration {
            words: vec![0, 9, 10, 150, 20000],
            quality: vec![0.0, 0.45, 0.99, 1.0],
            ..Default::default()
        };
        assert_eq!(exploration.length_histogram(), vec![2, 1, 0, 1, 0, 0, 0, 0, 0, 1]);
        assert_eq!(exploration.quality_histogram(), vec![1, 0, 0, 0, 1, 0, 0, 0, 0, 2]);
        assert_eq!(Exploration::length_labels().len(), LENGTH_BINS.len() + 1);
        let p = percentiles(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((p.min, p.p50, p.max), (1.0, 2.0, 3.0));
    }
}
