#!/usr/bin/env bash
# The main job on the embedded default (the reference model data/models/kvcal-ref-v1), CPU only:
#   baseline PPL -> capture of the calibration text -> fit-pca -> export presets -> inspect ->
#   quality through each compressed cache (decode-PPL + passkey) against the full cache.
# Outputs go to $KVCAL_WORK (default build/main-job). Sizes are kept small so the whole job takes
# a few minutes on 2 cores; raise KVCAL_TOKENS for more.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
KVCAL=build/cli/kvcal
MODEL=data/models/kvcal-ref-v1
WORK=${KVCAL_WORK:-build/main-job}
TOKENS=${KVCAL_TOKENS:-8192}
mkdir -p "$WORK"

$KVCAL --version
echo "== baseline perplexity of data/eval.txt (first $TOKENS tokens, windows of 2048)"
$KVCAL eval --model "$MODEL" --text data/eval.txt --max-tokens "$TOKENS" --json "$WORK/eval-baseline.json"

echo "== capture of data/calib.txt (pre-RoPE K, post-RoPE K, V, attention statistics)"
$KVCAL capture --model "$MODEL" --text data/calib.txt --out "$WORK/calib.h5" \
  --max-tokens "$((TOKENS * 2))" --record k,k_rope,v,attn
$KVCAL inspect "$WORK/calib.h5" | head -n 40

echo "== PCA bases per (layer, KV head)"
$KVCAL fit-pca --capture "$WORK/calib.h5" --out "$WORK/pca.h5" --target k,v,k_rope --energy 0.99
$KVCAL inspect "$WORK/pca.h5"

echo "== presets for the reference model (byte accounting at its 2048-token context)"
PRESETS=(kivi-4 kivi-2 knlp-v-pca-int8 h2o streaming-llm mlsys-conservative mlsys-aggressive)
for t in "${PRESETS[@]}"; do
  extra=()
  [[ $t == *pca* ]] && extra=(--pca "$WORK/pca.h5")
  $KVCAL export --template "$t" --model "$MODEL" --out "$WORK/$t.safetensors" --context 2048 "${extra[@]}"
done
$KVCAL inspect "$WORK/kivi-2.safetensors"

echo "== quality through each compressed cache vs the full cache (decode-PPL: prefill 1024, then"
echo "   teacher-forced single-token steps; passkey retrieval at 512 and 2048 tokens)"
presets=()
for t in "${PRESETS[@]}"; do presets+=("$WORK/$t.safetensors"); done
$KVCAL eval --model "$MODEL" --text data/eval.txt --max-tokens 4096 --preset "${presets[@]}" \
  --tasks passkey --task-lengths 512,2048 --task-limit 2 --json "$WORK/eval-presets.json"
echo "main.sh: done; outputs in $WORK"
