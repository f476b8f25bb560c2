#!/usr/bin/env bash
# Builds the issue-11 CUDA kernel test and decode benchmark without the full project (no
# libtorch, no Boost): nvcc + doctest (+ nlohmann-json for the CPU codecs the latent tests use). For a quick check on the GPU machine:
#   scripts/kernels-gpu-quick.sh [outdir]   -> outdir/test_kernels_gpu
# bench_decode (with the torch SDPA baseline) needs the full build: scripts/build-gpu.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build-kernels-quick}
mkdir -p "$OUT"
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
COMMON=(-O2 -std=c++17 -arch=sm_90 -I. -DKVCAL_WITH_CUDA=1)
SRCS=(kernels/common/error.cpp kernels/common/log.cpp kernels/common/cuda_device.cpp
      kernels/common/device_check.cu kernels/cpu/bitpack.cpp kernels/cpu/quantize.cpp
      kernels/cpu/rope.cpp kernels/cpu/attention_ref.cpp kernels/cuda/packed_kv.cu
      kernels/cuda/quant_append.cu kernels/cuda/latent_append.cu kernels/cuda/decode_attention.cu
      kernels/cuda/decode_attention_rd.cu kernels/cuda/decode_attention_rd_k3.cu
      kernels/cuda/decode_attention_rd_k4.cu kernels/cuda/decode_attention_rd_k8.cu
      runtime/kv_codec.cpp runtime/ae_mlp.cpp runtime/io/safetensors.cpp runtime/io/mapped_file.cpp
      runtime/preset_recipe.cpp runtime/model_config.cpp runtime/io/atomic_file.cpp
      runtime/io/sha256.cpp)
pids=()
"$NVCC" "${COMMON[@]}" tests/test_kernels_gpu.cpp tests/doctest_main.cpp "${SRCS[@]}" \
  -lcusolver -o "$OUT/test_kernels_gpu" &
pids+=($!)
for p in "${pids[@]}"; do wait "$p"; done
echo "built $OUT"
