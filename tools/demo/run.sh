#!/usr/bin/env bash
# tools/demo/run.sh: the README's main job. Makes a tiny random Gemma-2 with the demo tokenizer's
# vocabulary, then fine-tunes it with QLoRA on the bundled Japanese chat data (tools/demo/demo.yaml).
# Extra arguments go to train_gemma (e.g. training.num_train_epochs=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
mkdir -p "$BUILD/demo"
"$BUILD/make_tiny_gemma" --out "$BUILD/demo/model" --vocab 2000 --hidden 128 --intermediate 384 --layers 4 \
  --heads 4 --kv-heads 2 --head-dim 32 --dtype bf16 --seed 7 --init-std 0.05
cp tools/demo/tokenizer.model "$BUILD/demo/model/tokenizer.model"
exec "$BUILD/train_gemma" --config tools/demo/demo.yaml "model.path=$BUILD/demo/model" \
  "training.output_dir=$BUILD/demo/out" "$@"
