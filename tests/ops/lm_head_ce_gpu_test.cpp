// tests/ops/lm_head_ce_gpu_test.cpp (label gpu): the chunked CUDA LM head + CE against the CPU reference.
#include <algorithm>
#include <cmath>

#include "ops/lm_head_ce.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// Fills a CPU tensor (rows, cols) with N(0, scale^2) values, each row a window into a pool of 2^20+7 normals:
// Philox per element of a (256000, 2304) table, through a vector of doubles, would take longer than the test.
void fill_pooled(TestTensor& t, uint64_t seed, double scale) {
  const TensorView v = t.view();
  const std::vector<double> pool = random_normal((1 << 20) + 7, seed, scale);
  const int64_t n = int64_t(pool.size()), cols = v.cols();
  for (int64_t r = 0; r < v.rows(); ++r)
    for (int64_t c = 0, s = (r * 7919) % n; c < cols; ++c, s = s + 1 == n ? 0 : s + 1)
      engine::store_f64(v.data, v.dtype, r * cols + c, pool[s]);
}

// Labels in [0, V), every 5th one (from row 2) ignored.
std::vector<double> make_labels(int64_t n, int64_t vocab, uint64_t seed) {
  const std::vector<double> u = random_uniform(n, seed, 0.0, double(vocab));
  std::vector<double> y(n);
  for (int64_t i = 0; i < n; ++i)
    y[i] = i % 5 == 2 ? double(ops::kIgnoreIndex) : std::min(std::floor(u[i]), double(vocab - 1));
  return y;
}

struct LmHeadCeCase {
  int64_t rows, dim, vocab, chunk;
  DType dtype;
  float softcap;
};

class LmHeadCeGpu : public ::testing::TestWithParam<LmHeadCeCase> {};

TEST_P(LmHeadCeGpu, MatchesCpu) {
  REQUIRE_CUDA();
  const auto [N, D, V, chunk, dt, softcap] = GetParam();
  Engine eng;
  // grad_scale 4 keeps dhidden of order 1, where tol_for's atol is not vacuous.
  const ops::LmHeadCeParams p{N, D, V, softcap, chunk, 4.f};
  // Logits ~ N(0, 3^2): the largest of V reach the softcap's curved part.
  const std::vector<double> hv = random_normal(N * D, 71);
  const std::vector<double> yv = make_labels(N, V, 73);
  const double n_labels = double(std::count_if(yv.begin(), yv.end(), [](double v) { return v >= 0; }));
  const double loss0 = 1.5, count0 = 7;  // prior contents: both outputs accumulate

  struct Out {
    double loss, count;
    std::vector<double> dh;
  };
  TestTensor h_cpu(eng, Device::kCPU, {N, D}, dt, hv), e_cpu(eng, Device::kCPU, {V, D}, dt);
  fill_pooled(e_cpu, 72, 3.0 / std::sqrt(double(D)));
  TestTensor y_cpu(eng, Device::kCPU, {N}, DType::kI32, yv);
  TestTensor loss_cpu(eng, Device::kCPU, {1}, DType::kF32, {loss0}), count_cpu(eng, Device::kCPU, {1}, DType::kI32, {count0});
  TestTensor dh_cpu(eng, Device::kCPU, {N, D}, dt);
  ops::cpu::lm_head_ce(loss_cpu, count_cpu, dh_cpu, ops::Accum::kSet, TensorView{}, h_cpu, e_cpu, y_cpu, p);
  const Out want{loss_cpu.values()[0] - loss0, count_cpu.values()[0] - count0, dh_cpu.values()};

  TestTensor h(eng, Device::kCUDA, {N, D}, dt, hv), e(eng, Device::kCUDA, {V, D}, dt);
  eng.copy(e, e_cpu);
  TestTensor y(eng, Device::kCUDA, {N}, DType::kI32, yv);
  TestTensor ws(eng, Device::kCUDA, {int64_t(ops::lm_head_ce_workspace_bytes(p, dt))}, DType::kU8);
  auto run = [&](int calls) {
    TestTensor loss(eng, Device::kCUDA, {1}, DType::kF32, {loss0}), count(eng, Device::kCUDA, {1}, DType::kI32, {count0});
    TestTensor dh(eng, Device::kCUDA, {N, D}, dt);
    for (int c = 0; c < calls; ++c)
      ops::cuda::lm_head_ce(loss, count, dh, c == 0 ? ops::Accum::kSet : ops::Accum::kAdd, TensorView{}, h, e, y, ws, p,
                            eng.blas(), eng.stream());
    EXPECT_GUARDS_INTACT(loss); EXPECT_GUARDS_INTACT(count); EXPECT_GUARDS_INTACT(dh); EXPECT_GUARDS_INTACT(ws);
    return Out{loss.values()[0] - loss0, count.values()[0] - count0, dh.values()};
  };
  const Out got = run(1);
  EXPECT_EQ(want.count, n_labels);
  EXPECT_EQ(got.count, n_labels);
  EXPECT_ALL_FINITE(got.dh);
  // The loss differs where a logit lands on the other side of an act-dtype rounding boundary (f32 GEMM vs f64
  // sums): one flipped target logit moves a row's loss by one ulp of x, a fraction of tol_for's rtol.
  EXPECT_NEAR(got.loss, want.loss, tol_for(dt).rtol * std::fabs(want.loss));
  EXPECT_CLOSE(got.dh, want.dh, tol_for(dt));

  // Accumulate twice: loss_sum and n_valid (+=) and dhidden (kAdd) double.
  const Out twice = run(2);
  std::vector<double> dh2 = got.dh;
  for (auto& v : dh2) v *= 2;
  EXPECT_NEAR(twice.loss, 2 * got.loss, 1e-5 * std::fabs(got.loss));
  EXPECT_EQ(twice.count, 2 * n_labels);
  EXPECT_CLOSE(twice.dh, dh2, tol_for(dt));

  // Loss only, through the Engine dispatch (workspace from the caching allocator): the same loss, bit for bit
  // (the row kernel's forward pass and the chunk reduction are deterministic).
  TestTensor loss_only(eng, Device::kCUDA, {1}, DType::kF32, {loss0});
  ops::lm_head_ce(loss_only, TensorView{}, TensorView{}, ops::Accum::kSet, TensorView{}, h, e, y, p, eng);
  EXPECT_EQ(loss_only.values()[0] - loss0, got.loss);
}

