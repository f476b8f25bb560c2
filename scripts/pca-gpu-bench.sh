#!/usr/bin/env bash
# fit-pca on the GPU machine, issue #6, in one run (< 8 min on 16 cores + H100/H200):
#   1. builds only kvcal, bench_pca, test_pca_gpu and make_synthetic_capture (scripts/build-gpu.sh);
#   2. test_pca_gpu (GPU vs CPU fp64, fp16 and fp32 input);
#   3. bench_pca and bench/torch_pca_baseline.py in the same session at the same --rows (32768,
#      then 8192): eigensolve, and covariance accumulation from device memory for fp16 and fp32
#      input next to torch fp32 bmm (fp32 data) and torch fp16-input bmm;
#   4. a synthetic 7B-shaped fp16 capture (28 layers x 4 KV heads x 128, make_synthetic_capture,
#      calibrate's capture writer, uncompressed) of TOKENS tokens of TARGET, the page cache dropped
#      when allowed, then `kvcal fit-pca --device cuda` on it: seconds and read GB/s (its summary);
#   5. numpy check (tests/fixtures/check_pca_numpy.py) of a fit on the first CHECK_TOKENS tokens.
# Usage: scripts/pca-gpu-bench.sh [outdir]   (log: outdir/pca-gpu-bench.log)
# Env: TOKENS (default 1048576), TARGET (k; "k,v" doubles the size: 57 KB/token), CHECK_TOKENS
#      (65536), WORK (scratch dir for the capture, default /tmp/kvcal-pca-bench; removed at the
#      end), BUILD (build-gpu), SKIP_BUILD=1 to reuse a build, E2E_COMPARE=1 to also time the
#      fit with --fp16-kernel off (fp32 route; page cache warm by then).
# Disk: K of 1M tokens is 28.7 GB (the machine has 64 GB); TOKENS is lowered to fit when needed.
set -euo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-pca-gpu-bench-out}
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG="$OUTDIR/pca-gpu-bench.log"
BUILD=${BUILD:-build-gpu}
TOKENS=${TOKENS:-1048576}
TARGET=${TARGET:-k}
CHECK_TOKENS=${CHECK_TOKENS:-65536}
WORK=${WORK:-/tmp/kvcal-pca-bench}
PY=${PYTHON:-python3}
exec > >(tee "$LOG") 2>&1
t_start=$SECONDS
stamp() { echo "== [$((SECONDS - t_start)) s] $*"; }
# A failing step is recorded and the run goes on (one GPU session should yield every figure).
failed=()
step() {
  local name=$1
  shift
  "$@" || { echo "!! $name FAILED (exit $?)"; failed+=("$name"); }
}

stamp "build"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  KVCAL_TARGETS="kvcal bench_pca test_pca_gpu make_synthetic_capture" scripts/build-gpu.sh "$BUILD" \
    > "$OUTDIR/build.log" 2>&1 || { tail -40 "$OUTDIR/build.log"; exit 1; }
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true

stamp "test_pca_gpu"
step test_pca_gpu "$BUILD/tests/test_pca_gpu"

for rows in 32768 8192; do
  eig=""
  [ "$rows" = 32768 ] || eig="--no-eig"
  stamp "bench_pca --rows $rows"
  step "bench_pca $rows" "$BUILD/bench/bench_pca" --rows "$rows" $eig \
    > >(tee "$OUTDIR/bench_pca_$rows.md")
  stamp "torch baseline --rows $rows (same session)"
  step "torch baseline $rows" "$PY" bench/torch_pca_baseline.py --rows "$rows" $eig \
    > >(tee "$OUTDIR/torch_pca_$rows.md")
  sleep 1  # let tee finish
  # Side by side: every covariance row against the faster torch fp32 bmm row of the same --rows.
  "$PY" - "$OUTDIR/bench_pca_$rows.md" "$OUTDIR/torch_pca_$rows.md" <<'PYEOF'
import re, sys
def rates(path):
    out = []
    for line in open(path):
        m = re.search(r"\| ([\d.]+) M tok/s \|", line)
        if m and line.startswith("| "):
            out.append((line.split(" | ")[0][2:], float(m.group(1))))
    return out
kv, th = rates(sys.argv[1]), rates(sys.argv[2])
ref = max((r for n, r in th if "fp32 bmm" in n), default=0.0)
print(f"\n| covariance route | M tok/s | x torch fp32 bmm ({ref:.2f} M tok/s, best row) |")
print("|---|---|---|")
for n, r in kv + th:
    print(f"| {n} | {r:.2f} | {r / ref if ref else float('nan'):.2f}x |")
PYEOF
done

mkdir -p "$WORK"
n_targets=$(echo "$TARGET" | tr ',' '\n' | wc -l)
per_token=$((28 * 4 * 128 * 2 * n_targets))
free_kb=$(df -k --output=avail "$WORK" | tail -1)
max_tokens=$(( (free_kb * 1024 - 4 * 1024 * 1024 * 1024) / per_token ))  # keep 4 GB free
if [ "$TOKENS" -gt "$max_tokens" ]; then
  echo "only $((free_kb / 1024 / 1024)) GB free under $WORK: $TOKENS tokens -> $max_tokens"
  TOKENS=$max_tokens
fi
WORK="$WORK/run.$$"
mkdir -p "$WORK"
trap 'rm -rf "$WORK"' EXIT
stamp "synthetic capture: $TOKENS tokens of $TARGET ($((TOKENS * per_token / 1000000)) MB)"
"$BUILD/bench/make_synthetic_capture" --out "$WORK/cap.h5" --tokens "$TOKENS" --target "$TARGET"
sync
if [ -w /proc/sys/vm/drop_caches ] && echo 3 > /proc/sys/vm/drop_caches 2>/dev/null; then
  echo "page cache dropped: fit-pca reads from disk (cold)"
else
  echo "page cache NOT dropped (no permission): fit-pca may read from memory (warm)"
fi

stamp "kvcal fit-pca --device cuda on $TOKENS tokens"
t0=$(date +%s.%N)
step "fit-pca e2e" "$BUILD/cli/kvcal" fit-pca --capture "$WORK/cap.h5" --out "$WORK/pca.h5" \
  --target "$TARGET" --device cuda --energy 0.99 --block-rows 16384 --no-hash --no-svg
t1=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" 'BEGIN { printf "fit-pca process wall time: %.1f s\n", b - a }'

if [ "${E2E_COMPARE:-0}" = 1 ]; then
  stamp "kvcal fit-pca --device cuda --fp16-kernel off (fp32 on the host + SGEMM), same capture"
  step "fit-pca e2e fp32 route" "$BUILD/cli/kvcal" fit-pca --capture "$WORK/cap.h5" \
    --out "$WORK/pca_fp32.h5" --target "$TARGET" --device cuda --energy 0.99 --block-rows 16384 \
    --no-hash --no-svg --fp16-kernel off
fi

stamp "numpy check of a fit on $CHECK_TOKENS tokens"
step "fit-pca check fit" "$BUILD/cli/kvcal" fit-pca --capture "$WORK/cap.h5" \
  --out "$WORK/pca_check.h5" --target "$TARGET" --device cuda --max-tokens "$CHECK_TOKENS" \
  --no-hash --no-svg
step "numpy check" "$PY" tests/fixtures/check_pca_numpy.py "$WORK/pca_check.h5"
stamp "done"
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED steps: ${failed[*]}"
  exit 1
fi
echo "all steps passed"
