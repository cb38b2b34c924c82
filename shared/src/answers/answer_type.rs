//! The kind of fact a question asks for, and whether a sentence states one.
//!
//! Question answering systems have long typed a question's expected answer (Li and Roth's question
//! classes: a price is a sum of money, "how long" a number with a unit) and kept only the passages
//! that hold something of that type. Extractive answers ([`super::extract`]) need it for two
//! reasons. A 135M model scoring sentences finds the question likeliest under the sentence that
//! names its topic, whether or not the sentence holds the answer: asked what the gyuto cost, it
//! picks "a 210 mm gyuto (Aogami #2 …)". And the notes usually hold such a sentence when they lack
//! the answer (the gyuto is described, its price is not): a relevance threshold cannot tell, but a
//! question about a price whose sources state no sum of money has no answer in them.
//!
//! The rules are deliberately few and coarse (English questions; a false "no answer" costs more than
//! a wrong sentence chosen among typed ones): a question about what something cost or was paid asks
//! for a sum of money (a currency sign or name next to a number); a question of quantity, time or
//! date asks for a number (digits or a number word). Anything else may be answered by any sentence.

use regex::Regex;
use std::sync::LazyLock;

/// What a question's answer must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerType {
    /// A sum of money: "How much did the tickets cost?", "What did the dinner cost?".
    Money,
    /// A number: "How long …", "How many …", "What time …", "When …", "What temperature …".
    Number,
    /// Anything: names, reasons, yes or no.
    Any,
}

static MONEY_QUESTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"(?i)\b(how much|what)\b.*\b(cost|costs|pay|paid|price|prices|spend|spent|charge|charged)\b")
        .expect("a valid pattern")
});

static NUMBER_QUESTION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)^\W*(how (much|many|long|big|hot|cold|full|old|far|often|heavy|fast|tall|wide|deep)|when|what (time|temperature|date|year|angle|torque|size|percentage|speed|weight))\b",
    )
    .expect("a valid pattern")
});

static MONEY: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)[€£$¥₹]\s?\d|\d\s?[€£$¥₹]|\d[\d.,]*\s?(k|m)?\s?(eur|euros?|gbp|pounds?|usd|dollars?|yen|francs?|chf|sek|nok|dkk)\b|\b(eur|gbp|usd|chf)\s?\d",
    )
    .expect("a valid pattern")
});

static NUMBER: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"(?i)\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|sixty|hundred|thousand|half|quarter|dozen)\b",
    )
    .expect("a valid pattern")
});

impl AnswerType {
    /// The answer type `question` expects.
    pub fn of(question: &str) -> AnswerType {
        if MONEY_QUESTION.is_match(question) {
            AnswerType::Money
        } else if NUMBER_QUESTION.is_match(question) {
            AnswerType::Number
        } else {
            AnswerType::Any
        }
    }

    /// Whether `sentence` states something of this type.
    pub fn fits(self, sentence: &str) -> bool {
        match self {
            AnswerType::Money => MONEY.is_match(sentence),
            AnswerType::Number => NUMBER.is_match(sentence),
            AnswerType::Any => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_are_typed_by_what_they_ask() {
        for (question, expected) in [
            // No word of paying: only "how much", which a price also satisfies as a number.
            ("How much was the entry ticket for Pena Palace?", AnswerType::Number),
            (
                "What did our dinner in Alcântara cost on the Belém day?",
                AnswerType::Money,
            ),
            ("How much did I pay for my 210 mm gyuto?", AnswerType::Money),
            ("How much does lunch at a tasca cost per person?", AnswerType::Money),
            ("How long should the loaf cool before I slice it?", AnswerType::Number),
            ("How many watt-hours is my power bank?", AnswerType::Number),
            ("What time is the last entry to the castle?", AnswerType::Number),
            ("When does the rotation hand over?", AnswerType::Number),
            ("What temperature should the tare be heated to?", AnswerType::Number),
            ("What's my sourdough starter called?", AnswerType::Any),
            ("Which pathogen causes early blight?", AnswerType::Any),
            ("Is &mut T covariant or invariant in T?", AnswerType::Any),
        ] {
            assert_eq!(AnswerType::of(question), expected, "{question}");
        }
    }

    #[test]
    fn a_sentence_fits_when_it_states_a_value_of_the_type() {
        assert!(AnswerType::Money.fits("Pena Palace (09:30 slot, €20 for palace and park)"));
        assert!(AnswerType::Money.fits("Costs about £90; the landlord reimburses it."));
        assert!(AnswerType::Money.fits("The whole trip came to 1,660 EUR."));
        assert!(AnswerType::Money.fits("It was $ 35 with tax."));
        assert!(!AnswerType::Money.fits("Three knives: a 210 mm gyuto and a 150 mm petty."));
        assert!(!AnswerType::Money.fits("Tomatoes in 40-litre pots."));
        assert!(AnswerType::Number.fits("Soak the stone for ten minutes."));
        assert!(AnswerType::Number.fits("Handover on Mondays at 10:00."));
        assert!(!AnswerType::Number.fits("Bake it until it sounds hollow."));
        assert!(AnswerType::Any.fits("Anything at all."));
    }
}
