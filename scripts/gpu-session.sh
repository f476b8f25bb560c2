#!/usr/bin/env bash
# One GPU-machine session of checks and benchmarks, in phases, logs under $OUT (or /tmp/kvcal-gpu):
#   scripts/gpu-session.sh PHASE...      phases run in the order given:
#     build      scripts/build-gpu.sh (all targets), then the GPU tests
#     tests      ctest -L gpu
#     ckpt       random Qwen2.5-7B-shaped checkpoint in /tmp/qwen7b-random (bench/make_random_checkpoint.py)
#     e2e        bench_model --kv-cache: TTFT / TPOT through full_cache and gpu_packed_cache
#     model      bench_model (kvcal eager + CUDA graph) and transformers on the same checkpoint
#     capture    capture of the reference model on CUDA checked with h5py + transformers
#                (tests/fixtures/check_capture.py), and the capture benchmark on the 7B checkpoint
#     decode     kvcal bench (presets vs torch SDPA in-process) + bench/sdpa_baseline.py; DEC_ARGS
#     decode_dev bench_decode: fp16 / kivi with fp32 and fp16 dequantization arithmetic
#     latent_eval eval --gpu-kernels vs CPU on knlp-v-pca-int8 / hybrid-k2-vpca8 (rank-32 PCA)
#     prof       SASS + Nsight Compute source-level profile of the register-direct kernel (PRESET)
#     sanitize   compute-sanitizer memcheck + racecheck on test_kernels_gpu (subset)
#     pca        bench_pca + torch baseline
#     train      bench_train (7B-shaped synthetic capture, CPU and CUDA)
# Each phase appends to $OUT/<phase>.log; a failing phase is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
O=${OUT:-/tmp/kvcal-gpu}
mkdir -p "$O"
B=build-gpu
CK=/tmp/qwen7b-random
T0=$(date +%s)
stamp() { echo "[$(($(date +%s) - T0)) s] $*"; }

