#!/usr/bin/env bash
# Issue 10's evaluation sweep on the reference model, CPU: every eviction policy and the mlsys
# hybrid templates at matched byte budgets (export --match-ratio R, accounting at 2048 tokens),
# decode-PPL and passkey / recall by depth. Also builds the learned policies end to end
# (capture -> train-policy -> export) and the per-KV-head budgets (export --head-budgets).
#
#   scripts/eviction-sweep.sh [build dir, default build] [out dir, default <build>/eviction-sweep]
# What docs/BENCHMARKS.md ran (CPU, 2 cores): the sweep, recall for the same presets, and one
# extra preset (learned + 32-token window) evaluated afterwards with its own baseline:
#   export RATIOS="4 12 8" PPL_TOKENS=2048 PREFILL=1536 PK_LIMIT=5 RC_LIMIT=5
#   PARTS="export eval" scripts/eviction-sweep.sh build-h2
#   PARTS=recall scripts/eviction-sweep.sh build-h2
#   PARTS="export eval recall" NAMES=learned-fa-w32 TAG=w scripts/eviction-sweep.sh build-h2
# Then: python3 scripts/eviction-sweep/table.py <out dir>   (the table in docs/BENCHMARKS.md)
set -euo pipefail
BUILD=${1:-build}
OUT=${2:-$BUILD/eviction-sweep}
KVCAL=$BUILD/cli/kvcal
MODEL=data/models/kvcal-ref-v1
RATIOS=${RATIOS:-4 8 12}
PK_LIMIT=${PK_LIMIT:-10}          # passkey instances per length (round-robin over 5 depths)
RC_LIMIT=${RC_LIMIT:-5}           # recall instances per length (0: recall skipped)
PPL_TOKENS=${PPL_TOKENS:-4096}    # decode-PPL over the first N tokens of data/eval.txt
PREFILL=${PREFILL:-1024}          # of each 2048-token window; the rest is decoded step by step
LENGTHS=${LENGTHS:-1024,2048}
CAP_TOKENS=${CAP_TOKENS:-16384}   # calibration capture for train-policy / head budgets
RECIPES=scripts/eviction-sweep
PARTS=${PARTS:-export eval recall}   # steps 3 / 4a / 4b to run (1-2 run when their files are missing)
TAG=${TAG:-}                         # suffix of the JSON names (eval@R.TAG.json), for extra runs
NAMES=${NAMES:-window sinks-window lru h2o h2o-heads cluster learned-fa learned-h2o mlsys-conservative mlsys-aggressive mlsys-extreme}
has() { case " $PARTS " in *" $1 "*) return 0 ;; esac; return 1; }
J=${TAG:+.$TAG}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }

# 1. Calibration capture (first CAP_TOKENS tokens of data/calib.txt, 1024-token sequences).
if [ ! -f "$OUT/cap.h5" ]; then
  log capture
  "$KVCAL" capture --model $MODEL --text data/calib.txt --out "$OUT/cap.h5" --seq-len 1024 \
    --max-tokens "$CAP_TOKENS" --record k,v,q,hidden,attn
fi
# 2. Learned policies, both recipes; one hidden layer so that a preset can hold them.
if [ ! -f "$OUT/policy-fa.safetensors" ]; then
  log train-policy future-attn
  "$KVCAL" train-policy --capture "$OUT/cap.h5" --out "$OUT/policy-fa.safetensors" \
    --recipe future-attn --hidden 512 --epochs 10 --device cpu
fi
if [ ! -f "$OUT/policy-h2o.safetensors" ]; then
  log train-policy h2o-label
  "$KVCAL" train-policy --capture "$OUT/cap.h5" --out "$OUT/policy-h2o.safetensors" \
    --recipe h2o-label --hidden 128 --epochs 10 --device cpu
fi
# 3. Presets at each ratio.
for R in $RATIOS; do
  has export || break
  d="$OUT/r$R"
  mkdir -p "$d"
  ex() { "$KVCAL" export --model $MODEL --context 2048 --match-ratio "$R" "$@" > /dev/null; }
  ex --recipe $RECIPES/window.json --out "$d/window.safetensors"
  ex --template streaming-llm --out "$d/sinks-window.safetensors"
  ex --recipe $RECIPES/lru.json --out "$d/lru.safetensors"
  ex --template h2o --out "$d/h2o.safetensors"
  ex --template h2o --head-budgets entropy --capture "$OUT/cap.h5" --out "$d/h2o-heads.safetensors"
  ex --recipe $RECIPES/cluster.json --out "$d/cluster.safetensors"
  ex --template learned-eviction --policy "$OUT/policy-fa.safetensors" --out "$d/learned-fa.safetensors"
  ex --recipe $RECIPES/learned-key.json --policy "$OUT/policy-h2o.safetensors" \
    --out "$d/learned-h2o.safetensors"
  ex --recipe $RECIPES/learned-window.json --policy "$OUT/policy-fa.safetensors" \
    --out "$d/learned-fa-w32.safetensors"
  for t in mlsys-conservative mlsys-aggressive mlsys-extreme; do
    ex --template $t --out "$d/$t.safetensors"
  done
done
# 4. Evaluation: decode-PPL + passkey, then recall (same presets, same order).
for R in $RATIOS; do
  P=()
  for n in $NAMES; do P+=("$OUT/r$R/$n.safetensors"); done
  if has eval; then
    log "eval $R x: decode-PPL + passkey"
    "$KVCAL" eval --model $MODEL --text data/eval.txt --max-tokens "$PPL_TOKENS" --context 2048 \
      --prefill "$PREFILL" --preset "${P[@]}" --tasks passkey --task-lengths $LENGTHS \
      --task-limit "$PK_LIMIT" --json "$OUT/eval@$R$J.json" > "$OUT/eval@$R$J.md"
  fi
  has recall || continue
  [ "$RC_LIMIT" -gt 0 ] || continue
  log "eval $R x: recall"
  "$KVCAL" eval --model $MODEL --no-ppl --preset "${P[@]}" --tasks recall \
    --task-lengths $LENGTHS --task-limit "$RC_LIMIT" --json "$OUT/recall@$R$J.json" \
    > "$OUT/recall@$R$J.md"
done
log done
python3 scripts/eviction-sweep/table.py "$OUT"
