#!/usr/bin/env bash
# tests/multigpu/dp_check.sh: data parallel on a machine with >= 2 GPUs, with prebuilt binaries.
#   tests/multigpu/dp_check.sh BIN_DIR [NPROC=2]
# BIN_DIR holds make_tiny_gemma and train_gemma (and any shared libraries: it goes on LD_LIBRARY_PATH).
# Checks, on a tiny random Gemma-2 (the demo tokenizer and data, LoRA dropout 0, 20 steps):
#   1. f32 compute: 1 GPU x batch NPROC*b and --nproc NPROC x batch b give the same per-step losses
#      (relative 1e-5: the same math, summed in another order), and every rank ends with bit-identical
#      LoRA parameters (FNV-1a hash printed by --dp-check).
#   2. bf16 compute: ranks bit-identical; losses within 1e-2 relative of the 1-GPU run (bf16 activations
#      are rounded per micro-batch shape, and cuBLASLt picks per-shape kernels, so only closeness holds).
#   3. kill -9 of one rank mid-run: the launcher ends the job within 60 s, naming the rank.
#   4. the env contract without the launcher (RANK/WORLD_SIZE/...): kill -9 of the last rank ends rank 0
#      within 60 s through its watchdog (socket liveness + ncclCommAbort), naming the dead rank.
#   5. with bench_train in BIN_DIR: the Gemma-2-2B shape, NPROC x batch 4 vs 1 x batch 4*NPROC (losses within
#      1e-3 relative over 10 steps), and the scaling efficiency at batch 8 per GPU.
# Exit status 0 = all passed. Work files stay in $WORK (printed) for inspection.
set -uo pipefail
BIN=$(cd "${1:?usage: dp_check.sh BIN_DIR [NPROC]}" && pwd)
NPROC=${2:-2}
REPO=$(cd "$(dirname "$0")/../.." && pwd)
WORK=$(mktemp -d /tmp/dp_check.XXXXXX)
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
B=2
FAIL=0
say() { echo "dp_check: $*"; }
bad() { echo "dp_check: FAIL: $*"; FAIL=1; }

ngpu=$(nvidia-smi -L 2>/dev/null | wc -l)
if [ "$ngpu" -lt "$NPROC" ]; then say "needs $NPROC GPUs, found $ngpu"; exit 2; fi
say "work dir $WORK, $NPROC ranks"
"$BIN/make_tiny_gemma" --out "$WORK/model" --vocab 2000 --hidden 128 --intermediate 384 --layers 2 --heads 4 \
  --kv-heads 2 --head-dim 32 --dtype bf16 --seed 7 --init-std 0.05 >/dev/null || { bad "make_tiny_gemma"; exit 1; }
cp "$REPO/tools/demo/tokenizer.model" "$WORK/model/"

common=(--config "$REPO/tools/demo/demo.yaml" "model.path=$WORK/model" "data.path=$REPO/tools/demo/chat_ja.jsonl"
        lora.lora_dropout=0 training.gradient_accumulation_steps=2 training.group_by_length=true
        training.save_strategy=no training.report_to=none training.logging_steps=5 training.warmup_steps=2)

# Compares the per-step losses of rank 0 in $2 with the 1-GPU run $1 (relative tolerance $3) and the
# parameter hashes of every rank in $2.
compare() {
  local ref=$1 dp=$2 tol=$3 name=$4
  awk -v tol="$tol" -v name="$name" '
    FNR == NR && /^dp_check rank=0 step=/ { split($3, s, "="); split($4, l, "="); ref[s[2]] = l[2]; next }
    FNR != NR && /^dp_check rank=0 step=/ { split($3, s, "="); split($4, l, "="); got[s[2]] = l[2] }
    END {
      n = 0; worst = 0
      for (k in ref) { n++; if (!(k in got)) { print "dp_check: FAIL: " name ": step " k " missing"; bad = 1; continue }
        d = ref[k] - got[k]; if (d < 0) d = -d; r = d / (ref[k] < 0 ? -ref[k] : ref[k]); if (r > worst) worst = r
        if (r > tol) { printf "dp_check: FAIL: %s: step %s loss %s (1 GPU) vs %s (%s)\n", name, k, ref[k], got[k], r; bad = 1 } }
      if (n < 20) { print "dp_check: FAIL: " name ": only " n " steps"; bad = 1 }
      printf "dp_check: %s: %d steps, worst relative loss difference %.3g (tolerance %s)\n", name, n, worst, tol
      exit bad }' "$ref" "$dp" || FAIL=1
  local hashes
  hashes=$(grep '^dp_check rank=.* params_fnv1a=' "$dp" | sed 's/.*params_fnv1a=//' | sort -u)
  local nranks
  nranks=$(grep -c '^dp_check rank=.* params_fnv1a=' "$dp")
  if [ "$nranks" -ne "$NPROC" ]; then bad "$name: $nranks of $NPROC ranks reported a parameter hash";
  elif [ "$(echo "$hashes" | wc -l)" -ne 1 ]; then bad "$name: ranks differ: $(echo $hashes)";
  else say "$name: $NPROC ranks bit-identical (params $hashes)"; fi
}

