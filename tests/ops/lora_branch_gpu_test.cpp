// tests/ops/lora_branch_gpu_test.cpp (label gpu): the grouped LoRA branch on CUDA (one forward launch, three
// backward) against the CPU reference, and bitwise against the per-member CUDA calls it replaces
// (lora_down_forward with the up epilogue; lora_up_backward then lora_down_backward, dx added in member
// order): t, y, dA, dB and dx, with the caller's overlapping work on the compute stream. Groups of 1, 2 (gate/up) and 3 (q/k/v) members, all dtypes, dropout on and
// off, dx set / added / absent, sizes off the tiles and Gemma-2-2B's 512-token shapes.
#include "ops/elementwise.h"
#include "ops/lora_branch.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct BranchCase {
  int64_t n, in, r;
  std::vector<int64_t> outs;
  float p;
  DType dt;
};

struct Data {  // inputs shared by every run of a case
  std::vector<double> x, dx0;
  std::vector<std::vector<double>> a, b, y0, dy, da0, db0;
};

Data make_data(const BranchCase& c) {
  Data d;
  d.x = random_normal(c.n * c.in, 1);
  d.dx0 = random_normal(c.n * c.in, 2);
  for (size_t g = 0; g < c.outs.size(); ++g) {
    const int64_t out = c.outs[g], s = int64_t(10 * g);
    d.a.push_back(random_normal(c.r * c.in, 11 + s, 0.05));
    d.b.push_back(random_normal(out * c.r, 12 + s, 0.2));
    d.y0.push_back(random_normal(c.n * out, 13 + s));
    d.dy.push_back(random_normal(c.n * out, 14 + s));
    d.da0.push_back(random_normal(c.r * c.in, 15 + s));
    d.db0.push_back(random_normal(out * c.r, 16 + s));
  }
  return d;
}

struct Out {
  std::vector<double> dx;
  std::vector<std::vector<double>> t, y, da, db;
};

// kGroup: lora_branch with the caller's work as `overlap` (the split forward: down-projections on the side
// stream, then one up launch); kGroupFused: the work first, then lora_branch without `overlap` (the forward in
// one fused launch); kPerMember: the work first, then the per-member calls.
enum class Path { kGroup, kGroupFused, kPerMember };

