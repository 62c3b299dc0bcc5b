#include "models/train_bench.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "engine/comm.h"
#include "engine/device_info.h"
#include "engine/philox.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "models/optimizer.h"
#include "ops/lora_down.h"

namespace models {

using engine::DType;
using engine::Tensor;

namespace {

double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double gib(size_t b) { return double(b) / double(size_t(1) << 30); }

nlohmann::ordered_json config_json(const TrainBenchConfig& c, const std::string& device) {
  nlohmann::ordered_json j;
  j["stack"] = "engine";
  j["device"] = device;
  j["preset"] = c.preset;
  j["hidden"] = c.model.hidden_size;
  j["intermediate"] = c.model.intermediate_size;
  j["layers"] = c.model.num_hidden_layers;
  j["heads"] = c.model.num_attention_heads;
  j["kv_heads"] = c.model.num_key_value_heads;
  j["head_dim"] = c.model.head_dim;
  j["vocab"] = c.model.vocab_size;
  j["batch"] = c.batch;
  j["seq"] = c.seq;
  j["grad_accum"] = c.grad_accum;
  j["dtype"] = engine::dtype_name(c.dtype);
  j["quant"] = c.quantize_nf4 ? "nf4" : "none";
  j["rank"] = c.lora.r;
  j["alpha"] = c.lora.alpha;
  j["dropout"] = c.lora.dropout;
  j["lora_fuse_max_rank"] = c.lora_fuse_max_rank;
  j["gradient_checkpointing"] = c.gradient_checkpointing;
  j["recomputed_layers"] = recomputed_layers(c);
  j["recompute_attention_probs"] = c.recompute_attention_probs;
  j["steps"] = c.steps;
  j["warmup"] = c.warmup;
  return j;
}

}  // namespace

Gemma2Config bench_preset(const std::string& name) {
  if (name == "gemma2-2b") return Gemma2Config::gemma2_2b();
  if (name == "tiny") return tiny_config(64, 128, 2, 4, 2, 16, 512);
  throw engine::Error("unknown preset \"" + name + "\" (expected gemma2-2b or tiny)");
}

void TrainBenchConfig::validate() const {
  ENGINE_CHECK(batch >= 1, "--batch must be >= 1, got ", batch);
  ENGINE_CHECK(seq >= 2 && seq <= model.max_position_embeddings, "--seq must be in [2, ",
               model.max_position_embeddings, "] (max_position_embeddings), got ", seq);
  ENGINE_CHECK(grad_accum >= 1, "--grad-accum must be >= 1, got ", grad_accum);
  ENGINE_CHECK(dtype == DType::kBF16 || dtype == DType::kF16 || dtype == DType::kF32,
               "--dtype must be bf16, f16 or f32, got ", engine::dtype_name(dtype));
  ENGINE_CHECK(steps >= 1, "--steps must be >= 1, got ", steps);
  ENGINE_CHECK(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  ENGINE_CHECK(checkpoint_layers >= -1 && checkpoint_layers <= model.num_hidden_layers,
               "--checkpoint-layers must be -1 (all) or in [0, ", model.num_hidden_layers, "], got ", checkpoint_layers);
  ENGINE_CHECK(checkpoint_layers == -1 || gradient_checkpointing,
               "--checkpoint-layers ", checkpoint_layers, " needs --gradient-checkpointing");
  ENGINE_CHECK(lora.r >= 1, "--rank must be >= 1, got ", lora.r);
  ENGINE_CHECK(lora.alpha > 0, "--alpha must be > 0, got ", lora.alpha);
  ENGINE_CHECK(lora.dropout >= 0 && lora.dropout < 1, "--dropout must be in [0, 1), got ", lora.dropout);
  ENGINE_CHECK(lora_fuse_max_rank >= 0 && lora_fuse_max_rank <= ops::kLoraDownMaxRank,
               "--lora-fuse-max-rank must be in [0, ", ops::kLoraDownMaxRank, "], got ", lora_fuse_max_rank);
  const Gemma2Config& m = model;
  ENGINE_CHECK(m.hidden_size > 0 && m.intermediate_size > 0 && m.num_hidden_layers > 0 && m.num_attention_heads > 0 &&
                   m.num_key_value_heads > 0 && m.head_dim > 0 && m.vocab_size > 0,
               "model sizes (--hidden --intermediate --layers --heads --kv-heads --head-dim --vocab) must be positive");
  ENGINE_CHECK(m.num_attention_heads % m.num_key_value_heads == 0, "--heads ", m.num_attention_heads,
               " must be a multiple of --kv-heads ", m.num_key_value_heads);
  ENGINE_CHECK(m.head_dim % 2 == 0, "--head-dim must be even (RoPE), got ", m.head_dim);
  ENGINE_CHECK(int64_t(m.sliding.size()) == m.num_hidden_layers, "model: ", m.sliding.size(),
               " sliding flags for ", m.num_hidden_layers, " layers");
}

namespace {
Gemma2Options model_options(const TrainBenchConfig& cfg) {
  Gemma2Options mo;
  mo.compute_dtype = cfg.dtype;
  mo.quantize_nf4 = cfg.quantize_nf4;
  mo.gradient_checkpointing = cfg.gradient_checkpointing;
  mo.checkpoint_layers = cfg.checkpoint_layers;
  mo.recompute_attention_probs = cfg.recompute_attention_probs;
  mo.lora_fuse_max_rank = cfg.lora_fuse_max_rank;
  return mo;
}
}  // namespace

int64_t recomputed_layers(const TrainBenchConfig& cfg) {
  return recomputed_layers(model_options(cfg), cfg.model.num_hidden_layers);
}

TrainFlops train_flops_per_token(const Gemma2Config& c, int64_t seq, int64_t n_lora, double recomputed_fraction) {
  TrainFlops f;
  const int64_t D = c.hidden_size, F = c.intermediate_size, H = c.num_attention_heads, KV = c.num_key_value_heads,
                HD = c.head_dim, L = c.num_hidden_layers;
  f.n_lin = L * (2 * D * H * HD + 2 * D * KV * HD + 3 * D * F);  // q, o; k, v; gate, up, down
  f.n_embed = c.vocab_size * D;
  f.n_lora = n_lora;
  const double attn = double(L) * double(H * HD) * double(seq);  // c = 1: every T x T score is computed
  f.model_per_token = 4.0 * double(f.n_lin + f.n_embed) + 12.0 * attn + 6.0 * double(n_lora);
  f.hardware_per_token =
      f.model_per_token + recomputed_fraction * (2.0 * double(f.n_lin) + 4.0 * attn + 2.0 * double(n_lora));
  return f;
}

TrainBenchResult run_train_bench(const TrainBenchConfig& cfg, engine::Engine& eng,
                                 const std::function<void(const std::string&)>& log, engine::DataParallel* dp) {
  cfg.validate();
  TrainBenchResult r;
  r.cfg = cfg;
  r.device = eng.is_cuda() ? eng.props().name : "cpu";
  const auto t_build = std::chrono::steady_clock::now();

  const Gemma2Options mo = model_options(cfg);
  RandomInit init;
  init.seed = cfg.seed;
  Gemma2Model model = Gemma2Model::random(cfg.model, eng, mo, init);
  LoraAdapters lora(cfg.model, cfg.lora, eng);
  model.attach_lora(&lora, cfg.seed);

  const int64_t total = cfg.warmup + cfg.steps;
  OptimizerConfig oc;  // the notebook's Trainer settings (SPEC.md §0.2)
  oc.lr = 5e-4;
  oc.weight_decay = 0.001;
  oc.max_grad_norm = 0.3;
  oc.schedule = engine::LrSchedule::kCosine;
  oc.total_steps = total;
  oc.warmup_steps = int64_t(std::ceil(0.03 * double(total)));  // warmup_ratio 0.03, as HF rounds it
  oc.paged = eng.is_cuda();                                     // paged_adamw_32bit
  oc.loss_scaling = cfg.dtype == DType::kF16;
  Optimizer opt(eng, lora.params(), lora.grads(), oc);
  r.managed_bytes = oc.paged ? size_t(2 * lora.num_params()) * sizeof(float) : 0;

  // Every micro-batch's tokens, made and uploaded before the loop: uniform ids, full length, labels = ids.
  // Rows are numbered globally: micro-batch s of rank r holds rows (s * W + r) * B ... + B - 1 of the global
  // sequence, so W ranks x batch B see the same rows per accumulation step as 1 rank x batch W * B (the
  // data-parallel equivalence check compares their losses).
  engine::Communicator* comm = eng.comm();
  const int W = eng.world_size(), rank = eng.rank();
  r.world_size = W;
  const int64_t B = cfg.batch, T = cfg.seq, GA = cfg.grad_accum, V = cfg.model.vocab_size;
  std::vector<Batch> batches;
  for (int64_t s = 0; s < total * GA; ++s) {
    std::vector<int32_t> ids(size_t(B * T));
    for (int64_t b = 0; b < B; ++b) {
      const uint64_t row = uint64_t((s * W + rank) * B + b);
      for (int64_t t = 0; t < T; ++t)
        ids[size_t(b * T + t)] = int32_t(engine::philox_u32(cfg.seed, 0x746f6b656e73ull + row, uint64_t(t)) % uint64_t(V));
    }
    batches.push_back(make_batch(eng, B, T, ids, {}, ids));
  }
  Tensor loss_sum = eng.empty({1}, DType::kF32), n_valid = eng.empty({1}, DType::kI32);
  Tensor host_loss = eng.empty_host({1}, DType::kF32);
  eng.synchronize();
  r.build_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t_build).count();
  r.tokens_per_step = B * T * GA;
  r.flops = train_flops_per_token(cfg.model, T, lora.num_params(),
                                  double(recomputed_layers(cfg)) / double(cfg.model.num_hidden_layers));
  if (log)
    log(engine::str_cat("built in ", r.build_s, " s: ", model.num_base_params(), " base params, ", lora.num_params(),
                        " LoRA params; ", r.flops.model_per_token * 1e-9, " GFLOP/token"));

  engine::StepTimer timer(eng);
  const int64_t n_labels = B * (T - 1) * GA * W;  // shifted targets of all ranks, no padding
  std::vector<double> fwd, head, bwd, optim, span;
  uint64_t micro = 0;
  for (int64_t s = 0; s < total; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    eng.zero(loss_sum);
    eng.zero(n_valid);
    const float scale = opt.loss_scale() / float(n_labels);
    for (int64_t g = 0; g < GA; ++g) {
      model.set_micro_step(micro * uint64_t(W) + uint64_t(rank));
      model.forward_backward(batches[size_t(s * GA + g)], scale, loss_sum, n_valid, &timer);
      ++micro;
    }
    if (comm)  // as the Trainer: one group, gradients + loss sum, summed (each rank divided by the global N)
      comm->all_reduce_sum_f32({{lora.grads().ptr<float>(), size_t(lora.num_params())}, {loss_sum.ptr<float>(), 1}},
                               eng.stream());
    eng.copy(host_loss, loss_sum);
    const StepResult sr = opt.step(&timer);  // the step's one host sync
    if (dp) dp->heartbeat();
    const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const engine::StepTimes st = timer.read();
    const double loss = double(host_loss.ptr<float>()[0]) / double(n_labels);
    r.losses.push_back(loss);
    const bool timed = s >= cfg.warmup;
    if (timed) {
      r.step_s.push_back(wall);
      fwd.push_back(st.forward_s);
      head.push_back(st.head_s);
      bwd.push_back(st.backward_s);
      optim.push_back(st.optimizer_s);
      span.push_back(st.span_s);
    }
    if (log) {
      char line[256];
      std::snprintf(line, sizeof(line),
                    "%s step %lld/%lld: %.1f ms (fwd %.1f, head %.1f, bwd %.1f, opt %.1f) loss %.4f%s",
                    timed ? "timed" : "warm-up", (long long)(s + 1), (long long)total, wall * 1e3,
                    st.forward_s * 1e3, st.head_s * 1e3, st.backward_s * 1e3, st.optimizer_s * 1e3, loss,
                    sr.skipped ? " (skipped: inf/NaN gradients)" : "");
      log(line);
    }
  }
  r.skipped_steps = opt.skipped_steps();
  r.step_median_s = median(r.step_s);
  r.tokens_per_s = double(r.tokens_per_step) * W / r.step_median_s;
  r.tokens_per_s_per_gpu = r.tokens_per_s / W;
  r.median.forward_s = median(fwd);
  r.median.head_s = median(head);
  r.median.backward_s = median(bwd);
  r.median.optimizer_s = median(optim);
  r.median.span_s = median(span);
  r.median.micro_batches = GA;
  r.median.optimizer_steps = 1;
  r.peak_alloc_bytes = eng.allocator().stats().peak_bytes;
  if (eng.is_cuda()) {
    size_t free_b = 0, total_b = 0;
    CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
    r.device_used_bytes = total_b - free_b;
    r.peak_flops_per_s = engine::peak_dense_flops_per_s();
    r.peak_source = engine::peak_dense_flops_source();
    r.mfu = r.tokens_per_s_per_gpu * r.flops.model_per_token / r.peak_flops_per_s;
    r.hfu = r.tokens_per_s_per_gpu * r.flops.hardware_per_token / r.peak_flops_per_s;
  }
  return r;
}

std::string summary_line(const TrainBenchResult& r) {
  const TrainBenchConfig& c = r.cfg;
  std::string ckpt;
  if (c.gradient_checkpointing)
    ckpt = recomputed_layers(c) == c.model.num_hidden_layers ? " ckpt" : " ckpt " + std::to_string(recomputed_layers(c));
  if (c.recompute_attention_probs) ckpt += " probs-recompute";
  char line[640];
  std::snprintf(line, sizeof(line),
                "engine %s | %s L%lld D%lld | bs %lld x GA %lld x seq %lld %s %s%s | %.0f tok/s | step %.1f ms "
                "(fwd %.1f, head %.1f, bwd %.1f, opt %.1f) | peak %.2f GiB (+%.3f managed, device used %.2f) | "
                "MFU %.1f%% HFU %.1f%%",
                r.device.c_str(), c.preset.c_str(), (long long)c.model.num_hidden_layers,
                (long long)c.model.hidden_size, (long long)c.batch, (long long)c.grad_accum, (long long)c.seq,
                engine::dtype_name(c.dtype), c.quantize_nf4 ? "nf4" : "dense",
                ckpt.c_str(), r.tokens_per_s, r.step_median_s * 1e3,
                r.median.forward_s * 1e3, r.median.head_s * 1e3, r.median.backward_s * 1e3,
                r.median.optimizer_s * 1e3, gib(r.peak_alloc_bytes), gib(r.managed_bytes), gib(r.device_used_bytes),
                r.mfu * 100, r.hfu * 100);
  if (r.world_size == 1) return line;
  char dp[96];  // data parallel: the tok/s above is global, MFU per GPU
  std::snprintf(dp, sizeof(dp), " | %d GPUs, %.0f tok/s per GPU", r.world_size, r.tokens_per_s_per_gpu);
  return std::string(line) + dp;
}

std::string json_line(const TrainBenchResult& r) {
  nlohmann::ordered_json j = config_json(r.cfg, r.device);
  j["tokens_per_step"] = r.tokens_per_step;
  j["tokens_per_s"] = r.tokens_per_s;
  j["world_size"] = r.world_size;
  j["tokens_per_s_per_gpu"] = r.tokens_per_s_per_gpu;
  j["step_ms"] = r.step_median_s * 1e3;
  j["forward_ms"] = r.median.forward_s * 1e3;
  j["head_ms"] = r.median.head_s * 1e3;
  j["backward_ms"] = r.median.backward_s * 1e3;
  j["optimizer_ms"] = r.median.optimizer_s * 1e3;
  j["gpu_span_ms"] = r.median.span_s * 1e3;
  std::vector<double> ms;
  for (double v : r.step_s) ms.push_back(v * 1e3);
  j["step_ms_all"] = ms;
  j["peak_alloc_gib"] = gib(r.peak_alloc_bytes);
  j["managed_gib"] = gib(r.managed_bytes);
  j["peak_total_gib"] = gib(r.peak_alloc_bytes + r.managed_bytes);
  j["device_used_gib"] = gib(r.device_used_bytes);
  j["flops_per_token"] = r.flops.model_per_token;
  j["hw_flops_per_token"] = r.flops.hardware_per_token;
  j["n_lora"] = r.flops.n_lora;
  j["peak_tflops"] = r.peak_flops_per_s * 1e-12;
  j["peak_source"] = r.peak_source;
  j["mfu"] = r.mfu;
  j["hfu"] = r.hfu;
  j["first_loss"] = r.losses.empty() ? 0.0 : r.losses.front();
  j["last_loss"] = r.losses.empty() ? 0.0 : r.losses.back();
  j["losses"] = r.losses;  // every step, warm-up included
  j["skipped_steps"] = r.skipped_steps;
  j["build_s"] = r.build_s;
  return j.dump();
}

std::string json_error_line(const TrainBenchConfig& cfg, const std::string& device, const std::string& error) {
  nlohmann::ordered_json j = config_json(cfg, device);
  j["error"] = error;
  return j.dump();
}

}  // namespace models
