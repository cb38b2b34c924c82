//! ROUGE-1, ROUGE-2 and ROUGE-L, computed exactly as the Python ecosystem computes them.
//!
//! The fine-tuned model's evaluation reports ROUGE so that its numbers can be set beside published
//! ones, and published ROUGE almost always comes from Google's `rouge-score` package
//! (`RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)`). Small differences in
//! tokenizing or stemming move ROUGE by whole points, so this module reproduces that package
//! rather than the metric's paper:
//!
//! - tokenizing follows `rouge_score/tokenize.py` (`DefaultTokenizer`): Unicode lowercasing, every
//!   run of characters outside `[a-z0-9]` becomes a space, split on whitespace, and tokens longer
//!   than 3 characters go through the Porter stemmer. Accented letters, emoji and non-Latin
//!   scripts therefore vanish, and `€1,660` reads as the two tokens `1` and `660`;
//! - stemming is NLTK's `PorterStemmer()` (`nltk/stem/porter.py`) in its default
//!   `NLTK_EXTENSIONS` mode, the one `rouge_score` constructs: Porter's 1980 algorithm with Martin
//!   Porter's later changes, NLTK's own rules and its pool of irregular forms;
//! - scoring follows `rouge_score/rouge_scorer.py`: n-gram overlaps clipped by count, precision
//!   over the prediction and recall over the target (each count at least 1 for ROUGE-N), the
//!   longest common subsequence of the two token lists for ROUGE-L (zero when either is empty), and
//!   F = 2PR/(P+R), or 0 when P + R = 0 (`rouge_score/scoring.py`).
//!
//! `feature-pipeline/tests/fixtures/rouge.jsonl` and `porter.tsv` hold the Python packages' own
//! outputs (`scripts/reference/make_rouge_fixture.py` regenerates them); the tests below check this
//! module against them.

use std::collections::HashMap;

/// Precision, recall and F-measure of one ROUGE variant, as `rouge_score.scoring.Score`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Score {
    /// Share of the prediction's n-grams (or tokens, for ROUGE-L) found in the target.
    pub precision: f64,
    /// Share of the target's n-grams (or tokens, for ROUGE-L) found in the prediction.
    pub recall: f64,
    /// Harmonic mean of precision and recall; 0 when both are 0.
    pub fmeasure: f64,
}

impl Score {
    fn new(precision: f64, recall: f64) -> Self {
        // Same expression, in the same order, as `rouge_score.scoring.fmeasure`, so that results
        // agree to the last bit.
        let fmeasure = if precision + recall > 0.0 {
            2.0 * precision * recall / (precision + recall)
        } else {
            0.0
        };
        Self {
            precision,
            recall,
            fmeasure,
        }
    }
}

/// Splits `text` into tokens the way `rouge_score.tokenize.tokenize` does, stemming tokens longer
/// than 3 characters with NLTK's Porter stemmer when `stem` is set.
pub fn tokenize(text: &str, stem: bool) -> Vec<String> {
    // Python's `str.lower()` and Rust's `to_lowercase` agree on the characters that matter here:
    // the only non-ASCII ones whose lowercase holds an ASCII letter are `İ` ("i" + U+0307) and the
    // Kelvin sign ("k").
    text.to_lowercase()
        .split(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit()))
        // rouge_score drops the tokens that fail `^[a-z0-9]+$` after stemming; after the
        // substitution above only empty ones can, and the stem of a non-empty ASCII alphanumeric
        // token is one too, so dropping empty tokens first is the same filter.
        .filter(|token| !token.is_empty())
        .map(|token| {
            if stem && token.len() > 3 {
                porter::stem(token)
            } else {
                token.to_owned()
            }
        })
        .collect()
}

