"""Computes the reference values the ROUGE parity tests compare against.

feature-pipeline/src/steps/rouge.rs reimplements Google's `rouge-score` package (with NLTK's
Porter stemmer) in Rust; its tests check it against the numbers this script gets from the real
Python packages. Run it by hand, from anywhere, whenever those packages or the cases change:

    python3 -m venv /tmp/rougevenv && /tmp/rougevenv/bin/pip install rouge-score==0.1.2 nltk==3.10.4
    /tmp/rougevenv/bin/python scripts/reference/make_rouge_fixture.py

Writes, under feature-pipeline/tests/fixtures/:
  rouge.jsonl   one case a line: {"target", "prediction", "rouge1", "rouge2", "rougeL"}, each score
                [precision, recall, fmeasure] from RougeScorer([...], use_stemmer=True)
  porter.tsv    word<TAB>stem from nltk's PorterStemmer() (its default NLTK_EXTENSIONS mode, the one
                rouge_score uses), irregular forms included
"""

import json
import os
import random

from nltk.stem import porter
from rouge_score import rouge_scorer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "feature-pipeline", "tests", "fixtures")

NOTE = """# Weekly review

## Decisions
- Move the Qdrant index to the new server on 2026-05-09.
- Budget: €1,660 for hardware (was €1,200).

## Open questions
1. Should we keep the old snapshots?
2. Who owns the evaluation reports?"""

NOTE_SUMMARY = (
    "The weekly review decided to move the Qdrant index to a new server on 9 May 2026, "
    "with a hardware budget of €1,660 (up from €1,200); open questions: keeping old snapshots "
    "and ownership of evaluation reports."
)

PORTER_TEXT = (
    "caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled "
    "sized hopping tanned falling hissing fizzed failing filing happy sky relational conditional "
    "rational valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli "
    "vietnamization predication operator feudalism decisiveness hopefulness callousness formaliti "
    "sensitiviti sensibiliti triplicate formative formalize electriciti electrical hopeful goodness "
    "revival allowance inference airliner gyroscopic adjustable defensible irritant replacement "
    "adjustment dependent adoption homologou communism activate angulariti homologous effective "
    "bowdlerize probate rate cease controll roll"
)

CASES = [
    # The docstring example of rouge_score.
    ("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log."),
    (NOTE, NOTE_SUMMARY),
    (NOTE_SUMMARY, NOTE),
    (NOTE, NOTE),
    ("", ""),
    ("", "something to say"),
    ("something to say", ""),
    ("   \t\n  ", "whitespace only on the other side"),
    ("!!! ??? ... --- ***", "!!! ??? ... --- ***"),
    ("🚀🔥✨", "🚀🔥✨"),
    ("日本語のテキスト", "日本語のテキスト"),
    ("identical strings score one", "identical strings score one"),
    ("Identical Strings, Score One!", "identical strings score one"),
    ("word", "word"),
    ("word", "other"),
    ("a b", "b a"),
    ("the the the the", "the"),
    ("the", "the the the the"),
    ("the cat the cat the cat", "the cat sat on the mat with the cat"),
    ("one two three four five", "five four three two one"),
    ("one two three four five six", "one three five two four six"),
    ("Price: €1,660 (incl. VAT) — due 2026-05-09.", "The price is 1660 euros, due on 9 May 2026."),
    ("Price: €1,660 (incl. VAT) — due 2026-05-09.", "price 1 660 incl vat due 2026 05 09"),
    ("v3.14.1 released at 10:30am", "Released v3.14.1 at 10:30 AM"),
    ("Café crème at the Hôtel de Ville", "cafe creme at the hotel de ville"),
    ("Ünïcödé, emojis 🚀 and punctuation — all count!", "Unicode, emojis and punctuation all count"),
    ("İstanbul in İzmir", "istanbul in izmir"),
    ("Temperature of 300 \u212a", "temperature of 300 k"),
    ("naïve façade résumé", "naive facade resume"),
    ("Straße und Grüße", "strasse und grusse"),
    ("Ελληνικά κείμενα with English", "with english"),
    ("e-mail, snake_case and kebab-case", "email snake case and kebab case"),
    ("don't won't can't", "do not will not can not"),
    ("HTTP/2 over TLS1.3 on port 443", "http 2 over tls 1 3 on port 443"),
    ("## Heading\n\n**bold** and _italic_ and `code`", "heading bold and italic and code"),
    ("- [ ] todo item\n- [x] done item", "todo item done item"),
    ("[link text](https://example.com/path?q=1)", "link text https example com path q 1"),
    ("caresses ponies ties caress cats", "caress poni ti caress cat"),
    ("agreed plastered motoring happiness", "agree plaster motor happy"),
    ("relational conditional generalization hopefulness", "relate condition general hopeful"),
    ("electrical adjustable dying lying sky", "electric adjust die lie skies"),
    ("news skies generously innings outings cannings", "news sky generous inning outing canning"),
    ("proceed exceed succeed howe tying", "proceeding exceeding succeeding howe tie"),
    ("flies dies spied died", "fly die spy die"),
    ("yyyy syzygy toy enjoy enjoyment", "yyyy syzygi toy enjoy enjoy"),
    (PORTER_TEXT, PORTER_TEXT.upper()),
    (PORTER_TEXT, " ".join(reversed(PORTER_TEXT.split()))),
    ("geology theology archaeology", "geologi theologi archaeologi"),
    ("radically hopefully analogously", "radic hope analog"),
    ("The model answered correctly.", "The model's answer was correct."),
    (
        "Meeting notes: Alice presented Q3 numbers; revenue grew 12% to $4.5M.",
        "Alice presented the third-quarter numbers, with revenue growing 12 percent to 4.5 million dollars.",
    ),
    (
        "To roll back the live index, point the alias at the previous collection.",
        "Point the alias at the previous collection to roll back the live index.",
    ),
    ("1 2 3 4 5 6 7 8 9 10", "1 2 3 4 5 6 7 8 9 10 11 12"),
    ("abc", "abc abc"),
    ("it is a cat", "is it a cat"),
]

