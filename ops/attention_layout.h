// ops/attention_layout.h: token-major <-> head-major permutes for attention (SPEC.md §1.4 item 1).
//   token-major: (B, T, heads, hd), i.e. the (B*T, heads*hd) output of q/k/v_proj and the input of o_proj.
//   head-major:  (B, heads, T, hd), HF's `view(B,T,heads,hd).transpose(1,2)`: the g = H/KV query heads of one
//                kv head lie next to each other, so each (b, kv) group is one dense (g*T, hd) matrix.
//   dtypes: dst and src alike, f32/f16/bf16 (f64 on CPU). A pure copy: no rounding.
// Backward: each permute is linear and orthogonal, so its backward is the other one
//   (d src = to_token_major(d dst) for to_head_major, and vice versa). Outputs are SET.
// Tests: tests/ops/attention_cpu_test.cpp, attention_gpu_test.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct AttentionLayoutParams {
  int64_t batch = 0;     // B
  int64_t seq = 0;       // T
  int64_t heads = 0;     // query heads H, or kv heads KV
  int64_t head_dim = 0;  // hd
};

void attention_layout_check(TensorView dst, TensorView src, const AttentionLayoutParams& p);

namespace cpu {
void attention_to_head_major(TensorView dst, TensorView src, const AttentionLayoutParams& p);
void attention_to_token_major(TensorView dst, TensorView src, const AttentionLayoutParams& p);
}  // namespace cpu

namespace cuda {
void attention_to_head_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, cudaStream_t stream);
void attention_to_token_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, cudaStream_t stream);
}  // namespace cuda

// dst (B, heads, T, hd) <- src (B*T, heads*hd)
inline void attention_to_head_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, Engine& eng) {
  if (on_cuda({dst, src})) cuda::attention_to_head_major(dst, src, p, eng.stream());
  else cpu::attention_to_head_major(dst, src, p);
}
// dst (B*T, heads*hd) <- src (B, heads, T, hd)
inline void attention_to_token_major(TensorView dst, TensorView src, const AttentionLayoutParams& p, Engine& eng) {
  if (on_cuda({dst, src})) cuda::attention_to_token_major(dst, src, p, eng.stream());
  else cpu::attention_to_token_major(dst, src, p);
}

}  // namespace ops
