// tests/ops/global_norm_cpu_test.cpp (label cpu): sum of squares (+=), clip coefficient, inf/NaN flag.
#include <cmath>
#include <limits>

#include "ops/global_norm.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(GlobalNormCpu, SumOfSquaresAccumulates) {
  Engine eng({engine::Backend::kCPU});
  const std::vector<double> xv = random_normal(101, 1);
  TestTensor x(eng, Device::kCPU, {101}, DType::kF32, xv);
  TestTensor ss(eng, Device::kCPU, {1}, DType::kF32, {0.0});
  double want = 0;
  for (double v : x.values()) want += v * v;
  ops::cpu::global_norm_sumsq(ss, x);
  EXPECT_CLOSE(ss.values(), std::vector<double>{want}, (Tol{0, 1e-7}));  // f64 sum rounded once to f32
  ops::cpu::global_norm_sumsq(ss, x);  // a second view adds to the same scalar
  EXPECT_CLOSE(ss.values(), std::vector<double>{2 * want}, (Tol{0, 1e-7}));
  EXPECT_GUARDS_INTACT(ss);
}

struct Clip {
  float grad_scale, norm;
  int found_inf;
};

Clip run_clip(float sumsq, ops::ClipParams p) {
  Engine eng({engine::Backend::kCPU});
  TestTensor ss(eng, Device::kCPU, {1}, DType::kF32, {double(sumsq)});
  TestTensor gs(eng, Device::kCPU, {1}, DType::kF32), nrm(eng, Device::kCPU, {1}, DType::kF32),
      inf(eng, Device::kCPU, {1}, DType::kI32);
  ops::cpu::clip_coefficient(gs, nrm, inf, ss, p);
  EXPECT_GUARDS_INTACT(gs); EXPECT_GUARDS_INTACT(nrm); EXPECT_GUARDS_INTACT(inf);
  return {float(gs.values()[0]), float(nrm.values()[0]), int(inf.values()[0])};
}

TEST(GlobalNormCpu, ClipCoefficientWhenClipping) {
  // Loss scale S = 2^16: grads scaled by S have sumsq = 4 S^2, so the unscaled norm is exactly 2.
  const float S = 65536.f, inv = 1.f / S;
  const Clip c = run_clip(4.f * S * S, {0.3f, inv});
  EXPECT_EQ(c.norm, 2.0f);
  EXPECT_EQ(c.grad_scale, inv * (0.3f * (1.0f / (2.0f + 1e-6f))));  // torch: max_norm * reciprocal(norm + 1e-6)
  EXPECT_NEAR(double(c.grad_scale) * S, 0.15, 2e-7);
  EXPECT_EQ(c.found_inf, 0);
}

TEST(GlobalNormCpu, ClipCoefficientWhenNotClipping) {
  const float inv = 1.f / 1024.f;
  const Clip c = run_clip(0.25f * 1024.f * 1024.f, {1.0f, inv});  // norm 0.5 < max_norm 1
  EXPECT_EQ(c.norm, 0.5f);
  EXPECT_EQ(c.grad_scale, inv);  // coef is exactly 1
  const Clip off = run_clip(1e6f, {0.0f, 1.0f});  // max_norm <= 0: no clipping, norm still reported
  EXPECT_EQ(off.grad_scale, 1.0f);
  EXPECT_EQ(off.norm, 1000.0f);
}

TEST(GlobalNormCpu, FlagsInfAndNan) {
  EXPECT_EQ(run_clip(std::numeric_limits<float>::infinity(), {1.0f, 1.0f}).found_inf, 1);
  EXPECT_EQ(run_clip(std::numeric_limits<float>::quiet_NaN(), {1.0f, 1.0f}).found_inf, 1);
  EXPECT_EQ(run_clip(std::numeric_limits<float>::max(), {1.0f, 1.0f}).found_inf, 0);
  // An inf gradient makes sumsq inf.
  Engine eng({engine::Backend::kCPU});
  std::vector<double> xv = random_normal(33, 2);
  xv[17] = -std::numeric_limits<double>::infinity();
  TestTensor x(eng, Device::kCPU, {33}, DType::kF32, xv);
  TestTensor ss(eng, Device::kCPU, {1}, DType::kF32, {0.0});
  ops::cpu::global_norm_sumsq(ss, x);
  EXPECT_TRUE(std::isinf(ss.values()[0]));
}

TEST(GlobalNormCpu, WorkspaceIsOnePartialPerBlock) {
  EXPECT_EQ(ops::global_norm_workspace_bytes(1), sizeof(float));
  EXPECT_EQ(ops::global_norm_workspace_bytes(1024), sizeof(float));
  EXPECT_EQ(ops::global_norm_workspace_bytes(1025), 2 * sizeof(float));
  EXPECT_EQ(ops::global_norm_workspace_bytes(5191680), size_t(ops::detail::kGlobalNormMaxGrid) * sizeof(float));
}

TEST(GlobalNormCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  TestTensor x(eng, Device::kCPU, {8}, DType::kF32, random_normal(8, 3));
  TestTensor x16(eng, Device::kCPU, {8}, DType::kBF16, random_normal(8, 3));
  TestTensor ss2(eng, Device::kCPU, {2}, DType::kF32, {0.0, 0.0}), ss(eng, Device::kCPU, {1}, DType::kF32, {0.0});
  TestTensor f(eng, Device::kCPU, {1}, DType::kF32, {0.0});
  EXPECT_THROW(ops::cpu::global_norm_sumsq(ss2, x), engine::Error);
  EXPECT_THROW(ops::cpu::global_norm_sumsq(ss, x16), engine::Error);
  EXPECT_THROW(ops::cpu::clip_coefficient(f, f, f, ss, {1.0f, 1.0f}), engine::Error);  // found_inf must be i32
}

}  // namespace
