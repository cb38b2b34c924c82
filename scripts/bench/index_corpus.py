"""Writes a generated corpus of markdown notes for the index memory benchmark (scripts/bench/index.sh).

Each note has a title and `--paragraphs` sections of one short paragraph; with `--chunk-tokens 48` each
section becomes one chunk, so `--chunks` chunks need chunks/paragraphs notes. Words are drawn from a
seeded generator, so every note differs (nothing is a duplicate the filter would drop) and a rerun
writes the same corpus.
"""

import argparse
import pathlib
import random

NOUNS = "boiler kettle garden invoice recipe ticket train meeting contract lantern harbour violin orchard " \
    "ledger bicycle passport mortgage bakery glacier museum camera pantry terrace voucher".split()
VERBS = "needs replaces costs opens covers follows delays shows keeps returns reaches saves".split()
PLACES = "Lisbon Porto Sintra Bergen Kyoto Dublin Turin Ghent Bruges Tallinn Krakow Seville".split()
ADJECTIVES = "quiet early blue spare weekly damp bright narrow cheap second heavy warm".split()


def sentence(rng):
    return (
        f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} in {rng.choice(PLACES)} {rng.choice(VERBS)} "
        f"{rng.randint(2, 980)} {rng.choice(NOUNS)}s by {rng.randint(1, 28)} {rng.choice(['May', 'June', 'March'])}."
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--paragraphs", type=int, default=10)
    args = parser.parse_args()
    out = pathlib.Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.chunks)
    notes = max(1, args.chunks // args.paragraphs)
    for n in range(notes):
        lines = [f"# Note {n}: the {rng.choice(NOUNS)} of {rng.choice(PLACES)}", ""]
        for p in range(args.paragraphs):
            lines += [f"## Part {p}", "", " ".join(sentence(rng) for _ in range(2)), ""]
        (out / f"note-{n:06d}.md").write_text("\n".join(lines))
    print(f"wrote {notes} notes to {out}")


if __name__ == "__main__":
    main()
