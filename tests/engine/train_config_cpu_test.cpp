// tests/engine/train_config_cpu_test.cpp (label cpu): TrainConfig: defaults, YAML, overrides, every error
// path (message names key and file:line or the override), several errors at once, to_yaml round trip, help.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <sstream>

#include "engine/train_config.h"

namespace {

using engine::DType;
using engine::TrainConfig;

const char* kRequired = R"(model: {path: /m}
data: {path: /d.jsonl}
training: {output_dir: /o}
)";

TrainConfig parse(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  return TrainConfig::parse(yaml, "run.yaml", overrides);
}

// The message of the engine::Error that parse() throws ("" if it does not throw).
std::string error_of(const std::string& yaml, const std::vector<std::string>& overrides = {}) {
  try {
    parse(yaml, overrides);
  } catch (const engine::Error& e) {
    return e.what();
  }
  return "";
}

// Asserts that parsing fails with a message line containing every one of `parts`.
void expect_error_line(const std::string& yaml, const std::vector<std::string>& overrides,
                       const std::vector<std::string>& parts) {
  const std::string msg = error_of(yaml, overrides);
  ASSERT_FALSE(msg.empty()) << "no error for:\n" << yaml;
  std::istringstream lines(msg);
  std::string line;
  while (std::getline(lines, line)) {
    bool all = true;
    for (const auto& p : parts) all = all && line.find(p) != std::string::npos;
    if (all) return;
  }
  std::string want;
  for (const auto& p : parts) want += " [" + p + "]";
  ADD_FAILURE() << "no line with" << want << " in:\n" << msg;
}

std::string repo_root() {
  const std::string f = __FILE__;
  return f.substr(0, f.rfind("tests/engine/"));
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/train_config_testXXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(dir_); }
  const std::string& path() const { return dir_; }

 private:
  std::string dir_;
};