/// ROUGE-N of `prediction` against `target` (`rouge1` for `n = 1`, `rouge2` for `n = 2`), with
/// stemming, as `RougeScorer([f"rouge{n}"], use_stemmer=True).score(target, prediction)`.
///
/// # Panics
///
/// When `n` is 0, for which `rouge_score` raises `ValueError` as well.
pub fn rouge_n(target: &str, prediction: &str, n: usize) -> Score {
    assert!(n > 0, "ROUGE-N needs n > 0");
    let target = tokenize(target, true);
    let prediction = tokenize(prediction, true);
    let target_ngrams = ngram_counts(&target, n);
    let prediction_ngrams = ngram_counts(&prediction, n);

    let overlap: usize = target_ngrams
        .iter()
        .map(|(ngram, &count)| count.min(prediction_ngrams.get(ngram).copied().unwrap_or(0)))
        .sum();
    let target_count: usize = target_ngrams.values().sum();
    let prediction_count: usize = prediction_ngrams.values().sum();

    Score::new(
        overlap as f64 / prediction_count.max(1) as f64,
        overlap as f64 / target_count.max(1) as f64,
    )
}

/// ROUGE-L (`rougeL`, over the whole text, not the per-line `rougeLsum`) of `prediction` against
/// `target`, with stemming: precision and recall are the length of the longest common subsequence
/// of tokens over the prediction's and the target's length.
pub fn rouge_l(target: &str, prediction: &str) -> Score {
    let target = tokenize(target, true);
    let prediction = tokenize(prediction, true);
    if target.is_empty() || prediction.is_empty() {
        return Score::default();
    }
    let lcs = lcs_length(&target, &prediction);
    Score::new(lcs as f64 / prediction.len() as f64, lcs as f64 / target.len() as f64)
}

/// How often each n-gram of `tokens` occurs.
fn ngram_counts(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for ngram in tokens.windows(n) {
        *counts.entry(ngram).or_insert(0) += 1;
    }
    counts
}

/// Length of the longest common subsequence of `a` and `b`: `rouge_score`'s `_lcs_table`, keeping
/// only the previous row of the table.
fn lcs_length(a: &[String], b: &[String]) -> usize {
    let mut previous = vec![0usize; b.len() + 1];
    let mut current = vec![0usize; b.len() + 1];
    for x in a {
        for (j, y) in b.iter().enumerate() {
            current[j + 1] = if x == y {
                previous[j] + 1
            } else {
                previous[j + 1].max(current[j])
            };
        }
        std::mem::swap(&mut previous, &mut current);
    }
    previous[b.len()]
}

/// NLTK's Porter stemmer (`nltk.stem.porter.PorterStemmer`) in its default `NLTK_EXTENSIONS` mode,
/// step by step as `nltk/stem/porter.py` writes it. Words are handled as sequences of characters,
/// as Python indexes strings.
mod porter {
    /// NLTK's pool of irregular forms: a word found here stems to its entry and nothing else.
    const IRREGULAR_FORMS: [(&str, &str); 16] = [
        ("sky", "sky"),
        ("skies", "sky"),
        ("dying", "die"),
        ("lying", "lie"),
        ("tying", "tie"),
        ("news", "news"),
        ("innings", "inning"),
        ("inning", "inning"),
        ("outings", "outing"),
        ("outing", "outing"),
        ("cannings", "canning"),
        ("canning", "canning"),
        ("howe", "howe"),
        ("proceed", "proceed"),
        ("exceed", "exceed"),
        ("succeed", "succeed"),
    ];

    type Word = Vec<char>;

