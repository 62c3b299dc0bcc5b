// tests/ops/dropout_cpu_test.cpp (label cpu): the CPU dropout against f64 finite differences (the op is linear
// given the mask), accumulate-twice, p = 0, keep rate, offsets and streams, preconditions.
#include <cmath>

#include "engine/philox.h"
#include "ops/dropout.h"
#include "tests/test_util.h"

namespace {

using namespace test;

ops::DropoutParams params(int64_t n, float p, uint64_t stream = 3, uint64_t offset = 0) {
  ops::DropoutParams d;
  d.n = n;
  d.p = p;
  d.seed = 1234;
  d.stream = stream;
  d.offset = offset;
  return d;
}

TEST(DropoutCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 29;
  const auto p = params(n, 0.3f, 5, 7);
  TestTensor x(eng, Device::kCPU, {n}, DType::kF64, random_normal(n, 1));
  TestTensor y(eng, Device::kCPU, {n}, DType::kF64), dx(eng, Device::kCPU, {n}, DType::kF64);
  const std::vector<double> g = random_normal(n, 2);
  auto loss = [&] {
    ops::cpu::dropout_forward(y, x, p);
    return dot(y.values(), g);
  };
  TestTensor dy(eng, Device::kCPU, {n}, DType::kF64, g);
  ops::cpu::dropout_backward(dx, ops::Accum::kSet, dy, p);
  EXPECT_CLOSE(dx.values(), numeric_grad(loss, x), (Tol{1e-8, 1e-7}));
}

TEST(DropoutCpu, ForwardIsMaskTimesScale) {
  // keep_i = philox_u16(seed, stream, offset + i) / 65536 >= p; kept values times float(1/(1-p)), rounded once.
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 300;
  const auto p = params(n, 0.25f, 9, 11);
  TestTensor x(eng, Device::kCPU, {n}, DType::kBF16, random_normal(n, 3));
  TestTensor y(eng, Device::kCPU, {n}, DType::kBF16);
  ops::cpu::dropout_forward(y, x, p);
  const auto xv = x.values();
  const float scale = 1.0f / (1.0f - 0.25f);
  std::vector<double> want(n);
  int kept = 0;
  for (int64_t i = 0; i < n; ++i) {
    const bool keep = float(engine::philox_u16(1234, 9, 11 + uint64_t(i))) / 65536.0f >= 0.25f;
    kept += keep;
    want[i] = keep ? engine::round_to(DType::kBF16, double(float(xv[i]) * scale)) : 0.0;
  }
  EXPECT_GT(kept, 0);
  EXPECT_LT(kept, n);
  EXPECT_CLOSE(y.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(y);
}

TEST(DropoutCpu, AccumulateTwiceDoubles) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 45;
  const auto p = params(n, 0.1f);
  TestTensor dy(eng, Device::kCPU, {n}, DType::kF64, random_normal(n, 4)), dx(eng, Device::kCPU, {n}, DType::kF64);
  ops::cpu::dropout_backward(dx, ops::Accum::kSet, dy, p);
  std::vector<double> twice = dx.values();
  for (auto& v : twice) v *= 2;
  ops::cpu::dropout_backward(dx, ops::Accum::kAdd, dy, p);
  EXPECT_CLOSE(dx.values(), twice, tol_for(DType::kF64));
}

TEST(DropoutCpu, ZeroProbabilityIsIdentity) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 37;
  TestTensor x(eng, Device::kCPU, {n}, DType::kF32, random_normal(n, 5));
  TestTensor y(eng, Device::kCPU, {n}, DType::kF32), y16(eng, Device::kCPU, {n}, DType::kBF16);
  ops::cpu::dropout_forward(y, x, params(n, 0.f));
  EXPECT_CLOSE(y.values(), x.values(), (Tol{0, 0}));
  ops::cpu::dropout_forward(y16, x, params(n, 0.f));  // converting copy: rounded once to bf16
  std::vector<double> want = x.values();
  for (auto& v : want) v = engine::round_to(DType::kBF16, v);
  EXPECT_CLOSE(y16.values(), want, (Tol{0, 0}));
}

