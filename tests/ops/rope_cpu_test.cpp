// tests/ops/rope_cpu_test.cpp (label cpu): the CPU reference RoPE against f64 finite differences and hand formulas.
#include <cmath>

#include "ops/rope.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// Odd token count, 3 heads, head_dim 6, positions out of order and large (4000 rad on the k = 0 pair).
const std::vector<double> kPositions = {0, 4000, 7, 1, 513};

TEST(RopeCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const ops::RopeParams p{5, 3, 6, 10000.f};
  const int64_t n = 5 * 3 * 6;
  TestTensor x(eng, Device::kCPU, {5, 3, 6}, DType::kF64, random_normal(n, 1));
  TestTensor pos(eng, Device::kCPU, {5}, DType::kI32, kPositions);
  const std::vector<double> g = random_normal(n, 2);  // loss = sum(y * g)
  TestTensor y(eng, Device::kCPU, {5, 3, 6}, DType::kF64);
  auto loss = [&] {
    ops::cpu::rope_forward(y, x, pos, p);
    return dot(y.values(), g);
  };
  TestTensor dy(eng, Device::kCPU, {5, 3, 6}, DType::kF64, g), dx(eng, Device::kCPU, {5, 3, 6}, DType::kF64);
  ops::cpu::rope_backward(dx, ops::Accum::kSet, dy, pos, p);
  EXPECT_CLOSE(dx.values(), numeric_grad(loss, x), (Tol{1e-8, 1e-7}));
  EXPECT_GUARDS_INTACT(dx);
}

TEST(RopeCpu, AccumulateTwiceDoubles) {
  Engine eng({engine::Backend::kCPU});
  const ops::RopeParams p{5, 3, 6, 10000.f};
  const int64_t n = 5 * 3 * 6;
  TestTensor pos(eng, Device::kCPU, {5}, DType::kI32, kPositions);
  TestTensor dy(eng, Device::kCPU, {5, 3, 6}, DType::kF64, random_normal(n, 3));
  TestTensor dx(eng, Device::kCPU, {5, 3, 6}, DType::kF64);
  ops::cpu::rope_backward(dx, ops::Accum::kSet, dy, pos, p);
  std::vector<double> want = dx.values();
  for (auto& v : want) v *= 2;
  ops::cpu::rope_backward(dx, ops::Accum::kAdd, dy, pos, p);
  EXPECT_CLOSE(dx.values(), want, tol_for(DType::kF64));
}

TEST(RopeCpu, ForwardMatchesRotationFormula) {
  // f32 storage: y = x*cos + rotate_half(x)*sin with the angle float(pos) * inv_freq in f32 (the spec's rounding
  // of the angle), cos/sin taken in f64 here; the op's f32 cosf/sinf and f32 products agree to ~1e-7.
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 5, H = 3, d = 6;
  const ops::RopeParams p{N, H, d, 10000.f};
  TestTensor x(eng, Device::kCPU, {N, H, d}, DType::kF32, random_normal(N * H * d, 4));
  TestTensor pos(eng, Device::kCPU, {N}, DType::kI32, kPositions);
  TestTensor y(eng, Device::kCPU, {N, H, d}, DType::kF32);
  ops::cpu::rope_forward(y, x, pos, p);
  const auto xv = x.values();
  std::vector<double> want(xv.size());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t j = 0; j < d; ++j) {
        const int64_t k = j % (d / 2), base = (n * H + h) * d;
        const float inv = 1.f / std::pow(10000.f, float(2 * k) / float(d));
        const double angle = float(float(kPositions[n]) * inv);
        const double rot = j < d / 2 ? -xv[base + j + d / 2] : xv[base + j - d / 2];
        want[base + j] = xv[base + j] * std::cos(angle) + rot * std::sin(angle);
      }
  EXPECT_CLOSE(y.values(), want, (Tol{1e-6, 1e-6}));
  EXPECT_GUARDS_INTACT(y);
}

TEST(RopeCpu, PositionZeroIsIdentityInBf16) {
  // cos = 1 and sin = 0 exactly, so every rounding is exact: y == x bit for bit.
  Engine eng({engine::Backend::kCPU});
  const ops::RopeParams p{3, 2, 8, 10000.f};
  TestTensor x(eng, Device::kCPU, {3, 2, 8}, DType::kBF16, random_normal(48, 5));
  TestTensor pos(eng, Device::kCPU, {3}, DType::kI32, {0, 0, 0});
  TestTensor y(eng, Device::kCPU, {3, 2, 8}, DType::kBF16);
  ops::cpu::rope_forward(y, x, pos, p);
  EXPECT_CLOSE(y.values(), x.values(), (Tol{0, 0}));
}

