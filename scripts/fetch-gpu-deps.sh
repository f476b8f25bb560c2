#!/usr/bin/env bash
# Run on the CPU machine (Debian 12) before a GPU run: downloads the Boost.Program_options
# packages the GPU machine lacks into .deps/debs (git-ignored; carried with the working tree).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs
cd .deps/debs
if ls libboost-program-options1.74.0_*.deb libboost-program-options1.74-dev_*.deb \
      libboost1.74-dev_*.deb >/dev/null 2>&1; then
  echo "fetch-gpu-deps: already present in .deps/debs"
  exit 0
fi
apt-get download libboost-program-options1.74.0 libboost-program-options1.74-dev libboost1.74-dev
ls -la
