// bench/ops/elementwise_bench.cpp: add, scale, cast, accumulate on a Gemma-2-2B activation (N = B*T tokens,
// D = 2304): residual adds in bf16, gradient casts and the tape's f32 += bf16 gradient sum.
#include <string>

#include "bench/bench_util.h"
#include "ops/elementwise.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers

void BM_Add(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1);
  Tensor a = bench::random_tensor(eng, {n, d}, DType::kBF16, 1), b = bench::random_tensor(eng, {n, d}, DType::kBF16, 2);
  Tensor out = eng.empty({n, d}, DType::kBF16);
  time_loop(state, eng, [&] { ops::cuda::add(out, a, b, eng.stream()); });
  bench::report_bytes(state, 3.0 * n * d * 2);
}

void BM_ScaleInPlace(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1);
  Tensor x = bench::random_tensor(eng, {n, d}, DType::kBF16, 3);
  // alpha = 1 keeps the values stable over iterations.
  time_loop(state, eng, [&] { ops::cuda::scale(x, x, 1.f, eng.stream()); });
  bench::report_bytes(state, 2.0 * n * d * 2);
}

// range(2), range(3): source and destination DType.
void BM_Cast(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1);
  const DType from = DType(state.range(2)), to = DType(state.range(3));
  state.SetLabel(std::string(engine::dtype_name(from)) + "->" + engine::dtype_name(to));
  Tensor in = bench::random_tensor(eng, {n, d}, from, 4), out = eng.empty({n, d}, to);
  time_loop(state, eng, [&] { ops::cuda::cast(out, in, eng.stream()); });
  bench::report_bytes(state, double(n * d) * (engine::dtype_size(from) + engine::dtype_size(to)));
}

void BM_AccumulateF32PlusBf16(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t n = state.range(0), d = state.range(1);
  Tensor grad = bench::random_tensor(eng, {n, d}, DType::kF32, 5);
  Tensor x = bench::random_tensor(eng, {n, d}, DType::kBF16, 6);
  time_loop(state, eng, [&] { ops::cuda::accumulate(grad, x, 1.f, ops::Accum::kAdd, eng.stream()); });
  bench::report_bytes(state, double(n * d) * (4 + 4 + 2));
}

constexpr int64_t kBf16 = int64_t(DType::kBF16), kF32 = int64_t(DType::kF32);

}  // namespace

BENCHMARK(BM_Add)->Args({4096, 2304})->Args({8192, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_ScaleInPlace)->Args({4096, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_Cast)->Args({4096, 2304, kBf16, kF32})->Args({4096, 2304, kF32, kBf16})->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AccumulateF32PlusBf16)->Args({4096, 2304})->UseManualTime()->Unit(benchmark::kMicrosecond);
