//! Answer evaluation: does the served path (retrieval, abstention, prompt, model) answer right?
//!
//! Input: questions, each with the document that answers it (or none: the notes do not hold the
//! answer) and the facts a right answer contains. Per answer it checks whether retrieval found the
//! document, whether every fact is in the answer, whether a cited source is from the document,
//! and whether the answer abstains. Per model it reports those shares over the answerable and the
//! unanswerable questions (`samples/answers.tsv` documents the format).

use regex::{Regex, RegexBuilder};
use serde::Serialize;

use super::eval::matches;

/// Something a right answer contains.
#[derive(Debug, Clone)]
pub enum Fact {
    /// Text, matched ignoring case.
    Text(String),
    /// A regular expression (`re:` in the file), matched ignoring case.
    Pattern(Regex),
}

impl Fact {
    /// Whether `answer` states it.
    pub fn found_in(&self, answer: &str) -> bool {
        match self {
            Fact::Text(text) => answer.to_lowercase().contains(&text.to_lowercase()),
            Fact::Pattern(pattern) => pattern.is_match(answer),
        }
    }

    fn describe(&self) -> String {
        match self {
            Fact::Text(text) => text.clone(),
            Fact::Pattern(pattern) => format!("re:{}", pattern.as_str()),
        }
    }
}

impl Serialize for Fact {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.describe())
    }
}

/// One question of the set.
#[derive(Debug, Clone, Serialize)]
pub struct AnswerQuestion {
    /// What is asked.
    pub question: String,
    /// The title or url of the document that answers it; `None`: nothing does.
    pub expected: Option<String>,
    /// What a right answer contains (none for an unanswerable question).
    pub facts: Vec<Fact>,
}

/// Reads `question<TAB>expected<TAB>fact…` lines; `none` as expected marks an unanswerable
/// question; `#` comments and blank lines are skipped.
pub fn parse_answer_questions(text: &str) -> anyhow::Result<Vec<AnswerQuestion>> {
    let mut questions = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        let line_no = number + 1;
        let columns: Vec<&str> = line.split('\t').map(str::trim).collect();
        let [question, expected, facts @ ..] = columns.as_slice() else {
            anyhow::bail!("line {line_no}: expected `question<TAB>expected title or none<TAB>fact…`, found no tab");
        };
        anyhow::ensure!(
            !question.is_empty() && !expected.is_empty(),
            "line {line_no}: the question and the expected document (or `none`) may not be empty"
        );
        let expected = (!expected.eq_ignore_ascii_case("none")).then(|| expected.to_string());
        let facts = facts
            .iter()
            .map(|fact| match fact.strip_prefix("re:") {
                _ if fact.is_empty() => anyhow::bail!("line {line_no}: an empty fact column (remove the extra tab)"),
                Some(pattern) => RegexBuilder::new(pattern)
                    .case_insensitive(true)
                    .size_limit(1 << 20)
                    .build()
                    .map(Fact::Pattern)
                    .map_err(|e| anyhow::anyhow!("line {line_no}: the fact `{fact}` is not a valid regex: {e}")),
                None => Ok(Fact::Text(fact.to_string())),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        match (&expected, facts.is_empty()) {
            (Some(_), true) => anyhow::bail!("line {line_no}: an answerable question needs at least one fact"),
            (None, false) => anyhow::bail!("line {line_no}: an unanswerable question (`none`) takes no facts"),
            _ => {}
        }
        questions.push(AnswerQuestion {
            question: question.to_string(),
            expected,
            facts,
        });
    }
    anyhow::ensure!(!questions.is_empty(), "the question file holds no questions");
    Ok(questions)
}

/// A source the answer was given: its document and whether the answer cites it.
#[derive(Debug, Clone, Serialize)]
pub struct GivenSource {
    /// The document's title.
    pub title: String,
    /// The document's url.
    pub url: String,
    /// Whether the answer cites it.
    pub cited: bool,
}

/// How one answer fared.
#[derive(Debug, Clone, Serialize)]
pub struct Judged {
    /// Retrieval returned a chunk of the expected document (answerable questions).
    pub retrieval_hit: bool,
    /// Every fact is in the answer (answerable questions).
    pub correct: bool,
    /// A cited source is from the expected document (answerable questions).
    pub cited_right: bool,
    /// The answer declines.
    pub abstained: bool,
}

/// Judges one answer given the sources it was given.
pub fn judge(question: &AnswerQuestion, answer: &str, sources: &[GivenSource], abstained: bool) -> Judged {
    let from_expected = |s: &GivenSource| {
        question
            .expected
            .as_deref()
            .is_some_and(|expected| matches(expected, &s.title, &s.url))
    };
    Judged {
        retrieval_hit: sources.iter().any(from_expected),
        correct: !abstained && !question.facts.is_empty() && question.facts.iter().all(|f| f.found_in(answer)),
        cited_right: sources.iter().any(|s| s.cited && from_expected(s)),
        abstained,
    }
}

/// One model's shares over a question set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AnswerMetrics {
    /// Answerable questions.
    pub answerable: usize,
    /// Unanswerable questions.
    pub unanswerable: usize,
    /// Share of answerable questions whose document was among the sources.
    pub retrieval_hit: f64,
    /// Share of answerable questions answered with every fact.
    pub correct: f64,
    /// Share of answerable questions citing a source from the right document.
    pub citation_correct: f64,
    /// Share of unanswerable questions the answer declined.
    pub abstention: f64,
    /// Share of answerable questions the answer declined.
    pub false_abstention: f64,
}