for mode in f32 bf16; do
  if [ $mode = f32 ]; then
    dt=(training.bf16=false training.fp16=false quantization.bnb_4bit_compute_dtype=float32); tol=1e-5
  else
    dt=(training.bf16=true training.fp16=false); tol=1e-2
  fi
  "$BIN/train_gemma" "${common[@]}" "${dt[@]}" training.max_steps=20 \
    training.per_device_train_batch_size=$((NPROC * B)) "training.output_dir=$WORK/ref_$mode" --dp-check \
    >"$WORK/ref_$mode.log" 2>&1 || { bad "$mode: 1-GPU run failed (see $WORK/ref_$mode.log)"; continue; }
  "$BIN/train_gemma" --nproc "$NPROC" "${common[@]}" "${dt[@]}" training.max_steps=20 \
    training.per_device_train_batch_size=$B "training.output_dir=$WORK/dp_$mode" --dp-check \
    >"$WORK/dp_$mode.log" 2>&1 || { bad "$mode: --nproc $NPROC run failed (see $WORK/dp_$mode.log)"; continue; }
  compare "$WORK/ref_$mode.log" "$WORK/dp_$mode.log" $tol "$mode"
done

# Waits (at most $2 s) for pid $1 to end; prints the seconds it took.
wait_end() {
  local pid=$1 limit=$2 t=0
  while kill -0 "$pid" 2>/dev/null && [ $t -lt $((limit * 10)) ]; do sleep 0.1; t=$((t + 1)); done
  echo $((t / 10))
}
long=(training.max_steps=100000 training.num_train_epochs=1000 training.logging_steps=1
      training.per_device_train_batch_size=$B training.bf16=true)

# 3. The launcher: kill -9 the last rank once training runs.
"$BIN/train_gemma" --nproc "$NPROC" "${common[@]}" "${long[@]}" "training.output_dir=$WORK/kill" \
  >"$WORK/kill.log" 2>&1 &
launcher=$!
for _ in $(seq 1 600); do grep -q '^step 5/' "$WORK/kill.log" && break; sleep 0.1; done
victim=""
for c in $(pgrep -P $launcher); do
  if tr '\0' '\n' </proc/$c/environ | grep -qx "RANK=$((NPROC - 1))"; then victim=$c; fi
done
if [ -z "$victim" ]; then bad "kill: rank $((NPROC - 1)) not found (see $WORK/kill.log)"; kill $launcher; else
  kill -9 "$victim"
  secs=$(wait_end $launcher 60)
  if kill -0 $launcher 2>/dev/null; then bad "kill: job still running 60 s after kill -9 of rank $((NPROC - 1))"; kill -9 $launcher;
  else
    wait $launcher; rc=$?
    if [ $rc -eq 0 ]; then bad "kill: the launcher exited 0";
    elif grep -q "rank $((NPROC - 1)) killed by signal 9" "$WORK/kill.log"; then
      say "kill: job ended in ${secs} s with status $rc: $(grep 'launcher: rank' "$WORK/kill.log" | head -1)"
    else bad "kill: no 'rank $((NPROC - 1)) killed by signal 9' in $WORK/kill.log"; fi
  fi
fi

# 4. The env contract without the launcher: rank 0's watchdog must end it after kill -9 of the last rank.
port=$((20000 + RANDOM % 20000))
pids=()
for r in $(seq 0 $((NPROC - 1))); do
  RANK=$r LOCAL_RANK=$r WORLD_SIZE=$NPROC MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$BIN/train_gemma" "${common[@]}" "${long[@]}" "training.output_dir=$WORK/env" >"$WORK/env_rank$r.log" 2>&1 &
  pids+=($!)
