//! The heuristic quality score: a fast, explainable guess at whether a document is worth learning
//! from, computed for every document as it is extracted.
//!
//! Input: a document's title and markdown. Output: a score from 0 (junk) to 1 (good prose) and the
//! signals behind it, so `explore` can chart them and `filter` can say why it dropped something.
//! Signals, each a multiplicative penalty on a length-based base score:
//! - length: too few words says little; the base ramps from 0 at 20 words to 1 at 150;
//! - link density: the share of text that sits inside links (link lists, navigation);
//! - boilerplate: cookie, subscribe, sign-in and copyright phrases per hundred words;
//! - error page: a title or opening that says 404, access denied, enable JavaScript…;
//! - repetition: the share of repeated lines and of repeated word trigrams;
//! - language: whether any language is detected with confidence (gibberish and encodings gone
//!   wrong are not). Any language is fine; the corpus is the user's own.
//!
//! An LLM judge for the uncertain band arrives with the teacher (dataset stage); scores carry the
//! scorer's name and version so the two are never confused.

use std::collections::HashMap;

use engram_shared::documents::QualityScore;
use pulldown_cmark::{Event, Parser, Tag, TagEnd};
use serde::Serialize;

use super::extract::markdown::word_count;

/// The scorer's name, stored with every score.
pub const SCORER: &str = "heuristic";
/// The scorer's version: bump it when the formula changes, so `score` knows what to recompute.
pub const VERSION: &str = "1";

/// The signals behind one score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Signals {
    /// Words in the content.
    pub words: usize,
    /// Share of text characters inside links, 0 to 1.
    pub link_density: f64,
    /// Boilerplate phrases per hundred words.
    pub boilerplate_per_100_words: f64,
    /// Whether the page looks like an error page.
    pub error_page: bool,
    /// Share of non-empty lines that repeat an earlier line.
    pub repeated_lines: f64,
    /// Share of word trigrams that repeat an earlier one.
    pub repeated_trigrams: f64,
    /// The detected language (ISO 639-3), if detection was reliable.
    pub language: Option<String>,
    /// The final score, 0 to 1.
    pub score: f64,
}

impl Signals {
    /// The score in the form the document store keeps.
    pub fn quality(&self) -> QualityScore {
        QualityScore {
            score: self.score,
            scorer: SCORER.to_string(),
            version: VERSION.to_string(),
            reason: None,
        }
    }
}

const BOILERPLATE: &[&str] = &[
    "cookie",
    "accept all",
    "subscribe",
    "newsletter",
    "sign up",
    "sign in",
    "log in",
    "all rights reserved",
    "privacy policy",
    "terms of service",
    "terms of use",
    "share this",
    "follow us",
    "skip to content",
];

const ERROR_SIGNALS: &[&str] = &[
    "404",
    "page not found",
    "not found",
    "access denied",
    "forbidden",
    "enable javascript",
    "javascript is disabled",
    "are you a robot",
    "captcha",
    "just a moment",
    "service unavailable",
    "internal server error",
];

/// Scores a document.
pub fn score(title: &str, content: &str) -> Signals {
    let words = word_count(content);
    let lower = content.to_lowercase();
    let link_density = link_density(content);
    let boilerplate_hits: usize = BOILERPLATE.iter().map(|p| lower.matches(p).count()).sum();
    let boilerplate_per_100_words = 100.0 * boilerplate_hits as f64 / words.max(1) as f64;
    let error_page = looks_like_error_page(title, &lower, words);
    let repeated_lines = repeated_lines(content);
    let repeated_trigrams = repeated_trigrams(&lower);
    let language = whatlang::detect(content)
        .filter(|info| info.is_reliable())
        .map(|info| info.lang().code().to_string());

    let base = ((words as f64 - 20.0) / 130.0).clamp(0.0, 1.0);
    let mut score = base;
    score *= 1.0 - ((link_density - 0.3) / 0.5).clamp(0.0, 1.0) * 0.8;
    score *= 1.0 - (boilerplate_per_100_words / 5.0).clamp(0.0, 1.0) * 0.5;
    if error_page {
        score *= 0.1;
    }
    score *= 1.0 - ((repeated_lines - 0.2) / 0.5).clamp(0.0, 1.0) * 0.9;
    score *= 1.0 - ((repeated_trigrams - 0.3) / 0.5).clamp(0.0, 1.0) * 0.7;
    if language.is_none() && words >= 20 {
        score *= 0.8;
    }
    Signals {
        words,
        link_density,
        boilerplate_per_100_words,
        error_page,
        repeated_lines,
        repeated_trigrams,
        language,
        score: (score * 1000.0).round() / 1000.0,
    }
}

