#!/usr/bin/env bash
# GPU check and timing of train-ae / train-policy (issue 7) on the GPU machine: configures like
# scripts/build-gpu.sh but builds only kvcal and test_train, runs test_train, captures the
# reference model on CUDA, then trains on CPU and on CUDA and prints tokens/s of each.
# Usage: scripts/train-gpu-check.sh [build-dir] [max-tokens]   (default build-gpu, 65536)
# BENCH7B=1 also builds and runs bench_train (synthetic Qwen2.5-7B-shaped capture, CPU and CUDA).
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${1:-build-gpu}
TOKENS=${2:-65536}
PY=${PYTHON:-python3}
PREFIX=${KVCAL_BOOST_PREFIX:-$PWD/.deps/boost-prefix}
if [ ! -d "$PREFIX/usr" ]; then
  mkdir -p "$PREFIX"
  for d in .deps/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done
fi
BOOST_DIR=$(ls -d "$PREFIX"/usr/lib/x86_64-linux-gnu/cmake/Boost-* | head -n 1)
TORCH_PREFIX=$($PY -c 'import torch; print(torch.utils.cmake_prefix_path)')
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DBoost_DIR="$BOOST_DIR" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DTORCH_CUDA_ARCH_LIST=9.0 \
  -DCMAKE_BUILD_RPATH="$PREFIX/usr/lib/x86_64-linux-gnu" >/dev/null
cmake --build "$BUILD" -j "${KVCAL_JOBS:-$(nproc)}" --target kvcal test_train
(cd "$BUILD/tests" && ./test_train)

K=$PWD/$BUILD/cli/kvcal
W=${OUT:-/tmp}/train-gpu
mkdir -p "$W"
$K capture --model data/models/kvcal-ref-v1 --text data/calib.txt --out "$W/cap.h5" \
  --seq-len 1024 --max-tokens "$TOKENS" --batch 8 --device cuda --store float32 \
  --record k,v,q,hidden,attn -q
$K fit-pca --capture "$W/cap.h5" --out "$W/pca.h5" --rank 16 --no-hash -q
for dev in cpu cuda; do
  echo "== $dev"
  $K train-ae --capture "$W/cap.h5" --out "$W/ae-$dev.safetensors" --latent 16 --pca "$W/pca.h5" \
    --epochs 3 --batch 2048 --device $dev -q | head -12
  $K train-ae --capture "$W/cap.h5" --out "$W/ae-attn-$dev.safetensors" --latent 16 \
    --pca "$W/pca.h5" --loss attn --epochs 1 --batch 4096 --device $dev -q | head -3
  $K train-ae --capture "$W/cap.h5" --out "$W/ae-mlp-$dev.safetensors" --latent 16 --arch mlp \
    --epochs 3 --batch 2048 --device $dev -q | head -3
  $K train-ae --capture "$W/cap.h5" --out "$W/ae-mlp-bf16-$dev.safetensors" --latent 16 \
    --arch mlp --precision bf16 --epochs 3 --batch 2048 --device $dev -q | head -3
  $K train-policy --capture "$W/cap.h5" --out "$W/pol-$dev.safetensors" --epochs 3 \
    --batch 4096 --device $dev -q
  $K train-policy --capture "$W/cap.h5" --out "$W/polh-$dev.safetensors" --recipe h2o-label \
    --epochs 3 --batch 4096 --device $dev -q | head -2
done

if [ "${BENCH7B:-0}" = 1 ]; then
  cmake --build "$BUILD" -j "${KVCAL_JOBS:-$(nproc)}" --target bench_train
  "$BUILD/bench/bench_train" --dir "$W" --devices cuda,cpu
fi
