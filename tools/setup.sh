#!/usr/bin/env bash
# tools/setup.sh: installs what the build needs from Debian packages (idempotent; quiet when nothing is
# missing). The CUDA toolkit (nvcc, cudart, cuBLASLt, NCCL) must already be installed: it is not a
# Debian main package. A GPU is not needed to build, test or run the demo.
set -euo pipefail
pkgs=(build-essential cmake ninja-build pkg-config
      libyaml-cpp-dev libsentencepiece-dev nlohmann-json3-dev libcli11-dev
      libgtest-dev libbenchmark-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ]; then
  echo "setup: the CUDA toolkit (nvcc) is missing; install CUDA 12.4 or newer from NVIDIA, then rerun" >&2
  exit 1
fi
