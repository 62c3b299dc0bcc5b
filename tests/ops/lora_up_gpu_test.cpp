// tests/ops/lora_up_gpu_test.cpp (label gpu): the CUDA LoRA up-projection against the CPU reference (every
// rank, all dtypes, sizes off the block tiles), against the cuBLASLt GEMMs it replaces at Gemma-2-2B shapes,
// bitwise run-to-run reproducibility, and the preconditions.
#include "ops/lora_up.h"
#include "ops/matmul.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct LoraUpCase {
  int64_t n, out, r;
  DType dt;
};

class LoraUpGpu : public ::testing::TestWithParam<LoraUpCase> {};

TEST_P(LoraUpGpu, MatchesCpuReference) {
  REQUIRE_CUDA();
  const LoraUpCase c = GetParam();
  const ops::LoraUpParams p{c.n, c.out, c.r, 0.5f};
  Engine eng;
  const auto yv = random_normal(c.n * c.out, 1), tv = random_normal(c.n * c.r, 2), bv = random_normal(c.out * c.r, 3, 0.2);
  const auto gv = random_normal(c.n * c.out, 4), db0 = random_normal(c.out * c.r, 5);
  struct Out { std::vector<double> y, dt, db; };
  auto run = [&](Device dev) {
    TestTensor y(eng, dev, {c.n, c.out}, c.dt, yv), t(eng, dev, {c.n, c.r}, c.dt, tv), b(eng, dev, {c.out, c.r}, c.dt, bv);
    TestTensor g(eng, dev, {c.n, c.out}, c.dt, gv), dt(eng, dev, {c.n, c.r}, c.dt);
    TestTensor db(eng, dev, {c.out, c.r}, DType::kF32, db0);
    TestTensor ws(eng, dev, {ops::lora_up_workspace_elems(c.n, c.out, c.r)}, DType::kF32);
    ops::lora_up_forward(y, t, b, p, eng);
    ops::lora_up_backward(dt, db, g, t, b, ws, p, eng);
    EXPECT_GUARDS_INTACT(y); EXPECT_GUARDS_INTACT(dt); EXPECT_GUARDS_INTACT(db); EXPECT_GUARDS_INTACT(ws);
    return Out{y.values(), dt.values(), db.values()};
  };
  const Out ref = run(Device::kCPU), got = run(Device::kCUDA);
  EXPECT_ALL_FINITE(got.y); EXPECT_ALL_FINITE(got.dt); EXPECT_ALL_FINITE(got.db);
  EXPECT_CLOSE(got.y, ref.y, tol_for(c.dt));
  EXPECT_CLOSE(got.dt, ref.dt, tol_for(c.dt));
  EXPECT_CLOSE(got.db, ref.db, (Tol{1e-4, 1e-4}));
}

std::string case_name(const ::testing::TestParamInfo<LoraUpCase>& i) {
  return "n" + std::to_string(i.param.n) + "_out" + std::to_string(i.param.out) + "_r" + std::to_string(i.param.r) +
         "_" + engine::dtype_name(i.param.dt);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, LoraUpGpu,
    ::testing::Values(LoraUpCase{1, 8, 1, DType::kF32}, LoraUpCase{7, 16, 2, DType::kF32},
                      LoraUpCase{33, 264, 4, DType::kBF16}, LoraUpCase{65, 520, 8, DType::kF16},
                      LoraUpCase{40, 48, 16, DType::kBF16}, LoraUpCase{130, 1032, 4, DType::kF32},
                      // Gemma-2-2B: 512 tokens x q (2048), k/v (1024), o/down (2304), gate/up (9216)
                      LoraUpCase{512, 2048, 4, DType::kBF16}, LoraUpCase{512, 1024, 16, DType::kF16},
                      LoraUpCase{512, 9216, 4, DType::kBF16}, LoraUpCase{200, 2304, 8, DType::kF32}),
    case_name);