/// The shares of `judged` answers to `questions` (same order).
pub fn answer_metrics(questions: &[AnswerQuestion], judged: &[Judged]) -> AnswerMetrics {
    let share = |count: usize, of: usize| if of == 0 { 0.0 } else { count as f64 / of as f64 };
    let (answerable, unanswerable): (Vec<_>, Vec<_>) =
        questions.iter().zip(judged).partition(|(q, _)| q.expected.is_some());
    let answerable: Vec<&Judged> = answerable.into_iter().map(|(_, j)| j).collect();
    let unanswerable: Vec<&Judged> = unanswerable.into_iter().map(|(_, j)| j).collect();
    let count = |set: &[&Judged], test: fn(&Judged) -> bool| set.iter().filter(|j| test(j)).count();
    AnswerMetrics {
        answerable: answerable.len(),
        unanswerable: unanswerable.len(),
        retrieval_hit: share(count(&answerable, |j| j.retrieval_hit), answerable.len()),
        correct: share(count(&answerable, |j| j.correct), answerable.len()),
        citation_correct: share(count(&answerable, |j| j.cited_right), answerable.len()),
        abstention: share(count(&unanswerable, |j| j.abstained), unanswerable.len()),
        false_abstention: share(count(&answerable, |j| j.abstained), answerable.len()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "# comment\n\
        How much were the Pena tickets?\tDay 2 Sintra\tre:€\\s?20\\b\tper person\n\
        What did the gyuto cost?\tnone\n";

    fn source(title: &str, cited: bool) -> GivenSource {
        GivenSource {
            title: title.into(),
            url: format!("https://example.com/{title}"),
            cited,
        }
    }

    #[test]
    fn a_question_file_is_read_with_its_facts() {
        let questions = parse_answer_questions(FILE).unwrap();
        assert_eq!(questions.len(), 2);
        assert_eq!(questions[0].expected.as_deref(), Some("Day 2 Sintra"));
        assert_eq!(questions[0].facts.len(), 2);
        assert!(questions[0].facts[0].found_in("They were €20 each"));
        assert!(!questions[0].facts[0].found_in("They were €200 each"));
        assert!(questions[0].facts[1].found_in("€20 PER PERSON"));
        assert!(questions[1].expected.is_none() && questions[1].facts.is_empty());
    }

    #[test]
    fn the_shipped_question_sets_parse_with_answerable_and_unanswerable_questions() {
        for (name, text, answerable, unanswerable) in [
            (
                "samples/answers.tsv",
                include_str!("../../../samples/answers.tsv"),
                44,
                10,
            ),
            (
                "samples/answers-heldout.tsv",
                include_str!("../../../samples/answers-heldout.tsv"),
                20,
                8,
            ),
            (
                "samples/answers-fresh.tsv",
                include_str!("../../../samples/answers-fresh.tsv"),
                30,
                12,
            ),
        ] {
            let questions = parse_answer_questions(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            let counted = questions.iter().filter(|q| q.expected.is_some()).count();
            assert_eq!(
                (counted, questions.len() - counted),
                (answerable, unanswerable),
                "{name}"
            );
        }
    }

    #[test]
    fn a_bad_question_file_names_the_line_and_the_fix() {
        for (text, says) in [
            ("no tab here", "line 1"),
            ("q\tDoc", "at least one fact"),
            ("q\tnone\tfact", "takes no facts"),
            ("q\tDoc\tre:(", "not a valid regex"),
            ("q\tDoc\tfact\t", "empty fact"),
            ("# only comments", "no questions"),
        ] {
            let err = parse_answer_questions(text).unwrap_err().to_string();
            assert!(err.contains(says), "{text:?}: {err}");
        }
    }

    #[test]
    fn answers_are_judged_and_counted() {
        let questions = parse_answer_questions(FILE).unwrap();
        let right = judge(
            &questions[0],
            "€20 per person [1].",
            &[source("Day 2 Sintra", true), source("Lisbon trip 2025", false)],
            false,
        );
        assert!(right.retrieval_hit && right.correct && right.cited_right && !right.abstained);
        let wrong = judge(&questions[0], "€1,660 [2].", &[source("Lisbon trip 2025", true)], false);
        assert!(!wrong.retrieval_hit && !wrong.correct && !wrong.cited_right);
        let declined = judge(&questions[1], "The notes do not say.", &[], true);
        assert!(declined.abstained && !declined.correct);
        let metrics = answer_metrics(&questions, &[right, declined]);
        assert_eq!((metrics.answerable, metrics.unanswerable), (1, 1));
        assert_eq!(
            (
                metrics.correct,
                metrics.citation_correct,
                metrics.abstention,
                metrics.false_abstention
            ),
            (1.0, 1.0, 1.0, 0.0)
        );
        let metrics = answer_metrics(&questions, &[wrong, judge(&questions[1], "€150", &[], false)]);
        assert_eq!((metrics.correct, metrics.abstention), (0.0, 0.0));
    }
}
