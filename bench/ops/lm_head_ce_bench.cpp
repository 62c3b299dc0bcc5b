// bench/ops/lm_head_ce_bench.cpp: fused LM head + softcap + CE at Gemma-2-2B shapes (D = 2304, V = 256000).
//   Whole op (forward + dhidden): 4 * N * V * D flops (the logits GEMM and the dX GEMM), per chunk size.
//   Row kernel alone: reads the logits twice and writes dlogits once.
#include <algorithm>

#include "bench/bench_util.h"
#include "ops/lm_head_ce.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers
using ops::TensorView;

// Random device tensor made by tiling one 2^20+7-element random block: Philox on the host for every element
// of a (256000, 2304) table would take a minute. The odd block length keeps rows distinct.
Tensor tiled_random(Engine& eng, Shape shape, DType dt, uint64_t seed, double scale) {
  const int64_t block = (1 << 20) + 7;
  Tensor src = bench::random_tensor(eng, {block}, dt, seed, scale), dst = eng.empty(shape, dt);
  const TensorView flat = dst.view().reshape({dst.numel()});
  for (int64_t off = 0; off < dst.numel(); off += block) {
    const int64_t len = std::min(block, dst.numel() - off);
    eng.copy(flat.slice_rows(off, off + len), src.view().slice_rows(0, len));
  }
  eng.synchronize();
  return dst;
}

// Labels in [0, V) with every 8th ignored, as a padded batch would have.
Tensor make_labels(Engine& eng, int64_t n, int64_t vocab) {
  Tensor host = eng.empty_host({n}, DType::kI32);
  for (int64_t i = 0; i < n; ++i) host.ptr<int32_t>()[i] = i % 8 == 7 ? ops::kIgnoreIndex : int32_t((i * 7919) % vocab);
  Tensor dev = eng.empty({n}, DType::kI32);
  eng.copy(dev, host);
  eng.synchronize();
  return dev;
}

void BM_LmHeadCe(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const DType dt = DType::kBF16;
  const ops::LmHeadCeParams p{state.range(0), 2304, 256000, 30.f, state.range(1), 1.f / 4096};
  Tensor h = bench::random_tensor(eng, {p.rows, p.dim}, dt, 1);
  Tensor e = tiled_random(eng, {p.vocab, p.dim}, dt, 2, 0.06);  // logits ~ N(0, 3^2)
  Tensor y = make_labels(eng, p.rows, p.vocab);
  Tensor loss = eng.empty({1}, DType::kF32), dh = eng.empty({p.rows, p.dim}, dt);
  Tensor ws = eng.empty({int64_t(ops::lm_head_ce_workspace_bytes(p, dt))}, DType::kU8);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::lm_head_ce(loss, TensorView{}, dh, ops::Accum::kSet, TensorView{}, h, e, y, ws, p, eng.blas(), eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_flops(state, 4.0 * p.rows * p.vocab * p.dim);
}

void BM_LmHeadCeRows(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const DType dt = DType::kBF16;
  const int64_t rows = state.range(0);
  const ops::LmHeadCeParams p{rows, 2304, state.range(1), 30.f, rows, 1.f / 4096};
  // Logits ~ N(0, 3^2); the kernel overwrites them with dlogits, so refresh them outside the timed region.
  Tensor src = tiled_random(eng, {rows, p.vocab}, dt, 3, 3.0), logits = eng.empty({rows, p.vocab}, dt);
  Tensor y = make_labels(eng, rows, p.vocab);
  Tensor loss = eng.empty({1}, DType::kF32), row_loss = eng.empty({rows}, DType::kF32);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    eng.copy(logits, src);
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::lm_head_ce_rows(loss, TensorView{}, row_loss, logits, y, /*write_grad=*/true, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 3.0 * rows * p.vocab * 2);
}

}  // namespace

// Fixed iteration counts: the setup (GBs of inputs) would otherwise rerun at every trial iteration count.
BENCHMARK(BM_LmHeadCe)->Args({4096, 1024})->Args({4096, 2048})->Args({4096, 4096})->Iterations(20)->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_LmHeadCeRows)->Args({1024, 256000})->Iterations(50)->UseManualTime()->Unit(benchmark::kMicrosecond);
