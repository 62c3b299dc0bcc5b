// models/train_bench.h: the end-to-end training benchmark behind tools/bench_train (and its tests).
//   A random Gemma-2 built on the device (Gemma2Model::random), NF4 + double quant (unless disabled),
//   LoRA on all seven linears (the notebook's r=4, alpha 8, dropout 0.1), paged AdamW with the Trainer's
//   settings (lr 5e-4 cosine, warmup ratio 0.03, clip 0.3, weight decay 0.001, fp16 loss scaling), random
//   full-length token batches (no padding), `warmup` untimed then `steps` timed optimizer steps.
//   Reported per configuration: tokens/s from the median step wall time; the median forward / head /
//   backward / optimizer split from StepTimer (CUDA events, no extra host syncs); peak memory; MFU and HFU
//   with the ANCHORS.md §4 FLOP count against the card's dense 16-bit peak.
//   Data parallel (Engine with a communicator, engine/data_parallel.h): every rank runs its own random
//   tokens, the LoRA gradients are all-reduced over NCCL after each window as in the Trainer; tokens/s is
//   global (all ranks) and per GPU, MFU per GPU.
// JSON line fields (bench/compare_hf.py prints the same for the Python stack): see json_line().
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "autograd/functions.h"
#include "engine/data_parallel.h"
#include "engine/engine.h"
#include "engine/step_timer.h"
#include "models/gemma2_config.h"
#include "models/lora.h"

namespace models {

// "gemma2-2b" (D 2304, F 9216, L 26, H 8, KV 4, HD 256, V 256000) or "tiny" (D 64, F 128, L 2, H 4, KV 2,
// HD 16, V 512: a CPU smoke test). Anything else is an engine::Error listing the presets.
Gemma2Config bench_preset(const std::string& name);

struct TrainBenchConfig {
  std::string preset = "gemma2-2b";  // informational once `model` is set (the JSON line carries it)
  Gemma2Config model = bench_preset("gemma2-2b");
  int64_t batch = 1, seq = 512, grad_accum = 4;
  engine::DType dtype = engine::DType::kBF16;   // compute dtype: bf16, f16 (f32 for CPU smoke tests)
  bool quantize_nf4 = true;
  bool gradient_checkpointing = false;
  int64_t checkpoint_layers = -1;               // with checkpointing: the first N layers recomputed; -1 = all
  bool recompute_attention_probs = false;       // no (B,H,T,T) probabilities kept for backward
  LoraSpec lora;                                // r 4, alpha 8, dropout 0.1, all seven targets
  int64_t lora_fuse_max_rank = autograd::kLoraFuseMaxRank;  // fused LoRA kernels up to this rank (0: never)
  int64_t steps = 10, warmup = 3;               // timed / untimed optimizer steps
  uint64_t seed = 1;                            // weights, LoRA init, dropout and token ids
  // Throws engine::Error naming the option and the accepted range.
  void validate() const;
};

// Model FLOPs per token (ANCHORS.md §4, eager attention c = 1):
//   F = 4 (N_lin + E) + 12 L d_attn T + 6 N_lora; recompute (gradient checkpointing) adds
//   2 N_lin + 4 L d_attn T + 2 N_lora to the hardware count, times the fraction of layers recomputed.
struct TrainFlops {
  int64_t n_lin = 0, n_embed = 0, n_lora = 0;
  double model_per_token = 0;     // MFU numerator
  double hardware_per_token = 0;  // HFU numerator (= model without checkpointing)
};
TrainFlops train_flops_per_token(const Gemma2Config& c, int64_t seq, int64_t n_lora, double recomputed_fraction);
// The layers gradient checkpointing recomputes under cfg (0 without it).
int64_t recomputed_layers(const TrainBenchConfig& cfg);

struct TrainBenchResult {
  TrainBenchConfig cfg;
  std::string device;                   // card name, or "cpu"
  double build_s = 0;                   // Gemma2Model::random + adapters + optimizer (wall)
  int64_t tokens_per_step = 0;          // B * T * GA (per rank)
  int world_size = 1;                   // data-parallel ranks
  double tokens_per_s_per_gpu = 0;      // tokens_per_s / world_size
  std::vector<double> step_s;           // wall time of each timed step (ends with the optimizer's sync)
  std::vector<double> losses;           // every step's mean token loss, warm-up included
  double step_median_s = 0, tokens_per_s = 0;  // tokens_per_s: all ranks together
  engine::StepTimes median;             // per-phase medians over the timed steps (seconds)
  int64_t skipped_steps = 0;            // fp16 overflow skips
  size_t peak_alloc_bytes = 0;          // the engine allocator's peak since start (model build included)
  size_t managed_bytes = 0;             // paged optimizer state (CUDA managed memory, outside the allocator)
  size_t device_used_bytes = 0;         // cudaMemGetInfo total - free after the timed steps (0 on CPU)
  TrainFlops flops;
  double peak_flops_per_s = 0;          // 0 on the CPU backend
  std::string peak_source;
  double mfu = 0, hfu = 0;              // 0 on the CPU backend
};

// Runs the benchmark. `log` (optional) gets one line per step. dp (optional): this rank's data-parallel
// membership (heartbeat per step); the engine's communicator does the all-reduce.
TrainBenchResult run_train_bench(const TrainBenchConfig& cfg, engine::Engine& eng,
                                 const std::function<void(const std::string&)>& log = {},
                                 engine::DataParallel* dp = nullptr);

std::string summary_line(const TrainBenchResult& r);
// One JSON object on one line: {"stack":"engine", the configuration, the measurements}.
std::string json_line(const TrainBenchResult& r);
// The same JSON with "error" for a configuration that failed (e.g. out of memory).
std::string json_error_line(const TrainBenchConfig& cfg, const std::string& device, const std::string& error);

}  // namespace models
