// tests/ops/lora_down_gpu_test.cpp (label gpu): the CUDA fused LoRA down-projection against the CPU reference
// (sizes off the block tiles, both rank buckets, all dtypes, every offset % 8, p = 0 and p > 0, Accum set/add,
// dx optional), against the GPU composition it replaces (dropout_forward + cuBLASLt matmuls, up to the
// Gemma-2-2B shapes), the dropout mask against ops::dropout's, and bitwise run-to-run reproducibility of dA.
#include "ops/lora_down.h"
#include "ops/lora_up.h"
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct LoraDownCase {
  int64_t n, in, r;
  float p;
  uint64_t offset;  // not a multiple of 8: rows straddle Philox counters
  DType dt;
};

ops::LoraDownParams params(const LoraDownCase& c) {
  ops::LoraDownParams d;
  d.n = c.n; d.in = c.in; d.r = c.r; d.p = c.p;
  d.seed = 42; d.stream = 11; d.offset = c.offset;
  return d;
}

// f32 sums of a few thousand terms in another order than the f64 reference.
Tol tol_sum(DType dt) { return dt == DType::kF32 ? Tol{1e-4, 1e-4} : tol_for(dt); }

class LoraDownGpu : public ::testing::TestWithParam<LoraDownCase> {};

TEST_P(LoraDownGpu, MatchesCpuReference) {
  REQUIRE_CUDA();
  const LoraDownCase c = GetParam();
  const auto p = params(c);
  Engine eng;
  const auto xv = random_normal(c.n * c.in, 1), av = random_normal(c.r * c.in, 2, 0.1);
  const auto dtv = random_normal(c.n * c.r, 3), da0 = random_normal(c.r * c.in, 4), dx0 = random_normal(c.n * c.in, 5);
  struct Out { std::vector<double> t, da, dx_set, dx_add, da_nodx; };
  auto run = [&](Device dev) {
    TestTensor x(eng, dev, {c.n, c.in}, c.dt, xv), a(eng, dev, {c.r, c.in}, c.dt, av), g(eng, dev, {c.n, c.r}, c.dt, dtv);
    TestTensor t(eng, dev, {c.n, c.r}, c.dt), dx(eng, dev, {c.n, c.in}, c.dt), dxb(eng, dev, {c.n, c.in}, c.dt, dx0);
    TestTensor da(eng, dev, {c.r, c.in}, DType::kF32, da0), da2(eng, dev, {c.r, c.in}, DType::kF32, da0);
    TestTensor da3(eng, dev, {c.r, c.in}, DType::kF32, da0);
    TestTensor ws(eng, dev, {ops::lora_down_workspace_elems(c.n, c.in, c.r)}, DType::kF32);
    Out o;
    ops::lora_down_forward(t, x, a, p, eng);
    ops::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, ws, p, eng);
    ops::lora_down_backward(da2, dxb, ops::Accum::kAdd, g, x, a, ws, p, eng);
    ops::lora_down_backward(da3, TensorView{}, ops::Accum::kSet, g, x, a, ws, p, eng);
    o.t = t.values(); o.da = da.values(); o.dx_set = dx.values(); o.dx_add = dxb.values(); o.da_nodx = da3.values();
    EXPECT_GUARDS_INTACT(t); EXPECT_GUARDS_INTACT(dx); EXPECT_GUARDS_INTACT(dxb); EXPECT_GUARDS_INTACT(da);
    EXPECT_GUARDS_INTACT(ws);
    EXPECT_CLOSE(da2.values(), o.da, (Tol{0, 0}));  // dA does not depend on dx's mode
    return o;
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.t); EXPECT_ALL_FINITE(got.da); EXPECT_ALL_FINITE(got.dx_set);
  EXPECT_CLOSE(got.t, ref.t, tol_sum(c.dt));
  EXPECT_CLOSE(got.da, ref.da, (Tol{1e-4, 1e-4}));
  EXPECT_CLOSE(got.da_nodx, got.da, (Tol{0, 0}));
  EXPECT_CLOSE(got.dx_set, ref.dx_set, tol_for(c.dt));
  EXPECT_CLOSE(got.dx_add, ref.dx_add, tol_for(c.dt));
  for (size_t i = 0; i < ref.dx_set.size(); ++i)  // the same elements dropped
    ASSERT_EQ(got.dx_set[i] == 0.0, ref.dx_set[i] == 0.0) << "element " << i;
}

