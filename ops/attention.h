// ops/attention.h: Gemma-2 eager attention, forward and backward (SPEC.md §1.4 items 3-5), composed of
// ops::matmul (cuBLASLt or the CPU GEMM), ops/attention_layout.h and ops/attention_softmax.h, so it runs on
// both backends (each piece dispatches on where the tensors live).
//   q: (B*T, H*hd)   k, v: (B*T, KV*hd)   out, dout, dq: (B*T, H*hd)   dk, dv: (B*T, KV*hd)   token-major,
//      q and k already RoPE'd; out is ready for o_proj. One act dtype: f32/f16/bf16 (f64 on CPU).
//   probs: (B, H, T, T) act dtype, written by the forward and saved for the backward. The backward also
//      takes an undefined probs: it then recomputes P = attention_softmax(S) from the S it recomputes anyway
//      (the same GEMM and row kernel as the forward: the same bits while the backward runs in one chunk; in
//      chunks, cuBLASLt may choose another kernel for the smaller batch, rounding S differently), one more
//      T*T scratch for one row pass; callers that do so keep no T*T tensor between the passes.
//   key_mask: (B, T) int32, 1 = keep, 0 = padding key; undefined view = no padding.
// Forward, per (b, kv) group of g = H/KV query heads (query head h uses kv head h / g, HF's repeat_kv):
//   S = Q_g K^T      one strided-batched GEMM over B*KV groups, Q_g: (g*T, hd) head-major; rounded to act
//   P = attention_softmax(S): scale, softcap, causal/sliding/padding mask, f32 softmax, rounded to act
//   O = P V          (g*T, T) @ (T, hd); rounded to act, then permuted back to token-major
// Backward (S is recomputed with one GEMM instead of saving a second T*T tensor; P too when not given):
//   dP = dO V^T;  dS = attention_softmax_backward(P, dP, S);  dQ = dS K;  dK = dS^T Q_g;  dV = P^T dO_g
//   dK and dV sum over the g query heads of their kv head inside the GEMM (k = g*T).
// Gradient semantics: dq, dk, dv are SET (=): every element is written; callers add them to other
// contributions themselves. All GEMM outputs round to the act dtype as HF's autocast GEMMs do.
// Deviation: a query row with no allowed key (left padding) gives zero output and zero gradients instead of
// NaN; see ops/attention_softmax.h.
// Scratch comes from the Engine's allocator (host allocator for CPU tensors); the forward computes S in place
// in probs and O in one head-major q-sized buffer. Backward scratch: two (B,H,T,T) (three without probs), in
// chunks of groups at long sequences, and one head-major q-sized buffer for dO (the token-major entry points
// add their six head-major permutes of q, k, v, dq, dk, dv).
// Tests: tests/ops/attention_cpu_test.cpp, attention_gpu_test.cpp   Bench: bench/ops/attention_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct AttentionParams {
  int64_t batch = 0;      // B
  int64_t seq = 0;        // T
  int64_t heads = 0;      // H query heads
  int64_t kv_heads = 0;   // KV heads; H % KV == 0
  int64_t head_dim = 0;   // hd
  float scale = 0.0625f;  // query_pre_attn_scalar^-0.5 (not 1/sqrt(hd) in general)
  float softcap = 50.f;   // attn_logit_softcapping; <= 0 disables
  int64_t window = 0;     // sliding window (4096 on even layers); 0 = plain causal
  // Backward: its (T, T) scratch per (b, kv) group (S and dS, and P when not given: g*T*T elements each)
  // is kept within this many bytes by running the groups in chunks (whole batch entries, or kv groups of
  // one entry), but a chunk holds at least one group (768 MiB at T = 8192, bf16, P recomputed). The default
  // is one chunk up to T = 4096 (P given) or ~3300 (P recomputed) at Gemma-2-2B's heads, bf16, batch 1.
  int64_t backward_scratch_bytes = int64_t(512) << 20;
};

// The (b, kv) groups per backward chunk (see AttentionParams::backward_scratch_bytes): B*KV (one chunk), a
// multiple of KV (whole batch entries), or a divisor of KV.
int64_t attention_backward_chunk_groups(const AttentionParams& p, DType dt, bool probs_given);

// probs_optional: an undefined probs passes (the backward's recompute).
void attention_check(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                     TensorView key_mask, const AttentionParams& p, bool probs_optional = false);

void attention_forward(TensorView out, TensorView probs, TensorView q, TensorView k, TensorView v,
                       TensorView key_mask, const AttentionParams& p, Engine& eng);
void attention_backward(TensorView dq, TensorView dk, TensorView dv, TensorView dout, TensorView q, TensorView k,
                        TensorView v, TensorView probs, TensorView key_mask, const AttentionParams& p, Engine& eng);

// The same with q, k, v and dq, dk, dv head-major ((B, H, T, hd) / (B, KV, T, hd): ops/attention_layout.h),
// for callers that permute them themselves (ops/attention_rope.h, with RoPE on the way); out and dout stay
// token-major. attention_forward / attention_backward are these between the permutes.
void attention_forward_head_major(TensorView out, TensorView probs, TensorView qh, TensorView kh, TensorView vh,
                                  TensorView key_mask, const AttentionParams& p, Engine& eng);
void attention_backward_head_major(TensorView dqh, TensorView dkh, TensorView dvh, TensorView dout, TensorView qh,
                                   TensorView kh, TensorView vh, TensorView probs, TensorView key_mask,
                                   const AttentionParams& p, Engine& eng);

}  // namespace ops