phase_build() {
  KVCAL_JOBS=16 scripts/build-gpu.sh "$B" >"$O/build.log" 2>&1 || { grep -E "error|Error" -A3 "$O/build.log" | head -60; return 1; }
}
phase_rebuild() { cmake --build "$B" -j 16 >"$O/rebuild.log" 2>&1 || { grep -E "error" -A3 "$O/rebuild.log" | head -40; return 1; }; }
phase_tests() { (cd "$B" && ctest -L gpu --output-on-failure -j 1) 2>&1 | tee "$O/tests.log" | tail -25; }
phase_ckpt() { [ -d "$CK" ] || python3 bench/make_random_checkpoint.py "$CK" 2>&1 | grep -v Writing | tail -2; }
phase_model() {
  "$B"/bench/bench_model "$CK" 2>&1 | tee "$O/model.log"
  python3 bench/transformers_model.py "$CK" 2>&1 | grep -v Warning | tee -a "$O/model.log"
}
# End to end through the CUDA kernels' cache (issue 11): TTFT / TPOT at B8 ctx 32k (gpu_packed_cache kinds
# also replayed from a CUDA graph: rows "e2e graph"), sequences that fit
phase_e2e() {
  "$B"/bench/bench_model "$CK" --prefill 4096 --batch 8 --no-graph --steps 16 \
    --kv-cache ${E2E_KINDS:-full,fp16,kivi-4,kivi-2,h2o,streaming-llm,learned} --kv-context ${E2E_CTX:-32768} --kv-batch ${E2E_B:-8} 2>&1 | tee "$O/e2e.log"
}
phase_capture() { phase_capture_ref; phase_capture_7b; }
phase_capture_ref() {
  local W=/tmp/capw; mkdir -p "$W"
  "$B"/cli/kvcal capture --model data/models/kvcal-ref-v1 --text data/calib.txt --out "$W/ref.h5" \
    --seq-len 512 --max-tokens 4096 --batch 4 --device cuda --record k,k_rope,v,q,hidden,attn -q
  python3 tests/fixtures/check_capture.py "$W/ref.h5" data/models/kvcal-ref-v1 --device cuda 2>&1 | tail -15
}
phase_capture_7b() {
  local W=/tmp/capw; mkdir -p "$W"
  # 7B-shaped capture throughput: the random checkpoint has no tokenizer; the reference model's
  # (vocab 6144 < 152064) tokenizes a text of random words
  cp -n data/models/kvcal-ref-v1/tokenizer.json "$CK"/ 2>/dev/null
  python3 -c "import random; random.seed(1); w=[''.join(random.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(random.randint(2,9))) for _ in range(60000)]; open('$W/words.txt','w').write(' '.join(random.choice(w) for _ in range(400000)))"
  # plain prefill of the same runner, same shapes (B1 L4096), for the capture/prefill ratio
  "$B"/bench/bench_model "$CK" --prefill 4096 --batch 1 --context 512 --steps 2 --warmup 1 --no-graph \
    2>&1 | grep -E "prefill"
  for c in off on; do
    stamp "capture 7B compress=$c"
    "$B"/cli/kvcal capture --model "$CK" --text "$W/words.txt" --out "$W/cap7b-$c.h5" --seq-len 4096 \
      --max-tokens 65536 --batch 1 --device cuda --record k,v --compress $c -q 2>&1 | tail -3
  done
  python3 -c "import h5py,numpy as np; a=h5py.File('$W/cap7b-off.h5');b=h5py.File('$W/cap7b-on.h5'); print('h5py: compression', b['layers/0/k'].compression, 'shuffle', b['layers/0/k'].shuffle, 'off == on:', all(np.array_equal(a[f'layers/{l}/{x}'][:],b[f'layers/{l}/{x}'][:]) for l in (0,13,27) for x in 'kv'))"
  rm -f "$W"/cap7b-*.h5
  "$B"/bench/bench_capture_write --dir "$W" --tokens 65536 --threads 1,4,auto 2>&1 | tail -12
}
DEC_ARGS=${DEC_ARGS:---batch 1,8,32 --len 4096,32768,131072}
phase_decode() {
  "$B"/cli/kvcal bench $DEC_ARGS --preset fp16 kivi-4 kivi-2 knlp-v-pca-int8 hybrid-k2-vpca8 h2o mlsys-aggressive \
    --json "$O/bench-decode.json" 2>&1 | tee "$O/decode.log"
  python3 bench/sdpa_baseline.py $DEC_ARGS 2>&1 | tee -a "$O/decode.log"
}
phase_decode_dev() { "$B"/bench/bench_decode $DEC_ARGS 2>&1 | tee "$O/decode_dev.log"; }
# compute-sanitizer memcheck and racecheck on the kernel tests (a subset: the sanitizer is ~100x slower)
phase_sanitize() {
  for tool in memcheck racecheck; do
    for tc in "quant append*" "end to end*" "unsupported*" "decode attention:*"; do
      stamp "sanitizer $tool: $tc"
      timeout 100 compute-sanitizer --tool $tool --error-exitcode 9 "$B"/tests/test_kernels_gpu -tc="$tc" 2>&1 | tail -4
      echo "rc ${PIPESTATUS[0]}"
    done
    stamp "sanitizer $tool: test_evict_gpu"
    timeout 200 compute-sanitizer --tool $tool --error-exitcode 9 "$B"/tests/test_evict_gpu 2>&1 | tail -4
    echo "rc ${PIPESTATUS[0]}"
  done
}
# The session-4 kernels under compute-sanitizer (register-direct, latent, eviction, graph step,
# H2O prompt scores), 60 s each (rc 124 = cut by the timeout, not an error).
phase_sanitize_new() {
  for tool in memcheck racecheck; do
    for t in "test_kernels_gpu -tc=decode?attention:?register*" "test_kernels_gpu -tc=latent?append*" \
             test_evict_gpu test_kv_step_gpu "test_h2o_prompt_gpu -tc=*sliding?window*"; do
      stamp "sanitizer $tool: $t"
      timeout 60 compute-sanitizer --tool $tool --error-exitcode 9 "$B"/tests/$t 2>&1 | tail -3
      echo "rc ${PIPESTATUS[0]}"
    done
  done
}
# Register-direct kernel profile at B8 L32k (PRESET, default kivi-4): SASS of the object file and
# Nsight Compute per-instruction executed counts (source page) + the details page.
phase_prof() {
  local pr=${PRESET:-kivi-4} obj
  obj=$(find "$B" -name "decode_attention_rd.cu.o" | head -1)
  cuobjdump -sass "$obj" >"$O/rd.sass" 2>&1 || echo "cuobjdump failed"
  ncu -k regex:decode_attention_rd_kernel -c 1 --set full --import-source no -f -o "$O/rd" \
    "$B"/cli/kvcal bench --batch 8 --len 32768 --preset "$pr" >"$O/prof-run.log" 2>&1 || tail -5 "$O/prof-run.log"
  ncu -i "$O/rd.ncu-rep" --page source --print-source sass --csv >"$O/rd-source.csv" 2>&1 | tail -2
  ncu -i "$O/rd.ncu-rep" --page details >"$O/rd-details.txt" 2>&1
  grep -E "Duration|Executed Instructions|Issue Slots Busy|Achieved Occupancy|Registers Per|Memory Throughput|DRAM Throughput" "$O/rd-details.txt" | head -20
}
# eval --gpu-kernels vs the CPU runtime on the V-latent presets (rank-32 PCA of the reference model)
phase_latent_eval() {
  local K="$B"/cli/kvcal W=/tmp/lat; mkdir -p "$W"
  $K -q capture --model data/models/kvcal-ref-v1 --text data/calib.txt --out $W/calib.h5 --max-tokens 1024 --seq-len 128 --record k,v
  $K -q fit-pca --capture $W/calib.h5 --out $W/pca.h5 --rank 32 --no-svg
  for t in knlp-v-pca-int8 hybrid-k2-vpca8; do
    $K -q export --template $t --model data/models/kvcal-ref-v1 --pca $W/pca.h5 --out $W/$t.safetensors
  done
  local A="--model data/models/kvcal-ref-v1 --text data/eval.txt --device cuda --dtype fp32 --preset $W/knlp-v-pca-int8.safetensors $W/hybrid-k2-vpca8.safetensors --context 768 --prefill 1 --max-tokens 1536"
  stamp "eval CPU runtime"; $K eval $A --json "$O/lat-cpu.json" 2>&1 | tail -8
  stamp "eval --gpu-kernels"; $K eval $A --gpu-kernels --json "$O/lat-gpu.json" 2>&1 | tail -8
}
phase_pca() {
  "$B"/bench/bench_pca 2>&1 | tee "$O/pca.log"
  python3 bench/torch_pca_baseline.py 2>&1 | tee -a "$O/pca.log"
}
phase_train() { mkdir -p /tmp/trainw; "$B"/bench/bench_train --dir /tmp/trainw --devices cuda,cpu 2>&1 | tee "$O/train.log"; }

# A carried .deps replaces the one a warm machine had: unpack Boost again where it is missing.
PREFIX=$PWD/.deps/boost-prefix
[ -d "$PREFIX/usr" ] || { mkdir -p "$PREFIX"; for d in .deps/debs/*.deb; do dpkg -x "$d" "$PREFIX"; done; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
for ph in "$@"; do
  stamp "== $ph"
  "phase_$ph" || echo "PHASE $ph FAILED"
done
stamp "done"
