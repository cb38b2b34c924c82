#!/usr/bin/env bash
# Index memory benchmark: peak RSS of `feature-pipeline index` on generated corpora of 10k and 100k
# chunks (ENGRAM_BENCH_INDEX_SIZES), each in a fresh ENGRAM_HOME: the first build (every chunk
# embedded) and a rebuild of the same documents (every vector reused from the previous version),
# each a fresh process. Memory is meant to be bounded by the batch size, not the corpus: the
# 100k-chunk build must not need ten times the 10k one's memory. Writes the Index memory section
# of docs/BENCHMARKS.md.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
out="$CARGO_TARGET_DIR/bench/index"
results="$out/index.jsonl"
sizes="${ENGRAM_BENCH_INDEX_SIZES:-10000 100000}"
mkdir -p "$out"
: >"$results"

./scripts/fetch-models.sh >/dev/null
echo "building feature-pipeline (release)"
cargo build --release --quiet --workspace --bins
bin="$CARGO_TARGET_DIR/release/feature-pipeline"

for size in $sizes; do
  home="$out/home-$size"
  corpus="$out/corpus-$size"
  rm -rf "$home"
  [[ -d "$corpus" ]] || python3 scripts/bench/index_corpus.py "$corpus" --chunks "$size"
  export ENGRAM_HOME="$home"
  "$bin" extract files "$corpus" >/dev/null
  "$bin" filter --min-quality 0 >/dev/null
  for pass in build rebuild; do
    python3 scripts/bench/peak_rss.py "$pass" "$bin" index --chunk-tokens 48 --chunk-overlap 0 |
      python3 -c "import json,sys; r=json.loads(sys.stdin.read()); r['size']=$size; print(json.dumps(r))" |
      tee -a "$results"
  done
  unset ENGRAM_HOME
done

python3 scripts/bench/index_report.py "$results" docs/BENCHMARKS.md
echo "wrote the Index memory section of docs/BENCHMARKS.md"