std::string case_name(const ::testing::TestParamInfo<LoraDownCase>& i) {
  return "n" + std::to_string(i.param.n) + "_in" + std::to_string(i.param.in) + "_r" + std::to_string(i.param.r) +
         "_p" + std::to_string(int(i.param.p * 100)) + "_off" + std::to_string(i.param.offset) + "_" +
         engine::dtype_name(i.param.dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LoraDownGpu,
    ::testing::Values(LoraDownCase{7, 8, 1, 0.3f, 3, DType::kF32}, LoraDownCase{7, 16, 5, 0.f, 0, DType::kF32},
                      LoraDownCase{9, 24, 16, 0.3f, 1, DType::kF32}, LoraDownCase{33, 72, 13, 0.1f, 2, DType::kBF16},
                      LoraDownCase{33, 264, 3, 0.1f, 6, DType::kF16}, LoraDownCase{130, 520, 16, 0.5f, 5, DType::kBF16},
                      LoraDownCase{65, 136, 16, 0.f, 4, DType::kF16}, LoraDownCase{40, 48, 2, 0.2f, 4, DType::kBF16}, LoraDownCase{1, 2304, 4, 0.1f, 0, DType::kBF16},
                      // Gemma-2-2B: 512 tokens x D = 2304 (q/k/v/o/gate/up input), and x I = 9216 (down input)
                      LoraDownCase{512, 2304, 4, 0.1f, 0, DType::kBF16},
                      LoraDownCase{512, 2304, 16, 0.1f, 1ull << 32, DType::kBF16},
                      LoraDownCase{512, 2048, 8, 0.05f, 2, DType::kF16},
                      LoraDownCase{128, 9216, 4, 0.1f, 7, DType::kBF16},
                      LoraDownCase{200, 2304, 8, 0.1f, 0, DType::kF32}),
    case_name);

// The fused op against the unfused GPU path of lora_linear (dropout_forward + cuBLASLt), at 2B shapes too
// large for the CPU reference, and dA bitwise reproducible.
struct BigCase {
  int64_t n, in, r;
};
class LoraDownGpuBig : public ::testing::TestWithParam<BigCase> {};

TEST_P(LoraDownGpuBig, MatchesDropoutPlusCublasAndIsDeterministic) {
  REQUIRE_CUDA();
  const BigCase bc = GetParam();
  const LoraDownCase c{bc.n, bc.in, bc.r, 0.1f, 0, DType::kBF16};
  const auto p = params(c);
  Engine eng;
  const Device d = Device::kCUDA;
  TestTensor x(eng, d, {c.n, c.in}, c.dt, random_normal(c.n * c.in, 1));
  TestTensor a(eng, d, {c.r, c.in}, c.dt, random_normal(c.r * c.in, 2, 0.05));
  TestTensor g(eng, d, {c.n, c.r}, c.dt, random_normal(c.n * c.r, 3, 0.05));
  const std::vector<double> zeros_a(size_t(c.r * c.in), 0.0);
  TestTensor t(eng, d, {c.n, c.r}, c.dt), tr(eng, d, {c.n, c.r}, c.dt), xd(eng, d, {c.n, c.in}, c.dt);
  TestTensor da(eng, d, {c.r, c.in}, DType::kF32, zeros_a), da2(eng, d, {c.r, c.in}, DType::kF32, zeros_a);
  TestTensor dar(eng, d, {c.r, c.in}, DType::kF32, zeros_a);
  TestTensor dx(eng, d, {c.n, c.in}, c.dt), dxr(eng, d, {c.n, c.in}, c.dt), dxa(eng, d, {c.n, c.in}, c.dt);
  TestTensor ws(eng, d, {ops::lora_down_workspace_elems(c.n, c.in, c.r)}, DType::kF32);
  ops::lora_down_forward(t, x, a, p, eng);
  ops::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, ws, p, eng);
  ops::lora_down_backward(da2, TensorView{}, ops::Accum::kSet, g, x, a, ws, p, eng);
  // Unfused: as autograd::lora_linear did before this op.
  const ops::DropoutParams dp = ops::lora_down_dropout(p);
  ops::dropout_forward(xd, x, dp, eng);
  ops::MatmulParams mt; mt.m = c.n; mt.n = c.r; mt.k = c.in; mt.trans_b = true;
  ops::matmul(tr, xd, a, mt, eng);
  ops::MatmulParams ma; ma.m = c.r; ma.n = c.in; ma.k = c.n; ma.trans_a = true; ma.beta = 1.f;
  ops::matmul(dar, g, xd, ma, eng);
  ops::MatmulParams mx; mx.m = c.n; mx.n = c.in; mx.k = c.r;
  ops::matmul(dxa, g, a, mx, eng);
  ops::dropout_backward(dxr, ops::Accum::kSet, dxa, dp, eng);
  // t against f64 sums of the same dropout(x) and A: cuBLASLt may reduce K = 9216 in split-K partials stored
  // in bf16 (its result can be off by more than 2 ulps), so it is not the reference for t.
  const auto xdv = xd.values(), av = a.values(), tv = t.values();
  std::vector<double> t64(size_t(c.n * c.r), 0.0);
  for (int64_t m = 0; m < c.n; ++m)
    for (int64_t j = 0; j < c.r; ++j) {
      double s = 0;
      for (int64_t k = 0; k < c.in; ++k) s += xdv[size_t(m * c.in + k)] * av[size_t(j * c.in + k)];
      t64[size_t(m * c.r + j)] = s;
    }
  EXPECT_CLOSE(tv, t64, tol_for(c.dt));
  EXPECT_CLOSE(da.values(), dar.values(), (Tol{1e-4, 1e-3}));
  const auto dxv = dx.values(), dxrv = dxr.values();
  EXPECT_CLOSE(dxv, dxrv, tol_for(c.dt));
  // The mask is ops::dropout's: dropout of all-ones marks the dropped elements, and exactly those are dx's
  // forced zeros (a kept element's dx may also round to 0, so only dropped => 0 is checked).
  TestTensor ones(eng, d, {c.n, c.in}, c.dt, std::vector<double>(size_t(c.n * c.in), 1.0));
  TestTensor mask(eng, d, {c.n, c.in}, c.dt);
  ops::dropout_forward(mask, ones, dp, eng);
  const auto mv = mask.values();
  int64_t dropped = 0, dropped_nonzero = 0;
  for (size_t i = 0; i < dxv.size(); ++i)
    if (mv[i] == 0.0) {
      ++dropped;
      dropped_nonzero += dxv[i] != 0.0;
    }
  EXPECT_EQ(dropped_nonzero, 0);
  EXPECT_NEAR(double(dropped) / double(dxv.size()), 0.1, 0.01);
  // The same dA bits from a second launch (here the dx-less kernel, which sums dA identically): fixed-order
  // sums, no atomics.
  EXPECT_CLOSE(da2.values(), da.values(), (Tol{0, 0}));
}

