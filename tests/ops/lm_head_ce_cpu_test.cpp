// tests/ops/lm_head_ce_cpu_test.cpp (label cpu): the CPU reference of the fused LM head + CE against f64
// finite differences, against a naive materialised-logits formula, its += semantics and its error paths.
#include <algorithm>
#include <cmath>

#include "ops/lm_head_ce.h"
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// Labels in [0, V) with every `ignore_every`-th one -100 (0: none ignored).
std::vector<double> make_labels(int64_t n, int64_t vocab, uint64_t seed, int ignore_every) {
  std::vector<double> u = random_uniform(n, seed, 0.0, double(vocab)), y(n);
  for (int64_t i = 0; i < n; ++i)
    y[i] = ignore_every > 0 && i % ignore_every == 1 ? double(ops::kIgnoreIndex)
                                                     : std::min(std::floor(u[i]), double(vocab - 1));
  return y;
}

class LmHeadCeCpuFd : public ::testing::TestWithParam<float> {};

TEST_P(LmHeadCeCpuFd, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 5, D = 7, V = 11;  // tiny, odd sizes
  ops::LmHeadCeParams p{N, D, V, GetParam(), /*chunk_rows=*/2, /*grad_scale=*/0.37f};
  // Logits of a few units: with softcap 2.5 the tanh saturates, with 30 it is nearly linear.
  TestTensor h(eng, Device::kCPU, {N, D}, DType::kF64, random_normal(N * D, 21));
  TestTensor e(eng, Device::kCPU, {V, D}, DType::kF64, random_normal(V * D, 22, 0.8));
  TestTensor y(eng, Device::kCPU, {N}, DType::kI32, make_labels(N, V, 23, /*ignore_every=*/3));  // rows 1, 4
  TestTensor loss(eng, Device::kCPU, {1}, DType::kF64), count(eng, Device::kCPU, {1}, DType::kI32);
  auto loss_fn = [&] {
    loss.set({0.0});
    ops::cpu::lm_head_ce(loss, TensorView{}, TensorView{}, ops::Accum::kSet, TensorView{}, h, e, y, p);
    return loss.values()[0];
  };
  TestTensor dh(eng, Device::kCPU, {N, D}, DType::kF64);
  loss.set({0.0});
  count.set({0.0});
  ops::cpu::lm_head_ce(loss, count, dh, ops::Accum::kSet, TensorView{}, h, e, y, p);
  EXPECT_EQ(count.values()[0], 3.0);
  EXPECT_GT(loss.values()[0], 0.0);
  std::vector<double> want = numeric_grad(loss_fn, h);
  for (auto& v : want) v *= p.grad_scale;  // dhidden = grad_scale * d(loss_sum)/d(hidden)
  EXPECT_CLOSE(dh.values(), want, (Tol{1e-8, 1e-6}));
  const auto g = dh.values();  // ignored rows get no gradient
  for (int64_t k = 0; k < D; ++k) EXPECT_EQ(g[1 * D + k], 0.0);
  for (int64_t k = 0; k < D; ++k) EXPECT_EQ(g[4 * D + k], 0.0);
  EXPECT_GUARDS_INTACT(dh);
  EXPECT_GUARDS_INTACT(loss);
}

INSTANTIATE_TEST_SUITE_P(Softcap, LmHeadCeCpuFd, ::testing::Values(30.f, 2.5f, 0.f),
                         [](const ::testing::TestParamInfo<float>& i) {
                           return i.param == 0.f ? std::string("off") : "cap" + std::to_string(int(i.param * 10));
                         });

