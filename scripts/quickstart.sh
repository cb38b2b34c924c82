#!/usr/bin/env bash
# Runs engram on its embedded defaults: no server to install. Everything it stores goes under
# ENGRAM_HOME (default ./.engram). The pipeline runs as `feature-pipeline run` over
# samples/pipeline.toml; rerunning is safe and fast: unchanged steps are skipped.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export ENGRAM_HOME="${ENGRAM_HOME:-$root/.engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}/target}"

echo "==> models"
./scripts/fetch-models.sh

# ENGRAM_PROFILE=dev builds faster and runs slower (models still run optimised).
profile="${ENGRAM_PROFILE:-release}"
echo "==> build ($profile)"
if [[ "$profile" == "release" ]]; then
  cargo build --release --workspace --bins
  bin="$CARGO_TARGET_DIR/release"
else
  cargo build --workspace --bins
  bin="$CARGO_TARGET_DIR/debug"
fi

echo "==> storage (embedded defaults under $ENGRAM_HOME)"
"$bin/feature-pipeline" status

echo
echo "==> the pipeline, one recorded run (samples/pipeline.toml): extract → explore → filter → dataset → index → model → train"
echo "    (the first run distils summaries with the local teacher and fine-tunes the SLM on them: minutes;"
echo "     reruns skip unchanged steps)"
"$bin/feature-pipeline" run --config samples/pipeline.toml

echo
echo "==> what it made"
"$bin/feature-pipeline" runs --limit 1
"$bin/feature-pipeline" datasets
"$bin/feature-pipeline" indexes
"$bin/feature-pipeline" models list
echo "retrieval on the sample questions:"
"$bin/feature-pipeline" eval retrieval --questions samples/questions.tsv | tail -n 1
echo "answers on the sample questions (production and its base; README, \"Conversations and grounded answers\"):"
"$bin/feature-pipeline" eval answers --questions samples/answers.tsv | tail -n 4
echo "explore report: $ENGRAM_HOME/reports/ (newest run)"
echo "fine-tuning: base vs fine-tuned on the test split above; the adapter, merged model and loss curve:"
echo "  feature-pipeline models export <version> DIR   (see feature-pipeline models list --json)"

addr="${ENGRAM_ADDR:-127.0.0.1:8080}"
echo
echo "==> inference service on http://$addr (Ctrl-C stops it)"
cat <<EXAMPLE
  curl -s http://$addr/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":"Which train did we take to Sintra?"}],"max_tokens":64}'
EXAMPLE
exec "$bin/inference-service" --addr "$addr"
