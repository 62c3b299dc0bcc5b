// tests/models/data_parallel_cpu_test.cpp (label cpu): the arithmetic of data parallelism, in one process
// on the CPU backend (the NCCL transport itself: tests/multigpu/dp_check.sh).
//   - The trainer's global label count of a window (from the sampler's global micro-batches, no
//     communication) equals the sum of the ranks' own counts and the 1-rank count with batch W*b.
//   - W ranks x batch b, each backpropagating its slice with grad scale 1/N_global, summed (what the NCCL
//     all-reduce does) == 1 rank x batch W*b, empty slices included.
//   - Checkpoints keep the data position in global terms: a resume with another batch split continues at
//     the same example; an impossible split is an error naming the numbers.
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "engine/chat_data.h"
#include "engine/sampler.h"
#include "engine/tokenizer.h"
#include "models/gemma2.h"
#include "models/gemma2_random.h"
#include "models/trainer.h"
#include "tests/test_util.h"

namespace {

namespace fs = std::filesystem;
using namespace models;
const fs::path kRepo = fs::path(__FILE__).parent_path().parent_path().parent_path();

class DataParallelCpu : public ::testing::Test {
 protected:
  test::TempDir tmp_;
  std::string dir_ = tmp_.path();
  std::unique_ptr<engine::Tokenizer> tok_;

  void SetUp() override { tok_ = std::make_unique<engine::Tokenizer>(engine::Tokenizer::from_file(kRepo / "tools/demo/tokenizer.model")); }

  // The first `n` demo records; loss on the assistant turns only, so label and token counts differ.
  engine::ChatDataset dataset(int n, int64_t max_len) {
    std::ifstream in(kRepo / "tools/demo/chat_ja.jsonl");
    const std::string path = dir_ + "/data" + std::to_string(n) + ".jsonl";
    std::ofstream out(path);
    std::string line;
    for (int i = 0; i < n && std::getline(in, line); ++i) out << line << "\n";
    out.close();
    engine::ChatDataOptions o;
    o.path = path;
    o.max_seq_length = max_len;
    o.loss_on = engine::LossOn::kAssistant;
    return engine::ChatDataset::load(o, *tok_);
  }

