// ops/rope.h: rotary position embedding, rotate-half (NeoX) convention over the full head_dim (SPEC.md §1.4 item 2)
//   inv_freq[k] = 1 / (theta ** (float(2k) / float(d)))     k < d/2, f32 (torch: arange(0,d,2).float()/d, pow, 1/.)
//   cos[t,k], sin[t,k] = cosf/sinf(float(pos[t]) * inv_freq[k]), f32, then ROUNDED TO x's dtype (cos.to(x.dtype))
//   y = x*cos + rotate_half(x)*sin,  rotate_half(x) = cat(-x[d/2:], x[:d/2]);  cos/sin repeat over the halves.
//     f16/bf16: three roundings to the dtype (x*cos, rot*sin, the sum), as torch's elementwise ops do.
//     f32: the same three f32 roundings (no FMA contraction).
//   x, y: (N, H, d) row-major (any shape with N*H*d elements), f32/f16/bf16 (f64 on CPU); y may alias x.
//   pos: (N) i32, the position of each token, so right-padded and packed batches work.
// Backward (the transpose of the rotation, halves 1 = [0,d/2), 2 = [d/2,d)):
//   dx1 = dy1*c + dy2*s,  dx2 = dy2*c - dy1*s     f32 from the rounded cos/sin, rounded once; dx honours dx_mode
//   (set or add); dx may alias dy. HF's autograd rounds dy*cos and dy*sin to the dtype before adding them;
//   this rounds once. Measured against transformers on an H200 (N=512, 8x256): y bit-exact in bf16/f16 (f32:
//   99.9%, the rest within 2.4e-7); dx bit-exact in 70-73% of elements and within one ulp elsewhere.
// Both backends compute inv_freq with the same host function (rope_inv_freq), and cos/sin in f32 with the
// C library's cosf/sinf (CPU) or CUDA's precise cosf/sinf: those agree to about 1 f32 ulp, so after rounding to
// f16/bf16 cos/sin almost always match bit for bit, and f32 results agree to a few ulps.
// Tests: tests/ops/rope_cpu_test.cpp, rope_gpu_test.cpp   Bench: bench/ops/rope_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct RopeParams {
  int64_t tokens = 0;    // N
  int64_t heads = 0;     // H
  int64_t head_dim = 0;  // d, even, at most kRopeMaxHeadDim
  float theta = 10000.f;
};

// The CUDA kernels take inv_freq by value as a kernel parameter (d/2 floats).
constexpr int64_t kRopeMaxHeadDim = 512;

// inv_freq[k] in f32, exactly as transformers computes it at init (see the file header).
float rope_inv_freq(int64_t k, const RopeParams& p);

void rope_check(TensorView y, TensorView x, TensorView pos, const RopeParams& p);

namespace cpu {
void rope_forward(TensorView y, TensorView x, TensorView pos, const RopeParams& p);
void rope_backward(TensorView dx, Accum dx_mode, TensorView dy, TensorView pos, const RopeParams& p);
}  // namespace cpu

namespace cuda {
void rope_forward(TensorView y, TensorView x, TensorView pos, const RopeParams& p, cudaStream_t stream);
void rope_backward(TensorView dx, Accum dx_mode, TensorView dy, TensorView pos, const RopeParams& p,
                   cudaStream_t stream);
}  // namespace cuda

inline void rope_forward(TensorView y, TensorView x, TensorView pos, const RopeParams& p, Engine& eng) {
  if (on_cuda({y, x, pos})) cuda::rope_forward(y, x, pos, p, eng.stream());
  else cpu::rope_forward(y, x, pos, p);
}
inline void rope_backward(TensorView dx, Accum dx_mode, TensorView dy, TensorView pos, const RopeParams& p,
                          Engine& eng) {
  if (on_cuda({dx, dy, pos})) cuda::rope_backward(dx, dx_mode, dy, pos, p, eng.stream());
  else cpu::rope_backward(dx, dx_mode, dy, pos, p);
}

}  // namespace ops
