#!/usr/bin/env bash
# tools/demo/run.sh: the README's main job. Makes a tiny random Gemma-2 with the demo tokenizer's
# vocabulary, fine-tunes it with QLoRA on the bundled Japanese chat data (tools/demo/demo.yaml), then asks
# the trained model the four questions of tools/demo/questions.txt (greedy, NF4 base + the adapter).
# Extra arguments go to train_gemma (e.g. training.num_train_epochs=1).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build}
mkdir -p "$BUILD/demo"
"$BUILD/make_tiny_gemma" --out "$BUILD/demo/model" --vocab 2000 --hidden 256 --intermediate 768 --layers 4 \
  --heads 4 --kv-heads 2 --head-dim 64 --dtype bf16 --seed 7 --init-std 0.1
cp tools/demo/tokenizer.model "$BUILD/demo/model/tokenizer.model"
"$BUILD/train_gemma" --config tools/demo/demo.yaml "model.path=$BUILD/demo/model" \
  "training.output_dir=$BUILD/demo/out" "$@"
echo
echo "Asking the trained model (build/chat_gemma, greedy):"
"$BUILD/chat_gemma" --model "$BUILD/demo/model" --nf4 --adapter "$BUILD/demo/out" --prompts tools/demo/questions.txt \
  --max-new-tokens 60