INSTANTIATE_TEST_SUITE_P(Gemma2B, LoraDownGpuBig,
                         ::testing::Values(BigCase{4096, 2304, 4}, BigCase{4096, 2304, 16}, BigCase{4096, 9216, 16},
                                           BigCase{8192, 2304, 4}, BigCase{512, 9216, 4}),
                         [](const ::testing::TestParamInfo<BigCase>& i) {
                           return "n" + std::to_string(i.param.n) + "_in" + std::to_string(i.param.in) + "_r" +
                                  std::to_string(i.param.r);
                         });

// The forward's up epilogue (y += s t B^T in the same launch) gives the bits of lora_down_forward followed by
// lora_up_forward, on the GPU, and matches the CPU reference.
struct UpCase {
  int64_t n, in, out, r;
  float p;
  uint64_t offset;
  DType dt;
};

class LoraDownUpGpu : public ::testing::TestWithParam<UpCase> {};

TEST_P(LoraDownUpGpu, EqualsDownThenUp) {
  REQUIRE_CUDA();
  const UpCase c = GetParam();
  ops::LoraDownParams p = params({c.n, c.in, c.r, c.p, c.offset, c.dt});
  Engine eng;
  const auto xv = random_normal(c.n * c.in, 1), av = random_normal(c.r * c.in, 2, 0.1);
  const auto bv = random_normal(c.out * c.r, 3, 0.1), yv = random_normal(c.n * c.out, 4);
  struct Out { std::vector<double> t, y, t2, y2; };
  auto run = [&](Device dev) {
    TestTensor x(eng, dev, {c.n, c.in}, c.dt, xv), a(eng, dev, {c.r, c.in}, c.dt, av), b(eng, dev, {c.out, c.r}, c.dt, bv);
    TestTensor t(eng, dev, {c.n, c.r}, c.dt), y(eng, dev, {c.n, c.out}, c.dt, yv);
    TestTensor t2(eng, dev, {c.n, c.r}, c.dt), y2(eng, dev, {c.n, c.out}, c.dt, yv);
    const ops::LoraUpEpilogue up{y, b, c.out, 0.75f};
    ops::lora_down_forward(t, x, a, p, eng, &up);
    ops::lora_down_forward(t2, x, a, p, eng);
    ops::lora_up_forward(y2, t2, b, {c.n, c.out, c.r, 0.75f}, eng);
    EXPECT_GUARDS_INTACT(t); EXPECT_GUARDS_INTACT(y);
    return Out{t.values(), y.values(), t2.values(), y2.values()};
  };
  const Out got = run(Device::kCUDA), ref = run(Device::kCPU);
  EXPECT_CLOSE(got.t, got.t2, (Tol{0, 0}));
  EXPECT_CLOSE(got.y, got.y2, (Tol{0, 0}));
  EXPECT_CLOSE(got.t, ref.t, tol_sum(c.dt));
  EXPECT_CLOSE(got.y, ref.y, tol_sum(c.dt));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LoraDownUpGpu,
    ::testing::Values(UpCase{7, 16, 8, 4, 0.3f, 3, DType::kF32}, UpCase{33, 72, 264, 4, 0.1f, 0, DType::kBF16},
                      UpCase{65, 136, 520, 16, 0.0f, 5, DType::kF16}, UpCase{40, 48, 1032, 16, 0.2f, 0, DType::kBF16},
                      // Gemma-2-2B at 512 tokens: q_proj (warps per row 8) and down_proj; 4096 tokens: gate_proj
                      UpCase{512, 2304, 2048, 4, 0.1f, 0, DType::kBF16}, UpCase{512, 9216, 2304, 4, 0.05f, 0, DType::kF16},
                      UpCase{4096, 2304, 9216, 4, 0.1f, 0, DType::kBF16}),
    [](const ::testing::TestParamInfo<UpCase>& i) {
      return "n" + std::to_string(i.param.n) + "_in" + std::to_string(i.param.in) + "_out" +
             std::to_string(i.param.out) + "_r" + std::to_string(i.param.r) + "_" + engine::dtype_name(i.param.dt);
    });

