// bench/ops/attention_bench.cpp: the attention row kernels and the whole eager attention at Gemma-2-2B
// shapes (H=8, KV=4, hd=256, bf16). Row kernels are memory-bound: bytes counted as the kernel moves them
// (the causal half of S read, the full row written). The composite reports the causal-useful FLOPs
// (half of the dense GEMM FLOPs), which is what a fused kernel would have to do.
#include "bench/bench_util.h"
#include "ops/attention.h"
#include "ops/attention_layout.h"
#include "ops/attention_rope.h"
#include "ops/rope.h"
#include "ops/attention_softmax.h"
#include "ops/elementwise.h"

namespace {

using namespace bench;  // Engine, Tensor, DType, timers
using ops::TensorView;

ops::AttentionSoftmaxParams softmax_params(int64_t B, int64_t T) {
  ops::AttentionSoftmaxParams p;
  p.batch = B; p.heads = 8; p.seq = T; p.scale = 0.0625f; p.softcap = 50.f; p.window = 0;
  return p;
}

// Args: B, T.
void BM_AttentionSoftmaxForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const auto p = softmax_params(state.range(0), state.range(1));
  const Shape s{p.batch, p.heads, p.seq, p.seq};
  Tensor scores = bench::random_tensor(eng, s, DType::kBF16, 1, 16.0), probs = eng.empty(s, DType::kBF16);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::attention_softmax_forward(probs, scores, TensorView{}, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  const double n = double(p.batch * p.heads) * p.seq * p.seq;
  bench::report_bytes(state, n * 2 * (0.5 + 1.0));  // read the causal half, write all
}

void BM_AttentionSoftmaxBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const auto p = softmax_params(state.range(0), state.range(1));
  const Shape s{p.batch, p.heads, p.seq, p.seq};
  Tensor scores = bench::random_tensor(eng, s, DType::kBF16, 1, 16.0), probs = eng.empty(s, DType::kBF16);
  Tensor dprobs = bench::random_tensor(eng, s, DType::kBF16, 2), dscores = eng.empty(s, DType::kBF16);
  ops::cuda::attention_softmax_forward(probs, scores, TensorView{}, p, eng.stream());
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::cuda::attention_softmax_backward(dscores, probs, dprobs, scores, TensorView{}, p, eng.stream());
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  const double n = double(p.batch * p.heads) * p.seq * p.seq;
  bench::report_bytes(state, n * 2 * (3 * 0.5 + 1.0));  // read the causal half of P, dP, S; write all
}

struct AttnBuffers {
  ops::AttentionParams p;
  Tensor q, k, v, out, probs, dout, dq, dk, dv;
  AttnBuffers(Engine& eng, int64_t B, int64_t T) {
    p.batch = B; p.seq = T; p.heads = 8; p.kv_heads = 4; p.head_dim = 256;
    p.scale = 0.0625f; p.softcap = 50.f; p.window = 0;
    const DType dt = DType::kBF16;
    q = bench::random_tensor(eng, {B * T, 8 * 256}, dt, 1);
    k = bench::random_tensor(eng, {B * T, 4 * 256}, dt, 2);
    v = bench::random_tensor(eng, {B * T, 4 * 256}, dt, 3);
    dout = bench::random_tensor(eng, {B * T, 8 * 256}, dt, 4);
    out = eng.empty({B * T, 8 * 256}, dt);
    probs = eng.empty({B, 8, T, T}, dt);
    dq = eng.empty({B * T, 8 * 256}, dt);
    dk = eng.empty({B * T, 4 * 256}, dt);
    dv = eng.empty({B * T, 4 * 256}, dt);
  }
  // Causal-useful FLOPs of one dense (B*H, T, T, hd) GEMM.
  double gemm_flops() const { return 2.0 * p.batch * p.heads * p.seq * p.seq * p.head_dim / 2; }
};

void BM_AttentionForward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  AttnBuffers a(eng, state.range(0), state.range(1));
  ops::attention_forward(a.out, a.probs, a.q, a.k, a.v, TensorView{}, a.p, eng);  // warm caches, allocator
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::attention_forward(a.out, a.probs, a.q, a.k, a.v, TensorView{}, a.p, eng);
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_flops(state, 2 * a.gemm_flops());  // QK^T, PV
}

