//! A source's sentences: the units an answer is made of when it is taken from the notes.
//!
//! The `qa` training task's answers are sentences of a chunk as cut here, and extractive answering
//! ([`super::extract`]) chooses among the sentences of the retrieved chunks cut the same way, so the
//! model is asked to pick among replies of the form it was taught.

/// The sentences of a chunk's text, in order: its lines outside code blocks, less list markers,
/// headings, emphasis and lines of nothing but links (a link's text states no fact; a link inside
/// a sentence is left as its text), cut after `.`, `!` or `?` followed by a space and a word. A
/// table's row is one sentence, its cells joined by `" | "` (a row states its facts together:
/// "Ciabatta, focaccia | 80–90% | Pourable"); its header row and the line under it are left out.
pub fn sentences(text: &str) -> Vec<String> {
    let mut sentences = Vec::new();
    let mut in_code = false;
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    for (i, &line) in lines.iter().enumerate() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code || line.starts_with('#') || line.is_empty() {
            continue;
        }
        if line.starts_with('|') {
            let header = lines.get(i + 1).is_some_and(|next| is_table_rule(next));
            if !header && !is_table_rule(line) {
                let (row, states) = unlink(line);
                let cells: Vec<&str> = row.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
                if states && !cells.is_empty() {
                    sentences.push(cells.join(" | ").replace("**", ""));
                }
            }
            continue;
        }
        let (line, states) = unlink(line);
        if !states {
            continue;
        }
        let line = line
            .trim_start_matches(|c: char| matches!(c, '-' | '*' | '+' | '>') || c.is_whitespace())
            .replace("**", "");
        sentences.extend(split_sentences(strip_numbering(&line)));
    }
    sentences
}

/// The line with each markdown link `[text](target)` replaced by its text, and whether it holds
/// words outside the links.
fn unlink(line: &str) -> (String, bool) {
    let mut out = String::with_capacity(line.len());
    let mut outside = false;
    let mut rest = line;
    while let Some(mid) = rest.find("](") {
        let (Some(open), Some(close)) = (rest[..mid].rfind('['), rest[mid + 2..].find(')')) else {
            break;
        };
        let before = &rest[..open];
        outside |= before.chars().any(char::is_alphanumeric);
        out.push_str(before);
        out.push_str(&rest[open + 1..mid]);
        rest = &rest[mid + 2 + close + 1..];
    }
    outside |= rest.chars().any(char::is_alphanumeric);
    out.push_str(rest);
    (out, outside)
}

/// Whether `line` is the rule under a table's header (`| --- | :-: |`).
fn is_table_rule(line: &str) -> bool {
    line.starts_with('|') && line.contains('-') && line.chars().all(|c| matches!(c, '|' | '-' | ':' | ' '))
}

fn strip_numbering(line: &str) -> &str {
    let digits = line.chars().take_while(char::is_ascii_digit).count();
    match line[digits..].strip_prefix(". ") {
        Some(rest) if digits > 0 && digits <= 2 => rest,
        _ => line,
    }
}

/// Sentences of one line: cut after `.`, `!` or `?` followed by a space and a letter or digit.
fn split_sentences(line: &str) -> Vec<String> {
    let chars: Vec<(usize, char)> = line.char_indices().collect();
    let mut out = Vec::new();
    let mut start = 0;
    for w in 0..chars.len() {
        let (at, c) = chars[w];
        let next_word = chars.get(w + 2).is_some_and(|(_, n)| n.is_alphanumeric());
        if matches!(c, '.' | '!' | '?') && chars.get(w + 1).is_some_and(|(_, s)| *s == ' ') && next_word {
            out.push(line[start..=at].trim().to_string());
            start = at + 1;
        }
    }
    let rest = line[start..].trim();
    if !rest.is_empty() {
        out.push(rest.to_string());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_leave_out_code_headings_and_links_and_read_table_rows_whole() {
        let text = "# Prices\n- Stem steerer bolts: 5 Nm\nWe went early. Pena at 09:30 was empty.\n\
                    | a | 1 |\n```\nlet x = 42;\n```\n2. Simmer the lentils.\n[a](https://x.test)";
        assert_eq!(
            sentences(text),
            [
                "Stem steerer bolts: 5 Nm",
                "We went early.",
                "Pena at 09:30 was empty.",
                "a | 1",
                "Simmer the lentils."
            ]
        );
        let table = "| Bread | Hydration |\n| --- | :-: |\n| Ciabatta, focaccia | **80–90%** |\n|  |  |";
        assert_eq!(sentences(table), ["Ciabatta, focaccia | 80–90%"]);
        assert_eq!(sentences("v1.2 is out. 3.5 kg"), ["v1.2 is out.", "3.5 kg"]);
        let linked = "- [Inbox](Inbox%20a0.md)\n[a](https://x.test), [b](https://y.test)\n\
                      - Costs £90. See [the guide](https://x.test/a) for more.\n\
                      - [Boiler](B.md) — annual service";
        assert_eq!(
            sentences(linked),
            ["Costs £90.", "See the guide for more.", "Boiler — annual service"]
        );
    }
}
