// tests/ops/residual_rmsnorm_test.h: runs ops/residual_rmsnorm.h fused, or as the separate ops in the order
// the tape runs them (rmsnorm, add, rmsnorm; then the add's copy of ds, the entry norm's backward added to it,
// the add's two gradients, the branch norm's backward), on one device, from the same seeded inputs.
#pragma once
#include <string>
#include <vector>

#include "ops/elementwise.h"
#include "ops/residual_rmsnorm.h"
#include "tests/test_util.h"

namespace test {

struct ResidualNormCase {
  int64_t rows, cols;
  DType dtype;
  bool next;            // with the entry norm (w2)
  ops::Accum dh_mode;   // kAdd: dh starts from dh0
  ops::Accum do_mode;   // kAdd: do starts from do0
  bool want_dh = true;  // false: dh undefined (the residual input needs no gradient)
};

// The test name of a case: r<rows>_c<cols>_<dtype>_next|alone[_dhadd][_doadd][_nodh].
inline std::string residual_norm_case_name(const ::testing::TestParamInfo<ResidualNormCase>& i) {
  const ResidualNormCase& c = i.param;
  return "r" + std::to_string(c.rows) + "_c" + std::to_string(c.cols) + "_" + engine::dtype_name(c.dtype) +
         (c.next ? "_next" : "_alone") + (c.dh_mode == ops::Accum::kAdd ? "_dhadd" : "") +
         (c.do_mode == ops::Accum::kAdd ? "_doadd" : "") + (c.want_dh ? "" : "_nodh");
}

struct ResidualNormResult {
  std::vector<double> s, y, rstd1, rstd2, dh, d_o;
};

inline ResidualNormResult run_residual_rmsnorm(Engine& eng, Device dev, const ResidualNormCase& c, bool fused) {
  const int64_t n = c.rows * c.cols;
  const DType dt = c.dtype;
  const DType wt = dt == DType::kF64 ? DType::kF64 : DType::kF32;
  const ops::RmsNormParams p{c.rows, c.cols, 1e-6f};
  TestTensor h(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 41)), o(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 42, 3.0));
  TestTensor w1(eng, dev, {c.cols}, wt, random_normal(c.cols, 43, 0.5)), w2(eng, dev, {c.cols}, wt, random_normal(c.cols, 44, 0.5));
  TestTensor ds(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 45)), dy(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 46));
  TestTensor dh(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 47)), d_o(eng, dev, {c.rows, c.cols}, dt, random_normal(n, 48));
  TestTensor s(eng, dev, {c.rows, c.cols}, dt), y(eng, dev, {c.rows, c.cols}, dt);
  TestTensor rstd1(eng, dev, {c.rows}, wt), rstd2(eng, dev, {c.rows}, wt);
  const TensorView yv = c.next ? y.view() : TensorView{}, w2v = c.next ? w2.view() : TensorView{};
  const TensorView r2v = c.next ? rstd2.view() : TensorView{}, dyv = c.next ? dy.view() : TensorView{};
  const TensorView dhv = c.want_dh ? dh.view() : TensorView{};
  if (fused) {
    ops::residual_rmsnorm_forward(s, yv, rstd1, r2v, h, o, w1, w2v, p, eng);
    ops::residual_rmsnorm_backward(dhv, c.dh_mode, d_o, c.do_mode, ds, dyv, c.next ? s.view() : TensorView{}, o, w1,
                                   w2v, rstd1, r2v, p, eng);
  } else {
    TestTensor nrm(eng, dev, {c.rows, c.cols}, dt), g(eng, dev, {c.rows, c.cols}, dt), dn(eng, dev, {c.rows, c.cols}, dt);
    ops::rmsnorm_forward(nrm, rstd1, o, w1, p, eng);
    ops::add(s, h, nrm, eng);
    if (c.next) ops::rmsnorm_forward(y, rstd2, s, w2, p, eng);
    ops::accumulate(g, ds, 1.f, ops::Accum::kSet, eng);
    if (c.next) ops::rmsnorm_backward(g, ops::Accum::kAdd, TensorView{}, dy, s, w2, rstd2, p, eng);
    if (c.want_dh) ops::accumulate(dh, g, 1.f, c.dh_mode, eng);
    ops::accumulate(dn, g, 1.f, ops::Accum::kSet, eng);
    ops::rmsnorm_backward(d_o, c.do_mode, TensorView{}, dn, o, w1, rstd1, p, eng);
  }
  ResidualNormResult r;
  r.s = s.values();
  r.rstd1 = rstd1.values();
  if (c.next) {
    r.y = y.values();
    r.rstd2 = rstd2.values();
  }
  r.dh = dh.values();  // its initial values when undefined: the op must leave it alone
  r.d_o = d_o.values();
  EXPECT_GUARDS_INTACT(s); EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dh); EXPECT_GUARDS_INTACT(d_o);
  EXPECT_GUARDS_INTACT(rstd1); EXPECT_GUARDS_INTACT(rstd2);
  return r;
}

}  // namespace test
