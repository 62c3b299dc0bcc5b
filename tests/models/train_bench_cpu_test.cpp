// tests/models/train_bench_cpu_test.cpp (label cpu): the bench_train core on the CPU backend (tiny preset,
// 2 timed steps), the FLOP count against ANCHORS.md §5's Gemma-2-2B figures, the JSON line, and every
// configuration error.
#include <cmath>
#include <nlohmann/json.hpp>

#include "models/train_bench.h"
#include "tests/test_util.h"

namespace {

using namespace models;
using engine::DType;
using engine::Engine;

TrainBenchConfig tiny(DType dt) {
  TrainBenchConfig c;
  c.preset = "tiny";
  c.model = bench_preset("tiny");
  c.batch = 2;
  c.seq = 16;
  c.grad_accum = 2;
  c.dtype = dt;
  c.steps = 2;
  c.warmup = 1;
  return c;
}

TEST(TrainBenchCpu, RunsTheTinyPresetForTwoSteps) {
  for (DType dt : {DType::kF32, DType::kBF16}) {
    Engine eng({engine::Backend::kCPU});
    std::vector<std::string> lines;
    const TrainBenchResult r = run_train_bench(tiny(dt), eng, [&](const std::string& s) { lines.push_back(s); });
    EXPECT_EQ(lines.size(), 1u + 3u);  // "built ..." + warm-up + 2 timed steps
    EXPECT_EQ(r.device, "cpu");
    EXPECT_EQ(r.tokens_per_step, 2 * 16 * 2);
    ASSERT_EQ(r.step_s.size(), 2u);
    ASSERT_EQ(r.losses.size(), 3u);
    EXPECT_GT(r.tokens_per_s, 0);
    EXPECT_NEAR(r.tokens_per_s, double(r.tokens_per_step) / r.step_median_s, 1e-9 * r.tokens_per_s);
    // Every phase took time, and the phases fit inside the step's wall time.
    EXPECT_GT(r.median.forward_s, 0);
    EXPECT_GT(r.median.head_s, 0);
    EXPECT_GT(r.median.backward_s, 0);
    EXPECT_GT(r.median.optimizer_s, 0);
    EXPECT_LE(r.median.forward_s + r.median.backward_s, r.step_median_s * 1.0001);
    // Random std-0.02 weights: logits near 0, so the loss starts near ln V.
    for (double l : r.losses) {
      EXPECT_TRUE(std::isfinite(l));
      EXPECT_NEAR(l, std::log(512.0), 0.5) << engine::dtype_name(dt);
    }
    EXPECT_EQ(r.skipped_steps, 0);
    EXPECT_GT(r.peak_alloc_bytes, 0u);  // the host allocator counts too
    EXPECT_EQ(r.managed_bytes, 0u);     // paging is CUDA-only
    EXPECT_EQ(r.mfu, 0.0);              // no peak on the CPU backend
    EXPECT_EQ(r.flops.n_lora, 2 * 4 * (2 * (64 + 64) + 2 * (64 + 32) + 2 * (64 + 128) + (128 + 64)));

    const auto j = nlohmann::json::parse(json_line(r));
    EXPECT_EQ(j.at("stack"), "engine");
    EXPECT_EQ(j.at("preset"), "tiny");
    EXPECT_EQ(j.at("batch"), 2);
    EXPECT_EQ(j.at("seq"), 16);
    EXPECT_EQ(j.at("grad_accum"), 2);
    EXPECT_EQ(j.at("dtype"), engine::dtype_name(dt));
    EXPECT_EQ(j.at("quant"), "nf4");
    EXPECT_EQ(j.at("rank"), 4);
    EXPECT_EQ(j.at("lora_fuse_max_rank"), autograd::kLoraFuseMaxRank);
    EXPECT_EQ(j.at("losses").size(), 3u);  // every step, warm-up included
    EXPECT_EQ(j.at("gradient_checkpointing"), false);
    EXPECT_DOUBLE_EQ(j.at("tokens_per_s").get<double>(), r.tokens_per_s);
    EXPECT_DOUBLE_EQ(j.at("step_ms").get<double>(), r.step_median_s * 1e3);
    EXPECT_EQ(j.at("step_ms_all").size(), 2u);
    for (const char* k : {"forward_ms", "head_ms", "backward_ms", "optimizer_ms", "peak_alloc_gib", "managed_gib",
                          "peak_total_gib", "device_used_gib", "flops_per_token", "mfu", "hfu", "first_loss",
                          "last_loss", "build_s", "device"})
      EXPECT_TRUE(j.contains(k)) << k;
    EXPECT_NE(summary_line(r).find("tok/s"), std::string::npos);
  }
}

TEST(TrainBenchCpu, CheckpointingAndDenseVariantsRun) {
  Engine eng({engine::Backend::kCPU});
  TrainBenchConfig c = tiny(DType::kF32);
  c.steps = 1;
  c.warmup = 0;
  c.seed = 5;
  const TrainBenchResult plain = run_train_bench(c, eng);
  c.gradient_checkpointing = true;
  const TrainBenchResult ckpt = run_train_bench(c, eng);
  // Recomputation changes no value: same loss, and the hardware count grows.
  EXPECT_EQ(ckpt.losses, plain.losses);
  EXPECT_GT(ckpt.flops.hardware_per_token, ckpt.flops.model_per_token);
  EXPECT_EQ(plain.flops.hardware_per_token, plain.flops.model_per_token);
  // Half the layers recomputed, probabilities recomputed: the same loss again, half the extra hardware count.
  c.checkpoint_layers = 1;
  c.recompute_attention_probs = true;
  const TrainBenchResult half = run_train_bench(c, eng);
  EXPECT_EQ(half.losses, plain.losses);
  EXPECT_EQ(recomputed_layers(c), 1);
  EXPECT_NEAR(half.flops.hardware_per_token - half.flops.model_per_token,
              0.5 * (ckpt.flops.hardware_per_token - ckpt.flops.model_per_token), 1e-6 * half.flops.model_per_token);
  c.checkpoint_layers = -1;
  c.recompute_attention_probs = false;
  c.gradient_checkpointing = false;
  c.quantize_nf4 = false;
  const TrainBenchResult dense = run_train_bench(c, eng);
  EXPECT_NE(dense.losses, plain.losses);  // NF4 rounding changes the loss a little
  EXPECT_NEAR(dense.losses[0], plain.losses[0], 0.05);
  // The GEMM path for the LoRA branch (no fused kernels) trains the same, within f32 rounding: 3 steps, so
  // the later losses depend on dA and dB (B = 0 makes the first one independent of the branch).
  c.quantize_nf4 = true;
  c.steps = 3;
  const TrainBenchResult fused = run_train_bench(c, eng);
  c.lora_fuse_max_rank = 0;
  const TrainBenchResult gemm = run_train_bench(c, eng);
  ASSERT_EQ(gemm.losses.size(), 3u);
  ASSERT_EQ(fused.losses.size(), 3u);
  EXPECT_NE(fused.losses[2], fused.losses[0]);
  for (size_t i = 0; i < 3; ++i) EXPECT_NEAR(gemm.losses[i], fused.losses[i], 1e-6 * fused.losses[i]) << i;
}

TEST(TrainBenchCpu, MemoryModesLowerThePeak) {
  // Each memory setting must actually keep less (the loss tests above cannot see an ignored option): the
  // allocator's peak over one step, each run on its own engine. seq 256: a layer's activations (~2 MB, and
  // 2 MB of probabilities) outweigh the weights, optimizer state and the head's chunk.
  auto peak = [](bool ckpt, int64_t layers, bool probs) {
    Engine eng({engine::Backend::kCPU});
    TrainBenchConfig c = tiny(DType::kF32);
    c.seq = 256;
    c.steps = 1;
    c.warmup = 0;
    c.gradient_checkpointing = ckpt;
    c.checkpoint_layers = layers;
    c.recompute_attention_probs = probs;
    return run_train_bench(c, eng).peak_alloc_bytes;
  };
  const size_t plain = peak(false, -1, false), all = peak(true, -1, false), one = peak(true, 1, false),
               probs = peak(false, -1, true);
  EXPECT_LT(all, plain);
  EXPECT_LT(one, plain);
  EXPECT_LT(probs, plain);
  // At this size the peak of both checkpointed runs is one layer's backward with its recompute scratch, so
  // "one layer" is not below "all"; it differs, though (an ignored checkpoint_layers would give equality).
  EXPECT_NE(one, all);
}

TEST(TrainBenchCpu, FlopsMatchTheAnchorsForGemma2_2b) {
  // ANCHORS.md §5 at T = 512, r = 16: N_lin 2.0243B, E 0.5898B, 4(N_lin + E) 10.457, attention 0.327,
  // LoRA 0.125, total 10.91 GFLOP/token; full recompute 15.11.
  const Gemma2Config c = bench_preset("gemma2-2b");
  const int64_t n_lora = 26 * 16 * 49920;
  const TrainFlops f = train_flops_per_token(c, 512, n_lora, 0.0);
  EXPECT_EQ(f.n_lin, 2024275968);
  EXPECT_EQ(f.n_embed, 589824000);
  EXPECT_NEAR(4.0 * double(f.n_lin + f.n_embed) * 1e-9, 10.457, 0.001);
  EXPECT_NEAR(f.model_per_token * 1e-9, 10.91, 0.01);
  EXPECT_EQ(f.hardware_per_token, f.model_per_token);
  const TrainFlops g = train_flops_per_token(c, 512, n_lora, 1.0);
  EXPECT_NEAR(g.hardware_per_token * 1e-9, 15.11, 0.01);
  EXPECT_EQ(g.model_per_token, f.model_per_token);
}

TEST(TrainBenchCpu, RejectsBadConfigurations) {
  auto expect_error = [](const std::function<void(TrainBenchConfig&)>& edit, const std::string& needle) {
    TrainBenchConfig c = tiny(DType::kF32);
    edit(c);
    try {
      c.validate();
      ADD_FAILURE() << "expected an error mentioning " << needle;
    } catch (const engine::Error& e) {
      EXPECT_NE(std::string(e.what()).find(needle), std::string::npos) << e.what();
    }
  };
  expect_error([](TrainBenchConfig& c) { c.batch = 0; }, "--batch");
  expect_error([](TrainBenchConfig& c) { c.seq = 1; }, "--seq");
  expect_error([](TrainBenchConfig& c) { c.seq = 8193; }, "--seq");
  expect_error([](TrainBenchConfig& c) { c.grad_accum = 0; }, "--grad-accum");
  expect_error([](TrainBenchConfig& c) { c.dtype = DType::kI32; }, "--dtype");
  expect_error([](TrainBenchConfig& c) { c.steps = 0; }, "--steps");
  expect_error([](TrainBenchConfig& c) { c.warmup = -1; }, "--warmup");
  expect_error([](TrainBenchConfig& c) { c.lora.r = 0; }, "--rank");
  expect_error([](TrainBenchConfig& c) { c.lora.alpha = 0; }, "--alpha");
  expect_error([](TrainBenchConfig& c) { c.lora.dropout = 1.0; }, "--dropout");
  expect_error([](TrainBenchConfig& c) { c.lora_fuse_max_rank = -1; }, "--lora-fuse-max-rank");
  expect_error([](TrainBenchConfig& c) { c.lora_fuse_max_rank = 17; }, "--lora-fuse-max-rank");
  expect_error([](TrainBenchConfig& c) { c.gradient_checkpointing = true; c.checkpoint_layers = 3; },
               "--checkpoint-layers");  // tiny: 2 layers
  expect_error([](TrainBenchConfig& c) { c.checkpoint_layers = 1; }, "--gradient-checkpointing");
  expect_error([](TrainBenchConfig& c) { c.checkpoint_layers = -2; }, "--checkpoint-layers");
  expect_error([](TrainBenchConfig& c) { c.model.num_key_value_heads = 3; }, "--kv-heads");
  expect_error([](TrainBenchConfig& c) { c.model.head_dim = 15; }, "--head-dim");
  expect_error([](TrainBenchConfig& c) { c.model.hidden_size = 0; }, "--hidden");
  EXPECT_THROW(bench_preset("gemma2-9b"), engine::Error);
  Engine eng({engine::Backend::kCPU});
  TrainBenchConfig bad = tiny(DType::kF32);
  bad.batch = -2;
  EXPECT_THROW(run_train_bench(bad, eng), engine::Error);  // run validates too
  const auto j = nlohmann::json::parse(json_error_line(bad, "cpu", "boom"));
  EXPECT_EQ(j.at("error"), "boom");
  EXPECT_EQ(j.at("batch"), -2);
}

}  // namespace
