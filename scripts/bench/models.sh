#!/usr/bin/env bash
# Model benchmark: engram's candle models beside their peers, same machine, same run.
#   embeddings: engram (its packed encoder, and candle's BERT) vs sentence-transformers (torch CPU),
#               batch 1/16/64
#   generation: engram (SmolLM2 GGUF) vs llama.cpp (llama-cpp-python) on the same GGUF,
#               150-token prompt, 128 new tokens, greedy, the median of three generations
#   kernels:    engram's decode kernels alone, per instruction set, one thread
# Each at 1 and 2 threads, each measurement in a fresh process (peak RSS). Writes the table into
# docs/BENCHMARKS.md. The peers are installed into a venv under $ENGRAM_CACHE_DIR (first run: long).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
venv="$cache/bench-venv"
out="$CARGO_TARGET_DIR/bench"
mkdir -p "$out"
results="$out/models.jsonl"
: >"$results"

./scripts/fetch-models.sh >/dev/null

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
# llama.cpp's default native build used AMX on one machine here and crashed with an illegal
# instruction; build it for the vector extensions this CPU reports instead (each AVX-512 and VNNI
# extension only where present: another machine here has AVX2 only), so the peer gets every SIMD
# path this CPU offers. A venv built on another CPU is rebuilt when the choice differs.
flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
for pair in avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
  if grep -q -w "${pair%%:*}" /proc/cpuinfo; then on=ON; else on=OFF; fi
  flags="$flags -DGGML_${pair#*:}=$on"
done
# llama.cpp first (compiled once, with those flags), then the rest and its dependencies.
if [[ "$(cat "$venv/llama-cmake-flags" 2>/dev/null)" != "$flags" ]]; then
  CMAKE_ARGS="$flags" "$venv/bin/pip" install --quiet --disable-pip-version-check --no-cache-dir \
    --force-reinstall --no-deps "$(grep '^llama-cpp-python' scripts/bench/requirements.txt)"
  echo "$flags" >"$venv/llama-cmake-flags"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/bench/requirements.txt

echo "building the benchmark (release)"
# The executable cargo reports (tests/models.rs builds a binary of the same name beside it).
bench="$(cargo build --release --quiet -p engram-shared --bench models --message-format=json |
  python3 -c 'import json, sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')"

prompt="$out/prompt.txt"
for threads in 1 2; do
  for batch in 1 16 64; do
    for encoder in packed candle; do
      RAYON_NUM_THREADS=$threads "$bench" embed --batch "$batch" --encoder "$encoder" | tee -a "$results"
    done
    "$venv/bin/python" scripts/bench/peers.py embed --threads "$threads" --batch "$batch" | tee -a "$results"
  done
  for weights in packed q8_0 f32 as-stored; do
    RAYON_NUM_THREADS=$threads "$bench" generate --weights "$weights" --prompt-out "$prompt" | tee -a "$results"
  done
  # On an AVX-512 CPU, also the AVX-512 decode kernels (the default is AVX2: see kernels/mod.rs).
  if grep -q -w avx512bw /proc/cpuinfo; then
    ENGRAM_KERNEL=avx512 RAYON_NUM_THREADS=$threads "$bench" generate --weights packed | tee -a "$results"
  fi
  "$venv/bin/python" scripts/bench/peers.py generate --threads "$threads" --prompt "$prompt" | tee -a "$results"
done

# The decode kernels alone, one thread, weights streamed from memory.
RAYON_NUM_THREADS=1 "$bench" kernels | tee -a "$results"

"$venv/bin/python" scripts/bench/report.py "$results" docs/BENCHMARKS.md
echo "wrote docs/BENCHMARKS.md"
