#!/usr/bin/env bash
# The main job on the embedded default. Until the pipeline exists (capture -> fit-pca -> export ->
# eval on the reference model, issues #3-#9) it builds kvcal and runs what exists: the version and
# device report, and `kvcal inspect` on a file kvcal itself writes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh build
KVCAL=build/cli/kvcal
$KVCAL --version
$KVCAL --help
if ls data/models/*/model*.safetensors >/dev/null 2>&1; then
  for f in data/models/*/model*.safetensors; do $KVCAL inspect "$f" --max-tensors 12; done
else
  echo "main.sh: no reference model committed yet (issue #4)"
fi
