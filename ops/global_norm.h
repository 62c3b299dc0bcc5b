// ops/global_norm.h: global gradient norm, clip coefficient and GradScaler inf check (SPEC.md §5.3, §5.4)
//   global_norm_sumsq:  sumsq += sum_i x_i^2           x: (n) f32 (the flat LoRA gradient buffer, still
//     loss-scaled)   sumsq: (1) f32, ACCUMULATED (+=), so a list of views is one zeroed scalar and one call per
//     view. CUDA: deterministic two-stage reduction (fixed grid that depends on n only, partials in `workspace`,
//     summed in a fixed order by one block), no atomics: the same input gives the same bits on every run.
//     CPU: f64 accumulation, rounded once when added to sumsq.
//   clip_coefficient (one scalar; all outputs SET):
//     norm       = sqrt(sumsq) * inv_loss_scale                 (1) f32, pre-clip norm of the unscaled grads
//     coef       = min(1, max_norm * (1 / (norm + 1e-6)))       torch's clip_grad_norm_ (scalar / tensor is
//                                                                reciprocal() * scalar); max_norm <= 0: coef = 1
//     grad_scale = inv_loss_scale * coef                        (1) f32, what ops::adamw_step multiplies g by
//     found_inf  = sumsq is inf or NaN                          (1) i32 (0/1): skip the optimizer step
//   inv_loss_scale = float(1 / double(S)) (GradScaler, §5.3); 1 without loss scaling. S is a power of two, so
//   scaling is exact: sqrt(sumsq(S g)) * inv = sqrt(sumsq(g)), and g * (inv * coef) = (g * inv) * coef.
// Deviations from torch (bounded by tests): torch takes per-tensor norms, then the norm of the norms
//   (_foreach_norm), all f32; we sum all squares at once, so the norm differs in the last f32 bits. torch's inf
//   check is per element; ours looks at sumsq, which also becomes inf if the squares of finite scaled grads
//   overflow f32 (|S g| above ~1e19 over the whole buffer), in which case the step is skipped and S halved
//   exactly as for a real overflow.
// Tests: tests/ops/global_norm_cpu_test.cpp, global_norm_gpu_test.cpp   Bench: bench/ops/global_norm_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct ClipParams {
  float max_norm = 1.0f;        // <= 0: no clipping (coef = 1), the norm is still reported
  float inv_loss_scale = 1.0f;  // 1 / S
};

// Bytes of f32 partial sums the CUDA global_norm_sumsq needs for n elements (the CPU backend needs none).
size_t global_norm_workspace_bytes(int64_t n);
namespace detail {
constexpr int kGlobalNormBlock = 256;       // threads per block, both stages
constexpr int64_t kGlobalNormMaxGrid = 1024;  // stage-1 blocks at most: ~8 per SM on an H100, 4 partials per thread
// Blocks of the first reduction stage: a function of n only, so the summation order never depends on the device.
int64_t global_norm_grid(int64_t n);
}  // namespace detail

void global_norm_check(TensorView sumsq, TensorView x);
void clip_coefficient_check(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq);

namespace cpu {
void global_norm_sumsq(TensorView sumsq, TensorView x);
void clip_coefficient(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq,
                      const ClipParams& p);
}  // namespace cpu

namespace cuda {
// workspace: at least global_norm_workspace_bytes(x.numel()) bytes on the device (any dtype view).
void global_norm_sumsq(TensorView sumsq, TensorView x, TensorView workspace, cudaStream_t stream);
void clip_coefficient(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq,
                      const ClipParams& p, cudaStream_t stream);
}  // namespace cuda

// workspace is used only on CUDA; pass an undefined view on the CPU.
inline void global_norm_sumsq(TensorView sumsq, TensorView x, TensorView workspace, Engine& eng) {
  if (on_cuda({sumsq, x, workspace})) cuda::global_norm_sumsq(sumsq, x, workspace, eng.stream());
  else cpu::global_norm_sumsq(sumsq, x);
}
inline void clip_coefficient(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq,
                             const ClipParams& p, Engine& eng) {
  if (on_cuda({grad_scale, norm, found_inf, sumsq}))
    cuda::clip_coefficient(grad_scale, norm, found_inf, sumsq, p, eng.stream());
  else cpu::clip_coefficient(grad_scale, norm, found_inf, sumsq, p);
}

}  // namespace ops