  // The count rule the trainer used before data parallel: from collated (padded) micro-batches.
  static TokenCounts collated_counts(const engine::ChatDataset& d, const std::vector<int64_t>& idx) {
    const engine::HostBatch hb = engine::collate(d, idx, 0);
    TokenCounts c;
    for (int64_t r = 0; r < hb.B; ++r)
      for (int64_t t = 0; t < hb.T; ++t) {
        c.tokens += hb.attention_mask[size_t(r * hb.T + t)];
        c.labels += t > 0 && hb.labels[size_t(r * hb.T + t)] != engine::kIgnoreLabel;
      }
    return c;
  }
};

TEST_F(DataParallelCpu, GlobalLabelCountNeedsNoCommunication) {
  const engine::ChatDataset d = dataset(23, 64);  // 23: uneven last micro-batches, empty slices for W = 3
  for (int64_t W : {1, 2, 3})
    for (int64_t b : {1, 2})
      for (int64_t GA : {1, 3}) {
        SCOPED_TRACE(testing::Message() << "W=" << W << " b=" << b << " GA=" << GA);
        const engine::Sampler one(d.lengths(), W * b, GA, 1, 0, true, 5);
        const engine::Sampler any(d.lengths(), b, GA, W, 0, true, 5);
        const auto global = any.global_epoch(1), single = one.epoch(1);
        ASSERT_EQ(global.size(), single.size());
        std::vector<std::vector<std::vector<int64_t>>> ranks;
        for (int64_t r = 0; r < W; ++r) ranks.push_back(engine::Sampler(d.lengths(), b, GA, W, r, true, 5).epoch(1));
        for (size_t first = 0; first < global.size(); first += size_t(GA)) {
          std::vector<int64_t> window;
          TokenCounts ranks_sum, single_sum;
          for (size_t i = first; i < std::min(global.size(), first + size_t(GA)); ++i) {
            EXPECT_EQ(global[i], single[i]);  // W ranks x b see exactly 1 rank x W*b's micro-batches
            window.insert(window.end(), global[i].begin(), global[i].end());
            for (const auto& rk : ranks) {
              const TokenCounts c = collated_counts(d, rk[i]);
              ranks_sum.labels += c.labels, ranks_sum.tokens += c.tokens;
            }
            const TokenCounts c = collated_counts(d, single[i]);
            single_sum.labels += c.labels, single_sum.tokens += c.tokens;
          }
          const TokenCounts n = count_tokens(d, window);  // what every rank computes alone
          EXPECT_EQ(n.labels, ranks_sum.labels);
          EXPECT_EQ(n.labels, single_sum.labels);
          EXPECT_EQ(n.tokens, single_sum.tokens);
          EXPECT_GT(n.labels, 0);
          EXPECT_LT(n.labels, n.tokens);  // loss on assistant turns: a real difference between the two
        }
      }
}

TEST_F(DataParallelCpu, SummedRankGradientsEqualOneRankWithTheGlobalBatch) {
  const engine::ChatDataset d = dataset(9, 96);  // global batch 4: micro-batches of 4, 4, 1 examples
  Gemma2Config c = tiny_config(16, 24, 2, 2, 1, 8, tok_->vocab_size());
  write_random_checkpoint(dir_ + "/model", c, engine::DType::kF32, RandomInit{11, 0.2, 0.1});
  engine::Engine eng({engine::Backend::kCPU});
  Gemma2Options o;
  o.compute_dtype = engine::DType::kF32;
  o.quantize_nf4 = true;
  Gemma2Model m = Gemma2Model::load(dir_ + "/model", eng, o);
  LoraSpec ls;
  ls.dropout = 0;  // dropout masks are per rank (trainer.h): equivalence is exact only without dropout
  LoraAdapters lora(m.config(), ls, eng);
  for (int64_t i = 0; i < lora.num_params(); ++i) lora.params().ptr<float>()[i] = 0.02f * float(i % 13) - 0.12f;
  m.attach_lora(&lora, 3);
  const int64_t W = 2, b = 2, GA = 2, P = lora.num_params();

  // Runs micro-batches [first, first + GA) of `mb` with scale 1/N; returns the gradients (+ loss sum last).
  auto backprop = [&](const std::vector<std::vector<int64_t>>& mb, size_t first, int64_t N) {
    lora.zero_grads();
    Tensor loss = eng.empty({1}, engine::DType::kF32);
    eng.zero(loss);
    for (size_t i = first; i < std::min(mb.size(), first + size_t(GA)); ++i) {
      if (mb[i].empty()) continue;
      const engine::HostBatch hb = engine::collate(d, mb[i], tok_->pad_id());
      m.forward_backward(make_batch(eng, hb.B, hb.T, hb.ids, hb.attention_mask, hb.labels), 1.f / float(N), loss,
                         engine::TensorView{});
    }
    std::vector<double> g(lora.grads().ptr<float>(), lora.grads().ptr<float>() + P);
    g.push_back(loss.ptr<float>()[0]);
    return g;
  };
  const engine::Sampler global(d.lengths(), b, GA, W, 0, false, 9);
  const auto gmb = global.global_epoch(0);
  const auto single = engine::Sampler(d.lengths(), W * b, GA, 1, 0, false, 9).epoch(0);
  bool saw_empty = false;
  for (size_t first = 0; first < gmb.size(); first += size_t(GA)) {
    std::vector<int64_t> window;
    for (size_t i = first; i < std::min(gmb.size(), first + size_t(GA)); ++i)
      window.insert(window.end(), gmb[i].begin(), gmb[i].end());
    const int64_t N = count_tokens(d, window).labels;
    ASSERT_GT(N, 0);
    std::vector<double> sum(size_t(P + 1), 0.0);
    for (int64_t r = 0; r < W; ++r) {
      const auto mine = engine::Sampler(d.lengths(), b, GA, W, r, false, 9).epoch(0);
      for (size_t i = first; i < std::min(mine.size(), first + size_t(GA)); ++i) saw_empty |= mine[i].empty();
      const std::vector<double> g = backprop(mine, first, N);
      for (size_t k = 0; k < sum.size(); ++k) sum[k] += g[k];
    }
    const std::vector<double> one = backprop(single, first, N);
    double max_g = 0;
    for (int64_t k = 0; k < P; ++k) max_g = std::max(max_g, std::fabs(one[size_t(k)]));
    ASSERT_GT(max_g, 1e-6) << "zero gradients would make the comparison vacuous";
    // f32 sums in a different order (per-rank padding and accumulation): relative to the largest gradient.
    for (int64_t k = 0; k < P; ++k)
      ASSERT_NEAR(sum[size_t(k)], one[size_t(k)], 2e-5 * max_g) << "window at " << first << ", param " << k;
    EXPECT_NEAR(sum[size_t(P)], one[size_t(P)], 1e-5 * std::fabs(one[size_t(P)])) << "loss sum";
  }
  EXPECT_TRUE(saw_empty) << "the last window should give rank 1 an empty slice";
}

class DataParallelResume : public DataParallelCpu {
 protected:
  void SetUp() override {
    DataParallelCpu::SetUp();
    write_random_checkpoint(dir_ + "/model", tiny_config(32, 64, 2, 2, 1, 16, 2000), engine::DType::kBF16,
                            RandomInit{7, 0.05, 0.1});
    fs::copy_file(kRepo / "tools/demo/tokenizer.model", dir_ + "/model/tokenizer.model");
    std::ifstream in(kRepo / "tools/demo/chat_ja.jsonl");
    std::ofstream out(dir_ + "/data.jsonl");
    std::string line;
    for (int i = 0; i < 24 && std::getline(in, line); ++i) out << line << "\n";
  }
  engine::TrainConfig config(const std::string& out, int64_t batch, int64_t ga, std::vector<std::string> extra = {}) {
    const std::string yaml = "model: {path: " + dir_ + "/model}\ndata: {path: " + dir_ +
                             "/data.jsonl, max_seq_length: 48}\nlora: {r: 4, lora_alpha: 8, lora_dropout: 0.0}\n"
                             "training:\n  output_dir: " + out + "\n  max_steps: 5\n  per_device_train_batch_size: " +
                             std::to_string(batch) + "\n  gradient_accumulation_steps: " + std::to_string(ga) +
                             "\n  learning_rate: 1.0e-2\n  logging_steps: 1\n  save_steps: 3\n  bf16: false\n"
                             "  optim: adamw\n  report_to: none\n";
    return engine::TrainConfig::parse(yaml, "test.yaml", extra);
  }
};

TEST_F(DataParallelResume, CheckpointPositionIsGlobal) {
  engine::Engine eng({engine::Backend::kCPU});
  const TrainResult r1 = Trainer(config(dir_ + "/run1", 2, 2), eng).run();  // 4 examples per step
  std::ifstream in(dir_ + "/run1/checkpoint-3/trainer_state.json");
  const nlohmann::json j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("epoch_examples"), 12);
  EXPECT_EQ(j.at("global_batch"), 4);
  EXPECT_EQ(j.at("world_size"), 1);

