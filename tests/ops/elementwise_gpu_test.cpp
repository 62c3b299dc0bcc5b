// tests/ops/elementwise_gpu_test.cpp (label gpu): CUDA add/scale/cast/accumulate against the CPU reference.
// add, scale and cast compare exactly: one correctly rounded f32 + or * on both sides (the CPU's f64 result
// rounds to the same f32, see elementwise_cpu.cpp), then identical round-to-nearest-even conversions.
// accumulate uses tol_for(out): CUDA's fma rounds out + alpha*x once in f32, the CPU rounds in f64 first.
#include "ops/elementwise.h"
#include "tests/test_util.h"

namespace {

using namespace test;

const DType kGpuFloat[] = {DType::kF32, DType::kF16, DType::kBF16};

struct ElementwiseCase {
  int64_t n;
  DType dtype;
  bool offset;  // view starts one element into its buffer: misaligned, so the kernels' scalar path runs
};

// A TestTensor of n values (+1 leading pad element when offset) and the view of the last n.
class Buf {
 public:
  Buf(Engine& eng, Device dev, const ElementwiseCase& c, DType dt)
      : off_(c.offset ? 1 : 0), t_(eng, dev, {c.n + off_}, dt) {}
  Buf(Engine& eng, Device dev, const ElementwiseCase& c, DType dt, const std::vector<double>& v)
      : Buf(eng, dev, c, dt) {
    set(v);
  }
  TensorView view() const { return t_.view().slice_rows(off_, t_.view().numel()); }
  operator TensorView() const { return view(); }  // NOLINT
  void set(const std::vector<double>& v) {
    std::vector<double> padded(size_t(off_), 1.0);
    padded.insert(padded.end(), v.begin(), v.end());
    t_.set(padded);
  }
  std::vector<double> values() const {
    std::vector<double> v = t_.values();
    v.erase(v.begin(), v.begin() + off_);
    return v;
  }
  const TestTensor& tensor() const { return t_; }

 private:
  int64_t off_;
  TestTensor t_;
};

class ElementwiseGpu : public ::testing::TestWithParam<ElementwiseCase> {};

TEST_P(ElementwiseGpu, AddAndScaleMatchCpuIncludingInPlace) {
  REQUIRE_CUDA();
  const ElementwiseCase c = GetParam();
  Engine eng;
  const float alpha = -0.3f;
  const auto av = random_normal(c.n, 31), bv = random_normal(c.n, 32, 0.05);
  auto run = [&](Device dev) {
    std::vector<std::vector<double>> r;
    Buf a(eng, dev, c, c.dtype, av), b(eng, dev, c, c.dtype, bv), out(eng, dev, c, c.dtype);
    ops::add(out, a, b, eng);
    r.push_back(out.values());
    ops::add(a, a, b, eng);  // out aliases a
    r.push_back(a.values());
    a.set(av);
    ops::add(b, a, b, eng);  // out aliases b
    r.push_back(b.values());
    ops::scale(out, a, alpha, eng);
    r.push_back(out.values());
    ops::scale(a, a, alpha, eng);  // in place
    r.push_back(a.values());
    EXPECT_GUARDS_INTACT(a.tensor());
    EXPECT_GUARDS_INTACT(b.tensor());
    EXPECT_GUARDS_INTACT(out.tensor());
    return r;
  };
  const auto want = run(Device::kCPU), got = run(Device::kCUDA);
  for (size_t k = 0; k < want.size(); ++k) {
    EXPECT_ALL_FINITE(got[k]) << "result " << k;
    EXPECT_CLOSE(got[k], want[k], (Tol{0, 0})) << "result " << k;
  }
}

TEST_P(ElementwiseGpu, CastToEveryDtypeMatchesCpu) {
  REQUIRE_CUDA();
  const ElementwiseCase c = GetParam();
  Engine eng;
  const auto xv = random_normal(c.n, 33, 100.0);  // |x| up to ~500: beyond bf16's integer steps, within f16
  for (DType to : kGpuFloat) {
    auto run = [&](Device dev) {
      Buf in(eng, dev, c, c.dtype, xv), out(eng, dev, c, to);
      ops::cast(out, in, eng);
      EXPECT_GUARDS_INTACT(out.tensor());
      return out.values();
    };
    const auto got = run(Device::kCUDA);
    EXPECT_ALL_FINITE(got);
    EXPECT_CLOSE(got, run(Device::kCPU), (Tol{0, 0})) << engine::dtype_name(c.dtype) << " -> "
                                                      << engine::dtype_name(to);
  }
  Buf x(eng, Device::kCUDA, c, c.dtype, xv);  // cast onto itself is a no-op
  const auto before = x.values();
  ops::cast(x, x, eng);
  EXPECT_CLOSE(x.values(), before, (Tol{0, 0}));
}

TEST_P(ElementwiseGpu, AccumulateIntoEveryDtypeMatchesCpuAndDoubles) {
  REQUIRE_CUDA();
  const ElementwiseCase c = GetParam();
  Engine eng;
  const float alpha = 0.7f;
  const auto xv = random_normal(c.n, 34);
  for (DType to : kGpuFloat) {
    // out starts poisoned (NaN): kSet must not read it. Returns out after kSet and after one kAdd.
    auto run = [&](Device dev) {
      Buf x(eng, dev, c, c.dtype, xv), out(eng, dev, c, to);
      ops::accumulate(out, x, alpha, ops::Accum::kSet, eng);
      const auto set = out.values();
      ops::accumulate(out, x, alpha, ops::Accum::kAdd, eng);
      EXPECT_GUARDS_INTACT(out.tensor());
      return std::make_pair(set, out.values());
    };
    const auto [set, added] = run(Device::kCUDA);
    const auto [set_ref, added_ref] = run(Device::kCPU);
    const std::string what = std::string(engine::dtype_name(to)) + " += " + engine::dtype_name(c.dtype);
    EXPECT_ALL_FINITE(set) << what;
    EXPECT_ALL_FINITE(added) << what;
    EXPECT_CLOSE(set, set_ref, tol_for(to)) << what;
    EXPECT_CLOSE(added, added_ref, tol_for(to)) << what;
    std::vector<double> twice = set;
    for (auto& v : twice) v *= 2;
    EXPECT_CLOSE(added, twice, tol_for(to)) << what;  // set then add = 2 * alpha * x
  }
}

std::string case_name(const ::testing::TestParamInfo<ElementwiseCase>& i) {
  return "n" + std::to_string(i.param.n) + "_" + engine::dtype_name(i.param.dtype) + (i.param.offset ? "_offset" : "");
}

// Odd sizes exercise the scalar tail after the 8-element vectors; 4096 x 2304 is a Gemma-2-2B activation.
INSTANTIATE_TEST_SUITE_P(
    Shapes, ElementwiseGpu,
    ::testing::Values(ElementwiseCase{1, DType::kF32, false}, ElementwiseCase{7, DType::kF16, false},
                      ElementwiseCase{4097, DType::kBF16, false}, ElementwiseCase{4097, DType::kF32, true},
                      ElementwiseCase{1003, DType::kBF16, true}, ElementwiseCase{4096 * 2304, DType::kBF16, false},
                      ElementwiseCase{4096 * 2304, DType::kF16, false},
                      ElementwiseCase{4096 * 2304, DType::kF32, false}),
    case_name);

}  // namespace
