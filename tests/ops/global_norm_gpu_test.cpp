// tests/ops/global_norm_gpu_test.cpp (label gpu): CUDA sum of squares against the CPU f64 sum, determinism,
// +=, inf/NaN detection, and the clip coefficient bit for bit.
#include <cmath>
#include <cstring>
#include <limits>

#include "ops/global_norm.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct NormCase {
  int64_t n;
  int64_t off;  // 0: float4 path, 1: misaligned scalar path
};

class GlobalNormGpu : public ::testing::TestWithParam<NormCase> {};

TEST_P(GlobalNormGpu, SumOfSquaresMatchesF64AndIsDeterministic) {
  REQUIRE_CUDA();
  const auto [n, off] = GetParam();
  Engine eng;
  // Loss-scaled gradient values (S = 2^16 times ~1e-3).
  const std::vector<double> xv = random_normal(n + off, 1, 65.536);
  TestTensor xc(eng, Device::kCPU, {n + off}, DType::kF32, xv), xg(eng, Device::kCUDA, {n + off}, DType::kF32, xv);
  TestTensor ref(eng, Device::kCPU, {1}, DType::kF32, {0.0});
  ops::global_norm_sumsq(ref, f32_at(xc, off, n), {}, eng);
  const int64_t ws_floats = int64_t(ops::global_norm_workspace_bytes(n) / sizeof(float));
  TestTensor ws(eng, Device::kCUDA, {ws_floats}, DType::kF32);
  auto run = [&] {
    TestTensor ss(eng, Device::kCUDA, {1}, DType::kF32, {0.0});
    ops::global_norm_sumsq(ss, f32_at(xg, off, n), ws, eng);
    EXPECT_GUARDS_INTACT(ss);
    return ss.values()[0];
  };
  const double a = run(), b = run();
  // f32 partial sums of positive terms: each thread adds <= ~80 squares in sequence, then two tree reductions;
  // the relative error is bounded by ~(80 + 18) * 2^-24 ~ 6e-6.
  EXPECT_CLOSE(std::vector<double>{a}, ref.values(), (Tol{0, 1e-5}));
  EXPECT_EQ(std::memcmp(&a, &b, sizeof a), 0) << "two runs differ: " << a << " vs " << b;
  EXPECT_GUARDS_INTACT(ws);
  // += : a second view adds to the same scalar; s + s is exact.
  TestTensor ss(eng, Device::kCUDA, {1}, DType::kF32, {0.0});
  ops::global_norm_sumsq(ss, f32_at(xg, off, n), ws, eng);
  ops::global_norm_sumsq(ss, f32_at(xg, off, n), ws, eng);
  EXPECT_EQ(ss.values()[0], 2 * a);
}

std::string case_name(const ::testing::TestParamInfo<NormCase>& i) {
  return "n" + std::to_string(i.param.n) + "_off" + std::to_string(i.param.off);
}

// 5,191,680 / 20,766,720: the r = 4 / r = 16 LoRA gradient buffers of Gemma-2-2B.
INSTANTIATE_TEST_SUITE_P(Sizes, GlobalNormGpu,
                         ::testing::Values(NormCase{1, 0}, NormCase{3, 1}, NormCase{1024, 0}, NormCase{4097, 1},
                                           NormCase{5191680, 0}, NormCase{5191680, 1}, NormCase{20766720, 0}),
                         case_name);

TEST(GlobalNormGpuFlags, InfOrNanGradientSetsFoundInf) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 100003;
  TestTensor ws(eng, Device::kCUDA, {int64_t(ops::global_norm_workspace_bytes(n) / 4)}, DType::kF32);
  for (double bad : {std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN(), 0.5}) {
    std::vector<double> xv = random_normal(n, 2);
    xv[77777] = bad;
    TestTensor x(eng, Device::kCUDA, {n}, DType::kF32, xv);
    TestTensor ss(eng, Device::kCUDA, {1}, DType::kF32, {0.0});
    TestTensor gs(eng, Device::kCUDA, {1}, DType::kF32), nrm(eng, Device::kCUDA, {1}, DType::kF32),
        inf(eng, Device::kCUDA, {1}, DType::kI32);
    ops::global_norm_sumsq(ss, x, ws, eng);
    ops::clip_coefficient(gs, nrm, inf, ss, {1.0f, 1.0f}, eng);
    EXPECT_EQ(inf.values()[0], std::isfinite(bad) ? 0.0 : 1.0) << "bad=" << bad;
    EXPECT_GUARDS_INTACT(gs); EXPECT_GUARDS_INTACT(nrm); EXPECT_GUARDS_INTACT(inf);
  }
}

TEST(GlobalNormGpuFlags, ClipCoefficientMatchesCpuBitForBit) {
  // Same f32 operations in the same order with IEEE sqrt and division on both sides: identical bits.
  REQUIRE_CUDA();
  Engine eng;
  const float S = 65536.f;
  const float sumsqs[] = {4.f * S * S, 0.01f * S * S, 123.456f * S * S, 0.f, 1e30f};
  const ops::ClipParams clips[] = {{0.3f, 1.f / S}, {1.0f, 1.f / S}, {0.f, 1.f / S}, {0.3f, 1.f}};
  for (float s : sumsqs)
    for (const ops::ClipParams& c : clips) {
      std::vector<double> out[2];
      for (Device dev : {Device::kCPU, Device::kCUDA}) {
        TestTensor ss(eng, dev, {1}, DType::kF32, {double(s)});
        TestTensor gs(eng, dev, {1}, DType::kF32), nrm(eng, dev, {1}, DType::kF32), inf(eng, dev, {1}, DType::kI32);
        ops::clip_coefficient(gs, nrm, inf, ss, c, eng);
        out[dev == Device::kCUDA] = {gs.values()[0], nrm.values()[0], inf.values()[0]};
      }
      EXPECT_CLOSE(out[1], out[0], (Tol{0, 0})) << "sumsq=" << s << " max_norm=" << c.max_norm;
    }
}

}  // namespace
