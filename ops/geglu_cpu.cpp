// ops/geglu_cpu.cpp: reference GeGLU in f64, rounding to the storage dtype where torch rounds (SPEC.md §1.5).
// Derivative of gelu_tanh, with u = b*(x + k*x^3), t = tanh(u):
//   gelu = 0.5 x (1 + t)   =>   gelu' = 0.5 (1 + t) + 0.5 x (1 - t^2) b (1 + 3 k x^2)
#include "ops/geglu.h"

#include <cmath>

namespace ops {

void geglu_check(TensorView out, TensorView gate, TensorView up, const GegluParams& p) {
  check_float(gate, "geglu gate");
  ENGINE_CHECK(up.dtype == gate.dtype && out.dtype == gate.dtype, "geglu: out ", out.str(), " / gate ", gate.str(),
               " / up ", up.str(), " must share one dtype");
  ENGINE_CHECK(p.rows >= 0 && p.cols >= 0, "geglu: rows=", p.rows, " cols=", p.cols, " must be >= 0");
  const int64_t stride = p.in_stride < 0 ? p.cols : p.in_stride;
  ENGINE_CHECK(stride >= p.cols, "geglu: in_stride=", p.in_stride, " is less than cols=", p.cols);
  ENGINE_CHECK(out.numel() == p.rows * p.cols, "geglu: out ", out.str(), " does not hold rows=", p.rows,
               " x cols=", p.cols);
  const int64_t extent = p.rows == 0 ? 0 : (p.rows - 1) * stride + p.cols;  // elements a strided (N, F) touches
  ENGINE_CHECK(gate.numel() >= extent && up.numel() >= extent, "geglu: gate ", gate.str(), " / up ", up.str(),
               " hold fewer than the ", extent, " elements of rows=", p.rows, " x cols=", p.cols,
               " at in_stride=", stride);
}

namespace {

constexpr double kBeta = M_SQRT2 * M_2_SQRTPI * 0.5;  // sqrt(2/pi)
constexpr double kKappa = 0.044715;

double gelu_tanh(double x) { return 0.5 * x * (1.0 + std::tanh(kBeta * (x + kKappa * x * x * x))); }

double gelu_tanh_grad(double x) {
  const double t = std::tanh(kBeta * (x + kKappa * x * x * x));
  return 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * kBeta * (1.0 + 3.0 * kKappa * x * x);
}

}  // namespace

namespace cpu {

void geglu_forward(TensorView out, TensorView gate, TensorView up, const GegluParams& p) {
  geglu_check(out, gate, up, p);
  const DType t = gate.dtype;
  const int64_t stride = p.in_stride < 0 ? p.cols : p.in_stride;
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * stride + c;
      const double a = engine::round_to(t, gelu_tanh(engine::load_f64(gate.data, t, i)));
      engine::store_f64(out.data, t, r * p.cols + c, a * engine::load_f64(up.data, t, i));
    }
}

void geglu_backward(TensorView dgate, Accum dgate_mode, TensorView dup, Accum dup_mode, TensorView dout,
                    TensorView gate, TensorView up, const GegluParams& p) {
  geglu_check(dout, gate, up, p);
  geglu_check(dout, dgate, dup, p);  // the gradients share the inputs' layout
  const DType t = gate.dtype;
  const int64_t stride = p.in_stride < 0 ? p.cols : p.in_stride;
  for (int64_t r = 0; r < p.rows; ++r)
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * stride + c;
      const double g = engine::load_f64(gate.data, t, i), u = engine::load_f64(up.data, t, i);
      const double d = engine::load_f64(dout.data, t, r * p.cols + c);
      double dg = d * u * gelu_tanh_grad(g), du = d * engine::round_to(t, gelu_tanh(g));
      if (dgate_mode == Accum::kAdd) dg += engine::load_f64(dgate.data, t, i);
      if (dup_mode == Accum::kAdd) du += engine::load_f64(dup.data, t, i);
      engine::store_f64(dgate.data, t, i, dg);
      engine::store_f64(dup.data, t, i, du);
    }
}

}  // namespace cpu
}  // namespace ops
