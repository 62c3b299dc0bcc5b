// tests/ops/attention_cpu_test.cpp (label cpu): the attention composite (ops/attention.h) and its pieces on the
// CPU backend: f64 finite differences of the whole composite, an independent naive reference of SPEC.md §1.4
// in f32/bf16/f16, the all-masked-row deviation, the layout round trip, and error paths.
#include <cmath>
#include <limits>

#include "ops/attention.h"
#include "ops/attention_layout.h"
#include "ops/attention_softmax.h"
#include "tests/test_util.h"

namespace {

using namespace test;

// Key mask (B, T): sequence 0 unpadded, sequence b > 0 right-padded by b keys (at least one real key left).
std::vector<double> right_padding(int64_t B, int64_t T) {
  std::vector<double> m(B * T, 1.0);
  for (int64_t b = 1; b < B; ++b)
    for (int64_t t = std::max<int64_t>(1, T - b); t < T; ++t) m[b * T + t] = 0.0;
  return m;
}

struct FdCase {
  int64_t kv_heads;  // H = 4, so the GQA ratio is 4 / kv_heads
  float softcap;
  int64_t window;
  bool padding;
};

class AttentionFd : public ::testing::TestWithParam<FdCase> {};

TEST_P(AttentionFd, BackwardMatchesFiniteDifferences) {
  const FdCase c = GetParam();
  Engine eng({engine::Backend::kCPU});
  ops::AttentionParams p;
  p.batch = 2; p.seq = 5; p.heads = 4; p.kv_heads = c.kv_heads; p.head_dim = 6;
  p.scale = 0.35f;  // not 1/sqrt(hd): the scale is its own parameter
  p.softcap = c.softcap;
  p.window = c.window;
  const int64_t NT = p.batch * p.seq, nq = NT * p.heads * p.head_dim, nkv = NT * p.kv_heads * p.head_dim;
  // Scores reach |s * scale| ~ 3-6, so with softcap 2 the tanh is well into its curved part.
  TestTensor q(eng, Device::kCPU, {NT, p.heads * p.head_dim}, DType::kF64, random_normal(nq, 31, 1.5));
  TestTensor k(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64, random_normal(nkv, 32, 1.5));
  TestTensor v(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64, random_normal(nkv, 33));
  TestTensor mask(eng, Device::kCPU, {p.batch, p.seq}, DType::kI32,
                  c.padding ? right_padding(p.batch, p.seq) : std::vector<double>(NT, 1.0));
  TestTensor out(eng, Device::kCPU, {NT, p.heads * p.head_dim}, DType::kF64);
  TestTensor probs(eng, Device::kCPU, {p.batch, p.heads, p.seq, p.seq}, DType::kF64);
  const std::vector<double> g = random_normal(nq, 34);  // loss = sum(out * g)
  auto loss = [&] {
    ops::attention_forward(out, probs, q, k, v, mask, p, eng);
    return dot(out.values(), g);
  };
  loss();
  TestTensor dout(eng, Device::kCPU, {NT, p.heads * p.head_dim}, DType::kF64, g);
  TestTensor dq(eng, Device::kCPU, {NT, p.heads * p.head_dim}, DType::kF64);
  TestTensor dk(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64);
  TestTensor dv(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64);
  ops::attention_backward(dq, dk, dv, dout, q, k, v, probs, mask, p, eng);
  EXPECT_CLOSE(dq.values(), numeric_grad(loss, q), (Tol{1e-7, 1e-6}));
  EXPECT_CLOSE(dk.values(), numeric_grad(loss, k), (Tol{1e-7, 1e-6}));
  EXPECT_CLOSE(dv.values(), numeric_grad(loss, v), (Tol{1e-7, 1e-6}));
  EXPECT_GUARDS_INTACT(dq); EXPECT_GUARDS_INTACT(dk); EXPECT_GUARDS_INTACT(dv);
  EXPECT_GUARDS_INTACT(out); EXPECT_GUARDS_INTACT(probs);
  // Without the saved probabilities the backward recomputes them: the same bits.
  loss();  // numeric_grad left q, k, v as they were; probs of the unperturbed inputs again
  TestTensor dq2(eng, Device::kCPU, {NT, p.heads * p.head_dim}, DType::kF64);
  TestTensor dk2(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64);
  TestTensor dv2(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, DType::kF64);
  ops::attention_backward(dq, dk, dv, dout, q, k, v, probs, mask, p, eng);
  ops::attention_backward(dq2, dk2, dv2, dout, q, k, v, TensorView{}, mask, p, eng);
  EXPECT_CLOSE(dq2.values(), dq.values(), (Tol{0, 0}));
  EXPECT_CLOSE(dk2.values(), dk.values(), (Tol{0, 0}));
  EXPECT_CLOSE(dv2.values(), dv.values(), (Tol{0, 0}));
  // A small scratch budget runs the backward in chunks: one kv group (1 byte), then KV groups' worth of S and
  // dS (one batch entry per chunk with saved probabilities; kv groups of one entry when P is recomputed too)
  // - the same bits every way.
  const int64_t entry_bytes = p.heads * p.seq * p.seq * 8 * 2;  // KV groups of g heads, S and dS, f64
  for (int64_t budget : {int64_t(1), entry_bytes}) {
    ops::AttentionParams pc = p;
    pc.backward_scratch_bytes = budget;
    EXPECT_EQ(ops::attention_backward_chunk_groups(pc, DType::kF64, true), budget == 1 ? 1 : p.kv_heads);
    for (bool keep : {true, false}) {
      SCOPED_TRACE("budget " + std::to_string(budget) + (keep ? " probs kept" : " probs recomputed"));
      ops::attention_backward(dq2, dk2, dv2, dout, q, k, v, keep ? TensorView(probs) : TensorView{}, mask, pc, eng);
      EXPECT_CLOSE(dq2.values(), dq.values(), (Tol{0, 0}));
      EXPECT_CLOSE(dk2.values(), dk.values(), (Tol{0, 0}));
      EXPECT_CLOSE(dv2.values(), dv.values(), (Tol{0, 0}));
    }
  }
}

TEST(AttentionCpu, BackwardChunksFollowTheScratchBudget) {
  ops::AttentionParams p;  // Gemma-2-2B: 8 heads, 4 kv heads, bf16; default budget 512 MiB
  p.batch = 1; p.heads = 8; p.kv_heads = 4; p.head_dim = 256;
  p.seq = 2048;
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, false), 4);  // 3 x 16 MiB per group: one chunk
  p.seq = 4096;
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, true), 4);   // 2 x 64 MiB per group
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, false), 2);  // 3 x 64 MiB: two groups
  p.seq = 8192;
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, false), 1);
  p.batch = 4; p.seq = 1024;
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, false), 16);  // all 16 groups
  p.seq = 2048;
  EXPECT_EQ(ops::attention_backward_chunk_groups(p, DType::kBF16, false), 8);  // 48 MiB each: two whole entries
}

