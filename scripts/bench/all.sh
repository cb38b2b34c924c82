#!/usr/bin/env bash
# Every benchmark; later ones join here. Each writes its section of docs/BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
./models.sh
./index.sh
./train.sh
./serve.sh
./answers.sh
