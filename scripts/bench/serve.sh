#!/usr/bin/env bash
# Serving benchmark: the release inference-service beside llama.cpp's llama-server, same machine,
# same run, same GGUF, same prompts. At 1, 4, 8 and 16 concurrent streaming clients (each sending
# ENGRAM_BENCH_SERVE_REQUESTS requests one after the other, default 2; prompts of about 520 tokens,
# no two alike from their first tokens; 128 new tokens with ignore_eos; greedy; retrieval off):
# aggregate completion tokens/s, time to first token and inter-token latency (p50/p99), errors,
# 429s, and the server's peak RSS (a fresh server per row). Plus one row of engram with retrieval
# on, where ENGRAM_BENCH_HOME (default .engram, the quickstart's) holds a live index.
#
# engram runs with --max-batch 8 --max-queue 4: 12 places, so at 16 clients the excess is shed
# with 429 (clients wait Retry-After and go on). llama-server runs with --parallel N (N clients)
# and a context of N x 1024 tokens. llama-server is built here from the llama.cpp sources that the
# llama-cpp-python source distribution carries, for the vector extensions this CPU reports
# (lib.sh).
# The load generator (serve_load.py) targets loopback only, bounded in requests and time.
# Writes the Serving section of docs/BENCHMARKS.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
venv="$cache/bench-venv"
out="$CARGO_TARGET_DIR/bench"
mkdir -p "$out"
results="$out/serve.jsonl"
: >"$results"
requests="${ENGRAM_BENCH_SERVE_REQUESTS:-2}"
gguf="$root/models/SmolLM2-135M-Instruct.Q4_1.gguf"
threads="$(nproc)"

./scripts/fetch-models.sh >/dev/null
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
bench_venv "$venv"
build_llama_server "$venv" "$out"

echo "building inference-service (release)"
cargo build --release --quiet -p inference-service
service="$CARGO_TARGET_DIR/release/inference-service"

prompts="$out/serve-prompts.json"
"$venv/bin/python" scripts/bench/serve_load.py --write-prompts "$prompts" --count 40

server=""
stop_server() {
  if [[ -n "$server" ]]; then
    kill -INT "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
  fi
}
trap stop_server EXIT

# One row: the load, then the server's peak RSS, as one JSON line.
measure() { # engine port clients retrieval
  local line rss
  line="$("$venv/bin/python" scripts/bench/serve_load.py --url "http://127.0.0.1:$2" --engine "$1" \
    --clients "$3" --requests "$requests" --prompts "$prompts" ${4:+--retrieval "$4"})"
  rss="$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$server/status")"
  python3 -c 'import json, sys; row = json.loads(sys.argv[1]); row["peak_rss_mib"] = int(sys.argv[2]); print(json.dumps(row))' \
    "$line" "$rss" | tee -a "$results"
}

engram() { # home clients retrieval
  local port
  port="$(free_port)"
  ENGRAM_HOME="$1" ENGRAM_LOG=warn RAYON_NUM_THREADS="$threads" "$service" --model "$gguf" \
    --addr "127.0.0.1:$port" --max-batch 8 --max-queue 4 --max-completion-tokens 128 \
    >>"$out/serve-engram.log" 2>&1 &
  server=$!
  wait_http "http://127.0.0.1:$port/healthz" 60
  measure engram "$port" "$2" "$3"
  stop_server
}

llama_server() { # clients
  local port
  port="$(free_port)"
  "$llama_server" -m "$gguf" --host 127.0.0.1 --port "$port" --parallel "$1" --ctx-size $(($1 * 1024)) \
    --threads "$threads" --threads-batch "$threads" >>"$out/serve-llama.log" 2>&1 &
  server=$!
  wait_http "http://127.0.0.1:$port/health" 120
  measure llama-server "$port" "$1" ""
  stop_server
}

empty_home="$(mktemp -d)"
for clients in 1 4 8 16; do
  engram "$empty_home" "$clients" off
  llama_server "$clients"
done
bench_home="${ENGRAM_BENCH_HOME:-$root/.engram}"
if [[ -f "$bench_home/registry.sqlite" ]] && ENGRAM_HOME="$bench_home" "$service" --check >/dev/null 2>&1 </dev/null; then
  engram "$bench_home" 8 on
else
  echo "no live index in $bench_home (run ./scripts/quickstart.sh first): the retrieval-on row is left out"
fi
rm -rf "$empty_home"

"$venv/bin/python" scripts/bench/serve_report.py "$results" docs/BENCHMARKS.md
echo "wrote the Serving section of docs/BENCHMARKS.md"
