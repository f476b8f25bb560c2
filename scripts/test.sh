#!/usr/bin/env bash
# The test command: installs dependencies, builds, runs every CPU test (ctest -LE gpu), then
# rebuilds the file-format tests under AddressSanitizer + UBSan and runs them (malformed input
# must never crash). Exits non-zero on any failure. GPU tests: scripts/build-gpu.sh, then
# `ctest -L gpu` on the GPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
(cd build && ctest -LE gpu --output-on-failure)

# Sanitizer build: only the targets whose tests parse untrusted files.
# CUDA off: these tests exercise host code only, and nvcc would only slow the build down.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DKVCAL_SANITIZE=ON -DKVCAL_WERROR=ON -DKVCAL_WITH_CUDA=OFF >/dev/null
cmake --build build-asan -j "${KVCAL_JOBS:-$(nproc)}" --target test_runtime test_kernels
(cd build-asan && ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
   ctest -R '^test_(runtime|kernels)$' --output-on-failure)
echo "test.sh: all tests passed"
