"""Writes the Training section of docs/BENCHMARKS.md from scripts/bench/train.sh's JSON lines,
leaving the other sections as they are.

train.sh alternates the engines (engram, peer, engram, peer, ...) at each thread count; the n-th
engram line and the n-th peer line of a thread count are one round. The table gives each engine's
median over the rounds, the ratio of the medians, and the lowest and highest per-round ratio: on a
shared machine one engine's run can land in a slow spell, and the range shows how far that moves
the ratio."""

import json
import os
import re
import statistics
import sys
import time

from report import machine
from sections import replace_section


def rounds(rows, threads):
    engram = [r for r in rows if r["engine"] == "engram" and r["threads"] == threads]
    peers = [r for r in rows if r["engine"] != "engram" and r["threads"] == threads]
    return list(zip(engram, peers))


def main(results_path, doc_path, notes_path=None):
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    engram = [r for r in rows if r["engine"] == "engram"]
    peers = [r for r in rows if r["engine"] != "engram"]
    mib = lambda r: (r.get("peak_rss_bytes") or 0) / 2**20
    first = engram[0] if engram else {}
    lines = [
        "Run `scripts/bench/train.sh` (or `scripts/bench/all.sh`) to measure again; each row is a fresh process.",
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {machine()}.",
        "LoRA r=16, alpha=16 on all seven projections of SmolLM2-135M (the HF export of the shipped GGUF, f32),",
        f"AdamW; batch 1, sequences of {first.get('seq_len', 512)} tokens whose last "
        f"{first.get('answer_tokens', 128)} carry the loss (seeded random tokens);",
        f"each run the mean of {first.get('steps', '?')} timed steps after one warm-up step; the engines alternate,",
        "and each cell is the median over the rounds. Peer: " + (peers[0]["engine"] if peers else "n/a") + ".",
        "",
        "| threads | rounds | engram tokens/s | peer tokens/s | ratio | per-round ratios | engram peak RSS MiB | peer peak RSS MiB | RSS ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for threads in sorted({r["threads"] for r in engram}):
        pairs = rounds(rows, threads)
        if not pairs:
            continue
        ours = statistics.median(e["tokens_per_s"] for e, _ in pairs)
        theirs = statistics.median(p["tokens_per_s"] for _, p in pairs)
        ratios = [e["tokens_per_s"] / p["tokens_per_s"] for e, p in pairs]
        our_rss = max(mib(e) for e, _ in pairs)
        their_rss = max(mib(p) for _, p in pairs)
        lines.append(
            f"| {threads} | {len(pairs)} | {ours:.0f} | {theirs:.0f} | {ours / theirs:.2f}x | "
            f"{min(ratios):.2f}x to {max(ratios):.2f}x | {our_rss:.0f} | {their_rss:.0f} | {our_rss / their_rss:.2f}x |")
    lines += ["", "Ratios are engram / peer: tokens/s above 1.0x is faster, RSS below 1.0x is smaller (the highest peak of each)."]
    if notes_path and os.path.exists(notes_path):
        notes = re.sub(r"^\s*<!--.*?-->\s*", "", open(notes_path).read(), flags=re.S)
        lines += ["", notes.rstrip()]
    doc = open(doc_path).read() if os.path.exists(doc_path) else "# Benchmarks\n"
    open(doc_path, "w").write(replace_section(doc, "## Training", lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
