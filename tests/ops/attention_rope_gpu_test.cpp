// tests/ops/attention_rope_gpu_test.cpp (label gpu): the one-launch kernels against ops/rope.h + ops/
// attention_layout.h on CUDA (bit for bit) and against the CPU reference (within the dtype's tolerance).
#include "ops/attention_rope.h"
#include "tests/ops/attention_rope_test.h"

namespace {

using namespace test;
using ops::Accum;

class AttentionRopeGpu : public ::testing::TestWithParam<AttentionRopeCase> {};

TEST_P(AttentionRopeGpu, MatchesTheSeparateOpsAndTheCpu) {
  REQUIRE_CUDA();
  Engine eng;
  const AttentionRopeCase& c = GetParam();
  const AttentionRopeResult f = run_attention_rope(eng, Device::kCUDA, c, true);
  const AttentionRopeResult u = run_attention_rope(eng, Device::kCUDA, c, false);
  EXPECT_EQ(f.qh, u.qh);
  EXPECT_EQ(f.kh, u.kh);
  EXPECT_EQ(f.vh, u.vh);
  EXPECT_EQ(f.dq, u.dq);
  EXPECT_EQ(f.dk, u.dk);
  EXPECT_EQ(f.dv, u.dv);
  const AttentionRopeResult ref = run_attention_rope(eng, Device::kCPU, c, true);
  const Tol tol = tol_for(c.dtype);
  EXPECT_CLOSE(f.qh, ref.qh, tol);
  EXPECT_CLOSE(f.kh, ref.kh, tol);
  EXPECT_EQ(f.vh, ref.vh);  // a copy
  EXPECT_CLOSE(f.dq, ref.dq, tol);
  EXPECT_CLOSE(f.dk, ref.dk, tol);
  EXPECT_CLOSE(f.dv, ref.dv, tol);
}

std::string case_name(const ::testing::TestParamInfo<AttentionRopeCase>& i) {
  const AttentionRopeCase& c = i.param;
  return "b" + std::to_string(c.batch) + "_t" + std::to_string(c.seq) + "_h" + std::to_string(c.heads) + "_kv" +
         std::to_string(c.kv_heads) + "_d" + std::to_string(c.head_dim) + "_" + engine::dtype_name(c.dtype) +
         (c.mode == Accum::kAdd ? "_add" : "_set") + (c.want_dk ? "" : "_nodk");
}

INSTANTIATE_TEST_SUITE_P(
    Cases, AttentionRopeGpu,
    ::testing::Values(AttentionRopeCase{1, 512, 8, 4, 256, DType::kBF16, Accum::kSet},
                      AttentionRopeCase{2, 96, 8, 4, 256, DType::kF16, Accum::kAdd},
                      AttentionRopeCase{3, 17, 4, 2, 64, DType::kF32, Accum::kSet, false},
                      AttentionRopeCase{2, 5, 2, 1, 6, DType::kBF16, Accum::kAdd},   // hd/2 = 3: scalar path
                      AttentionRopeCase{1, 33, 16, 8, 128, DType::kBF16, Accum::kAdd, false}),
    case_name);

}  // namespace
