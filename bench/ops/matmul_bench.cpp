// bench/ops/matmul_bench.cpp: cuBLASLt GEMMs at Gemma-2-2B linear-layer shapes, tokens = 4096 (B*T).
#include "bench/bench_util.h"
#include "ops/matmul.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers
using ops::TensorView;

// Times c = op(a) op(b) (alpha, beta from p) with L2 flushed before each launch; reports TFLOP/s.
void time_gemm(benchmark::State& state, Engine& eng, const Tensor& c, const Tensor& a, const Tensor& b,
               const ops::MatmulParams& p) {
  ops::cuda::matmul(c, a, b, p, eng.blas(), eng.stream());  // warm the algorithm cache
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::matmul(c, a, b, p, eng.blas(), eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_flops(state, 2.0 * p.m * p.n * p.k);
}

// Y(m,n) = X(m,k) W(n,k)^T, the forward of nn.Linear.
void BM_MatmulLinear(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {m, k}, dt, 1), w = bench::random_tensor(eng, {n, k}, dt, 2, 0.02);
  Tensor y = eng.empty({m, n}, dt);
  time_gemm(state, eng, y, x, w, ops::matmul_params(y, x, w, false, true));
}

// dX(m,k) (+)= dY(m,n) W(n,k), the input gradient of nn.Linear (args m, n = out, k = in, accumulate).
void BM_MatmulLinearDx(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t m = state.range(0), n = state.range(1), k = state.range(2);
  const DType dt = DType::kBF16;
  Tensor dy = bench::random_tensor(eng, {m, n}, dt, 1), w = bench::random_tensor(eng, {n, k}, dt, 2, 0.02);
  Tensor dx = bench::random_tensor(eng, {m, k}, dt, 3);
  time_gemm(state, eng, dx, dy, w, ops::matmul_params(dx, dy, w, false, false, 1.f, state.range(3) ? 1.f : 0.f));
}

// The six GEMMs of one LoRA branch (autograd::lora_linear), args (n, in, out, r, which): which = 0..5 runs
// one of them, 6 all. 0: t = x' A^T   1: y += s t B^T   2: dB += s dy^T t (f32)   3: dt = s dy B
// 4: dA += dt^T x' (f32)   5: dx' = dt A. t and dt have rows of r elements (8 bytes at r = 4).
void BM_LoraGemms(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), in = state.range(1), out = state.range(2), r = state.range(3);
  const int which = int(state.range(4));
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {n, in}, dt, 1), a = bench::random_tensor(eng, {r, in}, dt, 2, 0.02);
  Tensor b = bench::random_tensor(eng, {out, r}, dt, 3, 0.02), dy = bench::random_tensor(eng, {n, out}, dt, 4);
  Tensor y = bench::random_tensor(eng, {n, out}, dt, 5), t = bench::random_tensor(eng, {n, r}, dt, 6);
  Tensor dtt = bench::random_tensor(eng, {n, r}, dt, 7), dx = eng.empty({n, in}, dt);
  Tensor da = bench::random_tensor(eng, {r, in}, DType::kF32, 8), db = bench::random_tensor(eng, {out, r}, DType::kF32, 9);
  auto run = [&](int g) {
    switch (g) {
      case 0: ops::matmul(t, x, a, ops::matmul_params(t, x, a, false, true), eng); break;
      case 1: ops::matmul(y, t, b, ops::matmul_params(y, t, b, false, true, 2.f, 1.f), eng); break;
      case 2: ops::matmul(db, dy, t, ops::matmul_params(db, dy, t, true, false, 2.f, 1.f), eng); break;
      case 3: ops::matmul(dtt, dy, b, ops::matmul_params(dtt, dy, b, false, false, 2.f), eng); break;
      case 4: ops::matmul(da, dtt, x, ops::matmul_params(da, dtt, x, true, false, 1.f, 1.f), eng); break;
      default: ops::matmul(dx, dtt, a, ops::matmul_params(dx, dtt, a, false, false), eng);
    }
  };
  for (int g = 0; g < 6; ++g) run(g);  // warm the algorithm cache
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    if (which == 6) for (int g = 0; g < 6; ++g) run(g);
    else run(which);
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
}

void lora_args(benchmark::internal::Benchmark* b) {
  for (int64_t n : {512, 4096})
    for (auto io : {std::pair<int64_t, int64_t>{2304, 2048}, {2304, 9216}})
      for (int64_t r : {4, 8, 16})
        for (int64_t w = 0; w <= 6; ++w) b->Args({n, io.first, io.second, r, w});
}

}  // namespace

BENCHMARK(BM_LoraGemms)->Apply(lora_args)->UseManualTime()->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_MatmulLinear)
    ->Args({4096, 2048, 2304})   // q_proj
    ->Args({4096, 1024, 2304})   // k_proj / v_proj
    ->Args({4096, 2304, 2048})   // o_proj
    ->Args({4096, 9216, 2304})   // gate_proj / up_proj
    ->Args({4096, 2304, 9216})   // down_proj
    ->Args({512, 2048, 2304})    // the notebook's 512 tokens: q_proj
    ->Args({512, 1024, 2304})    //   k_proj / v_proj
    ->Args({512, 4096, 2304})    //   q, k and v as one GEMM
    ->Args({512, 2304, 2048})    //   o_proj
    ->Args({512, 9216, 2304})    //   gate_proj / up_proj
    ->Args({512, 18432, 2304})   //   gate and up as one GEMM
    ->Args({512, 2304, 9216})    //   down_proj
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);

BENCHMARK(BM_MatmulLinearDx)
    ->Args({512, 2048, 2304, 0})   // q_proj (set)
    ->Args({512, 1024, 2304, 1})   // k_proj / v_proj (accumulate)
    ->Args({512, 4096, 2304, 0})   // q, k and v as one GEMM
    ->Args({512, 2304, 2048, 0})   // o_proj
    ->Args({512, 9216, 2304, 0})   // gate_proj (set)
    ->Args({512, 9216, 2304, 1})   // up_proj (accumulate)
    ->Args({512, 18432, 2304, 0})  // gate and up as one GEMM
    ->Args({512, 2304, 9216, 0})   // down_proj
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
