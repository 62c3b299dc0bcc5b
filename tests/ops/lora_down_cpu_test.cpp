// tests/ops/lora_down_cpu_test.cpp (label cpu): the fused LoRA down-projection reference against the
// composition it replaces (ops::cpu dropout + matmul), f64 finite differences, Accum set/add, dA accumulation,
// odd sizes and every rank up to the limit, and the preconditions.
#include "ops/lora_down.h"
#include "ops/lora_up.h"
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

ops::LoraDownParams params(int64_t n, int64_t in, int64_t r, float p, uint64_t offset = 5) {
  ops::LoraDownParams d;
  d.n = n; d.in = in; d.r = r; d.p = p;
  d.seed = 77; d.stream = 9; d.offset = offset;
  return d;
}

struct Unfused {
  std::vector<double> t, da, dx_set, dx_add;
};

// The unfused path of autograd::lora_linear: dropout_forward -> matmul (t); matmul (dA += dt^T xd);
// matmul (dxa = dt A) -> dropout_backward (dx).
Unfused unfused(Engine& eng, DType dt, const ops::LoraDownParams& p, const std::vector<double>& xv,
                const std::vector<double>& av, const std::vector<double>& dtv, const std::vector<double>& da0,
                const std::vector<double>& dx0) {
  const Device c = Device::kCPU;
  TestTensor x(eng, c, {p.n, p.in}, dt, xv), a(eng, c, {p.r, p.in}, dt, av), g(eng, c, {p.n, p.r}, dt, dtv);
  TestTensor xd(eng, c, {p.n, p.in}, dt), t(eng, c, {p.n, p.r}, dt), da(eng, c, {p.r, p.in}, DType::kF32, da0);
  TestTensor dxa(eng, c, {p.n, p.in}, dt), dx(eng, c, {p.n, p.in}, dt), dxb(eng, c, {p.n, p.in}, dt, dx0);
  ops::cpu::dropout_forward(xd, x, ops::lora_down_dropout(p));
  ops::MatmulParams mt; mt.m = p.n; mt.n = p.r; mt.k = p.in; mt.trans_b = true;
  ops::cpu::matmul(t, xd, a, mt);
  ops::MatmulParams ma; ma.m = p.r; ma.n = p.in; ma.k = p.n; ma.trans_a = true; ma.beta = 1.f;
  ops::cpu::matmul(da, g, xd, ma);
  ops::MatmulParams mx; mx.m = p.n; mx.n = p.in; mx.k = p.r;
  ops::cpu::matmul(dxa, g, a, mx);
  ops::cpu::dropout_backward(dx, ops::Accum::kSet, dxa, ops::lora_down_dropout(p));
  ops::cpu::dropout_backward(dxb, ops::Accum::kAdd, dxa, ops::lora_down_dropout(p));
  return {t.values(), da.values(), dx.values(), dxb.values()};
}

void check_against_unfused(DType dt, int64_t n, int64_t in, int64_t r, float pd) {
  SCOPED_TRACE(std::string(engine::dtype_name(dt)) + " n=" + std::to_string(n) + " in=" + std::to_string(in) +
               " r=" + std::to_string(r) + " p=" + std::to_string(pd));
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const auto p = params(n, in, r, pd);
  const auto xv = random_normal(n * in, 1), av = random_normal(r * in, 2, 0.2), dtv = random_normal(n * r, 3);
  const auto da0 = random_normal(r * in, 4), dx0 = random_normal(n * in, 5);
  const Unfused ref = unfused(eng, dt, p, xv, av, dtv, da0, dx0);
  TestTensor x(eng, c, {n, in}, dt, xv), a(eng, c, {r, in}, dt, av), g(eng, c, {n, r}, dt, dtv);
  TestTensor t(eng, c, {n, r}, dt), da(eng, c, {r, in}, DType::kF32, da0), dx(eng, c, {n, in}, dt);
  TestTensor dxb(eng, c, {n, in}, dt, dx0), da2(eng, c, {r, in}, DType::kF32, da0);
  ops::cpu::lora_down_forward(t, x, a, p);
  ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, p);
  ops::cpu::lora_down_backward(da2, dxb, ops::Accum::kAdd, g, x, a, p);
  // Same rounding points as the composition, except dx with Accum::kAdd: the fused op rounds v to the dtype
  // before the add (torch's order), the composition adds in f32 (within one ulp).
  EXPECT_CLOSE(t.values(), ref.t, tol_for(dt));
  EXPECT_CLOSE(da.values(), ref.da, tol_for(DType::kF32));
  EXPECT_CLOSE(da2.values(), ref.da, tol_for(DType::kF32));
  EXPECT_CLOSE(dx.values(), ref.dx_set, tol_for(dt));
  EXPECT_CLOSE(dxb.values(), ref.dx_add, tol_for(dt));
  EXPECT_GUARDS_INTACT(t); EXPECT_GUARDS_INTACT(da); EXPECT_GUARDS_INTACT(dx); EXPECT_GUARDS_INTACT(dxb);
}