// Independent formula: logits materialised by ops::cpu::matmul (rounded to the act dtype), softcap and CE
// written out, dh by a second matmul.
struct Naive {
  double loss;
  std::vector<double> dh;
};
Naive naive_lm_head_ce(Engine& eng, const TestTensor& h, const TestTensor& e, const std::vector<double>& y,
                       const ops::LmHeadCeParams& p, DType dt) {
  const int64_t N = p.rows, D = p.dim, V = p.vocab;
  TestTensor logits(eng, Device::kCPU, {N, V}, dt);
  ops::cpu::matmul(logits, h, e, ops::matmul_params(logits, h, e, false, true));
  std::vector<double> l = logits.values(), g(N * V, 0.0);
  const double cap = p.softcap, inv_cap = double(1.f / p.softcap);
  double loss = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (y[i] == ops::kIgnoreIndex) continue;
    std::vector<double> x(V), slope(V, 1.0);
    for (int64_t j = 0; j < V; ++j) {
      x[j] = l[i * V + j];
      if (cap > 0) {
        const double t = engine::round_to(dt, std::tanh(engine::round_to(dt, x[j] * inv_cap)));
        x[j] = engine::round_to(dt, t * cap);
        slope[j] = cap * inv_cap * (1 - t * t);
      }
    }
    double m = x[0], s = 0;
    for (double v : x) m = std::max(m, v);
    for (double v : x) s += std::exp(v - m);
    const double lse = m + std::log(s);
    const int64_t yi = int64_t(y[i]);
    loss += lse - x[yi];
    for (int64_t j = 0; j < V; ++j)
      g[i * V + j] = engine::round_to(dt, (std::exp(x[j] - lse) - (j == yi)) * p.grad_scale * slope[j]);
  }
  TestTensor dlogits(eng, Device::kCPU, {N, V}, DType::kF64, g), e64(eng, Device::kCPU, {V, D}, DType::kF64, e.values());
  TestTensor dh(eng, Device::kCPU, {N, D}, DType::kF64);
  ops::cpu::matmul(dh, dlogits, e64, ops::matmul_params(dh, dlogits, e64, false, false));
  std::vector<double> dh_rounded = dh.values();
  for (auto& v : dh_rounded) v = engine::round_to(dt, v);
  return {loss, dh_rounded};
}

struct NaiveCase {
  DType dtype;
  float softcap;
};
class LmHeadCeCpuNaive : public ::testing::TestWithParam<NaiveCase> {};

TEST_P(LmHeadCeCpuNaive, MatchesMaterialisedLogits) {
  const auto [dt, softcap] = GetParam();
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 70, D = 13, V = 37;  // several 8-row blocks of the reference, a ragged last one
  const ops::LmHeadCeParams p{N, D, V, softcap, 16, 0.5f};
  // Logits up to ~20 so the act-dtype roundings of the softcap matter.
  TestTensor h(eng, Device::kCPU, {N, D}, dt, random_normal(N * D, 31, 2.0));
  TestTensor e(eng, Device::kCPU, {V, D}, dt, random_normal(V * D, 32, 2.0));
  const std::vector<double> yv = make_labels(N, V, 33, 4);
  TestTensor y(eng, Device::kCPU, {N}, DType::kI32, yv);
  TestTensor loss(eng, Device::kCPU, {1}, DType::kF64, {0.0}), dh(eng, Device::kCPU, {N, D}, dt);
  ops::cpu::lm_head_ce(loss, TensorView{}, dh, ops::Accum::kSet, TensorView{}, h, e, y, p);
  const Naive want = naive_lm_head_ce(eng, h, e, yv, p, dt);
  EXPECT_NEAR(loss.values()[0], want.loss, 1e-9 * std::fabs(want.loss));
  // Same f64 sums in the same order, rounded at the same points: equal up to f64 noise.
  EXPECT_CLOSE(dh.values(), want.dh, tol_for(DType::kF64));
  EXPECT_GUARDS_INTACT(dh);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, LmHeadCeCpuNaive,
                         ::testing::Values(NaiveCase{DType::kF32, 30.f}, NaiveCase{DType::kBF16, 30.f},
                                           NaiveCase{DType::kF16, 30.f}, NaiveCase{DType::kBF16, 0.f}),
                         [](const ::testing::TestParamInfo<NaiveCase>& i) {
                           return std::string(engine::dtype_name(i.param.dtype)) + (i.param.softcap > 0 ? "_cap" : "_nocap");
                         });

