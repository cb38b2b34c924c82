"""The peers engram's model benchmark compares against, measured the same way (one JSON line).

  peers.py embed --batch 16 --threads 2         sentence-transformers (torch, CPU)
  peers.py generate --threads 2 --prompt FILE   llama.cpp through llama-cpp-python, same GGUF
"""

import argparse
import json
import os
import resource
import statistics
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.environ.get("ENGRAM_MODELS_DIR", os.path.join(ROOT, "models"))


def sentences(n):
    # Same construction as shared/benches/models.rs.
    words = ["vector", "index", "notes", "private", "assistant", "retrieval", "summary", "Paris", "engine", "model"]
    return [" ".join(words[(i + j * 3) % len(words)] for j in range(8 + (i * 7) % 40)) for i in range(n)]


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def embed(args):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    model = SentenceTransformer(os.path.join(MODELS, "all-MiniLM-L6-v2"), device="cpu")
    load_s = time.perf_counter() - started
    texts = sentences(args.sentences)
    tokens = sum(len(model.tokenizer(t)["input_ids"]) for t in texts)
    model.encode(texts[: args.batch], batch_size=args.batch)  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), args.batch):
        model.encode(texts[i : i + args.batch], batch_size=args.batch, normalize_embeddings=True)
    secs = time.perf_counter() - started
    return {"engine": f"sentence-transformers {__import__('sentence_transformers').__version__} / torch {torch.__version__}",
            "task": "embed", "threads": str(args.threads), "batch": args.batch,
            "sentences_per_s": len(texts) / secs, "tokens_per_s": tokens / secs, "load_s": load_s,
            "peak_rss_mib": peak_rss_mib()}


def generate(args):
    import llama_cpp
    from llama_cpp import Llama

    started = time.perf_counter()
    llm = Llama(model_path=os.path.join(MODELS, "SmolLM2-135M-Instruct.Q4_1.gguf"), n_ctx=1024,
                n_threads=args.threads, n_threads_batch=args.threads, n_batch=512, verbose=False)
    load_s = time.perf_counter() - started
    prompt = open(args.prompt, encoding="utf-8").read()
    tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    # Warm-up, then `--repeat` timed runs from an empty context; the median of each phase.
    llm.eval(tokens[:8])
    prompt_runs, decode_runs = [], []
    for _ in range(args.repeat):
        llm.reset()
        started = time.perf_counter()
        llm.eval(tokens)
        first = llm.sample(temp=0.0)
        prompt_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        token = first
        for _ in range(args.new_tokens - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0)
        decode_runs.append(time.perf_counter() - started)
    prompt_s, decode_s = statistics.median(prompt_runs), statistics.median(decode_runs)
    return {"engine": f"llama.cpp (llama-cpp-python {llama_cpp.__version__})", "task": "generate",
            "threads": str(args.threads), "weights": "q4_1 (as stored)", "prompt_tokens": len(tokens),
            "new_tokens": args.new_tokens, "prompt_tokens_per_s": len(tokens) / prompt_s,
            "decode_tokens_per_s": (args.new_tokens - 1) / decode_s, "load_s": load_s,
            "peak_rss_mib": peak_rss_mib()}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=["embed", "generate"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sentences", type=int, default=64)
    parser.add_argument("--prompt")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="timed generations; the median is reported")
    args = parser.parse_args()
    print(json.dumps(embed(args) if args.task == "embed" else generate(args)))


if __name__ == "__main__":
    main()
