// tests/ops/adamw_cpu_test.cpp (label cpu): the bnb AdamW step against hand-computed values and the textbook
// formula, grad_scale, found_inf, and preconditions.
#include <cmath>

#include "ops/adamw.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// f32 storage, so the reference arithmetic is f32: a few ulps of the values compared.
constexpr Tol kF32Ulps{0, 1e-6};

struct State {
  TestTensor p, m, v, g;
  State(Engine& eng, Device dev, const std::vector<double>& p0, const std::vector<double>& g0)
      : p(eng, dev, {int64_t(p0.size())}, DType::kF32, p0),
        m(eng, dev, {int64_t(p0.size())}, DType::kF32, std::vector<double>(p0.size(), 0.0)),
        v(eng, dev, {int64_t(p0.size())}, DType::kF32, std::vector<double>(p0.size(), 0.0)),
        g(eng, dev, {int64_t(p0.size())}, DType::kF32, g0) {}
};

ops::AdamWParams params(int64_t n, float lr, float wd, int step) {
  ops::AdamWParams a;
  a.n = n;
  a.lr = lr;
  a.weight_decay = wd;
  a.step = step;
  return a;  // betas 0.9 / 0.999, eps 1e-8 (SPEC.md §5.9)
}

TEST(AdamWCpu, TwoStepsMatchHandComputedValues) {
  // p0 = 1, lr = 0.1; g = 0.5 then -0.25. By hand, in double with the constants rounded to f32 as bnb receives
  // them (ctypes.c_float, SPEC.md §5.5): b1 = 0.89999998, b2 = 0.99900001, so 1 - b2 = 0.00099998713.
  //   step 1: m = (1-b1) 0.5 = 0.05000001, v = (1-b2) 0.25 = 2.4999678e-4, m^ = 0.5, sqrt(v^) = 0.5
  //           p = 1 - 0.1 * 0.5/(0.5 + 1e-8) = 0.90000000051
  //   step 2: m = b1 m + (1-b1)(-0.25) = 0.0200000036, v = 3.12245983e-4, m^ = m/(1-b1^2), v^ = v/(1-b2^2)
  //           p = 0.9 - 0.1 m^/(sqrt(v^) + 1e-8) = 0.87336629813
  Engine eng({engine::Backend::kCPU});
  State s(eng, Device::kCPU, {1.0}, {0.5});
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(1, 0.1f, 0.f, 1));
  EXPECT_CLOSE(s.p.values(), std::vector<double>{0.9000000005098838}, kF32Ulps);
  EXPECT_CLOSE(s.m.values(), std::vector<double>{0.050000011920928955}, kF32Ulps);
  EXPECT_CLOSE(s.v.values(), std::vector<double>{0.00024999678134918213}, kF32Ulps);
  s.g.set({-0.25});
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(1, 0.1f, 0.f, 2));
  EXPECT_CLOSE(s.p.values(), std::vector<double>{0.8733662981256421}, kF32Ulps);
  EXPECT_CLOSE(s.m.values(), std::vector<double>{0.020000003576278402}, kF32Ulps);
  EXPECT_CLOSE(s.v.values(), std::vector<double>{0.00031224598312373786}, kF32Ulps);
}

TEST(AdamWCpu, WeightDecayMultipliesTheUpdatedValue) {
  // bnb order: p = (p - update) * (1 - lr*wd), by hand as above with wd = 0.5. torch's order,
  // p*(1 - lr*wd) - update, would give 0.85 and 0.78087: wd = 0.5 makes the two orders distinguishable.
  Engine eng({engine::Backend::kCPU});
  State s(eng, Device::kCPU, {1.0}, {0.5});
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(1, 0.1f, 0.5f, 1));
  EXPECT_CLOSE(s.p.values(), std::vector<double>{0.8549999998138373}, kF32Ulps);
  s.g.set({-0.25});
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(1, 0.1f, 0.5f, 2));
  EXPECT_CLOSE(s.p.values(), std::vector<double>{0.7869479819409348}, kF32Ulps);
}

TEST(AdamWCpu, ZeroLearningRateLeavesParamsButUpdatesMoments) {
  // The first scheduled step has lr = 0 under warmup (SPEC.md §5.5): p bit-identical, m and v updated.
  Engine eng({engine::Backend::kCPU});
  const std::vector<double> p0 = random_normal(37, 1), g0 = random_normal(37, 2);
  State s(eng, Device::kCPU, p0, g0);
  const auto before = s.p.values();
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(37, 0.f, 0.001f, 1));
  EXPECT_CLOSE(s.p.values(), before, (Tol{0, 0}));
  std::vector<double> m_want(37), v_want(37);
  for (int i = 0; i < 37; ++i) {
    const float g = float(g0[i]);
    m_want[i] = (1.0f - 0.9f) * g;
    v_want[i] = (1.0f - 0.999f) * (g * g);
  }
  EXPECT_CLOSE(s.m.values(), m_want, (Tol{0, 0}));
  EXPECT_CLOSE(s.v.values(), v_want, (Tol{0, 0}));
}

