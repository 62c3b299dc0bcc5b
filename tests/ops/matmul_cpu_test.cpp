// tests/ops/matmul_cpu_test.cpp (label cpu): the reference GEMM against an independent triple loop,
// for every transpose combination, batching with broadcast, and beta accumulation.
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// want(i,j) = alpha * sum_k opA(i,k) opB(k,j) + beta * c0(i,j)
std::vector<double> naive(const std::vector<double>& a, const std::vector<double>& b, const std::vector<double>& c0,
                          const ops::MatmulParams& p, int64_t sa, int64_t sb) {
  std::vector<double> out(p.batch * p.m * p.n);
  for (int64_t z = 0; z < p.batch; ++z)
    for (int64_t i = 0; i < p.m; ++i)
      for (int64_t j = 0; j < p.n; ++j) {
        double s = 0;
        for (int64_t k = 0; k < p.k; ++k) {
          const double av = a[z * sa + (p.trans_a ? k * p.m + i : i * p.k + k)];
          const double bv = b[z * sb + (p.trans_b ? j * p.k + k : k * p.n + j)];
          s += av * bv;
        }
        const int64_t ci = (z * p.m + i) * p.n + j;
        out[ci] = p.alpha * s + p.beta * c0[ci];
      }
  return out;
}

TEST(MatmulCpu, AllTransposesBatchedWithBeta) {
  Engine eng({engine::Backend::kCPU});
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      const int64_t B = 3, m = 5, n = 7, k = 9;
      ops::MatmulParams p;
      p.m = m; p.n = n; p.k = k; p.trans_a = ta; p.trans_b = tb; p.batch = B; p.alpha = 0.5f; p.beta = 1.f;
      p.stride_b = 0;  // B broadcast over the batch
      const auto av = random_normal(B * m * k, 1), bv = random_normal(k * n, 2), cv = random_normal(B * m * n, 3);
      TestTensor a(eng, Device::kCPU, {B * m * k}, DType::kF64, av), b(eng, Device::kCPU, {k * n}, DType::kF64, bv);
      TestTensor c(eng, Device::kCPU, {B * m * n}, DType::kF64, cv);
      ops::cpu::matmul(c, a, b, p);
      EXPECT_CLOSE(c.values(), naive(av, bv, cv, p, m * k, 0), tol_for(DType::kF64)) << "ta=" << ta << " tb=" << tb;
      EXPECT_GUARDS_INTACT(c);
    }
}

TEST(MatmulCpu, ShapeInferenceAndErrors) {
  Engine eng({engine::Backend::kCPU});
  TestTensor a(eng, Device::kCPU, {4, 6}, DType::kF32, random_normal(24, 4));
  TestTensor b(eng, Device::kCPU, {5, 6}, DType::kF32, random_normal(30, 5));
  TestTensor c(eng, Device::kCPU, {4, 5}, DType::kF32);
  const auto p = ops::matmul_params(c, a, b, false, true);
  EXPECT_EQ(p.m, 4); EXPECT_EQ(p.n, 5); EXPECT_EQ(p.k, 6);
  ops::matmul(c, a, b, p, eng);
  EXPECT_ALL_FINITE(c.values());
  TestTensor bad(eng, Device::kCPU, {5, 6}, DType::kBF16, random_normal(30, 6));
  EXPECT_THROW(ops::matmul(c, a, bad, p, eng), engine::Error);  // dtype mismatch
  ops::MatmulParams big = p;
  big.k = 7;
  EXPECT_THROW(ops::matmul(c, a, b, big, eng), engine::Error);  // A too small
}

}  // namespace
