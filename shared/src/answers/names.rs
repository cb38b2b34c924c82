//! The names a question gives must be in what answers it.
//!
//! "How much did our flights to Kyoto and Osaka cost in 2022?" is close, by meaning, to the Lisbon
//! trip's budget row "Flights | €310": same kind of fact, same topic, and neither the embedder nor
//! the 135M model's channel ([`super::extract`]) weighs that the row is about another trip. A
//! person would: the question names Kyoto, Osaka and 2022, and a source that never mentions them
//! does not answer it. So the names a question gives (a capitalised word inside it, a number, an
//! identifier such as `max_connections`) must each be stated in a source for it to answer:
//! extraction keeps only sentences whose document (what was retrieved of it: titles, headings,
//! address and text) states every one ([`all_stated`], [`documents`]), and the service declines
//! to generate when one is stated in no retrieved source at all ([`stated_nowhere`]).
//!
//! A name is looked for where a word starts, ignoring case and accents, as a prefix ("Postgres"
//! finds "PostgreSQL", "Kyoto" finds "Kyoto's"); a number stands alone ("210" is not in "2100");
//! a month also finds its abbreviation and an ISO date in it ("October" finds "2025-10-12" and
//! "2025-10"); a
//! hyphenated name also finds itself joined or spaced ("Wi-Fi", "WiFi", "Wi Fi"), a qualified one
//! its last part (`hnsw.ef_search` finds `ef_search`), an acronym a title's initials ("DDIA"). What is not a
//! name: the first word of a sentence, one letter, `I` and the function words that take a capital
//! in titles, and every capital of a question in title case or capitals (every word but `of`,
//! `the` and their like capitalised: a capital then tells nothing). The rule is English's; `ENGRAM_NAMES_MUST_MATCH=false` turns it off.

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use super::extract::context;
use crate::vectors::SearchHit;

/// Words that take a capital without being names (inside titles, or always).
const NOT_NAMES: &[&str] = &[
    "i", "i'm", "i've", "i'd", "i'll", "the", "a", "an", "and", "or", "of", "in", "on", "at", "to", "for", "by",
    "with", "from", "my", "our", "is", "are", "was", "were", "do", "does", "did", "what", "when", "where", "which",
    "who", "how", "why", "ok", "okay", "can", "could", "would", "should", "will", "shall", "might", "must", "please",
    "tell", "show", "give", "also", "but", "so", "then", "hey", "hi", "hello", "thanks", "plus", "same", "engram",
    "dr", "mr", "mrs", "ms", "st", "prof",
];

/// Words before a number that make it a span or a rank the notes need not state ("the last 30
/// days", "my top 10"), and after it.
const NOT_NUMBER_BEFORE: &[&str] = &["last", "past", "next", "top", "first", "within", "every", "per"];
const NOT_NUMBER_AFTER: &[&str] = &["days", "weeks", "months", "years", "words", "times"];

const WEEKDAYS: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

/// Words title case leaves in lower case.
const LOWER_IN_TITLES: &[&str] = &[
    "a", "an", "the", "and", "or", "but", "nor", "of", "in", "on", "at", "to", "for", "by", "with", "from", "as", "vs",
];

const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// A name the question gives, and the forms it may take in a source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    /// As the question writes it.
    pub asked: String,
    /// What is looked for: folded (lower case, no accents) texts found where a word starts.
    forms: Vec<String>,
    /// A number: not followed by a digit where found.
    number: bool,
    /// A month (1-12): an ISO date in that month counts as the name.
    month: Option<u32>,
    /// A hyphenated name's parts: stated together, they state it ("Kyoto-Osaka").
    parts: Vec<String>,
}