void BM_AttentionBackward(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  AttnBuffers a(eng, state.range(0), state.range(1));
  ops::attention_forward(a.out, a.probs, a.q, a.k, a.v, TensorView{}, a.p, eng);
  ops::attention_backward(a.dq, a.dk, a.dv, a.dout, a.q, a.k, a.v, a.probs, TensorView{}, a.p, eng);
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    ops::attention_backward(a.dq, a.dk, a.dv, a.dout, a.q, a.k, a.v, a.probs, TensorView{}, a.p, eng);
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_flops(state, 5 * a.gemm_flops());  // S recompute, dP, dV, dK, dQ
}

// RoPE + head-major layout of q, k, v (Args: B, T, fused): fused = ops/attention_rope.h's one launch each way;
// else two RoPEs and three permutes forward, three permutes and two RoPE backwards backward (the sequence the
// fused op replaces). The backward reads the forward's head-major outputs as its gradients.
template <bool kBackward>
void BM_AttentionRope(benchmark::State& state) {
  if (!bench::require_cuda(state)) return;
  Engine eng;
  const int64_t B = state.range(0), T = state.range(1), H = 8, KV = 4, hd = 256, N = B * T;
  const bool fused = state.range(2) != 0;
  const ops::AttentionRopeParams p{B, T, H, KV, hd, 10000.f};
  const DType dt = DType::kBF16;
  Tensor q = bench::random_tensor(eng, {N, H * hd}, dt, 1), k = bench::random_tensor(eng, {N, KV * hd}, dt, 2),
         v = bench::random_tensor(eng, {N, KV * hd}, dt, 3);
  Tensor qh = eng.empty({B, H, T, hd}, dt), kh = eng.empty({B, KV, T, hd}, dt), vh = eng.empty({B, KV, T, hd}, dt);
  Tensor qr = eng.empty({N, H * hd}, dt), kr = eng.empty({N, KV * hd}, dt);
  Tensor pos = eng.empty({N}, DType::kI32);
  {
    Tensor hpos = eng.empty_host({N}, DType::kI32);
    for (int64_t i = 0; i < N; ++i) hpos.ptr<int32_t>()[i] = int32_t(i % T);
    eng.copy(pos, hpos);
  }
  const ops::AttentionLayoutParams lq{B, T, H, hd}, lkv{B, T, KV, hd};
  ops::attention_rope_forward(qh, kh, vh, q, k, v, pos, p, eng);  // defined values for the backward to read
  bench::L2Flush flush(eng);
  bench::CudaEventTimer timer;
  for (auto _ : state) {
    flush(eng.stream());
    timer.start(eng.stream());
    if (fused && !kBackward) {
      ops::attention_rope_forward(qh, kh, vh, q, k, v, pos, p, eng);
    } else if (fused) {
      ops::attention_rope_backward({q, k, v, ops::Accum::kSet, ops::Accum::kSet, ops::Accum::kSet}, qh, kh, vh, pos, p, eng);
    } else if (!kBackward) {
      ops::rope_forward(qr, q, pos, p.rope(H), eng);
      ops::rope_forward(kr, k, pos, p.rope(KV), eng);
      ops::attention_to_head_major(qh, qr, lq, eng);
      ops::attention_to_head_major(kh, kr, lkv, eng);
      ops::attention_to_head_major(vh, v, lkv, eng);
    } else {
      ops::attention_to_token_major(qr, qh, lq, eng);
      ops::attention_to_token_major(kr, kh, lkv, eng);
      ops::attention_to_token_major(v, vh, lkv, eng);
      ops::rope_backward(q, ops::Accum::kSet, qr, pos, p.rope(H), eng);
      ops::rope_backward(k, ops::Accum::kSet, kr, pos, p.rope(KV), eng);
    }
    state.SetIterationTime(timer.stop_seconds(eng.stream()));
  }
  bench::report_bytes(state, 2.0 * 2 * N * (H + 2 * KV) * hd);  // the fused op: read and write q, k, v once
}
void BM_AttentionRopeForward(benchmark::State& state) { BM_AttentionRope<false>(state); }
void BM_AttentionRopeBackward(benchmark::State& state) { BM_AttentionRope<true>(state); }

}  // namespace

BENCHMARK(BM_AttentionSoftmaxForward)->Args({1, 512})->Args({1, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionSoftmaxBackward)->Args({1, 512})->Args({1, 4096})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionForward)->Args({1, 512})->Args({8, 512})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionBackward)->Args({1, 512})->Args({8, 512})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionRopeForward)->Args({1, 512, 0})->Args({1, 512, 1})->Args({8, 512, 0})->Args({8, 512, 1})->UseManualTime()->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_AttentionRopeBackward)->Args({1, 512, 0})->Args({1, 512, 1})->Args({8, 512, 0})->Args({8, 512, 1})->UseManualTime()->Unit(benchmark::kMicrosecond);