# A few longer pseudo-random cases, to exercise the LCS table and clipped counts on repeats.
VOCAB = (
    "the a of to and index notes server hardware budget review questions reports running runs "
    "ran studies studying studied connection connected connecting 2026 1660 models model's"
).split()
RNG = random.Random(20260509)
for _ in range(10):
    target = " ".join(RNG.choice(VOCAB) for _ in range(RNG.randint(5, 40)))
    prediction = " ".join(RNG.choice(VOCAB) for _ in range(RNG.randint(1, 40)))
    CASES.append((target, prediction))

WORDS = """
caresses ponies ties caress cats feed agreed plastered bled motoring sing conflated troubled sized
hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational
valenci hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization
predication operator feudalism decisiveness hopefulness callousness formaliti sensitiviti
sensibiliti triplicate formative formalize electriciti electrical hopeful goodness revival
allowance inference airliner gyroscopic adjustable defensible irritant replacement adjustment
dependent adoption homologou communism activate angulariti homologous effective bowdlerize probate
rate cease controll roll
sky skies dying lying tying news innings inning outings outing cannings canning howe proceed exceed
succeed proceeding exceeded succeeds dies died lies lied ties tied flies flied spies spied cries
cried happiness generalization generously generous general generality generalize generalizations
a i is as us be by my ox at it on ed ing ies sses eed
spy fly try toy joy boy enjoy enjoyment enjoying employ employed yyyy yy y syzygy sayyyy yellow
yearly youth eye eyes buy buying obeyed played player
geology theology archaeology biology philology apology analogy analogies logic logical
radically hopefully carefully beautifully fully usefully mindfully
conformably possibly probably sensibly visibly admirably
relativity activity sensitivity formality brutality
decision provision revision television adoption exception rotation creation nation station
agreement replacement enjoyment movement statement element cement
national rational international operational conditionally traditionally
running runs ran runner studies studying studied study connection connected connecting connects
connections connective generate generation generative generator generators
agree agreeing agreements disagree feeding feeds bleed breed speed indeed
hopping hoping hoped hopped stopping stopped fitting fitted planning planned filling filled
buzzing buzzed missing missed tossing fizzing
conflating troubling sizing rating rated dating dated hating
probate probation probable probability rate rated rating ratings cease ceased ceasing
controlling controlled control roll rolled rolling fall falling fell
abilities ability capability capabilities responsibility responsibilities
electricity electric electrician electronics electronic
formalization formalizing organization organizations organize organized organizing
realization realize realizing recognize recognition
adjust adjusting adjusted adjustments adjustable
depend dependency dependence dependable independent independently
effective effectiveness effect effects affected
hopefulness hopeless hopelessness hope hopes
callous callously dangerous dangerously analogous analogously
consign consigned consigning consignment consist consisted consistency consistent consistently
consisting consists consolation consolations consolatory console consoled consoles consolidate
consolidated consolidating consoling consolingly consols consonant consort consorted consorting
conspicuous conspicuously conspiracy conspirator conspirators conspire conspired conspiring
constable constables constance constancy constant
knack knackeries knacks knag knave knaves knavish kneaded kneading knee kneel kneeled kneeling
kneels knees knell knelt knew knick knif knife knight knightly knights knit knits knitted
knitting knives knob knobs knock knocked knocker knockers knocking knocks knopp knot knots
summary summaries summarize summarized summarization evaluation evaluations evaluate evaluated
scores scoring scored precision recall measure measures measured measurement
tokenizer tokenizers tokenize tokenized tokenization stemmer stemming stemmed
embedding embeddings embedded vector vectors index indexes indices indexed indexing
notes noted noting note noteworthy meeting meetings decided decisions questions reports
server servers hardware budget budgets snapshot snapshots ownership owners
1660 2026 05 09 1st 2nd 3rd 4th 10th 300k v3 h2o mp3 b2b
Caresses PONIES Happy SKIES Dying News
café naïve naïvely résumé
""".split()


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    with open(os.path.join(FIXTURES, "rouge.jsonl"), "w", encoding="utf-8") as out:
        for target, prediction in CASES:
            scores = scorer.score(target, prediction)
            row = {"target": target, "prediction": prediction}
            for kind in ("rouge1", "rouge2", "rougeL"):
                s = scores[kind]
                row[kind] = [float(s.precision), float(s.recall), float(s.fmeasure)]
            out.write(json.dumps(row, ensure_ascii=False) + "\n")

    stemmer = porter.PorterStemmer()
    seen = set()
    with open(os.path.join(FIXTURES, "porter.tsv"), "w", encoding="utf-8") as out:
        for word in WORDS:
            if word in seen:
                continue
            seen.add(word)
            out.write(f"{word}\t{stemmer.stem(word)}\n")
    print(f"{len(CASES)} ROUGE cases, {len(seen)} Porter words written to {FIXTURES}")


if __name__ == "__main__":
    main()
