// bench/ops/nf4_bench.cpp: NF4 dequantize (once per layer per pass in training) and quantize (once at load) at
// Gemma-2-2B shapes: 9216x2304 (gate/up/down_proj) and 2048x2304 (q/o_proj).
#include "bench/bench_util.h"
#include "ops/nf4.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers

void BM_Nf4Dequantize(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t rows = state.range(0), cols = state.range(1), n = rows * cols;
  const DType dt = DType::kBF16;
  Tensor w = bench::random_tensor(eng, {rows, cols}, dt, 1, 0.02);
  ops::Nf4Storage q = ops::nf4_empty(rows, cols, eng);
  ops::nf4_quantize(q.view(), w, {}, eng);
  Tensor out = eng.empty({rows, cols}, dt);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::nf4_dequantize(out, q.view(), eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  // packed read + output written (absmax_q/absmax2 are 1/32 and 1/8192 of the packed bytes: left out)
  bench::report_bytes(state, double(ops::nf4_packed_bytes(n)) + double(n) * 2);
}

void BM_Nf4Quantize(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t rows = state.range(0), cols = state.range(1), n = rows * cols;
  const DType dt = DType::kBF16;
  Tensor w = bench::random_tensor(eng, {rows, cols}, dt, 1, 0.02);
  ops::Nf4Storage q = ops::nf4_empty(rows, cols, eng);
  Tensor ws = eng.empty({int64_t(ops::cuda::nf4_quantize_workspace_bytes(rows, cols))}, DType::kU8);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::nf4_quantize(q.view(), w, ws, {}, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  // input read + packed written (the absmax passes touch 1/16 of that)
  bench::report_bytes(state, double(n) * 2 + double(ops::nf4_packed_bytes(n)));
}

}  // namespace

BENCHMARK(BM_Nf4Dequantize)->Args({9216, 2304})->Args({2048, 2304})->Args({1024, 2304})->Args({4096, 2304})->Args({18432, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Nf4Quantize)->Args({9216, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