TEST(LoraDownCpu, MatchesDropoutPlusMatmulOddSizesAllRanks) {
  for (int64_t r = 1; r <= ops::kLoraDownMaxRank; r += (r < 8 ? 1 : 4))
    for (float pd : {0.f, 0.3f}) check_against_unfused(DType::kF32, 7, 9, r, pd);  // r = 1..8, 12, 16
}

TEST(LoraDownCpu, MatchesDropoutPlusMatmul16Bit) {
  for (DType dt : {DType::kBF16, DType::kF16})
    for (float pd : {0.f, 0.1f}) check_against_unfused(dt, 13, 37, 4, pd);
  check_against_unfused(DType::kBF16, 5, 130, 16, 0.5f);
}

TEST(LoraDownCpu, BackwardMatchesFiniteDifferences) {
  // In f64 the op is linear in x and in A given the mask: L = <g, t> has dL/dA = dA and dL/dx = dx.
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const int64_t n = 5, in = 11, r = 3;
  const auto p = params(n, in, r, 0.25f, 2);
  const auto gv = random_normal(n * r, 6);
  TestTensor x(eng, c, {n, in}, DType::kF64, random_normal(n * in, 7));
  TestTensor a(eng, c, {r, in}, DType::kF64, random_normal(r * in, 8));
  TestTensor t(eng, c, {n, r}, DType::kF64), g(eng, c, {n, r}, DType::kF64, gv);
  TestTensor da(eng, c, {r, in}, DType::kF64, std::vector<double>(size_t(r * in), 0.0)), dx(eng, c, {n, in}, DType::kF64);
  auto loss = [&] {
    ops::cpu::lora_down_forward(t, x, a, p);
    return dot(t.values(), gv);
  };
  ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, p);
  EXPECT_CLOSE(dx.values(), numeric_grad(loss, x), (Tol{1e-8, 1e-7}));
  EXPECT_CLOSE(da.values(), numeric_grad(loss, a), (Tol{1e-8, 1e-7}));
  // Some elements are dropped (their dx is exactly 0), some kept.
  int zeros = 0;
  for (double v : dx.values()) zeros += v == 0.0;
  EXPECT_GT(zeros, 0);
  EXPECT_LT(zeros, n * in);
}

TEST(LoraDownCpu, DaAccumulatesAndDxIsOptional) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const int64_t n = 6, in = 10, r = 2;
  const auto p = params(n, in, r, 0.2f);
  TestTensor x(eng, c, {n, in}, DType::kF32, random_normal(n * in, 9));
  TestTensor a(eng, c, {r, in}, DType::kF32, random_normal(r * in, 10));
  TestTensor g(eng, c, {n, r}, DType::kF32, random_normal(n * r, 11));
  TestTensor da(eng, c, {r, in}, DType::kF32, std::vector<double>(size_t(r * in), 0.0)), dx(eng, c, {n, in}, DType::kF32);
  ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, p);
  std::vector<double> twice = da.values();
  for (auto& v : twice) v *= 2;
  ops::cpu::lora_down_backward(da, TensorView{}, ops::Accum::kSet, g, x, a, p);  // no dx: dA only
  EXPECT_CLOSE(da.values(), twice, tol_for(DType::kF32));
}

// The forward's up epilogue is lora_up_forward on the t just computed (the CPU runs exactly that), and its
// y is checked like lora_up_forward's.
TEST(LoraDownCpu, UpEpilogueIsLoraUpAfterwards) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const int64_t n = 5, in = 24, out = 16, r = 4;
  const auto p = params(n, in, r, 0.2f);
  const auto xv = random_normal(n * in, 1), av = random_normal(r * in, 2), bv = random_normal(out * r, 3);
  const auto yv = random_normal(n * out, 4);
  TestTensor x(eng, c, {n, in}, DType::kBF16, xv), a(eng, c, {r, in}, DType::kBF16, av), b(eng, c, {out, r}, DType::kBF16, bv);
  TestTensor t(eng, c, {n, r}, DType::kBF16), y(eng, c, {n, out}, DType::kBF16, yv);
  TestTensor t2(eng, c, {n, r}, DType::kBF16), y2(eng, c, {n, out}, DType::kBF16, yv);
  const ops::LoraUpEpilogue up{y, b, out, 0.5f};
  ops::cpu::lora_down_forward(t, x, a, p, &up);
  ops::cpu::lora_down_forward(t2, x, a, p);
  ops::cpu::lora_up_forward(y2, t2, b, {n, out, r, 0.5f});
  EXPECT_CLOSE(t.values(), t2.values(), (Tol{0, 0}));
  EXPECT_CLOSE(y.values(), y2.values(), (Tol{0, 0}));
  EXPECT_FALSE(y.values() == yv);  // y was updated
  TestTensor ys(eng, c, {n, out - 1}, DType::kBF16);
  const ops::LoraUpEpilogue bad{ys, b, out, 0.5f};
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a, p, &bad), engine::Error);
  EXPECT_TRUE(ops::lora_down_fuses_up(2304, 4));
  EXPECT_TRUE(ops::lora_down_fuses_up(8, 16));
  EXPECT_FALSE(ops::lora_down_fuses_up(2304, 8));
  EXPECT_FALSE(ops::lora_down_fuses_up(12, 4));
}

