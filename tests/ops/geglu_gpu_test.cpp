// tests/ops/geglu_gpu_test.cpp (label gpu): CUDA GeGLU forward/backward against the CPU reference, with gate and
// up as separate dense tensors and as the two halves of one fused (N, 2F) gate_up tensor.
#include "ops/geglu.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct GegluCase {
  int64_t rows, cols;
  bool fused;
  DType dtype;
};

class GegluGpu : public ::testing::TestWithParam<GegluCase> {};

TEST_P(GegluGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const auto [N, F, fused, dt] = GetParam();
  Engine eng;
  // Gate values out to +-4.5 sigma exercise both tails of the tanh; the input holds gate and up.
  const auto inv = random_normal(2 * N * F, 21, 1.5), dv = random_normal(N * F, 22);
  struct Out { std::vector<double> out, dgrad, dgrad2; };  // dgrad: d(gate,up), in the input's layout
  auto run = [&](Device dev) {
    Out o;
    TestTensor dout(eng, dev, {N, F}, dt, dv), out(eng, dev, {N, F}, dt);
    // Fused: one (N, 2F) tensor. Dense: one (2, N, F) tensor whose two halves are gate and up.
    TestTensor in(eng, dev, fused ? Shape{N, 2 * F} : Shape{2, N, F}, dt, inv);
    TestTensor din(eng, dev, fused ? Shape{N, 2 * F} : Shape{2, N, F}, dt);
    TensorView gate, up, dgate, dup;
    ops::GegluParams p{N, F};
    if (fused) {
      p = ops::geglu_fused_params(in);
      gate = ops::geglu_fused_part(in, 0), up = ops::geglu_fused_part(in, 1);
      dgate = ops::geglu_fused_part(din, 0), dup = ops::geglu_fused_part(din, 1);
    } else {
      const TensorView i2 = in.view().reshape({2 * N, F}), d2 = din.view().reshape({2 * N, F});
      gate = i2.slice_rows(0, N), up = i2.slice_rows(N, 2 * N);
      dgate = d2.slice_rows(0, N), dup = d2.slice_rows(N, 2 * N);
    }
    ops::geglu_forward(out, gate, up, p, eng);
    ops::geglu_backward(dgate, ops::Accum::kSet, dup, ops::Accum::kSet, dout, gate, up, p, eng);
    o.out = out.values(); o.dgrad = din.values();
    ops::geglu_backward(dgate, ops::Accum::kAdd, dup, ops::Accum::kAdd, dout, gate, up, p, eng);
    o.dgrad2 = din.values();
    EXPECT_GUARDS_INTACT(out); EXPECT_GUARDS_INTACT(din);
    return o;
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.out); EXPECT_ALL_FINITE(got.dgrad); EXPECT_ALL_FINITE(got.dgrad2);
  // CUDA computes gelu in f32 (tanhf), the CPU in f64: the rounded activation can differ by one ulp of the
  // dtype at a rounding boundary, within tol_for's two ulps (f32: a few f32 ulps).
  EXPECT_CLOSE(got.out, ref.out, tol_for(dt));
  EXPECT_CLOSE(got.dgrad, ref.dgrad, tol_for(dt));
  EXPECT_CLOSE(got.dgrad2, ref.dgrad2, tol_for(dt));
  std::vector<double> twice = got.dgrad;
  for (auto& v : twice) v *= 2;
  EXPECT_CLOSE(got.dgrad2, twice, tol_for(dt));  // kAdd on both gradients doubles them
}

std::string case_name(const ::testing::TestParamInfo<GegluCase>& i) {
  return "r" + std::to_string(i.param.rows) + "_c" + std::to_string(i.param.cols) +
         (i.param.fused ? "_fused_" : "_dense_") + engine::dtype_name(i.param.dtype);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, GegluGpu,
    ::testing::Values(GegluCase{1, 8, false, DType::kF32}, GegluCase{3, 5, false, DType::kF32},
                      GegluCase{7, 45, true, DType::kF32},    // up at +45 elements: unaligned, scalar path
                      GegluCase{5, 33, true, DType::kF16}, GegluCase{4, 40, false, DType::kBF16},
                      GegluCase{17, 24, true, DType::kBF16},  // fused, vector path
                      GegluCase{256, 9216, true, DType::kBF16},  // Gemma-2-2B MLP, fused gate_up
                      GegluCase{256, 9216, true, DType::kF16}, GegluCase{256, 9216, false, DType::kBF16},
                      GegluCase{128, 9216, true, DType::kF32}),
    case_name);

}  // namespace
