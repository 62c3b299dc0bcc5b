// ops/attention_rope.h: the attention's inputs from the q/k/v projections to head-major, RoPE applied on the
// way (SPEC.md §1.4 items 1-2), and the gradients back: ops/rope.h and ops/attention_layout.h in one pass.
//   Forward:  qh = to_head_major(rope(q)),  kh = to_head_major(rope(k)),  vh = to_head_major(v)
//   Backward: dq = rope_backward(to_token_major(dqh)),  dk likewise,  dv = to_token_major(dvh); each honours
//             its Accum mode (set or add) and is skipped when undefined.
//   The same bits as the separate ops (the rotation is ops/rope_math.cuh's; the permutes are copies).
//   q, dq: (B*T, H*hd)   k, v, dk, dv: (B*T, KV*hd)   qh, dqh: (B, H, T, hd)   kh, vh, dkh, dvh: (B, KV, T, hd)
//   pos: (B*T) i32. One dtype f32/f16/bf16 (f64 on CPU). No aliasing between inputs and outputs.
// CUDA: one launch each way for all three tensors (a block's tokens share one cos/sin table); 16-byte vectors
// when hd/2 and the base addresses allow, else scalars.
// Tests: tests/ops/attention_rope_cpu_test.cpp, attention_rope_gpu_test.cpp   Bench: bench/ops/attention_bench.cpp
#pragma once
#include "ops/common.h"
#include "ops/rope.h"

namespace ops {

struct AttentionRopeParams {
  int64_t batch = 0, seq = 0;  // B, T
  int64_t heads = 0, kv_heads = 0, head_dim = 0;
  float theta = 10000.f;
  RopeParams rope(int64_t n_heads) const { return RopeParams{batch * seq, n_heads, head_dim, theta}; }
};

struct AttentionRopeGrads {
  TensorView dq, dk, dv;  // token-major; undefined: not wanted
  Accum dq_mode = Accum::kSet, dk_mode = Accum::kSet, dv_mode = Accum::kSet;
};

void attention_rope_check(TensorView q, TensorView k, TensorView v, TensorView qh, TensorView kh, TensorView vh,
                          TensorView pos, const AttentionRopeParams& p);

namespace cpu {
void attention_rope_forward(TensorView qh, TensorView kh, TensorView vh, TensorView q, TensorView k, TensorView v,
                            TensorView pos, const AttentionRopeParams& p);
void attention_rope_backward(const AttentionRopeGrads& d, TensorView dqh, TensorView dkh, TensorView dvh,
                             TensorView pos, const AttentionRopeParams& p);
}  // namespace cpu

namespace cuda {
void attention_rope_forward(TensorView qh, TensorView kh, TensorView vh, TensorView q, TensorView k, TensorView v,
                            TensorView pos, const AttentionRopeParams& p, cudaStream_t stream);
void attention_rope_backward(const AttentionRopeGrads& d, TensorView dqh, TensorView dkh, TensorView dvh,
                             TensorView pos, const AttentionRopeParams& p, cudaStream_t stream);
}  // namespace cuda

inline void attention_rope_forward(TensorView qh, TensorView kh, TensorView vh, TensorView q, TensorView k,
                                   TensorView v, TensorView pos, const AttentionRopeParams& p, Engine& eng) {
  if (on_cuda({qh, kh, vh, q, k, v, pos})) cuda::attention_rope_forward(qh, kh, vh, q, k, v, pos, p, eng.stream());
  else cpu::attention_rope_forward(qh, kh, vh, q, k, v, pos, p);
}
inline void attention_rope_backward(const AttentionRopeGrads& d, TensorView dqh, TensorView dkh, TensorView dvh,
                                    TensorView pos, const AttentionRopeParams& p, Engine& eng) {
  if (on_cuda({d.dq, d.dk, d.dv, dqh, dkh, dvh, pos})) cuda::attention_rope_backward(d, dqh, dkh, dvh, pos, p, eng.stream());
  else cpu::attention_rope_backward(d, dqh, dkh, dvh, pos, p);
}

}  // namespace ops
