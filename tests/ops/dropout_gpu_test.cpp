// tests/ops/dropout_gpu_test.cpp (label gpu): CUDA dropout against the CPU reference.
//   Forward and set-mode backward must be bit-identical: the mask comes from the same Philox words, and
//   x * scale is one f32 rounding on CUDA and exact-in-f64-then-rounded on the CPU, which is the same value.
//   Add-mode backward: CUDA rounds dy*scale to f32 before adding dx, the CPU adds in f64: within tol_for.
#include "ops/dropout.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct DropoutCase {
  int64_t n;
  uint64_t offset;  // not a multiple of 8: partial first Philox counter
  DType in, out;
};

class DropoutGpu : public ::testing::TestWithParam<DropoutCase> {};

TEST_P(DropoutGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const auto [n, offset, dt_in, dt_out] = GetParam();
  Engine eng;
  ops::DropoutParams p;
  p.n = n;
  p.p = 0.1f;  // lora_dropout of the reference recipe (SPEC.md §4.6)
  p.seed = 42;
  p.stream = 17;
  p.offset = offset;
  const std::vector<double> xv = random_normal(n, 1), gv = random_normal(n, 2), dx0 = random_normal(n, 3);
  struct Out { std::vector<double> y, dx_set, dx_add, dx_twice; };
  auto run = [&](Device dev) {
    TestTensor x(eng, dev, {n}, dt_in, xv), y(eng, dev, {n}, dt_out);
    TestTensor dy(eng, dev, {n}, dt_in, gv), dx(eng, dev, {n}, dt_out), dxa(eng, dev, {n}, dt_out, dx0);
    Out o;
    ops::dropout_forward(y, x, p, eng);
    o.y = y.values();
    ops::dropout_backward(dx, ops::Accum::kSet, dy, p, eng);
    o.dx_set = dx.values();
    ops::dropout_backward(dx, ops::Accum::kAdd, dy, p, eng);
    o.dx_twice = dx.values();
    ops::dropout_backward(dxa, ops::Accum::kAdd, dy, p, eng);
    o.dx_add = dxa.values();
    EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dx); EXPECT_GUARDS_INTACT(dxa);
    return o;
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.y); EXPECT_ALL_FINITE(got.dx_set); EXPECT_ALL_FINITE(got.dx_add);
  EXPECT_CLOSE(got.y, ref.y, (Tol{0, 0}));            // same mask, same values
  EXPECT_CLOSE(got.dx_set, ref.dx_set, (Tol{0, 0}));
  EXPECT_CLOSE(got.dx_add, ref.dx_add, tol_for(dt_out));
  std::vector<double> twice = got.dx_set;
  for (auto& v : twice) v *= 2;
  EXPECT_CLOSE(got.dx_twice, twice, tol_for(dt_out));
}

std::string case_name(const ::testing::TestParamInfo<DropoutCase>& i) {
  return "n" + std::to_string(i.param.n) + "_off" + std::to_string(i.param.offset) + "_" +
         engine::dtype_name(i.param.in) + "_" + engine::dtype_name(i.param.out);
}

INSTANTIATE_TEST_SUITE_P(Shapes, DropoutGpu,
                         ::testing::Values(DropoutCase{1, 0, DType::kF32, DType::kF32},
                                           DropoutCase{3, 2, DType::kF32, DType::kF32},
                                           DropoutCase{4099, 5, DType::kF16, DType::kF16},
                                           DropoutCase{4099, 1, DType::kBF16, DType::kBF16},
                                           DropoutCase{1000, 3, DType::kBF16, DType::kF32},
                                           DropoutCase{4101, 6, DType::kBF16, DType::kBF16},  // offset % 8 = 6
                                           // one micro-batch of Gemma-2-2B activations: 512 tokens x D = 2304
                                           DropoutCase{512 * 2304, 1179651, DType::kBF16, DType::kBF16},
                                           DropoutCase{512 * 2304, 0, DType::kF16, DType::kF16}),
                         case_name);

