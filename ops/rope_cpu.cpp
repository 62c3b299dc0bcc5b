// ops/rope_cpu.cpp: reference RoPE. cos/sin in f32 exactly as transformers computes them (SPEC.md §1.4), the
// rotation in f64 with a rounding to the storage dtype after each of torch's elementwise ops. A product of two
// f32 values is exact in f64, so rounding it to f32 gives what an f32 multiply gives. Backward derivation:
//   y1 = x1 c - x2 s,  y2 = x2 c + x1 s   =>   dx1 = dy1 c + dy2 s,  dx2 = dy2 c - dy1 s
#include "ops/rope.h"

#include <cmath>

namespace ops {

float rope_inv_freq(int64_t k, const RopeParams& p) {
  const float e = float(2 * k) / float(p.head_dim);
  return 1.f / std::pow(p.theta, e);  // float overload: powf, as torch's f32 pow on the host
}

void rope_check(TensorView y, TensorView x, TensorView pos, const RopeParams& p) {
  check_float(x, "rope x");
  ENGINE_CHECK(y.dtype == x.dtype, "rope: y ", y.str(), " must have x's dtype ", x.str());
  ENGINE_CHECK(p.tokens >= 0 && p.heads >= 0, "rope: tokens=", p.tokens, " heads=", p.heads, " must be >= 0");
  ENGINE_CHECK(p.head_dim > 0 && p.head_dim % 2 == 0 && p.head_dim <= kRopeMaxHeadDim, "rope: head_dim=",
               p.head_dim, " must be even and in [2, ", kRopeMaxHeadDim, "]");
  const int64_t n = p.tokens * p.heads * p.head_dim;
  ENGINE_CHECK(x.numel() == n && y.numel() == n, "rope: x ", x.str(), " / y ", y.str(), " do not hold tokens=",
               p.tokens, " x heads=", p.heads, " x head_dim=", p.head_dim);
  ENGINE_CHECK(pos.dtype == DType::kI32 && pos.numel() == p.tokens, "rope: pos ", pos.str(),
               " must be i32 with tokens=", p.tokens, " elements");
}

namespace {

// cos/sin of one (token, k) pair, computed in f32 and rounded to `t` (cos.to(x.dtype)).
void rope_cos_sin(int32_t position, int64_t k, const RopeParams& p, DType t, double* c, double* s) {
  const float f = float(position) * rope_inv_freq(k, p);
  *c = engine::round_to(t, std::cos(f));
  *s = engine::round_to(t, std::sin(f));
}

// Calls f(i1, i2, c, s) for every rotated pair (x[i1], x[i2] = x[i1 + half]) with its cos/sin.
template <typename F>
void for_each_pair(TensorView pos, const RopeParams& p, DType t, F f) {
  const int64_t half = p.head_dim / 2;
  for (int64_t n = 0; n < p.tokens; ++n) {
    const int32_t position = pos.ptr<const int32_t>()[n];
    for (int64_t k = 0; k < half; ++k) {
      double c, s;
      rope_cos_sin(position, k, p, t, &c, &s);
      for (int64_t h = 0; h < p.heads; ++h) {
        const int64_t i1 = (n * p.heads + h) * p.head_dim + k;
        f(i1, i1 + half, c, s);
      }
    }
  }
}

}  // namespace

namespace cpu {

void rope_forward(TensorView y, TensorView x, TensorView pos, const RopeParams& p) {
  rope_check(y, x, pos, p);
  const DType t = x.dtype;
  for_each_pair(pos, p, t, [&](int64_t i1, int64_t i2, double c, double s) {
    const double x1 = engine::load_f64(x.data, t, i1), x2 = engine::load_f64(x.data, t, i2);
    // Both halves are read before either is written: y may alias x.
    engine::store_f64(y.data, t, i1, engine::round_to(t, x1 * c) + engine::round_to(t, -x2 * s));
    engine::store_f64(y.data, t, i2, engine::round_to(t, x2 * c) + engine::round_to(t, x1 * s));
  });
}

void rope_backward(TensorView dx, Accum dx_mode, TensorView dy, TensorView pos, const RopeParams& p) {
  rope_check(dx, dy, pos, p);
  const DType t = dy.dtype;
  for_each_pair(pos, p, t, [&](int64_t i1, int64_t i2, double c, double s) {
    const double dy1 = engine::load_f64(dy.data, t, i1), dy2 = engine::load_f64(dy.data, t, i2);
    double dx1 = dy1 * c + dy2 * s, dx2 = dy2 * c - dy1 * s;
    if (dx_mode == Accum::kAdd) {
      dx1 += engine::load_f64(dx.data, t, i1);
      dx2 += engine::load_f64(dx.data, t, i2);
    }
    engine::store_f64(dx.data, t, i1, dx1);
    engine::store_f64(dx.data, t, i2, dx2);
  });
}

}  // namespace cpu
}  // namespace ops
