#!/usr/bin/env bash
# Configures and builds kvcal on the CPU machine (Debian 12 packages; CUDA compiled when nvcc is
# found). Usage: scripts/build.sh [build-dir] [extra cmake args...]
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build}
shift || true
JOBS=${KVCAL_JOBS:-$(nproc)}
cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKVCAL_WERROR=ON "$@"
cmake --build "$BUILD" -j "$JOBS"
