//! The distil step: several summaries per document from the teacher, at temperatures spread over a
//! range, from a versioned prompt kept in the repository (`feature-pipeline/prompts/`).
//!
//! Input: the documents of the latest document set. Output: one [`Sample`] per (document, summary
//! number), in a stable order. Each sample's seed and temperature follow from its document and
//! number, so the same document set and settings ask the teacher the same questions; with the
//! teacher's response cache this makes a rerun free and a resumed run ask only what is missing.

use std::collections::HashSet;
use std::sync::Arc;

use engram_shared::documents::{Document, DocumentFilter, DocumentStore};
use engram_shared::generation::{ChatMessage, Role};
use engram_shared::hashing::sha256_hex;
use futures::StreamExt;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::filter::DocumentSet;
use crate::teacher::{CachedTeacher, TeacherRequest};

/// The step's name in the registry.
pub const STEP: &str = "distil";

/// The prompt template the dataset is distilled with.
#[derive(Debug, Clone, Serialize)]
pub struct Prompt {
    /// Its version name (the file's stem), e.g. `summarize-v1`.
    pub version: String,
    /// sha256 of the file.
    pub hash: String,
    /// The system message.
    pub system: String,
    /// The user message, with `{{budget}}`, `{{title}}` and `{{content}}` placeholders.
    pub user: String,
}

impl Prompt {
    /// The prompt shipped with this build.
    pub fn builtin() -> Self {
        Self::parse("summarize-v1", include_str!("../../prompts/summarize-v1.md"))
            .expect("the built-in prompt has a system and a user part")
    }

    /// Reads a template: a comment, `=== system`, the system message, `=== user`, the user message.
    pub fn parse(version: &str, text: &str) -> anyhow::Result<Self> {
        let (system, user) = prompt_parts(version, text, &["{{budget}}", "{{title}}", "{{content}}"])?;
        Ok(Self {
            version: version.to_string(),
            hash: sha256_hex(text),
            system,
            user,
        })
    }

    /// The user message for one document: what the dataset calls the instruction.
    pub fn instruction(&self, title: &str, content: &str, budget: usize) -> String {
        self.user
            .replace("{{budget}}", &budget.to_string())
            .replace("{{title}}", title)
            .replace("{{content}}", content)
    }
}

/// The system and user messages of a prompt file (`prompts/*.md`): a comment, `=== system`, the
/// system message, `=== user`, the user message, which must hold every one of `placeholders`.
pub fn prompt_parts(version: &str, text: &str, placeholders: &[&str]) -> anyhow::Result<(String, String)> {
    let (_, rest) = text.split_once("=== system\n").ok_or_else(|| {
        anyhow::anyhow!("prompt {version}: no `=== system` line; see feature-pipeline/prompts/summarize-v1.md")
    })?;
    let (system, user) = rest
        .split_once("=== user\n")
        .ok_or_else(|| anyhow::anyhow!("prompt {version}: no `=== user` line after the system message"))?;
    for placeholder in placeholders {
        anyhow::ensure!(
            user.contains(placeholder),
            "prompt {version}: the user message lacks {placeholder}"
        );
    }
    Ok((system.trim().to_string(), user.trim().to_string()))
}

/// How to distil.
#[derive(Debug, Clone, Serialize)]
pub struct DistilSettings {
    /// Summaries per document.
    pub summaries: usize,
    /// Lowest temperature.
    pub temperature_min: f64,
    /// Highest temperature.
    pub temperature_max: f64,
    /// Character budget the prompt asks for (the quality step enforces it).
    pub budget_chars: usize,
    /// Most tokens the teacher may generate per summary.
    pub max_tokens: usize,
    /// Document text beyond this many characters is cut before it is sent.
    pub max_document_chars: usize,
    /// Documents in flight at once.
    pub concurrency: usize,
    /// Seed of every sample's seed.
    pub seed: u64,
}

impl DistilSettings {
    /// The temperature of summary `k` (0-based): evenly spread from min to max.
    pub fn temperature(&self, k: usize) -> f64 {
        spread(self.temperature_min, self.temperature_max, self.summaries, k)
    }
}

/// Sample `k` (0-based) of `n` at temperatures spread evenly from `min` to `max`, rounded to 0.001.
pub fn spread(min: f64, max: f64, n: usize, k: usize) -> f64 {
    if n <= 1 {
        return min;
    }
    let step = (max - min) / (n - 1) as f64;
    ((min + step * k as f64) * 1000.0).round() / 1000.0
}

/// One distilled summary: a dataset row before quality control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// The document's id.
    pub doc_id: String,
    /// Its title.
    pub title: String,
    /// Its source (`notion`, `crawl`, `file`).
    pub source: String,
    /// Its url.
    pub url: String,
    /// Which summary of the document (0-based).
    pub sample: usize,
    /// The temperature it was sampled at.
    pub temperature: f64,
    /// What the student is asked: the prompt's user message for this document.
    pub instruction: String,
    /// The teacher's summary.
    pub answer: String,
    /// The document text the summary was made from (after the character cut), for quality checks.
    #[serde(skip_serializing_if = "String::is_empty", default)]
    pub source_text: String,
}

