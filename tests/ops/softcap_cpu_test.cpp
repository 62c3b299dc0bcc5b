// tests/ops/softcap_cpu_test.cpp (label cpu): rounding points and range of the soft-capping op.
#include <cmath>

#include "ops/softcap.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(SoftcapCpu, MatchesHfRoundingInF16) {
  Engine eng({engine::Backend::kCPU});
  const auto xv = random_normal(257, 1, 40.0);
  TestTensor x(eng, Device::kCPU, {257}, DType::kF16, xv), y(eng, Device::kCPU, {257}, DType::kF16);
  ops::cpu::softcap(y, x, 30.f);
  const auto xr = x.values(), got = y.values();
  for (size_t i = 0; i < got.size(); ++i) {
    const double a = engine::round_to(DType::kF16, float(xr[i]) * (1.0f / 30.f));
    const double t = engine::round_to(DType::kF16, std::tanh(float(a)));
    ASSERT_EQ(got[i], engine::round_to(DType::kF16, float(t) * 30.f)) << i;
    ASSERT_LE(std::fabs(got[i]), 30.0);
  }
  EXPECT_GUARDS_INTACT(y);
}

TEST(SoftcapCpu, InPlaceAndErrors) {
  Engine eng({engine::Backend::kCPU});
  TestTensor x(eng, Device::kCPU, {9}, DType::kF64, random_normal(9, 2, 100.0));
  const auto xv = x.values();
  ops::cpu::softcap(x, x, 50.f);
  const auto got = x.values();
  for (size_t i = 0; i < got.size(); ++i) EXPECT_NEAR(got[i], 50.0 * std::tanh(xv[i] / 50.0), 1e-12);
  TestTensor y(eng, Device::kCPU, {8}, DType::kF64);
  EXPECT_THROW(ops::cpu::softcap(y, x, 50.f), engine::Error);
  EXPECT_THROW(ops::cpu::softcap(x, x, 0.f), engine::Error);
}

}  // namespace
