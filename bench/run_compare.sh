#!/usr/bin/env bash
# bench/run_compare.sh: tools/bench_train against the Python stack (bench/compare_hf.py) on the issue's
# configurations, each run in its own process, then the side-by-side table (the card is named in it).
#   bench/run_compare.sh [results.jsonl]
# Environment: BENCH_TRAIN (build/bench_train), PYTHON (python3), STEPS (10), WARMUP (3),
#   ONLY (a regex: run only the configurations whose name matches, e.g. ONLY='seq512' to fit a time limit),
#   SKIP_ENGINE=1 / SKIP_HF=1, HF_BENCH_CACHE (where compare_hf.py keeps its random checkpoint, ~5 GB).
# bitsandbytes comes from .dev/bnb (tests/parity/fetch_bnb.sh). A configuration that runs out of memory
# gets a JSON line with "error" and shows as OOM in the table; the script carries on.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-bench_results.jsonl}
BENCH_TRAIN=${BENCH_TRAIN:-build/bench_train}
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-3}
ONLY=${ONLY:-}
export PYTHONPATH=.dev/bnb${PYTHONPATH:+:$PYTHONPATH}
[[ -d .dev/bnb/bitsandbytes ]] || echo "warning: .dev/bnb/bitsandbytes missing (run tests/parity/fetch_bnb.sh); using any installed bitsandbytes" >&2
[[ -x $BENCH_TRAIN || -n ${SKIP_ENGINE:-} ]] || { echo "error: $BENCH_TRAIN not built" >&2; exit 1; }
: > "$out"

# name | arguments shared by both stacks (Gemma-2-2B shape by default) | engine-only memory options: those
# rows run the engine only and compare with the Python stack's checkpointed row of the same shape (within
# 16 GiB, the issue's long-sequence budget)
configs=(
  "bs1_ga4_seq512_f16|--batch 1 --grad-accum 4 --seq 512 --dtype f16"
  "bs1_ga4_seq512_bf16|--batch 1 --grad-accum 4 --seq 512 --dtype bf16"
  "bs1_ga4_seq512_bf16_dense|--batch 1 --grad-accum 4 --seq 512 --dtype bf16 --no-quantize"
  "bs1_ga4_seq512_bf16_ckpt|--batch 1 --grad-accum 4 --seq 512 --dtype bf16 --gradient-checkpointing"
  "bs8_ga1_seq512_bf16|--batch 8 --grad-accum 1 --seq 512 --dtype bf16"
  "bs1_ga1_seq4096_bf16|--batch 1 --grad-accum 1 --seq 4096 --dtype bf16"
  "bs1_ga1_seq4096_bf16_ckpt|--batch 1 --grad-accum 1 --seq 4096 --dtype bf16 --gradient-checkpointing"
  "bs1_ga1_seq8192_bf16|--batch 1 --grad-accum 1 --seq 8192 --dtype bf16"
  "bs1_ga1_seq8192_bf16_ckpt|--batch 1 --grad-accum 1 --seq 8192 --dtype bf16 --gradient-checkpointing"
  "bs1_ga1_seq4096_bf16_16gib|--batch 1 --grad-accum 1 --seq 4096 --dtype bf16|--recompute-attention-probs"
  "bs1_ga1_seq8192_bf16_16gib|--batch 1 --grad-accum 1 --seq 8192 --dtype bf16 --gradient-checkpointing|--checkpoint-layers 10 --recompute-attention-probs"
)

for c in "${configs[@]}"; do
  name=${c%%|*}
  rest=${c#*|}
  read -r -a args <<< "${rest%%|*}"
  extra=()
  [[ $rest == *"|"* ]] && read -r -a extra <<< "${rest#*|}"
  if [[ -n $ONLY && ! $name =~ $ONLY ]]; then continue; fi
  echo "=== $name"
  if [[ -z ${SKIP_ENGINE:-} ]]; then
    "$BENCH_TRAIN" "${args[@]}" "${extra[@]}" --steps "$STEPS" --warmup "$WARMUP" --quiet --json-out "$out" ||
      echo "engine: $name failed (rc $?)"
  fi
  if [[ -z ${SKIP_HF:-} && ${#extra[@]} -eq 0 ]]; then
    "$PYTHON" bench/compare_hf.py "${args[@]}" --steps "$STEPS" --warmup "$WARMUP" --json-out "$out" ||
      echo "hf: $name failed (rc $?)"
  fi
done

echo
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | sed 's/^/nvidia-smi: /'
"$PYTHON" bench/compare_hf.py --table "$out"
