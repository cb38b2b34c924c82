"""Writes the Answers section of docs/BENCHMARKS.md from scripts/bench/answers.sh's JSON lines,
leaving the other sections as they are, and draws each engine's time per answer (answers.png
beside it) where matplotlib is installed."""

import json
import os
import sys

from sections import replace_section


def main(results_path, doc_path):
    rows = {r["engine"]: r for r in (json.loads(line) for line in open(results_path) if line.strip())}
    peer = rows.get("llama-server")
    generate = rows.get("engram generate")
    lines = [
        "Run `scripts/bench/answers.sh` (or `scripts/bench/all.sh`) to measure again.",
        "",
        "Every question of `samples/answers.tsv` asked once per engine, one at a time, streaming, over the sample",
        "corpus's index (a fresh home: the sample pipeline less its dataset and training stages), the engines taking",
        "turns per question. engram: release build, the registry's production model (the base SmolLM2-135M-Instruct",
        "Q4_1 GGUF), top 4 chunks; `extract` answers with a sentence of the sources, `generate` writes the answer",
        "(greedy, at most 160 tokens, repetition penalty 1.1). llama-server (the same GGUF, `--parallel 1`) writes the",
        "answer from the chunks engram's `/v1/search` returns for the question, quoted under the service's instruction",
        "as the service quotes them (less the heading path), with the same settings. All on every core. An engram",
        "answer under the relevance threshold is the abstention at once, by either mode.",
        "",
        "| engine | first text, mean ms | p50 ms | whole answer, mean ms | p50 ms | p90 ms | tokens, mean | abstained | whole answer vs llama-server | vs engram generate |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for engine in ("engram extract", "engram generate", "llama-server"):
        r = rows.get(engine)
        if r is None:
            continue
        vs_peer = f"{r['total_mean_ms'] / peer['total_mean_ms']:.2f}x" if peer and engine != "llama-server" else ""
        vs_generate = (
            f"{r['total_mean_ms'] / generate['total_mean_ms']:.2f}x" if generate and engine == "engram extract" else ""
        )
        lines.append(
            f"| {engine} | {r['first_mean_ms']} | {r['first_p50_ms']} | {r['total_mean_ms']} | {r['total_p50_ms']} | "
            f"{r['total_p90_ms']} | {r['completion_tokens_mean']} | {r['abstained']}/{r['questions']} | {vs_peer} | {vs_generate} |"
        )
    lines += [
        "",
        "Ratios are of the mean time to the whole answer: below 1.0x is sooner. An extracted answer arrives in one",
        "piece, so its first text is its whole answer. How often each is right is not measured here: that is",
        "`feature-pipeline eval answers` (README, \"Conversations and grounded answers\").",
        "On a shared 2-core VM, runs vary; compare rows of one run.",
    ]
    picture = draw(rows, os.path.join(os.path.dirname(doc_path), "answers.png"))
    if picture:
        lines += ["", f"![Answers: time to the whole answer per question, by engine]({os.path.basename(picture)})"]
    doc = open(doc_path).read() if os.path.exists(doc_path) else "# Benchmarks\n"
    open(doc_path, "w").write(replace_section(doc, "## Answers", lines))


def draw(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    engines = [e for e in ("engram extract", "engram generate", "llama-server") if e in rows]
    fig, axes = plt.subplots(figsize=(7, 4))
    axes.boxplot([[t / 1000 for t in rows[e]["totals_ms"]] for e in engines], showfliers=True)
    axes.set_xticks(range(1, len(engines) + 1), engines)
    axes.set(title="Time to the whole answer, per question (samples/answers.tsv)", ylabel="seconds")
    axes.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


if __name__ == "__main__":
    main(*sys.argv[1:3])
