// tests/ops/random_fill_gpu_test.cpp (label gpu): the device fill against the CPU reference. Only the
// logf/cosf/sqrtf ulp of engine/philox.h may differ, so most elements are bit-identical and the rest are
// within a few f32 ulps (one storage ulp for f16/bf16).
#include <cmath>
#include <cstdio>

#include "ops/random_fill.h"
#include "tests/test_util.h"

namespace {

using namespace test;

TEST(RandomFillGpu, MatchesCpuUpToTheLibmUlp) {
  REQUIRE_CUDA();
  Engine eng;
  // 1 element; an odd size; more than the grid covers in one pass (grid-stride loop); odd offset.
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t n : {int64_t(1), int64_t(4099), int64_t(3000017)}) {
      const ops::RandomFillParams p{11, 5, 3, 0.02};
      std::vector<double> want, got;
      for (Device dev : {Device::kCPU, Device::kCUDA}) {
        TestTensor t(eng, dev, {n}, dt);
        ops::random_normal_fill(t, p, eng);
        (dev == Device::kCPU ? want : got) = t.values();
        EXPECT_GUARDS_INTACT(t);
      }
      EXPECT_ALL_FINITE(got);
      // f32: a few ulps (2^-23 relative each); 16-bit types: one ulp of the storage format.
      const double rtol = dt == DType::kF32 ? 8 * std::ldexp(1.0, -23) : dt == DType::kF16 ? std::ldexp(1.0, -10)
                                                                                          : std::ldexp(1.0, -7);
      EXPECT_CLOSE(got, want, (Tol{1e-30, rtol})) << engine::dtype_name(dt) << " n=" << n;
      int64_t same = 0;
      for (size_t i = 0; i < got.size(); ++i) same += got[i] == want[i];
      // Mostly bit-identical: the f32 floor is loose (how often device logf/cosf round differently from
      // glibc is not documented), the 16-bit one tight (an f32 ulp rarely crosses a 16-bit rounding boundary).
      const double min_frac = dt == DType::kF32 ? 0.5 : 0.99;
      EXPECT_GE(double(same), min_frac * double(n)) << engine::dtype_name(dt) << " n=" << n;
      std::printf("[   INFO   ] %s n=%lld: %.4f%% bit-identical to the CPU fill\n", engine::dtype_name(dt),
                  (long long)n, 100.0 * double(same) / double(n));
    }
  }
}

TEST(RandomFillGpu, PiecewiseFillEqualsOneFill) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t n = 100003;
  TestTensor whole(eng, Device::kCUDA, {n}, DType::kBF16), parts(eng, Device::kCUDA, {n}, DType::kBF16);
  ops::random_normal_fill(whole, {9, 2, 0, 1.0}, eng);
  ops::random_normal_fill(parts.view().slice_rows(0, 777), {9, 2, 0, 1.0}, eng);
  ops::random_normal_fill(parts.view().slice_rows(777, n), {9, 2, 777, 1.0}, eng);
  EXPECT_EQ(parts.values(), whole.values());  // same device math: exact
}

TEST(RandomFillGpu, RejectsF64AndBadStd) {
  REQUIRE_CUDA();
  Engine eng;
  TestTensor f64(eng, Device::kCUDA, {4}, DType::kF64), f(eng, Device::kCUDA, {4}, DType::kF32);
  EXPECT_THROW(ops::random_normal_fill(f64, {}, eng), engine::Error);
  EXPECT_THROW(ops::random_normal_fill(f, {0, 0, 0, -0.5}, eng), engine::Error);
  EXPECT_GUARDS_INTACT(f);
}

}  // namespace
