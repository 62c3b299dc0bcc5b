// bench/ops/lora_up_bench.cpp: the fused LoRA up-projection at Gemma-2-2B shapes, bf16. Args: n (tokens), out
// (2048 = q, 9216 = gate/up), r. Bytes: forward reads and writes y; backward reads dy and writes/reads the
// f32 partials (dt per column chunk, dB per row slab) and dB.
#include "bench/bench_util.h"
#include "ops/lora_up.h"

namespace {

using namespace bench;

void BM_LoraUpForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::LoraUpParams p{state.range(0), state.range(1), state.range(2), 2.f};
  Tensor y = bench::random_tensor(eng, {p.n, p.out}, DType::kBF16, 1);
  Tensor t = bench::random_tensor(eng, {p.n, p.r}, DType::kBF16, 2), b = bench::random_tensor(eng, {p.out, p.r}, DType::kBF16, 3, 0.05);
  time_loop(state, eng, [&] { ops::cuda::lora_up_forward(y, t, b, p, eng.stream()); });
  bench::report_bytes(state, 2.0 * (2.0 * p.n * p.out + p.n * p.r + p.out * p.r));
}

void BM_LoraUpBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::LoraUpParams p{state.range(0), state.range(1), state.range(2), 2.f};
  Tensor dy = bench::random_tensor(eng, {p.n, p.out}, DType::kBF16, 1);
  Tensor t = bench::random_tensor(eng, {p.n, p.r}, DType::kBF16, 2), b = bench::random_tensor(eng, {p.out, p.r}, DType::kBF16, 3, 0.05);
  Tensor dt = eng.empty({p.n, p.r}, DType::kBF16), db = bench::random_tensor(eng, {p.out, p.r}, DType::kF32, 4);
  Tensor ws = eng.empty({ops::lora_up_workspace_elems(p.n, p.out, p.r)}, DType::kF32);
  time_loop(state, eng, [&] { ops::cuda::lora_up_backward(dt, db, dy, t, b, ws, p, eng.stream()); });
  bench::report_bytes(state, 2.0 * p.n * p.out + 4.0 * 2 * double(ops::lora_up_workspace_elems(p.n, p.out, p.r)));
}

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t n : {512, 4096})
    for (int64_t out : {2048, 9216})
      for (int64_t r : {4, 16}) b->Args({n, out, r});
}

}  // namespace

BENCHMARK(BM_LoraUpForward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LoraUpBackward)->Apply(shapes)->UseManualTime()->Unit(benchmark::kMicrosecond);