/// Cuts `content` to at most `max` characters, at a line or word boundary when one is near.
pub fn cut(content: &str, max: usize) -> &str {
    if content.chars().count() <= max {
        return content;
    }
    let end = content.char_indices().nth(max).map_or(content.len(), |(i, _)| i);
    let head = &content[..end];
    let at = head
        .rfind('\n')
        .filter(|&i| i > end / 2)
        .or_else(|| head.rfind(' ').filter(|&i| i > end / 2));
    head[..at.unwrap_or(end)].trim_end()
}

fn sample_seed(seed: u64, doc_id: &str, k: usize) -> u64 {
    derived_seed(&format!("{seed}:{doc_id}:{k}"))
}

/// A stable 60-bit number from `key` (the first 15 hex digits of its sha256): the seed of one
/// teacher sample, or a seeded draw.
pub fn derived_seed(key: &str) -> u64 {
    let digest = sha256_hex(key);
    u64::from_str_radix(&digest[..15], 16).unwrap_or(0)
}

async fn distil_document(
    teacher: &CachedTeacher,
    prompt: &Prompt,
    settings: &DistilSettings,
    document: Document,
) -> anyhow::Result<Vec<Sample>> {
    let content = cut(&document.content, settings.max_document_chars).to_string();
    let instruction = prompt.instruction(&document.title, &content, settings.budget_chars);
    let messages = vec![
        ChatMessage::new(Role::System, prompt.system.clone()),
        ChatMessage::new(Role::User, instruction.clone()),
    ];
    let mut samples = Vec::with_capacity(settings.summaries);
    for k in 0..settings.summaries {
        let request = TeacherRequest {
            messages: messages.clone(),
            temperature: settings.temperature(k),
            max_tokens: settings.max_tokens,
            seed: sample_seed(settings.seed, &document.id, k),
        };
        let reply = teacher
            .ask(&request)
            .await
            .map_err(|e| anyhow::anyhow!("document {:?} ({}), summary {k}: {e}", document.title, document.id))?;
        samples.push(Sample {
            doc_id: document.id.clone(),
            title: document.title.clone(),
            source: document.source.as_str().to_string(),
            url: document.url.clone(),
            sample: k,
            temperature: request.temperature,
            instruction: instruction.clone(),
            answer: reply.text.trim().to_string(),
            source_text: content.clone(),
        });
    }
    Ok(samples)
}

/// Distils every document of `set`; samples come back sorted by document id and number.
pub async fn run(
    documents: &dyn DocumentStore,
    teacher: Arc<CachedTeacher>,
    prompt: &Prompt,
    settings: &DistilSettings,
    set: &DocumentSet,
    progress: &ProgressBar,
) -> anyhow::Result<Vec<Sample>> {
    let wanted: HashSet<&str> = set.ids.iter().map(String::as_str).collect();
    let mut selected = Vec::new();
    let mut stream = documents.stream(&DocumentFilter::default());
    while let Some(document) = stream.next().await {
        let document = document?;
        if wanted.contains(document.id.as_str()) {
            selected.push(document);
        }
    }
    drop(stream);
    progress.set_length(selected.len() as u64);
    let mut results = futures::stream::iter(selected.into_iter().map(|document| {
        let teacher = teacher.clone();
        async move { distil_document(&teacher, prompt, settings, document).await }
    }))
    .buffer_unordered(settings.concurrency.max(1));
    let mut samples = Vec::new();
    while let Some(result) = results.next().await {
        samples.extend(result?);
        progress.inc(1);
    }
    samples.sort_by(|a, b| (a.doc_id.as_str(), a.sample).cmp(&(b.doc_id.as_str(), b.sample)));
    Ok(samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_prompt_renders_every_placeholder() {
        let prompt = Prompt::builtin();
        let text = prompt.instruction("Trip to Sintra", "We took the train.", 600);
        assert!(text.contains("at most 600 characters") && text.contains("# Trip to Sintra"));
        assert!(text.contains("We took the train.") && !text.contains("{{"));
        assert!(!prompt.system.is_empty() && !prompt.system.contains("==="));
        assert!(Prompt::parse("bad", "=== system\nx\n=== user\nno placeholders").is_err());
    }

    #[test]
    fn temperatures_spread_evenly_and_seeds_are_stable() {
        let settings = DistilSettings {
            summaries: 4,
            temperature_min: 0.3,
            temperature_max: 1.2,
            budget_chars: 600,
            max_tokens: 256,
            max_document_chars: 4000,
            concurrency: 1,
            seed: 7,
        };
        let t: Vec<f64> = (0..4).map(|k| settings.temperature(k)).collect();
        assert_eq!(t, vec![0.3, 0.6, 0.9, 1.2]);
        assert_eq!(sample_seed(7, "doc", 1), sample_seed(7, "doc", 1));
        assert_ne!(sample_seed(7, "doc", 1), sample_seed(7, "doc", 2));
    }

    #[test]
    fn cutting_keeps_whole_lines_or_words() {
        assert_eq!(cut("short", 100), "short");
        let text = "first line here\nsecond line that is long";
        assert_eq!(cut(text, 20), "first line here");
        assert_eq!(cut("ééééé", 3).chars().count(), 3);
    }
}
