"""Writes the Training section of docs/BENCHMARKS.md from scripts/bench/train.sh's JSON lines,
leaving the other sections as they are."""

import json
import sys

from sections import replace_section


def main(results_path, doc_path, extra_path=None):
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    engram = [r for r in rows if r["engine"] == "engram"]
    peers = [r for r in rows if r["engine"] != "engram"]
    mib = lambda r: (r.get("peak_rss_bytes") or 0) / 2**20
    lines = [
        "Run `scripts/bench/train.sh` (or `scripts/bench/all.sh`) to measure again; each row is a fresh process.",
        "",
        f"LoRA r=16, alpha=16 on all seven projections of SmolLM2-135M (the HF export of the shipped GGUF, f32),",
        f"AdamW; batch 1, sequences of {engram[0]['seq_len'] if engram else 512} tokens whose last "
        f"{engram[0]['answer_tokens'] if engram else 128} carry the loss (seeded random tokens);",
        "the mean of the timed steps after one warm-up step. Peer: " + (peers[0]["engine"] if peers else "n/a") + ".",
        "",
        "| threads | engram tokens/s | peer tokens/s | ratio | engram peak RSS MiB | peer peak RSS MiB | RSS ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in engram:
        p = next((p for p in peers if p["threads"] == r["threads"]), None)
        if p is None:
            continue
        lines.append(
            f"| {r['threads']} | {r['tokens_per_s']:.0f} | {p['tokens_per_s']:.0f} | {r['tokens_per_s'] / p['tokens_per_s']:.2f}x | "
            f"{mib(r):.0f} | {mib(p):.0f} | {mib(r) / mib(p):.2f}x |")
    lines += ["", "Ratios are engram / peer: tokens/s above 1.0x is faster, RSS below 1.0x is smaller."]
    if extra_path:
        lines += ["", open(extra_path).read().rstrip()]
    doc = open(doc_path).read() if __import__("os").path.exists(doc_path) else "# Benchmarks\n"
    open(doc_path, "w").write(replace_section(doc, "## Training", lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
