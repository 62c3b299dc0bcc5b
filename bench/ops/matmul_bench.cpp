// bench/ops/matmul_bench.cpp: cuBLASLt GEMMs at Gemma-2-2B linear-layer shapes, tokens = 4096 (B*T).
#include "bench/bench_util.h"
#include "ops/matmul.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers
using ops::TensorView;

// Y(m,n) = X(m,k) W(n,k)^T, the forward of nn.Linear.
void BM_MatmulLinear(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {m, k}, dt, 1), w = bench::random_tensor(eng, {n, k}, dt, 2, 0.02);
  Tensor y = eng.empty({m, n}, dt);
  const auto p = ops::matmul_params(y, x, w, false, true);
  ops::cuda::matmul(y, x, w, p, eng.blas(), eng.stream());  // warm the algorithm cache
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::matmul(y, x, w, p, eng.blas(), eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_flops(state, 2.0 * m * n * k);
}

}  // namespace

BENCHMARK(BM_MatmulLinear)
    ->Args({4096, 2048, 2304})   // q_proj
    ->Args({4096, 1024, 2304})   // k_proj / v_proj
    ->Args({4096, 2304, 2048})   // o_proj
    ->Args({4096, 9216, 2304})   // gate_proj / up_proj
    ->Args({4096, 2304, 9216})   // down_proj
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