std::string fd_name(const ::testing::TestParamInfo<FdCase>& i) {
  return "gqa" + std::to_string(4 / i.param.kv_heads) + (i.param.softcap > 0 ? "_cap" : "_nocap") + "_w" +
         std::to_string(i.param.window) + (i.param.padding ? "_pad" : "");
}

INSTANTIATE_TEST_SUITE_P(Configs, AttentionFd,
                         ::testing::Values(FdCase{2, 2.f, 3, true},    // GQA 2, softcap, window bites, padding
                                           FdCase{4, 2.f, 3, true},    // GQA 1 (MHA)
                                           FdCase{1, 2.f, 0, false},   // GQA 4, plain causal
                                           FdCase{2, 0.f, 2, true}),   // no softcap
                         fd_name);

// ---- independent naive reference: SPEC.md §1.4 items 3-5 literally, per (b, h, i, j) --------------------
// Same rounding points as HF eager: QK^T -> act, *scale -> act, /cap, tanh, *cap -> act each, + finfo.min
// mask in act, softmax in wide precision -> act, P V -> act.
std::vector<double> naive_attention(const std::vector<double>& q, const std::vector<double>& k,
                                    const std::vector<double>& v, const std::vector<double>& mask,
                                    const ops::AttentionParams& p, DType dt) {
  const int64_t B = p.batch, T = p.seq, H = p.heads, KV = p.kv_heads, hd = p.head_dim;
  // torch.finfo(dt).min: -65504 (f16), -3.3895e38 (bf16, bits 0xff7f), -3.4028e38 (f32).
  const double fmin = dt == DType::kF16    ? -65504.0
                      : dt == DType::kBF16 ? double(engine::bf16_to_f32(0xff7f))
                                           : double(std::numeric_limits<float>::lowest());
  auto r = [dt](double x) { return engine::round_to(dt, x); };
  std::vector<double> o(B * T * H * hd);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      const int64_t kvh = h / (H / KV);  // repeat_kv
      for (int64_t i = 0; i < T; ++i) {
        std::vector<double> s(T);
        for (int64_t j = 0; j < T; ++j) {
          double acc = 0;
          for (int64_t d = 0; d < hd; ++d)
            acc += q[((b * T + i) * H + h) * hd + d] * k[((b * T + j) * KV + kvh) * hd + d];
          double x = r(r(acc) * double(p.scale));
          if (p.softcap > 0) x = r(r(std::tanh(r(x / double(p.softcap)))) * double(p.softcap));
          const bool ok = j <= i && (p.window == 0 || j > i - p.window) && mask[b * T + j] != 0;
          s[j] = ok ? x : r(x + fmin);
        }
        double mx = -INFINITY, sum = 0;
        for (double x : s) mx = std::max(mx, x);
        for (double& x : s) sum += (x = std::exp(x - mx));
        for (double& x : s) x = r(x / sum);
        for (int64_t d = 0; d < hd; ++d) {
          double acc = 0;
          for (int64_t j = 0; j < T; ++j) acc += s[j] * v[((b * T + j) * KV + kvh) * hd + d];
          o[((b * T + i) * H + h) * hd + d] = r(acc);
        }
      }
    }
  return o;
}

