//! A follow-up question made standalone, so retrieval searches for what the person means.
//!
//! "And how long does it cook?" retrieves nothing useful on its own: "it" is the dal of the question
//! before. The rule (documented in the README, chosen over asking the SLM, which at 135M parameters
//! rewrites unreliably and costs a generation per question):
//!
//! - a user message is a **follow-up** when it opens with a connective ("and", "but", "also", "what
//!   about", …) or, being short (at most [`SHORT_WORDS`] words), refers back with a pronoun or a
//!   demonstrative ("it", "they", "that", "there", …);
//! - the standalone question of a follow-up is the question that opened its topic (the last user
//!   message before it that is not a follow-up) and the follow-ups since; of any other message, the
//!   message itself;
//! - at most [`MAX_CHAINED`] user messages are chained: the one that opened the topic and the
//!   latest follow-ups, so a long run of follow-ups stays on its topic and stays short.
//!
//! Assistant turns are not searched with: they are the model's words, not the person's.

use crate::generation::{ChatMessage, Role};

/// A follow-up with more words than this needs a connective to count as one: a long question
/// that happens to say "it" usually stands on its own.
pub const SHORT_WORDS: usize = 9;

/// Most user messages one standalone question is made of: the question that opened the topic and
/// the latest follow-ups.
pub const MAX_CHAINED: usize = 3;

/// How far back the question that opened the topic is looked for, in user messages.
const MAX_LOOKBACK: usize = 8;

/// Words that open a follow-up.
const CONNECTIVES: &[&str] = &[
    "and",
    "but",
    "also",
    "so",
    "then",
    "or",
    "plus",
    "what about",
    "how about",
    "and what",
    "and how",
    "what else",
    "anything else",
    "same for",
    "ok",
    "okay",
];

/// Words that refer to something said before.
const REFERRING: &[&str] = &[
    "it", "its", "it's", "they", "them", "their", "theirs", "that", "this", "those", "these", "there", "he", "she",
    "him", "her", "his", "hers", "one", "ones", "same", "else",
];

/// What retrieval searches with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Standalone {
    /// The question as searched.
    pub question: String,
    /// Whether earlier messages were added (the last message was a follow-up).
    pub rewritten: bool,
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .filter(|w| !w.is_empty())
        .map(|w| w.to_lowercase().replace('’', "'"))
        .collect()
}

/// Whether `message` only makes sense after the message before it.
pub fn is_follow_up(message: &str) -> bool {
    let words = words(message);
    if words.is_empty() {
        return false;
    }
    let opening = words.iter().take(2).cloned().collect::<Vec<_>>().join(" ");
    let opens_with_connective = CONNECTIVES
        .iter()
        .any(|c| opening == *c || opening.starts_with(&format!("{c} ")) || words[0] == *c);
    opens_with_connective || (words.len() <= SHORT_WORDS && words.iter().any(|w| REFERRING.contains(&w.as_str())))
}

/// The standalone question of the conversation's last user message (empty when there is none).
pub fn standalone_question(conversation: &[ChatMessage]) -> Standalone {
    let asked: Vec<&str> = conversation
        .iter()
        .filter(|m| m.role == Role::User)
        .map(|m| m.content.trim())
        .filter(|m| !m.is_empty())
        .collect();
    let Some((last, earlier)) = asked.split_last() else {
        return Standalone {
            question: String::new(),
            rewritten: false,
        };
    };
    if !is_follow_up(last) {
        return Standalone {
            question: last.to_string(),
            rewritten: false,
        };
    }
    // Walk back over follow-ups to the question that opened the topic (the anchor); keep the
    // anchor and the latest follow-ups.
    let mut follow_ups = vec![*last];
    let mut anchor = None;
    for before in earlier.iter().rev().take(MAX_LOOKBACK) {
        if is_follow_up(before) {
            follow_ups.push(before);
        } else {
            anchor = Some(*before);
            break;
        }
    }
    follow_ups.truncate(if anchor.is_some() { MAX_CHAINED - 1 } else { MAX_CHAINED });
    follow_ups.reverse();
    let parts: Vec<&str> = anchor.into_iter().chain(follow_ups).collect();
    Standalone {
        rewritten: parts.len() > 1,
        question: parts.join(" "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(text: &str) -> ChatMessage {
        ChatMessage::new(Role::User, text)
    }

    fn assistant(text: &str) -> ChatMessage {
        ChatMessage::new(Role::Assistant, text)
    }

    #[test]
    fn follow_ups_are_recognised_and_standalone_questions_are_not() {
        for follow_up in [
            "and how long does it cook?",
            "And how long does it cook?",
            "How long does it cook?",
            "What about the tickets?",
            "how much were they",
            "Also, when did we go there?",
            "Is that the same for the second loaf?",
        ] {
            assert!(is_follow_up(follow_up), "{follow_up}");
        }
        for standalone in [
            "What is the recipe for weeknight dal?",
            "How much did the Pena Palace tickets cost?",
            "What k value do we use for reciprocal rank fusion in hybrid search?",
            "When should the onion, garlic and ginger go into the pork and chicken broth so that it tastes right?",
            "",
        ] {
            assert!(!is_follow_up(standalone), "{standalone}");
        }
    }

    #[test]
    fn a_follow_up_is_searched_with_the_question_it_follows() {
        let conversation = [
            ChatMessage::new(Role::System, "Be brief."),
            user("What is the recipe for weeknight dal?"),
            assistant("Red lentils, onion, garlic [1]."),
            user("and how long does it cook?"),
        ];
        assert_eq!(
            standalone_question(&conversation),
            Standalone {
                question: "What is the recipe for weeknight dal? and how long does it cook?".into(),
                rewritten: true,
            }
        );
    }

    #[test]
    fn a_new_topic_is_searched_alone_and_chains_are_bounded() {
        let conversation = [
            user("What is the recipe for weeknight dal?"),
            assistant("…"),
            user("How much did the Pena Palace tickets cost?"),
        ];
        let standalone = standalone_question(&conversation);
        assert_eq!(standalone.question, "How much did the Pena Palace tickets cost?");
        assert!(!standalone.rewritten);

        let chain = [
            user("What did we pay for the Lisbon flat?"),
            user("What is the recipe for weeknight dal?"),
            user("and how long does it cook?"),
            user("and what goes in it?"),
            user("and can I freeze it?"),
        ];
        let standalone = standalone_question(&chain);
        assert_eq!(
            standalone.question,
            "What is the recipe for weeknight dal? and what goes in it? and can I freeze it?"
        );
        assert_eq!(standalone.question.matches('?').count(), MAX_CHAINED);
        assert_eq!(standalone_question(&[assistant("Hello")]).question, "");
    }
}
