// tests/models/trainer_cpu_test.cpp (label cpu): train_gemma's loop end to end on the CPU backend: a tiny
// random Gemma-2, the demo tokenizer and a slice of the demo data. The loss falls, the PEFT adapter and
// TensorBoard scalars are written, and resuming from a checkpoint reproduces the uninterrupted run bit for
// bit (same adapter bytes, same losses).
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "engine/tensorboard.h"
#include "engine/train_config.h"
#include "models/gemma2_random.h"
#include "models/trainer.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
const fs::path kRepo = fs::path(__FILE__).parent_path().parent_path().parent_path();

std::string slurp(const std::string& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

class TrainerCpu : public ::testing::Test {
 protected:
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
  void SetUp() override {
    models::write_random_checkpoint(dir_ + "/model", models::tiny_config(32, 64, 2, 2, 1, 16, 2000),
                                    engine::DType::kBF16, models::RandomInit{7, 0.05, 0.1});
    fs::copy_file(kRepo / "tools/demo/tokenizer.model", dir_ + "/model/tokenizer.model");
    std::ifstream in(kRepo / "tools/demo/chat_ja.jsonl");
    std::ofstream out(dir_ + "/data.jsonl");
    std::string line;
    for (int i = 0; i < 24 && std::getline(in, line); ++i) out << line << "\n";
  }

  engine::TrainConfig config(const std::string& out, std::vector<std::string> extra = {}) {
    const std::string yaml = "model: {path: " + dir_ + "/model}\n" + "data: {path: " + dir_ +
                             "/data.jsonl, max_seq_length: 48}\n"
                             "lora: {r: 4, lora_alpha: 8, lora_dropout: 0.1}\n"
                             "training:\n  output_dir: " + out + "\n"
                             "  max_steps: 6\n  per_device_train_batch_size: 2\n  gradient_accumulation_steps: 2\n"
                             "  learning_rate: 1.0e-2\n  logging_steps: 1\n  save_steps: 3\n  bf16: true\n"
                             "  optim: adamw\n";
    return engine::TrainConfig::parse(yaml, "test.yaml", extra);
  }
};

TEST_F(TrainerCpu, TrainsWritesAdapterAndResumesExactly) {
  engine::Engine eng({engine::Backend::kCPU});
  const engine::TrainConfig c1 = config(dir_ + "/run1");
  const models::TrainResult r1 = models::Trainer(c1, eng).run();
  ASSERT_EQ(r1.step_losses.size(), 6u);
  EXPECT_EQ(r1.steps, 6);
  EXPECT_LT(r1.step_losses.back(), r1.step_losses.front());  // 24 records: 3 steps per epoch, 2 epochs
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json", "train_config.yaml",
                        "checkpoint-3/optimizer.safetensors", "checkpoint-3/trainer_state.json",
                        "checkpoint-6/adapter_model.safetensors"})
    EXPECT_TRUE(fs::exists(dir_ + "/run1/" + f)) << f;
  // TensorBoard scalars decode back.
  std::string events;
  for (const auto& e : fs::recursive_directory_iterator(dir_ + "/run1/runs"))
    if (e.path().filename().string().rfind("events.out.tfevents.", 0) == 0) events = e.path();
  ASSERT_FALSE(events.empty());
  const auto ev = engine::read_events(events);
  int losses = 0;
  for (const auto& s : ev.scalars) losses += s.tag == "train/loss";
  EXPECT_EQ(losses, 6);
  EXPECT_EQ(ev.file_version, "brain.Event:2");

  // Resume from checkpoint-3 in a fresh folder: steps 4..6 must equal the uninterrupted run exactly.
  fs::create_directories(dir_ + "/run2");
  fs::copy(dir_ + "/run1/checkpoint-3", dir_ + "/run2/checkpoint-3", fs::copy_options::recursive);
  const engine::TrainConfig c2 = config(dir_ + "/run2", {"training.resume_from_checkpoint=latest"});
  const models::TrainResult r2 = models::Trainer(c2, eng).run();
  ASSERT_EQ(r2.step_losses.size(), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(r2.step_losses[size_t(i)], r1.step_losses[size_t(i + 3)]) << "step " << i + 4;
  EXPECT_EQ(slurp(dir_ + "/run2/adapter_model.safetensors"), slurp(dir_ + "/run1/adapter_model.safetensors"));
}

TEST_F(TrainerCpu, BadInputsAreNamedErrors) {
  engine::Engine eng({engine::Backend::kCPU});
  std::ofstream(dir_ + "/data.jsonl", std::ios::app) << "{\"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n";
  try {
    models::Trainer(config(dir_ + "/bad"), eng).run();
    ADD_FAILURE() << "a bad record trained silently";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("data.jsonl:25"), std::string::npos) << e.what();
  }
  EXPECT_THROW(models::Trainer(config(dir_ + "/bad", {"training.resume_from_checkpoint=latest",
                                                     "data.skip_bad_lines=true"}), eng).run(),
               engine::Error);  // no checkpoint to resume from
  try {  // the tiny model has 2 layers
    models::Trainer(config(dir_ + "/bad", {"data.skip_bad_lines=true", "training.gradient_checkpointing=true",
                                           "training.checkpoint_layers=3"}), eng).run();
    ADD_FAILURE() << "checkpoint_layers = 3 of 2 layers accepted";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("training.checkpoint_layers: 3 exceeds the 2 layers of"), std::string::npos)
        << e.what();
  }
}

TEST_F(TrainerCpu, MemoryModesTrainTheSameAndSayWhatTheyDo) {
  // Partial checkpointing + recomputed probabilities: the same losses as the plain run (dropout masks are
  // replayed exactly), and one line on the console naming the setting.
  engine::Engine eng({engine::Backend::kCPU});
  engine::TrainConfig plain = config(dir_ + "/plain", {"training.max_steps=2", "training.save_strategy=no"});
  engine::TrainConfig mem = config(dir_ + "/mem", {"training.max_steps=2", "training.save_strategy=no",
                                                   "training.gradient_checkpointing=true",
                                                   "training.checkpoint_layers=1",
                                                   "training.recompute_attention_probs=true"});
  const models::TrainResult a = models::Trainer(plain, eng).run();
  ::testing::internal::CaptureStdout();
  const models::TrainResult b = models::Trainer(mem, eng).run();
  const std::string out = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(a.step_losses, b.step_losses);
  EXPECT_NE(out.find("\nmemory: 1 of 2 layers recomputed, attention probabilities recomputed in backward\n"),
            std::string::npos) << out;
}

}  // namespace