  // The same 4 examples per step as 1 x GA 4 (what 2 GPUs x batch 1 x GA 2 also is): resumes at example
  // 12 and reproduces steps 4-5 up to f32 summation order.
  auto resume = [&](const std::string& out, int64_t batch, int64_t ga, std::vector<std::string> extra = {}) {
    fs::create_directories(dir_ + "/" + out);
    fs::copy(dir_ + "/run1/checkpoint-3", dir_ + "/" + out + "/checkpoint-3", fs::copy_options::recursive);
    extra.push_back("training.resume_from_checkpoint=latest");
    return Trainer(config(dir_ + "/" + out, batch, ga, extra), eng).run();
  };
  const TrainResult r2 = resume("run2", 1, 4);
  ASSERT_EQ(r2.step_losses.size(), 2u);
  for (size_t i = 0; i < 2; ++i) EXPECT_NEAR(r2.step_losses[i], r1.step_losses[i + 3], 1e-4) << "step " << i + 4;

  // 12 examples consumed is not a whole number of 5-example steps.
  try {
    resume("run3", 1, 5);
    ADD_FAILURE() << "resumed at a position that is not a step boundary";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("12 examples of the epoch were consumed, not a multiple of this run's "
                                         "global batch 5"), std::string::npos) << e.what();
  }
  // group_by_length orders the epoch by the global batch: mid-epoch it must be the same.
  try {
    resume("run4", 1, 2, {"training.group_by_length=true"});
    ADD_FAILURE() << "group_by_length resumed mid-epoch with another global batch";
  } catch (const engine::Error& e) {
    EXPECT_NE(std::string(e.what()).find("group_by_length"), std::string::npos) << e.what();
  }
}

}  // namespace
