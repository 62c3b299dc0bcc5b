// ops/rope.cu: RoPE kernels (SPEC.md §1.4 item 2). One thread per (token, V consecutive k of the first half):
// it computes those V cos/sin pairs once and applies them to every head, loading the x1 and x2 vectors of
// kHeadChunk heads before storing any (so in-place calls are safe and loads overlap).
#include <cstdint>

#include "ops/cuda_common.cuh"
#include "ops/rope.h"

namespace ops {
namespace {

constexpr int kBlock = 256;
constexpr int kHeadChunk = 4;

struct InvFreq {
  float v[kRopeMaxHeadDim / 2];  // by value: 1 KiB of kernel parameter space, no device buffer needed
};

template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

// x rounded to T and back: the dtype rounding torch applies after each elementwise op (identity for f32).
template <typename T>
__device__ __forceinline__ float round_to(float x) { return to_f32(from_f32<T>(x)); }

// kBackward = false: y = x*cos + rotate_half(x)*sin with three roundings (explicit _rn ops: no FMA, as torch).
// kBackward = true: dx = transpose rotation of dy in f32 (+ dx when accumulating), rounded once.
// `out` may alias `in`, so neither is __restrict__.
template <typename T, int V, bool kBackward>
__global__ void rope_kernel(T* out, const T* in, const int32_t* __restrict__ pos, InvFreq inv, RopeParams p,
                            bool accumulate) {
  const int64_t half = p.head_dim / 2, vecs = half / V;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= p.tokens * vecs) return;
  const int64_t n = idx / vecs, k0 = (idx % vecs) * V;
  const float position = float(pos[n]);
  float c[V], s[V];
#pragma unroll
  for (int j = 0; j < V; ++j) {
    const float f = position * inv.v[k0 + j];  // f32 multiply, as torch's inv_freq @ position_ids
    c[j] = round_to<T>(cosf(f));
    s[j] = round_to<T>(sinf(f));
  }
  using VecT = Vec<T, V>;
  for (int64_t h0 = 0; h0 < p.heads; h0 += kHeadChunk) {
    VecT a[kHeadChunk], b[kHeadChunk], oa[kHeadChunk], ob[kHeadChunk];  // halves 1 and 2 of each head
#pragma unroll
    for (int i = 0; i < kHeadChunk; ++i) {
      if (h0 + i < p.heads) {
        const int64_t base = (n * p.heads + h0 + i) * p.head_dim + k0;  // first half; second half at + half
        a[i] = *reinterpret_cast<const VecT*>(in + base);
        b[i] = *reinterpret_cast<const VecT*>(in + base + half);
        if (kBackward && accumulate) {
          oa[i] = *reinterpret_cast<const VecT*>(out + base);
          ob[i] = *reinterpret_cast<const VecT*>(out + base + half);
        }
      }
    }
#pragma unroll
    for (int i = 0; i < kHeadChunk; ++i) {
      if (h0 + i >= p.heads) continue;
      VecT ra, rb;
#pragma unroll
      for (int j = 0; j < V; ++j) {
        const float x1 = to_f32(a[i].v[j]), x2 = to_f32(b[i].v[j]);
        float r1, r2;
        if (kBackward) {
          r1 = x1 * c[j] + x2 * s[j];
          r2 = x2 * c[j] - x1 * s[j];
          if (accumulate) {
            r1 += to_f32(oa[i].v[j]);
            r2 += to_f32(ob[i].v[j]);
          }
        } else {
          r1 = __fadd_rn(round_to<T>(__fmul_rn(x1, c[j])), round_to<T>(__fmul_rn(-x2, s[j])));
          r2 = __fadd_rn(round_to<T>(__fmul_rn(x2, c[j])), round_to<T>(__fmul_rn(x1, s[j])));
        }
        ra.v[j] = from_f32<T>(r1);
        rb.v[j] = from_f32<T>(r2);
      }
      const int64_t base = (n * p.heads + h0 + i) * p.head_dim + k0;
      *reinterpret_cast<VecT*>(out + base) = ra;
      *reinterpret_cast<VecT*>(out + base + half) = rb;
    }
  }
}

template <typename T, bool kBackward>
void launch(TensorView out, TensorView in, TensorView pos, const RopeParams& p, bool accumulate,
            cudaStream_t stream) {
  InvFreq inv{};
  for (int64_t k = 0; k < p.head_dim / 2; ++k) inv.v[k] = rope_inv_freq(k, p);
  // 16-byte vectors when every vector start is 16-byte aligned: both bases, and half a head (so x2 too).
  constexpr int kVec = 16 / sizeof(T);
  const bool vec = (p.head_dim / 2) % kVec == 0 && reinterpret_cast<uintptr_t>(out.data) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(in.data) % 16 == 0;
  const int v = vec ? kVec : 1;
  const int64_t threads = p.tokens * (p.head_dim / 2 / v);
  const unsigned grid = unsigned((threads + kBlock - 1) / kBlock);
  if (vec)
    rope_kernel<T, kVec, kBackward><<<grid, kBlock, 0, stream>>>(out.ptr<T>(), in.ptr<const T>(),
                                                                 pos.ptr<const int32_t>(), inv, p, accumulate);
  else
    rope_kernel<T, 1, kBackward><<<grid, kBlock, 0, stream>>>(out.ptr<T>(), in.ptr<const T>(),
                                                              pos.ptr<const int32_t>(), inv, p, accumulate);
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
