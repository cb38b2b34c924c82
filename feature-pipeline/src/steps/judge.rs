//! The document judge: the teacher rates the documents the heuristic score is unsure about.
//!
//! The heuristic (`score.rs`) is fast and explainable but blunt in the middle of its scale. For a
//! document whose heuristic score lies in the uncertain band (default 0.3 to 0.7) the teacher is
//! asked, with a versioned prompt (`prompts/judge-v1.md`), for a rating from 1 to 5 and a one-line
//! reason. The rating becomes the stored quality score, `(rating - 1) / 4`, with the scorer
//! [`SCORER`], the version `judge-v1/<teacher id>` and the reason, so `filter` uses it where it
//! exists and `explore` shows it beside the heuristic's. Every answer goes through the teacher's
//! response cache: a rerun asks nothing twice. An answer without a rating leaves the heuristic's
//! score in place and is counted.

use engram_shared::documents::QualityScore;
use engram_shared::generation::{ChatMessage, Role};
use engram_shared::hashing::sha256_hex;

use super::distil::prompt_parts;
use crate::teacher::TeacherRequest;

/// The judge's scorer name, stored with its scores.
pub const SCORER: &str = "llm-judge";

/// Characters of a document shown to the judge: enough to tell notes from noise.
pub const MAX_CHARS: usize = 3000;

/// The judge's prompt.
#[derive(Debug, Clone)]
pub struct JudgePrompt {
    /// Its version (the file's stem).
    pub version: String,
    system: String,
    user: String,
}

impl JudgePrompt {
    /// The prompt shipped with this build.
    pub fn builtin() -> Self {
        Self::parse("judge-v1", include_str!("../../prompts/judge-v1.md"))
            .expect("the built-in judge prompt has a system and a user part")
    }

    /// Reads a template in the prompt-file format ([`prompt_parts`]).
    pub fn parse(version: &str, text: &str) -> anyhow::Result<Self> {
        let (system, user) = prompt_parts(version, text, &["{{title}}", "{{content}}"])?;
        Ok(Self {
            version: version.to_string(),
            system,
            user,
        })
    }

    /// The teacher request for one document: greedy, short, with a seed fixed by the document.
    pub fn request(&self, title: &str, content: &str) -> TeacherRequest {
        let content = match content.char_indices().nth(MAX_CHARS) {
            Some((end, _)) => &content[..end],
            None => content,
        };
        let user = self.user.replace("{{title}}", title).replace("{{content}}", content);
        let seed = u64::from_str_radix(&sha256_hex(format!("{title}\n{content}"))[..15], 16).unwrap_or(0);
        TeacherRequest {
            messages: vec![
                ChatMessage::new(Role::System, self.system.clone()),
                ChatMessage::new(Role::User, user),
            ],
            temperature: 0.0,
            max_tokens: 64,
            seed,
        }
    }
}

/// A rating and its reason, read from the judge's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// 1 to 5.
    pub rating: u8,
    /// One line, at most 200 characters.
    pub reason: String,
}

impl Verdict {
    /// The stored score: the rating on the 0-to-1 scale, with who gave it and why.
    pub fn quality(&self, prompt_version: &str, teacher: &str) -> QualityScore {
        QualityScore {
            score: f64::from(self.rating - 1) / 4.0,
            scorer: SCORER.to_string(),
            version: format!("{prompt_version}/{teacher}"),
            reason: Some(self.reason.clone()),
        }
    }
}

/// Reads `Rating: N` (or, failing that, the first digit 1–5 standing alone) and `Reason: …`
/// (or, failing that, the first other line); `None` when there is no rating.
pub fn parse_verdict(answer: &str) -> Option<Verdict> {
    let lines: Vec<&str> = answer.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    let labelled = |label: &str| {
        lines.iter().find_map(|line| {
            let lower = line.to_lowercase();
            let start = lower.find(label)?;
            Some(line[start + label.len()..].trim_start_matches([':', ' ', '*']).trim())
        })
    };
    let standalone_digit = |text: &str| {
        text.split(|c: char| !c.is_ascii_alphanumeric())
            .find_map(|word| match word {
                "1" | "2" | "3" | "4" | "5" => word.parse::<u8>().ok(),
                _ => None,
            })
    };
    let rating = labelled("rating")
        .and_then(standalone_digit)
        .or_else(|| standalone_digit(answer))?;
    let reason = labelled("reason")
        .map(str::to_string)
        .or_else(|| {
            lines
                .iter()
                .find(|l| !l.to_lowercase().contains("rating"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    let reason: String = reason.chars().take(200).collect();
    Some(Verdict {
        rating,
        reason: if reason.is_empty() {
            "(no reason given)".into()
        } else {
            reason
        },
    })
}

/// Whether a heuristic score is in the band the judge is asked about.
pub fn uncertain(score: f64, band: (f64, f64)) -> bool {
    (band.0..=band.1).contains(&score)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_in_the_asked_form_and_in_looser_ones() {
        assert_eq!(
            parse_verdict("Rating: 4\nReason: Specific recipe with quantities."),
            Some(Verdict {
                rating: 4,
                reason: "Specific recipe with quantities.".into()
            })
        );
        let loose = parse_verdict("**Rating:** 2/5\n**Reason:** mostly a list of links").unwrap();
        assert_eq!((loose.rating, loose.reason.as_str()), (2, "mostly a list of links"));
        let bare = parse_verdict("I would give it a 5. Clear notes.").unwrap();
        assert_eq!(bare.rating, 5);
        assert_eq!(parse_verdict("Rating: excellent\nReason: good"), None);
        assert_eq!(
            parse_verdict("It has 10 steps and 250 g of lentils."),
            None,
            "no rating 1-5 stands alone"
        );
        assert_eq!(parse_verdict(""), None);
        let long = parse_verdict(&format!("Rating: 3\nReason: {}", "x".repeat(500))).unwrap();
        assert_eq!(long.reason.chars().count(), 200);
    }

    #[test]
    fn a_verdict_becomes_a_score_with_its_scorer_and_reason() {
        let verdict = Verdict {
            rating: 5,
            reason: "Clear.".into(),
        };
        let quality = verdict.quality("judge-v1", "local:SmolLM2");
        assert_eq!(quality.score, 1.0);
        assert_eq!(quality.scorer, SCORER);
        assert_eq!(quality.version, "judge-v1/local:SmolLM2");
        assert_eq!(quality.reason.as_deref(), Some("Clear."));
        assert_eq!(Verdict { rating: 1, ..verdict }.quality("v", "t").score, 0.0);
        assert!(uncertain(0.3, (0.3, 0.7)) && uncertain(0.7, (0.3, 0.7)) && !uncertain(0.71, (0.3, 0.7)));
    }

    #[test]
    fn the_request_is_greedy_bounded_and_stable() {
        let prompt = JudgePrompt::builtin();
        let long = "word ".repeat(2000);
        let request = prompt.request("Bookmarks", &long);
        assert_eq!(request.temperature, 0.0);
        assert!(request.messages[1].content.len() < MAX_CHARS + 1000);
        assert!(request.messages[1].content.contains("# Bookmarks"));
        assert_eq!(request.seed, prompt.request("Bookmarks", &long).seed);
        assert!(JudgePrompt::parse("x", "=== system\nS\n=== user\nno placeholders").is_err());
    }
}