class AttentionNaive : public ::testing::TestWithParam<DType> {};

TEST_P(AttentionNaive, ForwardMatchesNaiveReference) {
  const DType dt = GetParam();
  Engine eng({engine::Backend::kCPU});
  ops::AttentionParams p;
  p.batch = 2; p.seq = 9; p.heads = 4; p.kv_heads = 2; p.head_dim = 16;
  p.scale = 0.25f; p.softcap = 5.f; p.window = 4;
  const int64_t NT = p.batch * p.seq, nq = NT * p.heads * p.head_dim, nkv = NT * p.kv_heads * p.head_dim;
  TestTensor q(eng, Device::kCPU, {NT, p.heads * p.head_dim}, dt, random_normal(nq, 41));
  TestTensor k(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, dt, random_normal(nkv, 42));
  TestTensor v(eng, Device::kCPU, {NT, p.kv_heads * p.head_dim}, dt, random_normal(nkv, 43));
  const std::vector<double> mv = right_padding(p.batch, p.seq);
  TestTensor mask(eng, Device::kCPU, {p.batch, p.seq}, DType::kI32, mv);
  TestTensor out(eng, Device::kCPU, {NT, p.heads * p.head_dim}, dt);
  TestTensor probs(eng, Device::kCPU, {p.batch, p.heads, p.seq, p.seq}, dt);
  ops::attention_forward(out, probs, q, k, v, mask, p, eng);
  // Same rounding points, f64 arithmetic in both: equal to the last bit.
  EXPECT_CLOSE(out.values(), naive_attention(q.values(), k.values(), v.values(), mv, p, dt), (Tol{0, 0}));
  EXPECT_GUARDS_INTACT(out); EXPECT_GUARDS_INTACT(probs);
}

INSTANTIATE_TEST_SUITE_P(Dtypes, AttentionNaive, ::testing::Values(DType::kF32, DType::kBF16, DType::kF16),
                         [](const ::testing::TestParamInfo<DType>& i) { return engine::dtype_name(i.param); });