    /// A suffix-removal rule: when the word ends with `suffix` and `condition` holds for what
    /// precedes it, that part followed by `replacement` is the result.
    struct Rule<'a> {
        suffix: &'static str,
        replacement: &'static str,
        condition: &'a dyn Fn(&[char]) -> bool,
    }

    impl<'a> Rule<'a> {
        fn new(suffix: &'static str, replacement: &'static str, condition: &'a dyn Fn(&[char]) -> bool) -> Self {
            Self {
                suffix,
                replacement,
                condition,
            }
        }
    }

    /// The stem of `word`, as `PorterStemmer().stem(word)`.
    pub(super) fn stem(word: &str) -> String {
        let lower = word.to_lowercase();
        if let Some((_, irregular)) = IRREGULAR_FORMS.iter().find(|(form, _)| *form == lower) {
            return (*irregular).to_owned();
        }
        // NLTK tests the length of the word as given, before lowercasing.
        if word.chars().count() <= 2 {
            return lower;
        }
        let mut stem: Word = lower.chars().collect();
        for step in [step1a, step1b, step1c, step2, step3, step4, step5a, step5b] {
            stem = step(&stem);
        }
        stem.into_iter().collect()
    }

    fn is_vowel(c: char) -> bool {
        matches!(c, 'a' | 'e' | 'i' | 'o' | 'u')
    }

    /// For each character, whether it is a consonant: not a vowel, and for `y`, preceded by a
    /// vowel or at the start of the word.
    fn consonant_flags(word: &[char]) -> Vec<bool> {
        let mut flags: Vec<bool> = Vec::with_capacity(word.len());
        for (i, &c) in word.iter().enumerate() {
            let consonant = if is_vowel(c) {
                false
            } else if c == 'y' {
                i == 0 || !flags[i - 1]
            } else {
                true
            };
            flags.push(consonant);
        }
        flags
    }

    fn is_consonant(word: &[char], i: usize) -> bool {
        consonant_flags(&word[..=i])[i]
    }

    /// Porter's measure *m*: the number of vowel-consonant sequences in `[C](VC){m}[V]`.
    fn measure(stem: &[char]) -> usize {
        consonant_flags(stem)
            .windows(2)
            .filter(|pair| !pair[0] && pair[1])
            .count()
    }

    fn has_positive_measure(stem: &[char]) -> bool {
        measure(stem) > 0
    }

    fn contains_vowel(stem: &[char]) -> bool {
        consonant_flags(stem).iter().any(|&consonant| !consonant)
    }

    /// Condition `*d`: the word ends with a double consonant.
    fn ends_double_consonant(word: &[char]) -> bool {
        let n = word.len();
        n >= 2 && word[n - 1] == word[n - 2] && is_consonant(word, n - 1)
    }

    /// Condition `*o`: the word ends consonant-vowel-consonant, the last not `w`, `x` or `y`; NLTK
    /// also accepts a two-letter word vowel-consonant.
    fn ends_cvc(word: &[char]) -> bool {
        let n = word.len();
        (n >= 3
            && is_consonant(word, n - 3)
            && !is_consonant(word, n - 2)
            && is_consonant(word, n - 1)
            && !matches!(word[n - 1], 'w' | 'x' | 'y'))
            || (n == 2 && !is_consonant(word, 0) && is_consonant(word, 1))
    }

    fn ends_with(word: &[char], suffix: &str) -> bool {
        let suffix_len = suffix.chars().count();
        word.len() >= suffix_len && word[word.len() - suffix_len..].iter().copied().eq(suffix.chars())
    }

    /// `word` without its last `suffix_len` characters, followed by `replacement`.
    fn replace_suffix(word: &[char], suffix_len: usize, replacement: &str) -> Word {
        let mut result = word[..word.len() - suffix_len].to_vec();
        result.extend(replacement.chars());
        result
    }

    /// Applies the first rule whose suffix the word ends with; when that rule's condition fails,
    /// the word is returned unchanged without trying later rules.
    fn apply_rules(word: &[char], rules: &[Rule<'_>]) -> Word {
        for rule in rules {
            if ends_with(word, rule.suffix) {
                let suffix_len = rule.suffix.chars().count();
                if (rule.condition)(&word[..word.len() - suffix_len]) {
                    return replace_suffix(word, suffix_len, rule.replacement);
                }
                break;
            }
        }
        word.to_vec()
    }

    /// SSES -> SS, IES -> I, SS -> SS, S -> ; NLTK first maps a four-letter `-ies` word to `-ie`
    /// (`dies` -> `die`).
    fn step1a(word: &[char]) -> Word {
        if word.len() == 4 && ends_with(word, "ies") {
            return replace_suffix(word, 3, "ie");
        }
        let always = |_: &[char]| true;
        apply_rules(
            word,
            &[
                Rule::new("sses", "ss", &always),
                Rule::new("ies", "i", &always),
                Rule::new("ss", "ss", &always),
                Rule::new("s", "", &always),
            ],
        )
    }

    /// (m>0) EED -> EE, (*v*) ED -> , (*v*) ING -> , then the tidying of AT, BL, IZ, double
    /// consonants and short stems; NLTK first maps `-ied` to `-ie` in four-letter words and to `-i`
    /// in longer ones.
    fn step1b(word: &[char]) -> Word {
        if ends_with(word, "ied") {
            let replacement = if word.len() == 4 { "ie" } else { "i" };
            return replace_suffix(word, 3, replacement);
        }

        if ends_with(word, "eed") {
            let stem = &word[..word.len() - 3];
            if measure(stem) > 0 {
                return replace_suffix(word, 3, "ee");
            }
            return word.to_vec();
        }

        let Some(stem) = ["ed", "ing"].iter().find_map(|suffix| {
            let suffix_len = suffix.len();
            (ends_with(word, suffix) && contains_vowel(&word[..word.len() - suffix_len]))
                .then(|| word[..word.len() - suffix_len].to_vec())
        }) else {
            return word.to_vec();
        };

        for (suffix, replacement) in [("at", "ate"), ("bl", "ble"), ("iz", "ize")] {
            if ends_with(&stem, suffix) {
                return replace_suffix(&stem, 2, replacement);
            }
        }
        if ends_double_consonant(&stem) {
            let last = stem[stem.len() - 1];
            if matches!(last, 'l' | 's' | 'z') {
                return stem;
            }
            return stem[..stem.len() - 1].to_vec();
        }
        if measure(&stem) == 1 && ends_cvc(&stem) {
            return replace_suffix(&stem, 0, "e");
        }
        stem
    }

    /// Y -> I, in NLTK's form: only after a consonant that is not the whole stem (`happy` ->
    /// `happi` and `spy` -> `spi`, but `enjoy` unchanged).
    fn step1c(word: &[char]) -> Word {
        let condition = |stem: &[char]| stem.len() > 1 && is_consonant(stem, stem.len() - 1);
        apply_rules(word, &[Rule::new("y", "i", &condition)])
    }

    /// Double suffixes to single ones (m>0): ATIONAL -> ATE, TIONAL -> TION and so on, with NLTK's
    /// ALLI first, BLI -> BLE, FULLI -> FUL and LOGI -> LOG.
    fn step2(word: &[char]) -> Word {
        if ends_with(word, "alli") && has_positive_measure(&word[..word.len() - 4]) {
            return step2(&replace_suffix(word, 4, "al"));
        }

        // NLTK tests the measure of the word without `ogi`, keeping the `l` with the stem, so that
        // `geology` and `theology` stem like `archaeology`.
        let logi_stem_len = word.len().saturating_sub(3);
        let logi_condition = |_: &[char]| has_positive_measure(&word[..logi_stem_len]);
        let m = &has_positive_measure;
        let rules = [
            Rule::new("ational", "ate", m),
            Rule::new("tional", "tion", m),
            Rule::new("enci", "ence", m),
            Rule::new("anci", "ance", m),
            Rule::new("izer", "ize", m),
            Rule::new("bli", "ble", m),
            Rule::new("alli", "al", m),
            Rule::new("entli", "ent", m),
            Rule::new("eli", "e", m),
            Rule::new("ousli", "ous", m),
            Rule::new("ization", "ize", m),
            Rule::new("ation", "ate", m),
            Rule::new("ator", "ate", m),
            Rule::new("alism", "al", m),
            Rule::new("iveness", "ive", m),
            Rule::new("fulness", "ful", m),
            Rule::new("ousness", "ous", m),
            Rule::new("aliti", "al", m),
            Rule::new("iviti", "ive", m),
            Rule::new("biliti", "ble", m),
            Rule::new("fulli", "ful", m),
            Rule::new("logi", "log", &logi_condition),
        ];
        apply_rules(word, &rules)
    }

    /// (m>0) ICATE -> IC, ATIVE -> , ALIZE -> AL, ICITI -> IC, ICAL -> IC, FUL -> , NESS -> .
    fn step3(word: &[char]) -> Word {
        let m = &has_positive_measure;
        apply_rules(
            word,
            &[
                Rule::new("icate", "ic", m),
                Rule::new("ative", "", m),
                Rule::new("alize", "al", m),
                Rule::new("iciti", "ic", m),
                Rule::new("ical", "ic", m),
                Rule::new("ful", "", m),
                Rule::new("ness", "", m),
            ],
        )
    }

    /// (m>1) removal of AL, ANCE, ENCE, ER, IC, ABLE, … and of ION after S or T.
    fn step4(word: &[char]) -> Word {
        let m = &|stem: &[char]| measure(stem) > 1;
        let ion = |stem: &[char]| measure(stem) > 1 && matches!(stem.last(), Some('s' | 't'));
        apply_rules(
            word,
            &[
                Rule::new("al", "", m),
                Rule::new("ance", "", m),
                Rule::new("ence", "", m),
                Rule::new("er", "", m),
                Rule::new("ic", "", m),
                Rule::new("able", "", m),
                Rule::new("ible", "", m),
                Rule::new("ant", "", m),
                Rule::new("ement", "", m),
                Rule::new("ment", "", m),
                Rule::new("ent", "", m),
                Rule::new("ion", "", &ion),
                Rule::new("ou", "", m),
                Rule::new("ism", "", m),
                Rule::new("ate", "", m),
                Rule::new("iti", "", m),
                Rule::new("ous", "", m),
                Rule::new("ive", "", m),
                Rule::new("ize", "", m),
            ],
        )
    }

    /// (m>1) E -> , and (m=1 and not *o) E -> ; both conditions are tried.
    fn step5a(word: &[char]) -> Word {
        if ends_with(word, "e") {
            let stem = &word[..word.len() - 1];
            let m = measure(stem);
            if m > 1 || (m == 1 && !ends_cvc(stem)) {
                return stem.to_vec();
            }
        }
        word.to_vec()
    }

    /// (m>1 and *d and *L) -> single letter, the measure taken over the word less its last `l`.
    fn step5b(word: &[char]) -> Word {
        if ends_with(word, "ll") && measure(&word[..word.len() - 1]) > 1 {
            return word[..word.len() - 1].to_vec();
        }
        word.to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lines of `{"target", "prediction", "rouge1", "rouge2", "rougeL"}` from `rouge_score`.
    const ROUGE_FIXTURE: &str = include_str!("../../tests/fixtures/rouge.jsonl");
    /// Lines of `word<TAB>stem` from NLTK's `PorterStemmer()`.
    const PORTER_FIXTURE: &str = include_str!("../../tests/fixtures/porter.tsv");

    const TOLERANCE: f64 = 1e-9;

    #[test]
    fn stems_match_nltk() {
        let mut checked = 0;
        let mut mismatches = Vec::new();
        for line in PORTER_FIXTURE.lines().filter(|line| !line.is_empty()) {
            let (word, expected) = line.split_once('\t').expect("word<TAB>stem");
            let stem = porter::stem(word);
            if stem != expected {
                mismatches.push(format!("{word}: expected {expected}, got {stem}"));
            }
            checked += 1;
        }
        assert!(checked >= 300, "only {checked} words in porter.tsv");
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn scores_match_rouge_score() {
        let mut checked = 0;
        let mut mismatches = Vec::new();
        for line in ROUGE_FIXTURE.lines().filter(|line| !line.trim().is_empty()) {
            let case = json::parse(line).expect("a JSON object per line");
            let text = |key: &str| case.get(key).and_then(json::Value::as_str).expect(key).to_owned();
            let (target, prediction) = (text("target"), text("prediction"));
            let actual = [
                ("rouge1", rouge_n(&target, &prediction, 1)),
                ("rouge2", rouge_n(&target, &prediction, 2)),
                ("rougeL", rouge_l(&target, &prediction)),
            ];
            for (kind, score) in actual {
                let expected = case.get(kind).and_then(json::Value::as_f64_array).expect(kind);
                let got = [score.precision, score.recall, score.fmeasure];
                if expected.len() != 3 || expected.iter().zip(got).any(|(e, g)| (e - g).abs() > TOLERANCE) {
                    mismatches.push(format!(
                        "{kind} of {target:?} / {prediction:?}: expected {expected:?}, got {got:?}"
                    ));
                }
            }
            checked += 1;
        }
        assert!(checked >= 60, "only {checked} cases in rouge.jsonl");
        assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
    }

    #[test]
    fn tokenizes_like_rouge_score() {
        assert_eq!(
            tokenize("Price: €1,660 (2026-05-09)!", false),
            ["price", "1", "660", "2026", "05", "09"]
        );
        assert_eq!(tokenize("Café 🚀 naïve", false), ["caf", "na", "ve"]);
        assert_eq!(tokenize("İstanbul \u{212a}", false), ["i", "stanbul", "k"]);
        assert_eq!(tokenize("  \n\t ", true), Vec::<String>::new());
        // Tokens of 3 characters or fewer are not stemmed, though the stemmer would change them.
        assert_eq!(tokenize("ies ponies running runs", true), ["ies", "poni", "run", "run"]);
        assert_eq!(tokenize("Dying SKIES", true), ["die", "sky"]);
    }

    #[test]
    fn empty_and_short_inputs_score_zero() {
        assert_eq!(rouge_n("", "", 1), Score::default());
        assert_eq!(rouge_n("one", "one", 2), Score::default());
        assert_eq!(rouge_l("", "some words"), Score::default());
        assert_eq!(rouge_l("🚀", "🚀"), Score::default());
        let same = rouge_l("The same text.", "the same text");
        assert_eq!((same.precision, same.recall, same.fmeasure), (1.0, 1.0, 1.0));
    }

    #[test]
    fn fixture_parser_reads_escapes() {
        let value = json::parse(r#" {"a": "\u00e9\ud83d\ude80\n\"", "b": [1, 0.5, -2.5e-3]} "#).expect("valid JSON");
        assert_eq!(value.get("a").and_then(json::Value::as_str), Some("é🚀\n\""));
        assert_eq!(
            value.get("b").and_then(json::Value::as_f64_array),
            Some(vec![1.0, 0.5, -0.0025])
        );
    }

    #[test]
    #[should_panic(expected = "n > 0")]
    fn rouge_zero_is_refused() {
        rouge_n("a b", "a b", 0);
    }

    /// Just enough JSON for the fixture: objects, arrays, strings and numbers.
    mod json {
        use std::iter::Peekable;
        use std::str::Chars;

        #[derive(Debug)]
        pub enum Value {
            String(String),
            Number(f64),
            Array(Vec<Value>),
            Object(Vec<(String, Value)>),
        }

        impl Value {
            pub fn get(&self, key: &str) -> Option<&Value> {
                match self {
                    Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map(|(_, v)| v),
                    _ => None,
                }
            }

            pub fn as_str(&self) -> Option<&str> {
                match self {
                    Value::String(s) => Some(s),
                    _ => None,
                }
            }

            pub fn as_f64_array(&self) -> Option<Vec<f64>> {
                match self {
                    Value::Array(items) => items
                        .iter()
                        .map(|item| match item {
                            Value::Number(n) => Some(*n),
                            _ => None,
                        })
                        .collect(),
                    _ => None,
                }
            }
        }

        pub fn parse(text: &str) -> Result<Value, String> {
            let mut chars = text.chars().peekable();
            let value = parse_value(&mut chars)?;
            skip_whitespace(&mut chars);
            match chars.next() {
                None => Ok(value),
                Some(c) => Err(format!("trailing {c:?}")),
            }
        }

        fn skip_whitespace(chars: &mut Peekable<Chars<'_>>) {
            while chars.next_if(|c| c.is_whitespace()).is_some() {}
        }

        fn expect(chars: &mut Peekable<Chars<'_>>, wanted: char) -> Result<(), String> {
            skip_whitespace(chars);
            match chars.next() {
                Some(c) if c == wanted => Ok(()),
                other => Err(format!("expected {wanted:?}, found {other:?}")),
            }
        }

        fn parse_value(chars: &mut Peekable<Chars<'_>>) -> Result<Value, String> {
            skip_whitespace(chars);
            match chars.peek().copied() {
                Some('"') => parse_string(chars).map(Value::String),
                Some('[') => {
                    chars.next();
                    let mut items = Vec::new();
                    skip_whitespace(chars);
                    if chars.next_if_eq(&']').is_some() {
                        return Ok(Value::Array(items));
                    }
                    loop {
                        items.push(parse_value(chars)?);
                        skip_whitespace(chars);
                        match chars.next() {
                            Some(',') => {}
                            Some(']') => return Ok(Value::Array(items)),
                            other => return Err(format!("in array: {other:?}")),
                        }
                    }
                }
                Some('{') => {
                    chars.next();
                    let mut fields = Vec::new();
                    skip_whitespace(chars);
                    if chars.next_if_eq(&'}').is_some() {
                        return Ok(Value::Object(fields));
                    }
                    loop {
                        skip_whitespace(chars);
                        let key = parse_string(chars)?;
                        expect(chars, ':')?;
                        fields.push((key, parse_value(chars)?));
                        skip_whitespace(chars);
                        match chars.next() {
                            Some(',') => {}
                            Some('}') => return Ok(Value::Object(fields)),
                            other => return Err(format!("in object: {other:?}")),
                        }
                    }
                }
                Some(_) => {
                    let mut number = String::new();
                    while let Some(c) =
                        chars.next_if(|&c| c.is_ascii_digit() || matches!(c, '-' | '+' | '.' | 'e' | 'E'))
                    {
                        number.push(c);
                    }
                    number
                        .parse()
                        .map(Value::Number)
                        .map_err(|e| format!("number {number:?}: {e}"))
                }
                None => Err("unexpected end".to_owned()),
            }
        }

        fn parse_string(chars: &mut Peekable<Chars<'_>>) -> Result<String, String> {
            expect(chars, '"')?;
            let mut out = String::new();
            loop {
                match chars.next().ok_or("unterminated string")? {
                    '"' => return Ok(out),
                    '\\' => match chars.next().ok_or("unterminated escape")? {
                        'n' => out.push('\n'),
                        't' => out.push('\t'),
                        'r' => out.push('\r'),
                        'b' => out.push('\u{8}'),
                        'f' => out.push('\u{c}'),
                        'u' => {
                            let high = parse_hex4(chars)?;
                            let code = if (0xD800..0xDC00).contains(&high) {
                                if chars.next() != Some('\\') || chars.next() != Some('u') {
                                    return Err("unpaired surrogate".to_owned());
                                }
                                let low = parse_hex4(chars)?;
                                if !(0xDC00..0xE000).contains(&low) {
                                    return Err("unpaired surrogate".to_owned());
                                }
                                0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                high
                            };
                            out.push(char::from_u32(code).ok_or("invalid \\u escape")?);
                        }
                        c => out.push(c),
                    },
                    c => out.push(c),
                }
            }
        }

        fn parse_hex4(chars: &mut Peekable<Chars<'_>>) -> Result<u32, String> {
            let hex: String = chars.by_ref().take(4).collect();
            u32::from_str_radix(&hex, 16).map_err(|e| format!("\\u{hex}: {e}"))
        }
    }
}
