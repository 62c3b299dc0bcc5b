// models/trainer.h: the training loop of train_gemma, the Trainer of transformers in the order SPEC.md §5.1
// gives it:
//   for each optimizer step: zero grads; for each of GA micro-batches: forward + fused loss + backward with
//   grad scale = loss_scale / N (N = label tokens of the whole window, §5.2); all-reduce point (N ranks);
//   unscale + global-norm clip + inf check on device (§5.3, §5.4); AdamW (paged or not, §5.5, §5.6) skipped
//   on inf; loss scaler update; LR schedule advances on non-skipped steps only (§5.8); log; checkpoint.
// Data parallel (engine/data_parallel.h, W ranks of batch b == 1 rank of batch W*b): every rank loads the
// whole data set, so N, the GLOBAL label count of the window, is counted from the sampler's global
// micro-batches without communication; each rank backpropagates its slice with grad scale loss_scale / N;
// after the window's last backward ONE NCCL all-reduce (sum: each rank already divided by the global N)
// of the flat f32 LoRA gradients plus the window's loss sum. Clipping, the inf check, AdamW and the loss
// scaler then see identical bytes on every rank, so the ranks stay bit-identical with no other exchange.
// Rank 0 alone prints (global tokens/s), writes TensorBoard and checkpoints; the run ends with a barrier.
// Checkpoints store the data position in global terms (examples of the epoch consumed), so a run resumes
// on a different number of GPUs. LoRA dropout masks are keyed by (micro-batch, rank): independent across
// ranks, so with dropout > 0 the W-rank run is equivalent in distribution, not bit for bit.
#pragma once
#include <string>
#include <vector>

#include "engine/chat_data.h"
#include "engine/data_parallel.h"
#include "engine/engine.h"
#include "engine/train_config.h"

namespace models {

struct TrainResult {
  int64_t steps = 0;            // optimizer steps taken (skipped ones included, as HF counts them)
  int64_t skipped_steps = 0;    // fp16 overflow skips
  double final_loss = 0;        // mean loss of the last logged interval
  double first_loss = 0;        // loss of the first optimizer step
  std::vector<double> step_losses;  // every step's window loss, in order (this run's steps only)
  std::string adapter_dir;      // where the PEFT adapter was written
  uint64_t params_hash = 0;     // FNV-1a of the final f32 LoRA parameters (equal on every rank)
};

// The tokens of some examples as the loss counts them: labels = shifted targets (label != -100 at
// positions >= 1 of each example, SPEC.md §1.7), tokens = real tokens (no padding).
struct TokenCounts {
  int64_t labels = 0, tokens = 0;
};
TokenCounts count_tokens(const engine::ChatDataset& data, const std::vector<int64_t>& examples);

class Trainer {
 public:
  // dp: this process's rank of a data-parallel job (nullptr = one process); the Engine must have joined its
  // communicator (DataParallel's constructor does).
  Trainer(const engine::TrainConfig& cfg, engine::Engine& eng, engine::DataParallel* dp = nullptr);
  TrainResult run();

 private:
  engine::TrainConfig cfg_;
  engine::Engine& eng_;
  engine::DataParallel* dp_;
  int rank_, world_;
};

// The newest output_dir/checkpoint-<step> folder, or "" when there is none.
std::string latest_checkpoint(const std::string& output_dir);

}  // namespace models