TEST(AdamWCpu, ManyStepsMatchTextbookFormulaInF64) {
  // p <- (p - lr * m^/(sqrt(v^) + eps)) * (1 - lr*wd), in double with the f32-rounded constants bnb receives,
  // against the f32 kernel: the f32 rounding of each step (a few ulps) accumulates over 10 steps; the bounds
  // below are ~10 ulps of each quantity's typical magnitude (m ~ 1e-3 cancels, hence an absolute term).
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 1001;
  std::vector<double> p = random_normal(n, 3, 0.02), m(n, 0.0), v(n, 0.0);
  State s(eng, Device::kCPU, p, std::vector<double>(n, 1.0));
  const double lr = double(5e-4f), wd = double(0.001f), b1 = double(0.9f), b2 = double(0.999f), eps = double(1e-8f);
  for (int t = 1; t <= 10; ++t) {
    std::vector<double> g = random_normal(n, 100 + t, 1e-3);
    for (auto& x : g) x = double(float(x));
    s.g.set(g);
    ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(n, float(lr), float(wd), t));
    for (int64_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      const double mh = m[i] / (1 - std::pow(b1, t)), vh = v[i] / (1 - std::pow(b2, t));
      p[i] = (p[i] - lr * mh / (std::sqrt(vh) + eps)) * (1 - lr * wd);
    }
  }
  EXPECT_CLOSE(s.p.values(), p, (Tol{2e-8, 1e-5}));
  EXPECT_CLOSE(s.m.values(), m, (Tol{1e-9, 1e-5}));
  EXPECT_CLOSE(s.v.values(), v, (Tol{1e-14, 1e-5}));
}

TEST(AdamWCpu, GradScaleEqualsPrescaledGradient) {
  // grad_scale = 2^-3 * 0.6: the step with (g, scale) must equal the step with g*scale and no scale, bit for bit.
  Engine eng({engine::Backend::kCPU});
  const std::vector<double> p0 = random_normal(19, 4), g0 = random_normal(19, 5);
  const float scale = 0.125f * 0.6f;
  std::vector<double> g_scaled(19);
  for (int i = 0; i < 19; ++i) g_scaled[i] = double(scale * float(g0[i]));
  State a(eng, Device::kCPU, p0, g0), b(eng, Device::kCPU, p0, g_scaled);
  TestTensor gs(eng, Device::kCPU, {1}, DType::kF32, {double(scale)});
  for (int t = 1; t <= 3; ++t) {
    ops::cpu::adamw_step(a.p, a.m, a.v, a.g, gs, {}, params(19, 1e-2f, 0.01f, t));
    ops::cpu::adamw_step(b.p, b.m, b.v, b.g, {}, {}, params(19, 1e-2f, 0.01f, t));
  }
  EXPECT_CLOSE(a.p.values(), b.p.values(), (Tol{0, 0}));
  EXPECT_CLOSE(a.m.values(), b.m.values(), (Tol{0, 0}));
  EXPECT_CLOSE(a.v.values(), b.v.values(), (Tol{0, 0}));
}

TEST(AdamWCpu, FoundInfSkipsTheStep) {
  Engine eng({engine::Backend::kCPU});
  State s(eng, Device::kCPU, random_normal(9, 6), random_normal(9, 7));
  const auto p0 = s.p.values(), m0 = s.m.values(), v0 = s.v.values();
  TestTensor inf(eng, Device::kCPU, {1}, DType::kI32, {1.0});
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, inf, params(9, 0.1f, 0.01f, 1));
  EXPECT_CLOSE(s.p.values(), p0, (Tol{0, 0}));
  EXPECT_CLOSE(s.m.values(), m0, (Tol{0, 0}));
  EXPECT_CLOSE(s.v.values(), v0, (Tol{0, 0}));
  inf.set({0.0});  // clear: the step runs
  ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, inf, params(9, 0.1f, 0.01f, 1));
  EXPECT_FALSE(all_close(s.p.values(), p0, Tol{0, 0}));
}

TEST(AdamWCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  State s(eng, Device::kCPU, random_normal(8, 8), random_normal(8, 9));
  TestTensor g16(eng, Device::kCPU, {8}, DType::kF16, random_normal(8, 9));
  TestTensor gs2(eng, Device::kCPU, {2}, DType::kF32, {1.0, 1.0});
  EXPECT_THROW(ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(7, 0.1f, 0.f, 1)), engine::Error);
  EXPECT_THROW(ops::cpu::adamw_step(s.p, s.m, s.v, g16, {}, {}, params(8, 0.1f, 0.f, 1)), engine::Error);
  EXPECT_THROW(ops::cpu::adamw_step(s.p, s.m, s.v, s.g, gs2, {}, params(8, 0.1f, 0.f, 1)), engine::Error);
  EXPECT_THROW(ops::cpu::adamw_step(s.p, s.m, s.v, s.g, {}, {}, params(8, 0.1f, 0.f, 0)), engine::Error);
}

}  // namespace
