// bench/ops/residual_rmsnorm_bench.cpp: a Gemma-2 sublayer exit (residual add of the normed branch, and the
// next norm) fused against the separate ops it replaces, at Gemma-2-2B shapes (rows = B*T tokens, C = 2304).
// Args: rows, cols, fused (0: rmsnorm + add + rmsnorm forward; the tape's copy, norm backward, two copies and
// norm backward), next (1: with the entry norm).
#include "bench/bench_util.h"
#include "ops/elementwise.h"
#include "ops/residual_rmsnorm.h"

namespace {

using namespace bench;
using ops::Accum;
using ops::TensorView;

struct Bufs {
  Tensor h, o, s, y, n, w1, w2, r1, r2, ds, dy, dh, d_o, g, dn;
  Bufs(Engine& eng, int64_t rows, int64_t cols, DType dt)
      : h(random_tensor(eng, {rows, cols}, dt, 1)), o(random_tensor(eng, {rows, cols}, dt, 2)),
        s(eng.empty({rows, cols}, dt)), y(eng.empty({rows, cols}, dt)), n(eng.empty({rows, cols}, dt)),
        w1(random_tensor(eng, {cols}, DType::kF32, 3)), w2(random_tensor(eng, {cols}, DType::kF32, 4)),
        r1(eng.empty({rows}, DType::kF32)), r2(eng.empty({rows}, DType::kF32)),
        ds(random_tensor(eng, {rows, cols}, dt, 5)), dy(random_tensor(eng, {rows, cols}, dt, 6)),
        dh(eng.empty({rows, cols}, dt)), d_o(eng.empty({rows, cols}, dt)), g(eng.empty({rows, cols}, dt)),
        dn(eng.empty({rows, cols}, dt)) {}
};

void forward(Bufs& b, const ops::RmsNormParams& p, bool fused, bool next, Engine& eng) {
  if (fused) {
    ops::residual_rmsnorm_forward(b.s, next ? b.y.view() : TensorView{}, b.r1, next ? b.r2.view() : TensorView{},
                                  b.h, b.o, b.w1, next ? b.w2.view() : TensorView{}, p, eng);
    return;
  }
  ops::rmsnorm_forward(b.n, b.r1, b.o, b.w1, p, eng);
  ops::add(b.s, b.h, b.n, eng);
  if (next) ops::rmsnorm_forward(b.y, b.r2, b.s, b.w2, p, eng);
}

void backward(Bufs& b, const ops::RmsNormParams& p, bool fused, bool next, Engine& eng) {
  if (fused) {
    ops::residual_rmsnorm_backward(b.dh, Accum::kSet, b.d_o, Accum::kSet, b.ds, next ? b.dy.view() : TensorView{},
                                   next ? b.s.view() : TensorView{}, b.o, b.w1, next ? b.w2.view() : TensorView{},
                                   b.r1, next ? b.r2.view() : TensorView{}, p, eng);
    return;
  }
  ops::accumulate(b.g, b.ds, 1.f, Accum::kSet, eng);  // the add's copy of d(sum) (the tape before pass())
  if (next) ops::rmsnorm_backward(b.g, Accum::kAdd, TensorView{}, b.dy, b.s, b.w2, b.r2, p, eng);
  ops::accumulate(b.dh, b.g, 1.f, Accum::kSet, eng);
  ops::accumulate(b.dn, b.g, 1.f, Accum::kSet, eng);
  ops::rmsnorm_backward(b.d_o, Accum::kSet, TensorView{}, b.dn, b.o, b.w1, b.r1, p, eng);
}

template <bool kBackward>
void BM_ResidualRmsNorm(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const ops::RmsNormParams p{state.range(0), state.range(1), 1e-6f};
  const bool fused = state.range(2) != 0, next = state.range(3) != 0;
  Bufs b(eng, p.rows, p.cols, DType::kBF16);
  forward(b, p, fused, next, eng);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    if (kBackward) backward(b, p, fused, next, eng);
    else forward(b, p, fused, next, eng);
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  // The fused op's bytes (bf16 rows): forward h, o in, s (and y) out; backward ds, o (and dy, s) in, dh, do out.
  const double row_bytes = double(p.rows) * p.cols * 2;
  bench::report_bytes(state, row_bytes * (kBackward ? (next ? 6 : 4) : (next ? 4 : 3)));
}

void BM_ResidualRmsNormForward(benchmark::State& state) { BM_ResidualRmsNorm<false>(state); }
void BM_ResidualRmsNormBackward(benchmark::State& state) { BM_ResidualRmsNorm<true>(state); }

void shapes(benchmark::internal::Benchmark* b) {
  for (int64_t rows : {512, 4096})
    for (int64_t next : {1, 0})
      for (int64_t fused : {0, 1}) b->Args({rows, 2304, fused, next});
  b->UseManualTime()->Unit(benchmark::kMicrosecond);
}

}  // namespace

BENCHMARK(BM_ResidualRmsNormForward)->Apply(shapes);
BENCHMARK(BM_ResidualRmsNormBackward)->Apply(shapes);
