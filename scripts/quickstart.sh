#!/usr/bin/env bash
# Runs engram on its embedded defaults: no server to install. Everything it stores goes under
# ENGRAM_HOME (default ./.engram). Stages that later issues add say "not yet" instead of running.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export ENGRAM_HOME="${ENGRAM_HOME:-$root/.engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}/target}"

echo "==> models"
./scripts/fetch-models.sh

echo "==> build (release)"
cargo build --release --workspace --bins
bin="$CARGO_TARGET_DIR/release"

echo "==> storage (embedded defaults under $ENGRAM_HOME)"
"$bin/feature-pipeline" status

echo
echo "==> pipeline stages"
for stage in "extract (Notion export, crawl)" "explore / filter" "dataset (distil, qc, split, publish)" \
  "index (chunk, embed, alias)" "train (fine-tune, register)"; do
  echo "  $stage: not yet — its issue is open"
done

echo
echo "==> inference service"
"$bin/inference-service"
