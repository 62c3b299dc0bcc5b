// tests/models/generate_gpu_test.cpp (label gpu): generation on CUDA against the CPU backend on tiny random
// Gemma-2 models: greedy tokens equal for 24 tokens in f32 (dense, and NF4 + LoRA), the decode logits of each
// step close to the CPU ones, and the CUDA KV-cached logits close to the CUDA no-cache forward. The weights are
// large enough (std 0.3, norm weights std 2) that the top two logits differ by far more than f32 summation-order
// noise (on the CPU: at least 0.017 over the 25 steps, 13 distinct tokens dense / 7 with NF4 + LoRA), so an
// argmax flip means a bug, not a near-tie; the test checks that margin itself.
#include <cmath>

#include "engine/philox.h"
#include "models/generate.h"
#include "models/gemma2_random.h"
#include "tests/test_util.h"

namespace {

using namespace models;

std::vector<double> host_values(Engine& eng, const Tensor& t) {
  Tensor h = eng.empty_host(t.shape(), t.dtype());
  eng.copy(h, t);
  eng.synchronize();
  std::vector<double> v(size_t(t.numel()));
  for (size_t i = 0; i < v.size(); ++i) v[i] = engine::load_f64(h.data(), h.dtype(), int64_t(i));
  return v;
}

struct Loaded {
  std::unique_ptr<Gemma2Model> m;
  std::unique_ptr<LoraAdapters> lora;
};

Loaded load(const std::string& dir, Engine& eng, DType dt, bool qlora) {
  Loaded s;
  Gemma2Options o;
  o.compute_dtype = dt;
  o.quantize_nf4 = qlora;
  s.m = std::make_unique<Gemma2Model>(Gemma2Model::load(dir, eng, o));
  if (qlora) {
    LoraSpec ls;
    ls.r = 4;
    s.lora = std::make_unique<LoraAdapters>(s.m->config(), ls, eng);
    Tensor h = eng.empty_host(s.lora->params().shape(), DType::kF32);
    for (int64_t i = 0; i < h.numel(); ++i) h.ptr<float>()[i] = 0.2f * engine::philox_normal(8, 0, uint64_t(i));
    eng.copy(s.lora->params(), h);
    s.m->attach_lora(s.lora.get(), 0);
  }
  return s;
}

class GenerateGpu : public ::testing::TestWithParam<bool> {};

TEST_P(GenerateGpu, GreedyTokensEqualCpu) {
  REQUIRE_CUDA();
  const bool qlora = GetParam();
  test::TempDir tmp;
  Gemma2Config c = tiny_config(64, 96, 3, 4, 2, 16, 97);
  c.sliding_window = 5;  // the sliding layers 0 and 2 drop keys inside the 30-token sequence
  write_random_checkpoint(tmp.path(), c, DType::kF32, RandomInit{3, 0.3, 2.0});
  Engine cpu({engine::Backend::kCPU}), gpu;
  Loaded sc = load(tmp.path(), cpu, DType::kF32, qlora), sg = load(tmp.path(), gpu, DType::kF32, qlora);
  const std::vector<int32_t> prompt = {2, 45, 17, 80, 3, 61};
  GenerateOptions o;
  o.max_new_tokens = 24;
  o.ignore_eos = true;
  const GenerateResult rc = Generator(*sc.m, 64).generate(prompt, o), rg = Generator(*sg.m, 64).generate(prompt, o);
  ASSERT_EQ(rc.ids.size(), 24u);
  EXPECT_EQ(rg.ids, rc.ids);

  // Step by step on the CPU's tokens: logits close, and the CPU's top-2 margin far above the difference.
  KvCache kc(cpu, c, DType::kF32, 64), kg(gpu, c, DType::kF32, 64);
  std::vector<int32_t> feed(prompt);
  for (size_t t = 0; t <= rc.ids.size(); ++t) {
    const std::vector<double> lc = host_values(cpu, sc.m->forward_cached(feed, kc)),
                              lg = host_values(gpu, sg.m->forward_cached(feed, kg));
    double diff = 0;
    for (size_t j = 0; j < lc.size(); ++j) diff = std::max(diff, std::fabs(lc[j] - lg[j]));
    std::vector<double> sorted(lc);
    std::sort(sorted.rbegin(), sorted.rend());
    EXPECT_LT(diff, 1e-3) << "step " << t;
    EXPECT_GT(sorted[0] - sorted[1], 10 * diff) << "step " << t << ": a near-tie; pick another seed";
    if (t < rc.ids.size()) feed = {rc.ids[t]};
  }
}

INSTANTIATE_TEST_SUITE_P(Models, GenerateGpu, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "nf4_lora" : "dense"; });

TEST(GenerateGpuAlone, CachedLogitsMatchTheFullForwardBf16) {
  REQUIRE_CUDA();
  test::TempDir tmp;
  Gemma2Config c = tiny_config(64, 96, 2, 4, 2, 16, 97);
  c.sliding_window = 4;
  write_random_checkpoint(tmp.path(), c, DType::kF32, RandomInit{22, 0.3, 0.2});
  Engine gpu;
  Loaded s = load(tmp.path(), gpu, DType::kBF16, /*qlora=*/true);
  const std::vector<int32_t> ids = {2, 9, 33, 71, 5, 5, 40, 88, 13, 1, 60, 27};
  const int64_t T = int64_t(ids.size()), V = c.vocab_size;
  const std::vector<double> full = host_values(gpu, s.m->logits(make_batch(gpu, 1, T, ids, {}, ids)));
  KvCache cache(gpu, c, DType::kBF16, T);
  std::vector<double> got = host_values(gpu, s.m->forward_cached({ids.begin(), ids.begin() + 3}, cache));
  std::vector<double> want(full.begin() + 2 * V, full.begin() + 3 * V);
  EXPECT_CLOSE(got, want, (test::Tol{0.1, 0.05})) << "prefill";
  for (int64_t t = 3; t < T; ++t) {
    got = host_values(gpu, s.m->forward_cached({ids[size_t(t)]}, cache));
    want.assign(full.begin() + t * V, full.begin() + (t + 1) * V);
    // bf16 through 2 layers: cuBLASLt may sum a 1-row GEMM in another order than the T-row one, so a few
    // bf16 roundings differ along the way (the CPU test checks exact equality of the same computation).
    EXPECT_CLOSE(got, want, (test::Tol{0.1, 0.05})) << "position " << t;
  }
}

}  // namespace