TEST(LmHeadCeCpu, AccumulateTwiceDoubles) {
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 6, D = 9, V = 19;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 4, 2.f};
  TestTensor h(eng, Device::kCPU, {N, D}, DType::kF64, random_normal(N * D, 41));
  TestTensor e(eng, Device::kCPU, {V, D}, DType::kF64, random_normal(V * D, 42));
  TestTensor y(eng, Device::kCPU, {N}, DType::kI32, make_labels(N, V, 43, 3));
  TestTensor loss(eng, Device::kCPU, {1}, DType::kF64, {0.0}), count(eng, Device::kCPU, {1}, DType::kI32, {0.0});
  TestTensor dh(eng, Device::kCPU, {N, D}, DType::kF64);
  ops::cpu::lm_head_ce(loss, count, dh, ops::Accum::kSet, TensorView{}, h, e, y, p);
  const double l1 = loss.values()[0];
  const auto dh1 = dh.values();
  ops::cpu::lm_head_ce(loss, count, dh, ops::Accum::kAdd, TensorView{}, h, e, y, p);
  std::vector<double> dh2 = dh1;
  for (auto& v : dh2) v *= 2;
  EXPECT_NEAR(loss.values()[0], 2 * l1, 1e-12 * l1);
  EXPECT_EQ(count.values()[0], 8.0);
  EXPECT_CLOSE(dh.values(), dh2, tol_for(DType::kF64));
}

TEST(LmHeadCeCpu, AllIgnoredGivesZeroLossAndGradient) {
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 4, D = 5, V = 9;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 3, 1.f};
  TestTensor h(eng, Device::kCPU, {N, D}, DType::kBF16, random_normal(N * D, 51));
  TestTensor e(eng, Device::kCPU, {V, D}, DType::kBF16, random_normal(V * D, 52));
  TestTensor y(eng, Device::kCPU, {N}, DType::kI32, std::vector<double>(N, ops::kIgnoreIndex));
  TestTensor loss(eng, Device::kCPU, {1}, DType::kF32, {0.0}), count(eng, Device::kCPU, {1}, DType::kI32, {0.0});
  TestTensor dh(eng, Device::kCPU, {N, D}, DType::kBF16);
  ops::cpu::lm_head_ce(loss, count, dh, ops::Accum::kSet, TensorView{}, h, e, y, p);
  EXPECT_EQ(loss.values()[0], 0.0);
  EXPECT_EQ(count.values()[0], 0.0);
  EXPECT_CLOSE(dh.values(), std::vector<double>(N * D, 0.0), (Tol{0, 0}));
}

TEST(LmHeadCeCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 3, D = 4, V = 5;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 2, 1.f};
  TestTensor h(eng, Device::kCPU, {N, D}, DType::kF32, random_normal(N * D, 61));
  TestTensor e(eng, Device::kCPU, {V, D}, DType::kF32, random_normal(V * D, 62));
  TestTensor e_bf16(eng, Device::kCPU, {V, D}, DType::kBF16, random_normal(V * D, 62));
  TestTensor y(eng, Device::kCPU, {N}, DType::kI32, {0, 4, -100});
  TestTensor y_bad(eng, Device::kCPU, {N}, DType::kI32, {0, 5, 1});
  TestTensor y_f32(eng, Device::kCPU, {N}, DType::kF32, {0, 1, 2});
  TestTensor loss(eng, Device::kCPU, {1}, DType::kF32, {0.0}), loss_i32(eng, Device::kCPU, {1}, DType::kI32, {0.0});
  TestTensor dh(eng, Device::kCPU, {N, D}, DType::kF32), dh_bf16(eng, Device::kCPU, {N, D}, DType::kBF16);
  const TensorView none{};
  ops::LmHeadCeParams wrong_dim = p, no_chunk = p;
  wrong_dim.dim = 5;
  no_chunk.chunk_rows = 0;
  EXPECT_NO_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e, y, p));
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e, y, wrong_dim), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e, y, no_chunk), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e_bf16, y, p), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh_bf16, ops::Accum::kSet, TensorView{}, h, e, y, p), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e, y_f32, p), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss_i32, none, dh, ops::Accum::kSet, TensorView{}, h, e, y, p), engine::Error);
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, loss, dh, ops::Accum::kSet, TensorView{}, h, e, y, p), engine::Error);  // n_valid f32
  const double before = loss.values()[0];
  EXPECT_THROW(ops::cpu::lm_head_ce(loss, none, dh, ops::Accum::kSet, TensorView{}, h, e, y_bad, p), engine::Error);
  EXPECT_EQ(loss.values()[0], before);  // labels are checked before anything is written
}

}  // namespace