// dx_mode kSet / kAdd, or no dx when with_dx is false.
Out run(Engine& eng, Device dev, const BranchCase& c, const Data& d, Path path, ops::Accum dx_mode, bool with_dx) {
  ops::LoraDownParams p;
  p.n = c.n; p.in = c.in; p.r = c.r; p.p = c.p; p.seed = 42; p.offset = 3ull << 32;
  const size_t G = c.outs.size();
  TestTensor x(eng, dev, {c.n, c.in}, c.dt, d.x), dx(eng, dev, {c.n, c.in}, c.dt, d.dx0);
  std::vector<TestTensor> a, b, y, t, dy, da, db;
  std::vector<ops::LoraBranchMember> ms(G);
  for (size_t g = 0; g < G; ++g) {
    const int64_t out = c.outs[g];
    a.emplace_back(eng, dev, Shape{c.r, c.in}, c.dt, d.a[g]);
    b.emplace_back(eng, dev, Shape{out, c.r}, c.dt, d.b[g]);
    y.emplace_back(eng, dev, Shape{c.n, out}, c.dt, d.y0[g]);
    t.emplace_back(eng, dev, Shape{c.n, c.r}, c.dt);
    dy.emplace_back(eng, dev, Shape{c.n, out}, c.dt, d.dy[g]);
    da.emplace_back(eng, dev, Shape{c.r, c.in}, DType::kF32, d.da0[g]);
    db.emplace_back(eng, dev, Shape{out, c.r}, DType::kF32, d.db0[g]);
  }
  for (size_t g = 0; g < G; ++g) {
    ms[g].a = a[g]; ms[g].b = b[g]; ms[g].y = y[g]; ms[g].t = t[g]; ms[g].dy = dy[g]; ms[g].da = da[g];
    ms[g].db = db[g]; ms[g].out = c.outs[g]; ms[g].scaling = 0.5f + 0.25f * float(g); ms[g].stream = 100 + 7 * g;
  }
  const TensorView dxv = with_dx ? dx.view() : TensorView{};
  // The caller's work (the base products in lora_linear_group): here y *= 2 before the up-projections
  // (forward) and dx *= 2 before the branch's dx (backward), on the compute stream.
  auto work_fwd = [&] { for (size_t g = 0; g < G; ++g) ops::scale(ms[g].y, ms[g].y, 2.f, eng); };
  auto work_bwd = [&] { if (with_dx) ops::scale(dxv, dxv, 2.f, eng); };
  if (path == Path::kGroup) {
    ops::lora_branch_forward(x, ms, p, eng, work_fwd);
    ops::lora_branch_backward(dxv, dx_mode, x, ms, p, eng, work_bwd);
  } else if (path == Path::kGroupFused) {
    work_fwd();
    ops::lora_branch_forward(x, ms, p, eng);
    work_bwd();
    ops::lora_branch_backward(dxv, dx_mode, x, ms, p, eng);
  } else {
    work_fwd();
    for (size_t g = 0; g < G; ++g) {
      ops::LoraDownParams q = p;
      q.stream = ms[g].stream;
      const ops::LoraUpEpilogue up{ms[g].y, ms[g].b, ms[g].out, ms[g].scaling};
      ops::lora_down_forward(ms[g].t, x, ms[g].a, q, eng, &up);
    }
    work_bwd();
    for (size_t g = 0; g < G; ++g) {
      ops::LoraDownParams q = p;
      q.stream = ms[g].stream;
      TestTensor dt(eng, dev, {c.n, c.r}, c.dt);
      TestTensor wu(eng, dev, {ops::lora_up_workspace_elems(c.n, ms[g].out, c.r)}, DType::kF32);
      TestTensor wd(eng, dev, {ops::lora_down_workspace_elems(c.n, c.in, c.r)}, DType::kF32);
      ops::lora_up_backward(dt, ms[g].db, ms[g].dy, ms[g].t, ms[g].b, wu, {c.n, ms[g].out, c.r, ms[g].scaling}, eng);
      ops::lora_down_backward(ms[g].da, dxv, g == 0 ? dx_mode : ops::Accum::kAdd, dt, x, ms[g].a, wd, q, eng);
    }
  }
  Out o;
  o.dx = dx.values();
  EXPECT_GUARDS_INTACT(dx);
  for (size_t g = 0; g < G; ++g) {
    o.t.push_back(t[g].values()); o.y.push_back(y[g].values());
    o.da.push_back(da[g].values()); o.db.push_back(db[g].values());
    EXPECT_GUARDS_INTACT(t[g]); EXPECT_GUARDS_INTACT(y[g]); EXPECT_GUARDS_INTACT(da[g]); EXPECT_GUARDS_INTACT(db[g]);
  }
  return o;
}

class LoraBranchGpu : public ::testing::TestWithParam<BranchCase> {};

TEST_P(LoraBranchGpu, MatchesCpuAndThePerMemberCallsBitwise) {
  REQUIRE_CUDA();
  const BranchCase c = GetParam();
  const Data d = make_data(c);
  Engine eng;
  for (const auto& [mode, with_dx] : {std::pair{ops::Accum::kSet, true}, std::pair{ops::Accum::kAdd, true},
                                      std::pair{ops::Accum::kSet, false}}) {
    SCOPED_TRACE(std::string(with_dx ? (mode == ops::Accum::kAdd ? "dx +=" : "dx =") : "no dx"));
    const Out got = run(eng, Device::kCUDA, c, d, Path::kGroup, mode, with_dx);
    const Out each = run(eng, Device::kCUDA, c, d, Path::kPerMember, mode, with_dx);
    const Out again = run(eng, Device::kCUDA, c, d, Path::kGroup, mode, with_dx);
    const Out fused = run(eng, Device::kCUDA, c, d, Path::kGroupFused, mode, with_dx);
    const bool small = c.n * c.in <= 300000;  // the CPU reference (f64 loops) on the small cases only
    const Out ref = small ? run(eng, Device::kCPU, c, d, Path::kGroup, mode, with_dx) : Out{};
    const Tol exact{0, 0}, sum = c.dt == DType::kF32 ? Tol{1e-4, 1e-4} : tol_for(c.dt);
    const Tol grad = c.dt == DType::kF32 ? Tol{1e-4, 1e-4} : Tol{1e-2, 2e-3};
    EXPECT_CLOSE(got.dx, each.dx, exact);
    EXPECT_CLOSE(again.dx, got.dx, exact);
    EXPECT_CLOSE(fused.dx, got.dx, exact);
    if (small) EXPECT_CLOSE(got.dx, ref.dx, tol_for(c.dt));
    for (size_t g = 0; g < c.outs.size(); ++g) {
      SCOPED_TRACE("member " + std::to_string(g));
      EXPECT_ALL_FINITE(got.y[g]); EXPECT_ALL_FINITE(got.da[g]);
      EXPECT_CLOSE(got.t[g], each.t[g], exact);
      EXPECT_CLOSE(got.y[g], each.y[g], exact);
      EXPECT_CLOSE(fused.t[g], got.t[g], exact);
      EXPECT_CLOSE(fused.y[g], got.y[g], exact);
      EXPECT_CLOSE(fused.da[g], got.da[g], exact);
      EXPECT_CLOSE(fused.db[g], got.db[g], exact);
      EXPECT_CLOSE(got.da[g], each.da[g], exact);
      EXPECT_CLOSE(got.db[g], each.db[g], exact);
      EXPECT_CLOSE(again.da[g], got.da[g], exact);
      EXPECT_CLOSE(again.db[g], got.db[g], exact);
      if (!small) continue;
      EXPECT_CLOSE(got.t[g], ref.t[g], sum);
      EXPECT_CLOSE(got.y[g], ref.y[g], tol_for(c.dt));
      // dA and dB sum products of t and dt, which are rounded to the act dtype: at 16 bits an element of either
      // may round the other way after a differently ordered f32 sum, moving the sums by ~an ulp of t or dt.
      EXPECT_CLOSE(got.da[g], ref.da[g], grad);
      EXPECT_CLOSE(got.db[g], ref.db[g], grad);
    }
  }
}

