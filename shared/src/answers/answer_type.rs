//! The kind of fact a question asks for, and whether a sentence states one.
//!
//! Question answering systems have long typed a question's expected answer (Li and Roth's question
//! classes: a price is a sum of money, "what time" a time of day, "how long" a period) and kept
//! only the passages that hold something of that type. Extractive answers ([`super::extract`])
//! need it for two reasons. A 135M model scoring sentences finds the question likeliest under the
//! sentence that names its topic, whether or not the sentence holds the answer: asked at what
//! angle the gyuto is sharpened, it picks "a 210 mm gyuto (Aogami #2 …)". And the notes usually
//! hold such a sentence when they lack the answer (the gyuto is described, its price is not): a
//! relevance threshold cannot tell, but a question about a price whose sources state no sum of
//! money has no answer in them.
//!
//! The rules are few and coarse on purpose (English questions; a false "no answer" costs more
//! than a wrong sentence chosen among typed ones), and each type is one a reader would name:
//! a sum of money, degrees (a temperature or an angle), a time of day, a date, a period or length,
//! a phone number, any number; anything else may be answered by any sentence. A question is
//! typed by its opening words ("What time …", "How long …", "When did …") and, for money and
//! phone numbers, by what it asks about anywhere ("… cost", "… phone number").

use regex::Regex;
use std::sync::LazyLock;

/// What a question's answer must contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerType {
    /// A sum of money: "How much did the tickets cost?", "What did the dinner cost?".
    Money,
    /// A temperature or an angle in degrees: "What temperature …", "At what angle …", "How hot …".
    Degrees,
    /// A time of day: "What time is the last entry?".
    TimeOfDay,
    /// A date, a day or a year: "What's the date of …", "When did …".
    Date,
    /// A period or a length, a number with its unit: "How long …".
    Period,
    /// A phone number: "What's the phone number of …".
    Phone,
    /// A number: "How many …", "How much …", "When does …", "What torque …".
    Number,
    /// Anything: names, reasons, yes or no.
    Any,
}

fn pattern(text: &str) -> Regex {
    Regex::new(text).expect("a valid pattern")
}

/// The question rules, in the order they are tried: the first that matches types the question.
static QUESTIONS: LazyLock<Vec<(AnswerType, Regex)>> = LazyLock::new(|| {
    vec![
        (
            AnswerType::Phone,
            pattern(r"(?i)\b(phone|telephone|mobile|landline)\s+(number|no\b)|\bwhat number do i (call|ring|dial)\b"),
        ),
        (AnswerType::TimeOfDay, pattern(r"(?i)^\W*(at\s+)?(what|which) time\b")),
        (
            AnswerType::Date,
            pattern(
                r"(?i)^\W*((in|on)\s+)?((what|which) (date|day|year|month)\b|what(')?s the date\b|what is the date\b|when did\b)",
            ),
        ),
        (
            AnswerType::Degrees,
            pattern(r"(?i)^\W*((at|to)\s+)?(what|which)\s+(\w+\s+)?(temperature|angle)\b|^\W*how (hot|cold|warm)\b"),
        ),
        (
            AnswerType::Money,
            pattern(
                r"(?i)\b(how much|what)\b.*\b(cost|costs|pay|paid|price|prices|priced|spend|spent|charge|charged|budget|fare|fares|fee|fees)\b|\bhow much\b.*\b(ticket|tickets|cash|money)\b",
            ),
        ),
        (AnswerType::Period, pattern(r"(?i)^\W*how long\b")),
        (
            AnswerType::Number,
            pattern(
                r"(?i)^\W*(how (much|many|big|full|old|far|often|heavy|fast|tall|wide|deep|quickly|soon)|when|what (size|percentage|speed|weight|torque|pressure))\b",
            ),
        ),
    ]
});

/// A number in digits or words.
const NUMBER: &str = r"(\d|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|fifteen|twenty|thirty|forty|fifty|sixty|hundred|thousand|half|quarter|dozen)\b)";

static MONEY: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(?i)[€£$¥₹]\s?\d|\d\s?[€£$¥₹]|\d[\d.,]*\s?(k|m)?\s?(eur|euros?|gbp|pounds?|usd|dollars?|yen|francs?|chf|sek|nok|dkk)\b|\b(eur|gbp|usd|chf)\s?\d|\b(free of charge|for free|no charge)\b",
    )
});

// Degrees: "80 °C", "15° per side", "220 degrees", "250C", "gas mark 6".
static DEGREES: LazyLock<Regex> =
    LazyLock::new(|| pattern(r"\d\s*(°|º)|(?i:\d\s*(degrees?|deg)\b)|\d\s*[CF]\b|(?i:\bgas mark\s*\d)"));