impl Name {
    /// Whether `text`, folded by [`fold`], states the name.
    pub fn stated_in(&self, folded: &str) -> bool {
        // The text's hyphens left out too: "WiFi" is stated by "Wi-Fi".
        let joined = folded.replace('-', "");
        let stated = |form: &str| found(folded, form, self.number) || found(&joined, form, self.number);
        // Each part a whole word: "Wi-Fi" is not stated by "with" and "first".
        let part_stated = |part: &str| {
            folded
                .match_indices(part)
                .any(|(at, _)| word_at(folded, at, part.len()))
        };
        self.forms.iter().any(|form| stated(form))
            || self.month.is_some_and(|month| iso_date_in_month(folded, month))
            || (!self.parts.is_empty() && self.parts.iter().all(|part| part_stated(part)))
    }
}

/// Lower case without accents ("Graça" → "graca"), `’` as `'`, and no thousands separators
/// ("1,200" → "1200"): what both sides are compared as.
pub fn fold(text: &str) -> String {
    let chars: Vec<char> = text
        .nfd()
        .filter(|c| !is_combining_mark(*c))
        .flat_map(char::to_lowercase)
        .map(|c| if c == '’' { '\'' } else { c })
        .collect();
    let digit = |i: usize| chars.get(i).is_some_and(char::is_ascii_digit);
    chars
        .iter()
        .enumerate()
        .filter(|&(i, &c)| !(c == ',' && i > 0 && digit(i - 1) && digit(i + 1)))
        .map(|(_, &c)| c)
        .collect()
}

/// Longer words are not names (a request's text may be one long word).
const MAX_NAME_CHARS: usize = 64;

/// Most names taken from one question, the first ones: a question names a few things, and a
/// request's text is bounded only by its size, so the search for them is bounded here.
pub const MAX_NAMES: usize = 16;

/// The names `question` gives, each once, in order, at most [`MAX_NAMES`].
pub fn names(question: &str) -> Vec<Name> {
    let words = words(question);
    // In title case or capitals every word but the small function words has a capital: a capital
    // then tells nothing.
    let telling: Vec<&str> = words
        .iter()
        .filter(|(w, opens)| {
            let folded = fold(w);
            !opens
                && w.chars().any(char::is_alphabetic)
                && !LOWER_IN_TITLES.contains(&folded.as_str())
                && !folded.starts_with("i'")
                && folded != "i"
        })
        .map(|(w, _)| w.as_str())
        .collect();
    let capitals_mean_names = telling.len() < 3 || telling.iter().any(|w| !starts_upper(w));
    let mut out: Vec<Name> = Vec::new();
    for (i, (word, opens_sentence)) in words.iter().enumerate() {
        let Some(name) = name(word, *opens_sentence, capitals_mean_names) else {
            continue;
        };
        let neighbour = |at: Option<usize>, list: &[&str]| {
            at.and_then(|at| words.get(at))
                .is_some_and(|(w, _)| list.contains(&fold(w).as_str()))
        };
        if name.number && (neighbour(i.checked_sub(1), NOT_NUMBER_BEFORE) || neighbour(Some(i + 1), NOT_NUMBER_AFTER)) {
            continue;
        }
        if !out.iter().any(|seen| seen.forms == name.forms) {
            out.push(name);
            if out.len() == MAX_NAMES {
                break;
            }
        }
    }
    out
}

/// Whether `text` (a source's title, headings and text) states every one of `names`.
pub fn all_stated(names: &[Name], text: &str) -> bool {
    if names.is_empty() {
        return true;
    }
    let folded = fold(text);
    names.iter().all(|name| name.stated_in(&folded))
}

/// The first of `names` that none of `sources` states, if one is missing.
pub fn unstated<'a, S: AsRef<str>>(names: &'a [Name], sources: &[S]) -> Option<&'a Name> {
    if names.is_empty() {
        return None;
    }
    let folded: Vec<String> = sources.iter().map(|s| fold(s.as_ref())).collect();
    names
        .iter()
        .find(|name| !folded.iter().any(|text| name.stated_in(text)))
}

/// The first name `question` gives that none of `hits` states (title, headings, address or
/// text), if one is missing: the notes retrieved do not speak of it.
pub fn stated_nowhere(question: &str, hits: &[SearchHit]) -> Option<String> {
    let asked = names(question);
    let sources: Vec<String> = hits.iter().map(read).collect();
    unstated(&asked, &sources).map(|name| name.asked.clone())
}

