// bench/ops/geglu_bench.cpp: GeGLU forward/backward at Gemma-2-2B MLP shapes (N = B*T tokens, F = 9216), bf16, on
// the fused (N, 2F) gate_up layout the model uses.
#include "bench/bench_util.h"
#include "ops/geglu.h"

namespace {

using namespace bench;

void BM_GegluForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t N = state.range(0), F = state.range(1);
  const DType dt = DType::kBF16;
  Tensor gate_up = bench::random_tensor(eng, {N, 2 * F}, dt, 1);
  Tensor out = eng.empty({N, F}, dt);
  const ops::GegluParams p = ops::geglu_fused_params(gate_up);
  const auto gate = ops::geglu_fused_part(gate_up, 0), up = ops::geglu_fused_part(gate_up, 1);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::geglu_forward(out, gate, up, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 3.0 * N * F * 2);  // read gate, up; write out
}

void BM_GegluBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t N = state.range(0), F = state.range(1);
  const DType dt = DType::kBF16;
  Tensor gate_up = bench::random_tensor(eng, {N, 2 * F}, dt, 1), dout = bench::random_tensor(eng, {N, F}, dt, 2);
  Tensor dgate_up = eng.empty({N, 2 * F}, dt);
  const ops::GegluParams p = ops::geglu_fused_params(gate_up);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::geglu_backward(ops::geglu_fused_part(dgate_up, 0), ops::Accum::kSet, ops::geglu_fused_part(dgate_up, 1),
                              ops::Accum::kSet, dout, ops::geglu_fused_part(gate_up, 0),
                              ops::geglu_fused_part(gate_up, 1), p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 5.0 * N * F * 2);  // read dout, gate, up; write dgate, dup
}

}  // namespace

BENCHMARK(BM_GegluForward)->Args({4096, 9216})->Args({8192, 9216})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_GegluBackward)->Args({4096, 9216})->Args({8192, 9216})->UseManualTime()->Unit(benchmark::kMicrosecond);