done
for _ in $(seq 1 600); do grep -q '^step 5/' "$WORK/env_rank0.log" && break; sleep 0.1; done
kill -9 "${pids[$((NPROC - 1))]}"
secs=$(wait_end "${pids[0]}" 60)
if kill -0 "${pids[0]}" 2>/dev/null; then bad "env: rank 0 still running 60 s after kill -9 of rank $((NPROC - 1))";
else
  wait "${pids[0]}"; rc=$?
  if [ $rc -ne 0 ] && grep -q "rank 0: stopping the job (rank $((NPROC - 1)) exited)" "$WORK/env_rank0.log"; then
    say "env: rank 0 ended in ${secs} s with status $rc: $(grep 'stopping the job' "$WORK/env_rank0.log")"
  else bad "env: rank 0 status $rc, no 'rank 0: stopping the job (rank $((NPROC - 1)) exited)' in $WORK/env_rank0.log"; fi
fi
for r in $(seq 1 $((NPROC - 2))); do  # the middle ranks watch rank 0, which has exited
  wait_end "${pids[$r]}" 30 >/dev/null
  grep -q "rank $r: stopping the job" "$WORK/env_rank$r.log" || bad "env: rank $r did not report stopping"
done
for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; wait "$p" 2>/dev/null; done

# 5. With bench_train in BIN: the Gemma-2-2B shape (random weights, seq 512, bf16, dropout 0). NPROC GPUs x
#    batch 4 vs 1 GPU x batch 4*NPROC over 10 steps (bench_train numbers rows globally, so both see the same
#    rows): per-step losses within 1e-3 relative. Then scaling: tokens/s per GPU at batch 8, 1 vs NPROC GPUs.
if [ -x "$BIN/bench_train" ]; then
  two=(--grad-accum 1 --seq 512 --dtype bf16 --dropout 0 --steps 10 --warmup 0 --quiet)
  "$BIN/bench_train" "${two[@]}" --batch $((4 * NPROC)) --json-out "$WORK/b2_ref.jsonl" >"$WORK/b2_ref.log" 2>&1 &&
  "$BIN/bench_train" "${two[@]}" --batch 4 --nproc "$NPROC" --json-out "$WORK/b2_dp.jsonl" >"$WORK/b2_dp.log" 2>&1 &&
  python3 - "$WORK/b2_ref.jsonl" "$WORK/b2_dp.jsonl" <<'PY' || bad "2B shape: losses differ (logs in $WORK/b2_*.log)"
import json, sys
a, b = (json.loads(open(f).readlines()[-1])["losses"] for f in sys.argv[1:3])
worst = max(abs(x - y) / abs(x) for x, y in zip(a, b))
print("dp_check: 2B shape: %d steps, worst relative loss difference %.3g (tolerance 1e-3)" % (len(a), worst))
sys.exit(0 if len(a) == len(b) == 10 and worst <= 1e-3 else 1)
PY
  [ -s "$WORK/b2_dp.jsonl" ] || bad "2B shape: a bench_train run failed (logs in $WORK/b2_*.log)"
  sc=(--batch 8 --grad-accum 1 --seq 512 --dtype bf16 --steps 8 --warmup 2 --quiet --json-out "$WORK/b2_scale.jsonl")
  "$BIN/bench_train" "${sc[@]}" >/dev/null 2>&1 && "$BIN/bench_train" "${sc[@]}" --nproc "$NPROC" >/dev/null 2>&1 &&
  python3 - "$WORK/b2_scale.jsonl" <<'PY' || bad "2B shape: scaling runs failed"
import json, sys
one, many = (json.loads(l) for l in open(sys.argv[1]).readlines()[-2:])
print("dp_check: 2B shape bs8 seq512: 1 GPU %.0f tok/s, %d GPUs %.0f tok/s (%.0f per GPU): efficiency %.1f%%"
      % (one["tokens_per_s"], many["world_size"], many["tokens_per_s"], many["tokens_per_s_per_gpu"],
         100 * many["tokens_per_s_per_gpu"] / one["tokens_per_s"]))
PY
fi

if [ $FAIL -eq 0 ]; then say "PASS"; else say "FAILED (logs in $WORK)"; fi
exit $FAIL
