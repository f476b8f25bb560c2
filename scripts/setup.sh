#!/usr/bin/env bash
# Installs kvcal's build dependencies from Debian 12 packages (idempotent: installs only what is
# missing). The CUDA toolkit is optional: when /usr/local/cuda/bin/nvcc exists, CUDA sources are
# compiled too.
set -euo pipefail

PACKAGES=(
  build-essential cmake git pkg-config
  libtorch-dev libhdf5-dev libboost-program-options-dev doctest-dev libeigen3-dev
  nlohmann-json3-dev zlib1g-dev
  # libtorch's CPU matmuls go through libblas.so.3: without OpenBLAS that is Debian's reference
  # BLAS, ~20x slower (the reference model's eval went from 45 to ~1000 tok/s on 2 cores).
  libopenblas0-pthread
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PACKAGES[@]} packages already installed"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "setup: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
fi
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