// A time of day: "20:30", "8h30", "8.30 pm", "7 am", "noon".
static TIME_OF_DAY: LazyLock<Regex> = LazyLock::new(|| {
    pattern(
        r"(?i)\b([01]?\d|2[0-3])[:h][0-5]\d\b|\b\d{1,2}([.:]\d\d)?\s*((am|pm)\b|a\.m\.|p\.m\.)|\b(noon|midday|midnight|o'clock)\b",
    )
});

const MONTH: &str = r"(jan(uary)?|feb(ruary)?|mar(ch)?|apr(il)?|may|june?|july?|aug(ust)?|sept?(ember)?|oct(ober)?|nov(ember)?|dec(ember)?)";

// A date: "2025-10-12", "12/10", "July 9", "9th of July", "May 2025", a weekday, a year.
static DATE: LazyLock<Regex> = LazyLock::new(|| {
    pattern(&format!(
        r"(?i)\b\d{{4}}-\d{{2}}-\d{{2}}\b|\b\d{{1,2}}[/.]\d{{1,2}}([/.]\d{{2,4}})?\b|\b{MONTH}\.?\s+\d{{1,4}}\b|\b\d{{1,2}}(st|nd|rd|th)?\s+(of\s+)?{MONTH}\b|\b(mon|tues|wednes|thurs|fri|satur|sun)days?\b|\b(yesterday|today|tomorrow)\b|\b(1[5-9]|20)\d\d\b"
    ))
});

// A period or a length: a number with its unit ("20 minutes", "55-minute", "9–12 months", "9 km",
// "6 min 30 s"), "an hour", a clock-style duration ("25:10"), "overnight".
static PERIOD: LazyLock<Regex> = LazyLock::new(|| {
    pattern(&format!(
        r"(?i){NUMBER}\s*[-–]?\s*(s|secs?|seconds?|mins?|minutes?|h|hrs?|hours?|days?|nights?|weeks?|fortnights?|months?|years?|mm|cm|m|km|metres?|meters?|miles?)\b|\b(an?|half an?)\s+(second|minute|hour|day|night|week|fortnight|month|year)\b|\b\d{{1,2}}:\d\d\b|\bovernight\b"
    ))
});

// A phone number: seven or more digits in one run of digits, spaces, dots, dashes, brackets and
// a leading plus; a date ("2025-10-12") is not one.
static PHONE_RUN: LazyLock<Regex> = LazyLock::new(|| pattern(r"\+?\(?\d[\d\s().-]{5,}\d"));
static ISO_DATE: LazyLock<Regex> = LazyLock::new(|| pattern(r"^\d{4}-\d{2}-\d{2}$"));

static ANY_NUMBER: LazyLock<Regex> = LazyLock::new(|| pattern(&format!("(?i){NUMBER}")));

fn has_phone_number(sentence: &str) -> bool {
    PHONE_RUN.find_iter(sentence).any(|found| {
        let run = found.as_str().trim();
        run.chars().filter(char::is_ascii_digit).count() >= 7 && !ISO_DATE.is_match(run)
    })
}

impl AnswerType {
    /// The answer type `question` expects.
    pub fn of(question: &str) -> AnswerType {
        QUESTIONS
            .iter()
            .find(|(_, rule)| rule.is_match(question))
            .map_or(AnswerType::Any, |(kind, _)| *kind)
    }