TEST(DropoutCpu, KeepRateIsOneMinusP) {
  // Kept count ~ Binomial(n, 1-p): within 5 standard deviations (fails by chance with probability ~6e-7).
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 200003;
  for (float pd : {0.1f, 0.5f}) {
    TestTensor x(eng, Device::kCPU, {n}, DType::kF32, std::vector<double>(n, 1.0));
    TestTensor y(eng, Device::kCPU, {n}, DType::kF32);
    ops::cpu::dropout_forward(y, x, params(n, pd));
    int64_t kept = 0;
    for (double v : y.values()) kept += v != 0.0;
    const double mean = n * (1.0 - pd), sd = std::sqrt(n * pd * (1.0 - pd));
    EXPECT_NEAR(double(kept), mean, 5 * sd) << "p=" << pd;
  }
}

TEST(DropoutCpu, OffsetSelectsTheStreamPositionAndStreamsDiffer) {
  // The tail of a mask drawn from offset 0 equals a mask drawn for the tail at offset k; another stream differs.
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 64, k = 13;
  const std::vector<double> xv = random_normal(n, 6);
  TestTensor x(eng, Device::kCPU, {n}, DType::kF32, xv), y(eng, Device::kCPU, {n}, DType::kF32);
  TestTensor xt(eng, Device::kCPU, {n - k}, DType::kF32, std::vector<double>(xv.begin() + k, xv.end()));
  TestTensor yt(eng, Device::kCPU, {n - k}, DType::kF32), ys(eng, Device::kCPU, {n}, DType::kF32);
  ops::cpu::dropout_forward(y, x, params(n, 0.5f, 3, 0));
  ops::cpu::dropout_forward(yt, xt, params(n - k, 0.5f, 3, k));
  const auto yv = y.values();
  EXPECT_CLOSE(yt.values(), std::vector<double>(yv.begin() + k, yv.end()), (Tol{0, 0}));
  ops::cpu::dropout_forward(ys, x, params(n, 0.5f, 4, 0));
  EXPECT_FALSE(all_close(ys.values(), yv, Tol{0, 0}));
}

TEST(DropoutCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  TestTensor x(eng, Device::kCPU, {8}, DType::kF32, random_normal(8, 7)), y(eng, Device::kCPU, {8}, DType::kF32);
  TestTensor xi(eng, Device::kCPU, {8}, DType::kI32, random_normal(8, 7));
  EXPECT_THROW(ops::cpu::dropout_forward(y, x, params(8, 1.0f)), engine::Error);
  EXPECT_THROW(ops::cpu::dropout_forward(y, x, params(8, -0.1f)), engine::Error);
  EXPECT_THROW(ops::cpu::dropout_forward(y, x, params(9, 0.1f)), engine::Error);
  EXPECT_THROW(ops::cpu::dropout_forward(y, xi, params(8, 0.1f)), engine::Error);
}

// x * scale is rounded to f32 before the 16-bit output (as the CUDA kernel and torch's f32 opmath): at
// p = 0.4, bf16 x = 1.2890625 gives the f32 product 2.1484375, a bf16 midpoint that ties to 2.15625 (the exact
// product, just below it, would round to 2.140625).
TEST(DropoutCpu, ProductRoundedToF32First) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 512;
  auto p = params(n, 0.4f, 1, 0);
  TestTensor x(eng, Device::kCPU, {n}, DType::kBF16, std::vector<double>(size_t(n), 1.2890625));
  TestTensor y(eng, Device::kCPU, {n}, DType::kBF16);
  ops::cpu::dropout_forward(y, x, p);
  int kept = 0;
  for (double v : y.values()) {
    if (v == 0.0) continue;
    ++kept;
    EXPECT_EQ(v, 2.15625);
  }
  EXPECT_GT(kept, 200);
}

}  // namespace
