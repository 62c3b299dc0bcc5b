// engine/train_config.h: the run configuration of `train_gemma --config run.yaml [key=value ...]`.
//   Keys carry the notebook's names (transformers TrainingArguments, peft LoraConfig, BitsAndBytesConfig,
//   trl SFTTrainer), grouped in sections; defaults are the notebook's or transformers' (SPEC.md §0.2, §5.9).
//   One field table in train_config.cpp drives YAML reading, dotted overrides, print_table(), to_yaml() and
//   help_text(), so they cannot drift. Every problem is collected and reported at once in one engine::Error,
//   each line naming the key and where it was set (file:line or the override).
//   Tests: tests/engine/train_config_cpu_test.cpp. Example: tools/configs/notebook_2b.yaml.
#pragma once
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "engine/dtype.h"

namespace engine {

struct ModelConfig {
  std::string path;                          // required: HF Gemma-2 folder, e.g. "models/gemma-2-2b-jpn-it"
  std::string attn_implementation = "eager";  // only eager: sdpa silently drops the softcap (SPEC.md §7.2)
};

struct DataConfig {
  std::string path;               // required: JSONL file, e.g. "data/train.jsonl"
  // "" = Gemma chat template; else e.g. "{instruction}\n{output}": placeholders {system} {instruction}
  // {output} ({output} exactly once), {{ and }} for literal braces (Python str.format rules)
  std::string prompt_format;
  int64_t max_seq_length = 512;   // tokens per sample incl. <bos>; longer samples are head-truncated (§6.2)
  std::string loss_on = "all";    // all (the notebook: every non-pad token, §6.4) | assistant (output only)
  bool skip_bad_lines = false;    // true: skip and count malformed JSONL lines instead of failing
};

struct QuantizationConfig {
  bool load_in_4bit = true;                       // the engine always stores base weights in NF4
  std::string bnb_4bit_quant_type = "nf4";        // only nf4 (SPEC.md §3)
  bool bnb_4bit_use_double_quant = true;          // 8-bit absmax in blocks of 256 (SPEC.md §3.4)
  std::string bnb_4bit_compute_dtype = "bfloat16";  // float16 | bfloat16 | float32, see compute_dtype()
};

struct LoraConfig {
  int64_t r = 4;                                     // rank R
  double lora_alpha = 8;                             // scaling = alpha / r (alpha / sqrt(r) with rslora)
  double lora_dropout = 0.1;                         // dropout probability on the LoRA input, in [0, 1)
  std::string bias = "none";                         // only none
  std::vector<std::string> target_modules = {"all-linear"};  // "all-linear" or e.g. [q_proj, v_proj]
  bool use_rslora = false;                           // rank-stabilized scaling alpha / sqrt(r)
  std::optional<int64_t> init_seed;                  // LoRA A init seed; unset = training.seed
};

struct TrainingConfig {
  std::string output_dir;                         // required: adapters, checkpoints, resolved config.yaml
  double num_train_epochs = 1.0;                  // fractional epochs allowed, as in transformers
  int64_t max_steps = -1;                         // > 0 overrides num_train_epochs (optimizer steps)
  int64_t per_device_train_batch_size = 1;        // sequences per micro-batch
  int64_t gradient_accumulation_steps = 4;        // micro-batches per optimizer step
  std::string optim = "paged_adamw_32bit";        // paged_adamw_32bit | adamw_torch | adamw
  double learning_rate = 5e-4;                    // peak LR
  std::string lr_scheduler_type = "cosine";       // cosine | linear | constant | constant_with_warmup
  double warmup_ratio = 0.03;                     // fraction of total steps, in [0, 1]
  int64_t warmup_steps = 0;                       // > 0 overrides warmup_ratio (transformers 4.x)
  double max_grad_norm = 0.3;                     // global L2 clip; 0 = no clipping
  double weight_decay = 0.001;                    // decoupled, applied after the Adam update (SPEC.md §5.5)
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  bool group_by_length = false;                   // LengthGroupedSampler order (SPEC.md §6.5)
  bool fp16 = false;                              // fp16 autocast + GradScaler (the notebook)
  bool bf16 = true;                               // bf16 autocast; both false = f32 compute
  std::string logging_strategy = "steps";         // steps | epoch | no
  int64_t logging_steps = 10;                     // optimizer steps between logs
  std::string save_strategy = "steps";            // steps | epoch | no
  int64_t save_steps = 500;                       // optimizer steps between checkpoints
  std::optional<int64_t> save_total_limit;        // keep at most this many checkpoints; unset = all
  int64_t seed = 42;                              // data order, dropout and (by default) LoRA init
  std::string report_to = "tensorboard";          // tensorboard | none
  bool gradient_checkpointing = false;            // recompute layer activations in backward
  std::optional<int64_t> checkpoint_layers;       // with it: recompute the first N layers only; unset = all
  bool recompute_attention_probs = false;         // keep no (B,H,T,T) attention probabilities for backward
  std::string resume_from_checkpoint;             // "" | "latest" (newest in output_dir) | a checkpoint path
  double ddp_timeout = 1800;                      // data parallel: seconds without a finished step end the job
};

struct TrainConfig {
  ModelConfig model;
  DataConfig data;
  QuantizationConfig quantization;
  LoraConfig lora;
  TrainingConfig training;

  // Reads `path` (YAML), applies `overrides` ("training.learning_rate=1e-4", "lora.target_modules=[q_proj,v_proj]")
  // in order, and validates. Throws one engine::Error listing every problem, each with file:line or the override.
  static TrainConfig load(const std::string& path, const std::vector<std::string>& overrides = {});
  // The same from YAML text; `source_name` stands for the file in messages.
  static TrainConfig parse(const std::string& yaml_text, const std::string& source_name,
                           const std::vector<std::string>& overrides = {});
  // Every key with type, default, allowed values and meaning (the key list of --help).
  static std::string help_text();

  // The resolved config as YAML (all keys); load() of it gives the same config.
  std::string to_yaml() const;
  // Writes to_yaml() to `path` atomically.
  void save_yaml(const std::string& path) const;
  // One aligned line per key: key, value, and "(default)" where it was not changed.
  void print_table(std::ostream& os) const;

  // Derived values the trainer needs.
  DType compute_dtype() const;                    // autocast dtype: kF16 | kBF16 | kF32
  std::vector<std::string> lora_targets() const;  // expanded, in layer order q k v o gate up down
  double lora_scaling() const;                    // alpha / r, or alpha / sqrt(r) with use_rslora
  int64_t lora_init_seed() const { return lora.init_seed.value_or(training.seed); }
  // Optimizer steps of the run on one GPU for a data set of `num_samples` sequences (SPEC.md §5.8 Ntot).
  int64_t total_optimizer_steps(int64_t num_samples) const;
  // Warmup steps W for `total_steps` (transformers 4.x: warmup_steps > 0 wins over ceil(total * ratio)).
  int64_t num_warmup_steps(int64_t total_steps) const;
};

}  // namespace engine
