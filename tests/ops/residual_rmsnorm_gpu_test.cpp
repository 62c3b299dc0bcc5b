// tests/ops/residual_rmsnorm_gpu_test.cpp (label gpu): the CUDA kernels against the separate CUDA ops (bit for
// bit: the same row sums) and against the CPU reference (within the dtype's tolerance).
#include "ops/residual_rmsnorm.h"
#include "tests/ops/residual_rmsnorm_test.h"

namespace {

using namespace test;
using ops::Accum;

class ResidualRmsNormGpu : public ::testing::TestWithParam<ResidualNormCase> {};

TEST_P(ResidualRmsNormGpu, MatchesTheSeparateOpsAndTheCpu) {
  REQUIRE_CUDA();
  Engine eng;
  const ResidualNormCase& c = GetParam();
  const ResidualNormResult f = run_residual_rmsnorm(eng, Device::kCUDA, c, true);
  const ResidualNormResult u = run_residual_rmsnorm(eng, Device::kCUDA, c, false);
  EXPECT_EQ(f.s, u.s);
  EXPECT_EQ(f.y, u.y);
  EXPECT_EQ(f.rstd1, u.rstd1);
  EXPECT_EQ(f.rstd2, u.rstd2);
  EXPECT_EQ(f.dh, u.dh);
  EXPECT_EQ(f.d_o, u.d_o);
  EXPECT_ALL_FINITE(f.d_o);
  const ResidualNormResult ref = run_residual_rmsnorm(eng, Device::kCPU, c, true);
  const Tol tol = tol_for(c.dtype);
  EXPECT_CLOSE(f.s, ref.s, tol);
  EXPECT_CLOSE(f.y, ref.y, tol);
  EXPECT_CLOSE(f.rstd1, ref.rstd1, tol_for(DType::kF32));
  EXPECT_CLOSE(f.rstd2, ref.rstd2, tol_for(DType::kF32));
  // g is rounded before the branch norm's backward reads it: two roundings of 16-bit values can land apart.
  const Tol gtol = c.dtype == DType::kF32 ? tol : Tol{2 * tol.atol, 2 * tol.rtol};
  EXPECT_CLOSE(f.dh, ref.dh, gtol);
  EXPECT_CLOSE(f.d_o, ref.d_o, gtol);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, ResidualRmsNormGpu,
    ::testing::Values(ResidualNormCase{1, 8, DType::kF32, true, Accum::kSet, Accum::kSet},
                      ResidualNormCase{7, 776, DType::kBF16, true, Accum::kAdd, Accum::kAdd},
                      ResidualNormCase{512, 2304, DType::kBF16, true, Accum::kSet, Accum::kSet},
                      ResidualNormCase{512, 2304, DType::kBF16, false, Accum::kSet, Accum::kSet},
                      ResidualNormCase{513, 2304, DType::kF16, true, Accum::kSet, Accum::kAdd},
                      ResidualNormCase{66, 2304, DType::kF16, false, Accum::kAdd, Accum::kSet, false},
                      ResidualNormCase{9, 4096, DType::kBF16, true, Accum::kSet, Accum::kSet},
                      ResidualNormCase{33, 3584, DType::kF32, true, Accum::kAdd, Accum::kSet}),
    residual_norm_case_name);

TEST(ResidualRmsNormGpu, RejectsRowsItDoesNotTake) {
  REQUIRE_CUDA();
  Engine eng;
  const ops::RmsNormParams p{2, 12, 1e-6f};  // 12 % 8 != 0: callers compose the separate ops
  TestTensor h(eng, Device::kCUDA, {2, 12}, DType::kBF16, random_normal(24, 1)),
      o(eng, Device::kCUDA, {2, 12}, DType::kBF16, random_normal(24, 2)), s(eng, Device::kCUDA, {2, 12}, DType::kBF16);
  TestTensor w(eng, Device::kCUDA, {12}, DType::kF32, random_normal(12, 3)), r1(eng, Device::kCUDA, {2}, DType::kF32);
  EXPECT_THROW(ops::residual_rmsnorm_forward(s, TensorView{}, r1, TensorView{}, h, o, w, TensorView{}, p, eng),
               engine::Error);
}

}  // namespace
