// tests/ops/rmsnorm_cpu_test.cpp (label cpu): the CPU reference backward against f64 finite differences.
#include "ops/rmsnorm.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(RmsNormCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const ops::RmsNormParams p{3, 7, 1e-6f};  // tiny, odd sizes
  TestTensor x(eng, Device::kCPU, {3, 7}, DType::kF64, random_normal(21, 1));
  TestTensor w(eng, Device::kCPU, {7}, DType::kF64, random_normal(7, 2, 0.5));
  const std::vector<double> g = random_normal(21, 3);  // loss = sum(y * g)
  TestTensor y(eng, Device::kCPU, {3, 7}, DType::kF64), rstd(eng, Device::kCPU, {3}, DType::kF64);
  auto loss = [&] {
    ops::cpu::rmsnorm_forward(y, rstd, x, w, p);
    return dot(y.values(), g);
  };
  loss();
  TestTensor dy(eng, Device::kCPU, {3, 7}, DType::kF64, g), dx(eng, Device::kCPU, {3, 7}, DType::kF64);
  TestTensor dw(eng, Device::kCPU, {7}, DType::kF64, std::vector<double>(7, 0.0));
  ops::cpu::rmsnorm_backward(dx, ops::Accum::kSet, dw, dy, x, w, rstd, p);
  EXPECT_CLOSE(dx.values(), numeric_grad(loss, x), (Tol{1e-7, 1e-6}));
  EXPECT_CLOSE(dw.values(), numeric_grad(loss, w), (Tol{1e-7, 1e-6}));
}

TEST(RmsNormCpu, AccumulateTwiceDoubles) {
  Engine eng({engine::Backend::kCPU});
  const ops::RmsNormParams p{4, 9, 1e-6f};
  TestTensor x(eng, Device::kCPU, {4, 9}, DType::kF64, random_normal(36, 4));
  TestTensor w(eng, Device::kCPU, {9}, DType::kF64, random_normal(9, 5));
  TestTensor dy(eng, Device::kCPU, {4, 9}, DType::kF64, random_normal(36, 6));
  TestTensor y(eng, Device::kCPU, {4, 9}, DType::kF64), rstd(eng, Device::kCPU, {4}, DType::kF64);
  TestTensor dx(eng, Device::kCPU, {4, 9}, DType::kF64);
  TestTensor dw(eng, Device::kCPU, {9}, DType::kF64, std::vector<double>(9, 0.0));
  ops::cpu::rmsnorm_forward(y, rstd, x, w, p);
  ops::cpu::rmsnorm_backward(dx, ops::Accum::kSet, dw, dy, x, w, rstd, p);
  const auto dx1 = dx.values(), dw1 = dw.values();
  ops::cpu::rmsnorm_backward(dx, ops::Accum::kAdd, dw, dy, x, w, rstd, p);
  std::vector<double> dx2 = dx1, dw2 = dw1;
  for (auto& v : dx2) v *= 2;
  for (auto& v : dw2) v *= 2;
  EXPECT_CLOSE(dx.values(), dx2, tol_for(DType::kF64));
  EXPECT_CLOSE(dw.values(), dw2, tol_for(DType::kF64));
}

TEST(RmsNormCpu, ForwardMatchesFormulaInLowPrecision) {
  // bf16 input: computed in f64, rounded once to bf16 (SPEC.md §1.2: one cast at the end).
  Engine eng({engine::Backend::kCPU});
  const ops::RmsNormParams p{2, 5, 1e-6f};
  TestTensor x(eng, Device::kCPU, {2, 5}, DType::kBF16, random_normal(10, 7));
  TestTensor w(eng, Device::kCPU, {5}, DType::kF32, random_normal(5, 8));
  TestTensor y(eng, Device::kCPU, {2, 5}, DType::kBF16), rstd(eng, Device::kCPU, {2}, DType::kF32);
  ops::cpu::rmsnorm_forward(y, rstd, x, w, p);
  const auto xv = x.values(), wv = w.values();
  std::vector<double> want(10);
  for (int r = 0; r < 2; ++r) {
    double ss = 0;
    for (int c = 0; c < 5; ++c) ss += xv[r * 5 + c] * xv[r * 5 + c];
    const double rs = 1 / std::sqrt(ss / 5 + 1e-6);
    for (int c = 0; c < 5; ++c) want[r * 5 + c] = engine::round_to(DType::kBF16, xv[r * 5 + c] * rs * (1 + wv[c]));
  }
  EXPECT_CLOSE(y.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(y);
}

TEST(RmsNormCpu, RejectsMismatchedShapes) {
  Engine eng({engine::Backend::kCPU});
  TestTensor x(eng, Device::kCPU, {2, 8}, DType::kF32, random_normal(16, 9));
  TestTensor w(eng, Device::kCPU, {7}, DType::kF32, random_normal(7, 10));
  TestTensor y(eng, Device::kCPU, {2, 8}, DType::kF32), rstd(eng, Device::kCPU, {2}, DType::kF32);
  EXPECT_THROW(ops::cpu::rmsnorm_forward(y, rstd, x, w, {2, 8, 1e-6f}), engine::Error);
}

}  // namespace
