// bench/ops/lora_branch_bench.cpp: the LoRA branches of the linears that share an input, bf16, r = 4, p = 0.1,
// as one group (ops::lora_branch: one launch forward, three backward) against per-member calls (lora_down
// with the up epilogue forward; lora_up_backward + lora_down_backward, four launches each, backward).
// Args: n (tokens), the group (0: q/k/v 2048/1024/1024 from 2304; 1: gate/up 9216 x 2 from 2304; 2: o, 2304
// from 2048; 3: down, 2304 from 9216), grouped (1) or per member (0).
#include "bench/bench_util.h"
#include "ops/lora_branch.h"

namespace {

using namespace bench;

struct Group {
  ops::LoraDownParams p;
  Tensor x, dx;
  std::vector<Tensor> keep;
  std::vector<ops::LoraBranchMember> ms;
};

Group make_group(benchmark::State& state, Engine& eng) {
  static const std::vector<std::pair<int64_t, std::vector<int64_t>>> kGroups = {
      {2304, {2048, 1024, 1024}}, {2304, {9216, 9216}}, {2048, {2304}}, {9216, {2304}}};
  const auto& [in, outs] = kGroups[size_t(state.range(1))];
  Group g;
  g.p.n = state.range(0); g.p.in = in; g.p.r = 4; g.p.p = 0.1f; g.p.seed = 42;
  g.x = random_tensor(eng, {g.p.n, in}, DType::kBF16, 1);
  g.dx = random_tensor(eng, {g.p.n, in}, DType::kBF16, 2);
  for (size_t i = 0; i < outs.size(); ++i) {
    const int64_t out = outs[i];
    ops::LoraBranchMember m;
    Tensor a = random_tensor(eng, {4, in}, DType::kBF16, 10 + i, 0.05), b = random_tensor(eng, {out, 4}, DType::kBF16, 20 + i, 0.05);
    Tensor y = random_tensor(eng, {g.p.n, out}, DType::kBF16, 30 + i), t = random_tensor(eng, {g.p.n, 4}, DType::kBF16, 40 + i);
    Tensor dy = random_tensor(eng, {g.p.n, out}, DType::kBF16, 50 + i);
    Tensor da = random_tensor(eng, {4, in}, DType::kF32, 60 + i), db = random_tensor(eng, {out, 4}, DType::kF32, 70 + i);
    g.keep.insert(g.keep.end(), {a, b, y, t, dy, da, db});
    m.a = a; m.b = b; m.y = y; m.t = t; m.dy = dy; m.da = da; m.db = db; m.out = out; m.scaling = 2.f; m.stream = 3 + i;
    g.ms.push_back(m);
  }
  return g;
}

void BM_LoraBranchForward(benchmark::State& state) {
  if (!require_cuda(state)) return;
  Engine eng;
  Group g = make_group(state, eng);
  if (state.range(2)) {
    time_loop(state, eng, [&] { ops::lora_branch_forward(g.x, g.ms, g.p, eng); });
  } else {
    time_loop(state, eng, [&] {
      for (const auto& m : g.ms) ops::lora_branch_forward(g.x, {m}, g.p, eng);
    });
  }
}

void BM_LoraBranchBackward(benchmark::State& state) {
  if (!require_cuda(state)) return;
  Engine eng;
  Group g = make_group(state, eng);
  if (state.range(2)) {
    time_loop(state, eng, [&] { ops::lora_branch_backward(g.dx, ops::Accum::kAdd, g.x, g.ms, g.p, eng); });
    return;
  }
  // The four launches per member that lora_linear made before the grouped branch.
  std::vector<Tensor> dts, wus;
  for (const auto& m : g.ms) {
    dts.push_back(eng.empty({g.p.n, 4}, DType::kBF16));
    wus.push_back(eng.empty({ops::lora_up_workspace_elems(g.p.n, m.out, 4)}, DType::kF32));
  }
  Tensor wd = eng.empty({ops::lora_down_workspace_elems(g.p.n, g.p.in, 4)}, DType::kF32);
  time_loop(state, eng, [&] {
    for (size_t i = 0; i < g.ms.size(); ++i) {
      const auto& m = g.ms[i];
      ops::LoraDownParams q = g.p;
      q.stream = m.stream;
      ops::lora_up_backward(dts[i], m.db, m.dy, m.t, m.b, wus[i], {g.p.n, m.out, 4, m.scaling}, eng);
      ops::lora_down_backward(m.da, g.dx, ops::Accum::kAdd, dts[i], g.x, m.a, wd, q, eng);
    }
  });
}

}  // namespace

BENCHMARK(BM_LoraBranchForward)
    ->ArgsProduct({{512, 4096}, {0, 1, 2, 3}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
BENCHMARK(BM_LoraBranchBackward)
    ->ArgsProduct({{512, 4096}, {0, 1, 2, 3}, {0, 1}})
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond);
