// ops/attention_softmax.h: Gemma-2 eager attention row op on raw scores (SPEC.md §1.4 items 4-5), fused:
//   x = round(s * scale)                                       s = raw QK^T, already rounded to the act dtype
//   x = round(round(tanh(round(x / cap))) * cap)               softcap: three act-dtype roundings; cap <= 0: none
//   allowed(i, j) = j <= i && (window == 0 || j > i - window) && (no key_mask || key_mask[b, j] != 0)
//   p = round(softmax_f32 over allowed j of x)                 masked p are exactly 0
// Masking by exclusion equals HF's `x + finfo.min` then softmax: exp(min - max) underflows to exactly 0.
// Deliberate deviation: a row with no allowed key (only possible with left padding) gives all-zero p (and
// zero gradient) instead of HF's NaN (SPEC.md §1.4 item 5, fp16 hazard); those rows are pad queries whose
// labels are -100, and zeros keep NaN from reaching real tokens through the pad keys' K/V.
//   scores, probs, dscores, dprobs: (B, H, T, T) row-major, one act dtype: f32/f16/bf16 (f64 on CPU)
//   key_mask: (B, T) int32, 1 = keep, 0 = padding; undefined view = keep all
// Backward (given the saved p, dp = dO @ V^T in the act dtype, and the RECOMPUTED raw scores s):
//   dx = p * (dp - sum_j p_j dp_j)            f32 (f64 on CPU); 0 where masked
//   ds = dx * (1 - t^2) * scale               t = the forward's rounded tanh value (omitted when cap <= 0)
//   rounded once to the act dtype. dscores is SET (the op produces it whole; masked entries written 0).
// Aliasing: probs may alias scores (forward in place) and dscores may alias dprobs (backward in place).
// Limits: T <= attention_softmax_max_seq() on CUDA (one block per row, the row staged in shared memory).
// Tests: tests/ops/attention_cpu_test.cpp, attention_gpu_test.cpp   Bench: bench/ops/attention_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct AttentionSoftmaxParams {
  int64_t batch = 0;     // B
  int64_t heads = 0;     // H (query heads)
  int64_t seq = 0;       // T
  float scale = 0.0625f;  // query_pre_attn_scalar^-0.5
  float softcap = 50.f;   // attn_logit_softcapping; <= 0 disables
  int64_t window = 0;     // sliding window W (key j > i - W); 0 = plain causal
};

constexpr int64_t attention_softmax_max_seq() { return 8192; }

void attention_softmax_check(TensorView probs, TensorView scores, TensorView key_mask,
                             const AttentionSoftmaxParams& p);

namespace cpu {
void attention_softmax_forward(TensorView probs, TensorView scores, TensorView key_mask,
                               const AttentionSoftmaxParams& p);
void attention_softmax_backward(TensorView dscores, TensorView probs, TensorView dprobs, TensorView scores,
                                TensorView key_mask, const AttentionSoftmaxParams& p);
}  // namespace cpu

namespace cuda {
void attention_softmax_forward(TensorView probs, TensorView scores, TensorView key_mask,
                               const AttentionSoftmaxParams& p, cudaStream_t stream);
void attention_softmax_backward(TensorView dscores, TensorView probs, TensorView dprobs, TensorView scores,
                                TensorView key_mask, const AttentionSoftmaxParams& p, cudaStream_t stream);
}  // namespace cuda

inline void attention_softmax_forward(TensorView probs, TensorView scores, TensorView key_mask,
                                      const AttentionSoftmaxParams& p, Engine& eng) {
  if (on_cuda({probs, scores, key_mask})) cuda::attention_softmax_forward(probs, scores, key_mask, p, eng.stream());
  else cpu::attention_softmax_forward(probs, scores, key_mask, p);
}
inline void attention_softmax_backward(TensorView dscores, TensorView probs, TensorView dprobs, TensorView scores,
                                       TensorView key_mask, const AttentionSoftmaxParams& p, Engine& eng) {
  if (on_cuda({dscores, probs, dprobs, scores, key_mask}))
    cuda::attention_softmax_backward(dscores, probs, dprobs, scores, key_mask, p, eng.stream());
  else cpu::attention_softmax_backward(dscores, probs, dprobs, scores, key_mask, p);
}

}  // namespace ops
