// bench/ops/dropout_bench.cpp: LoRA dropout on Gemma-2-2B activations, 4096 tokens x D = 2304, bf16.
#include "bench/bench_util.h"
#include "ops/dropout.h"

namespace {

using namespace bench;

ops::DropoutParams params(int64_t n) {
  ops::DropoutParams p;
  p.n = n;
  p.p = 0.1f;
  p.seed = 42;
  p.stream = 3;
  p.offset = 0;
  return p;
}

void BM_DropoutForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0) * state.range(1);
  Tensor x = bench::random_tensor(eng, {n}, DType::kBF16, 1), y = eng.empty({n}, DType::kBF16);
  const ops::DropoutParams p = params(n);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::dropout_forward(y, x, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 2.0 * n * 2);
}

void BM_DropoutBackwardAccumulate(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0) * state.range(1);
  Tensor dy = bench::random_tensor(eng, {n}, DType::kBF16, 1), dx = bench::random_tensor(eng, {n}, DType::kBF16, 2);
  const ops::DropoutParams p = params(n);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::dropout_backward(dx, ops::Accum::kAdd, dy, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 3.0 * n * 2);  // read dy, dx; write dx
}

}  // namespace

BENCHMARK(BM_DropoutForward)->Args({4096, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_DropoutBackwardAccumulate)->Args({4096, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
