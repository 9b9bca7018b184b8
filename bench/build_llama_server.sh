#!/usr/bin/env bash
# Build llama.cpp's own server (the peer for generation benchmarks) from the llama.cpp
# tree vendored in the llama-cpp-python sdist: llama-server is not on PyPI as a binary.
# Offline-safe flags (see docs/performance.md). Output: $LLAMA_SERVER_DIR/build/bin/llama-server
# (default bench/.llama-server/build/bin/llama-server). Takes 10-20 min on 2 cores.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dir="${LLAMA_SERVER_DIR:-$here/.llama-server}"
version="${LLAMA_CPP_PYTHON_VERSION:-$(python -c 'import llama_cpp; print(llama_cpp.__version__)')}"
mkdir -p "$dir"
if [ -x "$dir/build/bin/llama-server" ]; then
  echo "already built: $dir/build/bin/llama-server"; exit 0
fi
if [ ! -d "$dir/src" ]; then
  python -m pip download --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dir/sdist"
  mkdir -p "$dir/src" && tar -xzf "$dir"/sdist/llama_cpp_python-*.tar.gz -C "$dir/src" --strip-components=1
fi
cmake -S "$dir/src/vendor/llama.cpp" -B "$dir/build" -DCMAKE_BUILD_TYPE=Release \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF \
  -DLLAMA_BUILD_EXAMPLES=OFF -DBUILD_SHARED_LIBS=OFF
cmake --build "$dir/build" --target llama-server -j"${JOBS:-2}"
echo "built: $dir/build/bin/llama-server"
