// tests/ops/attention_decode_gpu_test.cpp (label gpu): CUDA decode attention against the CPU reference on the
// same rounded inputs, f32/bf16/f16: odd shapes, GQA, windows, prefill and single-token decode, hd above the
// block size, and Gemma-2-2B shapes (H=8, KV=4, hd=256) against a 4096-row cache, sliding (4096) and global.
// The output starts as NaN poison, so all-finite results also show every element is SET.
#include <cmath>

#include "ops/attention_decode.h"
#include "tests/test_util.h"

namespace {

using namespace test;

struct Case {
  DType dt;
  int64_t n, past, cap, H, KV, hd, window;
  float softcap;
};

std::string case_name(const ::testing::TestParamInfo<Case>& i) {
  const Case& c = i.param;
  return std::string(engine::dtype_name(c.dt)) + "_n" + std::to_string(c.n) + "_p" + std::to_string(c.past) + "_H" +
         std::to_string(c.H) + "_KV" + std::to_string(c.KV) + "_hd" + std::to_string(c.hd) + "_w" +
         std::to_string(c.window) + (c.softcap > 0 ? "_cap" : "_nocap");
}

// The CUDA kernel sums in f32 in another order than the f64 reference: a score or a probability near an
// act-dtype rounding boundary can round the other way, so allow two ulps of the output format (tol_for), plus
// an absolute term scaled to the output's size for the long f32 sums of the Gemma shapes.
class AttentionDecodeGpu : public ::testing::TestWithParam<Case> {};

TEST_P(AttentionDecodeGpu, MatchesCpu) {
  REQUIRE_CUDA();
  const Case c = GetParam();
  Engine eng;
  ops::AttentionDecodeParams p;
  p.queries = c.n; p.past = c.past; p.heads = c.H; p.kv_heads = c.KV; p.head_dim = c.hd;
  p.scale = 0.0625f; p.softcap = c.softcap; p.window = c.window;
  const int64_t qc = c.H * c.hd, kc = c.KV * c.hd;
  // As in attention_gpu_test: N(0,1) q and k give |QK^T * 0.0625| ~ 1 at hd=256; small hd gets a larger spread.
  const double qk_scale = c.hd >= 64 ? 1.0 : 3.0;
  const auto qv = random_normal(c.n * qc, 21, qk_scale), kv = random_normal(c.cap * kc, 22, qk_scale),
             vv = random_normal(c.cap * kc, 23);
  std::vector<double> got, want;
  for (Device dev : {Device::kCPU, Device::kCUDA}) {
    TestTensor q(eng, dev, {c.n, qc}, c.dt, qv), k(eng, dev, {c.cap, kc}, c.dt, kv), v(eng, dev, {c.cap, kc}, c.dt, vv),
        out(eng, dev, {c.n, qc}, c.dt);
    ops::attention_decode_forward(out, q, k, v, p, eng);
    (dev == Device::kCPU ? want : got) = out.values();
    EXPECT_GUARDS_INTACT(out);
  }
  EXPECT_ALL_FINITE(got);
  Tol tol = tol_for(c.dt);
  if (c.dt == DType::kF32) tol.atol = 2e-5;
  EXPECT_CLOSE(got, want, tol);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionDecodeGpu,
    ::testing::Values(
        // odd sizes: prefill, decode, chunk; window smaller than the sequence; GQA 3; no softcap
        Case{DType::kF32, 13, 0, 13, 6, 2, 7, 5, 50.f}, Case{DType::kBF16, 13, 0, 13, 6, 2, 7, 5, 50.f},
        Case{DType::kF16, 13, 0, 13, 6, 2, 7, 5, 50.f}, Case{DType::kF32, 1, 40, 50, 3, 1, 33, 0, 50.f},
        Case{DType::kBF16, 1, 40, 50, 3, 1, 33, 9, 50.f}, Case{DType::kF16, 5, 17, 30, 4, 4, 12, 0, 0.f},
        Case{DType::kF32, 3, 100, 103, 2, 1, 300, 0, 50.f},  // hd > block size: G = 1, two dims per thread
        // Gemma-2-2B: decode at the end of a 4096-row cache (sliding layer: W = 4096 keys; global: all),
        // and a chunk of 64 tokens after 3000 cached ones.
        Case{DType::kBF16, 1, 4095, 4096, 8, 4, 256, 4096, 50.f}, Case{DType::kF32, 1, 4095, 4096, 8, 4, 256, 0, 50.f},
        Case{DType::kF16, 1, 4095, 4096, 8, 4, 256, 1024, 50.f},
        Case{DType::kBF16, 64, 3000, 4096, 8, 4, 256, 4096, 50.f}),
    case_name);

TEST(AttentionDecodeGpuAlone, RejectsTooManyKeys) {
  REQUIRE_CUDA();
  Engine eng;
  const int64_t cap = ops::attention_decode_max_keys() + 1;
  ops::AttentionDecodeParams p;
  p.queries = 1; p.past = cap - 1; p.heads = 1; p.kv_heads = 1; p.head_dim = 4;
  TestTensor q(eng, Device::kCUDA, {1, 4}, DType::kF32, random_normal(4, 1)),
      k(eng, Device::kCUDA, {cap, 4}, DType::kF32, random_normal(cap * 4, 2)), out(eng, Device::kCUDA, {1, 4}, DType::kF32);
  EXPECT_THROW(ops::attention_decode_forward(out, q, k, k, p, eng), engine::Error);
  p.window = 4096;  // a sliding layer reads at most W keys: fine
  ops::attention_decode_forward(out, q, k, k, p, eng);
  EXPECT_ALL_FINITE(out.values());
}

}  // namespace
