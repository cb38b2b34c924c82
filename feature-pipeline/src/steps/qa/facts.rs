//! Facts in a text, by a documented rule: what a kept answer must carry and must not invent.
//!
//! - **Numbers**: runs of digits with inner `.`, `,` or `:` between digits (`4.20`, `1,660`,
//!   `7:30`), thousands commas dropped (`1,660` is `1660`). Currency signs and units around them do
//!   not matter (`€4.20` and `4.20 euros` carry the same number).
//! - **Names**: capitalized words of two letters or more that do not open a sentence, a line or a
//!   list item (`Sintra`, `Pena`, `Maria`), compared without case.
//!
//! Crude, and meant to be: it runs on a weak teacher's output and only has to catch an answer that
//! names a number or a place its passage does not.

use std::collections::BTreeSet;

/// The numbers in `text`, normalized (see the module's rule).
pub fn numbers(text: &str) -> BTreeSet<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut found = BTreeSet::new();
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        let mut number = String::new();
        while i < chars.len() {
            let c = chars[i];
            if c.is_ascii_digit() {
                number.push(c);
            } else if matches!(c, '.' | ',' | ':') && chars.get(i + 1).is_some_and(char::is_ascii_digit) {
                if c != ',' {
                    number.push(c);
                }
            } else {
                break;
            }
            i += 1;
        }
        // A citation marker (`[1]`) is not a fact.
        let cited = start > 0 && chars[start - 1] == '[' && chars.get(i) == Some(&']');
        if !cited {
            found.insert(number);
        }
    }
    found
}

/// The names in `text`, lowercased (see the module's rule).
pub fn names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let mut opens = true;
        for raw in line.split_whitespace() {
            let word: String = raw.trim_matches(|c: char| !c.is_alphanumeric()).to_string();
            let starts_upper = word.chars().next().is_some_and(char::is_uppercase);
            if !opens && starts_upper && word.chars().count() >= 2 && word.chars().all(char::is_alphabetic) {
                found.insert(word.to_lowercase());
            }
            // A list marker or heading hash does not end the opening; a word does.
            let numbered =
                raw.ends_with('.') && raw.len() <= 3 && raw.chars().next().is_some_and(|c| c.is_ascii_digit());
            let marker = numbered || raw.chars().all(|c| matches!(c, '-' | '*' | '#' | '>' | '+'));
            if !marker {
                opens = raw.ends_with(['.', '!', '?', ':']);
            }
        }
    }
    found
}

/// The lowercased words of `text`.
pub fn words(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// The facts of `answer` missing from `passage` (its numbers and words): an answer with any is
/// making them up.
pub fn unsupported(answer: &str, passage: &str) -> Vec<String> {
    let (passage_numbers, passage_words) = (numbers(passage), words(passage));
    let mut missing: Vec<String> = numbers(answer)
        .into_iter()
        .filter(|n| !passage_numbers.contains(n))
        .collect();
    missing.extend(names(answer).into_iter().filter(|n| !passage_words.contains(n)));
    missing
}

/// The facts of `answer` that `question` does not already hold: what the answer tells.
pub fn told(answer: &str, question: &str) -> Vec<String> {
    let (question_numbers, question_words) = (numbers(question), words(question));
    let mut told: Vec<String> = numbers(answer)
        .into_iter()
        .filter(|n| !question_numbers.contains(n))
        .collect();
    told.extend(names(answer).into_iter().filter(|n| !question_words.contains(n)));
    told
}

/// How many distinct facts `text` holds (how worth asking about a chunk is).
pub fn count(text: &str) -> usize {
    numbers(text).len() + names(text).len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_ignore_currency_and_thousands_commas() {
        let found = numbers("Tickets: €14.50 each, 1,660 visitors, open 9:30-18:00. Total 3 [2].");
        let expected: BTreeSet<String> = ["14.50", "1660", "9:30", "18:00", "3"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn names_skip_the_word_that_opens_a_sentence_or_line() {
        let found = names("We took the train to Sintra. Pena Palace was busy.\n- Bring water for Maria\n# Notes");
        let expected: BTreeSet<String> = ["sintra", "palace", "maria"].iter().map(|s| s.to_string()).collect();
        assert_eq!(
            found, expected,
            "Pena opens a sentence, Bring a list item, Notes a heading"
        );
    }

    #[test]
    fn an_answer_inventing_a_number_or_a_place_is_caught() {
        let passage = "The Pena Palace ticket cost €14 and we went with Maria.";
        assert!(unsupported("The ticket cost €14 [1].", passage).is_empty());
        assert_eq!(unsupported("The ticket cost €1,660 [1].", passage), ["1660"]);
        assert_eq!(unsupported("It cost 14 euros in Lisbon.", passage), ["lisbon"]);
        assert_eq!(
            told("The ticket cost €14.", "How much did the Pena Palace ticket cost?"),
            ["14"]
        );
        assert!(told("The Pena Palace ticket.", "How much did the Pena Palace ticket cost?").is_empty());
    }
}