/// The share of visible text characters that sit inside links.
fn link_density(content: &str) -> f64 {
    let mut total = 0usize;
    let mut in_links = 0usize;
    let mut depth = 0usize;
    for event in Parser::new(content) {
        match event {
            Event::Start(Tag::Link { .. }) => depth += 1,
            Event::End(TagEnd::Link) => depth = depth.saturating_sub(1),
            Event::Text(text) | Event::Code(text) => {
                let n = text.chars().filter(|c| !c.is_whitespace()).count();
                total += n;
                if depth > 0 {
                    in_links += n;
                }
            }
            _ => {}
        }
    }
    if total == 0 {
        0.0
    } else {
        in_links as f64 / total as f64
    }
}

/// Error pages say so in the title, or in the opening of a short page.
fn looks_like_error_page(title: &str, lower_content: &str, words: usize) -> bool {
    let title = title.to_lowercase();
    let opening: String = lower_content.chars().take(300).collect();
    ERROR_SIGNALS.iter().any(|signal| {
        let in_title = title.contains(signal);
        let in_short_page = words < 150 && opening.contains(signal);
        in_title || in_short_page
    })
}

fn repeated_lines(content: &str) -> f64 {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut lines = 0usize;
    let mut repeats = 0usize;
    for line in content.lines().map(str::trim).filter(|l| l.len() > 3) {
        lines += 1;
        let count = seen.entry(line).or_default();
        if *count > 0 {
            repeats += 1;
        }
        *count += 1;
    }
    if lines == 0 { 0.0 } else { repeats as f64 / lines as f64 }
}

fn repeated_trigrams(lower: &str) -> f64 {
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() < 3 {
        return 0.0;
    }
    let mut seen = std::collections::HashSet::new();
    let mut repeats = 0usize;
    let windows = words.windows(3);
    let total = windows.len();
    for trigram in windows {
        if !seen.insert(trigram) {
            repeats += 1;
        }
    }
    repeats as f64 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROSE: &str = "Sourdough needs a lively starter. Feed it at a ratio of one part starter to five parts \
        flour and five parts water, and wait until it has doubled, which takes four to six hours in a warm \
        kitchen. Mix the dough at seventy-eight percent hydration, rest it for an hour, then add the salt. \
        Over the next three hours give it four sets of stretches and folds, thirty minutes apart, and let \
        the bulk ferment finish when the dough has risen by half and shows bubbles at the sides. Shape it \
        gently, proof it overnight in the fridge, and bake it in a preheated Dutch oven: twenty minutes \
        with the lid on at two hundred and fifty degrees, then twenty-five without the lid at two hundred \
        and thirty. Let the loaf cool for an hour before cutting, or the crumb turns gummy. The crust \
        should sound hollow when tapped and be a deep brown rather than golden.";

    #[test]
    fn good_prose_scores_high() {
        let signals = score("Sourdough", PROSE);
        assert!(signals.score > 0.9, "{signals:?}");
        assert_eq!(signals.language.as_deref(), Some("eng"));
        assert!(!signals.error_page);
    }

    #[test]
    fn a_list_of_links_scores_low() {
        let links: String = (0..40)
            .map(|i| format!("- [Bookmark number {i}](https://site{i}.test/page)\n"))
            .collect();
        let signals = score("Bookmarks", &links);
        assert!(signals.link_density > 0.8, "{signals:?}");
        assert!(signals.score < 0.4, "{signals:?}");
    }

    #[test]
    fn repetition_and_error_pages_score_low() {
        let repeated = "Synced from phone: meeting notes pending upload.\n".repeat(40);
        assert!(score("Inbox", &repeated).score < 0.2);
        let error = "404 Not Found. The page you are looking for does not exist. Go back home.";
        assert!(score("Page not found", error).error_page);
        assert!(score("Page not found", error).score < 0.1);
    }

    #[test]
    fn short_pages_score_low_and_empty_pages_zero() {
        assert_eq!(score("Untitled", "").score, 0.0);
        assert!(score("Todo", "Buy milk and eggs.").score < 0.1);
    }
}
