// tests/ops/attention_decode_cpu_test.cpp (label cpu): decode attention against the training op
// (ops::attention_forward, itself checked against a naive SPEC.md §1.4 reference and finite differences):
// a prefill (p0 = 0, n = T) and token-by-token decoding (n = 1) and chunked decoding must reproduce its rows,
// bit for bit in every dtype on the CPU backend (same sums in the same order, same rounding points); GQA,
// sliding window smaller than T, softcap on and off; error paths.
#include <cmath>

#include "ops/attention.h"
#include "ops/attention_decode.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct Case {
  DType dt;
  int64_t T, H, KV, hd, window;
  float softcap;
};

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  const Case& c = i.param;
  return std::string(engine::dtype_name(c.dt)) + "_T" + std::to_string(c.T) + "_H" + std::to_string(c.H) + "_KV" +
         std::to_string(c.KV) + "_hd" + std::to_string(c.hd) + "_w" + std::to_string(c.window) +
         (c.softcap > 0 ? "_cap" : "_nocap");
}

class AttentionDecodeCpu : public ::testing::TestWithParam<Case> {
 protected:
  // The training op's output (T, H*hd) on the whole sequence.
  std::vector<double> reference(Engine& eng, const Case& c, const std::vector<double>& qv,
                                const std::vector<double>& kv, const std::vector<double>& vv) {
    ops::AttentionParams p;
    p.batch = 1; p.seq = c.T; p.heads = c.H; p.kv_heads = c.KV; p.head_dim = c.hd;
    p.scale = 0.3f; p.softcap = c.softcap; p.window = c.window;
    TestTensor q(eng, Device::kCPU, {c.T, c.H * c.hd}, c.dt, qv), k(eng, Device::kCPU, {c.T, c.KV * c.hd}, c.dt, kv),
        v(eng, Device::kCPU, {c.T, c.KV * c.hd}, c.dt, vv), out(eng, Device::kCPU, {c.T, c.H * c.hd}, c.dt),
        probs(eng, Device::kCPU, {1, c.H, c.T, c.T}, c.dt);
    ops::attention_forward(out, probs, q, k, v, TensorView{}, p, eng);
    return out.values();
  }
  static ops::AttentionDecodeParams params(const Case& c, int64_t n, int64_t p0) {
    ops::AttentionDecodeParams p;
    p.queries = n; p.past = p0; p.heads = c.H; p.kv_heads = c.KV; p.head_dim = c.hd;
    p.scale = 0.3f; p.softcap = c.softcap; p.window = c.window;
    return p;
  }
};

