// tests/ops/lora_branch_cpu_test.cpp (label cpu): the grouped LoRA branch's reference (f64) against the
// branch written out with plain sums and ops::dropout's mask: three members with their own A, B, scaling and
// dropout stream, dx set and added, dA and dB accumulated; and the preconditions.
#include "ops/lora_branch.h"
#include "tests/test_util.h"

namespace {

using namespace test;

constexpr int64_t kN = 6, kIn = 24, kR = 4;
const std::vector<int64_t> kOuts = {16, 8, 24};

void check_group(ops::Accum dx_mode) {
  SCOPED_TRACE(dx_mode == ops::Accum::kAdd ? "dx +=" : "dx =");
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  const DType f = DType::kF64;
  const float drop = 0.3f;
  ops::LoraDownParams p;
  p.n = kN; p.in = kIn; p.r = kR; p.p = drop; p.seed = 5; p.offset = 16;
  const auto xv = random_normal(kN * kIn, 1), dx0 = random_normal(kN * kIn, 2);
  TestTensor x(eng, c, {kN, kIn}, f, xv), dx(eng, c, {kN, kIn}, f, dx0);
  std::vector<TestTensor> a, b, y, t, dy, da, db;
  std::vector<ops::LoraBranchMember> ms(kOuts.size());
  std::vector<double> want_dx = dx_mode == ops::Accum::kAdd ? dx0 : std::vector<double>(size_t(kN * kIn), 0.0);
  std::vector<std::vector<double>> want_y, want_da, want_db;
  for (size_t g = 0; g < kOuts.size(); ++g) {
    const int64_t out = kOuts[g], s = int64_t(10 * g);
    const auto av = random_normal(kR * kIn, 11 + s, 0.3), bv = random_normal(out * kR, 12 + s, 0.3);
    const auto y0 = random_normal(kN * out, 13 + s), dyv = random_normal(kN * out, 14 + s);
    const auto da0 = random_normal(kR * kIn, 15 + s), db0 = random_normal(out * kR, 16 + s);
    a.emplace_back(eng, c, Shape{kR, kIn}, f, av);
    b.emplace_back(eng, c, Shape{out, kR}, f, bv);
    y.emplace_back(eng, c, Shape{kN, out}, f, y0);
    t.emplace_back(eng, c, Shape{kN, kR}, f);
    dy.emplace_back(eng, c, Shape{kN, out}, f, dyv);
    da.emplace_back(eng, c, Shape{kR, kIn}, f, da0);
    db.emplace_back(eng, c, Shape{out, kR}, f, db0);
    const float scaling = 0.5f + float(g);
    const uint64_t stream = 3 + g;
    // The branch written out: xd = x * mask / (1 - p) with ops::dropout's mask for this member's stream.
    TestTensor ones(eng, c, {kN, kIn}, f, std::vector<double>(size_t(kN * kIn), 1.0)), mask(eng, c, {kN, kIn}, f);
    ops::cpu::dropout_forward(mask, ones, {kN * kIn, drop, p.seed, stream, p.offset});
    const auto mv = mask.values();  // 0 or 1 / (1 - p)
    std::vector<double> tv(size_t(kN * kR), 0.0), dtv(size_t(kN * kR), 0.0), yv = y0, dav = da0, dbv = db0;
    for (int64_t m = 0; m < kN; ++m)
      for (int64_t j = 0; j < kR; ++j) {
        for (int64_t k = 0; k < kIn; ++k) tv[size_t(m * kR + j)] += xv[size_t(m * kIn + k)] * mv[size_t(m * kIn + k)] * av[size_t(j * kIn + k)];
        for (int64_t o = 0; o < out; ++o) dtv[size_t(m * kR + j)] += scaling * dyv[size_t(m * out + o)] * bv[size_t(o * kR + j)];
      }
    for (int64_t m = 0; m < kN; ++m) {
      for (int64_t o = 0; o < out; ++o)
        for (int64_t j = 0; j < kR; ++j) {
          yv[size_t(m * out + o)] += scaling * tv[size_t(m * kR + j)] * bv[size_t(o * kR + j)];
          dbv[size_t(o * kR + j)] += scaling * dyv[size_t(m * out + o)] * tv[size_t(m * kR + j)];
        }
      for (int64_t k = 0; k < kIn; ++k)
        for (int64_t j = 0; j < kR; ++j) {
          const double xd = xv[size_t(m * kIn + k)] * mv[size_t(m * kIn + k)];
          dav[size_t(j * kIn + k)] += dtv[size_t(m * kR + j)] * xd;
          want_dx[size_t(m * kIn + k)] += dtv[size_t(m * kR + j)] * av[size_t(j * kIn + k)] * mv[size_t(m * kIn + k)];
        }
    }
    want_y.push_back(yv); want_da.push_back(dav); want_db.push_back(dbv);
    ms[g].out = out; ms[g].scaling = scaling; ms[g].stream = stream;
  }
  for (size_t g = 0; g < kOuts.size(); ++g) {
    ms[g].a = a[g]; ms[g].b = b[g]; ms[g].y = y[g]; ms[g].t = t[g]; ms[g].dy = dy[g]; ms[g].da = da[g]; ms[g].db = db[g];
  }
  ops::lora_branch_forward(x, ms, p, eng);
  ops::lora_branch_backward(dx, dx_mode, x, ms, p, eng);
  const Tol tight{1e-11, 1e-11};
  EXPECT_CLOSE(dx.values(), want_dx, tight);
  for (size_t g = 0; g < kOuts.size(); ++g) {
    SCOPED_TRACE("member " + std::to_string(g));
    EXPECT_CLOSE(y[g].values(), want_y[g], tight);
    EXPECT_CLOSE(da[g].values(), want_da[g], tight);
    EXPECT_CLOSE(db[g].values(), want_db[g], tight);
  }
}

TEST(LoraBranchCpu, GroupOfThreeMatchesTheBranchWrittenOut) {
  check_group(ops::Accum::kSet);
  check_group(ops::Accum::kAdd);
}

TEST(LoraBranchCpu, RefusesUnfusableShapesAndLargeGroups) {
  Engine eng({engine::Backend::kCPU});
  const Device c = Device::kCPU;
  TestTensor x(eng, c, {4, 16}, DType::kF32), a(eng, c, {4, 16}, DType::kF32), b(eng, c, {12, 4}, DType::kF32);
  TestTensor y(eng, c, {4, 12}, DType::kF32), t(eng, c, {4, 4}, DType::kF32);
  ops::LoraDownParams p;
  p.n = 4; p.in = 16; p.r = 4;
  ops::LoraBranchMember m;
  m.a = a; m.b = b; m.y = y; m.t = t; m.out = 12;  // out % 8 != 0
  try {
    ops::lora_branch_forward(x, {m}, p, eng);
    FAIL() << "out = 12 accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("out=12"), std::string::npos) << e.what();
  }
  try {
    ops::lora_branch_backward(TensorView{}, ops::Accum::kSet, x, {}, p, eng);
    FAIL() << "an empty group accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("1 to 3 members"), std::string::npos) << e.what();
  }
}

}  // namespace
