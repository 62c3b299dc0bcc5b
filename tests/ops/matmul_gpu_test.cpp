// tests/ops/matmul_gpu_test.cpp (label gpu): the cuBLASLt wrapper against the CPU reference.
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct MatmulCase {
  int64_t batch, m, n, k;
  bool ta, tb;
  DType ab, c;
  float beta;
};

class MatmulGpu : public ::testing::TestWithParam<MatmulCase> {};

TEST_P(MatmulGpu, MatchesCpu) {
  REQUIRE_CUDA();
  const MatmulCase cs = GetParam();
  Engine eng;
  ops::MatmulParams p;
  p.m = cs.m; p.n = cs.n; p.k = cs.k; p.trans_a = cs.ta; p.trans_b = cs.tb; p.batch = cs.batch; p.beta = cs.beta;
  p.alpha = 1.f;
  const int64_t na = cs.batch * cs.m * cs.k, nb = cs.batch * cs.k * cs.n, nc = cs.batch * cs.m * cs.n;
  const auto av = random_normal(na, 21), bv = random_normal(nb, 22), cv = random_normal(nc, 23);
  std::vector<double> got, want;
  for (Device dev : {Device::kCPU, Device::kCUDA}) {
    TestTensor a(eng, dev, {na}, cs.ab, av), b(eng, dev, {nb}, cs.ab, bv), c(eng, dev, {nc}, cs.c, cv);
    ops::matmul(c, a, b, p, eng);
    (dev == Device::kCPU ? want : got) = c.values();
    EXPECT_GUARDS_INTACT(c);
  }
  EXPECT_ALL_FINITE(got);
  // Sums of k products in f32 (cuBLASLt) vs f64 (CPU): error grows like sqrt(k) ulps of the result.
  Tol tol = tol_for(cs.c);
  if (cs.c == DType::kF32) tol = Tol{2e-4, 1e-4};
  EXPECT_CLOSE(got, want, tol);
}

std::string case_name(const ::testing::TestParamInfo<MatmulCase>& i) {
  const auto& c = i.param;
  return "b" + std::to_string(c.batch) + "_m" + std::to_string(c.m) + "_n" + std::to_string(c.n) + "_k" +
         std::to_string(c.k) + (c.ta ? "_ta" : "") + (c.tb ? "_tb" : "") + "_" + engine::dtype_name(c.ab) + "_" +
         engine::dtype_name(c.c) + (c.beta != 0 ? "_acc" : "");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, MatmulGpu,
    ::testing::Values(MatmulCase{1, 7, 9, 13, false, false, DType::kF32, DType::kF32, 0.f},
                      MatmulCase{1, 7, 9, 13, true, false, DType::kF32, DType::kF32, 1.f},
                      MatmulCase{1, 7, 9, 13, false, true, DType::kBF16, DType::kBF16, 0.f},
                      MatmulCase{1, 7, 9, 13, true, true, DType::kF16, DType::kF16, 1.f},
                      MatmulCase{3, 17, 33, 65, false, true, DType::kBF16, DType::kF32, 1.f},
                      MatmulCase{8, 64, 64, 256, false, true, DType::kBF16, DType::kBF16, 0.f},  // QK^T-like
                      MatmulCase{1, 64, 9216, 2304, false, true, DType::kBF16, DType::kBF16, 0.f},  // gate/up
                      MatmulCase{1, 64, 2304, 9216, false, true, DType::kF16, DType::kF16, 0.f},    // down
                      MatmulCase{1, 16, 2304, 2048, false, false, DType::kF32, DType::kF32, 0.f},
                      MatmulCase{1, 4, 2304, 64, true, false, DType::kBF16, DType::kF32, 1.f}),  // LoRA dA-like
    case_name);

}  // namespace