/// For each of `hits`, what was retrieved of its document: every retrieved chunk of the same
/// document, read by [`read`]. A note's subject is named once ("Gloria" in the starter's
/// schedule, "Worcester Bosch" in the boiler's), not in every chunk of it.
pub fn documents(hits: &[SearchHit]) -> Vec<String> {
    hits.iter()
        .map(|hit| {
            hits.iter()
                .filter(|other| other.chunk.doc_id == hit.chunk.doc_id)
                .map(read)
                .collect::<Vec<_>>()
                .join("\n")
        })
        .collect()
}

/// A chunk as names are looked for in it: its title and headings, its address (a question may
/// name where a note was kept: "my Notion page"), the initials of its title (an acronym: "DDIA"
/// for "Designing Data-Intensive Applications"), then its text.
fn read(hit: &SearchHit) -> String {
    let initials: String = hit
        .chunk
        .title
        .split(|c: char| c.is_whitespace() || c == '-')
        .filter_map(|word| word.chars().find(|c| c.is_alphanumeric()))
        .collect();
    format!(
        "{}\n{}\n{initials}\n{}",
        context(&hit.chunk.title, &hit.chunk.heading_path),
        hit.chunk.url,
        hit.chunk.text
    )
}

/// The question's words (letters, digits and the `-`, `_`, `'`, `.` inside them), each with
/// whether it opens a sentence.
fn words(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut opens = true;
    let mut next_opens = true;
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let next = chars.get(i + 1);
        let inner = (matches!(c, '-' | '_' | '\'' | '’' | '.')
            && !current.is_empty()
            && next.is_some_and(|n| n.is_alphanumeric()))
            || (c == ',' && current.ends_with(|p: char| p.is_ascii_digit()) && next.is_some_and(char::is_ascii_digit));
        if c.is_alphanumeric() || inner {
            if current.is_empty() {
                opens = next_opens;
                next_opens = false;
            }
            current.push(if c == '’' { '\'' } else { c });
            continue;
        }
        // "Dr. Smith", "Ursula K. Le Guin": a short capitalised word's full stop ends no sentence.
        let abbreviation = c == '.' && current.chars().count() <= 3 && starts_upper(&current);
        if !current.is_empty() {
            out.push((std::mem::take(&mut current), opens));
        }
        if matches!(c, '.' | '?' | '!' | ':' | '\n') && !abbreviation {
            next_opens = true;
        }
    }
    if !current.is_empty() {
        out.push((current, opens));
    }
    out
}

fn starts_upper(word: &str) -> bool {
    word.chars().next().is_some_and(char::is_uppercase)
}

