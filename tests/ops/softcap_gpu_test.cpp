// tests/ops/softcap_gpu_test.cpp (label gpu): CUDA soft-capping vs the CPU reference.
#include "ops/softcap.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(SoftcapGpu, MatchesCpu) {
  REQUIRE_CUDA();
  Engine eng;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t n : {int64_t(1), int64_t(4099), int64_t(8) * 256000}) {
      const auto xv = random_normal(n, 3, 20.0);
      std::vector<double> want, got;
      for (Device dev : {Device::kCPU, Device::kCUDA}) {
        TestTensor x(eng, dev, {n}, dt, xv), y(eng, dev, {n}, dt);
        ops::softcap(y, x, 30.f, eng);
        (dev == Device::kCPU ? want : got) = y.values();
        EXPECT_GUARDS_INTACT(y);
      }
      EXPECT_ALL_FINITE(got);
      // tanhf (device) and std::tanh (host) can differ by an ulp of f32 before the 16-bit rounding.
      EXPECT_CLOSE(got, want, tol_for(dt)) << engine::dtype_name(dt) << " n=" << n;
    }
  }
}

}  // namespace