TEST_P(AttentionDecodeCpu, PrefillAndIncrementalEqualTheTrainingOp) {
  const Case c = GetParam();
  Engine eng({engine::Backend::kCPU});
  const int64_t qc = c.H * c.hd, kc = c.KV * c.hd, cap = c.T + 3;  // the cache is longer than the sequence
  // Scores reach |s * scale| of several units, so a softcap of 2 bends them.
  const auto qv = random_normal(c.T * qc, 11, 1.5), kv = random_normal(c.T * kc, 12, 1.5),
             vv = random_normal(c.T * kc, 13);
  const std::vector<double> want = reference(eng, c, qv, kv, vv);
  // The cache holds all T keys and values (a cache filled as generation goes holds the same rows).
  std::vector<double> kcache(kv), vcache(vv);
  kcache.resize(size_t(cap * kc), 1e6);  // rows past p0+n must never be read: huge values would show
  vcache.resize(size_t(cap * kc), 1e6);
  TestTensor k(eng, Device::kCPU, {cap, kc}, c.dt, kcache), v(eng, Device::kCPU, {cap, kc}, c.dt, vcache);

  // Prefill: n = T, p0 = 0.
  TestTensor q(eng, Device::kCPU, {c.T, qc}, c.dt, qv), out(eng, Device::kCPU, {c.T, qc}, c.dt);
  ops::attention_decode_forward(out, q, k, v, params(c, c.T, 0), eng);
  EXPECT_EQ(out.values(), want);
  EXPECT_GUARDS_INTACT(out);

  // Token by token (n = 1, p0 = t), then in chunks of 3 (n = 3 except the last).
  for (int64_t chunk : {int64_t(1), int64_t(3)}) {
    std::vector<double> got;
    for (int64_t t = 0; t < c.T; t += chunk) {
      const int64_t n = std::min(chunk, c.T - t);
      TestTensor qt(eng, Device::kCPU, {n, qc}, c.dt,
                    std::vector<double>(qv.begin() + t * qc, qv.begin() + (t + n) * qc));
      TestTensor ot(eng, Device::kCPU, {n, qc}, c.dt);
      // Only rows 0..t+n-1 are valid at this step: poison the rest of a copy of the cache.
      std::vector<double> kpart(kcache), vpart(vcache);
      for (size_t e = size_t((t + n) * kc); e < kpart.size(); ++e) kpart[e] = vpart[e] = NAN;
      TestTensor kt(eng, Device::kCPU, {cap, kc}, c.dt, kpart), vt(eng, Device::kCPU, {cap, kc}, c.dt, vpart);
      ops::attention_decode_forward(ot, qt, kt, vt, params(c, n, t), eng);
      const auto o = ot.values();
      got.insert(got.end(), o.begin(), o.end());
    }
    EXPECT_EQ(got, want) << "chunk " << chunk;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionDecodeCpu,
    ::testing::Values(Case{DType::kF64, 9, 4, 2, 6, 4, 2.f},     // window 4 < T, GQA 2, softcap bends
                      Case{DType::kF32, 9, 4, 2, 6, 4, 2.f},
                      Case{DType::kF32, 7, 3, 1, 5, 0, 50.f},    // GQA 3, odd hd, plain causal
                      Case{DType::kF32, 8, 2, 2, 4, 3, 0.f},     // MHA, no softcap
                      Case{DType::kBF16, 9, 4, 2, 6, 4, 2.f},
                      Case{DType::kF16, 9, 4, 2, 6, 4, 2.f},
                      Case{DType::kBF16, 12, 8, 4, 16, 5, 50.f}),
    case_name);

TEST(AttentionDecodeCpuAlone, SingleKeyCopiesItsValue) {
  // The first token attends only to itself: p = 1, out = v (rounded), whatever q and k are.
  Engine eng({engine::Backend::kCPU});
  ops::AttentionDecodeParams p;
  p.queries = 1; p.past = 0; p.heads = 2; p.kv_heads = 1; p.head_dim = 3;
  TestTensor q(eng, Device::kCPU, {1, 6}, DType::kF32, random_normal(6, 1)),
      k(eng, Device::kCPU, {4, 3}, DType::kF32, random_normal(12, 2)),
      v(eng, Device::kCPU, {4, 3}, DType::kF32, random_normal(12, 3)), out(eng, Device::kCPU, {1, 6}, DType::kF32);
  ops::attention_decode_forward(out, q, k, v, p, eng);
  const auto vv = v.values(), o = out.values();
  for (int h = 0; h < 2; ++h)
    for (int d = 0; d < 3; ++d) EXPECT_EQ(o[size_t(h * 3 + d)], vv[size_t(d)]);
}

TEST(AttentionDecodeCpuAlone, RejectsBadShapesAndParams) {
  Engine eng({engine::Backend::kCPU});
  ops::AttentionDecodeParams p;
  p.queries = 2; p.past = 3; p.heads = 4; p.kv_heads = 2; p.head_dim = 4;
  TestTensor q(eng, Device::kCPU, {2, 16}, DType::kF32, random_normal(32, 1)),
      out(eng, Device::kCPU, {2, 16}, DType::kF32), k(eng, Device::kCPU, {5, 8}, DType::kF32, random_normal(40, 2)),
      v(eng, Device::kCPU, {5, 8}, DType::kF32, random_normal(40, 3)),
      k16(eng, Device::kCPU, {5, 8}, DType::kF16, random_normal(40, 2)),
      kshort(eng, Device::kCPU, {4, 8}, DType::kF32, random_normal(32, 2));
  ops::attention_decode_forward(out, q, k, v, p, eng);  // valid: 5 rows = p0 + n
  EXPECT_THROW(ops::attention_decode_forward(out, q, kshort, kshort, p, eng), engine::Error);  // cache too short
  EXPECT_THROW(ops::attention_decode_forward(out, q, k16, v, p, eng), engine::Error);          // dtype mix
  ops::AttentionDecodeParams bad = p;
  bad.kv_heads = 3;
  EXPECT_THROW(ops::attention_decode_forward(out, q, k, v, bad, eng), engine::Error);  // H % KV != 0
  bad = p;
  bad.queries = 0;
  EXPECT_THROW(ops::attention_decode_forward(out, q, k, v, bad, eng), engine::Error);
  bad = p;
  bad.head_dim = 8;  // q and the cache no longer hold H*hd / KV*hd columns
  EXPECT_THROW(ops::attention_decode_forward(out, q, k, v, bad, eng), engine::Error);
  bad = p;
  bad.window = -1;
  EXPECT_THROW(ops::attention_decode_forward(out, q, k, v, bad, eng), engine::Error);
}

}  // namespace
