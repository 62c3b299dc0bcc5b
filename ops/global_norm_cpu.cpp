// ops/global_norm_cpu.cpp: reference sum of squares (f64 accumulation) and clip coefficient. clip_coefficient
// is f32 arithmetic in the same order as the CUDA kernel (and torch), so both backends give the same bits for
// the same sumsq.
#include "ops/global_norm.h"

#include <algorithm>
#include <cmath>

namespace ops {

namespace detail {
int64_t global_norm_grid(int64_t n) {
  const int64_t per_block = int64_t(kGlobalNormBlock) * 4;  // one float4 per thread per pass
  return std::max<int64_t>(1, std::min<int64_t>((n + per_block - 1) / per_block, kGlobalNormMaxGrid));
}
}  // namespace detail

size_t global_norm_workspace_bytes(int64_t n) { return size_t(detail::global_norm_grid(n)) * sizeof(float); }

void global_norm_check(TensorView sumsq, TensorView x) {
  check_dtype(x, {DType::kF32, DType::kF64}, "global_norm x");
  ENGINE_CHECK(sumsq.numel() == 1 && (sumsq.dtype == DType::kF32 || sumsq.dtype == DType::kF64), "global_norm: sumsq ",
               sumsq.str(), " must be one f32");
}

void clip_coefficient_check(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq) {
  for (const TensorView* t : {&grad_scale, &norm, &sumsq})
    ENGINE_CHECK(t->dtype == DType::kF32 && t->numel() == 1, "clip_coefficient: ", t->str(), " must be one f32");
  ENGINE_CHECK(found_inf.dtype == DType::kI32 && found_inf.numel() == 1, "clip_coefficient: found_inf ",
               found_inf.str(), " must be one i32");
}

namespace cpu {

void global_norm_sumsq(TensorView sumsq, TensorView x) {
  global_norm_check(sumsq, x);
  double acc = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    const double v = engine::load_f64(x.data, x.dtype, i);
    acc += v * v;
  }
  engine::store_f64(sumsq.data, sumsq.dtype, 0, engine::load_f64(sumsq.data, sumsq.dtype, 0) + acc);
}

void clip_coefficient(TensorView grad_scale, TensorView norm, TensorView found_inf, TensorView sumsq,
                      const ClipParams& p) {
  clip_coefficient_check(grad_scale, norm, found_inf, sumsq);
  const float ss = *sumsq.ptr<const float>();
  const float nrm = std::sqrt(ss) * p.inv_loss_scale;
  const float c = p.max_norm * (1.0f / (nrm + 1e-6f));
  const float coef = p.max_norm > 0.0f && c < 1.0f ? c : 1.0f;
  *norm.ptr<float>() = nrm;
  *grad_scale.ptr<float>() = p.inv_loss_scale * coef;
  *found_inf.ptr<int32_t>() = std::isfinite(ss) ? 0 : 1;
}

}  // namespace cpu
}  // namespace ops
