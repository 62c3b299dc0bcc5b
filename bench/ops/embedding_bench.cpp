// bench/ops/embedding_bench.cpp: scaled embedding gather and scatter-add at Gemma-2-2B shapes
// (N = B*T tokens, D = 2304, V = 256000, bf16 table).
#include <algorithm>

#include "bench/bench_util.h"
#include "engine/philox.h"
#include "ops/embedding.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers

// Random ids over the whole vocabulary, so rows are read from all over the 1.2 GB table.
Tensor random_ids(Engine& eng, int64_t n, int64_t vocab) {
  Tensor host = eng.empty_host({n}, DType::kI32), dev = eng.empty({n}, DType::kI32);
  for (int64_t i = 0; i < n; ++i)
    host.ptr<int32_t>()[i] = int32_t(std::min<int64_t>(vocab - 1, int64_t(engine::philox_uniform(7, 1, i) * vocab)));
  eng.copy(dev, host);
  eng.synchronize();
  return dev;
}

void BM_EmbeddingForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1), v = state.range(2);
  const DType dt = DType::kBF16;
  // Filling 590M values on the host would take longer than the benchmark: bytes 0x3c give bf16 0.0115 (not 0).
  Tensor table = eng.empty({v, d}, dt), out = eng.empty({n, d}, dt), ids = random_ids(eng, n, v);
  CUDA_CHECK(cudaMemsetAsync(table.data(), 0x3c, table.nbytes(), eng.stream()));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::embedding_forward(out, ids, table, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 2.0 * n * d * 2 + n * 4);
}

void BM_EmbeddingBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1), v = state.range(2);
  Tensor dtable = eng.empty({v, d}, DType::kF32), ids = random_ids(eng, n, v);
  Tensor dout = bench::random_tensor(eng, {n, d}, DType::kBF16, 1);
  CUDA_CHECK(cudaMemsetAsync(dtable.data(), 0, dtable.nbytes(), eng.stream()));
  const ops::EmbeddingParams p{n, d, v, 48.f};
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::embedding_backward(dtable, dout, ids, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, n * d * 2.0 + 2.0 * n * d * 4 + n * 4);  // dout read, dtable rows read + written
}

}  // namespace

BENCHMARK(BM_EmbeddingForward)->Args({4096, 2304, 256000})->Args({8192, 2304, 256000})->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_EmbeddingBackward)->Args({4096, 2304, 256000})->UseManualTime()->Unit(benchmark::kMicrosecond);
