// bench/ops/rope_bench.cpp: RoPE forward/backward on q at Gemma-2-2B shapes (N = B*T tokens, H = 8, d = 256), bf16.
#include <vector>

#include "bench/bench_util.h"
#include "ops/rope.h"

namespace {

using namespace bench;

template <bool kBackward>
void BM_Rope(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::RopeParams p{state.range(0), state.range(1), 256, 10000.f};
  const DType dt = DType::kBF16;
  Tensor x = bench::random_tensor(eng, {p.tokens, p.heads, p.head_dim}, dt, 1);
  Tensor y = eng.empty({p.tokens, p.heads, p.head_dim}, dt);
  // Batches of 512-token sequences, as the trainer packs them.
  std::vector<int32_t> host(p.tokens);
  for (int64_t i = 0; i < p.tokens; ++i) host[i] = int32_t(i % 512);
  Tensor pos = eng.empty({p.tokens}, DType::kI32);
  eng.copy(pos, engine::TensorView{host.data(), DType::kI32, {p.tokens}, engine::Device::kCPU});
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    if (kBackward) ops::cuda::rope_backward(y, ops::Accum::kSet, x, pos, p, eng.stream());
    else ops::cuda::rope_forward(y, x, pos, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 2.0 * p.tokens * p.heads * p.head_dim * 2 + p.tokens * 4);
}

void BM_RopeForward(benchmark::State& state) { BM_Rope<false>(state); }
void BM_RopeBackward(benchmark::State& state) { BM_Rope<true>(state); }

}  // namespace

BENCHMARK(BM_RopeForward)->Args({4096, 8})->Args({4096, 4})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_RopeBackward)->Args({4096, 8})->Args({4096, 4})->UseManualTime()->Unit(benchmark::kMicrosecond);
