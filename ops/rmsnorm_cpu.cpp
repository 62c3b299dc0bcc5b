// ops/rmsnorm_cpu.cpp: reference RMSNorm, plain loops in f64. Derivation of the backward:
//   y_j = x_j r (1 + w_j),  r = (mean(x^2) + eps)^-1/2,  dr/dx_j = -r^3 x_j / C
//   dx_j = g_j r - x_j r^3/C * sum_i g_i x_i,  with g = dy (1 + w)
#include "ops/rmsnorm.h"

#include <cmath>

namespace ops {

void rmsnorm_check(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p) {
  check_float(x, "rmsnorm x");
  ENGINE_CHECK(y.dtype == x.dtype, "rmsnorm: y ", y.str(), " must have x's dtype ", x.str());
  ENGINE_CHECK(x.numel() == p.rows * p.cols && y.numel() == p.rows * p.cols, "rmsnorm: x ", x.str(), " / y ",
               y.str(), " do not hold rows=", p.rows, " x cols=", p.cols);
  ENGINE_CHECK(w.numel() == p.cols && (w.dtype == DType::kF32 || w.dtype == DType::kF64), "rmsnorm: w ", w.str(),
               " must be f32 with cols=", p.cols, " elements");
  ENGINE_CHECK(rstd.numel() == p.rows && (rstd.dtype == DType::kF32 || rstd.dtype == DType::kF64), "rmsnorm: rstd ",
               rstd.str(), " must be f32 with rows=", p.rows, " elements");
}

namespace cpu {

void rmsnorm_forward(TensorView y, TensorView rstd, TensorView x, TensorView w, const RmsNormParams& p) {
  rmsnorm_check(y, rstd, x, w, p);
  for (int64_t r = 0; r < p.rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const double v = engine::load_f64(x.data, x.dtype, r * p.cols + c);
      ss += v * v;
    }
    const double rs = 1.0 / std::sqrt(ss / double(p.cols) + double(p.eps));
    engine::store_f64(rstd.data, rstd.dtype, r, rs);
    for (int64_t c = 0; c < p.cols; ++c) {
      const double v = engine::load_f64(x.data, x.dtype, r * p.cols + c);
      const double wc = engine::load_f64(w.data, w.dtype, c);
      engine::store_f64(y.data, y.dtype, r * p.cols + c, (v * rs) * (1.0 + wc));
    }
  }
}

void rmsnorm_backward(TensorView dx, Accum dx_mode, TensorView dw, TensorView dy, TensorView x, TensorView w,
                      TensorView rstd, const RmsNormParams& p) {
  rmsnorm_check(dy, rstd, x, w, p);
  ENGINE_CHECK(dx.numel() == x.numel() && dx.dtype == x.dtype, "rmsnorm: dx ", dx.str(), " must match x ", x.str());
  ENGINE_CHECK(!dw.defined() || dw.numel() == p.cols, "rmsnorm: dw ", dw.str(), " must have cols=", p.cols);
  for (int64_t r = 0; r < p.rows; ++r) {
    const double rs = engine::load_f64(rstd.data, rstd.dtype, r);
    double gx = 0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const double g = engine::load_f64(dy.data, dy.dtype, r * p.cols + c) * (1.0 + engine::load_f64(w.data, w.dtype, c));
      gx += g * engine::load_f64(x.data, x.dtype, r * p.cols + c);
    }
    const double k = rs * rs * rs * gx / double(p.cols);
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * p.cols + c;
      const double d = engine::load_f64(dy.data, dy.dtype, i);
      const double xv = engine::load_f64(x.data, x.dtype, i);
      double v = d * (1.0 + engine::load_f64(w.data, w.dtype, c)) * rs - xv * k;
      if (dx_mode == Accum::kAdd) v += engine::load_f64(dx.data, dx.dtype, i);
      engine::store_f64(dx.data, dx.dtype, i, v);
      if (dw.defined())
        engine::store_f64(dw.data, dw.dtype, c, engine::load_f64(dw.data, dw.dtype, c) + d * xv * rs);
    }
  }
}

}  // namespace cpu
}  // namespace ops
