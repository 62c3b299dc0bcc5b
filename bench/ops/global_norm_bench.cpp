// bench/ops/global_norm_bench.cpp: sum of squares of the flat LoRA gradient buffer of Gemma-2-2B (r = 4:
// 5,191,680 f32; r = 16: 20,766,720), both reduction stages, then the clip coefficient.
#include "bench/bench_util.h"
#include "ops/global_norm.h"

namespace {

using namespace bench;

void BM_GlobalNormSumsq(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0);
  Tensor x = bench::random_tensor(eng, {n}, DType::kF32, 1, 65.536);
  Tensor ws = eng.empty({int64_t(ops::global_norm_workspace_bytes(n))}, DType::kU8);
  Tensor ss = eng.empty({1}, DType::kF32), gs = eng.empty({1}, DType::kF32), nrm = eng.empty({1}, DType::kF32);
  Tensor inf = eng.empty({1}, DType::kI32);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    CUDA_CHECK(cudaMemsetAsync(ss.data(), 0, sizeof(float), eng.stream()));
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::global_norm_sumsq(ss, x, ws, eng.stream());
    ops::cuda::clip_coefficient(gs, nrm, inf, ss, {0.3f, 1.f / 65536.f}, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 4.0 * n);
}

}  // namespace

BENCHMARK(BM_GlobalNormSumsq)->Arg(5191680)->Arg(20766720)->UseManualTime()->Unit(benchmark::kMicrosecond);
