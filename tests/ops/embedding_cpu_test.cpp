// tests/ops/embedding_cpu_test.cpp (label cpu): the CPU reference embedding: backward against f64 finite
// differences, accumulation, the normalizer's rounding (SPEC.md §1.1), and the id checks.
#include <cmath>
#include <string>

#include "ops/embedding.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(EmbeddingCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 7, v = 5, d = 3;  // ids repeat, so rows of dtable sum several tokens; row 4 gets none
  TestTensor ids(eng, Device::kCPU, {n}, DType::kI32, {2, 0, 3, 2, 1, 2, 0});
  TestTensor table(eng, Device::kCPU, {v, d}, DType::kF64, random_normal(v * d, 1));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);  // scale = sqrt(3)
  const std::vector<double> g = random_normal(n * d, 2);              // loss = sum(out * g)
  TestTensor out(eng, Device::kCPU, {n, d}, DType::kF64);
  auto loss = [&] {
    ops::cpu::embedding_forward(out, ids, table, p);
    return dot(out.values(), g);
  };
  TestTensor dout(eng, Device::kCPU, {n, d}, DType::kF64, g);
  TestTensor dtable(eng, Device::kCPU, {v, d}, DType::kF64, std::vector<double>(v * d, 0.0));
  ops::cpu::embedding_backward(dtable, dout, ids, p);
  EXPECT_CLOSE(dtable.values(), numeric_grad(loss, table), (Tol{1e-8, 1e-7}));
}

TEST(EmbeddingCpu, BackwardAccumulatesTwice) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 9, v = 4, d = 5;
  TestTensor ids(eng, Device::kCPU, {n}, DType::kI32, {3, 3, 0, 1, 3, 2, 0, 1, 1});
  TestTensor table(eng, Device::kCPU, {v, d}, DType::kF32, random_normal(v * d, 3));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  TestTensor dout(eng, Device::kCPU, {n, d}, DType::kF64, random_normal(n * d, 4));
  TestTensor dtable(eng, Device::kCPU, {v, d}, DType::kF64, std::vector<double>(v * d, 0.0));
  ops::cpu::embedding_backward(dtable, dout, ids, p);
  std::vector<double> twice = dtable.values();
  for (auto& x : twice) x *= 2;
  ops::cpu::embedding_backward(dtable, dout, ids, p);
  EXPECT_CLOSE(dtable.values(), twice, tol_for(DType::kF64));
}

TEST(EmbeddingCpu, ForwardRoundsNormalizerAndProductInTableDtype) {
  // D = 3072: sqrt = 55.4256 becomes 55.5 in bf16, the value in the HF source comment (SPEC.md §1.1), which
  // says float16; f16 would give 55.4375.
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 3, v = 4, d = 3072;
  TestTensor ids(eng, Device::kCPU, {n}, DType::kI32, {1, 3, 1});
  TestTensor table(eng, Device::kCPU, {v, d}, DType::kBF16, random_normal(v * d, 5));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  TestTensor out(eng, Device::kCPU, {n, d}, DType::kBF16);
  ops::cpu::embedding_forward(out, ids, table, p);
  EXPECT_EQ(engine::round_to(DType::kBF16, p.scale), 55.5);
  EXPECT_EQ(engine::round_to(DType::kF16, p.scale), 55.4375);
  const auto tv = table.values();
  const int idv[3] = {1, 3, 1};
  std::vector<double> want(n * d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c) want[i * d + c] = engine::round_to(DType::kBF16, tv[idv[i] * d + c] * 55.5);
  EXPECT_CLOSE(out.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
}

TEST(EmbeddingCpu, ForwardWithWiderOrNarrowerOutRoundsTwice) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 4, v = 3, d = 7;
  TestTensor ids(eng, Device::kCPU, {n}, DType::kI32, {2, 0, 1, 2});
  TestTensor table(eng, Device::kCPU, {v, d}, DType::kF32, random_normal(v * d, 6));
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  const double s = double(float(std::sqrt(7.0)));
  const auto tv = table.values();
  const int idv[4] = {2, 0, 1, 2};
  TestTensor out(eng, Device::kCPU, {n, d}, DType::kBF16);  // f32 product, then bf16
  ops::cpu::embedding_forward(out, ids, table, p);
  std::vector<double> want(n * d);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < d; ++c)
      want[i * d + c] = engine::round_to(DType::kBF16, engine::round_to(DType::kF32, tv[idv[i] * d + c] * s));
  EXPECT_CLOSE(out.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
}

TEST(EmbeddingCpu, RejectsOutOfRangeIdsNamingIndexAndValue) {
  Engine eng({engine::Backend::kCPU});
  TestTensor table(eng, Device::kCPU, {5, 3}, DType::kF32, random_normal(15, 7));
  TestTensor out(eng, Device::kCPU, {4, 3}, DType::kF32);
  TestTensor dtable(eng, Device::kCPU, {5, 3}, DType::kF32, std::vector<double>(15, 0.0));
  for (const int bad : {5, -1}) {
    TestTensor ids(eng, Device::kCPU, {4}, DType::kI32, {0, 4, double(bad), 1});
    const ops::EmbeddingParams p = ops::embedding_params(ids, table);
    try {
      ops::cpu::embedding_forward(out, ids, table, p);
      ADD_FAILURE() << "no throw for id " << bad;
    } catch (const engine::Error& e) {
      EXPECT_NE(std::string(e.what()).find("ids[2] = " + std::to_string(bad)), std::string::npos) << e.what();
    }
    EXPECT_THROW(ops::cpu::embedding_backward(dtable, out, ids, p), engine::Error);
  }
}

TEST(EmbeddingCpu, RejectsBadShapesAndDtypes) {
  Engine eng({engine::Backend::kCPU});
  TestTensor ids(eng, Device::kCPU, {4}, DType::kI32, {0, 1, 2, 3});
  TestTensor table(eng, Device::kCPU, {5, 3}, DType::kF32, random_normal(15, 8));
  TestTensor out(eng, Device::kCPU, {4, 3}, DType::kF32), short_out(eng, Device::kCPU, {4, 2}, DType::kF32);
  TestTensor float_ids(eng, Device::kCPU, {4}, DType::kF32, {0, 1, 2, 3});
  const ops::EmbeddingParams p = ops::embedding_params(ids, table);
  EXPECT_THROW(ops::cpu::embedding_forward(short_out, ids, table, p), engine::Error);
  EXPECT_THROW(ops::cpu::embedding_forward(out, float_ids, table, p), engine::Error);
  EXPECT_THROW(ops::embedding_params(ids, out.view().reshape({12})), engine::Error);
  TestTensor bf16_dtable(eng, Device::kCPU, {5, 3}, DType::kBF16, std::vector<double>(15, 0.0));
  EXPECT_THROW(ops::cpu::embedding_backward(bf16_dtable, out, ids, p), engine::Error);
}

}  // namespace
