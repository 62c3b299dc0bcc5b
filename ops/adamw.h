// ops/adamw.h: bitsandbytes AdamW 32-bit, one step over a flat f32 buffer (SPEC.md §5.5)
//   The trainer keeps every LoRA parameter, gradient, m and v in four flat f32 buffers (each tensor a slice),
//   so one call updates all 364 tensors: param, m, v, grad are (n) f32, updated in place.
//   Per step (host, f32, bnb's order):  c1 = 1 - powf(beta1, step)   c2 = sqrtf(1 - powf(beta2, step))
//                                       step_size = -lr * c2 / c1
//   Per element (bnb kOptimizer32bit2State<float, ADAM>, same order):
//     g = grad_scale * grad
//     m = m*beta1 + (1 - beta1)*g
//     v = v*beta2 + (1 - beta2)*(g*g)
//     p = p + step_size * (m / (sqrtf(v) + eps*c2))
//     if weight_decay > 0: p = p * (1 - lr*weight_decay)       decay AFTER the update, as bnb (not torch)
//   grad_scale: optional (1) f32 on the device; undefined = 1. The trainer passes inv_loss_scale * clip_coef
//     from ops::clip_coefficient (ops/global_norm.h), so unscale + clip need no host sync. g * (inv * coef) equals
//     torch's (g * inv) * coef bit for bit: inv is a power of two, so g * inv is exact.
//   found_inf: optional (1) i32; when nonzero the whole step is skipped (param, m, v untouched), as
//     GradScaler.step skips optimizer.step (SPEC.md §5.3). The caller must then not advance `step`.
//   grad is read only: nothing here is a gradient output.
// Numerics vs bnb: bnb is built with --use_fast_math (approximate __powf, sqrt, division, free FMA contraction);
//   we use IEEE math so the CPU and CUDA backends agree bit for bit: c1, c2, step_size, eps*c2 and the decay
//   factor are computed once on the host in f32 (adamw_scalars, shared by both backends), and the element
//   update uses correctly rounded sqrt and division with the FMAs written out explicitly (fmaf on both sides).
//   The difference from bnb is a few f32 ulps per step.
// Tests: tests/ops/adamw_cpu_test.cpp, adamw_gpu_test.cpp   Bench: bench/ops/adamw_bench.cpp
#pragma once
#include "ops/common.h"

namespace ops {

struct AdamWParams {
  int64_t n = 0;  // elements in each of param, m, v, grad
  float lr = 0.f;
  float beta1 = 0.9f, beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.f;
  int step = 1;  // 1-based: bnb increments it before the kernel, so the first update uses step = 1
};

// The per-step scalars, in f32, in bnb's order. Both backends use exactly these values.
struct AdamWScalars {
  float one_minus_beta1, one_minus_beta2;
  float step_size;  // -lr * c2 / c1
  float eps_c2;     // eps * c2
  float decay;      // 1 - lr * weight_decay; applied only when weight_decay > 0
};
AdamWScalars adamw_scalars(const AdamWParams& p);

void adamw_check(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                 TensorView found_inf, const AdamWParams& p);

namespace cpu {
void adamw_step(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                TensorView found_inf, const AdamWParams& p);
}  // namespace cpu

namespace cuda {
void adamw_step(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                TensorView found_inf, const AdamWParams& p, cudaStream_t stream);
}  // namespace cuda

inline void adamw_step(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                       TensorView found_inf, const AdamWParams& p, Engine& eng) {
  if (on_cuda({param, m, v, grad, grad_scale, found_inf}))
    cuda::adamw_step(param, m, v, grad, grad_scale, found_inf, p, eng.stream());
  else cpu::adamw_step(param, m, v, grad, grad_scale, found_inf, p);
}

}  // namespace ops
