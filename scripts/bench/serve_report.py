"""Writes the Serving section of docs/BENCHMARKS.md from scripts/bench/serve.sh's JSON lines,
leaving the other sections as they are, and draws the throughput and latency per client count
(serving.png beside it) where matplotlib is installed."""

import json
import os
import sys

from sections import replace_section


def cell(value, unit=""):
    return "n/a" if value is None else f"{value:g}{unit}"


def main(results_path, doc_path):
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    by = {(r["engine"], r["clients"], r["retrieval"]): r for r in rows}
    prompt = next((r["prompt_tokens_mean"] for r in rows if r.get("prompt_tokens_mean")), None)
    lines = [
        "Run `scripts/bench/serve.sh` (or `scripts/bench/all.sh`) to measure again; each row is a fresh server.",
        "",
        f"SmolLM2-135M-Instruct Q4_1 GGUF, the same file for both; streaming chat, prompts of about {prompt or 520} tokens",
        "(each distinct from its first tokens), 128 new tokens (ignore_eos), greedy, retrieval off; each client sends",
        "its requests one after the other. engram: release build, `--max-batch 8 --max-queue 4` (12 places: beyond",
        "them a 429 with Retry-After). llama-server: `--parallel N --ctx-size N*1024`, built from the llama.cpp sources",
        "of llama-cpp-python for this CPU's vector extensions. Both on all cores.",
        "",
        "| clients | server | completion tok/s | ratio | TTFT p50 ms | TTFT p99 ms | ratio p99 | ITL p50 ms | ITL p99 ms | served | 429 | errors | peak RSS MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for clients in sorted({r["clients"] for r in rows}):
        peer = by.get(("llama-server", clients, False))
        for engine in ("engram", "llama-server"):
            r = by.get((engine, clients, False))
            if r is None:
                continue
            ratio = ratio_p99 = ""
            if engine == "engram" and peer and peer["tokens_per_s"]:
                ratio = f"{r['tokens_per_s'] / peer['tokens_per_s']:.2f}x"
                if r["ttft_p99_ms"] and peer["ttft_p99_ms"]:
                    ratio_p99 = f"{r['ttft_p99_ms'] / peer['ttft_p99_ms']:.2f}x"
            errors = sum(r["errors"].values())
            lines.append(
                f"| {clients} | {engine} | {cell(r['tokens_per_s'])} | {ratio} | {cell(r['ttft_p50_ms'])} | "
                f"{cell(r['ttft_p99_ms'])} | {ratio_p99} | {cell(r['itl_p50_ms'])} | {cell(r['itl_p99_ms'])} | "
                f"{r['served']}/{r['requests']} | {r['shed_429']} | {errors or 0}"
                f"{' ' + json.dumps(r['errors']) if errors else ''} | {r.get('peak_rss_mib', 'n/a')} |"
            )
    for r in rows:
        if r["retrieval"]:
            lines.append(
                f"| {r['clients']} | engram, retrieval on | {cell(r['tokens_per_s'])} |  | {cell(r['ttft_p50_ms'])} | "
                f"{cell(r['ttft_p99_ms'])} |  | {cell(r['itl_p50_ms'])} | {cell(r['itl_p99_ms'])} | "
                f"{r['served']}/{r['requests']} | {r['shed_429']} | {sum(r['errors'].values())} | {r.get('peak_rss_mib', 'n/a')} |"
            )
    lines += [
        "",
        "Ratios are engram / llama-server: tokens/s above 1.0x is faster, TTFT below 1.0x is sooner.",
        "TTFT is from sending the request to the first piece of text; ITL is the gap between pieces of one answer.",
        "On a shared 2-core VM, rows vary between runs; compare rows of one run.",
    ]
    retrieved = [r for r in rows if r["retrieval"]]
    if retrieved:
        lines.append(
            "The retrieval-on row searches the index in ENGRAM_BENCH_HOME (the quickstart's sample corpus) with "
            "each prompt, never abstains, and puts the top 4 chunks in the prompt "
            f"(prompts of {retrieved[0].get('prompt_tokens_mean', 'n/a')} tokens on average)."
        )
    picture = draw(rows, os.path.join(os.path.dirname(doc_path), "serving.png"))
    if picture:
        lines += ["", f"![Serving: throughput and p99 time to first token by clients]({os.path.basename(picture)})"]
    doc = open(doc_path).read() if os.path.exists(doc_path) else "# Benchmarks\n"
    open(doc_path, "w").write(replace_section(doc, "## Serving", lines))


def draw(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for engine in ("engram", "llama-server"):
        points = sorted((r["clients"], r) for r in rows if r["engine"] == engine and not r["retrieval"])
        if not points:
            continue
        xs = [c for c, _ in points]
        left.plot(xs, [r["tokens_per_s"] or 0 for _, r in points], marker="o", label=engine)
        right.plot(xs, [(r["ttft_p99_ms"] or 0) / 1000 for _, r in points], marker="o", label=engine)
    left.set(title="Aggregate completion tokens/s", xlabel="concurrent clients", ylabel="tokens/s")
    right.set(title="Time to first token, p99", xlabel="concurrent clients", ylabel="seconds")
    for axes in (left, right):
        axes.grid(alpha=0.3)
        axes.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


if __name__ == "__main__":
    main(*sys.argv[1:3])
