// tests/autograd/lora_linear_cpu_test.cpp (label cpu): lora_linear's fused path (r <= kLoraFuseMaxRank = 4:
// ops/lora_down, ops/lora_up) against its unfused path (r = 5: dropout + matmuls). The branch is linear in its
// ranks, so a rank-5 branch equals the sum of its first 4 ranks and its last rank: y, dx (minus the base
// counted twice), dA and dB (rows / columns) must agree, with the same dropout mask (it depends on x's
// elements only, not on r). f64 throughout.
#include "autograd/functions.h"
#include "ops/lora_down.h"
#include "tests/test_util.h"

namespace {

using namespace test;
using autograd::Tape;
using autograd::Var;
using engine::Tensor;

constexpr int64_t kN = 5, kIn = 16, kOut = 8, kR = 5;  // in, out % 8 == 0: fusable

Tensor filled(Engine& eng, Shape s, const std::vector<double>& v) {
  Tensor t = eng.empty(s, DType::kF64);
  const TensorView tv = t;
  for (size_t i = 0; i < v.size(); ++i) engine::store_f64(tv.data, DType::kF64, int64_t(i), v[i]);
  return t;
}

std::vector<double> values(const TensorView& t) {
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(t.data, t.dtype, int64_t(i));
  return v;
}

struct Result {
  std::vector<double> y, dx, da, db;  // da: (j1 - j0, in); db: (out, j1 - j0)
};

// lora_linear with ranks [j0, j1) of the A (kR, in) / B (out, kR) below, dropout 0.3. misalign: the compute
// copies of A and B are views one element into a larger buffer, as an odd r*in leaves later adapters in the
// flat bank (the fused kernels need 8-element alignment, so lora_linear must take the GEMM path).
Result run(int64_t j0, int64_t j1, bool misalign = false) {
  Engine eng({engine::Backend::kCPU});
  const auto xv = random_normal(kN * kIn, 1), wv = random_normal(kOut * kIn, 2), av = random_normal(kR * kIn, 3, 0.2);
  const auto bv = random_normal(kOut * kR, 4, 0.2), gv = random_normal(kN * kOut, 5);
  const int64_t r = j1 - j0;
  std::vector<double> a(av.begin() + j0 * kIn, av.begin() + j1 * kIn), b;
  for (int64_t o = 0; o < kOut; ++o) b.insert(b.end(), bv.begin() + o * kR + j0, bv.begin() + o * kR + j1);
  Tape tape(eng);
  Var x = tape.leaf(filled(eng, {kN, kIn}, xv), "x");
  Tensor w = filled(eng, {kOut, kIn}, wv), at = filled(eng, {r, kIn}, a), bt = filled(eng, {kOut, r}, b);
  Tensor da = filled(eng, {r, kIn}, std::vector<double>(size_t(r * kIn), 0.0));
  Tensor db = filled(eng, {kOut, r}, std::vector<double>(size_t(kOut * r), 0.0));
  autograd::FrozenLinear base;
  base.dense = w;
  base.out = kOut;
  base.in = kIn;
  autograd::LoraBranch lb;
  lb.A = at; lb.B = bt; lb.dA = da; lb.dB = db;
  lb.Ac = at; lb.Bc = bt;  // f64 compute copies: the masters themselves
  Tensor shifted;
  if (misalign) {
    std::vector<double> ab(1, 0.0);
    ab.insert(ab.end(), a.begin(), a.end());
    ab.insert(ab.end(), b.begin(), b.end());
    shifted = filled(eng, {int64_t(ab.size())}, ab);
    const TensorView sv = shifted;
    lb.Ac = TensorView{static_cast<double*>(sv.data) + 1, DType::kF64, {r, kIn}, sv.device};
    lb.Bc = TensorView{static_cast<double*>(sv.data) + 1 + r * kIn, DType::kF64, {kOut, r}, sv.device};
  }
  lb.scaling = 0.5f;
  lb.dropout = 0.3f;
  lb.seed = 7; lb.stream = 2; lb.offset = 12;
  Var y = autograd::lora_linear(tape, x, base, &lb);
  Result res;
  res.y = values(y.t());
  tape.backward(y, filled(eng, {kN, kOut}, gv));
  res.dx = values(x.gref().slot()->grad);
  res.da = values(da);
  res.db = values(db);
  return res;
}

TEST(LoraLinearCpu, FusedRanksSumToTheUnfusedBranch) {
  ASSERT_EQ(autograd::kLoraFuseMaxRank, kR - 1);  // 4 and 1 ranks take the fused path, 5 the unfused one
  ASSERT_TRUE(autograd::lora_fuses_down(kIn, kR - 1) && autograd::lora_fuses_up(kOut, kR - 1));
  ASSERT_TRUE(autograd::lora_fuses_down(kIn, 1) && autograd::lora_fuses_up(kOut, 1));
  ASSERT_FALSE(autograd::lora_fuses_down(kIn, kR) || autograd::lora_fuses_up(kOut, kR));
  const Result all = run(0, kR), lo = run(0, kR - 1), hi = run(kR - 1, kR);
  // y(ranks 0..3) + y(rank 4) counts the base twice: y_base = y(lo) + y(hi) - y(all), likewise dx.
  std::vector<double> y_base(all.y.size()), dx_base(all.dx.size());
  for (size_t i = 0; i < y_base.size(); ++i) y_base[i] = lo.y[i] + hi.y[i] - all.y[i];
  for (size_t i = 0; i < dx_base.size(); ++i) dx_base[i] = lo.dx[i] + hi.dx[i] - all.dx[i];
  // The recovered base must be x W^T and dy W exactly (up to f64 rounding), which only holds if the fused
  // branches and the unfused one agree.
  const auto xv = random_normal(kN * kIn, 1), wv = random_normal(kOut * kIn, 2), gv = random_normal(kN * kOut, 5);
  std::vector<double> yb(size_t(kN * kOut), 0.0), dxb(size_t(kN * kIn), 0.0);
  for (int64_t m = 0; m < kN; ++m)
    for (int64_t o = 0; o < kOut; ++o)
      for (int64_t k = 0; k < kIn; ++k) {
        yb[size_t(m * kOut + o)] += xv[size_t(m * kIn + k)] * wv[size_t(o * kIn + k)];
        dxb[size_t(m * kIn + k)] += gv[size_t(m * kOut + o)] * wv[size_t(o * kIn + k)];
      }
  EXPECT_CLOSE(y_base, yb, (Tol{1e-10, 1e-10}));
  EXPECT_CLOSE(dx_base, dxb, (Tol{1e-10, 1e-10}));
  std::vector<double> da = lo.da, db;
  da.insert(da.end(), hi.da.begin(), hi.da.end());
  for (int64_t o = 0; o < kOut; ++o) {
    db.insert(db.end(), lo.db.begin() + o * (kR - 1), lo.db.begin() + (o + 1) * (kR - 1));
    db.push_back(hi.db[size_t(o)]);
  }
  EXPECT_CLOSE(all.da, da, (Tol{1e-12, 1e-10}));
  EXPECT_CLOSE(all.db, db, (Tol{1e-12, 1e-10}));
}

TEST(LoraLinearCpu, MisalignedAdapterViewsTakeTheGemmPath) {
  // Rank 4 is fusable by shape; one-element-off views must fall back to dropout + GEMMs (the CUDA kernels
  // would refuse them) and still give the same branch.
  const Result fused = run(0, 4), gemm = run(0, 4, true);
  EXPECT_CLOSE(gemm.y, fused.y, (Tol{1e-12, 1e-10}));
  EXPECT_CLOSE(gemm.dx, fused.dx, (Tol{1e-12, 1e-10}));
  EXPECT_CLOSE(gemm.da, fused.da, (Tol{1e-12, 1e-10}));
  EXPECT_CLOSE(gemm.db, fused.db, (Tol{1e-12, 1e-10}));
}

// A q/k/v-like group (three outputs of one x, each with its own adapter, stream and scaling) through
// lora_linear_group's grouped branch (ops::lora_branch, r = 4) against each member alone on the GEMM path
// (fuse_max_rank = 0): the outputs, dx (the sum of all members' contributions) and every dA / dB.
TEST(LoraLinearCpu, GroupMatchesItsMembersOnTheGemmPath) {
  const std::vector<int64_t> outs = {16, 8, 8};
  const int64_t r = 4;
  auto run_group = [&](bool grouped) {
    Engine eng({engine::Backend::kCPU});
    Tape tape(eng);
    Var x = tape.leaf(filled(eng, {kN, kIn}, random_normal(kN * kIn, 1)), "x");
    std::vector<autograd::FrozenLinear> bases(outs.size());
    std::vector<autograd::LoraBranch> lbs(outs.size());
    std::vector<Tensor> keep;
    for (size_t g = 0; g < outs.size(); ++g) {
      const int64_t out = outs[g], s = int64_t(10 * g);
      Tensor w = filled(eng, {out, kIn}, random_normal(out * kIn, 2 + s));
      Tensor at = filled(eng, {r, kIn}, random_normal(r * kIn, 3 + s, 0.2));
      Tensor bt = filled(eng, {out, r}, random_normal(out * r, 4 + s, 0.2));
      Tensor da = filled(eng, {r, kIn}, std::vector<double>(size_t(r * kIn), 0.0));
      Tensor db = filled(eng, {out, r}, std::vector<double>(size_t(out * r), 0.0));
      keep.insert(keep.end(), {w, at, bt, da, db});
      bases[g].dense = w; bases[g].out = out; bases[g].in = kIn;
      autograd::LoraBranch& lb = lbs[g];
      lb.A = at; lb.B = bt; lb.dA = da; lb.dB = db; lb.Ac = at; lb.Bc = bt;
      lb.scaling = 0.5f + float(g); lb.dropout = 0.3f; lb.seed = 7; lb.stream = 2 + g; lb.offset = 16;
      lb.fuse_max_rank = grouped ? autograd::kLoraFuseMaxRank : 0;
    }
    std::vector<Var> ys;
    if (grouped) {
      ys = autograd::lora_linear_group(tape, x, bases, {&lbs[0], &lbs[1], &lbs[2]});
    } else {
      for (size_t g = 0; g < outs.size(); ++g) ys.push_back(autograd::lora_linear(tape, x, bases[g], &lbs[g]));
    }
    // One node for the group (the grouped branch ran), one per member otherwise.
    EXPECT_EQ(tape.num_nodes(), grouped ? 1u : outs.size());
    // loss = sum_g <dy_g, y_g>: each output's gradient is set directly, then one backward runs every node.
    std::vector<std::vector<double>> res;
    for (size_t g = 0; g < outs.size(); ++g) res.push_back(values(ys[g].t()));
    for (size_t g = 0; g < outs.size(); ++g) {
      ys[g].gref().slot()->grad = filled(eng, {kN, outs[g]}, random_normal(kN * outs[g], 50 + g));
      ys[g].gref().slot()->written = true;
    }
    tape.backward(ys[0], filled(eng, {kN, outs[0]}, std::vector<double>(size_t(kN * outs[0]), 0.0)));
    res.push_back(values(x.gref().slot()->grad));
    for (auto& lb : lbs) {
      res.push_back(values(lb.dA));
      res.push_back(values(lb.dB));
    }
    return res;
  };
  const auto grouped = run_group(true), gemm = run_group(false);
  ASSERT_EQ(grouped.size(), gemm.size());
  for (size_t i = 0; i < grouped.size(); ++i) {
    SCOPED_TRACE("result " + std::to_string(i));
    EXPECT_CLOSE(grouped[i], gemm[i], (Tol{1e-12, 1e-10}));
  }
}

}  // namespace