// Softmax row op alone: masked entries are exactly 0, rows sum to 1, the window bites.
TEST(AttentionSoftmaxCpu, MaskedEntriesAreZeroAndRowsSumToOne) {
  Engine eng({engine::Backend::kCPU});
  ops::AttentionSoftmaxParams p;
  p.batch = 2; p.heads = 3; p.seq = 7; p.scale = 0.5f; p.softcap = 4.f; p.window = 3;
  const int64_t n = p.batch * p.heads * p.seq * p.seq;
  TestTensor s(eng, Device::kCPU, {n}, DType::kF64, random_normal(n, 51, 3.0));
  const std::vector<double> mv = right_padding(p.batch, p.seq);
  TestTensor mask(eng, Device::kCPU, {p.batch, p.seq}, DType::kI32, mv), pr(eng, Device::kCPU, {n}, DType::kF64);
  ops::cpu::attention_softmax_forward(pr, s, mask, p);
  const auto pv = pr.values();
  for (int64_t row = 0; row < p.batch * p.heads * p.seq; ++row) {
    const int64_t i = row % p.seq, b = row / (p.heads * p.seq);
    double sum = 0;
    for (int64_t j = 0; j < p.seq; ++j) {
      const double x = pv[row * p.seq + j];
      const bool ok = j <= i && j > i - p.window && mv[b * p.seq + j] != 0;
      if (!ok) EXPECT_EQ(x, 0.0) << "row " << row << " key " << j;
      else EXPECT_GT(x, 0.0) << "row " << row << " key " << j;
      sum += x;
    }
    EXPECT_NEAR(sum, 1.0, 1e-12) << "row " << row;
  }
}

// Deliberate deviation from HF (NaN): with left padding a pad query row has no allowed key; its probs,
// output and gradients are all zero, and nothing non-finite reaches the real rows.
TEST(AttentionCpu, FullyMaskedRowGivesZerosNotNaN) {
  Engine eng({engine::Backend::kCPU});
  ops::AttentionParams p;
  p.batch = 1; p.seq = 4; p.heads = 2; p.kv_heads = 1; p.head_dim = 3; p.scale = 0.5f; p.softcap = 50.f;
  const int64_t NT = 4, nq = NT * 2 * 3, nkv = NT * 3;
  TestTensor q(eng, Device::kCPU, {NT, 6}, DType::kF16, random_normal(nq, 61));
  TestTensor k(eng, Device::kCPU, {NT, 3}, DType::kF16, random_normal(nkv, 62));
  TestTensor v(eng, Device::kCPU, {NT, 3}, DType::kF16, random_normal(nkv, 63));
  TestTensor mask(eng, Device::kCPU, {1, 4}, DType::kI32, {0, 0, 1, 1});  // left padding by 2
  TestTensor out(eng, Device::kCPU, {NT, 6}, DType::kF16), probs(eng, Device::kCPU, {1, 2, 4, 4}, DType::kF16);
  ops::attention_forward(out, probs, q, k, v, mask, p, eng);
  TestTensor dout(eng, Device::kCPU, {NT, 6}, DType::kF16, random_normal(nq, 64));
  TestTensor dq(eng, Device::kCPU, {NT, 6}, DType::kF16), dk(eng, Device::kCPU, {NT, 3}, DType::kF16),
      dv(eng, Device::kCPU, {NT, 3}, DType::kF16);
  ops::attention_backward(dq, dk, dv, dout, q, k, v, probs, mask, p, eng);
  const auto o = out.values(), pr = probs.values(), gq = dq.values(), gk = dk.values(), gv = dv.values();
  for (const auto* t : {&o, &pr, &gq, &gk, &gv}) EXPECT_ALL_FINITE(*t);
  for (int64_t t = 0; t < 2; ++t) {  // pad queries 0 and 1: nothing allowed
    for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(o[t * 6 + c], 0.0);
    for (int64_t c = 0; c < 6; ++c) EXPECT_EQ(gq[t * 6 + c], 0.0);
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(gk[t * 3 + c], 0.0);  // pad keys get no gradient
    for (int64_t c = 0; c < 3; ++c) EXPECT_EQ(gv[t * 3 + c], 0.0);
  }
  for (int64_t h = 0; h < 2; ++h)
    for (int64_t j = 0; j < 4; ++j) EXPECT_EQ(pr[(h * 4 + 2) * 4 + j], j == 2 ? 1.0 : 0.0);  // query 2 sees itself
}

