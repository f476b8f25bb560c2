#!/usr/bin/env bash
# Builds and runs fit-pca's GPU test and benchmark without the full project (no libtorch, no
# Boost): nvcc + Eigen + doctest only. For a quick check on the GPU machine:
#   scripts/pca-gpu-quick.sh [outdir]     -> outdir/test_pca_gpu, outdir/bench_pca
# The full build (scripts/build-gpu.sh) builds the same targets as test_pca_gpu / bench_pca.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build-pca-quick}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
EIGEN=$(ls -d /usr/include/eigen3 2>/dev/null || echo /usr/local/include/eigen3)
COMMON=(-O2 -std=c++17 -arch=sm_90 -I. -I"$EIGEN" -DKVCAL_WITH_CUDA=1 -DKVCAL_PCA_QUICK=1)
SRCS=(calibrate/covariance.cpp calibrate/eigensolve.cpp calibrate/covariance_gpu.cu
      calibrate/eigensolve_gpu.cu kernels/common/error.cpp kernels/common/log.cpp
      kernels/common/cuda_device.cpp kernels/common/device_check.cu)
"$NVCC" "${COMMON[@]}" tests/test_pca_gpu.cpp tests/doctest_main.cpp "${SRCS[@]}" \
  -lcublas -lcusolver -o "$OUT/test_pca_gpu" &
p1=$!
"$NVCC" "${COMMON[@]}" bench/bench_pca.cpp "${SRCS[@]}" -lcublas -lcusolver -o "$OUT/bench_pca" &
p2=$!
wait $p1
wait $p2
echo "built $OUT/test_pca_gpu $OUT/bench_pca"
