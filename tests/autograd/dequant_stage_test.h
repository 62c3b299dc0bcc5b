// tests/autograd/dequant_stage_test.h: the DequantStage scenarios shared by the CPU and GPU tests: every weight
// it hands out equals nf4_dequantize's bits, whether its group was prefetched, dequantized on demand (members
// 1.. on the side stream on CUDA), preceded by a wrong hint, or too large for the workspace (one weight at a
// time).
#pragma once
#include <vector>

#include "autograd/functions.h"
#include "ops/elementwise.h"
#include "ops/nf4.h"
#include "tests/test_util.h"

namespace test {

inline std::vector<double> host_values(Engine& eng, engine::TensorView t) {
  engine::Tensor h = eng.empty_host(t.shape, t.dtype);
  eng.copy(h, t);
  eng.synchronize();
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(h.data(), t.dtype, int64_t(i));
  return v;
}

inline void check_dequant_stage(Engine& eng) {
  const DType dt = DType::kBF16;
  const int64_t in = 128;
  const std::vector<int64_t> outs = {64, 32, 32, 96};  // a q/k/v-like group, then a single
  std::vector<ops::Nf4Storage> q;
  std::vector<std::vector<double>> want;
  for (size_t i = 0; i < outs.size(); ++i) {
    const std::vector<double> v = random_normal(outs[i] * in, 30 + i, 0.05);
    engine::Tensor host = eng.empty_host({outs[i], in}, DType::kF32), w = eng.empty({outs[i], in}, dt);
    for (size_t e = 0; e < v.size(); ++e) host.ptr<float>()[e] = float(v[e]);
    engine::Tensor w32 = eng.empty({outs[i], in}, DType::kF32);
    eng.copy(w32, host);
    ops::cast(w, w32, eng);
    q.push_back(ops::nf4_empty(outs[i], in, eng));
    ops::nf4_quantize(q.back().view(), w, ops::Nf4QuantParams{}, eng);
    engine::Tensor d = eng.empty({outs[i], in}, dt);
    ops::nf4_dequantize(d, q.back().view(), eng);
    want.push_back(host_values(eng, d));
  }
  auto read = [&](engine::TensorView w) { return host_values(eng, w); };
  auto run = [&](int64_t ws_elems, const char* what) {
    SCOPED_TRACE(what);
    engine::Tensor ws = eng.empty({ws_elems}, dt);
    autograd::DequantStage stage(ws, eng);
    std::vector<autograd::FrozenLinear> fl(outs.size());
    for (size_t i = 0; i < outs.size(); ++i) {
      fl[i].nf4 = q[i].view(); fl[i].stage = &stage; fl[i].out = outs[i]; fl[i].in = in;
    }
    const std::vector<autograd::FrozenLinear> group = {fl[0], fl[1], fl[2]}, single = {fl[3]};
    auto check_group = [&](const char* step) {
      SCOPED_TRACE(step);
      stage.begin(group);
      for (size_t g = 0; g < group.size(); ++g) EXPECT_CLOSE(read(stage.weight(g)), want[g], (Tol{0, 0}));
    };
    auto check_single = [&](const char* step) {
      SCOPED_TRACE(step);
      stage.begin(single);
      EXPECT_CLOSE(read(stage.weight(0)), want[3], (Tol{0, 0}));
    };
    check_group("on demand");
    check_group("still resident");
    stage.prefetch(single);
    check_group("after a wrong hint");
    stage.prefetch(single);
    check_single("prefetched");
    stage.prefetch(group);
    stage.prefetch(single);
    check_group("after two hints");
    stage.prefetch(group);
    check_group("prefetched group");
    stage.prefetch(single);
    stage.begin(group);  // begun again before member 0 was handed out: it is still due
    check_group("begun twice");
    for (size_t g : {2, 0, 1}) {  // members alone, from the resident group (a linear outside the grouped path)
      SCOPED_TRACE("member " + std::to_string(g) + " alone");
      stage.begin({group[g]});
      EXPECT_CLOSE(read(stage.weight(0)), want[g], (Tol{0, 0}));
    }
    stage.begin({group[1], group[0]});  // two of them, in another order
    EXPECT_CLOSE(read(stage.weight(0)), want[1], (Tol{0, 0}));
    EXPECT_CLOSE(read(stage.weight(1)), want[0], (Tol{0, 0}));
  };
  run((64 + 32 + 32) * in, "the group fits");
  run(96 * in, "one weight at a time");
}

}  // namespace test