std::string case_name(const ::testing::TestParamInfo<BranchCase>& i) {
  std::string s = "n" + std::to_string(i.param.n) + "_in" + std::to_string(i.param.in) + "_r" + std::to_string(i.param.r);
  for (int64_t o : i.param.outs) s += "_" + std::to_string(o);
  return s + "_p" + std::to_string(int(i.param.p * 100)) + "_" + engine::dtype_name(i.param.dt);
}

INSTANTIATE_TEST_SUITE_P(
    Groups, LoraBranchGpu,
    ::testing::Values(BranchCase{7, 16, 4, {8}, 0.3f, DType::kF32}, BranchCase{33, 264, 4, {24, 8, 8}, 0.1f, DType::kBF16},
                      BranchCase{130, 520, 16, {264, 40}, 0.5f, DType::kF16},
                      BranchCase{65, 72, 4, {16, 16, 8}, 0.f, DType::kF32},
                      BranchCase{200, 2304, 16, {264, 8, 16}, 0.1f, DType::kBF16},
                      // 79 rows per slab: dt staged in two tiles of shared memory
                      BranchCase{5000, 16, 4, {8, 16}, 0.2f, DType::kF32},
                      // Gemma-2-2B at 512 tokens: q/k/v, gate/up, o (one member), down (in 9216)
                      BranchCase{512, 2304, 4, {2048, 1024, 1024}, 0.1f, DType::kBF16},
                      BranchCase{512, 2304, 4, {9216, 9216}, 0.1f, DType::kF16},
                      BranchCase{512, 2048, 4, {2304}, 0.1f, DType::kBF16},
                      BranchCase{512, 9216, 4, {2304}, 0.1f, DType::kBF16},
                      // 4096 rows: 64-row slabs and dt tiles, many chunks
                      BranchCase{4096, 2304, 4, {2048, 1024, 1024}, 0.1f, DType::kBF16}),
    case_name);

TEST(LoraBranchGpuPreconditions, RefusesUnfusableRanksAndLargeGroups) {
  REQUIRE_CUDA();
  Engine eng;
  const Device dev = Device::kCUDA;
  TestTensor x(eng, dev, {4, 16}, DType::kBF16), a(eng, dev, {8, 16}, DType::kBF16), b(eng, dev, {8, 8}, DType::kBF16);
  TestTensor y(eng, dev, {4, 8}, DType::kBF16), t(eng, dev, {4, 8}, DType::kBF16);
  ops::LoraDownParams p;
  p.n = 4; p.in = 16; p.r = 8;
  ops::LoraBranchMember m;
  m.a = a; m.b = b; m.y = y; m.t = t; m.out = 8;
  try {
    ops::lora_branch_forward(x, {m}, p, eng);
    FAIL() << "r = 8 accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("r = 4 or 16"), std::string::npos) << e.what();
  }
  p.r = 4;
  try {
    ops::lora_branch_forward(x, {m, m, m, m}, p, eng);
    FAIL() << "4 members accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 to 3 members"), std::string::npos) << e.what();
  }
}

}  // namespace
