// ops/residual_rmsnorm.h: a Gemma-2 sublayer's exit, the residual add of a normed branch, optionally followed by
// the next sublayer's entry norm (SPEC.md §1.2, §1.6): what rmsnorm + add (+ rmsnorm) compute, in one pass.
//   Forward:  s = round(h + round(rmsnorm(o, w1)))          rstd1 (N) of o, saved
//             y = round(rmsnorm(s, w2))                     only when w2 is defined; rstd2 (N) of s, saved
//   Backward, with ds the gradient arriving at s and dy at y (frozen norm weights: no dw):
//             g  = round(ds + rmsnorm_backward(dy; s, w2, rstd2))     (g = ds without w2)
//             dh = g                                        honours dh_mode (set or add); skipped when undefined
//             do = rmsnorm_backward(g; o, w1, rstd1)        honours do_mode
//   Each value has the bits of the separate ops on the same backend in the order the tape runs them (rmsnorm,
//   add, rmsnorm forward; ds first, the second norm's backward added to it, the add's gradients, the first
//   norm's backward): the row sums are the same code (ops/rmsnorm.cu's warp-per-row kernels) in the same order.
//   One exception: where nothing else reads s (the last layer's sum, whose only reader is the fused final
//   norm) the tape zero-fills ds, and g = round(0 + x) turns a -0 into +0 where the separate ops keep -0.
//   Shapes: h, o, s, y and their gradients (N, C) row-major in one dtype, f32/f16/bf16 (f64 on CPU);
//   w1, w2 (C) f32; rstd1, rstd2 (N) f32. No aliasing between outputs and inputs (do, dh vs ds, o). The
//   backward reads s only with the entry norm (pass it undefined otherwise).
//   CUDA needs C % 8 == 0 and C <= 4096 (residual_rmsnorm_fusable) and 8-element aligned rows (vec8_aligned);
//   callers compose rmsnorm and add otherwise, and when a norm weight trains (dw).
// Tests: tests/ops/residual_rmsnorm_cpu_test.cpp, residual_rmsnorm_gpu_test.cpp
// Bench: bench/ops/residual_rmsnorm_bench.cpp
#pragma once
#include "ops/common.h"
#include "ops/rmsnorm.h"

namespace ops {

inline bool residual_rmsnorm_fusable(int64_t cols) { return cols % 8 == 0 && cols <= 4096; }

void residual_rmsnorm_forward_check(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                                    TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p);
void residual_rmsnorm_backward_check(TensorView dh, TensorView d_o, TensorView ds, TensorView dy, TensorView s,
                                     TensorView o, TensorView w1, TensorView w2, TensorView rstd1,
                                     TensorView rstd2, const RmsNormParams& p);

namespace cpu {
void residual_rmsnorm_forward(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                              TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p);
void residual_rmsnorm_backward(TensorView dh, Accum dh_mode, TensorView d_o, Accum do_mode, TensorView ds,
                               TensorView dy, TensorView s, TensorView o, TensorView w1, TensorView w2,
                               TensorView rstd1, TensorView rstd2, const RmsNormParams& p);
}  // namespace cpu

namespace cuda {
void residual_rmsnorm_forward(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                              TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p,
                              cudaStream_t stream);
void residual_rmsnorm_backward(TensorView dh, Accum dh_mode, TensorView d_o, Accum do_mode, TensorView ds,
                               TensorView dy, TensorView s, TensorView o, TensorView w1, TensorView w2,
                               TensorView rstd1, TensorView rstd2, const RmsNormParams& p, cudaStream_t stream);
}  // namespace cuda

// y, rstd2 and w2 are all undefined (no entry norm) or all defined.
inline void residual_rmsnorm_forward(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                                     TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p,
                                     Engine& eng) {
  if (on_cuda({s, rstd1, h, o, w1})) cuda::residual_rmsnorm_forward(s, y, rstd1, rstd2, h, o, w1, w2, p, eng.stream());
  else cpu::residual_rmsnorm_forward(s, y, rstd1, rstd2, h, o, w1, w2, p);
}
// dy, w2 and rstd2 all undefined or all defined; dh may be undefined (the residual input needs no gradient, or
// the caller handed ds's buffer to it: then there is no w2 and dh = ds already).
inline void residual_rmsnorm_backward(TensorView dh, Accum dh_mode, TensorView d_o, Accum do_mode, TensorView ds,
                                      TensorView dy, TensorView s, TensorView o, TensorView w1, TensorView w2,
                                      TensorView rstd1, TensorView rstd2, const RmsNormParams& p, Engine& eng) {
  if (on_cuda({d_o, ds, s, o, w1, rstd1}))
    cuda::residual_rmsnorm_backward(dh, dh_mode, d_o, do_mode, ds, dy, s, o, w1, w2, rstd1, rstd2, p, eng.stream());
  else cpu::residual_rmsnorm_backward(dh, dh_mode, d_o, do_mode, ds, dy, s, o, w1, w2, rstd1, rstd2, p);
}

}  // namespace ops