TEST(RopeCpu, InPlaceMatchesOutOfPlace) {
  Engine eng({engine::Backend::kCPU});
  const ops::RopeParams p{5, 3, 6, 10000.f};
  const auto xv = random_normal(90, 6);
  TestTensor x(eng, Device::kCPU, {5, 3, 6}, DType::kBF16, xv), y(eng, Device::kCPU, {5, 3, 6}, DType::kBF16);
  TestTensor pos(eng, Device::kCPU, {5}, DType::kI32, kPositions);
  ops::cpu::rope_forward(y, x, pos, p);
  ops::cpu::rope_forward(x, x, pos, p);
  EXPECT_CLOSE(x.values(), y.values(), (Tol{0, 0}));
  ops::cpu::rope_backward(y, ops::Accum::kSet, x, pos, p);  // y = R^T R x0 (rounded), then the same in place
  ops::cpu::rope_backward(x, ops::Accum::kSet, x, pos, p);
  EXPECT_CLOSE(x.values(), y.values(), (Tol{0, 0}));
}

TEST(RopeCpu, InvFreqMatchesTransformers) {
  // head_dim 256, theta 1e4: inv_freq[0] = 1 and inv_freq[64] = 1e4^-0.5 = 0.01 (f32-rounded pow, reciprocal).
  const ops::RopeParams p{1, 1, 256, 10000.f};
  EXPECT_EQ(ops::rope_inv_freq(0, p), 1.f);
  EXPECT_NEAR(ops::rope_inv_freq(64, p), 0.01, 1e-9);
  EXPECT_NEAR(ops::rope_inv_freq(127, p), std::pow(1e4, -254.0 / 256), 1e-11);
}

TEST(RopeCpu, RejectsBadShapesAndDtypes) {
  Engine eng({engine::Backend::kCPU});
  TestTensor x(eng, Device::kCPU, {2, 1, 6}, DType::kF32, random_normal(12, 7));
  TestTensor y(eng, Device::kCPU, {2, 1, 6}, DType::kF32), y16(eng, Device::kCPU, {2, 1, 6}, DType::kBF16);
  TestTensor pos(eng, Device::kCPU, {2}, DType::kI32, {0, 1}), posf(eng, Device::kCPU, {2}, DType::kF32, {0, 1});
  TestTensor pos3(eng, Device::kCPU, {3}, DType::kI32, {0, 1, 2});
  TestTensor xi(eng, Device::kCPU, {2, 1, 6}, DType::kI32, std::vector<double>(12, 1.0));
  TestTensor x5(eng, Device::kCPU, {2, 1, 5}, DType::kF32, random_normal(10, 8));
  TestTensor y5(eng, Device::kCPU, {2, 1, 5}, DType::kF32);
  EXPECT_THROW(ops::cpu::rope_forward(y5, x5, pos, {2, 1, 5, 10000.f}), engine::Error);  // odd head_dim
  TestTensor xbig(eng, Device::kCPU, {1, 1, 1024}, DType::kF32, random_normal(1024, 9));
  TestTensor ybig(eng, Device::kCPU, {1, 1, 1024}, DType::kF32), pos1(eng, Device::kCPU, {1}, DType::kI32, {3});
  EXPECT_THROW(ops::cpu::rope_forward(ybig, xbig, pos1, {1, 1, 1024, 10000.f}), engine::Error);  // > max head_dim
  EXPECT_THROW(ops::cpu::rope_forward(y, x, pos, {2, 2, 6, 10000.f}), engine::Error);   // heads mismatch
  EXPECT_THROW(ops::cpu::rope_forward(y, x, posf, {2, 1, 6, 10000.f}), engine::Error);  // f32 positions
  EXPECT_THROW(ops::cpu::rope_forward(y, x, pos3, {2, 1, 6, 10000.f}), engine::Error);  // wrong pos length
  EXPECT_THROW(ops::cpu::rope_forward(y16, x, pos, {2, 1, 6, 10000.f}), engine::Error); // y dtype differs
  EXPECT_THROW(ops::cpu::rope_forward(y, xi, pos, {2, 1, 6, 10000.f}), engine::Error);  // integer x
  EXPECT_THROW(ops::cpu::rope_backward(y16, ops::Accum::kSet, x, pos, {2, 1, 6, 10000.f}), engine::Error);
  EXPECT_THROW(ops::cpu::rope_backward(y, ops::Accum::kSet, x, pos, {2, 1, 4, 10000.f}), engine::Error);
}

}  // namespace
