//! Which numbered sources an answer cites.
//!
//! The prompt asks for citations as `[1]`, `[2]`; models also write `[1, 3]`, `[1][2]`, `[1-2]`
//! and `[Source 2]`. Numbers outside the sources given are not citations (a model that invents
//! `[7]` of four sources cites nothing by it).

use std::collections::BTreeSet;

/// `answer` citing source `number`: the marker before its closing punctuation, as the `qa`
/// training rows and extractive answers write it.
pub fn cite(answer: &str, number: usize) -> String {
    let answer = answer.trim();
    match answer.strip_suffix(['.', '!']) {
        Some(body) => format!("{} [{number}]{}", body.trim_end(), &answer[body.len()..]),
        None => format!("{answer} [{number}]"),
    }
}

/// The source numbers (1-based, at most `sources`) that `answer` cites.
pub fn cited(answer: &str, sources: usize) -> BTreeSet<usize> {
    let mut numbers = BTreeSet::new();
    let mut rest = answer;
    while let Some(open) = rest.find('[') {
        let after = &rest[open + 1..];
        let Some(close) = after.find(']') else { break };
        let inside = &after[..close];
        // A citation is short; a long bracket is prose (or markdown link text).
        if inside.len() <= 32 {
            for number in numbers_in(inside) {
                if (1..=sources).contains(&number) {
                    numbers.insert(number);
                }
            }
        }
        rest = &after[close + 1..];
    }
    numbers
}

/// The numbers a bracket's inside lists: `1`, `1, 3`, `1-3`, `Source 2`, `sources 1 and 2`.
fn numbers_in(inside: &str) -> Vec<usize> {
    let inside = inside.trim().to_lowercase();
    let inside = inside
        .strip_prefix("sources")
        .or_else(|| inside.strip_prefix("source"))
        .unwrap_or(&inside);
    let mut found = Vec::new();
    for part in inside.split([',', ';']).flat_map(|p| p.split(" and ")) {
        let part = part.trim();
        if let Some((from, to)) = part.split_once(['-', '–']) {
            if let (Ok(from), Ok(to)) = (from.trim().parse::<usize>(), to.trim().parse::<usize>())
                && from <= to
                && to - from < 16
            {
                found.extend(from..=to);
                continue;
            }
            return Vec::new();
        }
        match part.parse::<usize>() {
            Ok(number) => found.push(number),
            Err(_) => return Vec::new(), // not a citation: `[note]`, `[x]`
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(numbers: &[usize]) -> BTreeSet<usize> {
        numbers.iter().copied().collect()
    }

    #[test]
    fn every_way_of_citing_is_read() {
        assert_eq!(cited("Tickets were €14 [2].", 4), set(&[2]));
        assert_eq!(cited("It simmers 25 minutes [1][3].", 4), set(&[1, 3]));
        assert_eq!(cited("See [1, 2] and [Source 4].", 4), set(&[1, 2, 4]));
        assert_eq!(cited("Both [1-3] agree.", 4), set(&[1, 2, 3]));
        assert_eq!(cited("Per [sources 1 and 2].", 4), set(&[1, 2]));
    }

    #[test]
    fn what_is_not_a_citation_is_ignored() {
        assert_eq!(cited("No sources here.", 4), set(&[]));
        assert_eq!(cited("An invented [7] and a zero [0].", 4), set(&[]));
        assert_eq!(cited("A [note] and [x] and a [link](https://a.b).", 4), set(&[]));
        assert_eq!(cited("[1, x]", 4), set(&[]));
        assert_eq!(cited("unclosed [1", 4), set(&[]));
        assert_eq!(cited("[1-99999999999]", 4), set(&[]));
        assert_eq!(cited("[3-1]", 4), set(&[]));
    }
}
