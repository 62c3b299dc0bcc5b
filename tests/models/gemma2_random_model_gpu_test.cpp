// tests/models/gemma2_random_model_gpu_test.cpp (label gpu): Gemma2Model::random on the device: the same
// weights as the CPU build (up to the libm ulp of engine/philox.h), the same model as the checkpoint path
// on the device, and the full Gemma-2-2B shape built quickly with one dense weight resident at a time.
#include <chrono>
#include <cmath>

#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "tests/test_util.h"

namespace {

using namespace models;

std::vector<double> values(Engine& eng, const Tensor& t) {
  Tensor h = eng.empty_host(t.shape(), t.dtype());
  eng.copy(h, t);
  eng.synchronize();
  std::vector<double> v(size_t(t.numel()));
  for (int64_t i = 0; i < t.numel(); ++i) v[size_t(i)] = engine::load_f64(h.data(), h.dtype(), i);
  return v;
}

Batch token_batch(Engine& eng, int64_t V) {
  std::vector<int32_t> ids(24);
  for (size_t i = 0; i < ids.size(); ++i) ids[i] = int32_t((11 * i + 5) % size_t(V));
  return make_batch(eng, 2, 12, ids, {}, ids);
}

TEST(Gemma2RandomGpu, DenseWeightsMatchTheCpuBuild) {
  REQUIRE_CUDA();
  const Gemma2Config c = tiny_config(32, 64, 2, 4, 2, 8, 101);
  const RandomInit init{3, 0.05, 0.2};
  Engine gpu, cpu({engine::Backend::kCPU});
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Gemma2Options o;
    o.compute_dtype = dt;
    Gemma2Model g = Gemma2Model::random(c, gpu, o, init), h = Gemma2Model::random(c, cpu, o, init);
    const auto pg = g.parameters(), ph = h.parameters();
    ASSERT_EQ(pg.size(), ph.size());
    for (size_t i = 0; i < pg.size(); ++i) {
      const auto want = values(cpu, ph[i]->value), got = values(gpu, pg[i]->value);
      // f32: a few ulps; bf16: one ulp where the f32 ulp crossed a rounding boundary.
      const double rtol = dt == DType::kF32 ? 1e-6 : std::ldexp(1.0, -7);
      EXPECT_CLOSE(got, want, (test::Tol{1e-30, rtol})) << engine::dtype_name(dt) << " " << ph[i]->name;
    }
  }
}

TEST(Gemma2RandomGpu, QuantizedModelMatchesTheCheckpointPathOnTheDevice) {
  REQUIRE_CUDA();
  const Gemma2Config c = tiny_config(64, 128, 2, 4, 2, 16, 211);
  const RandomInit init{8, 0.05, 0.1};
  test::TempDir tmp;
  write_random_checkpoint(tmp.path(), c, DType::kBF16, init);
  Engine eng;
  Gemma2Options o;
  o.compute_dtype = DType::kBF16;
  o.quantize_nf4 = true;
  Gemma2Model loaded = Gemma2Model::load(tmp.path(), eng, o);
  Gemma2Model made = Gemma2Model::random(c, eng, o, init);
  const Batch b = token_batch(eng, c.vocab_size);
  const auto want = values(eng, loaded.logits(b)), got = values(eng, made.logits(b));
  double mx = 0;
  for (double v : want) mx = std::max(mx, std::fabs(v));
  // A weight one bf16 ulp off can move to the neighbouring NF4 code: a small, not bit-exact, difference.
  EXPECT_CLOSE(got, want, (test::Tol{0.02 * mx, 0.0}));
  EXPECT_NEAR(made.loss_sum(b), loaded.loss_sum(b), 1e-3 * std::fabs(loaded.loss_sum(b)));
}

TEST(Gemma2RandomGpu, Gemma2_2bShapeBuildsFastInBoundedMemory) {
  REQUIRE_CUDA();
  Engine eng;
  const Gemma2Config c = Gemma2Config::gemma2_2b();
  Gemma2Options o;
  o.compute_dtype = DType::kBF16;
  o.quantize_nf4 = true;
  eng.allocator().reset_peak();
  const size_t before = eng.allocator().stats().current_bytes;
  const auto t0 = std::chrono::steady_clock::now();
  Gemma2Model m = Gemma2Model::random(c, eng, o, RandomInit{});
  eng.synchronize();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_EQ(m.num_base_params(), 2614341888);  // ANCHORS.md §5: 2.614B
  // Generous bound (the fill itself is ~ms; quantization and 186 allocations dominate).
  EXPECT_LT(secs, 10.0);
  // Embedding bf16 1.18 GB + NF4 ~1.05 GB + one dense scratch; the whole dense model (5.2 GB) never is.
  const double peak_gb = double(eng.allocator().stats().peak_bytes - before) * 1e-9;
  EXPECT_LT(peak_gb, 2.6);
  const Batch b = token_batch(eng, c.vocab_size);
  const double loss = m.loss_sum(b) / 22.0;  // 2 rows x 11 shifted targets
  EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NEAR(loss, std::log(256000.0), 1.5);  // std-0.02 weights: logits near 0, loss near ln V
}

}  // namespace