TEST(AttentionLayoutCpu, RoundTripIsIdentityAndMatchesIndexFormula) {
  Engine eng({engine::Backend::kCPU});
  const ops::AttentionLayoutParams p{2, 5, 3, 7};
  const int64_t n = 2 * 5 * 3 * 7;
  const auto xv = random_normal(n, 71);
  TestTensor x(eng, Device::kCPU, {10, 21}, DType::kBF16, xv), hm(eng, Device::kCPU, {2, 3, 5, 7}, DType::kBF16),
      back(eng, Device::kCPU, {10, 21}, DType::kBF16);
  ops::attention_to_head_major(hm, x, p, eng);
  ops::attention_to_token_major(back, hm, p, eng);
  const auto xr = x.values(), h = hm.values();
  EXPECT_CLOSE(back.values(), xr, (Tol{0, 0}));
  for (int64_t b = 0; b < 2; ++b)
    for (int64_t t = 0; t < 5; ++t)
      for (int64_t hh = 0; hh < 3; ++hh)
        for (int64_t d = 0; d < 7; ++d)
          EXPECT_EQ(h[((b * 3 + hh) * 5 + t) * 7 + d], xr[((b * 5 + t) * 3 + hh) * 7 + d]);
  EXPECT_GUARDS_INTACT(hm); EXPECT_GUARDS_INTACT(back);
}

TEST(AttentionCpu, RejectsBadShapesAndParams) {
  Engine eng({engine::Backend::kCPU});
  ops::AttentionParams p;
  p.batch = 1; p.seq = 4; p.heads = 4; p.kv_heads = 2; p.head_dim = 2;
  TestTensor q(eng, Device::kCPU, {4, 8}, DType::kF32, random_normal(32, 81));
  TestTensor k(eng, Device::kCPU, {4, 4}, DType::kF32, random_normal(16, 82));
  TestTensor v(eng, Device::kCPU, {4, 4}, DType::kF32, random_normal(16, 83));
  TestTensor out(eng, Device::kCPU, {4, 8}, DType::kF32), probs(eng, Device::kCPU, {1, 4, 4, 4}, DType::kF32);
  TestTensor k16(eng, Device::kCPU, {4, 4}, DType::kF16, random_normal(16, 84));
  TestTensor mask_f(eng, Device::kCPU, {1, 4}, DType::kF32, {1, 1, 1, 1});
  TestTensor mask_short(eng, Device::kCPU, {1, 3}, DType::kI32, {1, 1, 1});
  const TensorView none;
  EXPECT_NO_THROW(ops::attention_forward(out, probs, q, k, v, none, p, eng));
  ops::AttentionParams bad = p;
  bad.kv_heads = 3;  // 4 % 3 != 0
  EXPECT_THROW(ops::attention_forward(out, probs, q, k, v, none, bad, eng), engine::Error);
  bad = p;
  bad.window = -1;
  EXPECT_THROW(ops::attention_forward(out, probs, q, k, v, none, bad, eng), engine::Error);
  EXPECT_THROW(ops::attention_forward(out, probs, q, v, q, none, p, eng), engine::Error);   // v too big
  EXPECT_THROW(ops::attention_forward(out, probs, q, k16, v, none, p, eng), engine::Error);  // dtype mix
  EXPECT_THROW(ops::attention_forward(out, probs, q, k, v, mask_f, p, eng), engine::Error);
  EXPECT_THROW(ops::attention_forward(out, probs, q, k, v, mask_short, p, eng), engine::Error);
  EXPECT_THROW(ops::attention_forward(out, out, q, k, v, none, p, eng), engine::Error);  // probs too small
  TestTensor dk_small(eng, Device::kCPU, {4, 2}, DType::kF32);
  TestTensor dq(eng, Device::kCPU, {4, 8}, DType::kF32), dv(eng, Device::kCPU, {4, 4}, DType::kF32);
  EXPECT_THROW(ops::attention_backward(dq, dk_small, dv, out, q, k, v, probs, none, p, eng), engine::Error);
  TestTensor hm(eng, Device::kCPU, {1, 4, 4, 3}, DType::kF32);
  EXPECT_THROW(ops::attention_to_head_major(hm, q, {1, 4, 4, 2}, eng), engine::Error);
  TestTensor s(eng, Device::kCPU, {1, 4, 4, 4}, DType::kF32, random_normal(64, 85));
  ops::AttentionSoftmaxParams sp;
  sp.batch = 1; sp.heads = 4; sp.seq = 5;
  EXPECT_THROW(ops::cpu::attention_softmax_forward(probs, s, none, sp), engine::Error);
}

}  // namespace
