// ops/rope.cu: RoPE kernels (SPEC.md §1.4 item 2). A block takes `tb` consecutive tokens: its threads first
// compute the tokens' cos/sin tables (tb x d/2, once per token, shared by all heads) into shared memory, then
// each thread rotates one V-element vector of one head's first half and the matching vector of its second half.
#include <algorithm>
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/rope.h"
#include "ops/rope_math.cuh"

namespace ops {
namespace {

constexpr int kBlock = 256;

// kBackward = false: y = x*cos + rotate_half(x)*sin with three roundings (explicit _rn ops: no FMA, as torch).
// kBackward = true: dx = transpose rotation of dy in f32 (+ dx when accumulating), rounded once.
// Each thread reads both halves before writing them, so `out` may alias `in` (neither is __restrict__).
template <typename T, int V, bool kBackward>
__global__ void rope_kernel(T* out, const T* in, const int32_t* __restrict__ pos, ropemath::InvFreq inv,
                            RopeParams p, int tb, bool accumulate) {
  extern __shared__ float table[];  // cos (tb, d/2) then sin (tb, d/2)
  const int half = int(p.head_dim / 2), vecs = half / V, items = int(p.heads) * vecs;  // items per token
  const int64_t tok0 = int64_t(blockIdx.x) * tb;
  const int ntok = int(std::min<int64_t>(tb, p.tokens - tok0));
  float* cos_t = table;
  float* sin_t = table + tb * half;
  ropemath::tables<T>(cos_t, sin_t, pos, tok0, ntok, half, inv);
  using VecT = Vec<T, V>;
  for (int i = threadIdx.x; i < ntok * items; i += blockDim.x) {
    const int t = i / items, h = (i % items) / vecs, k0 = (i % vecs) * V;
    const int64_t base = ((tok0 + t) * p.heads + h) * p.head_dim + k0;  // first half; second half at + half
    const VecT a = *reinterpret_cast<const VecT*>(in + base);
    const VecT b = *reinterpret_cast<const VecT*>(in + base + half);
    VecT oa, ob;
    if (kBackward && accumulate) {
      oa = *reinterpret_cast<const VecT*>(out + base);
      ob = *reinterpret_cast<const VecT*>(out + base + half);
    }
    VecT ra, rb;
#pragma unroll
    for (int j = 0; j < V; ++j) {
      const float c = cos_t[t * half + k0 + j], s = sin_t[t * half + k0 + j];
      const float x1 = to_f32(a.v[j]), x2 = to_f32(b.v[j]);
      float r1, r2;
      if (kBackward) {
        ropemath::rotate_back(x1, x2, c, s, r1, r2);
        if (accumulate) {
          r1 += to_f32(oa.v[j]);
          r2 += to_f32(ob.v[j]);
        }
      } else {
        ropemath::rotate<T>(x1, x2, c, s, r1, r2);
      }
      ra.v[j] = from_f32<T>(r1);
      rb.v[j] = from_f32<T>(r2);
    }
    *reinterpret_cast<VecT*>(out + base) = ra;
    *reinterpret_cast<VecT*>(out + base + half) = rb;
  }
}

template <typename T, bool kBackward>
void launch(TensorView out, TensorView in, TensorView pos, const RopeParams& p, bool accumulate,
            cudaStream_t stream) {
  const ropemath::InvFreq inv = ropemath::inv_freq(p);
  // 16-byte vectors when every vector start is 16-byte aligned: both bases, and half a head (so x2 too).
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = (p.head_dim / 2) % kVec == 0 && reinterpret_cast<uintptr_t>(out.data) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(in.data) % 16 == 0;
  const int v = vec ? kVec : 1;
  // Tokens per block: enough (token, head, vector) items to fill the block, at least one token.
  const int64_t items = p.heads * (p.head_dim / 2 / v);
  const int tb = ropemath::tokens_per_block(items, p.tokens, kBlock);
  const unsigned grid = unsigned((p.tokens + tb - 1) / tb);
  // tb * d/2 <= kBlock * v (items >= d/2/v), so the tables take at most 16 KiB.
  const size_t smem = 2 * size_t(tb) * size_t(p.head_dim / 2) * sizeof(float);
  if (vec)
    rope_kernel<T, kVec, kBackward><<<grid, kBlock, smem, stream>>>(
        out.ptr<T>(), in.ptr<const T>(), pos.ptr<const int32_t>(), inv, p, tb, accumulate);
  else
    rope_kernel<T, 1, kBackward><<<grid, kBlock, smem, stream>>>(
        out.ptr<T>(), in.ptr<const T>(), pos.ptr<const int32_t>(), inv, p, tb, accumulate);
  CUDA_CHECK_LAST();
}

}  // namespace

namespace cuda {

void rope_forward(TensorView y, TensorView x, TensorView pos, const RopeParams& p, cudaStream_t stream) {
  rope_check(y, x, pos, p);
  if (p.tokens == 0 || p.heads == 0) return;
  OPS_DISPATCH_FLOAT(x.dtype, T, launch<T, false>(y, x, pos, p, false, stream));
}

void rope_backward(TensorView dx, Accum dx_mode, TensorView dy, TensorView pos, const RopeParams& p,
                   cudaStream_t stream) {
  rope_check(dx, dy, pos, p);
  if (p.tokens == 0 || p.heads == 0) return;
  OPS_DISPATCH_FLOAT(dy.dtype, T, launch<T, true>(dx, dy, pos, p, dx_mode == Accum::kAdd, stream));
}

}  // namespace cuda
}  // namespace ops