std::string case_name(const ::testing::TestParamInfo<LmHeadCeCase>& i) {
  return "n" + std::to_string(i.param.rows) + "_d" + std::to_string(i.param.dim) + "_v" + std::to_string(i.param.vocab) +
         "_c" + std::to_string(i.param.chunk) + "_" + engine::dtype_name(i.param.dtype) +
         (i.param.softcap > 0 ? "" : "_nocap");
}

// Odd shapes: several chunks with a ragged last one, V odd (scalar row loads) and V % 8 == 0 (16-byte loads),
// one chunk larger than N. Gemma-2-2B: the real D = 2304 and V = 256000 with N = 4 tokens in chunks of 3: the f64
// reference costs 2 * N * V * D multiply-adds, about 0.9 s per token on the H200 host (N = 8 took 9-15 s a case).
INSTANTIATE_TEST_SUITE_P(
    Shapes, LmHeadCeGpu,
    ::testing::Values(LmHeadCeCase{37, 45, 1001, 16, DType::kF32, 30.f}, LmHeadCeCase{29, 72, 512, 8, DType::kBF16, 30.f},
                      LmHeadCeCase{13, 33, 515, 5, DType::kF16, 30.f}, LmHeadCeCase{21, 64, 4096, 6, DType::kF16, 0.f},
                      LmHeadCeCase{40, 17, 1024, 64, DType::kBF16, 30.f}, LmHeadCeCase{9, 40, 300, 4, DType::kF32, 0.f},
                      LmHeadCeCase{4, 2304, 256000, 3, DType::kBF16, 30.f},
                      LmHeadCeCase{4, 2304, 256000, 3, DType::kF16, 30.f},
                      LmHeadCeCase{4, 2304, 256000, 3, DType::kF32, 30.f}),
    case_name);

TEST(LmHeadCeGpuEdge, AllIgnoredGivesZeroLossAndGradient) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t N = 6, D = 24, V = 136;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 4, 1.f};
  TestTensor h(eng, Device::kCUDA, {N, D}, DType::kBF16, random_normal(N * D, 81));
  TestTensor e(eng, Device::kCUDA, {V, D}, DType::kBF16, random_normal(V * D, 82));
  TestTensor y(eng, Device::kCUDA, {N}, DType::kI32, std::vector<double>(N, ops::kIgnoreIndex));
  TestTensor loss(eng, Device::kCUDA, {1}, DType::kF32, {0.0}), count(eng, Device::kCUDA, {1}, DType::kI32, {0.0});
  TestTensor dh(eng, Device::kCUDA, {N, D}, DType::kBF16);
  ops::lm_head_ce(loss, count, dh, ops::Accum::kSet, TensorView{}, h, e, y, p, eng);
  EXPECT_EQ(loss.values()[0], 0.0);
  EXPECT_EQ(count.values()[0], 0.0);
  EXPECT_CLOSE(dh.values(), std::vector<double>(N * D, 0.0), (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(dh);
}

TEST(LmHeadCeGpuEdge, OutOfRangeLabelMakesLossNaN) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t N = 3, D = 8, V = 16;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 2, 1.f};
  TestTensor h(eng, Device::kCUDA, {N, D}, DType::kF32, random_normal(N * D, 91));
  TestTensor e(eng, Device::kCUDA, {V, D}, DType::kF32, random_normal(V * D, 92));
  TestTensor y(eng, Device::kCUDA, {N}, DType::kI32, {1, 16, 3});
  TestTensor loss(eng, Device::kCUDA, {1}, DType::kF32, {0.0});
  ops::lm_head_ce(loss, TensorView{}, TensorView{}, ops::Accum::kSet, TensorView{}, h, e, y, p, eng);
  EXPECT_TRUE(std::isnan(loss.values()[0]));
}

TEST(LmHeadCeGpuEdge, RejectsSmallWorkspace) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t N = 5, D = 8, V = 32;
  const ops::LmHeadCeParams p{N, D, V, 30.f, 2, 1.f};
  TestTensor h(eng, Device::kCUDA, {N, D}, DType::kBF16, random_normal(N * D, 93));
  TestTensor e(eng, Device::kCUDA, {V, D}, DType::kBF16, random_normal(V * D, 94));
  TestTensor y(eng, Device::kCUDA, {N}, DType::kI32, {1, 2, 3, 4, 5});
  TestTensor loss(eng, Device::kCUDA, {1}, DType::kF32, {0.0});
  TestTensor ws(eng, Device::kCUDA, {int64_t(ops::lm_head_ce_workspace_bytes(p, DType::kBF16)) - 1}, DType::kU8);
  EXPECT_THROW(ops::cuda::lm_head_ce(loss, TensorView{}, TensorView{}, ops::Accum::kSet, TensorView{}, h, e, y, ws, p, eng.blas(),
                                     eng.stream()),
               engine::Error);
}

}  // namespace
