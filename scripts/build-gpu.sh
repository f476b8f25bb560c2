#!/usr/bin/env bash
# Builds kvcal on the GPU machine (Ubuntu 24.04, CUDA 13, PyTorch with CUDA) against the libtorch
# of the installed PyTorch. Boost.Program_options comes from a prefix:
#   KVCAL_BOOST_PREFIX=<dir>   an unpacked prefix containing usr/lib/x86_64-linux-gnu/cmake/Boost-*
#   (default) .deps/debs/*.deb from scripts/fetch-gpu-deps.sh, unpacked into .deps/boost-prefix
# Usage: scripts/build-gpu.sh [build-dir] [extra cmake args...]; then `cd build-gpu && ctest -L gpu`.
# KVCAL_TARGETS="kvcal bench_pca" builds only the named targets.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
shift || true
PY=${PYTHON:-python3}

PREFIX=${KVCAL_BOOST_PREFIX:-$PWD/.deps/boost-prefix}
if [ -z "${KVCAL_BOOST_PREFIX:-}" ] && [ ! -d "$PREFIX/usr" ]; then
  ls .deps/debs/*.deb >/dev/null 2>&1 || {
    echo "build-gpu: no Boost prefix: run scripts/fetch-gpu-deps.sh on the CPU machine first," \
         "or set KVCAL_BOOST_PREFIX" >&2; exit 1; }
  mkdir -p "$PREFIX"
  for d in .deps/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
fi
BOOST_DIR=$(ls -d "$PREFIX"/usr/lib/x86_64-linux-gnu/cmake/Boost-* | head -n 1)
[ -d "$BOOST_DIR" ] || { echo "build-gpu: no Boost CMake config under $PREFIX" >&2; exit 1; }

TORCH_PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DBoost_DIR="$BOOST_DIR" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DCMAKE_BUILD_RPATH="$PREFIX/usr/lib/x86_64-linux-gnu" "$@"
# KVCAL_TARGETS="a b": build only those targets (default: everything).
TARGETS=()
for t in ${KVCAL_TARGETS:-}; do TARGETS+=(--target "$t"); done
cmake --build "$BUILD" -j "${KVCAL_JOBS:-$(nproc)}" "${TARGETS[@]}"
