# shellcheck shell=bash
# Sourced by the benchmarks that run servers (serve.sh, answers.sh), from the repository root.
#
# bench_venv VENV: the venv with the serving clients' packages (httpx, cmake, matplotlib).
# free_port: an unused loopback port. wait_http URL SECONDS: until URL answers 2xx, or fails.
# build_llama_server VENV OUT: compiles llama-server once per set of CPU flags from the llama.cpp
# sources that the llama-cpp-python source distribution carries (the version pinned in
# requirements.txt), for the vector extensions this CPU reports, and sets $llama_server to it.
# VENV holds the cmake wheel; OUT receives the cmake log.

build_llama_server() {
  local venv="$1" out="$2" cache="${ENGRAM_CACHE_DIR:-$HOME/.cache/engram}"
  local cmake="$venv/bin/cmake" threads flags version dir work pair on
  threads="$(nproc)"
  flags="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON"
  for pair in avx512f:AVX512 avx512vbmi:AVX512_VBMI avx512_vnni:AVX512_VNNI avx512_bf16:AVX512_BF16 avx_vnni:AVX_VNNI; do
    if grep -q -w "${pair%%:*}" /proc/cpuinfo; then on=ON; else on=OFF; fi
    flags="$flags -DGGML_${pair#*:}=$on"
  done
  version="$(grep '^llama-cpp-python==' scripts/bench/requirements.txt | cut -d= -f3)"
  dir="$cache/llama-server-$version"
  if [[ ! -x "$dir/llama-server" || "$(cat "$dir/cmake-flags" 2>/dev/null)" != "$flags" ]]; then
    echo "building llama-server from llama-cpp-python $version's llama.cpp sources (once)"
    work="$(mktemp -d)"
    "$venv/bin/pip" download --quiet --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
      "llama-cpp-python==$version" -d "$work"
    tar xzf "$work"/llama_cpp_python-"$version".tar.gz -C "$work"
    # shellcheck disable=SC2086 # the flags are words
    "$cmake" -S "$work/llama_cpp_python-$version/vendor/llama.cpp" -B "$work/build" -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF $flags >"$out/llama-cmake.log"
    "$cmake" --build "$work/build" --target llama-server -j "$threads" >>"$out/llama-cmake.log"
    mkdir -p "$dir"
    cp "$work/build/bin/llama-server" "$dir/"
    echo "$flags" >"$dir/cmake-flags"
    rm -rf "$work"
  fi
  llama_server="$dir/llama-server"
}

bench_venv() {
  if [[ ! -x "$1/bin/python" ]]; then
    python3 -m venv "$1"
  fi
  grep -E '^(httpx|cmake|matplotlib)==' scripts/bench/requirements.txt |
    xargs "$1/bin/pip" install --quiet --disable-pip-version-check
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_http() { # url seconds
  for _ in $(seq $(($2 * 10))); do
    if curl -sf -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  echo "$(basename "$0"): nothing answered $1 within $2 s" >&2
  return 1
}