/// The name `word` gives, if it is one.
fn name(word: &str, opens_sentence: bool, capitals_mean_names: bool) -> Option<Name> {
    let word = word.strip_suffix("'s").unwrap_or(word);
    let folded = fold(word);
    if !(2..=MAX_NAME_CHARS).contains(&word.chars().count()) || NOT_NAMES.contains(&folded.as_str()) {
        return None;
    }
    // A number, alone or opening a word ("2022", "10k", "40-litre", "1,200"): its first number,
    // without leading zeros ("09:30" finds "9:30").
    if word.starts_with(|c: char| c.is_ascii_digit()) {
        let plain: String = word.chars().filter(|&c| c != ',').collect();
        return first_number(&plain).map(|number| {
            let trimmed = number.trim_start_matches('0');
            let number = if trimmed.is_empty() || trimmed.starts_with('.') {
                format!("0{trimmed}")
            } else {
                trimmed.to_string()
            };
            Name {
                asked: word.to_string(),
                forms: vec![number],
                number: true,
                month: None,
                parts: Vec::new(),
            }
        });
    }
    // A code or a model: `max_connections`, `iPhone`, `H100`, `v1.2`.
    let identifier = word.contains('_')
        || word.chars().any(|c| c.is_ascii_digit())
        || word
            .chars()
            .zip(word.chars().skip(1))
            .any(|(a, b)| a.is_lowercase() && b.is_uppercase());
    let capitalised = starts_upper(word) && !opens_sentence && capitals_mean_names;
    if !(identifier || capitalised) {
        return None;
    }
    let mut forms = vec![folded.clone()];
    // A qualified name is found by its last part too: `hnsw.ef_search` by `ef_search`.
    if let Some((_, last)) = folded.rsplit_once('.')
        && last.chars().count() >= 3
        && last.chars().any(char::is_alphabetic)
    {
        forms.push(last.to_string());
    }
    let mut parts = Vec::new();
    if folded.contains('-') {
        forms.push(folded.replace('-', ""));
        forms.push(folded.replace('-', " "));
        parts = folded.split('-').map(str::to_string).collect();
        if parts.iter().any(|part| part.chars().count() < 2) {
            parts.clear();
        }
    }
    // "the Smiths" finds "Smith".
    if capitalised && folded.len() > 3 && folded.ends_with('s') && !folded.ends_with("ss") {
        forms.push(folded[..folded.len() - 1].to_string());
    }
    let month = MONTHS.iter().position(|m| *m == folded).map(|i| i as u32 + 1);
    if month.is_some() {
        forms.push(folded[..3].to_string());
    }
    // "Sundays" finds "Sun": weekdays are written short too.
    let day = folded.strip_suffix('s').unwrap_or(&folded);
    if WEEKDAYS.contains(&day) {
        forms.push(day[..3].to_string());
    }
    Some(Name {
        asked: word.to_string(),
        forms,
        number: false,
        month,
        parts,
    })
}

/// The number `word` opens with, with a decimal part if it has one ("3.5km" → "3.5"), when it has
/// at least two digits or is the whole word.
fn first_number(word: &str) -> Option<String> {
    let rest = word;
    let mut end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    if rest[end..].starts_with('.') && rest[end + 1..].starts_with(|c: char| c.is_ascii_digit()) {
        let decimals = &rest[end + 1..];
        end += 1 + decimals.find(|c: char| !c.is_ascii_digit()).unwrap_or(decimals.len());
    }
    let number = &rest[..end];
    let digits = number.chars().filter(char::is_ascii_digit).count();
    (digits >= 2 || number.len() == word.len()).then(|| number.to_string())
}

/// Whether `form` occurs in `text` where a word starts (and, for a number, is not followed by a
/// digit or a decimal part).
fn found(text: &str, form: &str, number: bool) -> bool {
    text.match_indices(form).any(|(at, _)| {
        // A number may be written with leading zeros ("09:30" states "9").
        let start = if number {
            at - text[..at].bytes().rev().take_while(|&b| b == b'0').count()
        } else {
            at
        };
        let before = text[..start].chars().next_back();
        let starts_word = before.is_none_or(|c| !c.is_alphanumeric());
        let after = &text[at + form.len()..];
        let ends_number = !number
            || !(after.starts_with(|c: char| c.is_ascii_digit())
                || (after.starts_with('.') && after[1..].starts_with(|c: char| c.is_ascii_digit())));
        starts_word && ends_number
    })
}

/// Whether `text[at..at + len]` is a whole word.
fn word_at(text: &str, at: usize, len: usize) -> bool {
    let alone = |c: Option<char>| c.is_none_or(|c| !c.is_alphanumeric());
    alone(text[..at].chars().next_back()) && alone(text[at + len..].chars().next())
}

