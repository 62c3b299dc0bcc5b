// bench/ops/attention_decode_bench.cpp: decode attention at Gemma-2-2B shapes (H=8, KV=4, hd=256, bf16): one new
// token against a cache of `past` tokens (the per-token cost of generation), and a 256-token prefill chunk.
// Memory-bound when n = 1: bytes counted as the kernel moves them (each query head reads its kv head's keys and
// values once; the two heads of a GQA group read the same rows, which the L2 may serve).
#include "bench/bench_util.h"
#include "ops/attention_decode.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers

// Args: n (new tokens), past (tokens already cached), window (0 = global layer).
void BM_AttentionDecode(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  ops::AttentionDecodeParams p;
  p.queries = state.range(0); p.past = state.range(1); p.window = state.range(2);
  p.heads = 8; p.kv_heads = 4; p.head_dim = 256; p.scale = 0.0625f; p.softcap = 50.f;
  const int64_t cap = p.past + p.queries;
  Tensor q = bench::random_tensor(eng, {p.queries, p.heads * p.head_dim}, DType::kBF16, 1);
  Tensor k = bench::random_tensor(eng, {cap, p.kv_heads * p.head_dim}, DType::kBF16, 2);
  Tensor v = bench::random_tensor(eng, {cap, p.kv_heads * p.head_dim}, DType::kBF16, 3);
  Tensor out = eng.empty({p.queries, p.heads * p.head_dim}, DType::kBF16);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::attention_decode_forward(out, q, k, v, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  double keys = 0;  // summed over query rows
  for (int64_t t = 0; t < p.queries; ++t) {
    const int64_t i = p.past + t;
    keys += double(p.window > 0 ? std::min(p.window, i + 1) : i + 1);
  }
  bench::report_bytes(state, keys * double(p.heads) * p.head_dim * 2 * 2);  // K and V rows, bf16
}

}  // namespace

BENCHMARK(BM_AttentionDecode)
    ->Args({1, 511, 0})
    ->Args({1, 4095, 0})
    ->Args({1, 8191, 4096})
    ->Args({256, 0, 0})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