TEST(TrainConfig, DefaultsAreTheNotebooksAndTransformers) {
  const TrainConfig c = parse(kRequired);
  EXPECT_EQ(c.model.path, "/m");
  EXPECT_EQ(c.model.attn_implementation, "eager");
  EXPECT_EQ(c.data.prompt_format, "");
  EXPECT_EQ(c.data.max_seq_length, 512);
  EXPECT_EQ(c.data.loss_on, "all");
  EXPECT_FALSE(c.data.skip_bad_lines);
  EXPECT_TRUE(c.quantization.load_in_4bit);
  EXPECT_EQ(c.quantization.bnb_4bit_quant_type, "nf4");
  EXPECT_TRUE(c.quantization.bnb_4bit_use_double_quant);
  EXPECT_EQ(c.quantization.bnb_4bit_compute_dtype, "bfloat16");
  EXPECT_EQ(c.lora.r, 4);
  EXPECT_EQ(c.lora.lora_alpha, 8.0);
  EXPECT_EQ(c.lora.lora_dropout, 0.1);
  EXPECT_EQ(c.lora.bias, "none");
  EXPECT_EQ(c.lora.target_modules, std::vector<std::string>{"all-linear"});
  EXPECT_FALSE(c.lora.use_rslora);
  EXPECT_FALSE(c.lora.init_seed.has_value());
  const auto& t = c.training;
  EXPECT_EQ(t.num_train_epochs, 1.0);
  EXPECT_EQ(t.max_steps, -1);
  EXPECT_EQ(t.per_device_train_batch_size, 1);
  EXPECT_EQ(t.gradient_accumulation_steps, 4);
  EXPECT_EQ(t.optim, "paged_adamw_32bit");
  EXPECT_EQ(t.learning_rate, 5e-4);
  EXPECT_EQ(t.lr_scheduler_type, "cosine");
  EXPECT_EQ(t.warmup_ratio, 0.03);
  EXPECT_EQ(t.warmup_steps, 0);
  EXPECT_EQ(t.max_grad_norm, 0.3);
  EXPECT_EQ(t.weight_decay, 0.001);
  EXPECT_EQ(t.adam_beta1, 0.9);
  EXPECT_EQ(t.adam_beta2, 0.999);
  EXPECT_EQ(t.adam_epsilon, 1e-8);
  EXPECT_FALSE(t.group_by_length);
  EXPECT_FALSE(t.fp16);
  EXPECT_TRUE(t.bf16);
  EXPECT_EQ(t.logging_strategy, "steps");
  EXPECT_EQ(t.logging_steps, 10);
  EXPECT_EQ(t.save_strategy, "steps");
  EXPECT_EQ(t.save_steps, 500);
  EXPECT_FALSE(t.save_total_limit.has_value());
  EXPECT_EQ(t.seed, 42);
  EXPECT_EQ(t.report_to, "tensorboard");
  EXPECT_FALSE(t.gradient_checkpointing);
  EXPECT_FALSE(t.checkpoint_layers.has_value());
  EXPECT_FALSE(t.recompute_attention_probs);
  EXPECT_EQ(t.resume_from_checkpoint, "");
  // derived
  EXPECT_EQ(c.compute_dtype(), DType::kBF16);
  EXPECT_EQ(c.lora_targets(), (std::vector<std::string>{"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                        "up_proj", "down_proj"}));
  EXPECT_EQ(c.lora_scaling(), 2.0);
  EXPECT_EQ(c.lora_init_seed(), 42);
}

TEST(TrainConfig, FullNotebookLikeYaml) {
  const TrainConfig c = parse(R"(# a notebook-like run
model:
  path: models/gemma-2-2b-jpn-it
  attn_implementation: eager
data:
  path: data/train.jsonl
  prompt_format: "<start_of_turn>user\n{system}{instruction}<end_of_turn>\n<start_of_turn>model\n{output}"
  max_seq_length: 1024
  loss_on: assistant
  skip_bad_lines: yes
quantization:
  load_in_4bit: true
  bnb_4bit_quant_type: nf4
  bnb_4bit_use_double_quant: false
  bnb_4bit_compute_dtype: float16
lora:
  r: 16
  lora_alpha: 32
  lora_dropout: 0.05
  bias: none
  target_modules:
    - q_proj
    - v_proj
  use_rslora: true
  init_seed: 7
training:
  output_dir: out
  num_train_epochs: 2.5
  max_steps: 100
  per_device_train_batch_size: 2
  gradient_accumulation_steps: 8
  optim: adamw_torch
  learning_rate: 2e-4
  lr_scheduler_type: constant_with_warmup
  warmup_ratio: 0.1
  warmup_steps: 5
  max_grad_norm: 1.0
  weight_decay: 0.0
  adam_beta1: 0.8
  adam_beta2: 0.95
  adam_epsilon: 1.0e-6
  group_by_length: true
  fp16: true
  bf16: false
  logging_strategy: epoch
  logging_steps: 1
  save_strategy: "no"
  save_steps: 50
  save_total_limit: 3
  seed: 1234
  report_to: none
  gradient_checkpointing: true
  checkpoint_layers: 10
  recompute_attention_probs: true
  resume_from_checkpoint: latest
)");
  EXPECT_EQ(c.data.prompt_format,
            "<start_of_turn>user\n{system}{instruction}<end_of_turn>\n<start_of_turn>model\n{output}");
  EXPECT_EQ(c.data.max_seq_length, 1024);
  EXPECT_EQ(c.data.loss_on, "assistant");
  EXPECT_TRUE(c.data.skip_bad_lines);
  EXPECT_FALSE(c.quantization.bnb_4bit_use_double_quant);
  EXPECT_EQ(c.lora.r, 16);
  EXPECT_EQ(c.lora.lora_dropout, 0.05);
  EXPECT_EQ(c.lora.target_modules, (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.lora.init_seed, 7);
  EXPECT_EQ(c.training.num_train_epochs, 2.5);
  EXPECT_EQ(c.training.max_steps, 100);
  EXPECT_EQ(c.training.optim, "adamw_torch");
  EXPECT_EQ(c.training.learning_rate, 2e-4);
  EXPECT_EQ(c.training.adam_epsilon, 1e-6);
  EXPECT_TRUE(c.training.group_by_length);
  EXPECT_EQ(c.training.save_strategy, "no");
  EXPECT_EQ(c.training.save_total_limit, 3);
  EXPECT_EQ(c.training.report_to, "none");
  EXPECT_EQ(c.training.resume_from_checkpoint, "latest");
  EXPECT_EQ(c.training.checkpoint_layers, 10);
  EXPECT_TRUE(c.training.recompute_attention_probs);
  EXPECT_EQ(c.compute_dtype(), DType::kF16);
  EXPECT_EQ(c.lora_targets(), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_DOUBLE_EQ(c.lora_scaling(), 32.0 / 4.0);  // rslora: alpha / sqrt(16)
  EXPECT_EQ(c.lora_init_seed(), 7);
  EXPECT_EQ(c.total_optimizer_steps(1), 100);      // max_steps wins
  EXPECT_EQ(c.num_warmup_steps(100), 5);           // warmup_steps > 0 wins over the ratio
}

TEST(TrainConfig, NotebookExampleLoads) {
  const TrainConfig c = TrainConfig::load(repo_root() + "tools/configs/notebook_2b.yaml");
  // SPEC.md §0.2
  EXPECT_NE(c.model.path.find("gemma-2-2b-jpn-it"), std::string::npos);
  EXPECT_EQ(c.lora.r, 4);
  EXPECT_EQ(c.lora.lora_alpha, 8.0);
  EXPECT_EQ(c.lora.lora_dropout, 0.1);
  EXPECT_EQ(c.lora_targets().size(), 7u);
  EXPECT_TRUE(c.training.fp16);
  EXPECT_EQ(c.compute_dtype(), DType::kF16);
  EXPECT_EQ(c.training.optim, "paged_adamw_32bit");
  EXPECT_EQ(c.training.learning_rate, 5e-4);
  EXPECT_EQ(c.training.lr_scheduler_type, "cosine");
  EXPECT_EQ(c.training.max_grad_norm, 0.3);
  EXPECT_EQ(c.training.warmup_ratio, 0.03);
  EXPECT_EQ(c.training.weight_decay, 0.001);
  EXPECT_EQ(c.training.per_device_train_batch_size, 1);
  EXPECT_EQ(c.training.gradient_accumulation_steps, 4);
  EXPECT_EQ(c.data.max_seq_length, 512);
  EXPECT_EQ(c.lora_scaling(), 2.0);
}

TEST(TrainConfig, OverridesOfEachType) {
  const TrainConfig c = parse(kRequired, {
      "training.learning_rate=1e-4",                 // number
      "lora.r=8",                                    // integer
      "training.group_by_length=true",               // bool
      "training.fp16=true", "training.bf16=false", "quantization.bnb_4bit_compute_dtype=float16",
      "training.optim=adamw",                        // enum
      "model.path=/other/model",                     // string (overrides the file)
      "data.prompt_format={instruction} => {output}",  // raw text, not a YAML mapping
      "lora.target_modules=[q_proj, v_proj]",        // list
      "training.save_total_limit=2",                 // optional
      "lora.init_seed=null",                         // optional back to unset
      "training.resume_from_checkpoint=/o/checkpoint-10",
  });
  EXPECT_EQ(c.training.learning_rate, 1e-4);
  EXPECT_EQ(c.lora.r, 8);
  EXPECT_TRUE(c.training.group_by_length);
  EXPECT_EQ(c.compute_dtype(), DType::kF16);
  EXPECT_EQ(c.training.optim, "adamw");
  EXPECT_EQ(c.model.path, "/other/model");
  EXPECT_EQ(c.data.prompt_format, "{instruction} => {output}");
  EXPECT_EQ(c.lora_targets(), (std::vector<std::string>{"q_proj", "v_proj"}));
  EXPECT_EQ(c.training.save_total_limit, 2);
  EXPECT_FALSE(c.lora.init_seed.has_value());
  EXPECT_EQ(c.training.resume_from_checkpoint, "/o/checkpoint-10");
  EXPECT_EQ(c.lora_scaling(), 1.0);
  // later overrides win over earlier ones
  EXPECT_EQ(parse(kRequired, {"lora.r=8", "lora.r=2"}).lora.r, 2);
  // a single name is a one-element list; the notebook's resume_from_checkpoint=True means latest
  EXPECT_EQ(parse(kRequired, {"lora.target_modules=down_proj"}).lora_targets(),
            std::vector<std::string>{"down_proj"});
  EXPECT_EQ(parse(kRequired, {"training.resume_from_checkpoint=True"}).training.resume_from_checkpoint, "latest");
  EXPECT_EQ(parse(kRequired, {"training.resume_from_checkpoint=false"}).training.resume_from_checkpoint, "");
}

TEST(TrainConfig, ComputeDtypeFollowsTheTrainerFlags) {
  EXPECT_EQ(parse(kRequired, {"training.bf16=false"}).compute_dtype(), DType::kF32);
  // bnb keeps float32 for fp16 activations but autocast makes the GEMM fp16 anyway (SPEC.md §3.6)
  EXPECT_EQ(parse(kRequired, {"training.fp16=true", "training.bf16=false",
                              "quantization.bnb_4bit_compute_dtype=float32"}).compute_dtype(), DType::kF16);
  // bf16 activations override the configured compute dtype in bnb
  EXPECT_EQ(parse(kRequired, {"quantization.bnb_4bit_compute_dtype=float16"}).compute_dtype(), DType::kBF16);
}

TEST(TrainConfig, StepCountsFollowTransformers) {
  TrainConfig c = parse(kRequired);
  // SPEC.md §5.8: 60 samples, bs 1, GA 4 -> 15 steps; W = ceil(15 * 0.03) = 1
  EXPECT_EQ(c.total_optimizer_steps(60), 15);
  EXPECT_EQ(c.num_warmup_steps(15), 1);
  EXPECT_EQ(c.total_optimizer_steps(61), 16);  // a partial accumulation window is a step
  EXPECT_EQ(c.total_optimizer_steps(2), 1);
  c.training.num_train_epochs = 2.5;
  EXPECT_EQ(c.total_optimizer_steps(60), 38);  // ceil(2.5 * 15)
  c.training.per_device_train_batch_size = 3;
  EXPECT_EQ(c.total_optimizer_steps(61), 15);  // 21 batches -> 6 steps/epoch -> ceil(15)
  EXPECT_THROW(c.total_optimizer_steps(0), engine::Error);
}

// ---- errors: each names the key and file:line (or the override) ----------------------------------------

TEST(TrainConfigErrors, MissingRequiredKeys) {
  const std::string msg = error_of("");
  EXPECT_NE(msg.find("run.yaml (default): model.path: required key is missing"), std::string::npos) << msg;
  EXPECT_NE(msg.find("data.path: required"), std::string::npos) << msg;
  EXPECT_NE(msg.find("training.output_dir: required"), std::string::npos) << msg;
  EXPECT_NE(msg.find("3 errors"), std::string::npos) << msg;
  expect_error_line(kRequired, {"model.path="}, {"override 'model.path='", "model.path", "required"});
}

TEST(TrainConfigErrors, UnknownKeysWithSuggestions) {
  expect_error_line(std::string(kRequired) + "lora:\n  lora_alfa: 8\n", {},
                    {"run.yaml:5", "lora.lora_alfa", "unknown key", "did you mean 'lora.lora_alpha'"});
  expect_error_line(std::string(kRequired) + "lora:\n  learning_rate: 1\n", {},
                    {"run.yaml:5", "lora.learning_rate", "did you mean 'training.learning_rate'"});
  expect_error_line(std::string(kRequired) + "lora:\n  alpha: 1\n", {},
                    {"run.yaml:5", "did you mean 'lora.lora_alpha'"});
  expect_error_line(std::string(kRequired) + "trainig:\n  seed: 1\n", {},
                    {"run.yaml:4", "trainig", "unknown section", "did you mean 'training'"});
  expect_error_line(std::string(kRequired) + "learning_rate: 1\n", {},
                    {"run.yaml:4", "did you mean 'training.learning_rate'"});
  expect_error_line(kRequired, {"training.learnig_rate=1e-4"},
                    {"override 'training.learnig_rate=1e-4'", "unknown key", "did you mean 'training.learning_rate'"});
  // far from everything: no suggestion
  const std::string msg = error_of(kRequired, {"training.lr=1"});
  EXPECT_NE(msg.find("training.lr: unknown key"), std::string::npos) << msg;
  EXPECT_EQ(msg.find("did you mean"), std::string::npos) << msg;
  expect_error_line(kRequired, {"training.seed"}, {"override 'training.seed'", "expected section.key=value"});
}

TEST(TrainConfigErrors, WrongTypes) {
  expect_error_line("model: {path: /m}\ndata: {path: /d}\ntraining:\n  output_dir: /o\n  learning_rate: abc\n", {},
                    {"run.yaml:5", "training.learning_rate", "expected a number, got 'abc'"});
  expect_error_line("model: {path: /m}\ndata: {path: /d}\ntraining:\n  output_dir: /o\n  max_steps: 1.5\n", {},
                    {"run.yaml:5", "training.max_steps", "expected an integer"});
  expect_error_line("model: {path: /m}\ndata: {path: /d}\ntraining:\n  output_dir: /o\n  fp16: maybe\n", {},
                    {"run.yaml:5", "training.fp16", "expected true or false"});
  expect_error_line("model: {path: /m}\ndata: {path: /d}\ntraining:\n  output_dir: /o\n  seed: [1, 2]\n", {},
                    {"run.yaml:5", "training.seed", "got a list"});
  expect_error_line("model: {path: /m}\ndata: {path: /d}\ntraining:\n  output_dir: /o\n  learning_rate:\n", {},
                    {"run.yaml:5", "training.learning_rate", "got nothing"});
  expect_error_line("model: {path: {a: 1}}\ndata: {path: /d}\ntraining: {output_dir: /o}\n", {},
                    {"run.yaml:1", "model.path", "got a mapping"});
  expect_error_line(std::string(kRequired) + "lora: {target_modules: [[q_proj]]}\n", {},
                    {"run.yaml:4", "lora.target_modules", "nested list"});
  expect_error_line(std::string(kRequired) + "lora: 3\n", {}, {"run.yaml:4", "lora", "expected a mapping"});
  expect_error_line("- a\n- b\n", {}, {"run.yaml:1", "expected a mapping of sections"});
  expect_error_line(kRequired, {"training.learning_rate=abc"},
                    {"override 'training.learning_rate=abc'", "training.learning_rate", "expected a number"});
  expect_error_line(kRequired, {"training.learning_rate=nan"}, {"training.learning_rate", "expected a number"});
  expect_error_line(kRequired, {"lora.r=99999999999999999999"}, {"lora.r", "expected an integer"});
  expect_error_line(kRequired, {"training.save_total_limit=all"}, {"save_total_limit", "integer or null"});
  expect_error_line(kRequired, {"lora.target_modules=[q_proj"}, {"lora.target_modules", "malformed list"});
  expect_error_line(kRequired, {"lora.target_modules="}, {"lora.target_modules", "got nothing"});
  expect_error_line(kRequired, {"model.path=[a, b]"}, {"model.path", "expected a string, got a list"});
  // a failed override leaves the file's value and its line in later messages
  expect_error_line(std::string(kRequired) + "lora: {r: 0}\n", {"lora.r=x"}, {"run.yaml:4: lora.r: must be > 0"});
}

TEST(TrainConfigErrors, ImpossibleValues) {
  const auto bad = [](const std::string& kv, const std::string& key, const std::string& what) {
    expect_error_line(kRequired, {kv}, {"override '" + kv + "'", key, what});
  };
  bad("training.learning_rate=-1e-4", "training.learning_rate", "must be >= 0");
  bad("lora.r=0", "lora.r", "must be > 0");
  bad("lora.r=-4", "lora.r", "must be > 0");
  bad("lora.lora_alpha=0", "lora.lora_alpha", "must be > 0");
  bad("lora.lora_dropout=1", "lora.lora_dropout", "[0, 1)");
  bad("lora.lora_dropout=-0.1", "lora.lora_dropout", "[0, 1)");
  bad("lora.init_seed=-1", "lora.init_seed", ">= 0");
  bad("training.per_device_train_batch_size=0", "training.per_device_train_batch_size", ">= 1");
  bad("training.gradient_accumulation_steps=0", "training.gradient_accumulation_steps", ">= 1");
  bad("data.max_seq_length=1", "data.max_seq_length", ">= 2");
  bad("training.warmup_ratio=1.5", "training.warmup_ratio", "[0, 1]");
  bad("training.warmup_ratio=-0.1", "training.warmup_ratio", "[0, 1]");
  bad("training.warmup_steps=-1", "training.warmup_steps", ">= 0");
  bad("training.num_train_epochs=0", "training.num_train_epochs", "> 0");
  bad("training.max_steps=0", "training.max_steps", "-1");
  bad("training.max_steps=-2", "training.max_steps", "-1");
  bad("training.max_grad_norm=-1", "training.max_grad_norm", ">= 0");
  bad("training.weight_decay=-0.1", "training.weight_decay", ">= 0");
  bad("training.adam_beta1=1", "training.adam_beta1", "[0, 1)");
  bad("training.adam_beta2=-0.5", "training.adam_beta2", "[0, 1)");
  bad("training.adam_epsilon=0", "training.adam_epsilon", "> 0");
  bad("training.logging_steps=0", "training.logging_steps", ">= 1");
  bad("training.save_steps=0", "training.save_steps", ">= 1");
  bad("training.save_total_limit=0", "training.save_total_limit", ">= 1");
  bad("training.seed=-1", "training.seed", ">= 0");
  bad("training.ddp_timeout=0", "training.ddp_timeout", "must be > 0");
  bad("training.checkpoint_layers=4", "training.checkpoint_layers", "gradient_checkpointing is false");
  EXPECT_NO_THROW(parse(kRequired, {"training.gradient_checkpointing=true", "training.checkpoint_layers=4"}));
  EXPECT_THROW(parse(kRequired, {"training.gradient_checkpointing=true", "training.checkpoint_layers=-1"}),
               engine::Error);
  bad("quantization.load_in_4bit=false", "quantization.load_in_4bit", "must be true");
  bad("lora.target_modules=[all-linear, q_proj]", "lora.target_modules", "cannot be combined");
  bad("lora.target_modules=[q_proj, q_proj]", "lora.target_modules", "listed twice");
  bad("lora.target_modules=[]", "lora.target_modules", "at least one");
  // steps are only checked when their strategy uses them; epochs only when max_steps does not override them
  EXPECT_NO_THROW(parse(kRequired, {"training.save_strategy=no", "training.save_steps=0"}));
  EXPECT_NO_THROW(parse(kRequired, {"training.max_steps=10", "training.num_train_epochs=0"}));
}

TEST(TrainConfigErrors, UnknownEnumValuesListTheAllowedOnes) {
  const auto bad = [](const std::string& kv, const std::string& key, const std::string& allowed) {
    expect_error_line(kRequired, {kv}, {"override '" + kv + "'", key, "is not one of: " + allowed});
  };
  bad("model.attn_implementation=sdpa", "model.attn_implementation", "eager");
  bad("data.loss_on=prompt", "data.loss_on", "all, assistant");
  bad("quantization.bnb_4bit_quant_type=fp4", "quantization.bnb_4bit_quant_type", "nf4");
  bad("quantization.bnb_4bit_compute_dtype=fp16", "quantization.bnb_4bit_compute_dtype", "float16, bfloat16, float32");
  bad("lora.bias=all", "lora.bias", "none");
  bad("lora.target_modules=[q_proj, lm_head]", "lora.target_modules", "all-linear, q_proj, k_proj");
  bad("training.optim=sgd", "training.optim", "paged_adamw_32bit, adamw_torch, adamw");
  bad("training.lr_scheduler_type=cosin", "training.lr_scheduler_type", "cosine, linear, constant");
  bad("training.logging_strategy=never", "training.logging_strategy", "steps, epoch, no");
  bad("training.save_strategy=best", "training.save_strategy", "steps, epoch, no");
  bad("training.report_to=wandb", "training.report_to", "tensorboard, none");
  expect_error_line("model: {path: /m, attn_implementation: sdpa}\ndata: {path: /d}\ntraining: {output_dir: /o}\n",
                    {}, {"run.yaml:1", "model.attn_implementation", "'sdpa' is not one of: eager"});
}

TEST(TrainConfigErrors, PrecisionConflicts) {
  const std::string yaml = std::string(kRequired) + "quantization:\n  bnb_4bit_compute_dtype: float16\n";
  expect_error_line(yaml, {"training.fp16=true"},
                    {"override 'training.fp16=true'", "training.fp16", "both true (training.bf16: default)"});
  expect_error_line(kRequired, {"training.fp16=true", "training.bf16=false"},
                    {"override 'training.fp16=true'", "training.fp16",
                     "conflicts with bnb_4bit_compute_dtype: bfloat16 (quantization.bnb_4bit_compute_dtype: default)",
                     "set it to float16"});
  expect_error_line(std::string(kRequired) + "quantization: {bnb_4bit_compute_dtype: bfloat16}\n",
                    {"training.fp16=true", "training.bf16=false"},
                    {"training.fp16", "(quantization.bnb_4bit_compute_dtype: run.yaml:4)"});
}

TEST(TrainConfigErrors, PromptFormat) {
  const auto bad = [](const std::string& fmt, const std::string& what) {
    expect_error_line(kRequired, {"data.prompt_format=" + fmt}, {"data.prompt_format", what});
  };
  bad("{instruction}{answer}", "unknown placeholder '{answer}'");
  bad("{instruction} {output", "unmatched '{'");
  bad("{instruction} } {output}", "unmatched '}'");
  bad("{instruction}", "{output} exactly once, found 0");
  bad("{output}{output}", "exactly once, found 2");
  EXPECT_NO_THROW(parse(kRequired, {"data.prompt_format={{json}}: {system}|{instruction}|{output}"}));
}

TEST(TrainConfigErrors, DuplicateKeysInTheFile) {
  expect_error_line("model:\n  path: /a\n  path: /b\ndata: {path: /d}\ntraining: {output_dir: /o}\n", {},
                    {"run.yaml:3", "model.path", "duplicate key (also at run.yaml:2)"});
  // a section written twice
  expect_error_line(std::string(kRequired) + "data:\n  path: /d\n", {},
                    {"run.yaml:5", "data.path", "duplicate key (also at run.yaml:2)"});
}

TEST(TrainConfigErrors, MalformedYamlNamesTheLine) {
  const std::string msg = error_of("model:\n  path: /m\ndata: [unclosed\n");
  EXPECT_NE(msg.find("run.yaml:"), std::string::npos) << msg;
  EXPECT_NE(msg.find("malformed YAML"), std::string::npos) << msg;
  const std::string msg2 = error_of("model:\n  path: /m\n    bad: indent\n");
  EXPECT_NE(msg2.find("run.yaml:3:"), std::string::npos) << msg2;
  EXPECT_THROW(TrainConfig::load("/nonexistent/run.yaml"), engine::Error);
  try {
    TrainConfig::load("/nonexistent/run.yaml");
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/run.yaml"), std::string::npos);
  }
}

TEST(TrainConfigErrors, AllReportedAtOnce) {
  const std::string yaml = R"(model:
  path: /m
  attn_implementation: sdpa
data:
  path: /d
lora:
  r: 0
  lora_dropout: 1.5
  lora_alfa: 8
training:
  learning_rate: abc
  fp16: true
  bf16: true
)";
  const std::string msg = error_of(yaml, {"training.per_device_train_batch_size=0"});
  for (const char* part : {"run.yaml:3: model.attn_implementation", "run.yaml:7: lora.r", "run.yaml:8: lora.lora_dropout",
                           "run.yaml:9: lora.lora_alfa", "run.yaml:11: training.learning_rate",
                           "run.yaml:12: training.fp16", "run.yaml (default): training.output_dir",
                           "override 'training.per_device_train_batch_size=0'", "run.yaml: invalid config (9 errors)"}) {
    EXPECT_NE(msg.find(part), std::string::npos) << part << " not in:\n" << msg;
  }
}

// ---- output: to_yaml round trip, print_table, help ---------------------------------------------------

TEST(TrainConfig, ToYamlReloadsIdentically) {
  TempDir dir;
  const std::vector<std::string> overrides = {
      "data.prompt_format=<start_of_turn>user\n{instruction}\t\"q\" \\ {{x}}<end_of_turn>\n{output}",
      "model.path=true",                    // a string that looks like a bool
      "data.path=123",                      // ... like a number
      "training.output_dir=/o/ü 日本語",      // non-ASCII and a space
      "lora.target_modules=[v_proj, q_proj]",
      "lora.init_seed=3",
      "training.learning_rate=0.00012345678901234567",  // needs all 17 digits
      "training.weight_decay=0.1",
      "training.num_train_epochs=3",
      "training.save_total_limit=5",
      "training.logging_strategy=no",
      "training.fp16=true", "training.bf16=false", "quantization.bnb_4bit_compute_dtype=float16",
  };
  const TrainConfig a = parse(kRequired, overrides);
  const std::string path = dir.path() + "/config.yaml";
  a.save_yaml(path);
  const TrainConfig b = TrainConfig::load(path);
  EXPECT_EQ(b.to_yaml(), a.to_yaml());
  EXPECT_EQ(b.data.prompt_format, a.data.prompt_format);
  EXPECT_EQ(b.model.path, "true");
  EXPECT_EQ(b.data.path, "123");
  EXPECT_EQ(b.training.output_dir, "/o/ü 日本語");
  EXPECT_EQ(b.lora.target_modules, (std::vector<std::string>{"v_proj", "q_proj"}));
  EXPECT_EQ(b.lora.init_seed, 3);
  EXPECT_EQ(b.training.learning_rate, a.training.learning_rate);  // bit-identical
  EXPECT_EQ(b.training.save_total_limit, 5);
  EXPECT_EQ(b.training.logging_strategy, "no");
  EXPECT_EQ(b.compute_dtype(), DType::kF16);
  // defaults (unset optionals, empty strings) survive too
  const TrainConfig d = parse(kRequired);
  EXPECT_EQ(TrainConfig::parse(d.to_yaml(), "resolved.yaml").to_yaml(), d.to_yaml());
  EXPECT_FALSE(TrainConfig::parse(d.to_yaml(), "resolved.yaml").training.save_total_limit.has_value());
}

TEST(TrainConfig, PrintTableShowsEveryKeyAligned) {
  const TrainConfig c = parse(kRequired, {"training.learning_rate=1e-4"});
  std::ostringstream os;
  c.print_table(os);
  const std::string t = os.str();
  const size_t col = t.find("\"/m\"");
  ASSERT_NE(col, std::string::npos);
  std::istringstream lines(t);
  std::string line;
  int n = 0;
  const size_t value_col = col - t.rfind('\n', col) - 1;
  while (std::getline(lines, line)) {
    ++n;
    ASSERT_GT(line.size(), value_col) << line;
    EXPECT_NE(line[value_col], ' ') << line;
    EXPECT_EQ(line[value_col - 1], ' ') << line;
  }
  EXPECT_EQ(n, 48);  // one line per key (training.ddp_timeout: 48th)
  EXPECT_NE(t.find("training.learning_rate"), std::string::npos);
  EXPECT_NE(t.find("1.0e-04\n"), std::string::npos) << t;   // changed: no "(default)"
  EXPECT_NE(t.find("cosine  (default)"), std::string::npos) << t;
}

TEST(TrainConfig, HelpListsEveryKey) {
  const std::string help = TrainConfig::help_text();
  // every key of the resolved YAML appears in --help, and every section in the YAML
  const TrainConfig c = parse(kRequired);
  std::istringstream yaml(c.to_yaml());
  std::string line, section;
  int keys = 0;
  while (std::getline(yaml, line)) {
    if (line.empty() || line[0] == '#') continue;
    const std::string name = line.substr(line.find_first_not_of(' '), line.find(':') - line.find_first_not_of(' '));
    if (line[0] != ' ') {
      section = name;
      continue;
    }
    ++keys;
    EXPECT_NE(help.find("  " + section + "." + name + " "), std::string::npos) << section << "." << name;
  }
  EXPECT_EQ(keys, 48);
  EXPECT_NE(help.find("paged_adamw_32bit, adamw_torch, adamw"), std::string::npos);
  EXPECT_NE(help.find("required"), std::string::npos);
}

}  // namespace
