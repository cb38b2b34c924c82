"""Turns the benchmark's JSON lines into the tables of docs/BENCHMARKS.md, with engram/peer ratios."""

import json
import os
import platform
import subprocess
import sys

from sections import foreign_sections


def machine():
    cpu = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        flags = next((l for l in open("/proc/cpuinfo") if l.startswith("flags")), "").split()
    except OSError:
        flags = []
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    cpu = f"{cpu} ({vector})"
    cores = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    return f"{cpu}, {cores} cores, {mem:.0f} GiB, {platform.system()} {platform.release()}, {rustc}"


def main(results_path, doc_path):
    rows = [json.loads(line) for line in open(results_path) if line.strip()]
    embed = [r for r in rows if r["task"] == "embed"]
    gen = [r for r in rows if r["task"] == "generate"]
    out = ["# Benchmarks", "", f"Machine: {machine()}.", "",
           "Run `scripts/bench/models.sh` (or `scripts/bench/all.sh`) to measure again; each row is a fresh process.", "",
           "## Embeddings: all-MiniLM-L6-v2, 64 sentences", "",
           "| threads | batch | engram encoder | engram sentences/s | peer sentences/s | ratio | engram tokens/s | engram peak RSS MiB | peer peak RSS MiB |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in [r for r in embed if r["engine"] == "engram"]:
        peer = next((p for p in embed if p["engine"] != "engram" and p["threads"] == r["threads"] and p["batch"] == r["batch"]), None)
        ratio = f"{r['sentences_per_s'] / peer['sentences_per_s']:.2f}x" if peer else "n/a"
        encoder = r.get("encoder", "candle")
        out.append(f"| {r['threads']} | {r['batch']} | {encoder} | {r['sentences_per_s']:.1f} | {peer['sentences_per_s']:.1f} | {ratio} | "
                   f"{r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | {peer['peak_rss_mib']:.0f} |" if peer else
                   f"| {r['threads']} | {r['batch']} | {encoder} | {r['sentences_per_s']:.1f} | n/a | n/a | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | n/a |")
    peers = sorted({p["engine"] for p in embed if p["engine"] != "engram"})
    out += ["", f"Peer: {', '.join(peers)}. engram's default encoder is `packed` (its own, texts end to end without",
            "padding); `candle` is candle's BertModel on batches padded to their longest text.", "",
            "## Generation: SmolLM2-135M-Instruct Q4_1 GGUF, greedy", "",
            "| threads | engram weights | prompt tokens | engram prompt tok/s | peer prompt tok/s | ratio | engram decode tok/s | peer decode tok/s | ratio | engram peak RSS MiB | peer peak RSS MiB |",
            "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in [r for r in gen if r["engine"] == "engram"]:
        peer = next((p for p in gen if p["engine"] != "engram" and p["threads"] == r["threads"]), None)
        if peer is None:
            continue
        weights = f"{r['weights']} ({r['kernel']} kernels)" if r["weights"] == "packed" and "kernel" in r else r["weights"]
        out.append(f"| {r['threads']} | {weights} | {r['prompt_tokens']} | {r['prompt_tokens_per_s']:.0f} | {peer['prompt_tokens_per_s']:.0f} | "
                   f"{r['prompt_tokens_per_s'] / peer['prompt_tokens_per_s']:.2f}x | {r['decode_tokens_per_s']:.1f} | {peer['decode_tokens_per_s']:.1f} | "
                   f"{r['decode_tokens_per_s'] / peer['decode_tokens_per_s']:.2f}x | {r['peak_rss_mib']:.0f} | {peer['peak_rss_mib']:.0f} |")
    peers = sorted({p["engine"] for p in gen if p["engine"] != "engram"})
    out += ["", f"Peer: {', '.join(peers)}, on the same GGUF file as stored (Q4_1).", "",
            "engram's default is `packed`: the stored Q4_1/Q8_0 blocks in engram's own kernels, activations in f32",
            "(prompts) or rounded to 16 bits per block of 32 (decode), answering as `f32` (all weights dequantized) does. `q8_0` and `as-stored` use candle's quantized",
            "kernels, which quantize activations to 8 bits as llama.cpp does; on this model that changes greedy answers",
            "(see README, Models). Ratios are engram / peer: above 1.0x engram is faster.", "",
            "llama.cpp is built by the script for the vector extensions this CPU reports (AVX-512, VNNI, BF16 where present).",
            "Each generation row is the median of three timed generations (after a warm-up) in one process, for both engines.",
            "engram decodes with its AVX2 kernels by default; `packed (avx512 kernels)` is the same with ENGRAM_KERNEL=avx512.",
            "Prompts use gemm's AVX-512 kernels wherever the CPU has them.",
            "On a shared 2-core VM, rows vary between runs (up to about 20%); compare rows of one run.", ""]
    kernels = [r for r in rows if r["task"] == "kernel"]
    if kernels:
        out += ["## Decode kernels: one matrix-vector product, one thread", "",
                "Each product reads its weights from memory (copies filling 256 MiB, multiplied in turn), as a decoded token does.", "",
                "| matrix | kernel | microseconds | weight GB/s |", "|---|---|---|---|"]
        for r in kernels:
            out.append(f"| {r['shape']} | {r['kernel']} | {r['us']:.1f} | {r['weight_gb_per_s']:.1f} |")
        out.append("")
    # Sections other benchmarks own (Training, ...) are kept as they are.
    previous = open(doc_path).read() if os.path.exists(doc_path) else ""
    others = foreign_sections(previous, ("## Embeddings", "## Generation", "## Decode kernels"))
    with open(doc_path, "w") as f:
        f.write("\n".join(out).rstrip() + "\n" + ("\n" + others if others else ""))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
