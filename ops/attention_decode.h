// ops/attention_decode.h: Gemma-2 eager attention of n new query tokens against a KV cache (generation),
// forward only, one sequence (batch 1: the chat tool decodes one conversation at a time).
//   q:   (n, H*hd)          the new tokens' queries, RoPE'd, token-major; query r sits at position i = p0 + r
//   k, v: (cap, KV*hd)      the cache, token-major, rows 0 .. p0+n-1 valid (the new tokens' keys/values already
//                           appended, keys RoPE'd); rows past p0+n are never read
//   out: (n, H*hd)          token-major, ready for o_proj
//   one act dtype for all four: f32/f16/bf16 (f64 on CPU).
// Per (r, h), with query head h using kv head h / (H/KV) (HF's repeat_kv) and allowed keys
// j in [lo, i], lo = window > 0 ? max(0, i - window + 1) : 0 (causal + sliding window j > i - W):
//   s_j = round(q . k_j)                         f32 accumulation (f64 on CPU), rounded to act like the GEMM
//   x_j = capped logit of s_j                    exactly ops/attention_softmax.h: round(s*scale), then the
//                                                softcap's three act roundings (cap <= 0: none)
//   p_j = round(softmax_f32(x)_j)                masked keys contribute exactly 0 (as HF's finfo.min mask)
//   out = round(sum_j p_j v_j)                   f32 accumulation (f64 on CPU), rounded once to act
// So a prefill (p0 = 0, n = T) equals ops::attention_forward on the same sequence row for row: bit for bit
// on the CPU backend (same f64 sums in the same order, same rounding points); within a few ulps on CUDA,
// where the training op's GEMMs may sum in another order.
// Gradient: none (inference only).
// Limits (CUDA): one block per (query, head) holds the allowed keys' probabilities in shared memory, so at
// most attention_decode_max_keys() keys per query row (Gemma-2's max_position_embeddings); any hd.
// Tests: tests/ops/attention_decode_cpu_test.cpp, attention_decode_gpu_test.cpp
// Bench: bench/ops/attention_decode_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct AttentionDecodeParams {
  int64_t queries = 0;    // n new tokens
  int64_t past = 0;       // p0: tokens in the cache before the new ones
  int64_t heads = 0;      // H query heads
  int64_t kv_heads = 0;   // KV heads; H % KV == 0
  int64_t head_dim = 0;   // hd
  float scale = 0.0625f;  // query_pre_attn_scalar^-0.5
  float softcap = 50.f;   // attn_logit_softcapping; <= 0 disables
  int64_t window = 0;     // sliding window W (key j > i - W); 0 = plain causal
};

constexpr int64_t attention_decode_max_keys() { return 8192; }

void attention_decode_check(TensorView out, TensorView q, TensorView k, TensorView v, const AttentionDecodeParams& p);

namespace cpu {
void attention_decode_forward(TensorView out, TensorView q, TensorView k, TensorView v, const AttentionDecodeParams& p);
}  // namespace cpu

namespace cuda {
void attention_decode_forward(TensorView out, TensorView q, TensorView k, TensorView v, const AttentionDecodeParams& p,
                              cudaStream_t stream);
}  // namespace cuda

inline void attention_decode_forward(TensorView out, TensorView q, TensorView k, TensorView v,
                                     const AttentionDecodeParams& p, Engine& eng) {
  if (on_cuda({out, q, k, v})) cuda::attention_decode_forward(out, q, k, v, p, eng.stream());
  else cpu::attention_decode_forward(out, q, k, v, p);
}

}  // namespace ops
