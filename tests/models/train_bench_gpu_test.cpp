// tests/models/train_bench_gpu_test.cpp (label gpu): the bench_train core on the device (tiny preset, and a
// 2-layer Gemma-2-2B-width model): events split the step, memory and MFU are reported, fp16 runs.
#include <cmath>
#include <nlohmann/json.hpp>

#include "models/train_bench.h"
#include "tests/test_util.h"

namespace {

using namespace models;
using engine::DType;
using engine::Engine;

TEST(TrainBenchGpu, TinyPresetReportsEverything) {
  REQUIRE_CUDA();
  for (DType dt : {DType::kBF16, DType::kF16}) {
    Engine eng;
    TrainBenchConfig c;
    c.preset = "tiny";
    c.model = bench_preset("tiny");
    c.batch = 2;
    c.seq = 64;
    c.grad_accum = 2;
    c.dtype = dt;
    c.steps = 3;
    c.warmup = 1;
    const TrainBenchResult r = run_train_bench(c, eng);
    EXPECT_EQ(r.device, std::string(eng.props().name));
    ASSERT_EQ(r.step_s.size(), 3u);
    EXPECT_GT(r.median.forward_s, 0);
    EXPECT_GT(r.median.head_s, 0);
    EXPECT_GT(r.median.backward_s, 0);
    EXPECT_GT(r.median.optimizer_s, 0);
    EXPECT_LE(r.median.span_s, r.step_median_s * 1.05);  // the GPU timeline fits in the wall time
    for (double l : r.losses) EXPECT_NEAR(l, std::log(512.0), 0.5) << engine::dtype_name(dt);
    EXPECT_EQ(r.managed_bytes, size_t(2 * r.flops.n_lora * 4));  // paged m and v
    EXPECT_GT(r.peak_alloc_bytes, 0u);
    EXPECT_GT(r.device_used_bytes, r.peak_alloc_bytes);
    EXPECT_GT(r.peak_flops_per_s, 1e13);
    EXPECT_GT(r.mfu, 0);
    EXPECT_LT(r.mfu, 1);
    const auto j = nlohmann::json::parse(json_line(r));
    EXPECT_GT(j.at("peak_tflops").get<double>(), 10);
  }
}

TEST(TrainBenchGpu, TwoLayerGemma2WidthRuns) {
  REQUIRE_CUDA();
  Engine eng;
  TrainBenchConfig c;  // gemma2-2b widths, 2 layers: the real kernels' shapes in seconds
  c.model.num_hidden_layers = 2;
  c.model.sliding = {true, false};
  c.preset = "gemma2-2b+custom";
  c.batch = 1;
  c.seq = 512;
  c.grad_accum = 2;
  c.steps = 2;
  c.warmup = 1;
  c.gradient_checkpointing = true;
  const TrainBenchResult r = run_train_bench(c, eng);
  for (double l : r.losses) EXPECT_TRUE(std::isfinite(l));
  EXPECT_GT(r.tokens_per_s, 0);
  EXPECT_GT(r.hfu, r.mfu);  // recompute counts toward HFU only
  EXPECT_EQ(r.skipped_steps, 0);
}

}  // namespace
