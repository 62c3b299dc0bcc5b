// tools/bench_train.cpp: end-to-end QLoRA training benchmark on a random Gemma-2 (models/train_bench.h).
//   bench_train [--preset gemma2-2b|tiny] [--hidden D --intermediate F --layers L --heads H --kv-heads KV
//               --head-dim HD --vocab V] --batch B --seq T --grad-accum GA --dtype bf16|f16 [--rank 4]
//               [--steps 10 --warmup 3] [--gradient-checkpointing [--checkpoint-layers N]]
//               [--recompute-attention-probs] [--no-quantize] [--cpu] [--nproc N]
// Data parallel as train_gemma: --nproc N on this host, or the RANK/WORLD_SIZE/... env contract; rank 0
// prints (tokens/s global and per GPU).
// Prints one line per step, a one-line summary and one JSON line (bench/run_compare.sh collects the JSON).
// A configuration that fails at run time (e.g. out of memory) still prints its JSON line, with "error".
#include <CLI/CLI.hpp>
#include <cstdio>
#include <fstream>
#include <sstream>

#include <iostream>

#include "engine/data_parallel.h"
#include "engine/engine.h"
#include "engine/launcher.h"
#include "engine/rendezvous.h"
#include "engine/safetensors.h"
#include "models/gemma2_random.h"
#include "models/train_bench.h"

