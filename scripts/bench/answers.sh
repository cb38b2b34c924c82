#!/usr/bin/env bash
# Answer benchmark: what an extractive answer costs beside a generated one. The release
# inference-service over the sample corpus's index answers every question of samples/answers.tsv
# (54) one at a time, streaming, by extraction (`retrieval.answer: "extract"`) and by generation
# (greedy, at most 160 tokens); llama.cpp's llama-server, same machine, same run, same GGUF,
# answers each from the same sources (engram's /v1/search) under the same instruction. The three
# take turns per question. Time to the first text and to the whole answer, per question.
#
# The index is built here, in a fresh home, by the sample pipeline less its dataset and training
# stages (about half a minute). Writes the Answers section of docs/BENCHMARKS.md and answers.png.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
venv="$cache/bench-venv"
out="$CARGO_TARGET_DIR/bench"
mkdir -p "$out"
results="$out/answers.jsonl"
gguf="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
threads="$(nproc)"

./scripts/fetch-models.sh >/dev/null
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
bench_venv "$venv"
build_llama_server "$venv" "$out"

echo "building feature-pipeline and inference-service (release)"
cargo build --release --quiet -p feature-pipeline -p inference-service
pipeline="$CARGO_TARGET_DIR/release/feature-pipeline"
service="$CARGO_TARGET_DIR/release/inference-service"

home="$(mktemp -d)"
server_pids=()
cleanup() {
  for pid in "${server_pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$home"
}
trap cleanup EXIT

echo "indexing the sample corpus into $home"
awk '/^\[/{skip=($0=="[dataset]"||$0=="[train]")} !skip' samples/pipeline.toml >"$home/pipeline.toml"
ENGRAM_HOME="$home" ENGRAM_LOG=warn "$pipeline" run --config "$home/pipeline.toml" >"$out/answers-pipeline.log" 2>&1

engram_port="$(free_port)"
ENGRAM_HOME="$home" ENGRAM_LOG=warn RAYON_NUM_THREADS="$threads" "$service" --addr "127.0.0.1:$engram_port" \
  >"$out/answers-engram.log" 2>&1 &
server_pids+=($!)
llama_port="$(free_port)"
"$llama_server" -m "$gguf" --host 127.0.0.1 --port "$llama_port" --parallel 1 --ctx-size 4096 \
  --threads "$threads" --threads-batch "$threads" >"$out/answers-llama.log" 2>&1 &
server_pids+=($!)
wait_http "http://127.0.0.1:$engram_port/readyz" 120
wait_http "http://127.0.0.1:$llama_port/health" 120

echo "asking samples/answers.tsv three ways"
"$venv/bin/python" scripts/bench/answers_load.py --engram "http://127.0.0.1:$engram_port" \
  --llama "http://127.0.0.1:$llama_port" --questions samples/answers.tsv | tee "$results"

"$venv/bin/python" scripts/bench/answers_report.py "$results" docs/BENCHMARKS.md
echo "wrote the Answers section of docs/BENCHMARKS.md"
