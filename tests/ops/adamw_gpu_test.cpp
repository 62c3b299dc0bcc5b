// tests/ops/adamw_gpu_test.cpp (label gpu): the CUDA AdamW step against the CPU reference, bit for bit.
//   Exact equality is the expected result, not a loose tolerance: both backends use the same host-computed f32
//   scalars (adamw_scalars) and the same sequence of correctly rounded f32 operations with explicit FMAs
//   (ops/adamw.h), and the update is elementwise, so there is no summation order to differ.
#include "ops/adamw.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct AdamWCase {
  int64_t n;
  int64_t off;  // element offset of every buffer: 0 takes the float4 path, 1 the scalar path
};

class AdamWGpu : public ::testing::TestWithParam<AdamWCase> {};

TEST_P(AdamWGpu, StepsMatchCpuBitForBit) {
  REQUIRE_CUDA();
  const auto [n, off] = GetParam();
  Engine eng;
  const std::vector<double> p0 = random_normal(n + off, 1, 0.02);
  // Loss-scaled gradients (S = 2^16) and the device scale inv_S * clip_coef, as the trainer passes them.
  const double scale = double((1.0f / 65536.f) * 0.37f);
  struct Out { std::vector<double> p, m, v; };
  auto run = [&](Device dev) {
    TestTensor p(eng, dev, {n + off}, DType::kF32, p0), g(eng, dev, {n + off}, DType::kF32);
    TestTensor m(eng, dev, {n + off}, DType::kF32, std::vector<double>(n + off, 0.0));
    TestTensor v(eng, dev, {n + off}, DType::kF32, std::vector<double>(n + off, 0.0));
    TestTensor gs(eng, dev, {1}, DType::kF32, {scale}), inf(eng, dev, {1}, DType::kI32, {0.0});
    for (int t = 1; t <= 3; ++t) {
      g.set(random_normal(n + off, 10 + t, 1e-3 * 65536));
      ops::AdamWParams a;
      a.n = n;
      a.lr = t == 1 ? 0.f : 5e-4f;  // warmup: the first step has lr = 0 (SPEC.md §5.8)
      a.weight_decay = 0.001f;
      a.step = t;
      ops::adamw_step(f32_at(p, off, n), f32_at(m, off, n), f32_at(v, off, n), f32_at(g, off, n), gs, inf, a, eng);
    }
    EXPECT_GUARDS_INTACT(p); EXPECT_GUARDS_INTACT(m); EXPECT_GUARDS_INTACT(v);
    auto tail = [&](const TestTensor& t) {
      const auto all = t.values();
      return std::vector<double>(all.begin() + off, all.end());
    };
    return Out{tail(p), tail(m), tail(v)};
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.p); EXPECT_ALL_FINITE(got.m); EXPECT_ALL_FINITE(got.v);
  EXPECT_CLOSE(got.p, ref.p, (Tol{0, 0}));
  EXPECT_CLOSE(got.m, ref.m, (Tol{0, 0}));
  EXPECT_CLOSE(got.v, ref.v, (Tol{0, 0}));
}

std::string case_name(const ::testing::TestParamInfo<AdamWCase>& i) {
  return "n" + std::to_string(i.param.n) + "_off" + std::to_string(i.param.off);
}

// 5,191,680 = all r = 4 LoRA params of Gemma-2-2B (SPEC.md §4.4).
INSTANTIATE_TEST_SUITE_P(Sizes, AdamWGpu,
                         ::testing::Values(AdamWCase{1, 0}, AdamWCase{7, 0}, AdamWCase{7, 1}, AdamWCase{4099, 0},
                                           AdamWCase{4099, 1}, AdamWCase{5191680, 0}, AdamWCase{5191680, 1}),
                         case_name);

TEST(AdamWGpuSkip, FoundInfLeavesEverythingUntouched) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 1031;
  TestTensor p(eng, Device::kCUDA, {n}, DType::kF32, random_normal(n, 2)), g(eng, Device::kCUDA, {n}, DType::kF32,
                                                                                  random_normal(n, 3));
  TestTensor m(eng, Device::kCUDA, {n}, DType::kF32, random_normal(n, 4, 1e-3));
  TestTensor v(eng, Device::kCUDA, {n}, DType::kF32, random_uniform(n, 5, 1e-6, 1e-5));
  TestTensor inf(eng, Device::kCUDA, {1}, DType::kI32, {1.0});
  const auto p0 = p.values(), m0 = m.values(), v0 = v.values();
  ops::AdamWParams a;
  a.n = n;
  a.lr = 0.1f;
  a.weight_decay = 0.01f;
  a.step = 4;
  ops::adamw_step(p, m, v, g, {}, inf, a, eng);
  EXPECT_CLOSE(p.values(), p0, (Tol{0, 0}));
  EXPECT_CLOSE(m.values(), m0, (Tol{0, 0}));
  EXPECT_CLOSE(v.values(), v0, (Tol{0, 0}));
  inf.set({0.0});
  ops::adamw_step(p, m, v, g, {}, inf, a, eng);
  EXPECT_FALSE(all_close(p.values(), p0, Tol{0, 0}));
}

}  // namespace
