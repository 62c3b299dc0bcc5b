// ops/rope_math.cuh: the RoPE arithmetic shared by ops/rope.cu and ops/attention_rope.cu, so that RoPE fused
// into the attention layout gives the bits of ops/rope.h (SPEC.md §1.4 item 2).
#pragma once
#include <algorithm>
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/rope.h"

namespace ops {
namespace ropemath {

struct InvFreq {
  float v[kRopeMaxHeadDim / 2];  // by value: 1 KiB of kernel parameter space, no device buffer needed
};

inline InvFreq inv_freq(const RopeParams& p) {
  InvFreq inv{};
  for (int64_t k = 0; k < p.head_dim / 2; ++k) inv.v[k] = rope_inv_freq(k, p);
  return inv;
}

// x rounded to T and back: the dtype rounding torch applies after each elementwise op (identity for f32).
template <typename T>
__device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

// The block's cos/sin tables for tokens tok0 .. tok0 + ntok - 1: cos (ntok, half) then sin, rounded to T
// (cos.to(x.dtype)). Ends with a block barrier.
template <typename T>
__device__ __forceinline__ void tables(float* cos_t, float* sin_t, const int32_t* __restrict__ pos, int64_t tok0,
                                       int ntok, int half, const InvFreq& inv) {
  for (int i = threadIdx.x; i < ntok * half; i += blockDim.x) {
    const float f = float(pos[tok0 + i / half]) * inv.v[i % half];  // f32 multiply, as torch's inv_freq @ pos
    cos_t[i] = round_to<T>(cosf(f));
    sin_t[i] = round_to<T>(sinf(f));
  }
  __syncthreads();
}

// Forward: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s) with torch's three roundings (explicit _rn ops: no FMA).
template <typename T>
__device__ __forceinline__ void rotate(float x1, float x2, float c, float s, float& r1, float& r2) {
  r1 = __fadd_rn(round_to<T>(__fmul_rn(x1, c)), round_to<T>(__fmul_rn(-x2, s)));
  r2 = __fadd_rn(round_to<T>(__fmul_rn(x2, c)), round_to<T>(__fmul_rn(x1, s)));
}

// Backward (the transpose): (dy1, dy2) -> (dy1 c + dy2 s, dy2 c - dy1 s), in f32.
__device__ __forceinline__ void rotate_back(float d1, float d2, float c, float s, float& r1, float& r2) {
  r1 = d1 * c + d2 * s;
  r2 = d2 * c - d1 * s;
}

// Tokens per block: enough (token, item) pairs to fill `block` threads, at least one token.
inline int tokens_per_block(int64_t items_per_token, int64_t tokens, int block) {
  return int(std::max<int64_t>(1, std::min<int64_t>(block / std::max<int64_t>(1, items_per_token), tokens)));
}

}  // namespace ropemath
}  // namespace ops
