// ops/rmsnorm.h: Gemma RMSNorm (SPEC.md §1.2)
//   y = (x * rsqrt(mean(x^2) + eps)) * (1 + w), computed in f32 (f64 on CPU) whatever x's dtype;
//   rounded once to y's dtype (= x's dtype).
//   x, y: (N, C) row-major, f32/f16/bf16 (f64 on CPU)   w, dw: (C) f32   rstd: (N) f32, saved for backward
// Backward, with g = dy * (1 + w):
//   dx = rstd * (g - x * rstd^2 * mean(g * x))          honours dx_mode (set or add)
//   dw += sum_rows(dy * x * rstd)                         always accumulates; skipped when dw is undefined
//                                                         (frozen norm). CUDA: atomics, so dw's last bits
//                                                         can vary from run to run.
// Tests: tests/ops/rmsnorm_cpu_test.cpp, rmsnorm_gpu_test.cpp   Bench: bench/ops/rmsnorm_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct RmsNormParams {
  int64_t rows = 0;  // N
  int64_t cols = 0;  // C
  float eps = 1e-6f;
};

void rmsnorm_check(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p);

namespace cpu {
void rmsnorm_forward(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p);
void rmsnorm_backward(TensorView dx, Accum dx_mode, TensorView dw, TensorView dy, TensorView x, TensorView w,
                      TensorView rstd, const RmsNormParams& p);
}  // namespace cpu

namespace cuda {
void rmsnorm_forward(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p,
                     cudaStream_t stream);
void rmsnorm_backward(TensorView dx, Accum dx_mode, TensorView dw, TensorView dy, TensorView x, TensorView w,
                      TensorView rstd, const RmsNormParams& p, cudaStream_t stream);
}  // namespace cuda

inline void rmsnorm_forward(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p,
                            Engine& eng) {
  if (on_cuda({y, rstd, x, w})) cuda::rmsnorm_forward(y, rstd, x, w, p, eng.stream());
  else cpu::rmsnorm_forward(y, rstd, x, w, p);
}
inline void rmsnorm_backward(TensorView dx, Accum dx_mode, TensorView dw, TensorView dy, TensorView x,
                             TensorView w, TensorView rstd, const RmsNormParams& p, Engine& eng) {
  if (on_cuda({dx, dw, dy, x, w, rstd})) cuda::rmsnorm_backward(dx, dx_mode, dw, dy, x, w, rstd, p, eng.stream());
  else cpu::rmsnorm_backward(dx, dx_mode, dw, dy, x, w, rstd, p);
}

}  // namespace ops
