// tests/ops/random_fill_cpu_test.cpp (label cpu): the Philox normal fill on the CPU backend: the exact
// per-element formula in every dtype, piecewise fills equal one fill, the moments of N(0, std^2), stream
// independence, and every precondition.
#include <cmath>

#include "engine/philox.h"
#include "ops/random_fill.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(RandomFillCpu, EqualsTheStoreF64FormulaInEveryDtype) {
  Engine eng({engine::Backend::kCPU});
  const ops::RandomFillParams p{7, 3, 11, 0.02};
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16, DType::kF64}) {
    const int64_t n = 1037;
    TestTensor t(eng, Device::kCPU, {n}, dt);
    ops::random_normal_fill(t, p, eng);
    const auto got = t.values();
    for (int64_t i = 0; i < n; ++i) {
      const double want = engine::round_to(dt, 0.02 * double(engine::philox_normal(7, 3, 11 + uint64_t(i))));
      ASSERT_EQ(got[size_t(i)], want) << engine::dtype_name(dt) << " i=" << i;
    }
    EXPECT_GUARDS_INTACT(t);
  }
}

TEST(RandomFillCpu, PiecewiseFillEqualsOneFill) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 999;
  TestTensor whole(eng, Device::kCPU, {n}, DType::kF32), parts(eng, Device::kCPU, {n}, DType::kF32);
  ops::random_normal_fill(whole, {5, 1, 0, 1.0}, eng);
  const TensorView pv = parts.view();
  for (int64_t b : {int64_t(0), int64_t(1), int64_t(400)}) {  // odd offsets split a Box-Muller pair
    const int64_t e = b == 0 ? 1 : b == 1 ? 400 : n;
    ops::random_normal_fill(pv.slice_rows(b, e), {5, 1, uint64_t(b), 1.0}, eng);
  }
  EXPECT_EQ(parts.values(), whole.values());
}

TEST(RandomFillCpu, HasTheMomentsOfTheNormal) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 200000;
  const double sd = 0.5;
  TestTensor t(eng, Device::kCPU, {n}, DType::kF32);
  ops::random_normal_fill(t, {1, 0, 0, sd}, eng);
  double s = 0, s2 = 0, s4 = 0;
  int64_t beyond3 = 0;
  for (double v : t.values()) {
    s += v;
    s2 += v * v;
    s4 += v * v * v * v;
    beyond3 += std::fabs(v) > 3 * sd;
  }
  const double mean = s / double(n), var = s2 / double(n) - mean * mean;
  EXPECT_NEAR(mean, 0.0, 5 * sd / std::sqrt(double(n)));
  EXPECT_NEAR(std::sqrt(var), sd, 0.01 * sd);
  EXPECT_NEAR(s4 / double(n) / (var * var), 3.0, 0.1);        // kurtosis of a normal
  EXPECT_NEAR(double(beyond3) / double(n), 0.0027, 0.0008);   // two-sided 3-sigma tail
}

TEST(RandomFillCpu, SeedsAndStreamsAreIndependentAndRepeatable) {
  Engine eng({engine::Backend::kCPU});
  auto fill = [&](uint64_t seed, uint64_t stream) {
    TestTensor t(eng, Device::kCPU, {64}, DType::kF32);
    ops::random_normal_fill(t, {seed, stream, 0, 1.0}, eng);
    return t.values();
  };
  EXPECT_EQ(fill(1, 2), fill(1, 2));
  EXPECT_NE(fill(1, 2), fill(1, 3));
  EXPECT_NE(fill(1, 2), fill(2, 2));
}

TEST(RandomFillCpu, ZeroStdGivesZeros) {
  Engine eng({engine::Backend::kCPU});
  TestTensor t(eng, Device::kCPU, {33}, DType::kBF16);
  ops::random_normal_fill(t, {1, 0, 0, 0.0}, eng);
  for (double v : t.values()) EXPECT_EQ(v, 0.0);
}

TEST(RandomFillCpu, RejectsBadInput) {
  Engine eng({engine::Backend::kCPU});
  TestTensor i32(eng, Device::kCPU, {4}, DType::kI32), f(eng, Device::kCPU, {4}, DType::kF32);
  EXPECT_THROW(ops::random_normal_fill(i32, {}, eng), engine::Error);
  EXPECT_THROW(ops::random_normal_fill(f, {0, 0, 0, -1.0}, eng), engine::Error);
  EXPECT_THROW(ops::random_normal_fill(f, {0, 0, 0, std::nan("")}, eng), engine::Error);
  EXPECT_THROW(ops::random_normal_fill(f, {0, 0, 0, INFINITY}, eng), engine::Error);
  EXPECT_THROW(ops::random_normal_fill(f, {0, 0, ~uint64_t(0) - 2, 1.0}, eng), engine::Error);  // index wraps
  EXPECT_THROW(ops::cpu::random_normal_fill(TensorView{}, {}), engine::Error);
  EXPECT_GUARDS_INTACT(f);
}

}  // namespace
