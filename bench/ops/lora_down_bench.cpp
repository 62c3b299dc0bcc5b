// bench/ops/lora_down_bench.cpp: fused dropout + LoRA down-projection at Gemma-2-2B shapes, bf16, p = 0.1.
// Args: n (tokens), in (2304 = D, 9216 = I), r. Bytes: forward reads x, A and writes t; backward reads x, A,
// dt, dx, writes dx (Accum add) and the dA slabs, which the reduce reads back with dA.
#include "bench/bench_util.h"
#include "ops/lora_down.h"
#include "ops/lora_up.h"

namespace {

using namespace bench;

struct Inputs {
  ops::LoraDownParams p;
  Tensor x, a, ws;
};

Inputs inputs(benchmark::State& state, Engine& eng) {
  Inputs in;
  in.p.n = state.range(0);
  in.p.in = state.range(1);
  in.p.r = state.range(2);
  in.p.p = 0.1f;
  in.p.seed = 42;
  in.p.stream = 3;
  in.x = bench::random_tensor(eng, {in.p.n, in.p.in}, DType::kBF16, 1);
  in.a = bench::random_tensor(eng, {in.p.r, in.p.in}, DType::kBF16, 2, 0.05);
  in.ws = eng.empty({ops::lora_down_workspace_elems(in.p.n, in.p.in, in.p.r)}, DType::kF32);
  return in;
}

void BM_LoraDownForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const Inputs in = inputs(state, eng);
  const ops::LoraDownParams& p = in.p;
  Tensor t = eng.empty({p.n, p.r}, DType::kBF16);
  time_loop(state, eng, [&] { ops::cuda::lora_down_forward(t, in.x, in.a, p, eng.stream()); });
  bench::report_bytes(state, 2.0 * (p.n * p.in + p.r * p.in + p.n * p.r));
}

void BM_LoraDownBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const Inputs in = inputs(state, eng);
  const ops::LoraDownParams& p = in.p;
  Tensor dt = bench::random_tensor(eng, {p.n, p.r}, DType::kBF16, 3, 0.05);
  Tensor dx = bench::random_tensor(eng, {p.n, p.in}, DType::kBF16, 4);
  Tensor da = bench::random_tensor(eng, {p.r, p.in}, DType::kF32, 5);
  time_loop(state, eng, [&] {
    ops::cuda::lora_down_backward(da, dx, ops::Accum::kAdd, dt, in.x, in.a, in.ws, p, eng.stream());
  });
  const double slabs = double(ops::lora_down_slabs(p.n));
  bench::report_bytes(state, 2.0 * (3.0 * p.n * p.in + p.r * p.in + p.n * p.r) + 4.0 * (2 * slabs + 2) * p.r * p.in);
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t n : {512, 4096})
    for (int64_t in : {2304, 9216})
      for (int64_t r : {4, 16}) b->Args({n, in, r});
}

}  // namespace

BENCHMARK(BM_LoraDownForward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LoraDownBackward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
