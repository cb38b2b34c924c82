#!/usr/bin/env bash
# Chooses chunking and fusion settings: builds the sample corpus's index at several chunk sizes
# and overlaps and runs `feature-pipeline eval retrieval` over samples/questions.tsv for each,
# dense-only, BM25-only and hybrid at several fusion weights. Prints one table (the README's).
#
#   scripts/eval/retrieval-sweep.sh            # uses target/<profile>/feature-pipeline (release if built)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
target="${CARGO_TARGET_DIR:-${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}/target}"
bin="$target/release/feature-pipeline"
[[ -x "$bin" ]] || bin="$target/debug/feature-pipeline"
[[ -x "$bin" ]] || { echo "build feature-pipeline first (cargo build --release -p feature-pipeline)" >&2; exit 1; }
./scripts/fetch-models.sh >/dev/null

export ENGRAM_HOME="$(mktemp -d)" ENGRAM_LOG=error
trap 'rm -rf "$ENGRAM_HOME"' EXIT
"$bin" extract notion samples/notion-export >/dev/null
"$bin" extract files samples/site/articles samples/site/composting-guide.html samples/site/notes >/dev/null
"$bin" filter >/dev/null 2>&1

metric() { # args… -> "hit@1 hit@5 MRR"
  "$bin" eval retrieval --questions samples/questions.tsv "$@" | tail -n1 |
    sed -E 's/.*hit@1 ([0-9.]+) +hit@3 ([0-9.]+) +hit@5 ([0-9.]+) +MRR ([0-9.]+).*/\1 \3 \4/'
}
printf '| chunk tokens | overlap | chunks | retrieval | hit@1 | hit@5 | MRR |\n|---|---|---|---|---|---|---|\n'
for setting in "96 16" "160 0" "160 32" "224 48"; do
  read -r tokens overlap <<<"$setting"
  chunks=$("$bin" index --chunk-tokens "$tokens" --chunk-overlap "$overlap" --keep 1 | sed -nE 's/index: v[0-9]+ is live: ([0-9]+) chunks.*/\1/p')
  for mode in "dense" "sparse" "hybrid 1" "hybrid 1.5" "hybrid 2"; do
    read -r name weight <<<"$mode"
    args=(--mode "${name}")
    [[ -n "${weight:-}" ]] && args+=(--sparse-weight "$weight")
    read -r h1 h5 mrr <<<"$(metric "${args[@]}")"
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$tokens" "$overlap" "$chunks" "$mode" "$h1" "$h5" "$mrr"
  done
done