/// Whether `text` holds an ISO date or month (`2025-10-12`, `2025-10`) in `month`.
fn iso_date_in_month(text: &str, month: u32) -> bool {
    let bytes = text.as_bytes();
    let wanted = format!("{month:02}");
    (0..bytes.len().saturating_sub(6)).any(|i| {
        let date = &bytes[i..i + 7];
        date[..4].iter().all(u8::is_ascii_digit)
            && date[4] == b'-'
            && &date[5..7] == wanted.as_bytes()
            && (i == 0 || !bytes[i - 1].is_ascii_digit())
            && bytes.get(i + 7).is_none_or(|next| !next.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(question: &str) -> Vec<String> {
        names(question).into_iter().map(|n| n.asked).collect()
    }

    #[test]
    fn names_are_capitalised_words_inside_numbers_and_identifiers() {
        assert_eq!(
            asked("How much did our flights to Kyoto and Osaka cost in 2022?"),
            ["Kyoto", "Osaka", "2022"]
        );
        assert_eq!(
            asked("What is max_connections set to on the search Postgres cluster?"),
            ["max_connections", "Postgres"]
        );
        assert_eq!(
            asked("Which edition of The Pragmatic Programmer am I reading?"),
            ["Pragmatic", "Programmer"]
        );
        assert_eq!(asked("Is &mut T covariant or invariant in T?"), Vec::<String>::new());
        assert_eq!(asked("How much did I pay for my 210 mm gyuto?"), ["210"]);
        assert_eq!(asked("What's Maya's phone number? Ask Maya."), ["Maya"]);
        assert_eq!(asked("what does the ebook app on my iPhone cost"), ["iPhone"]);
        assert_eq!(
            asked("How many km is day 2?"),
            Vec::<String>::new(),
            "one digit is no name"
        );
    }

    #[test]
    fn what_the_review_found() {
        let stated = |question: &str, text: &str| all_stated(&names(question), text);
        assert!(stated("What did O’Brien say?", "Siobhan O’Brien said yes"));
        assert!(stated("What did O'Brien say?", "Siobhan O’Brien said yes"));
        assert!(stated("Did I pay 1,200 for the sofa?", "Sofa: €1200"));
        assert!(stated("Did I pay 1200 for the sofa?", "Sofa: €1,200"));
        assert!(stated("Is the bakery open at 09:30?", "opens 9:30"));
        assert!(stated("Is the bakery open at 9:30?", "opens 09:30"));
        assert!(stated("Is the ratio 0.75 or more?", "a ratio of 0.75"));
        assert!(!stated("Is the ratio 0.75 or more?", "a ratio of 10.75"));
        assert_eq!(
            asked("What did I spend in the last 30 days on my top 10 books?"),
            Vec::<String>::new()
        );
        assert!(stated("What is the WiFi password?", "Wi-Fi: hunter2"));
        assert!(stated("How long is the Kyoto-Osaka train?", "Kyoto to Osaka: 15 min"));
        assert!(
            !stated("What is the Wi-Fi password?", "Come with us first"),
            "parts are whole words"
        );
        assert_eq!(
            asked("Hey, Can you tell me when it opens? Hi Engram."),
            Vec::<String>::new()
        );
        assert_eq!(asked("When did I see Dr. Smith?"), ["Smith"]);
        assert!(stated(
            "Is the bakery open on Sundays?",
            "Mon-Sat 07:00-19:00, Sun 08:00-13:00"
        ));
        assert_eq!(asked("What did I think about “Dune”?"), ["Dune"]);
        assert_eq!(asked("Where's Kyoto Station?"), ["Kyoto", "Station"]);
        assert_eq!(asked(&format!("Where is {}?", "X".repeat(100))), Vec::<String>::new());
    }

    #[test]
    fn a_long_question_gives_at_most_max_names() {
        let long = format!(
            "Where are {}?",
            (0..10_000).map(|i| format!("Town{i}")).collect::<Vec<_>>().join(", ")
        );
        let asked = names(&long);
        assert_eq!(asked.len(), MAX_NAMES);
        assert_eq!(asked[0].asked, "Town0");
    }

    #[test]
    fn a_question_in_title_case_or_capitals_gives_only_its_numbers_and_identifiers() {
        assert_eq!(asked("How Much Did The Pena Palace Tickets Cost In 2025?"), ["2025"]);
        assert_eq!(asked("WHAT TIME DOES THE BAKERY OPEN"), Vec::<String>::new());
        assert_eq!(asked("Where is Kyoto Station?"), ["Kyoto", "Station"]);
        assert_eq!(asked("What did I do in October?"), ["October"]);
    }

    #[test]
    fn a_name_is_found_at_a_word_start_ignoring_case_and_accents() {
        let stated = |question: &str, text: &str| all_stated(&names(question), text);
        assert!(stated(
            "When does the bakery on Rua da Graca open?",
            "Padaria, Rua da Graça: opens 07:00"
        ));
        assert!(stated("Which index does Postgres use?", "PostgreSQL's B-tree"));
        assert!(!stated(
            "What did the flights to Kyoto cost?",
            "Lisbon trip 2025 > Budget: Flights | €310"
        ));
        assert!(
            !stated("Is the Tokyo flat booked?", "a trip to Kyotokyo"),
            "a word's start only"
        );
        assert!(stated("What is the Wi-Fi password?", "wifi: hunter2"));
        assert!(stated("Who are the Smiths?", "Mr Smith"));
        assert!(stated("How much did I pay for my 210 mm gyuto?", "210mm gyuto, €180"));
        assert!(!stated("How much did I pay for my 210 mm gyuto?", "2100 mm"));
        assert!(!stated("How much did I pay for my 210 mm gyuto?", "a 210.5 mm blade"));
        assert!(stated("Which release is v1.2?", "v1.2 came out in May"));
        assert!(!stated("Which release is v1.2?", "version 1.2 came out in May"));
        assert!(stated("What runs on the H100?", "An H100 box"));
        assert!(stated("Does it build for x86_64?", "targets: x86_64, aarch64"));
        assert!(stated(
            "What recall did hnsw.ef_search give?",
            "A higher `ef_search` gives better recall"
        ));
        assert!(stated(
            "What was my time at the city 10k in October?",
            "city 10k on 2025-10-12"
        ));
        assert!(stated("What did I do in October?", "Oct 3: planted garlic"));
        assert!(!stated("What did I do in October?", "2025-11-12"));
        assert!(stated("What came out in April 2025?", "2025-04: emptied the hatch"));
        assert!(!stated("What came out in April 2025?", "2025-045"));
        assert!(stated("How long is the walk?", "anything"), "no names, nothing to find");
    }

    fn hit(doc: &str, title: &str, text: &str) -> SearchHit {
        SearchHit {
            id: uuid::Uuid::new_v4(),
            chunk: crate::vectors::Chunk {
                doc_id: doc.to_string(),
                position: 0,
                source: crate::documents::Source::Notion,
                title: title.to_string(),
                url: format!("https://www.notion.so/{doc}"),
                heading_path: vec![],
                text: text.to_string(),
            },
            score: 1.0,
        }
    }

    #[test]
    fn a_name_may_be_stated_in_another_retrieved_chunk_of_the_same_document() {
        let hits = [
            hit("levain", "Levain schedule", "Feed with water at 27 °C."),
            hit("levain", "Levain schedule", "Gloria is my starter."),
            hit("bread", "Sourdough Bread", "Gloria? No: the dough rests 45 minutes."),
        ];
        let read = documents(&hits);
        let asked = names("How warm is the water when I feed Gloria?");
        assert!(all_stated(&asked, &read[0]), "{:?}", read[0]);
        let asked = names("How long does the Levain schedule's dough rest?");
        assert!(
            !all_stated(&asked, &read[2]),
            "another document's title is not this one's"
        );
        let asked = names("What do my DDIA notes say about snapshots? Is it a Notion page?");
        let ddia = [hit(
            "ddia",
            "Designing Data-Intensive Applications",
            "Snapshot isolation.",
        )];
        assert!(all_stated(&asked, &documents(&ddia)[0]), "initials and address count");
        assert_eq!(
            stated_nowhere("What is in my DDIA notes?", &hits).as_deref(),
            Some("DDIA")
        );
    }

    #[test]
    fn the_name_no_source_states_is_named() {
        let asked = names("What is the Wi-Fi password at the Graça apartment?");
        let missing = unstated(&asked, &["Graça apartment, Lisbon: keys in the box", "Wi fi"]);
        assert_eq!(missing, None);
        let missing = unstated(&asked, &["Graça apartment, Lisbon: keys in the box"]);
        assert_eq!(missing.map(|n| n.asked.as_str()), Some("Wi-Fi"));
    }
}
