"""Computes the reference values the model correctness tests compare against.

Run once, by hand, whenever the pinned models change:
    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install -r scripts/reference/requirements.txt
    /tmp/ref/bin/python scripts/reference/make_model_fixtures.py

Writes, under shared/tests/fixtures/:
  minilm_embeddings.json   sentence-transformers' embeddings of a fixed set of sentences
  smollm2_token_ids.json   token ids of a fixed set of strings by the Hugging Face tokenizer
                           that transformers builds from the same GGUF file engram loads
"""

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODELS = os.path.join(ROOT, "models")
FIXTURES = os.path.join(ROOT, "shared", "tests", "fixtures")

SENTENCES = [
    "The capital of France is Paris.",
    "Qdrant is a vector database written in Rust.",
    "engram turns notes and saved web pages into a private assistant.",
    "A short one.",
    "Numbers like 3.14159 and 2026 are tokenized digit by digit by some models.",
    "Ünïcödé, emojis 🚀 and punctuation — all count!",
    "How do I roll back the live index to the previous version?",
    "Mean pooling averages token embeddings; normalisation makes cosine a dot product.",
    "word " * 300,  # longer than max_seq_length: truncated
]

STRINGS = [
    "Hello, world!",
    "What is the capital of France?",
    "In 2026, 12345 tokens cost $0.75.",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces and\ttabs\nnew lines",
    "Ünïcödé café naïve — “quotes” 🚀",
    "def f(x):\n    return x ** 2  # square",
    "https://example.org/path?query=1&b=two",
]


def embeddings():
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(os.path.join(MODELS, "all-MiniLM-L6-v2"), device="cpu")
    vectors = model.encode(SENTENCES, batch_size=4, normalize_embeddings=False, convert_to_numpy=True)
    return {
        "model": "all-MiniLM-L6-v2",
        "made_by": f"sentence-transformers {__import__('sentence_transformers').__version__}",
        "sentences": SENTENCES,
        "embeddings": [[float(f"{x:.7g}") for x in v] for v in vectors.tolist()],
    }


def token_ids():
    from transformers import AutoTokenizer

    gguf = "SmolLM2-135M-Instruct.Q4_1.gguf"
    tokenizer = AutoTokenizer.from_pretrained(MODELS, gguf_file=gguf)
    return {
        "model": gguf,
        "made_by": f"transformers {__import__('transformers').__version__} AutoTokenizer(gguf_file=...)",
        "strings": STRINGS,
        "ids": [tokenizer.encode(s, add_special_tokens=False) for s in STRINGS],
    }


def main():
    os.makedirs(FIXTURES, exist_ok=True)
    targets = sys.argv[1:] or ["embeddings", "tokens"]
    if "embeddings" in targets:
        with open(os.path.join(FIXTURES, "minilm_embeddings.json"), "w") as f:
            json.dump(embeddings(), f, ensure_ascii=False)
            f.write("\n")
    if "tokens" in targets:
        with open(os.path.join(FIXTURES, "smollm2_token_ids.json"), "w") as f:
            json.dump(token_ids(), f, ensure_ascii=False, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
