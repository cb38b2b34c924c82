//! Abstention: when the notes hold nothing relevant, say so instead of letting the model guess.
//!
//! Retrieval always returns its best chunks, relevant or not, and a small model given unrelated
//! sources answers anyway (a price from another trip, a recipe with the wrong meat). So before
//! generating, the closest chunk's dense similarity is compared with a threshold: below it, the
//! answer is [`ABSTENTION`] and nothing is generated. The threshold is calibrated on the sample
//! questions (`samples/answers.tsv`; `feature-pipeline eval answers` prints each question's
//! closeness; the README's "Grounded answers" section has the numbers).
//!
//! The same sentence is what the prompt asks the model to say when the sources it was given do
//! not hold the answer, and what the `qa` training task teaches, so one check
//! ([`is_abstention`]) recognises an abstention from either.

/// What the assistant says when the notes do not hold the answer.
pub const ABSTENTION: &str = "The notes do not say: I found nothing about this in your notes and saved pages.";

/// What the assistant says when the question names something (`name`, see [`super::names`]) that
/// none of the notes retrieved mentions: the abstention, saying what was not found.
pub fn unstated(name: &str) -> String {
    format!("The notes do not say: nothing I found in your notes and saved pages mentions “{name}”.")
}

/// The default threshold on the closest chunk's cosine similarity (all-MiniLM-L6-v2), below which
/// the service abstains. Calibrated on `samples/answers.tsv` over the sample corpus: the 44
/// answerable questions' closest chunks lie between 0.397 and 0.802, the 10 unanswerable ones'
/// between 0.260 and 0.663. 0.35 keeps a margin of 0.05 under every answerable question, so it
/// refuses questions off the notes' topics; a question on their topics whose fact is absent (8 of
/// the 10) is close to some chunk, and it is the model's part to say the notes do not say.
pub const DEFAULT_MIN_RELEVANCE: f32 = 0.35;

/// Whether to abstain given the closest chunk's similarity (`None`: nothing was found at all).
pub fn should_abstain(closest: Option<f32>, min_relevance: f32) -> bool {
    closest.is_none_or(|closest| closest < min_relevance)
}

/// Whether `answer` declines to answer from the notes: the service's own sentence, or the ways a
/// model says it.
pub fn is_abstention(answer: &str) -> bool {
    let answer = answer.to_lowercase().replace('’', "'");
    [
        "notes do not say",
        "notes don't say",
        "do not say",
        "don't say",
        "could not find",
        "couldn't find",
        "can not find",
        "cannot find",
        "can't find",
        "found nothing",
        "no information",
        "not mentioned",
        "do not mention",
        "don't mention",
        "does not mention",
        "doesn't mention",
        "not in the notes",
        "not in your notes",
    ]
    .iter()
    .any(|phrase| answer.contains(phrase))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstention_follows_the_threshold_and_an_empty_index() {
        assert!(should_abstain(None, 0.3));
        assert!(should_abstain(Some(0.1), 0.3));
        assert!(!should_abstain(Some(0.3), 0.3));
        assert!(!should_abstain(Some(0.8), 0.3));
        assert!(!should_abstain(Some(-0.2), -1.0), "a threshold of -1 never abstains");
    }

    #[test]
    fn abstentions_are_recognised_in_their_usual_wordings() {
        assert!(is_abstention(ABSTENTION));
        assert!(is_abstention(&unstated("Wi-Fi")) && unstated("Wi-Fi").contains("“Wi-Fi”"));
        assert!(is_abstention("Sorry, I couldn’t find that in the sources."));
        assert!(is_abstention("The sources don't mention the hotel price."));
        assert!(!is_abstention("The tickets cost €14 each [2]."));
    }
}