TEST(LoraDownGpuErrors, RejectsBadWorkspaceShapesAndF64) {
  REQUIRE_CUDA();
  Engine eng;
  const Device d = Device::kCUDA;
  const LoraDownCase c{8, 40, 4, 0.1f, 0, DType::kF32};
  const auto p = params(c);
  TestTensor x(eng, d, {8, 40}, DType::kF32, random_normal(320, 1)), a(eng, d, {4, 40}, DType::kF32, random_normal(160, 2));
  TestTensor g(eng, d, {8, 4}, DType::kF32, random_normal(32, 3)), da(eng, d, {4, 40}, DType::kF32, random_normal(160, 4));
  TestTensor small(eng, d, {ops::lora_down_workspace_elems(8, 40, 4) - 1}, DType::kF32);
  TestTensor ws16(eng, d, {ops::lora_down_workspace_elems(8, 40, 4)}, DType::kBF16);
  EXPECT_THROW(ops::cuda::lora_down_backward(da, TensorView{}, ops::Accum::kSet, g, x, a, TensorView{}, p, eng.stream()), engine::Error);
  EXPECT_THROW(ops::cuda::lora_down_backward(da, TensorView{}, ops::Accum::kSet, g, x, a, small, p, eng.stream()), engine::Error);
  EXPECT_THROW(ops::cuda::lora_down_backward(da, TensorView{}, ops::Accum::kSet, g, x, a, ws16, p, eng.stream()), engine::Error);
  TestTensor x64(eng, d, {8, 40}, DType::kF64, random_normal(320, 1)), a64(eng, d, {4, 40}, DType::kF64, random_normal(160, 2));
  TestTensor t64(eng, d, {8, 4}, DType::kF64);
  EXPECT_THROW(ops::cuda::lora_down_forward(t64, x64, a64, p, eng.stream()), engine::Error);
  // in % 8 != 0 and misaligned rows are the caller's to avoid (lora_down_fusable): refused, not computed.
  TestTensor x36(eng, d, {8, 36}, DType::kF32, random_normal(288, 1)), a36(eng, d, {4, 36}, DType::kF32, random_normal(144, 2));
  TestTensor t(eng, d, {8, 4}, DType::kF32);
  ops::LoraDownParams p36 = p;
  p36.in = 36;
  EXPECT_THROW(ops::cuda::lora_down_forward(t, x36, a36, p36, eng.stream()), engine::Error);
  TestTensor xbig(eng, d, {8 * 40 + 1}, DType::kF32, random_normal(321, 1));
  TensorView xoff = f32_at(xbig, 1, 320);
  xoff.shape = {8, 40};
  EXPECT_THROW(ops::cuda::lora_down_forward(t, xoff, a, p, eng.stream()), engine::Error);
  EXPECT_NO_THROW(ops::cuda::lora_down_forward(t, x, a, p, eng.stream()));
  // The up epilogue on CUDA: r = 4 or 16 only (r = 2 here), y's shape checked.
  TestTensor t2(eng, d, {8, 2}, DType::kF32), a2(eng, d, {2, 40}, DType::kF32, random_normal(80, 2));
  TestTensor y(eng, d, {8, 16}, DType::kF32), b2(eng, d, {16, 2}, DType::kF32, random_normal(32, 3));
  TestTensor b4(eng, d, {16, 4}, DType::kF32, random_normal(64, 3)), y15(eng, d, {8, 15}, DType::kF32);
  ops::LoraDownParams p2 = p;
  p2.r = 2;
  const ops::LoraUpEpilogue up2{y, b2, 16, 1.f}, up4{y, b4, 16, 1.f}, bad{y15, b4, 16, 1.f};
  EXPECT_THROW(ops::cuda::lora_down_forward(t2, x, a2, p2, eng.stream(), &up2), engine::Error);
  EXPECT_THROW(ops::cuda::lora_down_forward(t, x, a, p, eng.stream(), &bad), engine::Error);
  EXPECT_NO_THROW(ops::cuda::lora_down_forward(t, x, a, p, eng.stream(), &up4));
}

}  // namespace
