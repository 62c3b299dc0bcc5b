// bench/ops/adamw_bench.cpp: one AdamW step over all LoRA params of Gemma-2-2B in one flat buffer:
// 5,191,680 (r = 4, SPEC.md §4.4) and 20,766,720 (r = 16) f32 elements. 28 bytes per element moved.
#include "bench/bench_util.h"
#include "ops/adamw.h"

namespace {

using namespace bench;

void BM_AdamWStep(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0);
  Tensor p = bench::random_tensor(eng, {n}, DType::kF32, 1, 0.02), g = bench::random_tensor(eng, {n}, DType::kF32, 2);
  Tensor m = bench::random_tensor(eng, {n}, DType::kF32, 3, 1e-3), v = bench::random_tensor(eng, {n}, DType::kF32, 4, 1e-3);
  CUDA_CHECK(cudaMemsetAsync(v.data(), 0, v.nbytes(), eng.stream()));  // v >= 0
  Tensor gs = bench::random_tensor(eng, {1}, DType::kF32, 5, 1e-5);     // device grad scale, as in training
  ops::AdamWParams a;
  a.n = n;
  a.lr = 2e-4f;
  a.weight_decay = 0.001f;
  a.step = 10;
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::adamw_step(p, m, v, g, gs, {}, a, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 28.0 * n);  // read p, m, v, g; write p, m, v
}

}  // namespace

BENCHMARK(BM_AdamWStep)->Arg(5191680)->Arg(20766720)->UseManualTime()->Unit(benchmark::kMicrosecond);
