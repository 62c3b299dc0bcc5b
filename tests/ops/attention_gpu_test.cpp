// tests/ops/attention_gpu_test.cpp (label gpu): CUDA attention (layout, row op, composite) against the CPU
// reference on the same rounded inputs, f32/bf16/f16, odd shapes and Gemma-2-2B shapes (T=512, H=8, KV=4,
// hd=256). Outputs start as NaN poison (TestTensor), so all-finite results also show every element is SET.
#include <cmath>

#include "ops/attention.h"
#include "ops/attention_layout.h"
#include "ops/attention_softmax.h"
#include "tests/test_util.h"

namespace {

using namespace test;

std::vector<double> right_padding(int64_t B, int64_t T, int64_t pad) {
  std::vector<double> m(B * T, 1.0);
  for (int64_t b = 1; b < B; ++b)
    for (int64_t t = T - pad; t < T; ++t) m[b * T + t] = 0.0;
  return m;
}

double rms(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x * x;
  return std::sqrt(s / double(v.size()));
}

// Gradients pass through dS = P (dP - rowsum(P dP)), whose subtraction cancels: a one-ulp difference in a
// rounded dP or P (f32 vs f64 GEMM accumulation, tanhf vs tanh) becomes a larger relative error in a small
// dS, and dq/dk/dv then sum T of them with random signs. Bound the error by a fraction of the result's RMS
// (a few ulps of a typical element) instead of each element's own magnitude.
Tol grad_tol(DType dt, const std::vector<double>& want) {
  const double r = rms(want);
  switch (dt) {
    case DType::kF32: return {1e-4 * r, 1e-4};
    case DType::kF16: return {8e-3 * r, 4e-3};
    default: return {6e-2 * r, 3e-2};  // bf16
  }
}

// ---- layout -------------------------------------------------------------------------------------------------
struct LayoutCase {
  int64_t B, T, heads, hd;
  DType dt;
};
class AttentionLayoutGpu : public ::testing::TestWithParam<LayoutCase> {};

TEST_P(AttentionLayoutGpu, MatchesCpuExactlyAndRoundTrips) {
  REQUIRE_CUDA();
  const LayoutCase c = GetParam();
  Engine eng;
  const ops::AttentionLayoutParams p{c.B, c.T, c.heads, c.hd};
  const int64_t n = c.B * c.T * c.heads * c.hd;
  const auto xv = random_normal(n, 101);
  std::vector<double> hm_ref, hm, back;
  for (Device dev : {Device::kCPU, Device::kCUDA}) {
    TestTensor x(eng, dev, {c.B * c.T, c.heads * c.hd}, c.dt, xv), h(eng, dev, {c.B, c.heads, c.T, c.hd}, c.dt),
        b(eng, dev, {c.B * c.T, c.heads * c.hd}, c.dt);
    ops::attention_to_head_major(h, x, p, eng);
    ops::attention_to_token_major(b, h, p, eng);
    (dev == Device::kCPU ? hm_ref : hm) = h.values();
    if (dev == Device::kCUDA) back = b.values();
    EXPECT_GUARDS_INTACT(h); EXPECT_GUARDS_INTACT(b);
  }
  EXPECT_CLOSE(hm, hm_ref, (Tol{0, 0}));  // a copy: bit-exact
  TestTensor x(eng, Device::kCPU, {n}, c.dt, xv);
  EXPECT_CLOSE(back, x.values(), (Tol{0, 0}));
}

INSTANTIATE_TEST_SUITE_P(Shapes, AttentionLayoutGpu,
                         ::testing::Values(LayoutCase{2, 5, 3, 7, DType::kF16},      // 2-byte units
                                           LayoutCase{2, 5, 3, 6, DType::kBF16},     // 4-byte units
                                           LayoutCase{3, 7, 2, 5, DType::kF32},      // 4-byte units, odd
                                           LayoutCase{2, 512, 8, 256, DType::kBF16}, // Gemma q, 16-byte units
                                           LayoutCase{1, 512, 4, 256, DType::kF32}),
                         [](const ::testing::TestParamInfo<LayoutCase>& i) {
                           return "B" + std::to_string(i.param.B) + "_T" + std::to_string(i.param.T) + "_h" +
                                  std::to_string(i.param.heads) + "_d" + std::to_string(i.param.hd) + "_" +
                                  engine::dtype_name(i.param.dt);
                         });

// ---- softmax row op on identical inputs -------------------------------------------------------------------------
struct SoftmaxCase {
  int64_t B, H, T, window, pad;
  float softcap;
  DType dt;
  bool in_place;
};
class AttentionSoftmaxGpu : public ::testing::TestWithParam<SoftmaxCase> {};

TEST_P(AttentionSoftmaxGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const SoftmaxCase c = GetParam();
  Engine eng;
  ops::AttentionSoftmaxParams p;
  p.batch = c.B; p.heads = c.H; p.seq = c.T; p.scale = 0.0625f; p.softcap = c.softcap; p.window = c.window;
  const int64_t n = c.B * c.H * c.T * c.T;
  // Raw scores like Gemma's QK^T (std 16 -> |s*scale| ~ 1..4, some past the softcap's linear range).
  const auto sv = random_normal(n, 111, 24.0), dpv = random_normal(n, 112);
  const auto mv = right_padding(c.B, c.T, c.pad);
  std::vector<double> pr[2], ds[2];
  for (int d = 0; d < 2; ++d) {
    const Device dev = d ? Device::kCUDA : Device::kCPU;
    TestTensor s(eng, dev, {c.B, c.H, c.T, c.T}, c.dt, sv), dp(eng, dev, {c.B, c.H, c.T, c.T}, c.dt, dpv);
    TestTensor mask(eng, dev, {c.B, c.T}, DType::kI32, mv);
    TestTensor probs(eng, dev, {c.B, c.H, c.T, c.T}, c.dt), dsc(eng, dev, {c.B, c.H, c.T, c.T}, c.dt);
    TestTensor s_copy(eng, dev, {c.B, c.H, c.T, c.T}, c.dt, sv);
    if (c.in_place) {  // probs over a copy of s, dS over dP, as the composite does
      ops::attention_softmax_forward(s_copy, s_copy, mask, p, eng);
      ops::attention_softmax_backward(dp, s_copy, dp, s, mask, p, eng);
      pr[d] = s_copy.values(); ds[d] = dp.values();
    } else {
      ops::attention_softmax_forward(probs, s, mask, p, eng);
      ops::attention_softmax_backward(dsc, probs, dp, s, mask, p, eng);
      pr[d] = probs.values(); ds[d] = dsc.values();
      EXPECT_GUARDS_INTACT(probs); EXPECT_GUARDS_INTACT(dsc);
    }
    EXPECT_GUARDS_INTACT(s_copy); EXPECT_GUARDS_INTACT(dp);
  }
  EXPECT_ALL_FINITE(pr[1]); EXPECT_ALL_FINITE(ds[1]);
  // Same rounded inputs; the logits' act-dtype roundings can flip one ulp where tanhf and f64 tanh differ,
  // which moves p by about |logit| ulps: allow 2 ulps of p's dtype.
  EXPECT_CLOSE(pr[1], pr[0], tol_for(c.dt));
  // dS = p (dp - dot): p's one-ulp differences carry through the subtraction; RMS-relative bound.
  EXPECT_CLOSE(ds[1], ds[0], grad_tol(c.dt, ds[0]));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionSoftmaxGpu,
    ::testing::Values(SoftmaxCase{2, 3, 13, 0, 3, 50.f, DType::kF32, false},   // odd T: scalar path
                      SoftmaxCase{2, 3, 13, 5, 2, 50.f, DType::kBF16, true},   // window + padding, in place
                      SoftmaxCase{2, 2, 37, 7, 4, 0.f, DType::kF16, false},    // no softcap
                      SoftmaxCase{2, 3, 13, 2, 5, 50.f, DType::kF16, false},   // rows 9-12 of b=1: no key
                      SoftmaxCase{2, 2, 64, 20, 5, 50.f, DType::kF16, true},   // vector path
                      SoftmaxCase{1, 8, 512, 0, 0, 50.f, DType::kBF16, false}, // Gemma-2-2B rows
                      SoftmaxCase{2, 2, 512, 100, 7, 50.f, DType::kF32, true}),
    [](const ::testing::TestParamInfo<SoftmaxCase>& i) {
      const auto& c = i.param;
      return "B" + std::to_string(c.B) + "_H" + std::to_string(c.H) + "_T" + std::to_string(c.T) + "_w" +
             std::to_string(c.window) + "_pad" + std::to_string(c.pad) + (c.softcap > 0 ? "_cap" : "_nocap") +
             (c.in_place ? "_inplace_" : "_") + engine::dtype_name(c.dt);
    });

// ---- the whole composite ------------------------------------------------------------------------------------------
struct AttnCase {
  int64_t B, T, H, KV, hd, window, pad;
  DType dt;
};
class AttentionGpu : public ::testing::TestWithParam<AttnCase> {};

TEST_P(AttentionGpu, ForwardAndBackwardMatchCpu) {
  REQUIRE_CUDA();
  const AttnCase c = GetParam();
  Engine eng;
  ops::AttentionParams p;
  p.batch = c.B; p.seq = c.T; p.heads = c.H; p.kv_heads = c.KV; p.head_dim = c.hd;
  p.scale = 0.0625f; p.softcap = 50.f; p.window = c.window;
  const int64_t NT = c.B * c.T, nq = NT * c.H * c.hd, nkv = NT * c.KV * c.hd;
  // With hd=256, N(0,1) q and k give |QK^T * 0.0625| ~ 1; small hd gets a larger spread to stay comparable.
  const double qk_scale = c.hd >= 64 ? 1.0 : 3.0;
  const auto qv = random_normal(nq, 121, qk_scale), kv = random_normal(nkv, 122, qk_scale),
             vv = random_normal(nkv, 123), gv = random_normal(nq, 124);
  const auto mv = right_padding(c.B, c.T, c.pad);
  std::vector<double> res[2][5];  // [cpu, cuda][out, probs, dq, dk, dv]
  for (int d = 0; d < 2; ++d) {
    const Device dev = d ? Device::kCUDA : Device::kCPU;
    TestTensor q(eng, dev, {NT, c.H * c.hd}, c.dt, qv), k(eng, dev, {NT, c.KV * c.hd}, c.dt, kv),
        v(eng, dev, {NT, c.KV * c.hd}, c.dt, vv), dout(eng, dev, {NT, c.H * c.hd}, c.dt, gv);
    TestTensor mask(eng, dev, {c.B, c.T}, DType::kI32, mv);
    TestTensor out(eng, dev, {NT, c.H * c.hd}, c.dt), probs(eng, dev, {c.B, c.H, c.T, c.T}, c.dt);
    TestTensor dq(eng, dev, {NT, c.H * c.hd}, c.dt), dk(eng, dev, {NT, c.KV * c.hd}, c.dt),
        dv(eng, dev, {NT, c.KV * c.hd}, c.dt);
    const TensorView m = c.pad > 0 ? TensorView(mask) : TensorView{};
    ops::attention_forward(out, probs, q, k, v, m, p, eng);
    ops::attention_backward(dq, dk, dv, dout, q, k, v, probs, m, p, eng);
    const TestTensor* outs[5] = {&out, &probs, &dq, &dk, &dv};
    for (int i = 0; i < 5; ++i) {
      res[d][i] = outs[i]->values();
      EXPECT_GUARDS_INTACT(*outs[i]);
    }
    // Without the saved probabilities the backward recomputes them (same GEMM and row kernel): the same bits.
    ops::attention_backward(dq, dk, dv, dout, q, k, v, TensorView{}, m, p, eng);
    EXPECT_CLOSE(dq.values(), res[d][2], (Tol{0, 0}));
    EXPECT_CLOSE(dk.values(), res[d][3], (Tol{0, 0}));
    EXPECT_CLOSE(dv.values(), res[d][4], (Tol{0, 0}));
    // One (b, kv) group per chunk: bitwise on CPU; on CUDA the smaller GEMM batch may take another cuBLASLt
    // kernel, so within the gradient tolerance.
    ops::AttentionParams pc = p;
    pc.backward_scratch_bytes = 1;
    for (bool keep : {true, false}) {
      SCOPED_TRACE(keep ? "chunked, probs kept" : "chunked, probs recomputed");
      ops::attention_backward(dq, dk, dv, dout, q, k, v, keep ? TensorView(probs) : TensorView{}, m, pc, eng);
      const TestTensor* g3[3] = {&dq, &dk, &dv};
      for (int i = 0; i < 3; ++i)
        EXPECT_CLOSE(g3[i]->values(), res[d][2 + i], (d == 0 ? Tol{0, 0} : grad_tol(c.dt, res[d][2 + i])));
    }
  }
  const char* names[5] = {"out", "probs", "dq", "dk", "dv"};
  for (int i = 0; i < 5; ++i) {
    SCOPED_TRACE(names[i]);
    EXPECT_ALL_FINITE(res[1][i]);
    // out and probs: one rounded GEMM (f32 vs f64 accumulation) plus the row op; two ulps of the act dtype.
    EXPECT_CLOSE(res[1][i], res[0][i], i < 2 ? tol_for(c.dt) : grad_tol(c.dt, res[0][i]));
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionGpu,
    ::testing::Values(AttnCase{2, 5, 4, 2, 6, 3, 2, DType::kF32},      // the FD config
                      AttnCase{2, 9, 4, 1, 6, 0, 3, DType::kBF16},     // GQA 4
                      AttnCase{3, 11, 4, 4, 10, 4, 0, DType::kF16},    // MHA, window
                      AttnCase{2, 33, 8, 4, 24, 0, 5, DType::kBF16},
                      AttnCase{1, 512, 8, 4, 256, 0, 0, DType::kBF16},   // Gemma-2-2B, plain causal
                      AttnCase{1, 512, 8, 4, 256, 128, 0, DType::kF16},  // Gemma-2-2B, window < T
                      AttnCase{2, 256, 8, 4, 256, 0, 37, DType::kF32}),  // Gemma heads, right padding
    [](const ::testing::TestParamInfo<AttnCase>& i) {
      const auto& c = i.param;
      return "B" + std::to_string(c.B) + "_T" + std::to_string(c.T) + "_H" + std::to_string(c.H) + "_KV" +
             std::to_string(c.KV) + "_d" + std::to_string(c.hd) + "_w" + std::to_string(c.window) + "_pad" +
             std::to_string(c.pad) + "_" + engine::dtype_name(c.dt);
    });

TEST(AttentionGpuErrors, RejectsTooLongRowsAndMixedDevices) {
  REQUIRE_CUDA();
  Engine eng;
  ops::AttentionSoftmaxParams p;
  p.batch = 1; p.heads = 1; p.seq = ops::attention_softmax_max_seq() + 8;
  const Shape big{p.seq * p.seq};
  engine::Tensor s = eng.empty(big, DType::kBF16);
  EXPECT_THROW(ops::attention_softmax_forward(s, s, TensorView{}, p, eng), engine::Error);
  TestTensor a(eng, Device::kCUDA, {2, 3, 4, 5}, DType::kF32), b(eng, Device::kCPU, {6, 20}, DType::kF32);
  EXPECT_THROW(ops::attention_to_head_major(a, b, {2, 3, 4, 5}, eng), engine::Error);
}

}  // namespace
