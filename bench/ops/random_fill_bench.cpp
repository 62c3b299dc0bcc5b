// bench/ops/random_fill_bench.cpp: the Philox normal fill at Gemma-2-2B weight sizes (a gate/up weight
// 9216x2304 and the embedding 256000x2304), bf16 and f32. Compute-bound; GB/s shows how far from the
// write bandwidth it runs.
#include "bench/bench_util.h"
#include "ops/random_fill.h"

namespace {

using namespace bench;

void BM_RandomNormalFill(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0);
  const DType dt = state.range(1) ? DType::kBF16 : DType::kF32;
  Tensor out = eng.empty({n}, dt);
  bench::CudaEventTimer timer;
  uint64_t stream = 0;
  for (auto _ : state) {
    timer.start(eng.stream());
    ops::cuda::random_normal_fill(out, {1, ++stream, 0, 0.02}, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, double(n) * double(engine::dtype_size(dt)));
  state.counters["Gelem/s"] = benchmark::Counter(double(n) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

}  // namespace

BENCHMARK(BM_RandomNormalFill)
    ->Args({9216 * 2304, 1})
    ->Args({256000 * 2304, 1})
    ->Args({9216 * 2304, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
