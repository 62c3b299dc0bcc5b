// bench/ops/rmsnorm_bench.cpp: RMSNorm forward/backward at Gemma-2-2B shapes (rows = B*T tokens, C = 2304).
#include "bench/bench_util.h"
#include "ops/rmsnorm.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers
using ops::TensorView;

void BM_RmsNormForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::RmsNormParams p{state.range(0), state.range(1), 1e-6f};
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {p.rows, p.cols}, dt, 1), w = bench::random_tensor(eng, {p.cols}, DType::kF32, 2);
  Tensor y = eng.empty({p.rows, p.cols}, dt), rstd = eng.empty({p.rows}, DType::kF32);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::rmsnorm_forward(y, rstd, x, w, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 2.0 * p.rows * p.cols * 2 + p.cols * 4 + p.rows * 4);
}

void BM_RmsNormBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::RmsNormParams p{state.range(0), state.range(1), 1e-6f};
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {p.rows, p.cols}, dt, 1), w = bench::random_tensor(eng, {p.cols}, DType::kF32, 2);
  Tensor dy = bench::random_tensor(eng, {p.rows, p.cols}, dt, 3);
  Tensor y = eng.empty({p.rows, p.cols}, dt), rstd = eng.empty({p.rows}, DType::kF32), dx = eng.empty({p.rows, p.cols}, dt);
  ops::cuda::rmsnorm_forward(y, rstd, x, w, p, eng.stream());
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    // Frozen norm (QLoRA): dx only.
    ops::cuda::rmsnorm_backward(dx, ops::Accum::kSet, TensorView{}, dy, x, w, rstd, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 3.0 * p.rows * p.cols * 2 + p.cols * 4 + p.rows * 4);
}

}  // namespace

BENCHMARK(BM_RmsNormForward)->Args({512, 2304})->Args({4096, 2304})->Args({8192, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RmsNormBackward)->Args({512, 2304})->Args({4096, 2304})->Args({8192, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