TEST(DropoutGpuStats, KeepRateAndIdentityAtGemmaShape) {
  // 4096 x 2304 bf16 activations. Kept count ~ Binomial(n, 1-p): within 5 standard deviations.
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 4096LL * 2304;
  TestTensor x(eng, Device::kCUDA, {n}, DType::kBF16, random_normal(n, 4));
  TestTensor y(eng, Device::kCUDA, {n}, DType::kBF16);
  ops::DropoutParams p;
  p.n = n;
  p.p = 0.1f;
  p.seed = 7;
  p.stream = 3;
  p.offset = 12345;
  ops::dropout_forward(y, x, p, eng);
  const auto xv = x.values(), yv = y.values();
  int64_t kept = 0;
  for (int64_t i = 0; i < n; ++i) kept += yv[i] != 0.0;
  const double mean = n * 0.9, sd = std::sqrt(n * 0.1 * 0.9);
  EXPECT_NEAR(double(kept), mean, 5 * sd);
  EXPECT_GUARDS_INTACT(y);
  p.p = 0.f;  // identity
  ops::dropout_forward(y, x, p, eng);
  EXPECT_CLOSE(y.values(), xv, (Tol{0, 0}));
}

// Pointers one element off a 32-byte boundary take the scalar kernel; aligned ones the vector kernel
// (8 elements per thread). Both must give the CPU's values exactly, for every offset % 8.
TEST(DropoutGpuPaths, MisalignedScalarPathMatchesVectorPath) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 3001;
  std::vector<double> xv = random_normal(n + 1, 5);
  const std::vector<double> x_tail(xv.begin() + 1, xv.end());
  for (uint64_t offset : {0, 1, 2, 3, 4, 5, 6, 7, 4099}) {
    ops::DropoutParams p;
    p.n = n;
    p.p = 0.25f;
    p.seed = 11;
    p.stream = 2;
    p.offset = offset;
    TestTensor xs(eng, Device::kCUDA, {n + 1}, DType::kF32, xv), ys(eng, Device::kCUDA, {n + 1}, DType::kF32);
    TestTensor xa(eng, Device::kCUDA, {n}, DType::kF32, x_tail), ya(eng, Device::kCUDA, {n}, DType::kF32);
    TestTensor xc(eng, Device::kCPU, {n}, DType::kF32, x_tail), yc(eng, Device::kCPU, {n}, DType::kF32);
    ops::dropout_forward(f32_at(ys, 1, n), f32_at(xs, 1, n), p, eng);
    ops::dropout_forward(ya, xa, p, eng);
    ops::dropout_forward(yc, xc, p, eng);
    const std::vector<double> scalar = ys.values(), vec = ya.values(), cpu = yc.values();
    EXPECT_CLOSE(std::vector<double>(scalar.begin() + 1, scalar.end()), cpu, (Tol{0, 0})) << "offset " << offset;
    EXPECT_CLOSE(vec, cpu, (Tol{0, 0})) << "offset " << offset;
  }
}

// p = 0.4 makes 1/(1-p) inexact, so x * scale can land on a bf16/f16 midpoint in f32: the CPU reference rounds
// to f32 first as the kernel does, so the outputs stay bit-identical (forward and set-mode backward).
TEST(DropoutGpuPaths, MidpointProductsMatchCpuAtP04) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 100003;
  for (DType dt : {DType::kBF16, DType::kF16}) {
    const ops::DropoutParams p{n, 0.4f, 3, 5, 8};  // n, p, seed, stream, offset
    const std::vector<double> xv = random_normal(n, 9);
    TestTensor xg(eng, Device::kCUDA, {n}, dt, xv), yg(eng, Device::kCUDA, {n}, dt);
    TestTensor xc(eng, Device::kCPU, {n}, dt, xv), yc(eng, Device::kCPU, {n}, dt);
    ops::dropout_forward(yg, xg, p, eng);
    ops::dropout_forward(yc, xc, p, eng);
    EXPECT_CLOSE(yg.values(), yc.values(), (Tol{0, 0})) << engine::dtype_name(dt);
  }
}

}  // namespace
