// ops/residual_rmsnorm_cpu.cpp: reference residual add + RMSNorm(s), plain loops in f64, rounded where the
// separate ops round (ops/rmsnorm_cpu.cpp has the norm's backward derivation).
#include "ops/residual_rmsnorm.h"

#include <cmath>
#include <vector>

namespace ops {

namespace {

void check_norm_pair(TensorView y, TensorView rstd2, TensorView w2, const char* what) {
  ENGINE_CHECK(y.defined() == w2.defined() && rstd2.defined() == w2.defined(), what,
               ": the entry norm's output, weight and rstd are all given or all left out (y ", y.str(), ", w2 ",
               w2.str(), ", rstd2 ", rstd2.str(), ")");
}

void check_like(TensorView t, TensorView ref, const char* what, const char* name) {
  ENGINE_CHECK(t.dtype == ref.dtype && t.numel() == ref.numel(), what, ": ", name, " ", t.str(), " must match ",
               ref.str());
}

// sum_c dy[c] (1 + w[c]) x[c] for one row, in f64.
double row_gx(TensorView dy, TensorView x, TensorView w, int64_t row, int64_t cols) {
  double gx = 0;
  for (int64_t c = 0; c < cols; ++c)
    gx += engine::load_f64(dy.data, dy.dtype, row * cols + c) * (1.0 + engine::load_f64(w.data, w.dtype, c)) *
          engine::load_f64(x.data, x.dtype, row * cols + c);
  return gx;
}

// One row's RMSNorm backward value at column c: dy (1 + w) r - x r^3 gx / C.
double row_dx(TensorView dy, TensorView x, TensorView w, double rs, double gx, int64_t row, int64_t c, int64_t cols) {
  const int64_t i = row * cols + c;
  return engine::load_f64(dy.data, dy.dtype, i) * (1.0 + engine::load_f64(w.data, w.dtype, c)) * rs -
         engine::load_f64(x.data, x.dtype, i) * (rs * rs * rs * gx / double(cols));
}

}  // namespace

void residual_rmsnorm_forward_check(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                                    TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p) {
  const char* what = "residual_rmsnorm_forward";
  rmsnorm_check(s, rstd1, o, w1, p);
  check_like(h, o, what, "h");
  check_norm_pair(y, rstd2, w2, what);
  if (w2.defined()) rmsnorm_check(y, rstd2, s, w2, p);
}

void residual_rmsnorm_backward_check(TensorView dh, TensorView d_o, TensorView ds, TensorView dy, TensorView s,
                                     TensorView o, TensorView w1, TensorView w2, TensorView rstd1,
                                     TensorView rstd2, const RmsNormParams& p) {
  const char* what = "residual_rmsnorm_backward";
  rmsnorm_check(d_o, rstd1, o, w1, p);
  check_like(ds, o, what, "ds");
  if (dh.defined()) check_like(dh, o, what, "dh");
  check_norm_pair(dy, rstd2, w2, what);
  ENGINE_CHECK(s.defined() == w2.defined(), what, ": s is read by the entry norm's backward only (s ", s.str(),
               ", w2 ", w2.str(), ")");
  if (w2.defined()) {
    check_like(s, o, what, "s");
    rmsnorm_check(dy, rstd2, s, w2, p);
  }
  ENGINE_CHECK(d_o.data != ds.data && d_o.data != o.data && (!dh.defined() || dh.data != ds.data), what,
               ": do must not alias ds or o, nor dh ds");
}

namespace cpu {

void residual_rmsnorm_forward(TensorView s, TensorView y, TensorView rstd1, TensorView rstd2, TensorView h,
                              TensorView o, TensorView w1, TensorView w2, const RmsNormParams& p) {
  residual_rmsnorm_forward_check(s, y, rstd1, rstd2, h, o, w1, w2, p);
  const DType dt = o.dtype;
  std::vector<double> row(size_t(p.cols));
  for (int64_t r = 0; r < p.rows; ++r) {
    double ss = 0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const double v = engine::load_f64(o.data, dt, r * p.cols + c);
      ss += v * v;
    }
    const double rs1 = 1.0 / std::sqrt(ss / double(p.cols) + double(p.eps));
    engine::store_f64(rstd1.data, rstd1.dtype, r, rs1);
    double ss2 = 0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * p.cols + c;
      const double n = engine::round_to(dt, (engine::load_f64(o.data, dt, i) * rs1) *
                                                (1.0 + engine::load_f64(w1.data, w1.dtype, c)));
      row[size_t(c)] = engine::round_to(dt, engine::load_f64(h.data, dt, i) + n);
      engine::store_f64(s.data, dt, i, row[size_t(c)]);
      ss2 += row[size_t(c)] * row[size_t(c)];
    }
    if (!w2.defined()) continue;
    const double rs2 = 1.0 / std::sqrt(ss2 / double(p.cols) + double(p.eps));
    engine::store_f64(rstd2.data, rstd2.dtype, r, rs2);
    for (int64_t c = 0; c < p.cols; ++c)
      engine::store_f64(y.data, dt, r * p.cols + c, (row[size_t(c)] * rs2) * (1.0 + engine::load_f64(w2.data, w2.dtype, c)));
  }
}

void residual_rmsnorm_backward(TensorView dh, Accum dh_mode, TensorView d_o, Accum do_mode, TensorView ds,
                               TensorView dy, TensorView s, TensorView o, TensorView w1, TensorView w2,
                               TensorView rstd1, TensorView rstd2, const RmsNormParams& p) {
  residual_rmsnorm_backward_check(dh, d_o, ds, dy, s, o, w1, w2, rstd1, rstd2, p);
  const DType dt = o.dtype;
  std::vector<double> g(size_t(p.cols));
  for (int64_t r = 0; r < p.rows; ++r) {
    // g = round(ds + the entry norm's backward): the tape's order (ds set first, the norm's dx added to it).
    const double rs2 = w2.defined() ? engine::load_f64(rstd2.data, rstd2.dtype, r) : 0.0;
    const double gx2 = w2.defined() ? row_gx(dy, s, w2, r, p.cols) : 0.0;
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * p.cols + c;
      double v = engine::load_f64(ds.data, dt, i);
      if (w2.defined()) v = engine::round_to(dt, row_dx(dy, s, w2, rs2, gx2, r, c, p.cols) + v);
      g[size_t(c)] = v;
    }
    if (dh.defined())
      for (int64_t c = 0; c < p.cols; ++c) {
        const int64_t i = r * p.cols + c;
        const double prev = dh_mode == Accum::kAdd ? engine::load_f64(dh.data, dt, i) : 0.0;
        engine::store_f64(dh.data, dt, i, prev + g[size_t(c)]);
      }
    // do = the branch norm's backward of g.
    const double rs1 = engine::load_f64(rstd1.data, rstd1.dtype, r);
    double gx1 = 0;
    for (int64_t c = 0; c < p.cols; ++c)
      gx1 += g[size_t(c)] * (1.0 + engine::load_f64(w1.data, w1.dtype, c)) * engine::load_f64(o.data, dt, r * p.cols + c);
    for (int64_t c = 0; c < p.cols; ++c) {
      const int64_t i = r * p.cols + c;
      double v = g[size_t(c)] * (1.0 + engine::load_f64(w1.data, w1.dtype, c)) * rs1 -
                 engine::load_f64(o.data, dt, i) * (rs1 * rs1 * rs1 * gx1 / double(p.cols));
      if (do_mode == Accum::kAdd) v += engine::load_f64(d_o.data, dt, i);
      engine::store_f64(d_o.data, dt, i, v);
    }
  }
}

}  // namespace cpu
}  // namespace ops
