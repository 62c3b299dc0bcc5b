// tests/ops/embedding_gpu_test.cpp (label gpu): CUDA embedding forward/backward against the CPU reference.
// Forward tolerance is zero: each element is one f32 product of exact inputs followed by the same
// round-to-nearest-even conversions on both sides (engine/dtype.h mirrors __float2half_rn/__float2bfloat16_rn).
#include <cmath>

#include "ops/embedding.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct EmbeddingCase {
  int64_t tokens, vocab, dim;
  DType table, out;
};

class EmbeddingGpu : public ::testing::TestWithParam<EmbeddingCase> {};

std::vector<double> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<double> ids = random_uniform(n, seed, 0, double(vocab));
  for (auto& v : ids) v = std::min(std::floor(v), double(vocab - 1));
  return ids;
}

TEST_P(EmbeddingGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const auto [n, v, d, tdt, odt] = GetParam();
  Engine eng;
  const auto idv = random_ids(n, v, 21), tv = random_normal(v * d, 22), gv = random_normal(n * d, 23),
             dtv = random_normal(v * d, 24);  // dtable starts non-zero: the backward must add
  auto run = [&](Device dev, std::vector<double>* out_v, std::vector<double>* dtable_v, bool twice) {
    TestTensor ids(eng, dev, {n}, DType::kI32, idv), table(eng, dev, {v, d}, tdt, tv), dout(eng, dev, {n, d}, odt, gv);
    TestTensor out(eng, dev, {n, d}, odt), dtable(eng, dev, {v, d}, DType::kF32, dtv);
    const ops::EmbeddingParams p = ops::embedding_params(ids, table);
    ops::embedding_forward(out, ids, table, p, eng);
    ops::embedding_backward(dtable, dout, ids, p, eng);
    if (twice) ops::embedding_backward(dtable, dout, ids, p, eng);
    *out_v = out.values();
    *dtable_v = dtable.values();
    EXPECT_GUARDS_INTACT(out);
    EXPECT_GUARDS_INTACT(dtable);
  };
  std::vector<double> out_ref, dtable_ref, out, dtable, out2, dtable2;
  run(Device::kCPU, &out_ref, &dtable_ref, false);
  run(Device::kCUDA, &out, &dtable, false);
  EXPECT_ALL_FINITE(out);
  EXPECT_ALL_FINITE(dtable);
  EXPECT_CLOSE(out, out_ref, (Tol{0, 0}));
  // dtable: f32 atomics add the tokens of a repeated id in any order; partial sums stay below ~500, whose
  // f32 ulp is 3e-5, and the collision-heavy case adds ~40 tokens per element.
  const Tol dtable_tol{2e-3, 1e-4};
  EXPECT_CLOSE(dtable, dtable_ref, dtable_tol);
  // Accumulate twice: dtable = dtable0 + 2 * (dtable - dtable0).
  run(Device::kCUDA, &out2, &dtable2, true);
  std::vector<double> want2(dtable.size());
  for (size_t i = 0; i < want2.size(); ++i) want2[i] = 2 * dtable[i] - engine::round_to(DType::kF32, dtv[i]);
  EXPECT_CLOSE(dtable2, want2, dtable_tol);
}

std::string case_name(const ::testing::TestParamInfo<EmbeddingCase>& i) {
  return "n" + std::to_string(i.param.tokens) + "_v" + std::to_string(i.param.vocab) + "_d" +
         std::to_string(i.param.dim) + "_" + engine::dtype_name(i.param.table) + "_to_" +
         engine::dtype_name(i.param.out);
}

// d = 45 and 3072 (f16: the normalizer 55.4256 rounds to 55.4375) take the scalar / vector paths on odd and
// rounded normalizers; v = 7 makes ids collide; 4096 x 2304 over v = 4099 is the Gemma-2-2B row shape.
INSTANTIATE_TEST_SUITE_P(
    Shapes, EmbeddingGpu,
    ::testing::Values(EmbeddingCase{1, 3, 8, DType::kF32, DType::kF32},
                      EmbeddingCase{37, 11, 45, DType::kF32, DType::kF32},
                      EmbeddingCase{300, 7, 45, DType::kBF16, DType::kBF16},
                      EmbeddingCase{33, 13, 3072, DType::kF16, DType::kF16},
                      EmbeddingCase{65, 4099, 2304, DType::kBF16, DType::kF32},
                      EmbeddingCase{65, 4099, 2304, DType::kF32, DType::kBF16},
                      EmbeddingCase{4096, 4099, 2304, DType::kBF16, DType::kBF16},
                      EmbeddingCase{4096, 4099, 2304, DType::kF16, DType::kF16},
                      EmbeddingCase{1024, 4099, 2304, DType::kF32, DType::kF32}),
    case_name);

TEST(EmbeddingGpuIds, OutOfRangeIdsGiveZeroRowsAndNoGradient) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t v = 6, d = 16;
  const std::vector<double> idv = {4, -1, 0, 6, 2147483647, 5};
  const int64_t n = int64_t(idv.size());
  TestTensor ids(eng, Device::kCUDA, {n}, DType::kI32, idv), table(eng, Device::kCUDA, {v, d}, DType::kF32,
                                                                    random_normal(v * d, 25));
  TestTensor out(eng, Device::kCUDA, {n, d}, DType::kF32), dout(eng, Device::kCUDA, {n, d}, DType::kF32,
                                                                 random_normal(n * d, 26));
  TestTensor dtable(eng, Device::kCUDA, {v, d}, DType::kF32, std::vector<double>(v * d, 0.0));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  ops::embedding_forward(out, ids, table, p, eng);
  ops::embedding_backward(dtable, dout, ids, p, eng);
  const double s = double(float(std::sqrt(16.0)));
  const auto tv = table.values(), gv = dout.values();
  std::vector<double> want_out(n * d, 0.0), want_dtable(v * d, 0.0);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t id = int64_t(idv[i]);
    if (id < 0 || id >= v) continue;
    for (int64_t c = 0; c < d; ++c) {
      want_out[i * d + c] = engine::round_to(DType::kF32, tv[id * d + c] * s);
      want_dtable[id * d + c] = engine::round_to(DType::kF32, gv[i * d + c] * s);  // valid ids are distinct
    }
  }
  EXPECT_CLOSE(out.values(), want_out, (Tol{0, 0}));
  EXPECT_CLOSE(dtable.values(), want_dtable, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
  EXPECT_GUARDS_INTACT(dtable);
}

}  // namespace