// At 2B shapes: the GEMMs lora_linear used before (cuBLASLt), and the same bits on a second run.
TEST(LoraUpGpuBig, MatchesCublasAndIsDeterministic) {
  REQUIRE_CUDA();
  Engine eng;
  const Device d = Device::kCUDA;
  for (auto [n, out, r] : {std::tuple<int64_t, int64_t, int64_t>{4096, 9216, 4}, {4096, 2304, 16}, {8192, 2048, 4}}) {
    SCOPED_TRACE("n=" + std::to_string(n) + " out=" + std::to_string(out) + " r=" + std::to_string(r));
    const ops::LoraUpParams p{n, out, r, 2.f};
    const DType dt = DType::kBF16;
    const auto yv = random_normal(n * out, 1), gv = random_normal(n * out, 4, 0.1);
    TestTensor y(eng, d, {n, out}, dt, yv), y2(eng, d, {n, out}, dt, yv);
    TestTensor t(eng, d, {n, r}, dt, random_normal(n * r, 2, 0.1)), b(eng, d, {out, r}, dt, random_normal(out * r, 3, 0.1));
    TestTensor g(eng, d, {n, out}, dt, gv), dt1(eng, d, {n, r}, dt), dt2(eng, d, {n, r}, dt), dtr(eng, d, {n, r}, dt);
    const std::vector<double> zeros(size_t(out * r), 0.0);
    TestTensor db1(eng, d, {out, r}, DType::kF32, zeros), db2(eng, d, {out, r}, DType::kF32, zeros);
    TestTensor dbr(eng, d, {out, r}, DType::kF32, zeros);
    TestTensor ws(eng, d, {ops::lora_up_workspace_elems(n, out, r)}, DType::kF32);
    ops::lora_up_forward(y, t, b, p, eng);
    ops::lora_up_backward(dt1, db1, g, t, b, ws, p, eng);
    ops::lora_up_backward(dt2, db2, g, t, b, ws, p, eng);
    ops::MatmulParams pf; pf.m = n; pf.n = out; pf.k = r; pf.trans_b = true; pf.alpha = p.scaling; pf.beta = 1.f;
    ops::matmul(y2, t, b, pf, eng);
    ops::MatmulParams pb; pb.m = out; pb.n = r; pb.k = n; pb.trans_a = true; pb.alpha = p.scaling; pb.beta = 1.f;
    ops::matmul(dbr, g, t, pb, eng);
    ops::MatmulParams pt; pt.m = n; pt.n = r; pt.k = out; pt.alpha = p.scaling;
    ops::matmul(dtr, g, b, pt, eng);
    EXPECT_CLOSE(y.values(), y2.values(), tol_for(dt));
    EXPECT_CLOSE(db1.values(), dbr.values(), (Tol{1e-3, 1e-3}));
    // dt sums `out` products: cuBLASLt may keep split-K partials in bf16, so compare loosely and check the
    // fused value against f64 sums of the same inputs below.
    const auto gvv = g.values(), bvv = b.values(), dtv = dt1.values();
    std::vector<double> dt64(size_t(n * r), 0.0);
    for (int64_t m = 0; m < n; ++m)
      for (int64_t j = 0; j < r; ++j) {
        double s = 0;
        for (int64_t cc = 0; cc < out; ++cc) s += gvv[size_t(m * out + cc)] * bvv[size_t(cc * r + j)];
        dt64[size_t(m * r + j)] = p.scaling * s;
      }
    EXPECT_CLOSE(dtv, dt64, tol_for(dt));
    EXPECT_CLOSE(dt2.values(), dtv, (Tol{0, 0}));       // same bits run to run
    EXPECT_CLOSE(db2.values(), db1.values(), (Tol{0, 0}));
  }
}

TEST(LoraUpGpuErrors, RejectsUnfusableShapesBadWorkspaceAndF64) {
  REQUIRE_CUDA();
  Engine eng;
  const Device d = Device::kCUDA;
  TestTensor y(eng, d, {4, 16}, DType::kF32), t(eng, d, {4, 4}, DType::kF32, random_normal(16, 1));
  TestTensor b(eng, d, {16, 4}, DType::kF32, random_normal(64, 2)), dt(eng, d, {4, 4}, DType::kF32);
  TestTensor db(eng, d, {16, 4}, DType::kF32, std::vector<double>(64, 0.0));
  TestTensor ws(eng, d, {ops::lora_up_workspace_elems(4, 16, 4)}, DType::kF32);
  TestTensor small(eng, d, {ops::lora_up_workspace_elems(4, 16, 4) - 1}, DType::kF32);
  const ops::LoraUpParams p{4, 16, 4, 1.f};
  EXPECT_NO_THROW(ops::cuda::lora_up_forward(y, t, b, p, eng.stream()));
  EXPECT_NO_THROW(ops::cuda::lora_up_backward(dt, db, y, t, b, ws, p, eng.stream()));
  EXPECT_THROW(ops::cuda::lora_up_backward(dt, db, y, t, b, small, p, eng.stream()), engine::Error);
  EXPECT_THROW(ops::cuda::lora_up_backward(dt, db, y, t, b, TensorView{}, p, eng.stream()), engine::Error);
  TestTensor t3(eng, d, {4, 3}, DType::kF32, random_normal(12, 1)), b3(eng, d, {16, 3}, DType::kF32, random_normal(48, 2));
  EXPECT_THROW(ops::cuda::lora_up_forward(y, t3, b3, {4, 16, 3, 1.f}, eng.stream()), engine::Error);  // r = 3
  TestTensor y12(eng, d, {4, 12}, DType::kF32), b12(eng, d, {12, 4}, DType::kF32, random_normal(48, 2));
  EXPECT_THROW(ops::cuda::lora_up_forward(y12, t, b12, {4, 12, 4, 1.f}, eng.stream()), engine::Error);  // out % 8
  TestTensor y64(eng, d, {4, 16}, DType::kF64), t64(eng, d, {4, 4}, DType::kF64), b64(eng, d, {16, 4}, DType::kF64);
  EXPECT_THROW(ops::cuda::lora_up_forward(y64, t64, b64, p, eng.stream()), engine::Error);
}

}  // namespace
