// ops/adamw_cpu.cpp: reference AdamW step (bnb 32-bit), plain loop.
//   Deliberately f32, not f64: the specification IS bnb's f32 expression sequence (SPEC.md §5.5), and the
//   optimizer has no gradient to check by finite differences. Doing each operation in float, in the kernel's
//   order, with the same explicit FMAs and correctly rounded sqrt/division, makes this bit-identical to the CUDA
//   kernel, so the CPU backend trains to the same weights. Hence raw float access, not load_f64/store_f64.
#include "ops/adamw.h"

#include <cmath>

namespace ops {

AdamWScalars adamw_scalars(const AdamWParams& p) {
  const float c1 = 1.0f - powf(p.beta1, float(p.step));
  const float c2 = sqrtf(1.0f - powf(p.beta2, float(p.step)));
  AdamWScalars s;
  s.one_minus_beta1 = 1.0f - p.beta1;
  s.one_minus_beta2 = 1.0f - p.beta2;
  s.step_size = -p.lr * c2 / c1;
  s.eps_c2 = p.eps * c2;
  s.decay = 1.0f - p.lr * p.weight_decay;
  return s;
}

void adamw_check(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                 TensorView found_inf, const AdamWParams& p) {
  for (const TensorView* t : {&param, &m, &v, &grad})
    ENGINE_CHECK(t->dtype == DType::kF32 && t->numel() == p.n, "adamw: ", t->str(), " must be f32 with n=", p.n,
                 " elements (param, m, v, grad are flat f32 buffers)");
  ENGINE_CHECK(!grad_scale.defined() || (grad_scale.dtype == DType::kF32 && grad_scale.numel() == 1),
               "adamw: grad_scale ", grad_scale.str(), " must be one f32");
  ENGINE_CHECK(!found_inf.defined() || (found_inf.dtype == DType::kI32 && found_inf.numel() == 1),
               "adamw: found_inf ", found_inf.str(), " must be one i32");
  ENGINE_CHECK(p.step >= 1, "adamw: step=", p.step, " must be >= 1 (bnb increments it before the first update)");
}

namespace cpu {

void adamw_step(TensorView param, TensorView m, TensorView v, TensorView grad, TensorView grad_scale,
                TensorView found_inf, const AdamWParams& p) {
  adamw_check(param, m, v, grad, grad_scale, found_inf, p);
  if (found_inf.defined() && *found_inf.ptr<const int32_t>() != 0) return;
  const AdamWScalars s = adamw_scalars(p);
  const float gs = grad_scale.defined() ? *grad_scale.ptr<const float>() : 1.0f;
  float* pp = param.ptr<float>();
  float* mm = m.ptr<float>();
  float* vv = v.ptr<float>();
  const float* gg = grad.ptr<const float>();
  for (int64_t i = 0; i < p.n; ++i) {
    const float g = gs * gg[i];
    mm[i] = std::fma(mm[i], p.beta1, s.one_minus_beta1 * g);
    vv[i] = std::fma(vv[i], p.beta2, s.one_minus_beta2 * (g * g));
    float w = std::fma(s.step_size, mm[i] / (std::sqrt(vv[i]) + s.eps_c2), pp[i]);
    if (p.weight_decay > 0.0f) w = w * s.decay;
    pp[i] = w;
  }
}

}  // namespace cpu
}  // namespace ops
