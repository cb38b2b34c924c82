#!/usr/bin/env bash
# Training benchmark: `feature-pipeline bench-train` beside Hugging Face transformers + peft on torch
# (CPU), same machine, same run, same model (the HF export of the shipped GGUF), same LoRA config and
# workload (batch 1, 512-token sequences, the last 128 carrying the loss), at 1 and 2 threads, each
# in a fresh process (peak RSS). The engines alternate over ENGRAM_BENCH_TRAIN_ROUNDS rounds (3) at
# each thread count, so a slow spell of a shared machine falls on both; the report gives each
# engine's median and the range of the per-round ratios. Writes the Training section of
# docs/BENCHMARKS.md, with the hand-written notes of docs/bench-notes/train.md after the table.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
venv="$cache/bench-venv"
out="$CARGO_TARGET_DIR/bench"
mkdir -p "$out"
results="$out/train.jsonl"
: >"$results"
steps="${ENGRAM_BENCH_TRAIN_STEPS:-6}"
rounds="${ENGRAM_BENCH_TRAIN_ROUNDS:-3}"

./scripts/fetch-models.sh >/dev/null
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
# Only the peer's packages (models.sh installs the rest, llama.cpp's compile included).
grep -E '^(torch|transformers|peft)==' scripts/bench/requirements.txt |
  xargs "$venv/bin/pip" install --quiet --disable-pip-version-check

echo "building feature-pipeline (release)"
cargo build --release --quiet -p feature-pipeline
bin="$CARGO_TARGET_DIR/release/feature-pipeline"

model="$out/smollm2-hf"
if [[ ! -f "$model/model.safetensors" ]]; then
  rm -rf "$model"
  "$bin" models export-hf models/SmolLM2-135M-Instruct.Q4_1.gguf "$model" >/dev/null
fi

for threads in 1 2; do
  for _ in $(seq "$rounds"); do
    "$bin" bench-train --base "$model" --threads "$threads" --steps "$steps" | tee -a "$results"
    "$venv/bin/python" scripts/bench/train_peer.py --model "$model" --threads "$threads" --steps "$steps" |
      tee -a "$results"
  done
done

"$venv/bin/python" scripts/bench/train_report.py "$results" docs/BENCHMARKS.md \
  "${ENGRAM_BENCH_TRAIN_NOTES:-docs/bench-notes/train.md}"
echo "wrote the Training section of docs/BENCHMARKS.md"
