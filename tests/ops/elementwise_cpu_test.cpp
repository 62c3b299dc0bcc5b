// tests/ops/elementwise_cpu_test.cpp (label cpu): the CPU reference add/scale/cast/accumulate against hand
// formulas (one rounding to out's dtype), in-place aliasing, accumulation, and the preconditions.
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace {

using namespace test;

const DType kAllFloat[] = {DType::kF32, DType::kF16, DType::kBF16, DType::kF64};

TEST(ElementwiseCpu, AddRoundsOnceAndMayAliasEitherInput) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 37;
  const auto av = random_normal(n, 1), bv = random_normal(n, 2, 0.01);  // small b: the sum needs rounding
  TestTensor a(eng, Device::kCPU, {n}, DType::kBF16, av), b(eng, Device::kCPU, {n}, DType::kBF16, bv);
  const auto ar = a.values(), br = b.values();
  std::vector<double> want(n), twice(n);
  for (int64_t i = 0; i < n; ++i) {
    want[i] = engine::round_to(DType::kBF16, ar[i] + br[i]);
    twice[i] = engine::round_to(DType::kBF16, want[i] + want[i]);
  }
  TestTensor out(eng, Device::kCPU, {n}, DType::kBF16);
  ops::cpu::add(out, a, b);
  EXPECT_CLOSE(out.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
  ops::cpu::add(a, a, b);  // out aliases a
  EXPECT_CLOSE(a.values(), want, (Tol{0, 0}));
  a.set(av);
  ops::cpu::add(b, a, b);  // out aliases b
  EXPECT_CLOSE(b.values(), want, (Tol{0, 0}));
  ops::cpu::add(b, b, b);  // all three alias
  EXPECT_CLOSE(b.values(), twice, (Tol{0, 0}));
}

TEST(ElementwiseCpu, ScaleInPlaceAndOutOfPlace) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 23;
  const float alpha = 0.37f;
  TestTensor x(eng, Device::kCPU, {n}, DType::kF16, random_normal(n, 3));
  const auto xv = x.values();
  std::vector<double> want(n);
  for (int64_t i = 0; i < n; ++i) want[i] = engine::round_to(DType::kF16, double(alpha) * xv[i]);
  TestTensor out(eng, Device::kCPU, {n}, DType::kF16);
  ops::cpu::scale(out, x, alpha);
  EXPECT_CLOSE(out.values(), want, (Tol{0, 0}));
  ops::cpu::scale(x, x, alpha);
  EXPECT_CLOSE(x.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
  EXPECT_GUARDS_INTACT(x);
}

TEST(ElementwiseCpu, CastEveryDtypePair) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 29;
  for (DType from : kAllFloat)
    for (DType to : kAllFloat) {
      // Scale 300: some values exceed bf16/f16 precision steps of 1 and more; none overflow f16 (65504).
      TestTensor in(eng, Device::kCPU, {n}, from, random_normal(n, 4, 300.0));
      TestTensor out(eng, Device::kCPU, {n}, to);
      ops::cpu::cast(out, in);
      std::vector<double> want = in.values();
      for (auto& v : want) v = engine::round_to(to, v);
      EXPECT_CLOSE(out.values(), want, (Tol{0, 0})) << engine::dtype_name(from) << " -> " << engine::dtype_name(to);
      EXPECT_GUARDS_INTACT(out);
    }
}

TEST(ElementwiseCpu, AccumulateSetIgnoresOldOutAndAddAdds) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 31;
  const float alpha = -1.5f;
  TestTensor x(eng, Device::kCPU, {n}, DType::kBF16, random_normal(n, 5));
  TestTensor out(eng, Device::kCPU, {n}, DType::kF32);  // poisoned with NaN: kSet must not read it
  ops::cpu::accumulate(out, x, alpha, ops::Accum::kSet);
  const auto xv = x.values();
  std::vector<double> set(n), added(n);
  for (int64_t i = 0; i < n; ++i) {
    set[i] = engine::round_to(DType::kF32, double(alpha) * xv[i]);
    added[i] = engine::round_to(DType::kF32, set[i] + double(alpha) * xv[i]);
  }
  EXPECT_ALL_FINITE(out.values());
  EXPECT_CLOSE(out.values(), set, (Tol{0, 0}));
  ops::cpu::accumulate(out, x, alpha, ops::Accum::kAdd);  // f32 gradient buffer += bf16 contribution
  EXPECT_CLOSE(out.values(), added, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out);
}

TEST(ElementwiseCpu, AccumulateTwiceDoubles) {
  Engine eng({engine::Backend::kCPU});
  const int64_t n = 17;
  TestTensor x(eng, Device::kCPU, {n}, DType::kF64, random_normal(n, 6));
  TestTensor out(eng, Device::kCPU, {n}, DType::kF64);
  ops::cpu::accumulate(out, x, 0.25f, ops::Accum::kSet);
  std::vector<double> twice = out.values();
  for (auto& v : twice) v *= 2;
  ops::cpu::accumulate(out, x, 0.25f, ops::Accum::kAdd);
  EXPECT_CLOSE(out.values(), twice, tol_for(DType::kF64));
}

TEST(ElementwiseCpu, RejectsMismatchesAndPartialOverlap) {
  Engine eng({engine::Backend::kCPU});
  TestTensor a(eng, Device::kCPU, {10}, DType::kF32, random_normal(10, 7));
  TestTensor b(eng, Device::kCPU, {9}, DType::kF32, random_normal(9, 8));
  TestTensor h(eng, Device::kCPU, {10}, DType::kF16, random_normal(10, 9));
  TestTensor ids(eng, Device::kCPU, {10}, DType::kI32, std::vector<double>(10, 1.0));
  EXPECT_THROW(ops::cpu::add(a, a, b), engine::Error);      // element counts
  EXPECT_THROW(ops::cpu::add(a, a, h), engine::Error);      // add needs one dtype
  EXPECT_THROW(ops::cpu::scale(h, a, 2.f), engine::Error);  // scale needs one dtype
  EXPECT_THROW(ops::cpu::cast(a, ids), engine::Error);      // not a float dtype
  const TensorView lo = a.view().slice_rows(0, 8), hi = a.view().slice_rows(1, 9);
  EXPECT_THROW(ops::cpu::add(lo, hi, hi), engine::Error);   // shifted by one element
  TensorView as_f16 = a.view().slice_rows(0, 5);            // same first byte, other dtype
  as_f16.dtype = DType::kF16;
  as_f16.shape = {10};
  EXPECT_THROW(ops::cpu::cast(as_f16, a), engine::Error);
  EXPECT_NO_THROW(ops::cpu::cast(a, h));                    // disjoint buffers, any dtypes
}

}  // namespace
