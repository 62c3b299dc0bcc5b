#!/usr/bin/env bash
# tests/parity/fetch_bnb.sh: fetches bitsandbytes (the NF4 oracle for nf4_bnb_parity.py) from PyPI and
# keeps only its Python code and the CUDA 13 library, so it fits the device machine's 64 MiB transfer.
# Writes .dev/bnb/bitsandbytes (git-ignored); on the GPU machine: PYTHONPATH=.dev/bnb python3 ...
set -euo pipefail
cd "$(dirname "$0")/../.."
ver=${1:-0.50.2}
tmp=$(mktemp -d)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_24_x86_64 --platform manylinux_2_28_x86_64 -d "$tmp" "bitsandbytes==$ver"
rm -rf .dev/bnb && mkdir -p .dev/bnb
unzip -q "$tmp"/bitsandbytes-*.whl -d "$tmp/x"
cp -r "$tmp/x/bitsandbytes" .dev/bnb/
find .dev/bnb/bitsandbytes -name 'libbitsandbytes_*' ! -name 'libbitsandbytes_cuda130.so' -delete
rm -rf "$tmp"
du -sh .dev/bnb