TEST(LoraDownCpu, RejectsBadArguments) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const int64_t n = 4, in = 8, r = 2;
  TestTensor x(eng, c, {n, in}, DType::kF32, random_normal(n * in, 1)), a(eng, c, {r, in}, DType::kF32, random_normal(r * in, 2));
  TestTensor a16(eng, c, {r, in}, DType::kBF16, random_normal(r * in, 2)), t(eng, c, {n, r}, DType::kF32);
  TestTensor t16(eng, c, {n, r}, DType::kBF16), g(eng, c, {n, r}, DType::kF32, random_normal(n * r, 3));
  TestTensor da(eng, c, {r, in}, DType::kF32, random_normal(r * in, 4)), da16(eng, c, {r, in}, DType::kBF16);
  TestTensor dx(eng, c, {n, in}, DType::kF32), dxs(eng, c, {n, in - 1}, DType::kF32);
  TestTensor xi(eng, c, {n, in}, DType::kI32, random_normal(n * in, 1));
  TestTensor big(eng, c, {17, in}, DType::kF32, random_normal(17 * in, 5)), tb(eng, c, {n, 17}, DType::kF32);
  const auto p = params(n, in, r, 0.1f);
  EXPECT_NO_THROW(ops::cpu::lora_down_forward(t, x, a, p));
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a16, p), engine::Error);      // a's dtype
  EXPECT_THROW(ops::cpu::lora_down_forward(t16, x, a, p), engine::Error);      // t's dtype
  EXPECT_THROW(ops::cpu::lora_down_forward(t, xi, a, p), engine::Error);       // not float
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a, params(n + 1, in, r, 0.1f)), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a, params(n, in, r, 1.0f)), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a, params(n, in, r, -0.5f)), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_forward(tb, x, big, params(n, in, 17, 0.1f)), engine::Error);  // r > 16
  EXPECT_THROW(ops::cpu::lora_down_forward(t, x, a, params(n, in, 0, 0.1f)), engine::Error);
  EXPECT_NO_THROW(ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a, p));
  EXPECT_THROW(ops::cpu::lora_down_backward(da16, dx, ops::Accum::kSet, g, x, a, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_backward(TensorView{}, dx, ops::Accum::kSet, g, x, a, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_backward(da, dxs, ops::Accum::kSet, g, x, a, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, t16, x, a, p), engine::Error);
  EXPECT_THROW(ops::cpu::lora_down_backward(da, dx, ops::Accum::kSet, g, x, a16, p), engine::Error);
}

TEST(LoraDownCpu, WorkSplitDependsOnShapeOnly) {
  EXPECT_EQ(ops::lora_down_slabs(1), 1);
  EXPECT_EQ(ops::lora_down_slabs(32), 1);
  EXPECT_EQ(ops::lora_down_slabs(33), 2);
  EXPECT_EQ(ops::lora_down_slabs(512), 16);   // 32-row slabs
  EXPECT_EQ(ops::lora_down_slabs(4096), 64);  // capped: 64-row slabs
  EXPECT_EQ(ops::lora_down_slabs(8192), 64);
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(4096, 2304), 1);  // 512 blocks of 8 rows
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(512, 2304), 8);   // 512 blocks of 1 row
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(512, 9216), 8);
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(1, 2304), 8);     // 288 vectors: >= 1 per lane of 8 warps
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(1, 9216), 8);
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(7, 16), 1);       // 2 vectors: one warp
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(1024, 2304), 4);  // 512 blocks of 2 rows
  EXPECT_EQ(ops::lora_down_fwd_warps_per_row(2048, 2304), 2);  // 512 blocks of 4 rows
  EXPECT_EQ(ops::lora_down_workspace_elems(1, 9, 3), 27);      // backward slabs
  EXPECT_EQ(ops::lora_down_workspace_elems(512, 2304, 4), 16 * 4 * 2304);
  EXPECT_EQ(ops::lora_down_workspace_elems(8192, 9216, 16), 64 * 16 * 9216);
}

TEST(LoraDownCpu, FusableShapes) {
  EXPECT_TRUE(ops::lora_down_fusable(2304, 4));
  EXPECT_TRUE(ops::lora_down_fusable(9216, 16));
  EXPECT_TRUE(ops::lora_down_fusable(8, 1));
  EXPECT_FALSE(ops::lora_down_fusable(2304, 17));  // rank over the register budget: dropout + GEMMs
  EXPECT_FALSE(ops::lora_down_fusable(2304, 0));
  EXPECT_FALSE(ops::lora_down_fusable(2300, 4));   // rows not in 8-element vectors
}

}  // namespace
