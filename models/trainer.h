// models/trainer.h: the training loop of train_gemma, the Trainer of transformers in the order SPEC.md §5.1
// gives it:
//   for each optimizer step: zero grads; for each of GA micro-batches: forward + fused loss + backward with
//   grad scale = loss_scale / N (N = label tokens of the whole window, §5.2); all-reduce point (N ranks);
//   unscale + global-norm clip + inf check on device (§5.3, §5.4); AdamW (paged or not, §5.5, §5.6) skipped
//   on inf; loss scaler update; LR schedule advances on non-skipped steps only (§5.8); log; checkpoint.
// Written for N data-parallel ranks (rank and world size reach the sampler; rank 0 alone prints, logs and
// saves); the multi-GPU transport itself comes with NCCL.
#pragma once
#include <string>
#include <vector>

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
};

class Trainer {
 public:
  Trainer(const engine::TrainConfig& cfg, engine::Engine& eng, int rank = 0, int world_size = 1);
  TrainResult run();

 private:
  engine::TrainConfig cfg_;
  engine::Engine& eng_;
  int rank_, world_;
};

// The newest output_dir/checkpoint-<step> folder, or "" when there is none.
std::string latest_checkpoint(const std::string& output_dir);

}  // namespace models