    /// Whether `sentence` states something of this type.
    pub fn fits(self, sentence: &str) -> bool {
        match self {
            AnswerType::Money => MONEY.is_match(sentence),
            AnswerType::Degrees => DEGREES.is_match(sentence),
            AnswerType::TimeOfDay => TIME_OF_DAY.is_match(sentence),
            AnswerType::Date => DATE.is_match(sentence),
            AnswerType::Period => PERIOD.is_match(sentence),
            AnswerType::Phone => has_phone_number(sentence),
            AnswerType::Number => ANY_NUMBER.is_match(sentence),
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
            ("How much was the entry ticket for Pena Palace?", AnswerType::Money),
            (
                "What did our dinner in Alcântara cost on the Belém day?",
                AnswerType::Money,
            ),
            ("How much did I pay for my 210 mm gyuto?", AnswerType::Money),
            ("How much does lunch at a tasca cost per person?", AnswerType::Money),
            ("What was our total estimated budget for the trip?", AnswerType::Money),
            ("How much cash do I pack?", AnswerType::Money),
            ("How long should the loaf cool before I slice it?", AnswerType::Period),
            // The first question asked types a double one.
            (
                "How long does the loaf bake with the lid on, and how hot is the oven?",
                AnswerType::Period,
            ),
            ("How many watt-hours is my power bank?", AnswerType::Number),
            ("How much broth goes into each bowl?", AnswerType::Number),
            ("What time is the last entry to the castle?", AnswerType::TimeOfDay),
            ("At what time do the tickets go on sale?", AnswerType::TimeOfDay),
            ("When does the rotation hand over?", AnswerType::Number),
            ("When did the first tomato ripen?", AnswerType::Date),
            ("What's the date of my 10k race?", AnswerType::Date),
            ("What temperature should the tare be heated to?", AnswerType::Degrees),
            ("What oven temperature do I roast vegetables at?", AnswerType::Degrees),
            ("At what angle per side do I sharpen the gyuto?", AnswerType::Degrees),
            ("How hot is the oven?", AnswerType::Degrees),
            ("What torque do the thru-axles take?", AnswerType::Number),
            ("What's the phone number of the engineer?", AnswerType::Phone),
            ("What's my sourdough starter called?", AnswerType::Any),
            ("Which pathogen causes early blight?", AnswerType::Any),
            ("Is &mut T covariant or invariant in T?", AnswerType::Any),
        ] {
            assert_eq!(AnswerType::of(question), expected, "{question}");
        }
    }

    #[test]
    fn a_sentence_fits_when_it_states_a_value_of_the_type() {
        let fits = [
            (AnswerType::Money, "Pena Palace (09:30 slot, €20 for palace and park)"),
            (AnswerType::Money, "Costs about £90; the landlord reimburses it."),
            (AnswerType::Money, "The whole trip came to 1,660 EUR."),
            (AnswerType::Money, "It was $ 35 with tax."),
            (AnswerType::Degrees, "Heat gently to 80 °C and hold for 10 minutes."),
            (AnswerType::Degrees, "Find the angle: about 15° per side."),
            (AnswerType::Degrees, "Bake at 230C for the first half."),
            (AnswerType::Degrees, "Roast at 200 degrees."),
            (AnswerType::TimeOfDay, "Last entry 20:30 in summer."),
            (AnswerType::TimeOfDay, "The bakery opens at 7 am."),
            (AnswerType::TimeOfDay, "Lunch at noon."),
            (AnswerType::Date, "The city 10k on 2025-10-12."),
            (AnswerType::Date, "First Sungold ripe July 9"),
            (AnswerType::Date, "Planted on the 3rd of May."),
            (AnswerType::Date, "Handover on Mondays at 10:00."),
            (AnswerType::Date, "Installed in 2018."),
            (AnswerType::Period, "Letting the loaf cool for 2 hours before cutting."),
            (AnswerType::Period, "A sub-55-minute 10k."),
            (AnswerType::Period, "It takes 9–12 months."),
            (AnswerType::Period, "Eggs boiled 6 min 30 s."),
            (AnswerType::Period, "It needs half an hour."),
            (AnswerType::Period, "Week 8 time trial: 5k in 25:10"),
            (AnswerType::Phone, "Call Dave on 0113 496 0000 to book."),
            (AnswerType::Phone, "Out of hours: +44 (0)20 7946 0958."),
            (AnswerType::Number, "Soak the stone for ten minutes."),
            (AnswerType::Any, "Anything at all."),
        ];
        for (kind, sentence) in fits {
            assert!(kind.fits(sentence), "{kind:?} fits {sentence:?}");
        }
        let misfits = [
            (AnswerType::Money, "Three knives: a 210 mm gyuto and a 150 mm petty."),
            (AnswerType::Money, "Tomatoes in 40-litre pots."),
            (AnswerType::Degrees, "Pourable at 80–90% hydration."),
            (AnswerType::Degrees, "A 12 cm blade."),
            (AnswerType::TimeOfDay, "Caffeine cut-off | 7 h 05 min | ~15 min"),
            (AnswerType::TimeOfDay, "p99 went from 2.4 s to 11 ms."),
            (AnswerType::Date, "Glute bridge march — 2 × 20"),
            (AnswerType::Date, "May I suggest the later train?"),
            (AnswerType::Period, "Taxis are cheap too (about €15)."),
            (AnswerType::Period, "Serves 4."),
            (AnswerType::Phone, "The city 10k on 2025-10-12."),
            (AnswerType::Phone, "About 3,000 km a year."),
            (AnswerType::Number, "Bake it until it sounds hollow."),
        ];
        for (kind, sentence) in misfits {
            assert!(!kind.fits(sentence), "{kind:?} does not fit {sentence:?}");
        }
    }
}