namespace {

// Appends one line to `path` atomically (read, add, write to a temp file, rename).
void append_line(const std::string& path, const std::string& line) {
  std::ostringstream old;
  if (std::ifstream in(path); in.good()) old << in.rdbuf();
  engine::write_file_atomic(path, old.str() + line + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"bench_train: end-to-end QLoRA training benchmark on a random Gemma-2 (no checkpoint needed)"};
  std::string preset = "gemma2-2b", dtype = "bf16", json_out;
  int64_t hidden = 0, inter = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0, vocab = 0;
  models::TrainBenchConfig cfg;
  bool no_quant = false, force_cpu = false, quiet = false;
  app.add_option("--preset", preset, "gemma2-2b (D 2304, F 9216, L 26, H 8, KV 4, HD 256, V 256000) or tiny")
      ->capture_default_str();
  app.add_option("--hidden", hidden, "override the preset's hidden size D");
  app.add_option("--intermediate", inter, "override the preset's MLP size F");
  app.add_option("--layers", layers, "override the preset's layer count L");
  app.add_option("--heads", heads, "override the preset's query heads H");
  app.add_option("--kv-heads", kv_heads, "override the preset's key/value heads KV");
  app.add_option("--head-dim", head_dim, "override the preset's head dim HD");
  app.add_option("--vocab", vocab, "override the preset's vocabulary size V");
  app.add_option("--batch", cfg.batch, "per-device batch size B")->capture_default_str();
  app.add_option("--seq", cfg.seq, "sequence length T (every row full, no padding)")->capture_default_str();
  app.add_option("--grad-accum", cfg.grad_accum, "gradient accumulation steps GA")->capture_default_str();
  app.add_option("--dtype", dtype, "compute dtype: bf16, f16 (fp16 loss scaling) or f32")->capture_default_str();
  app.add_option("--rank", cfg.lora.r, "LoRA rank")->capture_default_str();
  app.add_option("--alpha", cfg.lora.alpha, "LoRA alpha")->capture_default_str();
  app.add_option("--dropout", cfg.lora.dropout, "LoRA dropout")->capture_default_str();
  app.add_option("--lora-fuse-max-rank", cfg.lora_fuse_max_rank,
                 "fused LoRA kernels up to this rank (0: cuBLASLt + dropout for every rank)")->capture_default_str();
  app.add_option("--steps", cfg.steps, "timed optimizer steps")->capture_default_str();
  app.add_option("--warmup", cfg.warmup, "untimed optimizer steps before them")->capture_default_str();
  app.add_option("--seed", cfg.seed, "seed of the weights, adapters, dropout and tokens")->capture_default_str();
  app.add_flag("--gradient-checkpointing", cfg.gradient_checkpointing, "recompute each layer in backward");
  app.add_option("--checkpoint-layers", cfg.checkpoint_layers,
                 "with --gradient-checkpointing: recompute only the first N layers (-1: all)")->capture_default_str();
  app.add_flag("--recompute-attention-probs", cfg.recompute_attention_probs,
               "keep no (B,H,T,T) attention probabilities for backward; recompute them there");
  app.add_flag("--no-quantize", no_quant, "dense base weights in the compute dtype (LoRA without NF4)");
  app.add_flag("--cpu", force_cpu, "use the CPU backend even when a CUDA device is present");
  app.add_option("--json-out", json_out, "also append the JSON line to this file");
  app.add_flag("--quiet", quiet, "no per-step lines");
  int nproc = 1;
  engine::DataParallelOptions dpo;
  app.add_option("--nproc", nproc, "data parallel: start N ranks on this host, one per GPU")->check(CLI::Range(1, 1024));
  app.add_option("--rendezvous-timeout", dpo.rendezvous_timeout_s, "data parallel: seconds for every rank to arrive")
      ->capture_default_str();
  app.add_option("--ddp-timeout", dpo.step_timeout_s, "data parallel: seconds without a finished step end the job")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  engine::DistEnv env;
  try {
    env = engine::dist_env_from();
    if (nproc > 1) {
      ENGINE_CHECK(env.world_size == 1, "--nproc inside a rank of a launched job (WORLD_SIZE=", env.world_size, ")");
      engine::LaunchOptions lo;
      lo.nproc = nproc;
      lo.exe = "/proc/self/exe";
      lo.argv = engine::strip_option(std::vector<std::string>(argv, argv + argc), "--nproc");
      return engine::launch_ranks(lo, std::cerr);
    }
  } catch (const engine::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  const bool lead = env.rank == 0;
  quiet = quiet || !lead;

  std::string device = "?";
  try {
    cfg.preset = preset;
    cfg.model = models::bench_preset(preset);
    models::Gemma2Config& m = cfg.model;
    if (hidden || inter || layers || heads || kv_heads || head_dim || vocab) {
      m = models::tiny_config(hidden ? hidden : m.hidden_size, inter ? inter : m.intermediate_size,
                              layers ? layers : m.num_hidden_layers, heads ? heads : m.num_attention_heads,
                              kv_heads ? kv_heads : m.num_key_value_heads, head_dim ? head_dim : m.head_dim,
                              vocab ? vocab : m.vocab_size);
      cfg.preset = preset + "+custom";
    }
    if (dtype == "bf16") cfg.dtype = engine::DType::kBF16;
    else if (dtype == "f16" || dtype == "fp16") cfg.dtype = engine::DType::kF16;
    else if (dtype == "f32" || dtype == "fp32") cfg.dtype = engine::DType::kF32;
    else throw engine::Error("--dtype must be bf16, f16 or f32, got \"" + dtype + "\"");
    cfg.quantize_nf4 = !no_quant;
    cfg.validate();
  } catch (const engine::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  try {
    const engine::Backend backend = force_cpu ? engine::Backend::kCPU : engine::Backend::kAuto;
    engine::Engine eng(engine::rank_engine_options(env, backend, force_cpu ? 0 : engine::cuda_device_count()));
    device = eng.is_cuda() ? eng.props().name : "cpu";
    if (lead) std::printf("%s\n", eng.describe().c_str());
    const std::string fp_text = models::json_error_line(cfg, "", "");  // the whole configuration
    dpo.fingerprint = engine::fnv1a64(fp_text.data(), fp_text.size());
    engine::DataParallel dp(env, eng, dpo);
    auto log = [&](const std::string& s) {
      if (!quiet) std::printf("%s\n", s.c_str()), std::fflush(stdout);
    };
    const models::TrainBenchResult r = models::run_train_bench(cfg, eng, log, &dp);
    dp.finish(dpo.step_timeout_s);
    if (!lead) return 0;
    const std::string j = models::json_line(r);
    std::printf("%s\n%s\n", models::summary_line(r).c_str(), j.c_str());
    if (!json_out.empty()) append_line(json_out, j);
    return 0;
  } catch (const engine::Error& e) {
    if (env.world_size > 1) std::fprintf(stderr, "error: rank %d: %s\n", env.rank, e.what());
    else std::fprintf(stderr, "error: %s\n", e.what());
    if (!lead) return 1;
    const std::string j = models::json_error_line(cfg, device, e.what());
    std::printf("%s\n", j.c_str());
    try {
      if (!json_out.empty()) append_line(json_out, j);
    } catch (const engine::Error& e2) {
      std::fprintf(stderr, "error: %s\n", e2.what());
    }
    return 1;
  }
}
