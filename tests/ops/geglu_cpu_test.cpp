// tests/ops/geglu_cpu_test.cpp (label cpu): the CPU reference GeGLU against f64 finite differences and hand formulas.
#include <cmath>

#include "ops/geglu.h"
#include "tests/test_util.h"

namespace {

using namespace test;

double gelu_tanh(double x) { return 0.5 * x * (1 + std::tanh(std::sqrt(2 / M_PI) * (x + 0.044715 * x * x * x))); }

TEST(GegluCpu, BackwardMatchesFiniteDifferences) {
  Engine eng({engine::Backend::kCPU});
  const ops::GegluParams p{3, 7};  // tiny, odd sizes; dense gate and up
  TestTensor gate(eng, Device::kCPU, {3, 7}, DType::kF64, random_normal(21, 1, 1.5));
  TestTensor up(eng, Device::kCPU, {3, 7}, DType::kF64, random_normal(21, 2));
  const std::vector<double> g = random_normal(21, 3);  // loss = sum(out * g)
  TestTensor out(eng, Device::kCPU, {3, 7}, DType::kF64);
  auto loss = [&] {
    ops::cpu::geglu_forward(out, gate, up, p);
    return dot(out.values(), g);
  };
  TestTensor dout(eng, Device::kCPU, {3, 7}, DType::kF64, g);
  TestTensor dgate(eng, Device::kCPU, {3, 7}, DType::kF64), dup(eng, Device::kCPU, {3, 7}, DType::kF64);
  ops::cpu::geglu_backward(dgate, ops::Accum::kSet, dup, ops::Accum::kSet, dout, gate, up, p);
  EXPECT_CLOSE(dgate.values(), numeric_grad(loss, gate), (Tol{1e-8, 1e-7}));
  EXPECT_CLOSE(dup.values(), numeric_grad(loss, up), (Tol{1e-8, 1e-7}));
}

TEST(GegluCpu, FusedLayoutBackwardMatchesFiniteDifferences) {
  // One (N, 2F) gate_up tensor: gate = columns [0,F), up = [F,2F); its gradient is one (N, 2F) tensor too.
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 3, F = 5;
  TestTensor gate_up(eng, Device::kCPU, {N, 2 * F}, DType::kF64, random_normal(N * 2 * F, 4, 1.5));
  const ops::GegluParams p = ops::geglu_fused_params(gate_up);
  EXPECT_EQ(p.in_stride, 2 * F);
  const std::vector<double> g = random_normal(N * F, 5);
  TestTensor out(eng, Device::kCPU, {N, F}, DType::kF64);
  auto loss = [&] {
    ops::cpu::geglu_forward(out, ops::geglu_fused_part(gate_up, 0), ops::geglu_fused_part(gate_up, 1), p);
    return dot(out.values(), g);
  };
  TestTensor dout(eng, Device::kCPU, {N, F}, DType::kF64, g), dgate_up(eng, Device::kCPU, {N, 2 * F}, DType::kF64);
  ops::cpu::geglu_backward(ops::geglu_fused_part(dgate_up, 0), ops::Accum::kSet, ops::geglu_fused_part(dgate_up, 1),
                           ops::Accum::kSet, dout, ops::geglu_fused_part(gate_up, 0),
                           ops::geglu_fused_part(gate_up, 1), p);
  EXPECT_CLOSE(dgate_up.values(), numeric_grad(loss, gate_up), (Tol{1e-8, 1e-7}));
  EXPECT_GUARDS_INTACT(dgate_up);
}

TEST(GegluCpu, StridedRowsLeaveTheGapsUntouched) {
  // in_stride = F + 2 over separate tensors: the two gap elements per row are neither read nor written.
  Engine eng({engine::Backend::kCPU});
  const int64_t N = 3, F = 4, S = F + 2, extent = (N - 1) * S + F;
  const ops::GegluParams p{N, F, S};
  std::vector<double> gv = random_normal(extent, 6), uv = random_normal(extent, 7);
  TestTensor gate(eng, Device::kCPU, {extent}, DType::kF32, gv), up(eng, Device::kCPU, {extent}, DType::kF32, uv);
  TestTensor dout(eng, Device::kCPU, {N, F}, DType::kF32, random_normal(N * F, 8));
  TestTensor out(eng, Device::kCPU, {N, F}, DType::kF32);
  TestTensor dgate(eng, Device::kCPU, {extent}, DType::kF32, std::vector<double>(extent, 7.0));
  TestTensor dup(eng, Device::kCPU, {extent}, DType::kF32, std::vector<double>(extent, 7.0));
  ops::cpu::geglu_forward(out, gate, up, p);
  ops::cpu::geglu_backward(dgate, ops::Accum::kSet, dup, ops::Accum::kSet, dout, gate, up, p);
  const auto o = out.values(), dg = dgate.values(), du = dup.values();
  for (int64_t r = 0; r < N; ++r) {
    for (int64_t c = 0; c < F; ++c) {
      const int64_t i = r * S + c;
      EXPECT_EQ(o[r * F + c], double(float(double(float(gelu_tanh(float(gv[i])))) * float(uv[i]))));
      EXPECT_NE(dg[i], 7.0);
    }
    for (int64_t c = F; c < S && r * S + c < extent; ++c) {
      EXPECT_EQ(dg[r * S + c], 7.0);
      EXPECT_EQ(du[r * S + c], 7.0);
    }
  }
}

TEST(GegluCpu, AccumulateTwiceDoublesEachGradientIndependently) {
  Engine eng({engine::Backend::kCPU});
  const ops::GegluParams p{4, 9};
  TestTensor gate(eng, Device::kCPU, {4, 9}, DType::kF64, random_normal(36, 9, 1.5));
  TestTensor up(eng, Device::kCPU, {4, 9}, DType::kF64, random_normal(36, 10));
  TestTensor dout(eng, Device::kCPU, {4, 9}, DType::kF64, random_normal(36, 11));
  TestTensor dgate(eng, Device::kCPU, {4, 9}, DType::kF64), dup(eng, Device::kCPU, {4, 9}, DType::kF64);
  ops::cpu::geglu_backward(dgate, ops::Accum::kSet, dup, ops::Accum::kSet, dout, gate, up, p);
  const auto dg1 = dgate.values(), du1 = dup.values();
  ops::cpu::geglu_backward(dgate, ops::Accum::kAdd, dup, ops::Accum::kSet, dout, gate, up, p);
  std::vector<double> dg2 = dg1;
  for (auto& v : dg2) v *= 2;
  EXPECT_CLOSE(dgate.values(), dg2, tol_for(DType::kF64));
  EXPECT_CLOSE(dup.values(), du1, tol_for(DType::kF64));  // kSet: overwritten, not added
  ops::cpu::geglu_backward(dgate, ops::Accum::kSet, dup, ops::Accum::kAdd, dout, gate, up, p);
  std::vector<double> du2 = du1;
  for (auto& v : du2) v *= 2;
  EXPECT_CLOSE(dgate.values(), dg1, tol_for(DType::kF64));
  EXPECT_CLOSE(dup.values(), du2, tol_for(DType::kF64));
}

TEST(GegluCpu, ForwardMatchesKnownValuesAndRoundsTwiceInBf16) {
  Engine eng({engine::Backend::kCPU});
  // gelu_tanh at a few points (f64 storage, up = 1): values of the tanh approximation.
  TestTensor gate(eng, Device::kCPU, {1, 4}, DType::kF64, {1.0, -3.0, 0.5, 0.0});
  TestTensor up(eng, Device::kCPU, {1, 4}, DType::kF64, {1.0, 1.0, 1.0, 1.0});
  TestTensor out(eng, Device::kCPU, {1, 4}, DType::kF64);
  ops::cpu::geglu_forward(out, gate, up, {1, 4});
  EXPECT_CLOSE(out.values(), (std::vector<double>{0.8411919906082768, -0.0036373920817729943, 0.34571400982514394, 0}),
               (Tol{1e-15, 1e-14}));
  // bf16: gelu rounded once to bf16, the product rounded once more.
  TestTensor g16(eng, Device::kCPU, {3, 5}, DType::kBF16, random_normal(15, 12, 2.0));
  TestTensor u16(eng, Device::kCPU, {3, 5}, DType::kBF16, random_normal(15, 13));
  TestTensor o16(eng, Device::kCPU, {3, 5}, DType::kBF16);
  ops::cpu::geglu_forward(o16, g16, u16, {3, 5});
  const auto gv = g16.values(), uv = u16.values();
  std::vector<double> want(15);
  for (int i = 0; i < 15; ++i)
    want[i] = engine::round_to(DType::kBF16, engine::round_to(DType::kBF16, gelu_tanh(gv[i])) * uv[i]);
  EXPECT_CLOSE(o16.values(), want, (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(o16);
}

TEST(GegluCpu, RejectsBadShapesAndDtypes) {
  Engine eng({engine::Backend::kCPU});
  TestTensor g(eng, Device::kCPU, {2, 4}, DType::kF32, random_normal(8, 14));
  TestTensor u(eng, Device::kCPU, {2, 4}, DType::kF32, random_normal(8, 15));
  TestTensor u16(eng, Device::kCPU, {2, 4}, DType::kF16, random_normal(8, 15));
  TestTensor gi(eng, Device::kCPU, {2, 4}, DType::kI32, std::vector<double>(8, 1.0));
  TestTensor o(eng, Device::kCPU, {2, 4}, DType::kF32), o16(eng, Device::kCPU, {2, 4}, DType::kBF16);
  TestTensor o3(eng, Device::kCPU, {2, 3}, DType::kF32);
  EXPECT_THROW(ops::cpu::geglu_forward(o, g, u16, {2, 4}), engine::Error);         // up dtype differs
  EXPECT_THROW(ops::cpu::geglu_forward(o16, g, u, {2, 4}), engine::Error);         // out dtype differs
  EXPECT_THROW(ops::cpu::geglu_forward(o, gi, gi, {2, 4}), engine::Error);         // integer inputs
  EXPECT_THROW(ops::cpu::geglu_forward(o3, g, u, {2, 4}), engine::Error);          // out too small
  EXPECT_THROW(ops::cpu::geglu_forward(o, g, u, {2, 4, 3}), engine::Error);        // in_stride < cols
  EXPECT_THROW(ops::cpu::geglu_forward(o, g, u, {2, 4, 5}), engine::Error);        // gate too short for stride 5
  EXPECT_THROW(ops::cpu::geglu_backward(o16, ops::Accum::kSet, o, ops::Accum::kSet, o, g, u, {2, 4}),
               engine::Error);                                                     // dgate dtype differs
  EXPECT_THROW(ops::cpu::geglu_backward(o3, ops::Accum::kSet, o, ops::Accum::kSet, o, g, u, {2, 4}),
               engine::Error);                                                     // dgate too small
  EXPECT_THROW(ops::geglu_fused_part(o3, 0), engine::Error);                       // odd column count
}

}  // namespace
